//! Encoders for the messages the proxy itself sends, and decoders for the few backend
//! messages it must read (errors, parameter status, command tags).

use bytes::{BufMut, BytesMut};

use super::codec::read_cstr;
use super::{TxStatus, backend_tag, frontend_tag};

/// Writes `tag`, a length placeholder and the body produced by `f`, then patches the length.
pub fn write_msg(out: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32(0);
    f(out);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// Severity of an error or notice the proxy reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
            Severity::Warning => "WARNING",
        }
    }
}

/// ErrorResponse (or NoticeResponse for notice/warning severities) with S, V, C and M fields.
pub fn error_response(out: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    error_response_at(out, severity, code, message, None);
}

/// [`error_response`] with the position (1-based characters into the statement's text)
/// PostgreSQL gives a syntax error, from which psql draws its `LINE 1: ... ^`.
pub fn error_response_at(
    out: &mut BytesMut,
    severity: Severity,
    code: &str,
    message: &str,
    position: Option<u32>,
) {
    let tag = match severity {
        Severity::Error | Severity::Fatal => backend_tag::ERROR_RESPONSE,
        Severity::Notice | Severity::Warning => backend_tag::NOTICE_RESPONSE,
    };
    write_msg(out, tag, |b| {
        for (field, value) in [
            (b'S', severity.as_str()),
            (b'V', severity.as_str()),
            (b'C', code),
            (b'M', message),
        ] {
            b.put_u8(field);
            put_cstr(b, value.as_bytes());
        }
        if let Some(p) = position {
            b.put_u8(b'P');
            put_cstr(b, p.to_string().as_bytes());
        }
        b.put_u8(0);
    });
}

/// ReadyForQuery with the given status.
pub fn ready_for_query(out: &mut BytesMut, status: TxStatus) {
    write_msg(out, backend_tag::READY_FOR_QUERY, |b| {
        b.put_u8(status.as_byte())
    });
}

/// ParameterStatus.
pub fn parameter_status(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    write_msg(out, backend_tag::PARAMETER_STATUS, |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// BackendKeyData with the proxy-issued key.
pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    write_msg(out, backend_tag::BACKEND_KEY_DATA, |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// Authentication request with a code and optional payload (0 = Ok, 10 = SASL, 11 = continue, 12 = final).
pub fn authentication(out: &mut BytesMut, code: i32, payload: &[u8]) {
    write_msg(out, backend_tag::AUTHENTICATION, |b| {
        b.put_i32(code);
        b.put_slice(payload);
    });
}

/// AuthenticationSASL listing the mechanisms offered.
pub fn authentication_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    write_msg(out, backend_tag::AUTHENTICATION, |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    });
}

/// Simple Query.
pub fn query(out: &mut BytesMut, sql: &str) {
    write_msg(out, frontend_tag::QUERY, |b| put_cstr(b, sql.as_bytes()));
}

/// Parse of `sql` into the statement `name`, with no declared parameter types.
pub fn parse(out: &mut BytesMut, name: &str, sql: &str) {
    write_msg(out, frontend_tag::PARSE, |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, sql.as_bytes());
        b.put_u16(0);
    });
}

/// Bind of text parameters to the unnamed portal, all results in text.
pub fn bind<'a>(
    out: &mut BytesMut,
    statement: &str,
    params: impl ExactSizeIterator<Item = &'a [u8]>,
) {
    write_msg(out, frontend_tag::BIND, |b| {
        put_cstr(b, b"");
        put_cstr(b, statement.as_bytes());
        b.put_u16(0);
        b.put_u16(params.len() as u16);
        for p in params {
            b.put_i32(p.len() as i32);
            b.put_slice(p);
        }
        b.put_u16(0);
    });
}

/// Execute of the unnamed portal with no row limit.
pub fn execute(out: &mut BytesMut) {
    write_msg(out, frontend_tag::EXECUTE, |b| {
        put_cstr(b, b"");
        b.put_u32(0);
    });
}

/// Sync.
pub fn sync(out: &mut BytesMut) {
    write_msg(out, frontend_tag::SYNC, |_| {});
}

/// Flush: PostgreSQL sends what it has buffered.
pub fn flush(out: &mut BytesMut) {
    write_msg(out, frontend_tag::FLUSH, |_| {});
}

/// Terminate.
pub fn terminate(out: &mut BytesMut) {
    write_msg(out, frontend_tag::TERMINATE, |_| {});
}

/// The interesting fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: String,
}

/// Decodes an ErrorResponse/NoticeResponse body; unknown fields are skipped.
pub fn parse_error_fields(body: &[u8]) -> ErrorFields {
    let mut fields = ErrorFields::default();
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some((value, tail)) = read_cstr(tail) else {
            break;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match field {
            b'V' => fields.severity = value,
            b'S' if fields.severity.is_empty() => fields.severity = value,
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            b'D' => fields.detail = value,
            _ => {}
        }
        rest = tail;
    }
    fields
}

/// Decodes a ParameterStatus body into name and value.
pub fn parse_parameter_status(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, rest) = read_cstr(body)?;
    let (value, _) = read_cstr(rest)?;
    Some((name, value))
}

/// The command tag of a CommandComplete body, without its NUL.
pub fn command_tag(body: &[u8]) -> &[u8] {
    read_cstr(body).map(|(t, _)| t).unwrap_or(body)
}

/// Decodes a whole SASLInitialResponse message (tag and length included): the mechanism,
/// then an Int32 length (-1 for none) and that many bytes. `None` when it is not one.
pub fn sasl_initial_response(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    if raw.first() != Some(&frontend_tag::PASSWORD) {
        return None;
    }
    let (mechanism, rest) = read_cstr(raw.get(5..)?)?;
    let len_bytes: [u8; 4] = rest.get(..4)?.try_into().ok()?;
    let len = i32::from_be_bytes(len_bytes);
    let data = rest.get(4..)?;
    if len < 0 || len as usize != data.len() {
        return None;
    }
    Some((mechanism, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::split_frame;

    #[test]
    fn error_response_roundtrips() {
        let mut out = BytesMut::new();
        error_response(
            &mut out,
            Severity::Fatal,
            "28P01",
            "password authentication failed",
        );
        let f = split_frame(&mut out, 1 << 20).unwrap().unwrap();
        assert_eq!(f.tag, b'E');
        let e = parse_error_fields(f.body());
        assert_eq!(e.severity, "FATAL");
        assert_eq!(e.code, "28P01");
        assert_eq!(e.message, "password authentication failed");
    }

    #[test]
    fn bind_encodes_parameters() {
        let mut out = BytesMut::new();
        bind(&mut out, "s", [&b"ab"[..], &b""[..]].into_iter());
        assert_eq!(
            &out[..],
            b"B\0\0\0\x17\0s\0\0\0\0\x02\0\0\0\x02ab\0\0\0\0\0\0"
        );
    }

    #[test]
    fn parameter_status_and_command_tag_decode() {
        assert_eq!(
            parse_parameter_status(b"TimeZone\0UTC\0"),
            Some((&b"TimeZone"[..], &b"UTC"[..]))
        );
        assert_eq!(command_tag(b"SELECT 1\0"), b"SELECT 1");
    }
}

//! The untagged first message of a connection: SSLRequest, GSSENCRequest, CancelRequest or
//! StartupMessage. Lengths are checked against a small limit before anything is buffered.

use bytes::{Buf, BytesMut};

use super::codec::read_cstr;

/// Request codes (pqcomm.h).
const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;
const CANCEL_REQUEST: u32 = 80877102;
/// Protocol 3.0; 3.x minors above 0 are negotiated down.
const PROTOCOL_3: u32 = 3 << 16;

/// What a client opened the connection with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
    Startup(StartupParams),
}

/// Parameters of a StartupMessage, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartupParams {
    /// Protocol minor version the client asked for (3.x).
    pub minor_version: u16,
    pub params: Vec<(String, String)>,
    /// Options the client requested with the `_pq_.` prefix, which we must refuse in
    /// NegotiateProtocolVersion.
    pub unsupported_options: Vec<String>,
}

impl StartupParams {
    /// The value of a startup parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a startup packet was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    BadLength,
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: expected terminator as last byte")]
    Malformed,
    #[error("invalid startup packet: parameter names and values must be UTF-8")]
    NotUtf8,
}

/// Splits and decodes the first packet from `buf`; `Ok(None)` means more bytes are needed.
pub fn parse_startup(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<StartupPacket>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = (&buf[..4]).get_u32() as usize;
    if !(8..=max_len).contains(&len) {
        return Err(StartupError::BadLength);
    }
    if buf.len() < len {
        return Ok(None);
    }
    let packet = buf.split_to(len);
    let mut body = &packet[4..];
    let code = body.get_u32();
    match code {
        SSL_REQUEST if len == 8 => Ok(Some(StartupPacket::SslRequest)),
        GSSENC_REQUEST if len == 8 => Ok(Some(StartupPacket::GssEncRequest)),
        CANCEL_REQUEST if len == 16 => {
            let pid = body.get_i32();
            let secret = body.get_i32();
            Ok(Some(StartupPacket::Cancel { pid, secret }))
        }
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(StartupError::BadLength),
        _ if code >> 16 == 3 => parse_params(code, body).map(|p| Some(StartupPacket::Startup(p))),
        _ => Err(StartupError::UnsupportedProtocol {
            major: (code >> 16) as u16,
            minor: (code & 0xffff) as u16,
        }),
    }
}

fn parse_params(code: u32, mut body: &[u8]) -> Result<StartupParams, StartupError> {
    let mut out = StartupParams {
        minor_version: (code - PROTOCOL_3) as u16,
        ..Default::default()
    };
    loop {
        let (name, rest) = read_cstr(body).ok_or(StartupError::Malformed)?;
        if name.is_empty() {
            if !rest.is_empty() {
                return Err(StartupError::Malformed);
            }
            return Ok(out);
        }
        let (value, rest) = read_cstr(rest).ok_or(StartupError::Malformed)?;
        let name = std::str::from_utf8(name)
            .map_err(|_| StartupError::NotUtf8)?
            .to_string();
        let value = std::str::from_utf8(value)
            .map_err(|_| StartupError::NotUtf8)?
            .to_string();
        if name.starts_with("_pq_.") {
            out.unsupported_options.push(name);
        } else {
            out.params.push((name, value));
        }
        body = rest;
    }
}

/// Splits a libpq `options` string into `(name, value)` settings from `-c name=value` and
/// `--name=value`; anything else is returned as an error naming the token.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut tokens = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    tokens.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
    let mut out = Vec::new();
    let mut it = tokens.into_iter();
    while let Some(tok) = it.next() {
        let setting = if tok == "-c" {
            it.next().ok_or_else(|| "-c".to_string())?
        } else if let Some(rest) = tok.strip_prefix("-c") {
            rest.to_string()
        } else if let Some(rest) = tok.strip_prefix("--") {
            rest.to_string()
        } else {
            return Err(tok);
        };
        let (name, value) = setting.split_once('=').ok_or_else(|| setting.clone())?;
        out.push((
            name.replace('-', "_").to_ascii_lowercase(),
            value.to_string(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, rest: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&((rest.len() + 8) as u32).to_be_bytes());
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn decodes_each_kind() {
        assert_eq!(
            parse_startup(&mut packet(SSL_REQUEST, b""), 10000).unwrap(),
            Some(StartupPacket::SslRequest)
        );
        assert_eq!(
            parse_startup(&mut packet(GSSENC_REQUEST, b""), 10000).unwrap(),
            Some(StartupPacket::GssEncRequest)
        );
        let c = parse_startup(
            &mut packet(CANCEL_REQUEST, &[0, 0, 0, 7, 0, 0, 0, 9]),
            10000,
        )
        .unwrap();
        assert_eq!(c, Some(StartupPacket::Cancel { pid: 7, secret: 9 }));
        let s = parse_startup(
            &mut packet(PROTOCOL_3, b"user\0acme\0database\0app\0\0"),
            10000,
        )
        .unwrap();
        let Some(StartupPacket::Startup(p)) = s else {
            panic!("{s:?}")
        };
        assert_eq!(p.get("user"), Some("acme"));
        assert_eq!(p.get("database"), Some("app"));
    }

    #[test]
    fn refuses_bad_packets() {
        assert_eq!(
            parse_startup(&mut packet(2 << 16, b""), 10000),
            Err(StartupError::UnsupportedProtocol { major: 2, minor: 0 })
        );
        assert_eq!(
            parse_startup(&mut packet(PROTOCOL_3, b"user\0acme"), 10000),
            Err(StartupError::Malformed)
        );
        assert_eq!(
            parse_startup(&mut BytesMut::from(&[0xff, 0, 0, 0][..]), 10000),
            Err(StartupError::BadLength)
        );
        assert_eq!(
            parse_startup(&mut BytesMut::from(&[0, 0, 0, 2][..]), 10000),
            Err(StartupError::BadLength)
        );
        assert_eq!(
            parse_startup(&mut BytesMut::from(&[0, 0][..]), 10000),
            Ok(None)
        );
    }

    #[test]
    fn parses_options() {
        assert_eq!(
            parse_options("-c search_path=a,b --statement-timeout=5s -cfoo.bar=x\\ y").unwrap(),
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("foo.bar".into(), "x y".into())
            ]
        );
        assert!(parse_options("-d 5").is_err());
    }
}

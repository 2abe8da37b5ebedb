//! Fuzz target `startup`: the untagged first packets of a connection (`parse_startup`:
//! SSLRequest, GSSENCRequest, CancelRequest, StartupMessage) and libpq's `options` string
//! (`parse_options`).
//!
//! Input: byte 0 picks the size limit, byte 1 how the rest arrives in reads, the rest is the
//! client's byte stream (packets one after another, as after a refused SSLRequest).
//! Invariants: no panic; packets decoded read by read are exactly those an independent
//! decoder finds (same packets, same error, same leftover); a length over the limit is
//! refused from its 4 bytes; a StartupMessage encodes back to its own bytes; parsed options
//! written back with `-c` and escapes parse to the same settings; peak allocation is bounded
//! by the input.

use bytes::{BufMut, BytesMut};

use super::{Target, be32, chunks};
use crate::protocol::startup::{
    StartupError, StartupPacket, StartupParams, parse_options, parse_startup,
};

/// The target.
pub const TARGET: Target = Target {
    name: "startup",
    check,
    alloc_bound: |input| 32 * input.len() + 4096,
    seeds,
    dictionary: DICTIONARY,
};

/// Size limits byte 0 chooses from (the default `max_startup_message_size` is 10 000).
const LIMITS: [usize; 6] = [8, 9, 16, 17, 1024, 10_000];

const DICTIONARY: &[&[u8]] = &[
    b"\x04\xd2\x16\x2f",
    b"\x04\xd2\x16\x30",
    b"\x04\xd2\x16\x2e",
    b"\0\x03\0\0",
    b"\0\x03\0\x02",
    b"\0\x02\0\0",
    b"\0\0\0\x08",
    b"\0\0\0\x10",
    b"user\0",
    b"database\0",
    b"options\0",
    b"_pq_.x\0",
    b"-c ",
    b"--",
    b"=",
    b"\\",
    b" ",
    b"\0",
    b"\0\0",
    b"\xc3\xa9",
    b"\xff",
];

/// Request codes, spelled out here rather than taken from the parser under test.
const SSL: u32 = 80877103;
const GSS: u32 = 80877104;
const CANCEL: u32 = 80877102;

type Outcome = Result<Option<StartupPacket>, StartupError>;

/// The independent decoder of the packet at the start of `b`, and its length.
fn reference(b: &[u8], max: usize) -> (Outcome, usize) {
    let Some(len) = be32(b, 0).map(|l| l as usize) else {
        return (Ok(None), 0);
    };
    if len < 8 || len > max {
        return (Err(StartupError::BadLength), 0);
    }
    let Some(packet) = b.get(..len) else {
        return (Ok(None), 0);
    };
    let code = be32(packet, 4).unwrap_or_default();
    let int = |at| be32(packet, at).unwrap_or_default() as i32;
    let out = match (code, len) {
        (SSL, 8) => Ok(StartupPacket::SslRequest),
        (GSS, 8) => Ok(StartupPacket::GssEncRequest),
        (CANCEL, 16) => Ok(StartupPacket::Cancel {
            pid: int(8),
            secret: int(12),
        }),
        (SSL | GSS | CANCEL, _) => Err(StartupError::BadLength),
        _ if code >> 16 == 3 => params(code, &packet[8..]).map(StartupPacket::Startup),
        _ => Err(StartupError::UnsupportedProtocol {
            major: (code >> 16) as u16,
            minor: code as u16,
        }),
    };
    (out.map(Some), len)
}

/// Name/value pairs, each NUL-terminated, then one NUL as the last byte.
fn params(code: u32, body: &[u8]) -> Result<StartupParams, StartupError> {
    let mut p = StartupParams {
        minor_version: code as u16,
        ..Default::default()
    };
    let mut at = 0;
    let next = |at: &mut usize| {
        let nul = body[*at..].iter().position(|&c| c == 0);
        let s = &body[*at..*at + nul.ok_or(StartupError::Malformed)?];
        *at += s.len() + 1;
        Ok(s)
    };
    loop {
        let name = next(&mut at)?;
        if name.is_empty() {
            return (at == body.len())
                .then_some(p)
                .ok_or(StartupError::Malformed);
        }
        let value = next(&mut at)?;
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| StartupError::NotUtf8);
        let (name, value) = (text(name)?, text(value)?);
        if name.starts_with("_pq_.") {
            p.unsupported_options.push(name);
        } else {
            p.params.push((name, value));
        }
    }
}

fn check(input: &[u8]) -> Result<&'static str, String> {
    let max = LIMITS[usize::from(input.first().copied().unwrap_or(0)) % LIMITS.len()];
    let stream = input.get(2..).unwrap_or_default();
    let mut buf = BytesMut::new();
    let mut last = "need_more";
    for chunk in chunks(stream, input.get(1).copied().unwrap_or(0)) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.to_vec();
            let got = parse_startup(&mut buf, max);
            let (want, len) = reference(&before, max);
            // After an error the connection closes: what is left in the buffer is moot.
            let kept = if matches!(got, Ok(Some(_))) {
                &before[len..]
            } else {
                &before[..]
            };
            if got != want || got.is_ok() && buf[..] != *kept {
                return Err(format!("parsed {got:?}, reference {want:?}, of {before:?}"));
            }
            match got {
                Ok(Some(packet)) => last = packet_checks(&packet, &before[..len])?,
                Ok(None) if buf.len() >= max.max(4) => {
                    return Err(format!(
                        "waits for more with {} bytes, limit {max}",
                        buf.len()
                    ));
                }
                Ok(None) => break,
                Err(e) => return Ok(error_name(&e)),
            }
        }
    }
    Ok(last)
}

fn error_name(e: &StartupError) -> &'static str {
    match e {
        StartupError::BadLength => "bad_length",
        StartupError::UnsupportedProtocol { .. } => "unsupported_protocol",
        StartupError::Malformed => "malformed",
        StartupError::NotUtf8 => "not_utf8",
    }
}

/// A decoded packet encodes back to its bytes; its options round-trip.
fn packet_checks(packet: &StartupPacket, bytes: &[u8]) -> Result<&'static str, String> {
    let StartupPacket::Startup(p) = packet else {
        return Ok(match packet {
            StartupPacket::SslRequest => "ssl_request",
            StartupPacket::GssEncRequest => "gssenc_request",
            _ => "cancel_request",
        });
    };
    if p.unsupported_options.is_empty() && encode(p) != bytes {
        return Err(format!("{p:?} does not encode back to {bytes:?}"));
    }
    let Some(options) = p.get("options") else {
        return Ok("startup");
    };
    let Ok(settings) = parse_options(options) else {
        return Ok("startup_bad_options");
    };
    let again = parse_options(&write_options(&settings));
    if again.as_ref() != Ok(&settings) {
        return Err(format!(
            "options {options:?}: {settings:?} written back parse as {again:?}"
        ));
    }
    Ok("startup_options")
}

/// A StartupMessage for `p` (without `_pq_` options).
pub fn encode(p: &StartupParams) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32(0);
    b.put_u32((3 << 16) | u32::from(p.minor_version));
    for (k, v) in &p.params {
        for s in [k, v] {
            b.put_slice(s.as_bytes());
            b.put_u8(0);
        }
    }
    b.put_u8(0);
    let len = b.len() as u32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    b.to_vec()
}

/// Settings as an `options` string: `-c name=value`, whitespace and backslashes escaped.
fn write_options(settings: &[(String, String)]) -> String {
    let mut out = String::new();
    for (name, value) in settings {
        out.push_str("-c ");
        for c in name.chars().chain(['=']).chain(value.chars()) {
            if c == '\\' || c.is_ascii_whitespace() {
                out.push('\\');
            }
            out.push(c);
        }
        out.push(' ');
    }
    out
}

fn seeds() -> Vec<Vec<u8>> {
    let startup = |params: &[(&str, &str)]| {
        encode(&StartupParams {
            minor_version: 0,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            unsupported_options: vec![],
        })
    };
    let request = |code: u32, extra: &[u8]| {
        let mut b = ((8 + extra.len()) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(extra);
        b
    };
    let plain = startup(&[("user", "acme"), ("database", "app")]);
    let options = startup(&[
        ("user", "acme"),
        (
            "options",
            "-c search_path=a,b --statement-timeout=5s -cfoo.bar=x\\ y",
        ),
        ("application_name", "psql"),
    ]);
    let mut streams = vec![
        plain.clone(),
        options,
        [request(SSL, b""), plain.clone()].concat(),
        [request(GSS, b""), request(SSL, b""), plain].concat(),
        request(CANCEL, &[0, 0, 0, 7, 0, 0, 0, 9]),
        [request(3 << 16 | 2, b"user\0a\0_pq_.x\0y\0\0")].concat(),
    ];
    streams.push(request(2 << 16, b""));
    let mut out = Vec::new();
    for (i, s) in streams.into_iter().enumerate() {
        out.push([&[5u8, i as u8][..], &s].concat());
    }
    out
}

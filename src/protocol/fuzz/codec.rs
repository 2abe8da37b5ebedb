//! Fuzz target `codec`: the frame splitter (`split_frame`, `peek_frame`) and the decoders run
//! on frame bodies (`read_cstr`, error fields, parameter status, command tags).
//!
//! Input: byte 0 picks the message size limit, byte 1 how the rest arrives in reads, the
//! rest is the client's byte stream. Invariants: no panic; the frames split off read by read
//! are exactly those an independent decoder finds in the whole stream (same tags, same
//! bytes, same error, same leftover), each with a consistent header and within the limit;
//! decoders return slices inside the body; what the proxy encodes decodes back the same;
//! peak allocation is bounded by the limit and the input, not by a length the client claims.

use bytes::BytesMut;

use super::{Target, be32, chunks};
use crate::protocol::codec::{FrameError, read_cstr, split_frame};
use crate::protocol::messages::{self, Severity};

/// The target.
pub const TARGET: Target = Target {
    name: "codec",
    check,
    alloc_bound,
    seeds,
    dictionary: DICTIONARY,
};

/// Size limits byte 0 chooses from (the smallest a header can pass, up to 1 MiB).
const LIMITS: [usize; 8] = [5, 6, 9, 64, 1024, 8192, 10_000, 1 << 20];

const DICTIONARY: &[&[u8]] = &[
    b"Q",
    b"P",
    b"B",
    b"E",
    b"S",
    b"H",
    b"p",
    b"d",
    b"X",
    b"\0",
    b"\0\0\0\x04",
    b"\0\0\0\x05",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\0\0\0\0",
    b"SELECT 1\0",
    b"C42501\0",
    b"M\0",
];

fn limit(input: &[u8]) -> usize {
    LIMITS[usize::from(input.first().copied().unwrap_or(0)) % LIMITS.len()]
}

fn alloc_bound(input: &[u8]) -> usize {
    // A header may make the buffer reserve its whole message (up to the limit) at once;
    // BytesMut may double what it holds; the round trips encode copies of bodies. The
    // harness itself keeps every frame twice (the split `Frame`s and the reference's
    // slices), at most one per 5 input bytes, in vectors that may double.
    let frames = input.len() / 5 + 1;
    let per_frame =
        std::mem::size_of::<crate::protocol::codec::Frame>() + std::mem::size_of::<&[u8]>();
    2 * limit(input) + 16 * input.len() + 4096 + 2 * frames * per_frame
}

/// How a stream ended: more bytes needed (with what is left), or a framing error.
type Ending = Result<Vec<u8>, FrameError>;

/// The independent decoder: frames of `stream` under `max`, then how it ended.
fn reference(stream: &[u8], max: usize) -> (Vec<&[u8]>, Ending) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let Some(len) = be32(stream, at + 1) else {
            return (frames, Ok(stream[at..].to_vec()));
        };
        if len < 4 {
            return (frames, Err(FrameError::BadLength(len)));
        }
        let total = len as usize + 1;
        if total > max {
            return (frames, Err(FrameError::TooLarge { len: total, max }));
        }
        if stream.len() - at < total {
            return (frames, Ok(stream[at..].to_vec()));
        }
        frames.push(&stream[at..at + total]);
        at += total;
    }
}

fn check(input: &[u8]) -> Result<&'static str, String> {
    let max = limit(input);
    let stream = input.get(2..).unwrap_or_default();
    let (want, want_end) = reference(stream, max);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut end = Ok(());
    'reads: for chunk in chunks(stream, input.get(1).copied().unwrap_or(0)) {
        buf.extend_from_slice(chunk);
        loop {
            match split_frame(&mut buf, max) {
                Ok(Some(f)) => got.push(f),
                Ok(None) => break,
                Err(e) => {
                    end = Err(e);
                    break 'reads;
                }
            }
        }
    }
    let got_end = end.map(|()| buf.to_vec());
    if got.len() != want.len() || got_end != want_end {
        return Err(format!(
            "split {} frames ending {got_end:?}, reference {} ending {want_end:?}",
            got.len(),
            want.len()
        ));
    }
    for (f, w) in got.iter().zip(&want) {
        if f.raw[..] != **w || f.tag != w[0] || f.body() != &w[5..] || f.raw.len() > max {
            return Err(format!("frame {:?} differs from reference {w:?}", f.raw));
        }
        decoders(f.body())?;
    }
    Ok(match (&want_end, want.is_empty()) {
        (Ok(rest), _) if rest.is_empty() => "ends_on_a_frame",
        (Ok(_), true) => "partial_first",
        (Ok(_), false) => "partial_after_frames",
        (Err(FrameError::BadLength(_)), _) => "bad_length",
        (Err(FrameError::TooLarge { .. }), _) => "too_large",
    })
}

/// The body decoders stay inside the body; what the proxy encodes decodes back the same.
fn decoders(body: &[u8]) -> Result<(), String> {
    if let Some((s, rest)) = read_cstr(body) {
        let whole = s.len() + 1 + rest.len() == body.len();
        if !whole || s.contains(&0) || body[s.len()] != 0 || !body.ends_with(rest) {
            return Err(format!("read_cstr({body:?}) = ({s:?}, {rest:?})"));
        }
    } else if body.contains(&0) {
        return Err(format!("read_cstr missed the NUL in {body:?}"));
    }
    let tag = messages::command_tag(body);
    if !body.starts_with(tag) {
        return Err(format!("command_tag({body:?}) = {tag:?}"));
    }
    let fields = messages::parse_error_fields(body);
    let text = |b: &[u8]| String::from_utf8_lossy(b).replace('\0', "");
    let message = text(body);
    let code = text(body.get(..5).unwrap_or(body));
    let mut out = BytesMut::new();
    messages::error_response(&mut out, Severity::Fatal, &code, &message);
    let back = split_frame(&mut out, usize::MAX).map_err(|e| e.to_string())?;
    let back = back.map(|f| messages::parse_error_fields(f.body()));
    let want = (String::from("FATAL"), code.clone(), message.clone());
    if back.map(|e| (e.severity, e.code, e.message)) != Some(want) {
        return Err(format!("error response of {message:?} did not decode back"));
    }
    let (name, value) = messages::parse_parameter_status(body).unwrap_or((b"n", b"v"));
    messages::parameter_status(&mut out, name, value);
    let f = split_frame(&mut out, usize::MAX).map_err(|e| e.to_string())?;
    let pair = f
        .as_ref()
        .and_then(|f| messages::parse_parameter_status(f.body()));
    if pair != Some((name, value)) || fields.message.chars().count() > body.len() {
        return Err(format!(
            "parameter status {name:?}={value:?} did not decode back"
        ));
    }
    Ok(())
}

/// Streams of the messages clients send, under a limit that admits them (byte 0 = 7).
fn seeds() -> Vec<Vec<u8>> {
    let mut simple = BytesMut::new();
    messages::query(&mut simple, "SELECT 1");
    let mut extended = BytesMut::new();
    messages::parse(&mut extended, "s1", "SELECT $1::int");
    messages::bind(&mut extended, "s1", [&b"42"[..]].into_iter());
    messages::execute(&mut extended);
    messages::sync(&mut extended);
    let mut error = BytesMut::new();
    messages::error_response(&mut error, Severity::Error, "42501", "permission denied");
    messages::parameter_status(&mut error, b"TimeZone", b"UTC");
    messages::terminate(&mut error);
    let mut out = Vec::new();
    for (limit_ix, reads) in [(7u8, 0u8), (7, 1), (6, 2), (4, 3)] {
        for stream in [&simple, &extended, &error] {
            let mut input = vec![limit_ix, reads];
            input.extend_from_slice(stream);
            out.push(input);
        }
    }
    // A header claiming more than the limit, and a partial message.
    out.push(b"\x03\x02Q\x00\x01\x00\x00SELECT".to_vec());
    out.push(b"\x07\x00Q\x00\x00\x00\x0dSELECT".to_vec());
    out
}

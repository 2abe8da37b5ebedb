//! Framing: splits complete `tag + length + body` messages off a read buffer without
//! copying their bodies, refusing impossible or oversized lengths before buffering them.

use bytes::{Buf, Bytes, BytesMut};

/// One complete protocol message; `raw` holds the tag and length too, so forwarding it is a
/// plain write of the same bytes.
#[derive(Debug, Clone)]
pub struct Frame {
    pub tag: u8,
    pub raw: Bytes,
}

impl Frame {
    /// The message body, after the 5-byte header.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
}

/// Why a byte stream could not be framed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(u32),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

/// The tag and total length (header included) of the message at the start of `buf`, once
/// its header is there; the message itself may still be incomplete.
pub fn peek_frame(buf: &[u8], max_len: usize) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = (&buf[1..5]).get_u32();
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let total = len as usize + 1;
    if total > max_len {
        return Err(FrameError::TooLarge {
            len: total,
            max: max_len,
        });
    }
    Ok(Some((buf[0], total)))
}

/// How much room a partial message gets ahead of its bytes; larger messages grow the
/// buffer as they arrive.
const RESERVE_AHEAD: usize = 256 * 1024;

/// Splits the next complete message off `buf`; `Ok(None)` means more bytes are needed.
pub fn split_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, FrameError> {
    let Some((tag, total)) = peek_frame(buf, max_len)? else {
        return Ok(None);
    };
    if buf.len() < total {
        // Room for the rest, but not more than RESERVE_AHEAD before the bytes arrive: a
        // header alone must not make the proxy allocate up to the message limit.
        buf.reserve((total - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    Ok(Some(Frame {
        tag,
        raw: buf.split_to(total).freeze(),
    }))
}

/// Reads a NUL-terminated string at the start of `b`, returning it and the rest.
pub fn read_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    // The standard library's NUL search goes a word at a time (SQL texts are long) and,
    // unlike a vectorised search, costs little on the short names most calls read.
    let s = std::ffi::CStr::from_bytes_until_nul(b).ok()?.to_bytes();
    Some((s, &b[s.len() + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_complete_frames_and_waits_for_partial_ones() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x09abcd\0S\0\0\0\x04Z\0\0"[..]);
        let f = split_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(f.body(), b"abcd\0");
        let f = split_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'S');
        assert!(f.body().is_empty());
        assert!(split_frame(&mut buf, 1024).unwrap().is_none());
        assert_eq!(&buf[..], b"Z\0\0");
    }

    #[test]
    fn rejects_bad_and_oversized_lengths() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x03"[..]);
        assert_eq!(
            split_frame(&mut buf, 1024).map(|f| f.map(|f| f.tag)),
            Err(FrameError::BadLength(3))
        );
        let mut buf = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        assert!(matches!(
            split_frame(&mut buf, 1024),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn reads_cstrings() {
        assert_eq!(read_cstr(b"ab\0cd"), Some((&b"ab"[..], &b"cd"[..])));
        assert_eq!(read_cstr(b"ab"), None);
    }
}

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
    // On short input (names, command tags) the standard library's word-at-a-time search
    // costs least; on long input (a Query's or a Parse's body) a vectorised one does.
    let end = if b.len() <= 64 {
        std::ffi::CStr::from_bytes_until_nul(b)
            .ok()?
            .to_bytes()
            .len()
    } else {
        memchr::memchr(0, b)?
    };
    Some((&b[..end], &b[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_cstr_up_to_the_first_nul_short_or_long() {
        for len in [0, 1, 63, 64, 65, 200, 5000] {
            let text = vec![b'x'; len];
            let mut b = text.clone();
            b.extend_from_slice(b"\0rest\0");
            assert_eq!(
                read_cstr(&b),
                Some((&text[..], &b"rest\0"[..])),
                "len {len}"
            );
            assert_eq!(read_cstr(&text), None, "len {len} without a NUL");
        }
    }

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

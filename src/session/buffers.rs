//! Spare I/O buffers, kept per worker thread. An idle session holds no buffers (thousands
//! of idle clients would otherwise pin megabytes), yet allocating and growing three buffers
//! for every transaction was a tenth of the relay's CPU: a session going idle hands its
//! buffers here and the next one to wake up takes them.

use std::cell::RefCell;

use bytes::BytesMut;

/// Room a buffer gets when a session wakes up.
pub const CHUNK: usize = 8192;
/// Spares kept per thread: enough for the sessions that go idle while others wake up,
/// small next to the memory of the clients themselves (at most 256 KiB per thread).
const SPARES: usize = 32;
/// Larger buffers (a big result or COPY) go back to the allocator.
const MAX_KEPT: usize = 64 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Gives an empty, released `buf` room for a chunk, from this thread's spares when it can.
pub fn fill(buf: &mut BytesMut) {
    if buf.capacity() > 0 {
        return;
    }
    *buf = SPARE
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(CHUNK));
    // A spare may have been read from: reclaiming its start costs no allocation.
    buf.reserve(CHUNK);
}

/// Releases an empty `buf`, keeping its memory as a spare when there is room.
pub fn recycle(buf: &mut BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    let b = std::mem::take(buf);
    if b.capacity() <= MAX_KEPT {
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARES {
                s.push(b);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_memory_is_reused_and_bounded() {
        let mut a = BytesMut::new();
        fill(&mut a);
        assert!(a.capacity() >= CHUNK);
        let base = a.as_ptr();
        a.extend_from_slice(b"hello");
        recycle(&mut a);
        assert_eq!(&a[..], b"hello", "a buffer with bytes to send is kept");
        drop(a.split_to(5));
        recycle(&mut a);
        assert_eq!(a.capacity(), 0, "released");
        let mut b = BytesMut::new();
        fill(&mut b);
        assert_eq!(b.as_ptr(), base, "the spare is reused from its start");
        assert!(b.capacity() >= CHUNK);
        for _ in 0..SPARES * 2 {
            let mut c = BytesMut::with_capacity(CHUNK);
            recycle(&mut c);
        }
        assert_eq!(SPARE.with(|s| s.borrow().len()), SPARES);
        let mut big = BytesMut::with_capacity(MAX_KEPT * 2);
        recycle(&mut big);
        assert_eq!(big.capacity(), 0);
    }
}

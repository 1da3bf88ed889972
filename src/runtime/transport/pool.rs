//! The shard's buffer pool, so an idle connection holds no buffer: a connection's reads
//! borrow a read buffer only for the length of one poll (`Reader`), and keep it past that
//! only while bytes it read are still to be consumed (a pipelined frame in flight); an AMQP
//! connection's output buffer is taken when something is written and given back when its
//! writer has drained it and goes idle (`take_output` / `give_output`).
//!
//! One pool per shard thread (`thread_local!`), touched only synchronously (no borrow
//! across an `.await`). It keeps at most `KEPT_READ` read and `KEPT_OUTPUT` output buffers
//! free; more are freed, so the pool is bounded whatever the connection count. Busy
//! connections reuse the same buffer while frames keep coming: a read that finds data
//! ready returns it at once, and a writer that finds more output keeps its buffer.
//!
//! Large request frames (`Frame`) are read into buffers this pool lends too, and given
//! back when the last `Bytes` of the request is dropped, on whichever shard that is: a
//! buffer already written once is not zeroed again, nor allocated, for the next frame.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures::AsyncRead;

/// One read buffer: the most a connection takes from its socket in one read.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Free read buffers a shard keeps (4 MiB).
const KEPT_READ: usize = 64;
/// The output buffer a connection starts writing into; buffers that grew past
/// `KEPT_OUTPUT_MAX_BYTES` (a large delivery) are freed rather than kept.
pub const OUTPUT_BUFFER_BYTES: usize = 4 * 1024;
const KEPT_OUTPUT_MAX_BYTES: usize = 64 * 1024;
/// Free output buffers a shard keeps (at most 4 MiB).
const KEPT_OUTPUT: usize = 64;

/// Frames at least this large are read into a lent buffer (smaller ones are cheap to zero).
pub const FRAME_POOL_MIN_BYTES: usize = 64 * 1024;
/// Frame buffers larger than this are freed rather than kept.
const KEPT_FRAME_MAX_BYTES: usize = 8 << 20;
/// Bytes of free frame buffers a shard keeps.
const KEPT_FRAME_BYTES: usize = 16 << 20;

#[derive(Default)]
struct Free {
    read: Vec<Box<[u8]>>,
    output: Vec<BytesMut>,
    frames: Vec<Vec<u8>>,
    frame_bytes: usize,
}

thread_local! {
    static FREE: RefCell<Free> = RefCell::new(Free::default());
}

fn take_read() -> Box<[u8]> {
    FREE.with(|f| f.borrow_mut().read.pop())
        .unwrap_or_else(|| vec![0u8; READ_BUFFER_BYTES].into_boxed_slice())
}

fn give_read(buf: Box<[u8]>) {
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.read.len() < KEPT_READ && buf.len() == READ_BUFFER_BYTES {
            f.read.push(buf);
        }
    });
}

/// An empty output buffer of at least `OUTPUT_BUFFER_BYTES`.
pub fn take_output() -> BytesMut {
    FREE.with(|f| f.borrow_mut().output.pop())
        .unwrap_or_else(|| BytesMut::with_capacity(OUTPUT_BUFFER_BYTES))
}

/// Gives an output buffer back (its contents are dropped).
pub fn give_output(mut buf: BytesMut) {
    buf.clear();
    if buf.capacity() < OUTPUT_BUFFER_BYTES || buf.capacity() > KEPT_OUTPUT_MAX_BYTES {
        return;
    }
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.output.len() < KEPT_OUTPUT {
            f.output.push(buf);
        }
    });
}

/// A buffer for one request frame of `len` bytes: lent by the pool when one large enough
/// is free (its old contents are overwritten by the read), else newly zeroed.
pub struct Frame {
    buf: Vec<u8>,
    len: usize,
}

impl Frame {
    pub fn new(len: usize) -> Frame {
        if len < FRAME_POOL_MIN_BYTES {
            return Frame {
                buf: vec![0; len],
                len,
            };
        }
        let lent = FREE.with(|f| {
            let mut f = f.borrow_mut();
            // The smallest that fits: a large buffer stays for a large frame.
            let (i, _) = (f.frames.iter().enumerate())
                .filter(|(_, b)| b.len() >= len)
                .min_by_key(|(_, b)| b.len())?;
            let buf = f.frames.swap_remove(i);
            f.frame_bytes -= buf.len();
            Some(buf)
        });
        Frame {
            buf: lent.unwrap_or_else(|| vec![0; len]),
            len,
        }
    }

    /// The frame's bytes, for the read to fill.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }

    /// The filled frame as `Bytes`; its buffer goes back to the pool of the shard that
    /// drops the last of them.
    pub fn freeze(self) -> bytes::Bytes {
        bytes::Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.len() < FRAME_POOL_MIN_BYTES || buf.len() > KEPT_FRAME_MAX_BYTES {
            return;
        }
        // `try_with`: a frame may be dropped while its thread is being torn down.
        let _ = FREE.try_with(|f| {
            let mut f = f.borrow_mut();
            if f.frame_bytes + buf.len() <= KEPT_FRAME_BYTES {
                f.frame_bytes += buf.len();
                f.frames.push(buf);
            }
        });
    }
}

/// Bytes read from the socket and not yet consumed, in a buffer lent by the pool.
struct Unread {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

/// A buffered reader whose buffer comes from the shard's pool: between frames it holds
/// none. Reads as large as a whole buffer go straight to the caller's memory.
pub struct Reader<R> {
    inner: R,
    unread: Option<Unread>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            unread: None,
        }
    }

    /// A reader that first gives `unread` (bytes another reader took from the same socket
    /// and did not consume: a connection moved to this shard), then reads `inner`.
    pub fn with_unread(inner: R, unread: &[u8]) -> Reader<R> {
        let mut reader = Reader::new(inner);
        reader.put_back(unread);
        reader
    }

    /// Takes the bytes read and not yet consumed (the reader then holds none).
    pub fn take_unread(&mut self) -> Vec<u8> {
        let Some(u) = self.unread.take() else {
            return Vec::new();
        };
        let bytes = u.buf[u.start..u.end].to_vec();
        give_read(u.buf);
        bytes
    }

    /// Puts back bytes `take_unread` took (or `with_unread`'s): they are read first.
    pub fn put_back(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.unread.is_some() {
            let rest = self.take_unread();
            return self.put_back(&[bytes, &rest[..]].concat());
        }
        let mut buf = take_read();
        if buf.len() < bytes.len() {
            buf = bytes.to_vec().into_boxed_slice();
        }
        buf[..bytes.len()].copy_from_slice(bytes);
        self.unread = Some(Unread {
            buf,
            start: 0,
            end: bytes.len(),
        });
    }

    /// Bytes read and not yet consumed (0 between frames of an idle connection).
    pub fn buffered(&self) -> usize {
        self.unread.as_ref().map_or(0, |u| u.end - u.start)
    }

    /// Reads from the socket with a buffer borrowed for this poll; `Ready(Ok(bytes))`
    /// with what arrived (empty at EOF) and the buffer still lent, `Pending` with the
    /// buffer given back.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        debug_assert!(self.unread.is_none());
        let mut buf = take_read();
        match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.unread = Some(Unread {
                    buf,
                    start: 0,
                    end: n,
                });
                Poll::Ready(Ok(()))
            }
            other => {
                give_read(buf);
                other.map_ok(|_| ())
            }
        }
    }

    /// Copies up to `dst.len()` unread bytes into `dst`, giving the buffer back once empty.
    fn drain_into(&mut self, dst: &mut [u8]) -> usize {
        let Some(u) = self.unread.as_mut() else {
            return 0;
        };
        let n = dst.len().min(u.end - u.start);
        dst[..n].copy_from_slice(&u.buf[u.start..u.start + n]);
        u.start += n;
        if u.start == u.end {
            if let Some(u) = self.unread.take() {
                give_read(u.buf);
            }
        }
        n
    }

    /// Appends what the socket has (at least one byte; none at EOF) to `dst`. While
    /// nothing has arrived, an empty `dst` gives its memory back: an idle connection
    /// holds no frame buffer.
    pub fn poll_append(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut BytesMut,
    ) -> Poll<std::io::Result<usize>> {
        if self.unread.is_none() {
            match self.poll_fill(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if dst.is_empty() && dst.capacity() > 0 {
                        *dst = BytesMut::new();
                    }
                    return Poll::Pending;
                }
            }
        }
        let Some(u) = self.unread.take() else {
            return Poll::Ready(Ok(0));
        };
        dst.extend_from_slice(&u.buf[u.start..u.end]);
        give_read(u.buf);
        Poll::Ready(Ok(u.end - u.start))
    }

    /// `poll_append` as a future.
    pub async fn append(&mut self, dst: &mut BytesMut) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_append(cx, dst)).await
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Reader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.unread.is_none() {
            if dst.len() >= READ_BUFFER_BYTES {
                return Pin::new(&mut this.inner).poll_read(cx, dst);
            }
            match this.poll_fill(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other.map_ok(|_| 0),
            }
        }
        Poll::Ready(Ok(this.drain_into(dst)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::AsyncReadExt;

    fn free_read() -> usize {
        FREE.with(|f| f.borrow().read.len())
    }

    #[test]
    fn unread_bytes_taken_from_one_reader_come_first_from_another() {
        let data: Vec<u8> = (0..10u8).collect();
        let mut r = Reader::new(&data[..]);
        let mut two = [0u8; 2];
        block_on(r.read_exact(&mut two)).unwrap();
        let unread = r.take_unread();
        assert_eq!(unread, (2..10u8).collect::<Vec<_>>());
        assert_eq!(r.buffered(), 0);
        // The socket goes on with what comes after (here: a second source).
        let more = [10u8, 11];
        let mut moved = Reader::with_unread(&more[..], &unread);
        let mut all = Vec::new();
        block_on(moved.read_to_end(&mut all)).unwrap();
        assert_eq!(all, (2..12u8).collect::<Vec<_>>());
    }

    #[test]
    fn a_reader_holds_a_buffer_only_while_bytes_are_unread() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut r = Reader::new(&data[..]);
        let before = free_read();
        let mut four = [0u8; 4];
        block_on(r.read_exact(&mut four)).unwrap();
        assert_eq!(four, [0, 1, 2, 3]);
        assert_eq!(r.buffered(), 96);
        let mut rest = vec![0u8; 96];
        block_on(r.read_exact(&mut rest)).unwrap();
        assert_eq!(rest[95], 99);
        // Drained: the buffer is back in the pool, the reader holds nothing.
        assert_eq!(r.buffered(), 0);
        assert!(r.unread.is_none());
        assert_eq!(free_read(), before.max(1));
        assert_eq!(block_on(r.read(&mut four)).unwrap(), 0);
    }

    #[test]
    fn append_takes_everything_ready_and_large_reads_bypass_the_buffer() {
        let data = vec![7u8; READ_BUFFER_BYTES + 10];
        let mut r = Reader::new(&data[..]);
        let mut big = vec![0u8; READ_BUFFER_BYTES];
        assert_eq!(block_on(r.read(&mut big)).unwrap(), READ_BUFFER_BYTES);
        assert!(r.unread.is_none());
        let mut dst = BytesMut::new();
        assert_eq!(block_on(r.append(&mut dst)).unwrap(), 10);
        assert_eq!(&dst[..], &[7u8; 10]);
        assert_eq!(block_on(r.append(&mut dst)).unwrap(), 0);
    }

    /// A large frame's buffer comes back to the pool when its last `Bytes` is dropped and
    /// serves the next frame that fits, holding the new frame's bytes only; the pool keeps
    /// a bounded number of bytes.
    #[test]
    fn frame_buffers_come_back_when_the_request_is_dropped() {
        let frames = || FREE.with(|f| f.borrow().frames.len());
        let before = frames();
        let mut one = Frame::new(FRAME_POOL_MIN_BYTES * 2);
        one.bytes_mut().fill(9);
        let bytes = one.freeze();
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(frames(), before, "a slice still holds it");
        assert_eq!(&slice[..], &[9u8; 10]);
        drop(slice);
        assert_eq!(frames(), before + 1);
        let mut two = Frame::new(FRAME_POOL_MIN_BYTES + 1);
        assert_eq!(frames(), before, "lent again");
        two.bytes_mut().fill(3);
        let two = two.freeze();
        assert_eq!(two.len(), FRAME_POOL_MIN_BYTES + 1);
        assert!(two.iter().all(|b| *b == 3));
        drop(two);
        for _ in 0..KEPT_FRAME_BYTES / KEPT_FRAME_MAX_BYTES + 3 {
            drop(Frame::new(KEPT_FRAME_MAX_BYTES));
        }
        assert!(FREE.with(|f| f.borrow().frame_bytes) <= KEPT_FRAME_BYTES);
        // Small frames are not pooled.
        drop(Frame::new(10).freeze());
        assert!(FREE.with(|f| f
            .borrow()
            .frames
            .iter()
            .all(|b| b.len() >= FRAME_POOL_MIN_BYTES)));
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_buffers() {
        for _ in 0..KEPT_READ + 5 {
            give_read(vec![0u8; READ_BUFFER_BYTES].into_boxed_slice());
        }
        assert_eq!(free_read(), KEPT_READ);
        for _ in 0..KEPT_OUTPUT + 5 {
            give_output(BytesMut::with_capacity(OUTPUT_BUFFER_BYTES));
        }
        give_output(BytesMut::with_capacity(KEPT_OUTPUT_MAX_BYTES * 2));
        assert_eq!(FREE.with(|f| f.borrow().output.len()), KEPT_OUTPUT);
    }
}

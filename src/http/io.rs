//! What hyper needs of a runtime, given by glommio: `Io` (an accepted connection, plain or
//! TLS (`runtime::transport::Transport`), as hyper's `Read`/`Write`) and `GlommioTimer` (hyper's header-read timeout on glommio
//! timers). hyper-util ships such adapters only for tokio, hence these few lines.
//!
//! Both live inside one connection's future on one shard's executor and never leave it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::runtime::transport::Transport;
use futures::{AsyncRead, AsyncWrite};

/// A connection as hyper I/O.
pub struct Io(pub Transport);

impl hyper::rt::Read for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        // SAFETY: the uninitialised tail is zeroed before it is viewed as `[u8]`, and
        // `advance` is called with the count the read reports having written into it.
        unsafe {
            let tail = buf.as_mut();
            for b in tail.iter_mut() {
                b.write(0);
            }
            let bytes = &mut *(tail as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]);
            match Pin::new(&mut self.0).poll_read(cx, bytes) {
                Poll::Ready(Ok(n)) => {
                    buf.advance(n);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// hyper's timer on glommio's.
#[derive(Clone, Copy)]
pub struct GlommioTimer;

struct GlommioSleep(glommio::timer::Timer);

// SAFETY: hyper asks `Send + Sync` of sleeps because some of its users run connections on
// work-stealing runtimes. A glommio `Timer` must be polled and dropped on the thread that
// made it (it registers with that thread's reactor, and its waker is a local task's).
// Ours are made only by `GlommioTimer`, which `http::connection` hands to one HTTP/1
// `serve_connection` future; hyper keeps the sleep inside that future's state (an HTTP/1
// server connection spawns no task and is given no executor). That future holds
// `Io(Transport)` and an `Rc<Shard>` (neither `Send` nor `Sync`), so the compiler keeps it,
// and the sleeps in it, on the shard's thread where `glommio::spawn_local` runs it: no
// sleep is ever sent to, shared with or woken from another thread.
unsafe impl Send for GlommioSleep {}
// SAFETY: as above: never shared with another thread.
unsafe impl Sync for GlommioSleep {}

impl Future for GlommioSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl hyper::rt::Sleep for GlommioSleep {}

impl hyper::rt::Timer for GlommioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(GlommioSleep(glommio::timer::Timer::new(duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

//! An accepted connection as the protocols see it: plain TCP or TLS over TCP (`Transport`),
//! and its two halves (`ReadHalf`, `WriteHalf`) so a connection's reader and writer tasks
//! never wait on each other.
//!
//! Protocol-free; runs in the connection's own task on the shard that accepted it.
//!
//! - `Socket` is the accepted socket, one descriptor shared (`Rc`) by the connection's
//!   reader, its writer and the shard's connection list (`listener::Clients`, which holds a
//!   `Weak` to shut it down from outside). The descriptor closes when the last of them
//!   drops, so a number the list holds always names this connection's socket.
//! - Plain: both halves are the `Socket`: no copy, no lock, no second descriptor; each
//!   read or write borrows the stream for the length of one poll, never across a wait
//!   (glommio keeps a socket's receive and send state apart, so a pending read and a
//!   pending write coexist).
//! - TLS: one rustls session cannot be split by descriptor, so the stream is split with
//!   `futures::io::AsyncReadExt::split` (each read or write takes a `BiLock` for the length
//!   of one poll, never across a wait).
//!
//! - `pool`: the shard's read and output buffers, lent to a connection only while a frame
//!   is in flight (an idle connection holds none).
//!
//! `accept_tls` runs the handshake under `tls.handshake_timeout_ms` and counts it in the
//! audit trail (`security::audit::tls_handshake` / `tls_failure` by reason: `timeout`,
//! `no_certificate`, `bad_certificate`, `protocol`, `io`).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::io::AsyncReadExt as _;
use futures::{AsyncRead, AsyncWrite};
use futures_rustls::server::TlsStream;
use glommio::net::TcpStream;

use crate::metrics::Protocol;
use crate::security::audit;

pub mod pool;
use crate::security::tls::PeerSubject;

/// An accepted socket: one descriptor, shared by the connection's reader and writer (and
/// weakly by the shard's connection list). Stays on the accepting shard's thread.
#[derive(Clone)]
pub struct Socket(Rc<RefCell<TcpStream>>);

/// A second descriptor of an accepted socket (`Socket::duplicate`), owned, on its way to the
/// shard that will serve the connection (`Socket::adopt`). Plain data: it holds no `Rc` and
/// no waker of the shard it leaves. Dropping it closes that descriptor.
pub struct SocketFd(socket2_glommio::Socket);

/// The connection list's handle on a `Socket`: shuts it down while it is open.
pub struct WeakSocket(Weak<RefCell<TcpStream>>);

impl Socket {
    pub fn new(stream: TcpStream) -> Socket {
        Socket(Rc::new(RefCell::new(stream)))
    }

    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.borrow().peer_addr().map_err(Into::into)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.borrow().local_addr().map_err(Into::into)
    }

    pub fn set_nodelay(&self, on: bool) -> std::io::Result<()> {
        self.0.borrow().set_nodelay(on).map_err(Into::into)
    }

    /// The descriptor, open while `self` (or any clone) lives.
    pub fn as_raw_fd(&self) -> RawFd {
        self.0.borrow().as_raw_fd()
    }

    pub fn downgrade(&self) -> WeakSocket {
        WeakSocket(Rc::downgrade(&self.0))
    }

    /// A second descriptor of this socket (a `dup`), for another shard to serve the
    /// connection with (`listener::hand_over`). The socket stays open, here and there,
    /// until both descriptors close.
    pub fn duplicate(&self) -> std::io::Result<SocketFd> {
        let stream = self.0.borrow();
        socket2_glommio::SockRef::from(&*stream)
            .try_clone()
            .map(SocketFd)
    }

    /// The connection a `SocketFd` names, served by this thread's executor from now on.
    pub fn adopt(fd: SocketFd) -> Socket {
        Socket::new(TcpStream::from(fd.0))
    }

    /// Shuts the socket down both ways: every reader and writer of it sees the end.
    pub fn shutdown(&self) {
        // SAFETY: the descriptor belongs to the stream `self` keeps alive (it is closed
        // only when the last `Socket` drops), so it is open and names this socket for the
        // whole call; shutdown neither closes it nor touches memory.
        unsafe { libc::shutdown(self.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

impl WeakSocket {
    /// Shuts the socket down; false when the connection has already dropped it.
    pub fn shutdown(&self) -> bool {
        match self.0.upgrade() {
            Some(s) => {
                Socket(s).shutdown();
                true
            }
            None => false,
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    /// One `sendmsg` for all of `bufs` (a response and the log's batches it carries go out
    /// in one call, none copied into another buffer first). glommio has no vectored send;
    /// its `poll_write` keeps no bytes in flight (it sends at once, or waits for the socket
    /// to take more), so a send of ours between two of its writes cannot reorder anything.
    /// When the socket is full, glommio's write of the first buffer waits for room.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let sent = {
            let stream = self.0.borrow();
            socket2_glommio::SockRef::from(&*stream)
                .send_vectored_with_flags(bufs, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        match sent {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &b[..]);
                Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, first)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => Poll::Ready(other),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    /// Shuts the socket down for writing (glommio's close); the descriptor stays open for
    /// the reader until the last `Socket` drops.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// One accepted connection, plain or TLS.
pub enum Transport {
    Plain(Socket),
    Tls(Box<TlsStream<Socket>>),
}

/// The half a connection reads from.
pub enum ReadHalf {
    Plain(Socket),
    Tls(futures::io::ReadHalf<TlsStream<Socket>>),
}

/// The half a connection writes to.
pub enum WriteHalf {
    Plain(Socket),
    /// With the socket, for `shutdown`.
    Tls(futures::io::WriteHalf<TlsStream<Socket>>, Socket),
}

/// Why a TLS handshake failed: the `reason` label of
/// `portask_tls_handshake_failures_total`.
pub fn failure_reason(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate",
        Some(rustls::Error::InvalidCertificate(_)) => "bad_certificate",
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::CertificateUnknown
            | rustls::AlertDescription::CertificateExpired
            | rustls::AlertDescription::CertificateRevoked
            | rustls::AlertDescription::UnsupportedCertificate,
        )) => "bad_certificate",
        Some(_) => "protocol",
        None => "io",
    }
}

/// Runs the TLS handshake on `stream` with `config`, within `timeout`; counted (and a
/// failure logged, rate-limited) for `protocol`.
pub async fn accept_tls(
    stream: Socket,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
    protocol: Protocol,
) -> std::io::Result<Transport> {
    let peer = stream.peer_addr().ok();
    let accept = futures_rustls::TlsAcceptor::from(config).accept(stream);
    let timer = glommio::timer::sleep(timeout);
    let result = match futures::future::select(std::pin::pin!(accept), std::pin::pin!(timer)).await
    {
        futures::future::Either::Left((r, _)) => r,
        futures::future::Either::Right(_) => {
            audit::tls_failure(protocol, "timeout", || {
                format!(
                    "{} TLS handshake from {peer:?} not done within {} ms \
                     (tls.handshake_timeout_ms)",
                    protocol.name(),
                    timeout.as_millis()
                )
            });
            return Err(std::io::ErrorKind::TimedOut.into());
        }
    };
    match result {
        Ok(tls) => {
            audit::tls_handshake(protocol);
            Ok(Transport::Tls(Box::new(tls)))
        }
        Err(e) => {
            let reason = failure_reason(&e);
            audit::tls_failure(protocol, reason, || {
                format!(
                    "{} TLS handshake from {peer:?} failed ({reason}): {e}",
                    protocol.name()
                )
            });
            Err(e)
        }
    }
}

impl Transport {
    /// The subject of the client's certificate, which the CA verified (rustls presents
    /// one only then); `None` on plain connections and without one.
    pub fn peer_subject(&self) -> Option<PeerSubject> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(tls) => {
                let certs = tls.get_ref().1.peer_certificates()?;
                PeerSubject::of(certs.first()?.as_ref())
            }
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The socket under the connection.
    pub fn tcp(&self) -> &Socket {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Splits the connection for a reader and a writer task (no new descriptor).
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Transport::Plain(socket) => (ReadHalf::Plain(socket.clone()), WriteHalf::Plain(socket)),
            Transport::Tls(tls) => {
                let socket = tls.get_ref().0.clone();
                let (r, w) = (*tls).split();
                (ReadHalf::Tls(r), WriteHalf::Tls(w, socket))
            }
        }
    }
}

impl WriteHalf {
    /// Shuts the socket down both ways (the reader's next read ends at once).
    pub async fn shutdown(&mut self) {
        match self {
            WriteHalf::Plain(socket) | WriteHalf::Tls(_, socket) => socket.shutdown(),
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_close(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ReadHalf::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Tls(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }

    /// Plain: one `sendmsg` (`Socket::poll_write_vectored`); TLS: the first buffer, as the
    /// session encrypts record by record anyway.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            WriteHalf::Tls(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Tls(s, _) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_close(cx),
            WriteHalf::Tls(s, _) => Pin::new(s).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failures_get_the_reason_the_metric_names() {
        let wrap = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert_eq!(
            failure_reason(&wrap(rustls::Error::NoCertificatesPresented)),
            "no_certificate"
        );
        assert_eq!(
            failure_reason(&wrap(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))),
            "bad_certificate"
        );
        assert_eq!(
            failure_reason(&wrap(rustls::Error::AlertReceived(
                rustls::AlertDescription::UnknownCA
            ))),
            "bad_certificate"
        );
        assert_eq!(
            failure_reason(&wrap(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))),
            "protocol"
        );
        assert_eq!(
            failure_reason(&std::io::ErrorKind::UnexpectedEof.into()),
            "io"
        );
    }
}

//! The accept loop every protocol listener of a shard runs: accept until the shard stops,
//! refuse connections past `limits.max_connections_per_shard` with a log line, and run each
//! accepted connection as a task on this shard, listed in `Shard::clients`.
//!
//! `Clients` is the shard's list of open connections (what `/api/v1/connections` shows); a
//! connection is closed from outside by shutting its socket down, which its own task sees
//! as the peer going away and cleans up as usual.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use futures::future::{select, Either};
use glommio::net::{TcpListener, TcpStream};

use super::notify::Listener;
use super::shard::Shard;

/// Accepts `protocol` connections on `listener` until the shard stops; `serve` runs one.
pub async fn accept_loop<F, Fut, E>(
    shard: Rc<Shard>,
    listener: TcpListener,
    protocol: &'static str,
    serve: F,
) where
    F: Fn(Rc<Shard>, TcpStream) -> Fut + 'static,
    Fut: Future<Output = Result<(), E>> + 'static,
    E: std::fmt::Display,
{
    let serve = Rc::new(serve);
    loop {
        let stop = Listener::new();
        stop.listen(&shard.stop);
        if shard.stopping.get() {
            break;
        }
        let accepted = match select(Box::pin(listener.accept()), stop).await {
            Either::Left((r, _)) => r,
            Either::Right(_) => break,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                log::warn!("{protocol} accept: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let max = shard.config.limits.max_connections_per_shard;
        if shard.clients.len() >= max {
            log::warn!(
                "shard {}: refusing {protocol} connection from {:?}: {max} connections already open",
                shard.id,
                stream.peer_addr().ok()
            );
            drop(stream);
            continue;
        }
        let shard = shard.clone();
        let serve = serve.clone();
        glommio::spawn_local(async move {
            let id = shard.clients.open(&shard, protocol, &stream);
            if let Err(e) = serve(shard.clone(), stream).await {
                log::debug!("{protocol} connection ended: {e}");
            }
            shard.clients.close(&shard, id);
        })
        .detach();
    }
}

/// One open connection.
struct Client {
    protocol: &'static str,
    peer: String,
    local: String,
    connected_at_ms: i64,
    /// A descriptor of the connection's socket that this entry owns (a duplicate), for
    /// shutting the connection down from outside. The connection's own descriptors may
    /// close before the entry leaves the map (its reader stream is dropped when reading
    /// ends, while its writer still drains), after which their numbers can name another
    /// file; this one stays open exactly as long as the entry, so it always names this
    /// connection's socket. `None` when it could not be duplicated (no descriptors left).
    fd: Option<OwnedFd>,
}

/// The open connections of one shard.
pub struct Clients {
    shard: usize,
    map: RefCell<BTreeMap<u64, Client>>,
    next: Cell<u64>,
}

impl Clients {
    pub fn new(shard: usize) -> Clients {
        Clients {
            shard,
            map: RefCell::new(BTreeMap::new()),
            next: Cell::new(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn open(&self, shard: &Shard, protocol: &'static str, stream: &TcpStream) -> u64 {
        // Shard in the high bits: ids are unique across the process.
        let id = ((self.shard as u64) << 48) | self.next.get();
        self.next.set(self.next.get() + 1);
        let addr =
            |a: std::io::Result<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        self.map.borrow_mut().insert(
            id,
            Client {
                protocol,
                peer: addr(stream.peer_addr().map_err(Into::into)),
                local: addr(stream.local_addr().map_err(Into::into)),
                connected_at_ms: crate::storage::log::now_ms(),
                // SAFETY: `stream` is alive for this whole call, so its descriptor is open
                // while it is borrowed; the borrow ends with this statement, leaving only
                // the duplicate we own.
                fd: unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }
                    .try_clone_to_owned()
                    .ok(),
            },
        );
        if let Some(p) = crate::metrics::Protocol::from_name(protocol) {
            crate::metrics::with(|m| {
                let m = m.protocol(p);
                m.connections_active += 1;
                m.connections_total += 1;
            });
        }
        shard.connections_changed.notify();
        id
    }

    fn close(&self, shard: &Shard, id: u64) {
        if let Some(c) = self.map.borrow_mut().remove(&id) {
            if let Some(p) = crate::metrics::Protocol::from_name(c.protocol) {
                crate::metrics::with(|m| {
                    let m = m.protocol(p);
                    m.connections_active = m.connections_active.saturating_sub(1);
                });
            }
        }
        shard.connections_changed.notify();
    }

    /// Shuts a connection's socket down; false when it is not open on this shard.
    pub fn shutdown(&self, id: u64) -> bool {
        let map = self.map.borrow();
        let Some(fd) = map.get(&id).and_then(|c| c.fd.as_ref()) else {
            return false;
        };
        // SAFETY: `fd` is the entry's own duplicate of the connection's socket, open while
        // the entry (borrowed here) exists; shutdown neither closes it nor touches memory.
        // Shutting down one descriptor of a socket ends it for all of them, so the
        // connection's tasks see the peer go away and clean up as usual.
        unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        true
    }

    pub fn list(&self) -> Vec<crate::metrics::ConnectionStats> {
        self.map
            .borrow()
            .iter()
            .map(|(id, c)| crate::metrics::ConnectionStats {
                id: *id,
                protocol: c.protocol,
                shard: self.shard,
                peer: c.peer.clone(),
                local: c.local.clone(),
                connected_at_ms: c.connected_at_ms,
                user: None,
            })
            .collect()
    }
}

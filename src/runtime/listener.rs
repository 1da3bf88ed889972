//! The accept loop every protocol listener of a shard runs: accept until the shard stops,
//! refuse connections past `limits.max_connections_per_shard` (on this shard) or
//! `limits.max_connections_per_ip` (from one address, across every shard and port of the
//! process) with a rate-limited log line and a count in `/metrics`
//! (`portask_connections_refused_total`), and run each accepted connection as a task on
//! this shard, listed in `Core::clients`.
//!
//! `Clients` is the shard's list of open connections (what `/api/v1/connections` shows); a
//! connection is closed from outside by shutting its socket down, which its own task sees
//! as the peer going away and cleans up as usual.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Mutex;

use futures::future::{select, Either};
use glommio::net::TcpListener;

use super::core::Core;
use super::transport::{Socket, WeakSocket};
use crate::util::notify::{Listener, Notify};
use crate::util::ShardIds;

/// Accepts `protocol` connections on `listener` until the shard stops; `serve` runs one
/// with the protocol's view of the shard (`S`, anything that leads to its `Core`).
pub async fn accept_loop<S, F, Fut, E>(
    shard: Rc<S>,
    listener: TcpListener,
    protocol: &'static str,
    serve: F,
) where
    S: Deref<Target = Core> + 'static,
    F: Fn(Rc<S>, Socket) -> Fut + 'static,
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
        let peer = stream.peer_addr().ok();
        let max = shard.config.limits.max_connections_per_shard;
        if shard.clients.len() >= max {
            refuse(protocol, Refusal::PerShard, || {
                format!(
                    "shard {}: refusing {protocol} connection from {peer:?}: {max} connections \
                     already open (limits.max_connections_per_shard)",
                    shard.id
                )
            });
            drop(stream);
            continue;
        }
        let limits = &shard.config.limits;
        let slot = match peer.map(|p| IpSlot::take(p.ip(), limits.per_ip_limit(canonical(p.ip()))))
        {
            Some(Err(open)) => {
                refuse(protocol, Refusal::PerIp, || {
                    format!(
                        "shard {}: refusing {protocol} connection from {peer:?}: {open} \
                         connections from that address already open \
                         (limits.max_connections_per_ip, or its override)",
                        shard.id
                    )
                });
                drop(stream);
                continue;
            }
            Some(Ok(slot)) => Some(slot),
            None => None,
        };
        let serve = serve.clone();
        let counted = Counted { slot, new: true };
        run(
            shard.clone(),
            protocol,
            Socket::new(stream),
            counted,
            move |shard, socket| serve(shard, socket),
        );
    }
}

/// How an open connection is counted: against its address (`None` when the peer's address
/// was unknown), and as a new connection or one moved from another shard.
struct Counted {
    slot: Option<IpSlot>,
    new: bool,
}

/// Runs one connection as a task on this shard, listed in its `Clients` while it runs.
fn run<S, F, Fut, E>(
    shard: Rc<S>,
    protocol: &'static str,
    socket: Socket,
    counted: Counted,
    serve: F,
) where
    S: Deref<Target = Core> + 'static,
    F: FnOnce(Rc<S>, Socket) -> Fut + 'static,
    Fut: Future<Output = Result<(), E>> + 'static,
    E: std::fmt::Display,
{
    glommio::spawn_local(async move {
        let id = shard.clients.open(protocol, &socket, counted.new);
        if let Err(e) = serve(shard.clone(), socket).await {
            log::debug!("{protocol} connection ended: {e}");
        }
        shard.clients.close(id);
        drop(counted.slot);
    })
    .detach();
}

/// Moves an open connection to shard `to`, where `serve` goes on with it as one of that
/// shard's connections (listed in its `Clients`, counted against its address, not counted
/// again as a new connection). The caller must have stopped using `socket` but not shut it
/// down: once this returns true, it drops its `Socket` and the connection is `to`'s (the
/// socket stays open through the descriptor `to` got). False, with nothing sent, when the
/// socket cannot be duplicated or `to` cannot be reached: the connection stays here.
pub async fn hand_over<S, F, Fut, E>(
    core: &Rc<Core>,
    to: usize,
    protocol: &'static str,
    socket: &Socket,
    serve: F,
) -> bool
where
    S: Deref<Target = Core> + 'static,
    F: FnOnce(Rc<S>, Socket) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + 'static,
    E: std::fmt::Display,
{
    let fd = match socket.duplicate() {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!("{protocol} connection stays on shard {}: {e}", core.id);
            return false;
        }
    };
    // Counted against its address from here, so the count never dips while it moves.
    let slot = socket
        .peer_addr()
        .ok()
        .and_then(|p| IpSlot::take(p.ip(), 0).ok());
    core.tell_on::<S>(to, move |shard: &Rc<S>| {
        let counted = Counted { slot, new: false };
        run(shard.clone(), protocol, Socket::adopt(fd), counted, serve);
    })
    .await
    .is_ok()
}

/// Why a connection was refused at accept (the `reason` label of
/// `portask_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PerShard,
    PerIp,
}

thread_local! {
    /// Refusals are logged at most once a second per shard, so a client hammering the port
    /// cannot fill the log (the count in `/metrics` stays exact).
    static REFUSAL_LOG: crate::util::LogLimit = const { crate::util::LogLimit::new() };
}

fn refuse(protocol: &'static str, why: Refusal, line: impl FnOnce() -> String) {
    if let Some(p) = crate::metrics::Protocol::from_name(protocol) {
        crate::metrics::with(|m| {
            let m = m.protocol(p);
            match why {
                Refusal::PerShard => m.refused_per_shard += 1,
                Refusal::PerIp => m.refused_per_ip += 1,
            }
        });
    }
    REFUSAL_LOG.with(|l| l.warn(line));
}

/// Open connections per client address, for the whole process: every shard accepts on
/// every port (SO_REUSEPORT), so one client's connections land on several shards and a
/// per-shard count would let it open `shards ×` the limit. This is the one table shards
/// share, and it is touched only when a connection is accepted or ends — never while one
/// is served — so the lock here is not on the data path (the rule of ARCHITECTURE.md §1);
/// it is held for one hash-map update, and an accept is a system call anyway.
static OPEN_PER_IP: Mutex<Option<HashMap<IpAddr, usize>>> = Mutex::new(None);

/// One connection counted against its address in `OPEN_PER_IP`; dropping it uncounts it.
pub struct IpSlot(IpAddr);

impl IpSlot {
    /// Counts a connection from `ip`, unless `limit` (0: none) are already open from it:
    /// then `Err` with that count.
    pub fn take(ip: IpAddr, limit: usize) -> Result<IpSlot, usize> {
        let ip = canonical(ip);
        let mut table = OPEN_PER_IP.lock().unwrap_or_else(|e| e.into_inner());
        let open = table
            .get_or_insert_with(HashMap::new)
            .entry(ip)
            .or_insert(0);
        if limit > 0 && *open >= limit {
            return Err(*open);
        }
        *open += 1;
        Ok(IpSlot(ip))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut table = OPEN_PER_IP.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(table) = table.as_mut() {
            if let Some(open) = table.get_mut(&self.0) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    table.remove(&self.0);
                }
            }
        }
    }
}

/// An IPv4 client reaching a dual-stack socket shows as `::ffff:a.b.c.d`: one address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One open connection.
struct Client {
    protocol: &'static str,
    peer: String,
    local: String,
    connected_at_ms: i64,
    /// The connection's socket, for shutting it down from outside: weak, so the entry
    /// holds no descriptor of its own; once the connection has dropped its socket, there
    /// is nothing left to shut down (and no stale descriptor number to hit).
    socket: WeakSocket,
}

/// The open connections of one shard.
pub struct Clients {
    shard: usize,
    map: RefCell<BTreeMap<u64, Client>>,
    ids: ShardIds,
    /// Fires whenever a connection opens or closes (the clean stop waits on it).
    pub changed: Notify,
}

impl Clients {
    pub fn new(shard: usize) -> Clients {
        Clients {
            shard,
            map: RefCell::new(BTreeMap::new()),
            ids: ShardIds::new(shard),
            changed: Notify::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lists a connection; `new`: counted in `connections_total` (one moved from another
    /// shard was counted there).
    fn open(&self, protocol: &'static str, stream: &Socket, new: bool) -> u64 {
        // Shard in the high bits: ids are unique across the process.
        let id = self.ids.next();
        let addr =
            |a: std::io::Result<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        self.map.borrow_mut().insert(
            id,
            Client {
                protocol,
                peer: addr(stream.peer_addr()),
                local: addr(stream.local_addr()),
                connected_at_ms: crate::util::now_ms(),
                socket: stream.downgrade(),
            },
        );
        if let Some(p) = crate::metrics::Protocol::from_name(protocol) {
            crate::metrics::with(|m| {
                let m = m.protocol(p);
                m.connections_active += 1;
                if new {
                    m.connections_total += 1;
                } else {
                    m.connections_moved += 1;
                }
            });
        }
        self.changed.notify();
        id
    }

    fn close(&self, id: u64) {
        if let Some(c) = self.map.borrow_mut().remove(&id) {
            if let Some(p) = crate::metrics::Protocol::from_name(c.protocol) {
                crate::metrics::with(|m| {
                    let m = m.protocol(p);
                    m.connections_active = m.connections_active.saturating_sub(1);
                });
            }
        }
        self.changed.notify();
    }

    /// Shuts a connection's socket down; false when it is not open on this shard.
    pub fn shutdown(&self, id: u64) -> bool {
        let map = self.map.borrow();
        let Some(client) = map.get(&id) else {
            return false;
        };
        // The connection's tasks see the peer go away and clean up as usual; a socket
        // already dropped belongs to a connection already ending.
        client.socket.shutdown();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_count_across_holders_and_free_on_drop() {
        let ip: IpAddr = "192.0.2.77".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.77".parse().unwrap();
        let a = IpSlot::take(ip, 2).unwrap();
        let b = IpSlot::take(mapped, 2).unwrap();
        assert_eq!(IpSlot::take(ip, 2).err(), Some(2));
        // Another address has its own count; 0 means no limit.
        let other = IpSlot::take("192.0.2.78".parse().unwrap(), 2).unwrap();
        assert!(IpSlot::take(ip, 0).is_ok());
        drop(a);
        let c = IpSlot::take(ip, 2).unwrap();
        drop((b, c, other));
        assert!(OPEN_PER_IP
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|t| !t.contains_key(&ip)));
    }
}

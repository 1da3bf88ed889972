//! A publishing connection moves to the shard of the queues it publishes to
//! (`runtime::placement`): when its last publishes all went to queues of one other shard,
//! each of them crossed shards (and its confirm crossed back), a wake-up of both shards per
//! message at moderate rates. Moved, the publishes are enqueued where they arrive.
//!
//! Only a connection at rest moves, between two publishes: running, on a plain socket, no
//! exclusive queue, and every channel at rest (`Channel::at_rest`: no consumer, nothing
//! unacked, no publish half-read or waiting for its confirm, an empty transaction).
//! Consumers stay where they are: their queues deliver to them by connection. A
//! connection with no consumer yet moves, before its first `basic.consume`, to the shard
//! of the queue it names (`consume_elsewhere`): the consume is handled there. The move
//! (`move_to`) reads nothing meanwhile: it waits (at most `SETTLE`) for the confirms owed
//! to be written, then for every op this shard queued for the other one to be applied
//! there (`outbox::barrier`), so what the connection published before the move is in its
//! queues before anything it publishes after; then the socket goes over with the start of
//! the next frame already read, the user, vhost, negotiated limits and each channel's
//! settings and counters (`Carried`: prefetch, delivery tag and confirm sequence go on
//! where they were). The client sees nothing of it. `amqp.connections_follow_queues =
//! false` keeps every connection where it was accepted.
//!
//! Runs on the connection's shard (`move_to`), then on the other one (`adopted`).

use std::cell::OnceCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::{io, run_connection, Connection, Phase};
use crate::amqp::auth::Permissions;
use crate::amqp::channel::{Carried, Channel};
use crate::amqp::codec;
use crate::amqp::outbox;
use crate::broker::Shard;
use crate::runtime::transport::{Socket, Transport};
use crate::runtime::{listener, placement};

/// How long a move waits for the connection's confirms to be written (the client's
/// frames are not read meanwhile).
const SETTLE: Duration = Duration::from_millis(100);

/// What a connection takes along to the shard it moves to.
struct Moving {
    peer: SocketAddr,
    user: String,
    vhost: String,
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    blocked_capable: bool,
    published: bool,
    channels: Vec<Carried>,
    /// What was read from the socket and not handled: the start of the next frame, or a
    /// `basic.consume` and whatever followed it (`consume_elsewhere`).
    unread: Vec<u8>,
}

/// A channel has a publish whose content frames are still to come: the move waits for it
/// to be read whole (the reader reads on until no publish is half-read).
pub(super) fn assembling(conn: &Connection) -> bool {
    conn.channels
        .borrow()
        .values()
        .any(|c| c.try_borrow().map_or(true, |c| c.publish.is_some()))
}

/// The shard to move to before handling the frame at the start of `buf`: a
/// `basic.consume` on a queue another shard owns, by a connection that holds nothing
/// binding it here (no consumer yet) and that no refused move holds back. Its queue then
/// delivers to it, and takes its acks, with no cross-shard hop: at moderate rates a
/// wake-up of both shards per delivery and per ack. Read from the frame's bytes without
/// taking it: the frame goes along with the move (`Moving::unread`) and is handled there,
/// or here when the move does not happen. A Kafka topic AMQP does not show yet counts as
/// the stream queue the consume will find, on its partition's shard
/// (`stream::declare::adopted_owner`). An empty queue name (the channel's last declared
/// queue) or any other name this shard does not know keeps the connection here.
pub(super) fn consume_elsewhere(conn: &Connection, buf: &[u8]) -> Option<usize> {
    // A method frame: type, channel (2), size (4), then class 60 (basic), method 20
    // (consume), reserved-1 (2), the queue name as a short string.
    const HEAD: usize = 7;
    if buf.first() != Some(&codec::FRAME_METHOD) || buf.len() < HEAD + 7 {
        return None;
    }
    let payload = &buf[HEAD..];
    if payload[..4] != [0, 60, 0, 20] {
        return None;
    }
    let len = usize::from(payload[6]);
    let name = std::str::from_utf8(payload.get(7..7 + len)?).ok()?;
    // A publish half-read on another channel would hold the move back (`settled`) until
    // frames this shard no longer reads: that connection stays.
    if name.is_empty() || !conn.follow.may_move(Instant::now()) || bound(conn) || assembling(conn) {
        return None;
    }
    let shard = &conn.shard;
    let owner = match shard.amqp.router(shard).queue(conn.vhost(), name) {
        Some(q) => q.owner,
        None => {
            let state = shard.catalog.current();
            crate::stream::declare::adopted_owner(&state, conn.vhost(), name, shard.count)?
        }
    };
    (owner != shard.id).then_some(owner)
}

/// The connection holds state that keeps it here however long it waits (a consumer, an
/// exclusive queue, a delivery unacked…): it is not offered to another shard at all.
fn bound(conn: &Connection) -> bool {
    bound_itself(conn)
        || conn
            .channels
            .borrow()
            .values()
            .any(|c| c.try_borrow().map_or(true, |c| c.bound()))
}

/// `bound` by the connection's own state, whatever its channels hold.
fn bound_itself(conn: &Connection) -> bool {
    conn.dead.get()
        || conn.quiet.get()
        || conn.disk_blocked.get()
        || !conn.exclusive.borrow().is_empty()
}

/// Nothing in flight on the connection (not `bound`, every channel at rest, its output
/// written): it can be described by its settings alone.
fn at_rest(conn: &Connection) -> bool {
    // A channel at rest is not bound: its own check covers that.
    !bound_itself(conn)
        && conn.written.borrow().is_empty()
        && conn.out.borrow().is_empty()
        && !conn.writing.get()
        && conn
            .channels
            .borrow()
            .values()
            .all(|c| c.try_borrow().is_ok_and(|c| c.at_rest()))
}

/// Waits until the connection is at rest, at most `SETTLE`; false if it is not by then.
async fn settled(conn: &Connection) -> bool {
    let until = Instant::now() + SETTLE;
    loop {
        if at_rest(conn) {
            return true;
        }
        if Instant::now() >= until || conn.dead.get() || conn.shard.stopping.get() {
            return false;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// Moves the connection to shard `to`, if that shard takes it and the connection comes to
/// rest; `buf` holds what was read and not handled (`Moving::unread`). True once another
/// shard serves it (this one then writes nothing more to it); false when it goes on here,
/// nothing lost.
pub(super) async fn move_to(
    conn: &Rc<Connection>,
    to: usize,
    socket: &Socket,
    buf: &mut BytesMut,
) -> bool {
    let shard = &conn.shard;
    let moved = !bound(conn)
        && placement::offer(&shard.core, to).await
        && settled(conn).await
        && {
            // What this connection published is applied at `to` before the move arrives.
            outbox::barrier(shard, to).await;
            at_rest(conn)
        }
        && {
            let moving = Moving {
                peer: conn.peer,
                user: conn.user().to_owned(),
                vhost: conn.vhost().to_owned(),
                frame_max: conn.frame_max.get(),
                channel_max: conn.channel_max.get(),
                heartbeat: conn.heartbeat.get(),
                blocked_capable: conn.blocked_capable.get(),
                published: conn.published.get(),
                channels: conn
                    .channels
                    .borrow()
                    .values()
                    .map(|c| c.borrow().carried())
                    .collect(),
                unread: buf.to_vec(),
            };
            let serve = move |shard: Rc<Shard>, socket: Socket| adopted(shard, socket, moving);
            // From here this shard writes nothing (a heartbeat due meanwhile is dropped):
            // the other one may be writing as soon as the socket is there.
            conn.moved.set(true);
            let handed = listener::hand_over(&shard.core, to, "amqp", socket, serve).await;
            conn.moved.set(handed);
            handed
        };
    if moved {
        log::debug!("amqp connection from {} moved to shard {to}", conn.peer);
    } else {
        conn.follow.refused(Instant::now());
    }
    moved
}

/// Goes on with a connection another shard handed over (`move_to`), on this shard.
async fn adopted(shard: Rc<Shard>, socket: Socket, moving: Moving) -> std::io::Result<()> {
    let cfg = &shard.config.amqp;
    let Some(perms) = Permissions::shared(cfg, &moving.user, &moving.vhost) else {
        // The same configuration on every shard: not expected. The client reconnects.
        log::warn!(
            "amqp connection from {} dropped moving to shard {}: no permissions for {} on {}",
            moving.peer,
            shard.id,
            moving.user,
            moving.vhost
        );
        return Ok(());
    };
    let conn = Connection::new(&shard, moving.peer);
    let set = |cell: &OnceCell<String>, v: String| {
        let _ = cell.set(v);
    };
    set(&conn.user, moving.user);
    set(&conn.vhost, moving.vhost);
    let _ = conn.perms.set(perms);
    conn.frame_max.set(moving.frame_max);
    conn.channel_max.set(moving.channel_max);
    conn.heartbeat.set(moving.heartbeat);
    conn.blocked_capable.set(moving.blocked_capable);
    {
        let mut channels = conn.channels.borrow_mut();
        for c in moving.channels {
            channels.insert(c.id, Channel::resumed(c));
        }
    }
    let conn = Rc::new(conn);
    io::start_heartbeats(&conn);
    super::channels::start_consumer_timeouts(&conn);
    if moving.published {
        super::mark_published(&conn);
    }
    let plain = Transport::Plain(socket.clone());
    run_connection(conn, plain, Phase::Running, Some(socket), &moving.unread).await
}

//! One AMQP connection on the shard that accepted it, plain (`amqp.addr`) or over TLS
//! (`amqp.tls_addr`, `runtime::transport`): its state (`Connection`), its life
//! from accept to clean-up (`run`: consumers cancelled, unacked messages requeued,
//! exclusive queues deleted), and which part handles a frame in which phase
//! (`handle_frame`). The parts, each in its file:
//!
//! - `io`: the socket — the reader loop (frames in, deadlines, the stop drain), the writer
//!   task, heartbeats;
//! - `handshake`: protocol header, start/start-ok with PLAIN or AMQPLAIN (and EXTERNAL on
//!   TLS connections with a verified client certificate), tune/tune-ok, open;
//! - `channel0`: the connection's methods once running (close, blocked, update-secret);
//! - `channels`: frames for channels 1..=channel_max (open, methods, content, close) and the
//!   consumer timeout;
//! - `flow`: flow control — a connection is not read while the shard's outbox is over its
//!   budget (`connection.blocked`, "back-pressure"), while its own output waits for a slow
//!   reader, nor, once it has published, while the disk alarm is on (`wait_for_disk`, "low
//!   on disk").
//!
//! A `Connection` is shared by `Rc` between its reader task, its writer task, its
//! heartbeat task and the shard's op handler (deliveries and confirms arrive through
//! `ShardAmqp::connection`). Output is one `BytesMut` the writer drains; the reader never
//! waits on the writer. No `RefCell` borrow is held across an `.await`.
//!
//! Counted in the shard's metrics: every method frame received, by `class.method`
//! (`portask_requests_total{protocol="amqp"}`), and every channel or connection close
//! the broker starts, by reply code (`portask_errors_total{protocol="amqp"}`).

mod channel0;
mod channels;
mod flow;
mod handshake;
mod io;
mod moving;

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use amq_protocol::protocol::{channel as chan, connection as conn_m, AMQPClass};
use bytes::BytesMut;

use super::auth::Permissions;
use super::channel::ChannelRef;
use super::codec::{self, Frame};
use super::mesh::{Delivery, RecordDelivery};
use super::methods::Actor;
use super::routing::QueueRef;
use super::{reply, AmqpError};
use crate::broker::Shard;
use crate::catalog::amqp::TopologyChange;
use crate::catalog::Change;
use crate::metrics::Protocol;
use crate::runtime::placement::Follow;
use crate::runtime::transport::pool::Reader;
use crate::runtime::transport::{self, pool, Socket, Transport};
use crate::storage::log::now_ms;
use crate::util::notify::Notify;

pub(crate) use flow::{mark_published, wait_for_disk};

/// How long a client has for the whole handshake, and to answer our connection.close.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// After our connection.close-ok, the socket is kept for the client to close (as
/// RabbitMQ's reader does): at most the negotiated heartbeat interval, and never over
/// this.
const CLOSED_LINGER_MAX: Duration = Duration::from_secs(30);

/// Where a connection is in its life: the handshake's steps, running, or closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    StartOk,
    TuneOk,
    Open,
    Running,
    /// We sent connection.close and wait for close-ok.
    Closing,
    /// We answered the client's connection.close with close-ok and wait for it to close
    /// the socket (a repeated close gets close-ok again).
    Closed,
}

pub struct Connection {
    pub id: u64,
    pub shard: Rc<Shard>,
    pub peer: SocketAddr,
    /// Set once by the handshake (start-ok, then open), read freely after.
    user: OnceCell<String>,
    vhost: OnceCell<String>,
    perms: OnceCell<Rc<Permissions>>,
    pub frame_max: Cell<u32>,
    pub channel_max: Cell<u16>,
    pub heartbeat: Cell<u16>,
    out: RefCell<BytesMut>,
    out_ready: Notify,
    /// Fired after each write to the socket (the reader waits on it while the output
    /// not yet written is over the connection's budget).
    out_written: Notify,
    /// Deliveries encoded into `out` per consumer, returned as credit once written.
    written: RefCell<HashMap<u64, (QueueRef, u32, u64)>>,
    pub channels: RefCell<HashMap<u16, ChannelRef>>,
    /// Exclusive queues this connection declared: (vhost, name, id).
    pub exclusive: RefCell<Vec<(String, String, u64)>>,
    /// Set when the reader is done: the writer flushes what is left and stops.
    finished: Cell<bool>,
    /// The socket failed or the peer went silent: stop reading.
    dead: Cell<bool>,
    /// connection.close or close-ok has gone out: nothing else may follow it (the close
    /// handshake), so `write` drops everything but `write_close`'s frames.
    quiet: Cell<bool>,
    kill: Notify,
    last_recv_ms: Cell<i64>,
    last_send_ms: Cell<i64>,
    /// (class, method) of the method being handled, for the close it may cause.
    pub last_method: Cell<(u16, u16)>,
    /// The client announced the `connection.blocked` capability.
    blocked_capable: Cell<bool>,
    /// The connection has published: the disk alarm blocks it (RabbitMQ blocks only
    /// publishing connections, so consumers keep acking).
    published: Cell<bool>,
    /// `connection.blocked` ("low on disk") was sent and `unblocked` not yet.
    disk_blocked: Cell<bool>,
    /// The connection came through `amqp.tls_addr`.
    pub tls: bool,
    /// The subject of the client certificate the CA verified (TLS only): offers and
    /// answers the `EXTERNAL` mechanism.
    pub peer_subject: Option<crate::security::tls::PeerSubject>,
    /// Which shard its publishes' queues are on: it moves there (`moving`).
    pub follow: Follow,
    /// The writer is writing output it took (`out` is empty meanwhile).
    writing: Cell<bool>,
    /// The connection moved to another shard: nothing more is written here, and the
    /// socket is left open.
    moved: Cell<bool>,
}

impl Connection {
    fn new(shard: &Rc<Shard>, peer: SocketAddr) -> Connection {
        let cfg = &shard.config.amqp;
        Connection {
            id: shard.amqp.next_id(),
            shard: shard.clone(),
            peer,
            user: OnceCell::new(),
            vhost: OnceCell::new(),
            perms: OnceCell::new(),
            frame_max: Cell::new(cfg.frame_max),
            channel_max: Cell::new(cfg.channel_max),
            heartbeat: Cell::new(0),
            out: RefCell::new(BytesMut::new()),
            out_ready: Notify::new(),
            out_written: Notify::new(),
            written: RefCell::new(HashMap::new()),
            channels: RefCell::new(HashMap::new()),
            exclusive: RefCell::new(Vec::new()),
            finished: Cell::new(false),
            dead: Cell::new(false),
            quiet: Cell::new(false),
            kill: Notify::new(),
            last_recv_ms: Cell::new(now_ms()),
            last_send_ms: Cell::new(now_ms()),
            last_method: Cell::new((0, 0)),
            blocked_capable: Cell::new(false),
            published: Cell::new(false),
            disk_blocked: Cell::new(false),
            tls: false,
            peer_subject: None,
            follow: Follow::new(shard.id),
            writing: Cell::new(false),
            moved: Cell::new(false),
        }
    }

    /// The vhost opened by connection.open ("" before it).
    pub fn vhost(&self) -> &str {
        self.vhost.get().map(String::as_str).unwrap_or("")
    }

    /// The user logged in by start-ok ("" before it).
    pub fn user(&self) -> &str {
        self.user.get().map(String::as_str).unwrap_or("")
    }

    /// The connection as the methods' shared code sees it: shard, vhost, user, permissions.
    pub fn actor(&self) -> Actor<'_> {
        Actor {
            shard: &self.shard,
            vhost: self.vhost(),
            user: self.user(),
            perms: self.perms.get().map(|p| &**p),
            conn: Some(self.id),
        }
    }

    /// Appends to the output and wakes the writer (nothing once the connection's close
    /// has gone out).
    pub fn write(&self, f: impl FnOnce(&mut BytesMut)) {
        if self.dead.get() || self.quiet.get() || self.moved.get() {
            return;
        }
        f(&mut self.output());
        self.out_ready.notify();
    }

    /// The output buffer, taken from the shard's pool if the connection holds none (it
    /// gives it back when idle, `io::write_loop`).
    fn output(&self) -> std::cell::RefMut<'_, BytesMut> {
        let mut out = self.out.borrow_mut();
        if out.capacity() == 0 {
            *out = pool::take_output();
        }
        out
    }

    /// Sends a method, unless the close handshake forbids it: on a channel we are closing
    /// only channel.close-ok (to a crossing close) may follow our channel.close.
    pub fn send_method(&self, channel: u16, method: AMQPClass) {
        if channel != 0
            && !matches!(method, AMQPClass::Channel(chan::AMQPMethod::Close(_)))
            && !matches!(method, AMQPClass::Channel(chan::AMQPMethod::CloseOk(_)))
            // A channel borrowed right now is the one sending (its own code keeps to the
            // handshake).
            && self.channels.try_borrow().is_ok_and(|m| {
                m.get(&channel)
                    .is_some_and(|c| c.try_borrow().is_ok_and(|c| c.closing))
            })
        {
            return;
        }
        self.write(|out| codec::put_method(out, channel, method));
    }

    /// Sends connection.close or close-ok on channel 0 (even after an earlier one, for a
    /// crossing or repeated close); after it the connection writes nothing else.
    fn write_close(&self, method: conn_m::AMQPMethod) {
        if !self.dead.get() && !self.moved.get() {
            codec::put_method(&mut self.output(), 0, AMQPClass::Connection(method));
            self.out_ready.notify();
        }
        self.quiet.set(true);
    }

    /// Answers a connection.close with close-ok.
    fn send_close_ok(&self) {
        self.write_close(conn_m::AMQPMethod::CloseOk(conn_m::CloseOk {}));
    }

    /// Counts a delivery written for consumer `cid` (credit goes back after the write).
    pub fn count_written(&self, cid: u64, queue: &QueueRef, n: u32, bytes: u64) {
        let mut w = self.written.borrow_mut();
        let e = w.entry(cid).or_insert_with(|| (queue.clone(), 0, 0));
        e.1 += n;
        e.2 += bytes;
    }

    pub fn channel(&self, id: u16) -> Option<ChannelRef> {
        self.channels.borrow().get(&id).cloned()
    }

    /// Deliveries from a queue's owner for consumer `cid` on `channel`.
    pub fn deliver(self: &Rc<Self>, channel: u16, cid: u64, queue: QueueRef, items: Vec<Delivery>) {
        let rest = match self.channel(channel) {
            Some(ch) => ch.borrow_mut().deliver(self, cid, &queue, items),
            None => Some(items),
        };
        if let Some(items) = rest {
            let ids = items.into_iter().map(|d| d.id).collect();
            super::owner::give_back(&self.shard, queue, ids);
        }
    }

    /// A stream reader's records for consumer `cid` on `channel`.
    pub fn deliver_records(
        self: &Rc<Self>,
        channel: u16,
        cid: u64,
        queue: QueueRef,
        records: Vec<RecordDelivery>,
    ) {
        let rest = match self.channel(channel) {
            Some(ch) => ch.borrow_mut().deliver_records(self, cid, &queue, records),
            None => Some(records.into_iter().map(|d| d.id).collect()),
        };
        if let Some(ids) = rest {
            super::owner::give_back(&self.shard, queue, ids);
        }
    }

    pub fn confirmed(self: &Rc<Self>, channel: u16, seqs: Vec<u64>, ack: bool) {
        if let Some(ch) = self.channel(channel) {
            ch.borrow_mut().confirmed(self, seqs, ack);
        }
    }

    pub fn consumer_cancelled(self: &Rc<Self>, channel: u16, cid: u64) {
        if let Some(ch) = self.channel(channel) {
            ch.borrow_mut().server_cancel(self, cid);
        }
    }

    /// A method frame arrived: remembered for the close it may cause, and counted.
    fn method_received(&self, payload: &[u8]) {
        let (class, method) = codec::method_ids(payload);
        self.last_method.set((class, method));
        crate::metrics::with(|m| m.request(Protocol::Amqp, codec::method_name(class, method)));
    }

    /// Sends connection.close with an error code (counted among the AMQP errors); the
    /// channels are released at once (consumers cancelled, unacked messages requeued), as
    /// nothing may be delivered after the close.
    fn close_connection(self: &Rc<Self>, code: u16, text: &str, class_id: u16, method_id: u16) {
        crate::metrics::with(|m| m.error(Protocol::Amqp, code as i32));
        self.write_close(conn_m::AMQPMethod::Close(conn_m::Close {
            reply_code: code,
            reply_text: codec::short(text),
            class_id,
            method_id,
        }));
        self.release_channels();
    }

    /// Releases each channel's consumers and unacked messages, and forgets the channels.
    fn release_channels(self: &Rc<Self>) {
        let channels: Vec<ChannelRef> =
            self.channels.borrow_mut().drain().map(|(_, c)| c).collect();
        for ch in channels {
            ch.borrow_mut().release(self);
        }
    }

    /// Releases everything the connection holds: each channel's consumers and unacked
    /// messages, then its exclusive queues.
    async fn clean_up(self: &Rc<Self>) {
        self.release_channels();
        let exclusive = std::mem::take(&mut *self.exclusive.borrow_mut());
        if !exclusive.is_empty() {
            let mut by_vhost: HashMap<String, Vec<(String, u64)>> = HashMap::new();
            for (v, n, id) in exclusive {
                by_vhost.entry(v).or_default().push((n, id));
            }
            let changes = by_vhost
                .into_iter()
                .map(|(vhost, queues)| Change::Amqp(TopologyChange::DeleteQueues { vhost, queues }))
                .collect();
            self.shard.change_catalog(changes, false).await;
        }
    }
}

/// Runs one connection accepted on `amqp.addr` to its end.
pub async fn run(shard: Rc<Shard>, stream: Socket) -> std::io::Result<()> {
    let _ = stream.set_nodelay(shard.config.network.tcp_nodelay);
    serve(shard, Transport::Plain(stream)).await
}

/// Runs one connection accepted on `amqp.tls_addr` (amqps) to its end: the TLS handshake
/// first, then the same AMQP connection.
pub async fn run_tls(shard: Rc<Shard>, stream: Socket) -> std::io::Result<()> {
    let _ = stream.set_nodelay(shard.config.network.tcp_nodelay);
    let certs = crate::security::tls::current()
        .ok_or_else(|| std::io::Error::other("no TLS certificate loaded"))?;
    let timeout = Duration::from_millis(shard.config.tls.handshake_timeout_ms.max(1));
    let stream = transport::accept_tls(stream, certs.server(None), timeout, Protocol::Amqp).await?;
    serve(shard, stream).await
}

async fn serve(shard: Rc<Shard>, stream: Transport) -> std::io::Result<()> {
    let peer = stream.tcp().peer_addr()?;
    let mut conn = Connection::new(&shard, peer);
    conn.tls = stream.is_tls();
    conn.peer_subject = stream.peer_subject();
    // A plain connection can move to another shard (TLS keeps its session here).
    let socket = (!stream.is_tls()).then(|| stream.tcp().clone());
    let conn = Rc::new(conn);
    run_connection(conn, stream, Phase::StartOk, socket, &[]).await
}

/// Runs a connection, from the protocol header (`Phase::StartOk`) or, for one moved here
/// from another shard (`moving`), from `Phase::Running` with `unread` (the start of its
/// next frame), to its end or its move to another shard.
async fn run_connection(
    conn: Rc<Connection>,
    stream: Transport,
    mut phase: Phase,
    socket: Option<Socket>,
    unread: &[u8],
) -> std::io::Result<()> {
    let shard = conn.shard.clone();
    let peer = conn.peer;
    // The reader keeps one half, the writer task the other.
    let (stream, writer) = stream.split();
    shard.amqp.register(&conn);
    let write_task = glommio::spawn_local(io::write_loop(conn.clone(), writer));
    let mut reader = Reader::new(stream);
    let mut buf = BytesMut::from(unread);
    let movable = socket.is_some() && shard.config.amqp.connections_follow_queues;
    let result = if phase == Phase::StartOk {
        handshake::greet(&conn, &mut reader, &mut buf).await
    } else {
        Ok(true)
    };
    let result = match result {
        Ok(false) => Ok(()),
        Err(e) => Err(e),
        Ok(true) => loop {
            let read = io::read_loop(&conn, &mut reader, &mut buf, phase, movable).await;
            match (read, &socket) {
                (Ok(Some(to)), Some(socket)) => {
                    if moving::move_to(&conn, to, socket, &mut buf).await {
                        break Ok(());
                    }
                    // Not moved: go on here (`placement::RETRY_AFTER` before another try).
                    phase = Phase::Running;
                }
                (read, _) => break read.map(|_| ()),
            }
        },
    };
    if let Err(e) = &result {
        log::info!("amqp connection from {peer} closed: {e}");
    }
    conn.clean_up().await;
    conn.finished.set(true);
    conn.out_ready.notify();
    let _ = glommio::timer::timeout(CLOSE_TIMEOUT, async {
        write_task.await;
        Ok(())
    })
    .await;
    conn.dead.set(true);
    shard.amqp.unregister(conn.id);
    Ok(())
}

/// Handles one frame; Ok(false) ends the connection.
async fn handle_frame(
    conn: &Rc<Connection>,
    phase: &mut Phase,
    frame: Frame,
) -> Result<bool, AmqpError> {
    if frame.kind == codec::FRAME_HEARTBEAT {
        // As RabbitMQ: a heartbeat with a payload is a frame error, one on another
        // channel than 0 an unexpected frame.
        if !frame.payload.is_empty() {
            return Err(AmqpError::connection(
                reply::FRAME_ERROR,
                "FRAME_ERROR - heartbeat frame with a payload",
            ));
        }
        if frame.channel != 0 {
            return Err(AmqpError::connection(
                reply::UNEXPECTED_FRAME,
                format!(
                    "UNEXPECTED_FRAME - heartbeat frame on channel {}",
                    frame.channel
                ),
            ));
        }
        return Ok(true);
    }
    match *phase {
        Phase::Closing | Phase::Closed => Ok(channel0::while_closing(conn, frame)),
        Phase::StartOk | Phase::TuneOk | Phase::Open => handshake::method(conn, phase, frame),
        Phase::Running if frame.channel == 0 => channel0::method(conn, phase, frame).await,
        Phase::Running => channels::frame(conn, frame).await,
    }
}

/// How long the socket is kept after our connection.close-ok: the negotiated heartbeat
/// interval, at most `CLOSED_LINGER_MAX` (RabbitMQ's rule).
fn closed_linger(heartbeat_secs: u16) -> Duration {
    let hb = Duration::from_secs(heartbeat_secs as u64);
    if heartbeat_secs > 0 && hb < CLOSED_LINGER_MAX {
        hb
    } else {
        CLOSED_LINGER_MAX
    }
}

/// The connection behind a background task's weak handle, while it still runs.
fn still_running(conn: &std::rc::Weak<Connection>) -> Option<Rc<Connection>> {
    let conn = conn.upgrade()?;
    (!conn.finished.get() && !conn.dead.get()).then_some(conn)
}

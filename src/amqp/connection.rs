//! One AMQP connection on the shard that accepted it: the handshake (protocol header,
//! start/start-ok with PLAIN or AMQPLAIN, tune/tune-ok, open), the frame loop that feeds
//! channels, heartbeats, the writer task, and the clean-up when it ends (consumers
//! cancelled, unacked messages requeued, exclusive queues deleted).
//!
//! A `Connection` is shared by `Rc` between its reader task, its writer task, its
//! heartbeat task and the shard's op handler (deliveries and confirms arrive through
//! `ShardAmqp::connection`). Output is one `BytesMut` the writer drains; the reader never
//! waits on the writer. No `RefCell` borrow is held across an `.await`.
//!
//! Flow control: a connection is not read while the shard's outbox is over its budget
//! (`connection.blocked`, "back-pressure"), nor, once it has published, while the disk
//! alarm is on (`wait_for_disk`, "low on disk").
//!
//! Counted in the shard's metrics: every method frame received, by `class.method`
//! (`portask_requests_total{protocol="amqp"}`), and every channel or connection close
//! the broker starts, by reply code (`portask_errors_total{protocol="amqp"}`).

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::Duration;

use amq_protocol::protocol::{channel as chan, connection as conn_m, AMQPClass};
use bytes::BytesMut;
use futures::future::{select, Either};
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::auth::{self, Permissions};
use super::channel::{Channel, ChannelRef};
use super::codec::{self, Frame, FrameError};
use super::mesh::{Delivery, QueueOp};
use super::methods::Actor;
use super::routing::QueueRef;
use super::topology::TopologyChange;
use super::{methods, outbox, reply, AmqpError};
use crate::broker::Shard;
use crate::catalog::Change;
use crate::metrics::Protocol;
use crate::storage::log::now_ms;
use crate::util::notify::{Listener, Notify};

/// How long a client has for the whole handshake, and to answer our connection.close.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// On a stop, how long a connection keeps reading what its client had already sent.
const STOP_DRAIN: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    StartOk,
    TuneOk,
    Open,
    Running,
    /// We sent connection.close and wait for close-ok.
    Closing,
}

pub struct Connection {
    pub id: u64,
    pub shard: Rc<Shard>,
    pub peer: SocketAddr,
    /// Set once by the handshake (start-ok, then open), read freely after.
    user: OnceCell<String>,
    vhost: OnceCell<String>,
    perms: OnceCell<Permissions>,
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
            out: RefCell::new(BytesMut::with_capacity(FIRST_BUFFER_BYTES)),
            out_ready: Notify::new(),
            out_written: Notify::new(),
            written: RefCell::new(HashMap::new()),
            channels: RefCell::new(HashMap::new()),
            exclusive: RefCell::new(Vec::new()),
            finished: Cell::new(false),
            dead: Cell::new(false),
            kill: Notify::new(),
            last_recv_ms: Cell::new(now_ms()),
            last_send_ms: Cell::new(now_ms()),
            last_method: Cell::new((0, 0)),
            blocked_capable: Cell::new(false),
            published: Cell::new(false),
            disk_blocked: Cell::new(false),
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
            perms: self.perms.get(),
            conn: Some(self.id),
        }
    }

    /// Appends to the output and wakes the writer.
    pub fn write(&self, f: impl FnOnce(&mut BytesMut)) {
        if self.dead.get() {
            return;
        }
        f(&mut self.out.borrow_mut());
        self.out_ready.notify();
    }

    pub fn send_method(&self, channel: u16, method: AMQPClass) {
        self.write(|out| codec::put_method(out, channel, method));
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
        let ch = self.channel(channel);
        let rest = match ch {
            Some(ch) => ch.borrow_mut().deliver(self, cid, &queue, items),
            None => Some(items),
        };
        if let Some(items) = rest {
            let ids = items.into_iter().map(|d| d.id).collect();
            outbox::push(
                &self.shard,
                queue.owner,
                QueueOp::Settle {
                    queue,
                    ids,
                    how: super::mesh::Settle::Return,
                },
            );
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

    /// Sends connection.close with an error code (counted among the AMQP errors).
    fn close_connection(&self, code: u16, text: &str, class_id: u16, method_id: u16) {
        crate::metrics::with(|m| m.error(Protocol::Amqp, code as i32));
        self.send_method(
            0,
            AMQPClass::Connection(conn_m::AMQPMethod::Close(conn_m::Close {
                reply_code: code,
                reply_text: codec::short(text),
                class_id,
                method_id,
            })),
        );
    }

    /// Releases everything the connection holds: each channel's consumers and unacked
    /// messages, then its exclusive queues.
    async fn clean_up(self: &Rc<Self>) {
        let channels: Vec<ChannelRef> =
            self.channels.borrow_mut().drain().map(|(_, c)| c).collect();
        for ch in channels {
            ch.borrow_mut().release(self);
        }
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

/// Runs one accepted connection to its end.
pub async fn run(shard: Rc<Shard>, stream: TcpStream) -> std::io::Result<()> {
    let _ = stream.set_nodelay(shard.config.network.tcp_nodelay);
    let peer = stream.peer_addr()?;
    // A second handle on the socket for the writer task.
    // SAFETY: `stream` is alive, so its descriptor is open; dup only creates a new
    // descriptor for the same socket (checked for failure below), which we own.
    let dup = unsafe { libc::dup(stream.as_raw_fd()) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `dup` is a valid, open socket descriptor that nothing else owns, so the
    // new `TcpStream` may own it (and close it when dropped). Two glommio streams on one
    // socket are sound: each owns a distinct descriptor and closes only that one (the
    // socket lives until both are closed); glommio keeps its I/O state (buffers, pending
    // io_uring operations, wakers) per stream object, never per socket, so the two share
    // no state; only `stream` reads and only `writer` writes, so no byte is split between
    // them; and both stay on this shard's thread, inside this connection's tasks. The
    // writer's close shuts the socket down for writing, which ends the connection for
    // both, as intended.
    let writer = unsafe { TcpStream::from_raw_fd(dup) };
    let conn = Rc::new(Connection::new(&shard, peer));
    shard.amqp.register(&conn);
    let write_task = glommio::spawn_local(write_loop(conn.clone(), writer));
    let result = read_loop(&conn, stream).await;
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

async fn write_loop(conn: Rc<Connection>, mut writer: TcpStream) {
    loop {
        let l = Listener::new();
        l.listen(&conn.out_ready);
        let buf = std::mem::take(&mut *conn.out.borrow_mut());
        let written = std::mem::take(&mut *conn.written.borrow_mut());
        if buf.is_empty() {
            if conn.finished.get() || conn.dead.get() {
                break;
            }
            l.await;
            continue;
        }
        if let Err(e) = writer.write_all(&buf).await {
            log::debug!("amqp write to {}: {e}", conn.peer);
            conn.dead.set(true);
            conn.kill.notify();
            break;
        }
        conn.last_send_ms.set(now_ms());
        conn.out_written.notify();
        // Reuse the buffer's allocation when nothing new arrived meanwhile.
        {
            let mut out = conn.out.borrow_mut();
            if out.is_empty() && buf.capacity() > out.capacity() {
                let mut buf = buf;
                buf.clear();
                *out = buf;
            }
        }
        for (cid, (queue, n, bytes)) in written {
            let owner = queue.owner;
            outbox::push(
                &conn.shard,
                owner,
                QueueOp::Credit {
                    queue,
                    cid,
                    n,
                    bytes,
                },
            );
        }
    }
    let _ = writer.close().await;
}

/// Reads into `buf` until at least one more byte arrived; false on EOF, deadline, kill or
/// (with `watch_stop`) the shard stopping.
async fn fill(
    conn: &Rc<Connection>,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    chunk: &mut Vec<u8>,
    deadline: Option<Duration>,
    watch_stop: bool,
) -> Result<bool, std::io::Error> {
    let stop = Listener::new();
    if watch_stop {
        stop.listen(&conn.shard.stop);
    }
    stop.listen(&conn.kill);
    if (watch_stop && conn.shard.stopping.get()) || conn.dead.get() {
        return Ok(false);
    }
    let read = Box::pin(stream.read(chunk.as_mut_slice()));
    let r = match deadline {
        Some(d) => {
            let timed = Box::pin(glommio::timer::sleep(d));
            match select(read, select(stop, timed)).await {
                Either::Left((r, _)) => r,
                Either::Right(_) => return Ok(false),
            }
        }
        None => match select(read, stop).await {
            Either::Left((r, _)) => r,
            Either::Right(_) => return Ok(false),
        },
    };
    let n = r?;
    if n == 0 {
        return Ok(false);
    }
    buf.extend_from_slice(&chunk[..n]);
    // A read that filled the chunk: the peer sends faster than we read, so read more
    // at a time (idle and light connections keep the small chunk).
    if n == chunk.len() && chunk.len() < MAX_READ_CHUNK {
        chunk.resize(chunk.len() * 2, 0);
    }
    conn.last_recv_ms.set(now_ms());
    Ok(true)
}

/// A connection's read chunk, read buffer and output buffer start this small, so an idle
/// connection costs little; reads that fill the chunk double it up to `MAX_READ_CHUNK`
/// (the other two grow as their frames need).
const FIRST_BUFFER_BYTES: usize = 4 * 1024;
const MAX_READ_CHUNK: usize = 64 * 1024;

async fn read_loop(conn: &Rc<Connection>, mut stream: TcpStream) -> Result<(), std::io::Error> {
    let mut buf = BytesMut::with_capacity(FIRST_BUFFER_BYTES);
    let mut chunk = vec![0u8; FIRST_BUFFER_BYTES];
    // Protocol header.
    while buf.len() < 8 {
        if !fill(
            conn,
            &mut stream,
            &mut buf,
            &mut chunk,
            Some(HANDSHAKE_TIMEOUT),
            true,
        )
        .await?
        {
            return Ok(());
        }
    }
    if buf[..8] != codec::PROTOCOL_HEADER {
        log::info!(
            "amqp connection from {}: unsupported protocol header {:?}",
            conn.peer,
            &buf[..8]
        );
        conn.write(|out| out.extend_from_slice(&codec::PROTOCOL_HEADER));
        return Ok(());
    }
    let _ = buf.split_to(8);
    conn.send_method(
        0,
        AMQPClass::Connection(conn_m::AMQPMethod::Start(conn_m::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: auth::server_properties(),
            mechanisms: "PLAIN AMQPLAIN".into(),
            locales: "en_US".into(),
        })),
    );
    let mut phase = Phase::StartOk;
    let started = now_ms();
    let mut close_deadline: Option<i64> = None;
    let mut stop_drain_until: Option<i64> = None;
    // When the partial frame now in `buf` began: it must be whole within
    // `amqp.frame_read_timeout_ms`, however its bytes trickle in.
    let frame_timeout = conn.shard.config.amqp.frame_read_timeout_ms.max(1) as i64;
    let mut partial_since: Option<i64> = None;
    loop {
        // Every complete frame in the buffer.
        let mut took_frame = false;
        loop {
            let frame = match codec::take_frame(&mut buf, conn.frame_max.get()) {
                Ok(Some(f)) => {
                    took_frame = true;
                    f
                }
                Ok(None) => break,
                Err(e) => {
                    if phase == Phase::Closing {
                        return Ok(());
                    }
                    let code = match e {
                        FrameError::BadType(_)
                        | FrameError::BadEnd(_)
                        | FrameError::TooLarge { .. } => reply::FRAME_ERROR,
                    };
                    log::info!("amqp connection from {}: {e}", conn.peer);
                    conn.close_connection(code, &format!("FRAME_ERROR - {e}"), 0, 0);
                    phase = Phase::Closing;
                    close_deadline = Some(now_ms() + CLOSE_TIMEOUT.as_millis() as i64);
                    // The stream cannot be re-synchronised after a bad frame.
                    buf.clear();
                    break;
                }
            };
            if phase == Phase::Running {
                wait_for_writer(conn).await;
            }
            match handle_frame(conn, &mut phase, frame).await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(AmqpError::Connection { code, text }) => {
                    log::info!("amqp connection from {}: {text}", conn.peer);
                    let (c, m) = conn.last_method.get();
                    conn.close_connection(code, &text, c, m);
                    phase = Phase::Closing;
                    close_deadline = Some(now_ms() + CLOSE_TIMEOUT.as_millis() as i64);
                }
                Err(AmqpError::Channel { code, text }) => {
                    // Only reached for errors outside a channel's own handling.
                    conn.close_connection(code, &text, 0, 0);
                    phase = Phase::Closing;
                    close_deadline = Some(now_ms() + CLOSE_TIMEOUT.as_millis() as i64);
                }
            }
        }
        // A frame left partial after whole ones were taken is a new frame: its clock starts
        // now (at the read that brought its first bytes, give or take the handling).
        partial_since = match (buf.is_empty(), partial_since) {
            (true, _) => None,
            (false, Some(since)) if !took_frame => Some(since),
            (false, _) => Some(now_ms()),
        };
        if conn.shard.stopping.get() && phase == Phase::Running {
            // Frames the client sent before the stop (its last acks, say) are still
            // handled: read whatever is already on its way, briefly, then close.
            let until = *stop_drain_until.get_or_insert(now_ms() + STOP_DRAIN.as_millis() as i64);
            if now_ms() < until
                && fill(
                    conn,
                    &mut stream,
                    &mut buf,
                    &mut chunk,
                    Some(Duration::from_millis(10)),
                    false,
                )
                .await?
            {
                continue;
            }
        }
        if conn.shard.stopping.get() && phase != Phase::Closing {
            conn.close_connection(
                reply::CONNECTION_FORCED,
                "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
                0,
                0,
            );
            phase = Phase::Closing;
            close_deadline = Some(now_ms() + CLOSE_TIMEOUT.as_millis() as i64);
        }
        // Back-pressure: let the outbox drain before reading more publishes; a client
        // that understands it hears connection.blocked if that takes more than 100 ms.
        let limit = conn.shard.config.limits.connection_inflight_bytes;
        let waiting_since = now_ms();
        let mut blocked = false;
        if conn.shard.amqp.outbox.bytes() > limit {
            crate::metrics::with(|m| m.protocol(crate::metrics::Protocol::Amqp).throttled += 1);
        }
        while conn.shard.amqp.outbox.bytes() > limit && !conn.dead.get() {
            if !blocked && conn.blocked_capable.get() && now_ms() - waiting_since > 100 {
                blocked = true;
                conn.send_method(
                    0,
                    AMQPClass::Connection(conn_m::AMQPMethod::Blocked(conn_m::Blocked {
                        reason: "back-pressure: queues are behind".into(),
                    })),
                );
            }
            let l = Listener::new();
            l.listen(&conn.shard.amqp.outbox.drained);
            let _ = glommio::timer::timeout(Duration::from_millis(50), async {
                l.await;
                Ok(())
            })
            .await;
        }
        if blocked {
            conn.send_method(
                0,
                AMQPClass::Connection(conn_m::AMQPMethod::Unblocked(conn_m::Unblocked {})),
            );
        }
        if phase == Phase::Running {
            wait_for_disk(conn).await;
        }
        // Time the broker held the read back is not the client's.
        if let Some(since) = partial_since.as_mut() {
            *since += now_ms() - waiting_since;
        }
        let deadline = match (phase, close_deadline) {
            (Phase::Closing, Some(t)) => {
                let left = t - now_ms();
                if left <= 0 {
                    return Ok(());
                }
                Some(Duration::from_millis(left as u64))
            }
            (Phase::Running, _) => match partial_since {
                None => None,
                Some(since) => {
                    let left = since + frame_timeout - now_ms();
                    if left <= 0 {
                        log_slow_frame(conn, frame_timeout, buf.len());
                        return Ok(());
                    }
                    Some(Duration::from_millis(left as u64))
                }
            },
            _ => {
                let left = started + HANDSHAKE_TIMEOUT.as_millis() as i64 - now_ms();
                if left <= 0 {
                    log::info!("amqp connection from {}: handshake timed out", conn.peer);
                    return Ok(());
                }
                Some(Duration::from_millis(left as u64))
            }
        };
        let stopping_before = conn.shard.stopping.get();
        if !fill(conn, &mut stream, &mut buf, &mut chunk, deadline, true).await? {
            if conn.shard.stopping.get() && !stopping_before && phase == Phase::Running {
                // The shard began stopping while we waited: tell the client (next turn).
                continue;
            }
            if phase == Phase::Running && conn.shard.stopping.get() {
                continue;
            }
            if phase == Phase::Running
                && partial_since.is_some_and(|since| now_ms() >= since + frame_timeout)
            {
                log_slow_frame(conn, frame_timeout, buf.len());
            }
            return Ok(());
        }
    }
}

fn log_slow_frame(conn: &Connection, timeout_ms: i64, got: usize) {
    log::info!(
        "amqp connection from {} closed: a frame not received whole within {timeout_ms} ms \
         of its first byte (amqp.frame_read_timeout_ms): {got} bytes of it so far",
        conn.peer
    );
}

/// Marks the connection as a publisher (on its first publish): from now on the disk alarm
/// blocks it, and a task tells the client when the alarm starts and ends, whether or not
/// it is publishing at that moment (as RabbitMQ does).
pub(crate) fn mark_published(conn: &Rc<Connection>) {
    if conn.published.replace(true) {
        return;
    }
    glommio::spawn_local(disk_alarm_loop(Rc::downgrade(conn))).detach();
}

/// Sends `connection.blocked` ("low on disk") when the disk alarm starts and
/// `connection.unblocked` when it ends, to a client that announced the capability. Holds
/// the connection weakly.
async fn disk_alarm_loop(conn: std::rc::Weak<Connection>) {
    loop {
        let Some(c) = still_running(&conn) else {
            return;
        };
        let disk = c.shard.storage.disk.clone();
        let alarm = disk.alarm();
        if c.blocked_capable.get() && alarm != c.disk_blocked.get() {
            c.disk_blocked.set(alarm);
            let method = if alarm {
                conn_m::AMQPMethod::Blocked(conn_m::Blocked {
                    reason: "low on disk".into(),
                })
            } else {
                conn_m::AMQPMethod::Unblocked(conn_m::Unblocked {})
            };
            c.send_method(0, AMQPClass::Connection(method));
        }
        let l = Listener::new();
        l.listen(&disk.changed);
        l.listen(&c.kill);
        drop(c);
        // The alarm wakes us; the timeout only notices a connection that ended.
        let _ = glommio::timer::timeout(Duration::from_secs(10), async {
            l.await;
            Ok(())
        })
        .await;
    }
}

/// The disk alarm (`storage.min_free_bytes`, RabbitMQ's `disk_free_limit`): a connection
/// that has published is not read while free space is below the watermark (it hears
/// `connection.blocked`, "low on disk", from `disk_alarm_loop`). Called before reading
/// more from the socket, and by `basic.publish` before a message completed during the
/// alarm is routed (so it is held, not enqueued, until space returns).
pub(crate) async fn wait_for_disk(conn: &Rc<Connection>) {
    let disk = conn.shard.storage.disk.clone();
    if !disk.alarm() || !conn.published.get() {
        return;
    }
    while disk.alarm() && !conn.dead.get() && !conn.shard.stopping.get() {
        // We are the ones not reading: the peer's silence is not its fault (RabbitMQ
        // pauses its heartbeat monitor for blocked connections too).
        conn.last_recv_ms.set(now_ms());
        let l = Listener::new();
        l.listen(&disk.changed);
        l.listen(&conn.shard.stop);
        l.listen(&conn.kill);
        let _ = glommio::timer::timeout(Duration::from_millis(1000), async {
            l.await;
            Ok(())
        })
        .await;
    }
    conn.last_recv_ms.set(now_ms());
}

/// Back-pressure on a client that sends faster than it reads: while more than
/// `limits.connection_inflight_bytes` of output waits for its socket, the connection's
/// next request is not handled (and its socket not read), as a TCP peer would be.
async fn wait_for_writer(conn: &Rc<Connection>) {
    let limit = conn.shard.config.limits.connection_inflight_bytes;
    if conn.out.borrow().len() <= limit {
        return;
    }
    crate::metrics::with(|m| m.protocol(crate::metrics::Protocol::Amqp).throttled += 1);
    while conn.out.borrow().len() > limit
        && !conn.dead.get()
        && !conn.finished.get()
        && !conn.shard.stopping.get()
    {
        let l = Listener::new();
        l.listen(&conn.out_written);
        l.listen(&conn.kill);
        let _ = glommio::timer::timeout(Duration::from_millis(100), async {
            l.await;
            Ok(())
        })
        .await;
    }
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
        Phase::Closing => {
            // Only close-ok (or a crossing close) matters now.
            if frame.kind == codec::FRAME_METHOD && frame.channel == 0 {
                match codec::decode_method(&frame.payload) {
                    Some(AMQPClass::Connection(conn_m::AMQPMethod::CloseOk(_))) => {
                        return Ok(false)
                    }
                    Some(AMQPClass::Connection(conn_m::AMQPMethod::Close(_))) => {
                        conn.send_method(
                            0,
                            AMQPClass::Connection(conn_m::AMQPMethod::CloseOk(conn_m::CloseOk {})),
                        );
                        return Ok(false);
                    }
                    _ => {}
                }
            }
            Ok(true)
        }
        Phase::StartOk | Phase::TuneOk | Phase::Open => handshake(conn, phase, frame),
        Phase::Running => running(conn, frame).await,
    }
}

fn expect_method(conn: &Connection, frame: &Frame) -> Result<AMQPClass, AmqpError> {
    if frame.kind != codec::FRAME_METHOD || frame.channel != 0 {
        return Err(AmqpError::connection(
            reply::UNEXPECTED_FRAME,
            "UNEXPECTED_FRAME - expected a method frame on channel 0 during the handshake",
        ));
    }
    conn.method_received(&frame.payload);
    codec::decode_method(&frame.payload).ok_or_else(|| {
        AmqpError::connection(reply::SYNTAX_ERROR, "SYNTAX_ERROR - malformed method frame")
    })
}

fn handshake(conn: &Rc<Connection>, phase: &mut Phase, frame: Frame) -> Result<bool, AmqpError> {
    let method = expect_method(conn, &frame)?;
    let cfg = &conn.shard.config.amqp;
    match (*phase, method) {
        (_, AMQPClass::Connection(conn_m::AMQPMethod::Close(_))) => {
            conn.send_method(
                0,
                AMQPClass::Connection(conn_m::AMQPMethod::CloseOk(conn_m::CloseOk {})),
            );
            Ok(false)
        }
        (Phase::StartOk, AMQPClass::Connection(conn_m::AMQPMethod::StartOk(ok))) => {
            let mech = ok.mechanism.as_str().to_owned();
            if let Some(amq_protocol::types::AMQPValue::FieldTable(caps)) =
                ok.client_properties.inner().get("capabilities")
            {
                conn.blocked_capable.set(matches!(
                    caps.inner().get("connection.blocked"),
                    Some(amq_protocol::types::AMQPValue::Boolean(true))
                ));
            }
            if mech != "PLAIN" && mech != "AMQPLAIN" {
                return Err(AmqpError::connection(
                    reply::ACCESS_REFUSED,
                    format!("ACCESS_REFUSED - unsupported authentication mechanism '{mech}'"),
                ));
            }
            match auth::authenticate(cfg, &mech, ok.response.as_bytes(), conn.peer) {
                Ok(user) => {
                    let _ = conn.user.set(user);
                }
                Err(e) => {
                    log::warn!("amqp login from {} refused: {e}", conn.peer);
                    // authentication_failure_close: a connection.close with 403.
                    return Err(AmqpError::connection(reply::ACCESS_REFUSED, e.to_string()));
                }
            }
            conn.send_method(
                0,
                AMQPClass::Connection(conn_m::AMQPMethod::Tune(conn_m::Tune {
                    channel_max: cfg.channel_max,
                    frame_max: cfg.frame_max,
                    heartbeat: cfg.heartbeat_secs,
                })),
            );
            *phase = Phase::TuneOk;
            Ok(true)
        }
        (Phase::TuneOk, AMQPClass::Connection(conn_m::AMQPMethod::TuneOk(t))) => {
            let channel_max = match (t.channel_max, cfg.channel_max) {
                (0, s) => s,
                (c, s) => c.min(s),
            };
            let frame_max = match t.frame_max {
                0 => cfg.frame_max,
                f => f.min(cfg.frame_max),
            };
            if frame_max < 4096 {
                return Err(AmqpError::connection(
                    reply::NOT_ALLOWED,
                    format!("NOT_ALLOWED - frame_max={frame_max} < 4096 min size"),
                ));
            }
            conn.channel_max.set(channel_max);
            conn.frame_max.set(frame_max);
            conn.heartbeat.set(t.heartbeat);
            if t.heartbeat > 0 {
                glommio::spawn_local(heartbeat_loop(Rc::downgrade(conn), t.heartbeat)).detach();
            }
            *phase = Phase::Open;
            Ok(true)
        }
        (Phase::Open, AMQPClass::Connection(conn_m::AMQPMethod::Open(o))) => {
            let mut vhost = o.virtual_host.as_str().to_owned();
            // `amqp://host:5672/` names the empty vhost in some clients (lapin): that is
            // the default one.
            if vhost.is_empty() {
                vhost = "/".into();
            }
            if !cfg.vhosts.contains(&vhost) {
                return Err(AmqpError::connection(
                    reply::NOT_ALLOWED,
                    format!("NOT_ALLOWED - vhost {vhost} not found"),
                ));
            }
            let user = conn.user();
            let Some(perms) = Permissions::of(cfg, user, &vhost) else {
                return Err(AmqpError::connection(
                    reply::NOT_ALLOWED,
                    format!("NOT_ALLOWED - access to vhost '{vhost}' refused for user '{user}'"),
                ));
            };
            let _ = conn.perms.set(perms);
            let _ = conn.vhost.set(vhost);
            conn.send_method(
                0,
                AMQPClass::Connection(conn_m::AMQPMethod::OpenOk(conn_m::OpenOk {})),
            );
            *phase = Phase::Running;
            if cfg.consumer_timeout_ms > 0 {
                let weak = Rc::downgrade(conn);
                glommio::spawn_local(consumer_timeout_loop(weak, cfg.consumer_timeout_ms)).detach();
            }
            Ok(true)
        }
        _ => Err(AmqpError::connection(
            reply::COMMAND_INVALID,
            "COMMAND_INVALID - unexpected method during the handshake",
        )),
    }
}

/// The connection behind a background task's weak handle, while it still runs.
fn still_running(conn: &std::rc::Weak<Connection>) -> Option<Rc<Connection>> {
    let conn = conn.upgrade()?;
    (!conn.finished.get() && !conn.dead.get()).then_some(conn)
}

/// Sends heartbeats and closes a silent peer. Holds the connection weakly, so a closed
/// connection is freed at once rather than at the next tick.
async fn heartbeat_loop(conn: std::rc::Weak<Connection>, heartbeat_secs: u16) {
    let hb = heartbeat_secs as i64 * 1000;
    let tick = Duration::from_millis((hb / 2).max(500) as u64);
    loop {
        glommio::timer::sleep(tick).await;
        let Some(conn) = still_running(&conn) else {
            return;
        };
        let now = now_ms();
        if now - conn.last_send_ms.get() >= hb / 2 {
            conn.write(codec::put_heartbeat);
        }
        if now - conn.last_recv_ms.get() > 2 * hb {
            log::info!(
                "amqp connection from {}: no frames for {} s (heartbeat {} s), closing",
                conn.peer,
                (now - conn.last_recv_ms.get()) / 1000,
                hb / 1000
            );
            conn.dead.set(true);
            conn.kill.notify();
            return;
        }
    }
}

/// A frame after the handshake.
async fn running(conn: &Rc<Connection>, frame: Frame) -> Result<bool, AmqpError> {
    if frame.channel == 0 {
        if frame.kind != codec::FRAME_METHOD {
            return Err(AmqpError::connection(
                reply::UNEXPECTED_FRAME,
                "UNEXPECTED_FRAME - content frame on channel 0",
            ));
        }
        conn.method_received(&frame.payload);
        return match codec::decode_method(&frame.payload) {
            Some(AMQPClass::Connection(conn_m::AMQPMethod::Close(c))) => {
                log::debug!(
                    "amqp connection from {} closed by client: {} {}",
                    conn.peer,
                    c.reply_code,
                    c.reply_text
                );
                conn.clean_up().await;
                conn.send_method(
                    0,
                    AMQPClass::Connection(conn_m::AMQPMethod::CloseOk(conn_m::CloseOk {})),
                );
                Ok(false)
            }
            Some(AMQPClass::Connection(conn_m::AMQPMethod::CloseOk(_))) => Ok(false),
            Some(AMQPClass::Connection(conn_m::AMQPMethod::Blocked(_)))
            | Some(AMQPClass::Connection(conn_m::AMQPMethod::Unblocked(_))) => Ok(true),
            Some(AMQPClass::Connection(conn_m::AMQPMethod::UpdateSecret(u))) => {
                // RabbitMQ's credential refresh: the new secret must be the user's
                // password (no token backends here); 530 otherwise.
                let user = conn.user();
                let ok = conn
                    .shard
                    .config
                    .amqp
                    .users
                    .iter()
                    .find(|x| x.name == user)
                    .is_some_and(|x| {
                        auth::check_password(
                            &x.password_hash,
                            &String::from_utf8_lossy(u.new_secret.as_bytes()),
                        )
                    });
                if !ok {
                    return Err(AmqpError::connection(
                        reply::NOT_ALLOWED,
                        format!("NOT_ALLOWED - Secret update was refused for user '{user}'"),
                    ));
                }
                conn.send_method(
                    0,
                    AMQPClass::Connection(conn_m::AMQPMethod::UpdateSecretOk(
                        conn_m::UpdateSecretOk {},
                    )),
                );
                Ok(true)
            }
            Some(_) => Err(AmqpError::connection(
                reply::COMMAND_INVALID,
                "COMMAND_INVALID - unexpected method on channel 0",
            )),
            None => Err(methods::undecodable(&frame.payload)),
        };
    }
    if frame.channel > conn.channel_max.get() {
        return Err(AmqpError::connection(
            reply::CHANNEL_ERROR,
            format!(
                "CHANNEL_ERROR - channel {} exceeds channel_max {}",
                frame.channel,
                conn.channel_max.get()
            ),
        ));
    }
    let ch = conn.channel(frame.channel);
    match frame.kind {
        codec::FRAME_METHOD => {
            conn.method_received(&frame.payload);
            let Some(method) = codec::decode_method(&frame.payload) else {
                return Err(methods::undecodable(&frame.payload));
            };
            let Some(ch) = ch else {
                if let AMQPClass::Channel(chan::AMQPMethod::Open(_)) = method {
                    let ch = Channel::new(
                        frame.channel,
                        conn.shard.config.amqp.default_prefetch as u32,
                    );
                    conn.channels.borrow_mut().insert(frame.channel, ch);
                    conn.send_method(
                        frame.channel,
                        AMQPClass::Channel(chan::AMQPMethod::OpenOk(chan::OpenOk {})),
                    );
                    return Ok(true);
                }
                return Err(AmqpError::connection(
                    reply::CHANNEL_ERROR,
                    format!(
                        "CHANNEL_ERROR - expected 'channel.open' on channel {}",
                        frame.channel
                    ),
                ));
            };
            let closing = ch.borrow().closing;
            if closing {
                match method {
                    AMQPClass::Channel(chan::AMQPMethod::CloseOk(_)) => {
                        conn.channels.borrow_mut().remove(&frame.channel);
                    }
                    AMQPClass::Channel(chan::AMQPMethod::Close(_)) => {
                        conn.channels.borrow_mut().remove(&frame.channel);
                        conn.send_method(
                            frame.channel,
                            AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                        );
                    }
                    _ => {}
                }
                return Ok(true);
            }
            if ch.borrow().publish.is_some() {
                return Err(AmqpError::connection(
                    reply::UNEXPECTED_FRAME,
                    "UNEXPECTED_FRAME - expected content header or body, got a method",
                ));
            }
            let r = methods::dispatch(conn, &ch, method, &frame.payload).await;
            channel_result(conn, &ch, r)?;
            Ok(true)
        }
        codec::FRAME_HEADER | codec::FRAME_BODY => {
            let Some(ch) = ch else {
                return Err(AmqpError::connection(
                    reply::CHANNEL_ERROR,
                    format!(
                        "CHANNEL_ERROR - content on channel {} which is not open",
                        frame.channel
                    ),
                ));
            };
            if ch.borrow().closing {
                return Ok(true);
            }
            let r = methods::basic_publish::content(conn, &ch, frame).await;
            channel_result(conn, &ch, r)?;
            Ok(true)
        }
        _ => Ok(true),
    }
}

/// A channel error closes only that channel (channel.close, then wait for close-ok);
/// connection errors pass up.
fn channel_result(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    r: Result<(), AmqpError>,
) -> Result<(), AmqpError> {
    match r {
        Ok(()) => Ok(()),
        Err(AmqpError::Channel { code, text }) => {
            let (class_id, method_id) = conn.last_method.get();
            log::debug!("amqp channel {} of {}: {text}", ch.borrow().id, conn.peer);
            close_channel(conn, ch, code, &text, (class_id, method_id));
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Closes a channel from the broker's side: its consumers are cancelled and its unacked
/// messages requeued at once; channel.close goes out and close-ok is awaited.
fn close_channel(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    code: u16,
    text: &str,
    method: (u16, u16),
) {
    crate::metrics::with(|m| m.error(Protocol::Amqp, code as i32));
    let id = {
        let mut c = ch.borrow_mut();
        c.release(conn);
        c.closing = true;
        c.id
    };
    conn.send_method(
        id,
        AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
            reply_code: code,
            reply_text: codec::short(text),
            class_id: method.0,
            method_id: method.1,
        })),
    );
}

/// RabbitMQ's consumer timeout: a channel whose oldest unacknowledged delivery is older
/// than `amqp.consumer_timeout_ms` is closed with 406 (its messages go back to their
/// queues). Checked once a minute, or at a quarter of a shorter timeout. Holds the
/// connection weakly, so a closed connection is freed at once.
async fn consumer_timeout_loop(conn: std::rc::Weak<Connection>, timeout: u64) {
    let tick = Duration::from_millis((timeout / 4).clamp(50, 60_000));
    loop {
        glommio::timer::sleep(tick).await;
        let Some(conn) = still_running(&conn) else {
            return;
        };
        let now = now_ms();
        let late: Vec<ChannelRef> = conn
            .channels
            .borrow()
            .values()
            .filter(|ch| {
                let c = ch.borrow();
                !c.closing
                    && c.oldest_unacked_ms()
                        .is_some_and(|t| now.saturating_sub(t) > timeout as i64)
            })
            .cloned()
            .collect();
        for ch in late {
            let id = ch.borrow().id;
            log::info!(
                "amqp connection from {}: channel {id} held a delivery unacknowledged over {timeout} ms, closing the channel",
                conn.peer
            );
            let text = format!(
                "PRECONDITION_FAILED - delivery acknowledgement on channel {id} timed out. Timeout value used: {timeout} ms. This timeout value can be configured, see consumers doc guide to learn more"
            );
            close_channel(&conn, &ch, reply::PRECONDITION_FAILED, &text, (0, 0));
        }
    }
}

//! The Kafka listeners of one shard and their connections.
//!
//! Every shard binds every listener of `kafka.effective_listeners()` (glommio sets
//! SO_REUSEPORT, so the kernel spreads connections); a connection starts on the shard that
//! accepted it and knows its listener (`Conn.listener`: security protocol, advertised
//! address). `SSL` and `SASL_SSL` listeners wrap the socket in TLS first
//! (`runtime::transport`); on `SSL` a verified client certificate's subject is the
//! principal (`User:CN=…`). Each connection has a
//! reader task (frames → `handlers::dispatch`, in order) and a writer task that writes the
//! responses in request order, so pipelining clients get their answers in sequence.
//! A malformed or oversize frame, an unknown API or an unsupported version closes that one
//! connection with a log line, as does `kafka.connections_max_idle_ms` of silence (with no
//! answer owed), of a stall inside a frame, or of answers the peer does not read, and a
//! request not received whole within `kafka.request_read_timeout_ms` of its first byte
//! (a client trickling a frame a byte at a time cannot keep resetting a per-read timer).
//! On a `SASL_*` listener the connection's SASL session (`kafka::sasl`) admits each request
//! by its API key before the frame is read, and a failed authentication closes the
//! connection once its answer is written; after a v0 SaslHandshake the SASL tokens come as
//! bare frames (`sasl_token`).
//!
//! A connection whose last Produce and Fetch requests all went to the partitions of one
//! other shard moves there between two requests (`runtime::placement`, `move_to`): its
//! answers owed are written first (if that takes over a second, the move is given up and
//! tried later), then the socket goes over with the bytes of the next request already read,
//! its principal and SASL session. A TLS connection (its session
//! cannot be handed over) and one in the middle of a SASL exchange stay;
//! `kafka.connections_follow_partitions = false` keeps every connection where it was
//! accepted.
//!
//! Memory: a frame is read only when the connection's and the shard's in-flight budgets
//! (`limits.*_inflight_bytes`) have room for it and for the most it can hold once decoded
//! (`codec::admission_charge`: ~30x for Produce, whose records stay slices of the frame;
//! 161x for other APIs, which are also limited to `kafka.max_nonproduce_request_bytes`). A
//! connection with nothing in flight gets its next request while its shard is within
//! budget. Once decoded, the charge becomes what the request holds (`held_beyond_frame`)
//! until its answer is written, and a Produce whose entries alone would hold more than the
//! shard's budget is refused before it is decoded (`produce_scan`). So a shard holds at
//! most its budget plus one request.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{select, Either};
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpListener;
use glommio::task::JoinHandle;
use kafka_protocol::messages::ApiKey;

use super::codec::{self, CodecError};
use super::handlers::{self, api_versions, Conn};
use super::produce_scan;
use crate::broker::Shard;
use crate::config::{KafkaListener, SecurityProtocol};
use crate::metrics::Protocol;
use crate::runtime::listener;
use crate::runtime::placement::{self, Follow};
use crate::runtime::transport::pool::{self, Reader};
use crate::runtime::transport::{self, ReadHalf, Socket, Transport, WriteHalf};
use crate::security::Principal;
use crate::util::notify::{Listener, Notify};

/// Binds every listener of `kafka.effective_listeners()` (each shard binds them all).
pub fn bind(shard: &Shard) -> Result<Vec<(Rc<KafkaListener>, TcpListener)>, String> {
    shard
        .config
        .kafka
        .effective_listeners()
        .into_iter()
        .map(|l| match TcpListener::bind(l.addr.as_str()) {
            Ok(tcp) => Ok((Rc::new(l), tcp)),
            Err(e) => Err(format!("kafka listener {} ({}): {e}", l.name, l.addr)),
        })
        .collect()
}

/// Accepts on one listener until the shard stops; its connections know `listener`.
pub async fn accept_loop(shard: Rc<Shard>, listener: Rc<KafkaListener>, tcp: TcpListener) {
    crate::runtime::listener::accept_loop(shard, tcp, "kafka", move |shard, stream| {
        let listener = listener.clone();
        async move { connection(&shard, stream, listener).await }
    })
    .await
}

fn apply_socket_options(shard: &Shard, stream: &Socket) {
    let net = &shard.config.network;
    let _ = stream.set_nodelay(net.tcp_nodelay);
    let fd = stream.as_raw_fd();
    let set = |opt: libc::c_int, value: usize| {
        if value == 0 {
            return;
        }
        let v = value.min(i32::MAX as usize) as libc::c_int;
        // SAFETY: setsockopt on a socket we own with a pointer to a live c_int.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    };
    set(libc::SO_SNDBUF, net.socket_send_buffer_bytes);
    set(libc::SO_RCVBUF, net.socket_receive_buffer_bytes);
}

/// A response on its way: the handler's task, resolving to the frame to write (if any).
type Outgoing = JoinHandle<Option<handlers::Answer>>;

/// Wraps an accepted socket in TLS when its listener asks for it (`SSL`, `SASL_SSL`).
async fn wrap_tls(
    shard: &Shard,
    stream: Socket,
    listener: &KafkaListener,
) -> std::io::Result<Transport> {
    if !listener.protocol().tls() {
        return Ok(Transport::Plain(stream));
    }
    let certs = crate::security::tls::current()
        .ok_or_else(|| std::io::Error::other("no TLS certificate loaded"))?;
    let timeout = Duration::from_millis(shard.config.tls.handshake_timeout_ms.max(1));
    let config = certs.server(listener.client_auth);
    transport::accept_tls(stream, config, timeout, Protocol::Kafka).await
}

async fn connection(
    shard: &Rc<Shard>,
    stream: Socket,
    listener: Rc<KafkaListener>,
) -> std::io::Result<()> {
    apply_socket_options(shard, &stream);
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    let stream = wrap_tls(shard, stream, &listener).await?;
    // On an `SSL` listener a verified client certificate names the client, as Kafka's
    // default principal builder does (`User:CN=alice,OU=…`); SASL listeners authenticate
    // with SASL instead.
    let principal = match stream.peer_subject() {
        Some(subject) if listener.protocol() == SecurityProtocol::Ssl => {
            Principal::user(subject.dn)
        }
        _ => Principal::anonymous(),
    };
    let conn = Rc::new(Conn {
        shard: shard.clone(),
        local,
        peer,
        listener,
        principal: std::cell::RefCell::new(principal),
        sasl: Default::default(),
        follow: Follow::new(shard.id),
    });
    serve(conn, stream, &[]).await
}

/// What a connection takes along when it moves to another shard (`move_to`).
struct Moving {
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    listener: KafkaListener,
    principal: Principal,
    sasl: crate::kafka::sasl::Session,
    /// Bytes read from the socket and not yet consumed: the start of the next request.
    unread: Vec<u8>,
}

/// Goes on with a connection another shard handed over (`move_to`), on this shard.
async fn adopted(shard: Rc<Shard>, socket: Socket, moving: Moving) -> std::io::Result<()> {
    log::debug!(
        "kafka connection from {} moved to shard {}",
        moving.peer,
        shard.id
    );
    let conn = Rc::new(Conn {
        shard: shard.clone(),
        local: moving.local,
        peer: moving.peer,
        listener: Rc::new(moving.listener),
        principal: std::cell::RefCell::new(moving.principal),
        sasl: std::cell::RefCell::new(moving.sasl),
        follow: Follow::new(shard.id),
    });
    serve(conn, Transport::Plain(socket), &moving.unread).await
}

/// Serves a connection until it ends or moves to another shard; `unread`: bytes of it
/// already read elsewhere (a moved connection's), consumed first.
async fn serve(conn: Rc<Conn>, stream: Transport, unread: &[u8]) -> std::io::Result<()> {
    let shard = &conn.shard;
    let peer = conn.peer;
    // A plain connection can move to another shard (TLS keeps its session here).
    let socket = (!stream.is_tls()).then(|| stream.tcp().clone());
    // The reader keeps one half, the writer task the other: reads and writes never wait on
    // each other.
    let (stream, mut writer) = stream.split();
    let inflight = Rc::new(Cell::new(0usize));
    // Set when the writer stops (the peer left, or stopped reading): the reader then no
    // longer waits for budget or answers it will never see released or written.
    let writer_gone = Rc::new(Cell::new(false));
    // Set when the connection moved to another shard: the writer then leaves the socket
    // open.
    let moved = Rc::new(Cell::new(false));
    let (tx, rx) = local_channel::new_unbounded::<(usize, Outgoing)>();
    let room = Rc::new(Room::default());
    let tx = Answers {
        tx,
        room: room.clone(),
        max: shard.config.kafka.max_inflight_requests.max(1),
        writer_gone: writer_gone.clone(),
    };
    let idle_ms = shard.config.kafka.connections_max_idle_ms.max(1);
    let write_task = {
        let (shard, inflight, gone) = (shard.clone(), inflight.clone(), writer_gone.clone());
        let moved = moved.clone();
        glommio::spawn_local(async move {
            let mut stuck = false;
            while let Some((size, task)) = rx.recv().await {
                room.taken();
                let frame = task.await;
                release(&shard, &inflight, size);
                let written = match frame {
                    Some(Some(frame)) if frame.is_empty() => {
                        log::warn!("kafka connection closed: a response could not be encoded");
                        break;
                    }
                    Some(Some(frame)) => {
                        let idle = Duration::from_millis(idle_ms);
                        write_unless_stuck(&mut writer, &frame.chunks, idle).await
                    }
                    _ => Some(Ok(())),
                };
                match written {
                    Some(Ok(())) => room.answered(),
                    Some(Err(_)) => break,
                    None => {
                        log::info!(
                            "kafka connection from {peer} closed: it read none of its answers \
                             for {idle_ms} ms (kafka.connections_max_idle_ms)"
                        );
                        stuck = true;
                        break;
                    }
                }
            }
            gone.set(true);
            shard.kafka_budget.released.notify();
            room.freed.notify();
            if moved.get() {
                // Another shard serves the socket now: leave it open.
                return;
            }
            if stuck {
                // Wakes the reader too: its next read ends at once.
                writer.shutdown().await;
            }
            let _ = writer.close().await;
        })
    };
    let mut reader = Reader::with_unread(stream, unread);
    let movable = socket.is_some() && shard.config.kafka.connections_follow_partitions;
    let result = loop {
        let read = read_requests(&conn, &mut reader, &tx, &inflight, &writer_gone, movable);
        match (read.await, &socket) {
            (Ok(Some(to)), Some(socket)) => {
                if move_to(&conn, to, socket, &mut reader, &tx).await {
                    moved.set(true);
                    break Ok(());
                }
                // Not moved: go on here (`placement::RETRY_AFTER` before another try).
            }
            (read, _) => break read.map(|_| ()),
        }
    };
    match &result {
        // A client causes these at will (failed logins are counted and logged, rate
        // limited, by `security::audit`): info, not warnings.
        Err(
            e @ (ConnectionError::Idle(..)
            | ConnectionError::SlowRequest { .. }
            | ConnectionError::Sasl(_)),
        ) => {
            log::info!("kafka connection from {peer} closed: {e}")
        }
        Err(e) => log::warn!("kafka connection from {peer} closed: {e}"),
        Ok(()) => {}
    }
    drop(tx);
    write_task.await;
    // Requests whose answers were never written (the peer left) hold no budget.
    let left = inflight.get();
    release(shard, &inflight, left);
    Ok(())
}

/// How long a move waits for the answers owed to be written before it gives up.
const DRAIN_AT_MOST: Duration = Duration::from_secs(1);

/// Moves the connection to shard `to` (`runtime::placement`), if that shard takes it: waits
/// until every answer owed is written (reading nothing meanwhile, `DRAIN_AT_MOST`), then
/// hands the socket over with the bytes read of the next request. False when `to` refused or could not be
/// reached: the connection goes on here, where nothing was lost.
async fn move_to(
    conn: &Rc<Conn>,
    to: usize,
    socket: &Socket,
    reader: &mut Reader<ReadHalf>,
    out: &Answers,
) -> bool {
    let shard = &conn.shard;
    if !placement::offer(&shard.core, to).await {
        conn.follow.refused(Instant::now());
        return false;
    }
    // An answer may wait long (a JoinGroup for its rebalance, a Fetch for its max_wait_ms):
    // the client's next requests are not left unread for more than `DRAIN_AT_MOST`.
    let drained = glommio::timer::timeout(DRAIN_AT_MOST, async { Ok(out.drained().await) });
    if !matches!(drained.await, Ok(true)) {
        // Not in time (the move is tried again later), or the writer stopped.
        conn.follow.refused(Instant::now());
        return false;
    }
    let unread = reader.take_unread();
    let moving = Moving {
        local: conn.local,
        peer: conn.peer,
        listener: (*conn.listener).clone(),
        principal: conn.principal.borrow().clone(),
        sasl: conn.sasl.borrow().carried(),
        unread: unread.clone(),
    };
    let serve = move |shard: Rc<Shard>, socket: Socket| adopted(shard, socket, moving);
    if listener::hand_over(&shard.core, to, "kafka", socket, serve).await {
        return true;
    }
    // Not handed over: the connection goes on here, with what it had read.
    reader.put_back(&unread);
    conn.follow.refused(Instant::now());
    false
}

/// How many answers wait in a connection's queue to its writer.
#[derive(Default)]
struct Room {
    queued: Cell<usize>,
    /// Answers queued and not yet written (or skipped).
    owed: Cell<usize>,
    /// Fired when the writer takes one, has written one, or stops.
    freed: Notify,
}

impl Room {
    fn taken(&self) {
        self.queued.set(self.queued.get().saturating_sub(1));
        self.freed.notify();
    }

    fn answered(&self) {
        self.owed.set(self.owed.get().saturating_sub(1));
        self.freed.notify();
    }
}

/// The answers a connection owes, from its reader to its writer in request order, at most
/// `kafka.max_inflight_requests` queued (the reader waits for room). glommio's bounded
/// channel allocates its whole capacity up front for every connection (4 KiB at the default
/// 256); this unbounded one with a count grows only as far as a client pipelines.
struct Answers {
    tx: local_channel::LocalSender<(usize, Outgoing)>,
    room: Rc<Room>,
    max: usize,
    writer_gone: Rc<Cell<bool>>,
}

impl Answers {
    /// Queues an answer holding `size` bytes of budget; false once the writer is gone.
    async fn send(&self, size: usize, task: Outgoing) -> bool {
        let writer_gone = &self.writer_gone;
        while self.room.queued.get() >= self.max && !writer_gone.get() {
            let l = Listener::new();
            l.listen(&self.room.freed);
            if self.room.queued.get() < self.max || writer_gone.get() {
                break;
            }
            l.await;
        }
        if writer_gone.get() {
            return false;
        }
        self.room.queued.set(self.room.queued.get() + 1);
        self.room.owed.set(self.room.owed.get() + 1);
        self.tx.send((size, task)).await.is_ok()
    }

    /// Waits until every answer queued is written; false when the writer stopped first.
    async fn drained(&self) -> bool {
        loop {
            if self.writer_gone.get() {
                return false;
            }
            if self.room.owed.get() == 0 {
                return true;
            }
            let l = Listener::new();
            l.listen(&self.room.freed);
            if self.room.owed.get() == 0 || self.writer_gone.get() {
                continue;
            }
            l.await;
        }
    }
}

/// Gives back `size` request bytes of a connection's and its shard's in-flight budget.
fn release(shard: &Shard, inflight: &Cell<usize>, size: usize) {
    inflight.set(inflight.get().saturating_sub(size));
    shard.kafka_budget.release(size);
}

/// Waits until a request of `size` bytes fits the connection's and the shard's in-flight
/// budgets (`limits.connection_inflight_bytes`, `limits.shard_inflight_bytes`), then
/// takes it. Meanwhile the socket is not read, so a fast producer is slowed by TCP flow
/// control rather than by the broker's memory. A connection with nothing in flight always
/// gets its next request, so one larger than a budget still goes through.
async fn acquire(shard: &Shard, inflight: &Cell<usize>, size: usize, writer_gone: &Cell<bool>) {
    let limits = &shard.config.limits;
    // A connection with nothing in flight gets its next request while the shard is within
    // its budget, so a request larger than a budget still goes through, and the shard holds
    // at most its budget plus one request.
    let fits = || {
        (inflight.get() == 0 && shard.kafka_budget.used() <= limits.shard_inflight_bytes)
            || (inflight.get() + size <= limits.connection_inflight_bytes
                && shard.kafka_budget.used() + size <= limits.shard_inflight_bytes)
    };
    if !fits() {
        crate::metrics::with(|m| m.protocol(crate::metrics::Protocol::Kafka).throttled += 1);
        while !fits() && !shard.stopping.get() && !writer_gone.get() {
            let l = Listener::new();
            l.listen(&shard.kafka_budget.released);
            if fits() {
                break;
            }
            let _ = glommio::timer::timeout(std::time::Duration::from_millis(100), async {
                l.await;
                Ok(())
            })
            .await;
        }
    }
    inflight.set(inflight.get() + size);
    shard.kafka_budget.charge(size);
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("{0}")]
    Codec(#[from] CodecError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("idle for {0} ms (kafka.connections_max_idle_ms){1}")]
    Idle(u64, &'static str),
    #[error(
        "request not received whole within {ms} ms of its first byte \
         (kafka.request_read_timeout_ms): {got} of {len} bytes"
    )]
    SlowRequest { ms: u64, got: usize, len: usize },
    #[error("SASL: {0}")]
    Sasl(String),
    #[error("{api:?} request of {len} bytes is over kafka.max_nonproduce_request_bytes ({max})")]
    NonProduceTooLarge { api: ApiKey, len: usize, max: usize },
    #[error(
        "Produce request of {len} bytes has {topics} topic and {partitions} partition entries, \
         {held} bytes decoded: over the shard's limits.shard_inflight_bytes ({max})"
    )]
    ProduceTooWide {
        len: usize,
        topics: usize,
        partitions: usize,
        held: usize,
        max: usize,
    },
}

/// `read` unless the peer stays silent for `idle` while `owed()` is false (a long-polling
/// Fetch or a JoinGroup waiting for its rebalance is owed an answer, not idle): `None`
/// then. The read is never dropped partway, so no bytes it took are lost.
async fn unless_idle<F: Future + Unpin>(
    read: &mut F,
    idle: Duration,
    owed: impl Fn() -> bool,
) -> Option<F::Output> {
    loop {
        let timer = std::pin::pin!(glommio::timer::sleep(idle));
        match select(&mut *read, timer).await {
            Either::Left((out, _)) => return Some(out),
            Either::Right(_) if owed() => continue,
            Either::Right(_) => return None,
        }
    }
}

/// The most chunks one write takes (the kernel's limit, `UIO_MAXIOV`, is 1 024; a fetch of
/// many large sections can have more).
const WRITE_SLICES: usize = 64;

/// Writes a frame's chunks, unless the peer takes none of it for `idle` (`None` then): a
/// client that stopped reading is as idle as one that stopped sending.
async fn write_unless_stuck(
    writer: &mut WriteHalf,
    chunks: &[Bytes],
    idle: Duration,
) -> Option<std::io::Result<()>> {
    // The chunks left (up to `WRITE_SLICES` of them) in one vectored write (one `sendmsg`
    // on a plain socket), from `done` bytes into chunk `at`.
    let (mut at, mut done) = (0, 0);
    while at < chunks.len() {
        let mut slices: smallvec::SmallVec<[std::io::IoSlice<'_>; 8]> = smallvec::SmallVec::new();
        slices.push(std::io::IoSlice::new(&chunks[at][done..]));
        let more = chunks[at + 1..].iter().take(WRITE_SLICES - 1);
        slices.extend(more.map(|c| std::io::IoSlice::new(c)));
        let mut write = writer.write_vectored(&slices);
        let mut n = match unless_idle(&mut write, idle, || false).await? {
            Ok(0) if chunks[at..].iter().any(|c| !c.is_empty()) => {
                return Some(Err(std::io::ErrorKind::WriteZero.into()))
            }
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        while at < chunks.len() && done + n >= chunks[at].len() {
            n -= chunks[at].len() - done;
            (at, done) = (at + 1, 0);
        }
        done += n;
    }
    // Free on plain sockets; pushes out what a TLS session still holds.
    let mut flush = writer.flush();
    match unless_idle(&mut flush, idle, || false).await? {
        Ok(()) => Some(Ok(())),
        Err(e) => Some(Err(e)),
    }
}

/// `f`, unless `deadline` passes first (`None` then; what `f` had read is lost, which is
/// fine: the connection closes).
async fn within<F: Future>(f: F, deadline: Instant) -> Option<F::Output> {
    let timer = glommio::timer::sleep(deadline.saturating_duration_since(Instant::now()));
    match select(std::pin::pin!(f), std::pin::pin!(timer)).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

/// Fills `buf` from `reader`, adding each read's length to `got` (for the log line of a
/// request that did not arrive in time). EOF before the end is `UnexpectedEof`.
async fn read_counted(
    reader: &mut Reader<ReadHalf>,
    buf: &mut [u8],
    got: &Cell<usize>,
) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        got.set(got.get() + n);
    }
    Ok(())
}

/// The limits a request frame is read under: its deadline (`kafka.request_read_timeout_ms`
/// from its first byte, plus the time the broker held the read back) and the longest stall.
struct FrameClock {
    deadline: Instant,
    timeout_ms: u64,
    idle: Duration,
}

/// Fills `buf` with more of a request frame of `len` bytes, by the clock's deadline (else
/// `SlowRequest`) and without a stall of its `idle` (else `Idle`).
async fn read_within(
    reader: &mut Reader<ReadHalf>,
    buf: &mut [u8],
    got: &Cell<usize>,
    clock: &FrameClock,
    len: usize,
) -> Result<(), ConnectionError> {
    let (idle, deadline) = (clock.idle, clock.deadline);
    let read = {
        let mut part = std::pin::pin!(read_counted(reader, buf, got));
        within(unless_idle(&mut part, idle, || false), deadline).await
    };
    let Some(read) = read else {
        return Err(ConnectionError::SlowRequest {
            ms: clock.timeout_ms,
            got: got.get(),
            len: len + 4,
        });
    };
    let Some(read) = read else {
        return Err(ConnectionError::Idle(
            idle.as_millis() as u64,
            " inside a request frame",
        ));
    };
    read.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            std::io::Error::new(e.kind(), format!("truncated request: expected {len} bytes"))
        } else {
            e
        }
    })?;
    Ok(())
}

/// A Produce's topic and partition entries, counted before it is decoded, must not alone
/// hold more than the shard's whole in-flight budget (`ProduceTooWide` otherwise).
fn produce_fits_the_shard(
    shard: &Shard,
    frame: &codec::Frame,
    len: usize,
) -> Result<(), ConnectionError> {
    let max = shard.config.limits.shard_inflight_bytes;
    match produce_scan::entries(&frame.body, frame.version) {
        Some(e) if e.held() > max => Err(ConnectionError::ProduceTooWide {
            len,
            topics: e.topics,
            partitions: e.partitions,
            held: e.held(),
            max,
        }),
        // Within budget, or malformed: the decoder gives the client its error.
        _ => Ok(()),
    }
}

/// Reads frames until the peer closes, the shard stops, or a frame is bad (`Ok(None)` or
/// the error), or, when `movable`, until the connection should move to the shard of its
/// partitions (`Ok(Some(shard))`, between two requests: nothing of the next one consumed
/// but what `reader` holds).
async fn read_requests(
    conn: &Rc<Conn>,
    reader: &mut Reader<ReadHalf>,
    out: &Answers,
    inflight: &Cell<usize>,
    writer_gone: &Cell<bool>,
    movable: bool,
) -> Result<Option<usize>, ConnectionError> {
    let shard = &conn.shard;
    let max = shard.config.kafka.max_request_bytes;
    let max_nonproduce = shard.config.kafka.max_nonproduce_request_bytes;
    let idle_ms = shard.config.kafka.connections_max_idle_ms.max(1);
    let idle = Duration::from_millis(idle_ms);
    let request_timeout = Duration::from_millis(shard.config.kafka.request_read_timeout_ms.max(1));
    loop {
        let stop = Listener::new();
        stop.listen(&shard.stop);
        if shard.stopping.get() {
            return Ok(None);
        }
        if let Some(to) = conn.follow.wanted(shard.id).filter(|_| movable) {
            if conn.sasl.borrow().settled() {
                return Ok(Some(to));
            }
        }
        // Waiting for a request's first byte is idleness (`connections_max_idle_ms`); from
        // that byte on, the whole frame is due within `request_read_timeout_ms`.
        let mut prefix = [0u8; 4];
        let mut next = reader.read_exact(&mut prefix[..1]);
        let read = unless_idle(&mut next, idle, || inflight.get() > 0 && !writer_gone.get());
        match select(std::pin::pin!(read), stop).await {
            Either::Left((Some(Ok(())), _)) => {}
            Either::Left((Some(Err(e)), _)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(None)
            }
            Either::Left((Some(Err(e)), _)) => return Err(e.into()),
            Either::Left((None, _)) => return Err(ConnectionError::Idle(idle_ms, "")),
            Either::Right(_) => return Ok(None),
        }
        let deadline = Instant::now() + request_timeout;
        let got = Cell::new(1usize);
        let slow = |len: usize| ConnectionError::SlowRequest {
            ms: request_timeout.as_millis() as u64,
            got: got.get(),
            len,
        };
        let read = {
            let mut rest = std::pin::pin!(read_counted(reader, &mut prefix[1..], &got));
            within(unless_idle(&mut rest, idle, || false), deadline).await
        };
        match read {
            None => return Err(slow(4)),
            Some(None) => return Err(ConnectionError::Idle(idle_ms, " inside a request frame")),
            Some(Some(Err(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Some(Some(r)) => r?,
        }
        if conn.sasl.borrow().raw() {
            let clock = FrameClock {
                deadline,
                timeout_ms: request_timeout.as_millis() as u64,
                idle,
            };
            sasl_token(conn, reader, prefix, &clock, out).await?;
            continue;
        }
        let len = codec::frame_len(prefix, max)?;
        // The API key first: it decides how large the frame may be and what the request
        // may hold once decoded, which the budgets must have room for before it is read.
        got.set(4);
        let mut key = [0u8; 2];
        let mut clock = FrameClock {
            deadline,
            timeout_ms: request_timeout.as_millis() as u64,
            idle,
        };
        read_within(reader, &mut key, &got, &clock, len).await?;
        let api = i16::from_be_bytes(key);
        let sasl = conn.listener.protocol().sasl();
        let admitted = conn.sasl.borrow().admit(sasl, api, Instant::now());
        admitted.map_err(ConnectionError::Sasl)?;
        if api != ApiKey::Produce as i16 && len > max_nonproduce {
            return Err(ConnectionError::NonProduceTooLarge {
                api: ApiKey::try_from(api).map_err(|_| CodecError::UnknownApi(api))?,
                len,
                max: max_nonproduce,
            });
        }
        let charge = codec::admission_charge(api, len);
        // Time the broker holds the read back for its in-flight budgets is not the client's.
        let waiting = Instant::now();
        acquire(shard, inflight, charge, writer_gone).await;
        clock.deadline += waiting.elapsed();
        let mut frame = pool::Frame::new(len);
        let buf = frame.bytes_mut();
        buf[..2].copy_from_slice(&key);
        read_within(reader, &mut buf[2..], &got, &clock, len).await?;
        let buf = frame.freeze();
        let (pending, held) = match codec::decode_frame(buf.clone()) {
            Ok(frame) => {
                if frame.api == ApiKey::Produce {
                    produce_fits_the_shard(shard, &frame, len)?;
                }
                log::trace!(
                    "{}: {:?} v{} correlation {}",
                    conn.peer,
                    frame.api,
                    frame.version,
                    frame.header.correlation_id
                );
                handlers::dispatch(conn, frame).await?
            }
            Err(CodecError::UnsupportedVersion {
                api: ApiKey::ApiVersions,
                ..
            }) => {
                // Tell the client which versions we speak (KIP-511), in v0 form.
                let correlation = codec::correlation_id(&buf).unwrap_or(0);
                (handlers::ready(api_versions::unsupported(correlation)), 0)
            }
            Err(e) => return Err(e.into()),
        };
        // The charge becomes what the decoded request holds with its frame, until answered.
        let kept = len + held;
        if kept < charge {
            release(shard, inflight, charge - kept);
        } else {
            inflight.set(inflight.get() + (kept - charge));
            shard.kafka_budget.charge(kept - charge);
        }
        let task = glommio::spawn_local(pending).detach();
        if !out.send(kept, task).await {
            return Ok(None);
        }
        if let Some(why) = conn.sasl.borrow().closing() {
            return Err(ConnectionError::Sasl(why.to_owned()));
        }
    }
}

/// Largest bare SASL token (Kafka's `sasl.server.max.receive.size`).
const MAX_SASL_TOKEN: usize = 512 * 1024;

/// After a v0 SaslHandshake, a SASL token comes as a bare frame (`prefix` is its length; no
/// Kafka header) and its answer goes back the same way; a failed exchange closes the
/// connection.
async fn sasl_token(
    conn: &Rc<Conn>,
    reader: &mut Reader<ReadHalf>,
    prefix: [u8; 4],
    clock: &FrameClock,
    out: &Answers,
) -> Result<(), ConnectionError> {
    let len = i32::from_be_bytes(prefix);
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_SASL_TOKEN)
        .ok_or_else(|| ConnectionError::Sasl(format!("SASL token of {len} bytes")))?;
    let mut token = vec![0u8; len];
    read_within(reader, &mut token, &Cell::new(4), clock, len).await?;
    let Some(reply) = handlers::sasl_authenticate::raw_token(conn, &token) else {
        let why = conn.sasl.borrow().closing().unwrap_or("failed").to_owned();
        return Err(ConnectionError::Sasl(why));
    };
    let task = glommio::spawn_local(async move { Some(reply.into()) }).detach();
    let _ = out.send(0, task).await;
    Ok(())
}

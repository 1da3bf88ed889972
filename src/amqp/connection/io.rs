//! A connection's socket: the reader loop (the protocol header through `handshake::greet`,
//! then frames into `handle_frame`, each within its deadline, the drain on a stop), the
//! writer task that drains the connection's output, and heartbeats (sent when we have
//! been silent, a silent peer closed).
//!
//! Memory: an idle connection holds no buffer. Reads borrow the shard's pooled read buffer
//! for one poll and append what arrived to the frame buffer, which is freed whenever it is
//! empty and the socket has nothing more (it holds a frame only while one is in flight);
//! the output buffer comes from the pool with the first write and goes back once the
//! writer has drained it and waits (`runtime::transport::pool`).
//!
//! Runs on the connection's shard, in its reader, writer and heartbeat tasks.

use std::rc::Rc;
use std::time::Duration;

use crate::runtime::transport::pool::{self, Reader};
use crate::runtime::transport::{ReadHalf, WriteHalf};
use bytes::BytesMut;
use futures::future::{select, Either};
use futures::AsyncWriteExt;

use super::{
    closed_linger, flow, handle_frame, still_running, Connection, Phase, CLOSE_TIMEOUT,
    HANDSHAKE_TIMEOUT,
};
use crate::amqp::codec::{self, FrameError};
use crate::amqp::mesh::QueueOp;
use crate::amqp::{outbox, reply, AmqpError};
use crate::storage::log::now_ms;
use crate::util::notify::Listener;

/// On a stop, how long a connection keeps reading what its client had already sent.
const STOP_DRAIN: Duration = Duration::from_millis(500);

/// Writes the connection's output as it comes, then returns credit for the deliveries
/// written; closes the socket for writing when the connection is finished or dead (not
/// when it moved to another shard).
pub(super) async fn write_loop(conn: Rc<Connection>, mut writer: WriteHalf) {
    loop {
        let l = Listener::new();
        l.listen(&conn.out_ready);
        let buf = std::mem::take(&mut *conn.out.borrow_mut());
        let written = std::mem::take(&mut *conn.written.borrow_mut());
        if buf.is_empty() {
            // Idle: the buffer goes back to the shard's pool (`write` takes one again).
            pool::give_output(buf);
            if conn.finished.get() || conn.dead.get() {
                break;
            }
            l.await;
            continue;
        }
        // The flush is free on plain sockets and pushes out what a TLS session holds.
        conn.writing.set(true);
        let sent = match writer.write_all(&buf).await {
            Ok(()) => writer.flush().await,
            Err(e) => Err(e),
        };
        conn.writing.set(false);
        if let Err(e) = sent {
            log::debug!("amqp write to {}: {e}", conn.peer);
            conn.dead.set(true);
            conn.kill.notify();
            break;
        }
        conn.last_send_ms.set(now_ms());
        conn.out_written.notify();
        // Reuse the buffer's allocation when nothing new arrived meanwhile (it goes back to
        // the pool when the next turn finds nothing to write).
        {
            let mut out = conn.out.borrow_mut();
            if out.is_empty() && buf.capacity() > out.capacity() {
                let mut buf = buf;
                buf.clear();
                pool::give_output(std::mem::replace(&mut *out, buf));
            } else {
                pool::give_output(buf);
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
    if conn.moved.get() {
        // Another shard serves the socket now: leave it open.
        return;
    }
    let _ = writer.close().await;
}

/// Reads into `buf` until at least one more byte arrived; false on EOF, deadline, kill or
/// (with `watch_stop`) the shard stopping.
pub(super) async fn fill(
    conn: &Rc<Connection>,
    stream: &mut Reader<ReadHalf>,
    buf: &mut BytesMut,
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
    let read = std::pin::pin!(stream.append(buf));
    let r = match deadline {
        Some(d) => {
            let timed = std::pin::pin!(glommio::timer::sleep(d));
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
    conn.last_recv_ms.set(now_ms());
    Ok(true)
}

/// Reads and handles frames, from `phase` on, until the connection ends (`Ok(None)`: the
/// peer closes, a close completes, a deadline passes, the shard stops) or, when `movable`,
/// until it should move to the shard its publishes go to (`Ok(Some(shard))`, between two
/// frames: `buf` holds at most the start of the next one; `connection::moving`) or the
/// shard of the queue of the `basic.consume` at the start of `buf` (the consume and what
/// follows it unread).
pub(super) async fn read_loop(
    conn: &Rc<Connection>,
    stream: &mut Reader<ReadHalf>,
    buf: &mut BytesMut,
    mut phase: Phase,
    movable: bool,
) -> Result<Option<usize>, std::io::Error> {
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
            // A first consume on another shard's queue is handled there (`moving`).
            if movable && phase == Phase::Running && !conn.shard.stopping.get() {
                if let Some(to) = super::moving::consume_elsewhere(conn, buf) {
                    return Ok(Some(to));
                }
            }
            let frame = match codec::take_frame(buf, conn.frame_max.get()) {
                Ok(Some(f)) => {
                    took_frame = true;
                    f
                }
                Ok(None) => break,
                Err(e) => {
                    if matches!(phase, Phase::Closing | Phase::Closed) {
                        return Ok(None);
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
                flow::wait_for_writer(conn).await;
            }
            match handle_frame(conn, &mut phase, frame).await {
                Ok(true) => {}
                Ok(false) => return Ok(None),
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
                && fill(conn, stream, buf, Some(Duration::from_millis(10)), false).await?
            {
                continue;
            }
        }
        if conn.shard.stopping.get() && !matches!(phase, Phase::Closing | Phase::Closed) {
            conn.close_connection(
                reply::CONNECTION_FORCED,
                "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
                0,
                0,
            );
            phase = Phase::Closing;
            close_deadline = Some(now_ms() + CLOSE_TIMEOUT.as_millis() as i64);
        }
        // A move waits for a publish boundary: a publish half-read goes on being read.
        if movable && phase == Phase::Running && !conn.shard.stopping.get() {
            let wanted = conn.follow.wanted(conn.shard.id);
            if let (Some(to), false) = (wanted, super::moving::assembling(conn)) {
                return Ok(Some(to));
            }
        }
        // Flow control: the shard's outbox first, then (for a publisher) the disk alarm.
        let waiting_since = now_ms();
        flow::wait_for_outbox(conn).await;
        if phase == Phase::Running {
            flow::wait_for_disk(conn).await;
        }
        // Time the broker held the read back is not the client's.
        if let Some(since) = partial_since.as_mut() {
            *since += now_ms() - waiting_since;
        }
        let deadline = match (phase, close_deadline) {
            (Phase::Closing | Phase::Closed, _) => {
                let t = *close_deadline.get_or_insert_with(|| {
                    now_ms() + closed_linger(conn.heartbeat.get()).as_millis() as i64
                });
                let left = t - now_ms();
                if left <= 0 {
                    return Ok(None);
                }
                Some(Duration::from_millis(left as u64))
            }
            (Phase::Running, _) => match partial_since {
                None => None,
                Some(since) => {
                    let left = since + frame_timeout - now_ms();
                    if left <= 0 {
                        log_slow_frame(conn, frame_timeout, buf.len());
                        return Ok(None);
                    }
                    Some(Duration::from_millis(left as u64))
                }
            },
            _ => {
                let left = started + HANDSHAKE_TIMEOUT.as_millis() as i64 - now_ms();
                if left <= 0 {
                    log::info!("amqp connection from {}: handshake timed out", conn.peer);
                    return Ok(None);
                }
                Some(Duration::from_millis(left as u64))
            }
        };
        let stopping_before = conn.shard.stopping.get();
        if !fill(conn, stream, buf, deadline, true).await? {
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
            return Ok(None);
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

/// Starts `heartbeat_loop` for the negotiated interval (none when it is 0).
pub(super) fn start_heartbeats(conn: &Rc<Connection>) {
    let secs = conn.heartbeat.get();
    if secs > 0 {
        glommio::spawn_local(heartbeat_loop(Rc::downgrade(conn), secs)).detach();
    }
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

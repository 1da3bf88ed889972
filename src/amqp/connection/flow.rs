//! Flow control of a connection: it is not read while the shard's outbox is over its
//! budget (`wait_for_outbox`: `connection.blocked`, "back-pressure"), while more of its own
//! output than its budget waits for a slow reader (`wait_for_writer`), nor, once it has
//! published, while the disk alarm is on (`wait_for_disk`: `connection.blocked`, "low on
//! disk"). Runs on the connection's shard, in its reader task (and in a disk-alarm task
//! per publishing connection).

use std::rc::Rc;
use std::time::Duration;

use amq_protocol::protocol::{connection as conn_m, AMQPClass};

use super::{still_running, Connection};
use crate::storage::log::now_ms;
use crate::util::notify::Listener;

/// Back-pressure from the shard: lets the outbox drain before reading more publishes; a
/// client that understands it hears connection.blocked if that takes more than 100 ms
/// (and connection.unblocked after).
pub(super) async fn wait_for_outbox(conn: &Rc<Connection>) {
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
pub(super) async fn wait_for_writer(conn: &Rc<Connection>) {
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

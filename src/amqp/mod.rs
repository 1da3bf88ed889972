//! AMQP 0-9-1: the listener and connections (`server`, `connection`, `channel`), one file
//! per method family (`methods/`), exchange routing (`routing`; the topology it routes by
//! is the catalog's, `catalog::amqp`), queues on their owner shard (`queue`, `owner`;
//! which shard that is, `placement`), the message store for persistent messages
//! (`store`), and the ops that cross shards (`mesh`, `outbox`).
//!
//! A connection lives on the shard that accepted it. Routing happens there, from the
//! shard's catalog replica; the message then goes once to each owner shard of the matched
//! queues. A queue's ready list, unacked map and consumers live only on its owner
//! (`queue_owner`); deliveries come back to the consumer's shard in batches, acks go to the
//! owner in batches, both through the shard's `Outbox`.

pub mod ask;
pub mod auth;
pub mod channel;
pub mod codec;
pub mod connection;
pub mod direct_reply;
pub mod mesh;
pub mod message;
pub mod methods;
pub mod nesting;
pub mod outbox;
pub mod owner;
pub mod placement;
pub mod queue;
pub mod routing;
pub mod server;
pub mod store;

pub use placement::queue_owner;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use crate::broker::Shard;
use crate::config::Config;
use connection::Connection;
use queue::QueueHandle;
use routing::Router;

/// AMQP reply codes (AMQP 0-9-1 spec, section 1.9 constants).
pub mod reply {
    pub const SUCCESS: u16 = 200;
    pub const NO_ROUTE: u16 = 312;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

/// An error that ends a channel or the whole connection, with its reply code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AmqpError {
    #[error("channel error {code}: {text}")]
    Channel { code: u16, text: String },
    #[error("connection error {code}: {text}")]
    Connection { code: u16, text: String },
}

impl AmqpError {
    pub fn channel(code: u16, text: impl Into<String>) -> AmqpError {
        AmqpError::Channel {
            code,
            text: text.into(),
        }
    }

    pub fn connection(code: u16, text: impl Into<String>) -> AmqpError {
        AmqpError::Connection {
            code,
            text: text.into(),
        }
    }

    /// Hard errors (5xx) always close the connection; soft ones the channel.
    pub fn from_code(code: u16, text: impl Into<String>) -> AmqpError {
        if code >= 500 {
            AmqpError::connection(code, text)
        } else {
            AmqpError::channel(code, text)
        }
    }
}

/// Yields once: the first poll schedules the task again and returns `Pending`.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Runs `work` as a new task on this shard, after the current task yields.
///
/// `glommio::spawn_local` polls a new task right away, inside the caller; AMQP code
/// spawns while it holds a queue's or a channel's `RefCell` borrow, and the spawned work
/// may need that same state (an outbox flush delivering to a local channel, an expiry
/// timer reading its queue), so every AMQP background task starts on a later turn.
pub fn spawn_later(work: impl std::future::Future<Output = ()> + 'static) {
    glommio::spawn_local(async move {
        YieldOnce(false).await;
        work.await;
    })
    .detach();
}

/// One shard's AMQP state: its outbox, the queues it owns, its open connections, its
/// routing index and its message store. Lives in `Shard::amqp`.
pub struct ShardAmqp {
    pub outbox: outbox::Outbox,
    queues: RefCell<HashMap<u64, QueueHandle>>,
    connections: RefCell<HashMap<u64, Weak<Connection>>>,
    router: RefCell<Option<Rc<Router>>>,
    /// Bytes of messages held in memory by the queues of this shard.
    memory: Cell<isize>,
    ids: crate::util::ShardIds,
    shards: usize,
    pub store: store::Store,
    /// Store writes the queues wait for (confirms after fdatasync, page-outs, failures).
    pub stored: owner::Stored,
    /// Publishes waiting for their confirms without a channel (the HTTP API).
    pub confirm_waits: ConfirmWaits,
    /// The stream queues this shard owns: their readers and appenders.
    pub streams: crate::stream::queue::Streams,
}

/// Publishes waiting for their queues' confirms outside any channel: the HTTP API's
/// publish. Each has an id from `ShardAmqp::next_id` that its `ConfirmTo` names in place
/// of a connection, and waits for one confirm per queue it was routed to.
#[derive(Default)]
pub struct ConfirmWaits {
    waits: RefCell<HashMap<u64, ConfirmWait>>,
}

struct ConfirmWait {
    left: usize,
    ack: bool,
    /// Stays on this shard: the HTTP request waiting on the receiver runs here, and the
    /// confirms are completed here too (`ConnOp::Confirm` is applied on the shard its
    /// `ConfirmTo` names), so no waker crosses a thread.
    done: futures::channel::oneshot::Sender<bool>,
}

impl ConfirmWaits {
    /// Starts waiting for `queues` confirms under `id`; the receiver says whether every
    /// queue acked (false: at least one refused the message).
    pub fn wait(&self, id: u64, queues: usize) -> futures::channel::oneshot::Receiver<bool> {
        let (done, rx) = futures::channel::oneshot::channel();
        if queues == 0 {
            let _ = done.send(true);
        } else {
            self.waits.borrow_mut().insert(
                id,
                ConfirmWait {
                    left: queues,
                    ack: true,
                    done,
                },
            );
        }
        rx
    }

    /// `n` confirms arrived for `id`.
    pub fn confirmed(&self, id: u64, n: usize, ack: bool) {
        let mut waits = self.waits.borrow_mut();
        let Some(w) = waits.get_mut(&id) else {
            return;
        };
        w.left = w.left.saturating_sub(n);
        w.ack &= ack;
        if w.left == 0 {
            if let Some(w) = waits.remove(&id) {
                // The waiter may be gone (the HTTP client left): nothing to tell.
                let _ = w.done.send(w.ack);
            }
        }
    }
}

impl ShardAmqp {
    pub fn new(config: &Config, shard_id: usize, shards: usize) -> ShardAmqp {
        queue::held::set_shard(shard_id);
        ShardAmqp {
            outbox: outbox::Outbox::new(shards),
            queues: RefCell::new(HashMap::new()),
            connections: RefCell::new(HashMap::new()),
            router: RefCell::new(None),
            memory: Cell::new(0),
            ids: crate::util::ShardIds::new(shard_id),
            shards,
            store: store::Store::new(config, shard_id),
            stored: owner::Stored::default(),
            confirm_waits: ConfirmWaits::default(),
            streams: Default::default(),
        }
    }

    /// An id unique in the process: connection ids and consumer ids.
    pub fn next_id(&self) -> u64 {
        self.ids.next()
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    pub fn queue(&self, qid: u64) -> Option<QueueHandle> {
        self.queues.borrow().get(&qid).cloned()
    }

    pub fn insert_queue(&self, qid: u64, q: QueueHandle) {
        self.queues.borrow_mut().insert(qid, q);
    }

    pub fn remove_queue(&self, qid: u64) -> Option<QueueHandle> {
        self.queues.borrow_mut().remove(&qid)
    }

    pub fn queues(&self) -> Vec<QueueHandle> {
        self.queues.borrow().values().cloned().collect()
    }

    pub fn add_memory(&self, delta: isize) {
        self.memory.set(self.memory.get() + delta);
    }

    pub fn memory(&self) -> usize {
        self.memory.get().max(0) as usize
    }

    /// The routing index for the shard's current catalog version.
    pub fn router(&self, shard: &Shard) -> Rc<Router> {
        let state = shard.catalog.current();
        if let Some(r) = self.router.borrow().as_ref() {
            if r.version == state.version {
                return r.clone();
            }
        }
        let r = Rc::new(Router::build(&state, self.shards));
        *self.router.borrow_mut() = Some(r.clone());
        r
    }

    pub fn register(&self, conn: &Rc<Connection>) {
        self.connections
            .borrow_mut()
            .insert(conn.id, Rc::downgrade(conn));
    }

    pub fn unregister(&self, id: u64) {
        self.connections.borrow_mut().remove(&id);
    }

    pub fn connection(&self, id: u64) -> Option<Rc<Connection>> {
        self.connections.borrow().get(&id).and_then(Weak::upgrade)
    }

    pub fn connections(&self) -> Vec<Rc<Connection>> {
        self.connections
            .borrow()
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }
}

/// The queues this shard owns, for metrics and the management API.
pub fn queue_stats(shard: &Shard) -> Vec<crate::metrics::QueueStats> {
    let mut out: Vec<crate::metrics::QueueStats> = shard
        .amqp
        .queues()
        .iter()
        .map(|q| {
            let q = q.borrow();
            let (ready, consumers) = q.stats();
            crate::metrics::QueueStats {
                vhost: q.qref.vhost.to_string(),
                name: q.qref.name.to_string(),
                messages_ready: ready as u64,
                messages_unacknowledged: q.unacked_len() as u64,
                consumers: consumers as u64,
                durable: q.def.durable,
            }
        })
        .collect();
    // Stream queues: their consumers and unacked deliveries (the records are the log's).
    out.extend(
        crate::stream::queue::figures(shard)
            .into_iter()
            .map(|(q, consumers, unacked)| crate::metrics::QueueStats {
                vhost: q.vhost.to_string(),
                name: q.name.to_string(),
                messages_ready: 0,
                messages_unacknowledged: unacked,
                consumers,
                durable: true,
            }),
    );
    out.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    out
}

/// Called by `Shard::install_catalog` after a newer catalog is installed: queues this
/// shard owns that the catalog no longer has are dropped (consumers get basic.cancel,
/// stored messages are deleted).
pub fn catalog_installed(shard: &Rc<Shard>) {
    crate::stream::queue::catalog_installed(shard);
    let state = shard.catalog.current();
    let gone: Vec<QueueHandle> = shard
        .amqp
        .queues()
        .into_iter()
        .filter(|q| {
            let q = q.borrow();
            state
                .amqp
                .get(&*q.qref.vhost)
                .and_then(|t| t.queues.get(&*q.qref.name))
                .map(|d| d.id != q.qref.id)
                .unwrap_or(true)
        })
        .collect();
    for q in gone {
        let qref = q.borrow().qref.clone();
        shard.amqp.remove_queue(qref.id);
        q.borrow_mut().drop_all(shard);
        crate::metrics::with(|m| m.queue_deleted(&qref.vhost, &qref.name));
        shard.amqp.store.remove_queue(shard, &qref);
        log::debug!("queue '{}' in vhost '{}' deleted", qref.name, qref.vhost);
    }
}

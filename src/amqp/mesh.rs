//! What AMQP work looks like when it crosses shards: `Op`s, batched by the `Outbox` into
//! one `Request::Ops` envelope per destination shard per flush.
//!
//! Two directions, two enums: `QueueOp`, towards a queue's owner shard (publish, consume,
//! cancel, settle — ack / requeue / reject —, credit, limits, get, stats, purge, delete,
//! barrier), applied by `owner::apply_queue_op`; and `ConnOp`, towards a connection's shard
//! (deliver, confirm, cancelled, direct reply), applied by `owner::apply_conn_op`. `Op`
//! carries either in one envelope, so per (sender, destination) every op keeps its place
//! in line whatever its direction. Each envelope carries the sender's catalog
//! version (`Arc<CatalogState>`), which the receiver installs first if it is newer, so an
//! op never names a queue the receiving shard has not heard of yet.
//!
//! An op that is answered (consume, get, stats, purge, delete, barrier) carries a
//! `ReplyTo`: the answer comes back over the mesh (`runtime::reply`), never through a
//! channel that would wake the asking task from the owner's thread.

use std::sync::Arc;

use crate::runtime::reply::ReplyTo;

use super::message::Message;
use super::routing::QueueRef;
use crate::catalog::CatalogState;

/// An AMQP reply code and text, as a channel or connection close carries them.
pub type Refusal = (u16, String);

/// A consumer as its queue's owner knows it.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Unique across the process (connection shard in the high bits).
    pub cid: u64,
    pub shard: usize,
    pub conn: u64,
    pub channel: u16,
    pub tag: Arc<str>,
    pub no_ack: bool,
    pub prefetch_count: u32,
    pub prefetch_bytes: u64,
    pub priority: i32,
    pub exclusive: bool,
    /// A stream queue's consumer: where it starts reading (`x-stream-offset`).
    pub stream_offset: Option<crate::stream::offset::StartAt>,
    /// A stream queue's consumer: the Kafka consumer group its acks commit
    /// (`x-consumer-group`, `stream::group`).
    pub stream_group: Option<crate::stream::group::GroupArg>,
    /// A stream queue's consumer: the `x-stream-filter` values it wants.
    pub stream_filter: Option<crate::stream::filter::Filter>,
}

/// One message handed to a consumer (or a basic.get): `id` is the queue's delivery id,
/// the handle acks and rejects name.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: u64,
    pub msg: Message,
    pub redelivered: bool,
    /// A stream queue's delivery: the record's offset, which the content header carries as
    /// the `x-stream-offset` header, added as the frame is written (`put_properties`).
    pub stream_offset: Option<i64>,
}

impl Delivery {
    /// The bytes `put_properties` writes (but when a stream delivery's table already names
    /// `x-stream-offset`, re-encoded).
    pub fn properties_len(&self) -> usize {
        let extra = match self.stream_offset {
            Some(_) => crate::stream::record::STREAM_OFFSET_EXTRA,
            None => 0,
        };
        self.msg.properties().len() + extra
    }

    /// Writes the delivery's property bytes (flags and list) for its content header.
    pub fn put_properties(&self, out: &mut bytes::BytesMut) {
        match self.stream_offset {
            Some(offset) => {
                crate::stream::record::put_stream_properties(out, self.msg.properties(), offset)
            }
            None => out.extend_from_slice(self.msg.properties()),
        }
    }
}

/// A stream record handed to a consumer, `id` as a `Delivery`'s: the connection frames
/// it from the record's own bytes (`StoredRecord::parts`), no message built for it.
#[derive(Debug)]
pub struct RecordDelivery {
    pub id: u64,
    pub record: crate::stream::record::StoredRecord,
}

impl RecordDelivery {
    /// As a message delivery (`stream_delivery`), for the paths that hold deliveries back.
    pub fn into_delivery(self) -> Delivery {
        crate::stream::record::stream_delivery(self.record, self.id)
    }
}

/// What to do with delivered messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Back to the queue, marked redelivered.
    Requeue,
    /// Dead-lettered (reason `rejected`) or dropped.
    Reject,
    /// Never reached the client (its consumer or connection was gone): back to the queue
    /// as it was.
    Return,
}

/// Where a publisher confirm goes.
#[derive(Debug, Clone, Copy)]
pub struct ConfirmTo {
    pub shard: usize,
    pub conn: u64,
    pub channel: u16,
    pub seq: u64,
}

impl ConfirmTo {
    /// The confirm op for this publish.
    pub fn op(self, ack: bool) -> ConnOp {
        ConnOp::Confirm {
            conn: self.conn,
            channel: self.channel,
            seqs: vec![self.seq],
            ack,
        }
    }
}

/// The answer to a basic.get: the message taken (with the count of ready messages left)
/// from `queue`. If its asker has left when it arrives, the message goes back to the queue
/// (`owner::unclaimed_get`).
pub struct GetAnswer {
    pub queue: QueueRef,
    pub got: Option<(Delivery, u32)>,
}

/// Statistics for queue.declare-ok: (messages ready, consumers).
pub type QueueStats = (u32, u32);

/// Work for a queue, sent to the queue's owner shard.
pub enum QueueOp {
    Publish {
        queue: QueueRef,
        msg: Message,
        confirm: Option<ConfirmTo>,
    },
    Consume {
        queue: QueueRef,
        consumer: ConsumerSpec,
        reply: ReplyTo<Result<(), Refusal>>,
    },
    Cancel {
        queue: QueueRef,
        cid: u64,
    },
    Settle {
        queue: QueueRef,
        ids: Vec<u64>,
        how: Settle,
    },
    /// The consumer's shard wrote `n` more deliveries (`bytes` of bodies) to the socket.
    Credit {
        queue: QueueRef,
        cid: u64,
        n: u32,
        bytes: u64,
    },
    /// New prefetch limits (channel-wide qos changed) or flow state of a consumer.
    Limits {
        queue: QueueRef,
        cid: u64,
        prefetch_count: u32,
        prefetch_bytes: u64,
        active: bool,
    },
    Get {
        queue: QueueRef,
        no_ack: bool,
        reply: ReplyTo<GetAnswer>,
    },
    Stats {
        queue: QueueRef,
        reply: ReplyTo<Option<QueueStats>>,
    },
    Purge {
        queue: QueueRef,
        reply: ReplyTo<u32>,
    },
    Delete {
        queue: QueueRef,
        if_unused: bool,
        if_empty: bool,
        reply: ReplyTo<Result<(u32, Arc<CatalogState>), Refusal>>,
    },
    /// Answered once every op sent before it to this shard is processed (and persisted).
    Barrier {
        reply: ReplyTo<()>,
    },
}

/// Work for a connection, sent to the shard the connection lives on.
#[derive(Debug)]
pub enum ConnOp {
    Deliver {
        conn: u64,
        channel: u16,
        cid: u64,
        queue: QueueRef,
        items: Vec<Delivery>,
    },
    /// A stream consumer's records (in offset order).
    DeliverRecords {
        conn: u64,
        channel: u16,
        cid: u64,
        queue: QueueRef,
        records: Vec<RecordDelivery>,
    },
    Confirm {
        conn: u64,
        channel: u16,
        seqs: Vec<u64>,
        ack: bool,
    },
    /// The queue went away: the consumer is cancelled by the server.
    Cancelled { conn: u64, channel: u16, cid: u64 },
    /// A reply for a direct reply-to consumer (`amqp::direct_reply`).
    DirectReply {
        token: super::direct_reply::Token,
        msg: Message,
    },
}

/// One op of an envelope, in either direction.
pub enum Op {
    Queue(QueueOp),
    Conn(ConnOp),
}

impl From<QueueOp> for Op {
    fn from(op: QueueOp) -> Op {
        Op::Queue(op)
    }
}

impl From<ConnOp> for Op {
    fn from(op: ConnOp) -> Op {
        Op::Conn(op)
    }
}

impl Op {
    /// Payload bytes the op carries (for the outbox's back-pressure).
    pub fn bytes(&self) -> usize {
        match self {
            Op::Queue(QueueOp::Publish { msg, .. }) => msg.size(),
            Op::Conn(ConnOp::Deliver { items, .. }) => items.iter().map(|d| d.msg.size()).sum(),
            Op::Conn(ConnOp::DeliverRecords { records, .. }) => {
                records.iter().map(|d| d.record.size()).sum()
            }
            Op::Conn(ConnOp::DirectReply { msg, .. }) => msg.size(),
            _ => 0,
        }
    }

    /// Folds `next` into `self` when both say the same thing to the same target
    /// (deliveries to one consumer, confirms to one channel, settles of one queue),
    /// so a burst of per-message work becomes one op.
    pub fn merge(&mut self, next: Op) -> Option<Op> {
        match (self, next) {
            (Op::Queue(a), Op::Queue(b)) => a.merge(b).map(Op::Queue),
            (Op::Conn(a), Op::Conn(b)) => a.merge(b).map(Op::Conn),
            (_, next) => Some(next),
        }
    }
}

impl QueueOp {
    fn merge(&mut self, next: QueueOp) -> Option<QueueOp> {
        match (self, next) {
            (
                QueueOp::Settle { queue, ids, how },
                QueueOp::Settle {
                    queue: q2,
                    ids: more,
                    how: h2,
                },
            ) if queue.id == q2.id && *how == h2 => {
                ids.extend(more);
                None
            }
            (
                QueueOp::Credit {
                    queue,
                    cid,
                    n,
                    bytes,
                },
                QueueOp::Credit {
                    queue: q2,
                    cid: c2,
                    n: n2,
                    bytes: b2,
                },
            ) if queue.id == q2.id && *cid == c2 => {
                *n += n2;
                *bytes += b2;
                None
            }
            (_, next) => Some(next),
        }
    }
}

impl ConnOp {
    fn merge(&mut self, next: ConnOp) -> Option<ConnOp> {
        match (self, next) {
            (
                ConnOp::Deliver { cid, items, .. },
                ConnOp::Deliver {
                    cid: c2,
                    items: more,
                    ..
                },
            ) if *cid == c2 => {
                items.extend(more);
                None
            }
            (
                ConnOp::DeliverRecords { cid, records, .. },
                ConnOp::DeliverRecords {
                    cid: c2,
                    records: more,
                    ..
                },
            ) if *cid == c2 => {
                records.extend(more);
                None
            }
            (
                ConnOp::Confirm {
                    conn,
                    channel,
                    seqs,
                    ack,
                },
                ConnOp::Confirm {
                    conn: c2,
                    channel: ch2,
                    seqs: more,
                    ack: a2,
                },
            ) if *conn == c2 && *channel == ch2 && *ack == a2 => {
                seqs.extend(more);
                None
            }
            (_, next) => Some(next),
        }
    }
}

/// The envelope: the one AMQP request type of the mesh.
pub enum Request {
    Ops {
        catalog: Arc<CatalogState>,
        ops: Vec<Op>,
    },
}

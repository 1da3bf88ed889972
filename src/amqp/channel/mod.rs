//! `Channel`: one AMQP channel's state on its connection's shard — the publish being
//! assembled from content frames, its consumers and prefetch settings (`consumers`), the
//! delivery tags and the unacked messages they name with the channel-wide prefetch
//! (`unacked`), publisher-confirm bookkeeping (`confirms`) and the transaction buffer.
//! The methods themselves are parsed and applied one family per file in `methods/`.
//!
//! Owned by its `Connection` (`Rc<RefCell<Channel>>`); methods are synchronous and never
//! awaited with a borrow held. The ledgers are pure and unit-tested; the methods here are
//! the glue that writes what they decide to the connection and sends work for queues
//! through the shard's outbox.
//!
//! Prefetch is enforced in two places. Each consumer's own limit (basic.qos global=false)
//! is counted by the queue's owner shard, which stops delivering at it. The channel-wide
//! limit (basic.qos global=true) is shared by all the channel's consumers, whatever shard
//! owns their queues, so it is counted here: an owner may deliver up to the channel-wide
//! limit to each consumer, and deliveries that would take the channel past it wait in
//! `held`, in arrival order, until acks make room. Delivery tags are given when a message is
//! written, so they stay in write order. As in RabbitMQ one busy consumer may use the whole
//! channel-wide window.

pub mod confirms;
pub mod consumers;
pub mod unacked;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use amq_protocol::protocol::{basic, AMQPClass};
use bytes::BytesMut;

use super::codec;
use super::connection::Connection;
use super::mesh::{Delivery, QueueOp, RecordDelivery, Settle};
use super::message::Message;
use super::outbox;
use super::routing::QueueRef;
use super::AmqpError;
use crate::metrics::Protocol;
use crate::util::notify::Notify;
use crate::util::now_ms;
use confirms::Confirms;
pub use consumers::ConsumerInfo;
pub use unacked::Taken;
use unacked::Unacked;

pub type ChannelRef = Rc<RefCell<Channel>>;

/// A basic.publish waiting for its content header and body frames.
pub struct PendingPublish {
    pub exchange: String,
    pub routing_key: String,
    pub mandatory: bool,
    /// Body size and raw properties, once the header frame arrived.
    pub header: Option<(u64, bytes::Bytes)>,
    pub body: BytesMut,
    pub single: Option<bytes::Bytes>,
    /// When basic.publish arrived, on a confirm-mode channel (publish latency).
    pub received: Option<Instant>,
}

/// A message published inside a transaction, routed at commit.
pub struct TxPublish {
    pub exchange: String,
    pub routing_key: String,
    pub mandatory: bool,
    pub msg: Message,
}

#[derive(Default)]
pub struct Tx {
    pub publishes: Vec<TxPublish>,
    /// (queue, delivery ids, how) settled at commit.
    pub settles: Vec<(QueueRef, Vec<u64>, Settle)>,
    /// The delivery tags those settles took (restored by rollback).
    pub tags: Vec<u64>,
}

pub struct Channel {
    pub id: u16,
    /// channel.close sent; waiting for close-ok, ignoring everything else.
    pub closing: bool,
    pub flow: bool,
    pub publish: Option<PendingPublish>,
    unacked: Unacked,
    pub consumers: HashMap<u64, ConsumerInfo>,
    /// The per-consumer prefetch new consumers get (basic.qos global=false).
    pub prefetch_count: u32,
    pub prefetch_bytes: u64,
    pub confirm: bool,
    confirms: Confirms,
    /// Fired when confirms complete (tx.commit waits on it).
    pub confirm_progress: Rc<Notify>,
    pub tx: Option<Tx>,
    /// The last exchange write permission was checked for, and the answer.
    pub write_allowed: Option<(String, bool)>,
    /// The direct reply-to consumer: its tag and key (`amqp::direct_reply`).
    pub direct_reply: Option<(Arc<str>, u64)>,
}

/// What a channel at rest takes along when its connection moves to another shard
/// (`connection::moving`): its settings and where its numbering stands.
#[derive(Debug, Clone)]
pub struct Carried {
    pub id: u16,
    flow: bool,
    prefetch_count: u32,
    prefetch_bytes: u64,
    global: (u32, u64),
    next_tag: u64,
    confirm: bool,
    next_seq: u64,
    /// In transaction mode (tx.select), with nothing in the transaction.
    tx: bool,
}

impl Channel {
    /// The channel holds state that ties it to its shard for as long as it lasts: a
    /// consumer, a delivery unacked or held, a transaction with content, a direct reply-to
    /// consumer; or it is closing.
    pub fn bound(&self) -> bool {
        self.closing
            || !self.consumers.is_empty()
            || !self.unacked.is_empty()
            || self.direct_reply.is_some()
            || self.tx.as_ref().is_some_and(|t| {
                !t.publishes.is_empty() || !t.settles.is_empty() || !t.tags.is_empty()
            })
    }

    /// Nothing in flight on the channel: not `bound`, no publish being assembled, none
    /// waiting for its confirm. Such a channel is its settings and counters alone
    /// (`carried`).
    pub fn at_rest(&self) -> bool {
        !self.bound() && self.publish.is_none() && self.confirms.settled()
    }

    /// The channel's settings and counters (meaningful for a channel `at_rest`).
    pub fn carried(&self) -> Carried {
        Carried {
            id: self.id,
            flow: self.flow,
            prefetch_count: self.prefetch_count,
            prefetch_bytes: self.prefetch_bytes,
            global: self.unacked.global(),
            next_tag: self.unacked.peek_tag(),
            confirm: self.confirm,
            next_seq: self.confirms.next_seq(),
            tx: self.tx.is_some(),
        }
    }

    /// The channel `carried` describes, on the shard its connection moved to.
    pub fn resumed(c: Carried) -> ChannelRef {
        let ch = Channel::new(c.id, c.prefetch_count);
        {
            let mut m = ch.borrow_mut();
            m.flow = c.flow;
            m.prefetch_bytes = c.prefetch_bytes;
            m.unacked = Unacked::resumed(c.next_tag, c.global);
            m.confirm = c.confirm;
            m.confirms = Confirms::starting_at(c.next_seq);
            m.tx = c.tx.then(Tx::default);
        }
        ch
    }

    /// A new channel whose consumers start with `default_prefetch` (`amqp.default_prefetch`).
    pub fn new(id: u16, default_prefetch: u32) -> ChannelRef {
        Rc::new(RefCell::new(Channel {
            id,
            closing: false,
            flow: true,
            publish: None,
            unacked: Unacked::default(),
            consumers: HashMap::new(),
            prefetch_count: default_prefetch,
            prefetch_bytes: 0,
            confirm: false,
            confirms: Confirms::default(),
            confirm_progress: Rc::new(Notify::new()),
            tx: None,
            write_allowed: None,
            direct_reply: None,
        }))
    }

    /// Deliveries for consumer `cid`; returns what cannot be delivered (no such
    /// consumer any more) so the caller hands it back to the queue.
    pub fn deliver(
        &mut self,
        conn: &Rc<Connection>,
        cid: u64,
        queue: &QueueRef,
        items: Vec<Delivery>,
    ) -> Option<Vec<Delivery>> {
        if self.closing {
            return Some(items);
        }
        let Some(c) = self.consumers.get_mut(&cid) else {
            return Some(items);
        };
        if !c.ready {
            c.buffered.extend(items);
            return None;
        }
        if !c.no_ack && self.unacked.must_hold(self.flow) {
            self.unacked.hold(cid, queue, items);
            self.release_held(conn);
        } else {
            self.write_deliveries(conn, cid, queue, items);
        }
        None
    }

    /// Writes held deliveries, oldest first, while the channel-wide prefetch has room
    /// and flow is on.
    pub fn release_held(&mut self, conn: &Rc<Connection>) {
        while self.flow && !self.closing {
            let Some((cid, queue, items)) = self.unacked.next_release() else {
                break;
            };
            self.write_deliveries(conn, cid, &queue, items);
        }
    }

    /// A stream reader's records for consumer `cid`: framed from the records' bytes when
    /// they can be written now; a consumer not ready yet, or a channel-wide prefetch or
    /// flow holding deliveries back, takes them as message deliveries (`deliver`).
    /// Returns the ids of those nobody can take, for the caller to give back.
    pub fn deliver_records(
        &mut self,
        conn: &Rc<Connection>,
        cid: u64,
        queue: &QueueRef,
        records: Vec<RecordDelivery>,
    ) -> Option<Vec<u64>> {
        let now = !self.closing
            && (self.consumers.get(&cid))
                .is_some_and(|c| c.ready && (c.no_ack || !self.unacked.must_hold(self.flow)));
        if !now {
            let items = records.into_iter().map(RecordDelivery::into_delivery);
            let rest = self.deliver(conn, cid, queue, items.collect())?;
            return Some(rest.into_iter().map(|d| d.id).collect());
        }
        let framed: Vec<FramedRecord<'_>> = (records.iter())
            .map(|d| FramedRecord {
                id: d.id,
                offset: d.record.offset,
                parts: d.record.parts(),
            })
            .collect();
        self.write_framed(conn, cid, queue, &framed);
        None
    }

    /// Gives delivery tags to `items` for consumer `cid`, records the unacked ones and
    /// writes basic.deliver with content.
    fn write_deliveries(
        &mut self,
        conn: &Rc<Connection>,
        cid: u64,
        queue: &QueueRef,
        items: Vec<Delivery>,
    ) {
        if self.consumers.contains_key(&cid) {
            self.write_framed(conn, cid, queue, &items);
        } else {
            give_back(conn, queue, items);
        }
    }

    /// `write_deliveries` for any kind of delivery; the caller checked that `cid` is one
    /// of the channel's consumers.
    fn write_framed<D: Outgoing>(
        &mut self,
        conn: &Rc<Connection>,
        cid: u64,
        queue: &QueueRef,
        items: &[D],
    ) {
        let Some(c) = self.consumers.get(&cid) else {
            return;
        };
        let tag = c.tag.clone();
        let no_ack = c.no_ack;
        let n = items.len() as u32;
        let frame_max = conn.frame_max.get();
        let id = self.id;
        let at_ms = if no_ack { 0 } else { now_ms() };
        let sizes = items.iter().map(|d| (d.id(), d.body().len() as u64));
        let tags = self.unacked.record(queue, sizes, no_ack, true, at_ms);
        conn.write(|out| {
            let need = items.iter().map(|d| {
                let (ex, rk, body) = (d.exchange().len(), d.routing_key().len(), d.body().len());
                codec::delivery_len(tag.len(), ex, rk, d.properties_len(), body, frame_max)
            });
            out.reserve(need.sum());
            for (d, t) in items.iter().zip(tags) {
                codec::put_deliver(
                    out,
                    id,
                    tag.as_bytes(),
                    t,
                    d.redelivered(),
                    d.exchange(),
                    d.routing_key(),
                );
                codec::put_content_with(out, id, d.body(), frame_max, |out| d.put_properties(out));
            }
        });
        let bytes = items.iter().map(|d| d.body().len() as u64).sum();
        // A stream's reader is held back by unacked deliveries alone (its prefetch): it
        // is sent no written-credit, a hop across shards per write that it would ignore.
        let stream = items.first().is_some_and(|d| d.stream_offset().is_some());
        if !stream {
            conn.count_written(cid, queue, n, bytes);
        }
        crate::metrics::with(|m| m.consumed(Protocol::Amqp, &queue.name, n as u64, bytes));
    }

    /// Writes a delivery nobody acknowledges (a direct reply) to consumer `tag`.
    pub fn write_direct_reply(&mut self, conn: &Rc<Connection>, tag: &str, msg: &Message) {
        let t = self.unacked.next_tag();
        let frame_max = conn.frame_max.get();
        let id = self.id;
        conn.write(|out| {
            codec::put_deliver(
                out,
                id,
                tag.as_bytes(),
                t,
                false,
                msg.exchange(),
                msg.routing_key(),
            );
            codec::put_content(out, id, msg.properties(), msg.body(), frame_max);
        });
    }

    /// Records a basic.get-ok delivery and writes it.
    pub fn deliver_get(
        &mut self,
        conn: &Rc<Connection>,
        queue: &QueueRef,
        d: Delivery,
        no_ack: bool,
        count: u32,
    ) {
        let size = (d.id, d.msg.body().len() as u64);
        let t = (self.unacked).record(queue, std::iter::once(size), no_ack, false, now_ms())[0];
        let frame_max = conn.frame_max.get();
        let id = self.id;
        conn.write(|out| {
            codec::put_get_ok(
                out,
                id,
                t,
                d.redelivered,
                d.msg.exchange(),
                d.msg.routing_key(),
                count,
            );
            codec::put_content_with(out, id, d.msg.body(), frame_max, |out| {
                d.put_properties(out)
            });
        });
        let bytes = d.msg.body().len() as u64;
        crate::metrics::with(|m| m.consumed(Protocol::Amqp, &queue.name, 1, bytes));
    }

    pub fn add_consumer(&mut self, cid: u64, tag: Arc<str>, queue: QueueRef, no_ack: bool) {
        let prefetch = (self.prefetch_count, self.prefetch_bytes);
        self.consumers
            .insert(cid, ConsumerInfo::new(tag, queue, no_ack, prefetch));
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.consumers.values().any(|c| &*c.tag == tag)
            || self.direct_reply.as_ref().map(|(t, _)| &**t == tag) == Some(true)
    }

    /// consume-ok went out: write what arrived meanwhile.
    pub fn consumer_ready(&mut self, conn: &Rc<Connection>, cid: u64) {
        let Some(c) = self.consumers.get_mut(&cid) else {
            return;
        };
        c.ready = true;
        let items = std::mem::take(&mut c.buffered);
        let queue = c.queue.clone();
        if !items.is_empty() {
            if let Some(rest) = self.deliver(conn, cid, &queue, items) {
                give_back(conn, &queue, rest);
            }
        }
    }

    /// Removes a consumer on this side, handing back what was never written to it;
    /// returns its queue.
    pub fn remove_consumer(&mut self, conn: &Rc<Connection>, cid: u64) -> Option<QueueRef> {
        let c = self.consumers.remove(&cid)?;
        let mut unsent = c.buffered;
        unsent.extend(self.unacked.unhold(cid));
        if !unsent.is_empty() {
            give_back(conn, &c.queue, unsent);
        }
        Some(c.queue)
    }

    pub fn cid_of(&self, tag: &str) -> Option<u64> {
        self.consumers
            .iter()
            .find(|(_, c)| &*c.tag == tag)
            .map(|(cid, _)| *cid)
    }

    /// The queue dropped the consumer (queue deleted): basic.cancel to the client.
    pub fn server_cancel(&mut self, conn: &Rc<Connection>, cid: u64) {
        let Some(c) = self.consumers.get(&cid) else {
            return;
        };
        let tag = c.tag.clone();
        self.remove_consumer(conn, cid);
        if !self.closing {
            conn.send_method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: tag.as_ref().into(),
                    nowait: true,
                })),
            );
        }
        self.release_held(conn);
    }

    /// basic.qos(global=true): a new channel-wide prefetch. Tells owners whose consumers'
    /// limits changed, and writes held deliveries the new window has room for.
    pub fn set_global_qos(&mut self, conn: &Rc<Connection>, count: u32, bytes: u64) {
        self.unacked.set_global(count, bytes);
        let global = self.unacked.global();
        let mut changed = Vec::new();
        for (cid, c) in &self.consumers {
            let limits = c.owner_limits(global);
            if !c.no_ack && limits != c.sent_limits {
                changed.push((*cid, limits));
            }
        }
        for (cid, limits) in changed {
            let Some(c) = self.consumers.get_mut(&cid) else {
                continue;
            };
            c.sent_limits = limits;
            outbox::push(
                &conn.shard,
                c.queue.owner,
                QueueOp::Limits {
                    queue: c.queue.clone(),
                    cid,
                    prefetch_count: limits.0,
                    prefetch_bytes: limits.1,
                    active: self.flow,
                },
            );
        }
        self.release_held(conn);
    }

    /// The channel-wide prefetch count (basic.qos global=true; 0 = none).
    pub fn global_prefetch_count(&self) -> u32 {
        self.unacked.global().0
    }

    /// The limits a new consumer starts with.
    pub fn initial_limits(&mut self, cid: u64) -> (u32, u64) {
        let global = self.unacked.global();
        let limits = match self.consumers.get(&cid) {
            Some(c) => c.owner_limits(global),
            None => (self.prefetch_count, self.prefetch_bytes),
        };
        if let Some(c) = self.consumers.get_mut(&cid) {
            c.sent_limits = limits;
        }
        limits
    }

    /// channel.flow: pause or resume every consumer of the channel.
    pub fn set_flow(&mut self, conn: &Rc<Connection>, active: bool) {
        self.flow = active;
        self.release_held(conn);
        for (cid, c) in &self.consumers {
            outbox::push(
                &conn.shard,
                c.queue.owner,
                QueueOp::Limits {
                    queue: c.queue.clone(),
                    cid: *cid,
                    prefetch_count: c.sent_limits.0,
                    prefetch_bytes: c.sent_limits.1,
                    active,
                },
            );
        }
    }

    /// Takes the unacked deliveries an ack/nack/reject names (`unacked::Unacked::take`).
    pub fn take_unacked(
        &mut self,
        tag: u64,
        multiple: bool,
        keep: bool,
    ) -> Result<Taken, AmqpError> {
        self.unacked.take(tag, multiple, keep)
    }

    /// When the oldest delivery still unacknowledged was written (ms since the epoch).
    pub fn oldest_unacked_ms(&self) -> Option<i64> {
        self.unacked.oldest_ms()
    }

    /// Drops settled entries from the front of the unacked list.
    pub fn compact(&mut self) {
        self.unacked.compact();
    }

    /// tx.rollback: acks, nacks and rejects of the transaction are undone.
    pub fn unsettle(&mut self, tags: &[u64]) {
        self.unacked.unsettle(tags);
    }

    /// Every unsettled delivery (recover, channel close).
    pub fn take_all_unacked(&mut self) -> Vec<(QueueRef, Vec<u64>)> {
        self.unacked.take_all()
    }

    /// Registers a confirm-mode publish routed to `queues` queues, received at
    /// `received`; returns its seq.
    pub fn track_publish(&mut self, queues: u32, received: Option<Instant>) -> u64 {
        self.confirms.track(queues, received)
    }

    /// Confirms from owners; completed publishes are acked or nacked to the client.
    pub fn confirmed(&mut self, conn: &Rc<Connection>, seqs: Vec<u64>, ack: bool) {
        self.confirms.confirmed(&seqs, ack);
        self.confirm_progress.notify();
        if self.confirm {
            self.emit_confirms(conn);
        }
    }

    /// Whether every tracked publish up to `seq` has completed.
    pub fn settled_through(&self, seq: u64) -> bool {
        self.confirms.settled_through(seq)
    }

    /// Forgets completed publishes up to `seq`; whether all were acked.
    pub fn forget_confirms_through(&mut self, seq: u64) -> bool {
        self.confirms.forget_through(seq)
    }

    /// Writes basic.ack/nack for completed publishes (`Confirms::take_frames`). Each
    /// publish's time to its confirm goes to the publish latency histogram.
    pub fn emit_confirms(&mut self, conn: &Rc<Connection>) {
        if self.closing {
            // Nothing follows our channel.close but close-ok.
            return;
        }
        let (frames, received) = self.confirms.take_frames();
        if frames.is_empty() {
            return;
        }
        let now = Instant::now();
        crate::metrics::with(|m| {
            for t in &received {
                m.publish_latency(Protocol::Amqp, now.saturating_duration_since(*t));
            }
        });
        let id = self.id;
        conn.write(|out| {
            for (seq, multiple, ack) in frames {
                codec::put_confirm(out, id, seq, multiple, ack);
            }
        });
    }

    /// Releases everything: consumers cancelled at their queues, unacked messages
    /// requeued (in that order, so they do not go back to the same consumer).
    pub fn release(&mut self, conn: &Rc<Connection>) {
        // An uncommitted transaction's acks never happened.
        if let Some(tx) = self.tx.take() {
            self.unsettle(&tx.tags);
        }
        let cids: Vec<u64> = self.consumers.keys().copied().collect();
        for cid in cids {
            if let Some(queue) = self.remove_consumer(conn, cid) {
                let owner = queue.owner;
                outbox::push(&conn.shard, owner, QueueOp::Cancel { queue, cid });
            }
        }
        settle(conn, self.take_all_unacked(), Settle::Requeue);
        self.publish = None;
        self.tx = None;
        self.direct_reply = None;
        self.confirms.clear();
        self.confirm_progress.notify();
    }
}

/// One delivery as `write_framed` writes it: basic.deliver and its content.
trait Outgoing {
    fn id(&self) -> u64;
    fn redelivered(&self) -> bool;
    fn exchange(&self) -> &[u8];
    fn routing_key(&self) -> &[u8];
    fn body(&self) -> &[u8];
    /// A stream delivery's offset (its `x-stream-offset` header).
    fn stream_offset(&self) -> Option<i64>;
    /// The bytes `put_properties` writes.
    fn properties_len(&self) -> usize;
    /// Writes the property bytes (flags and list) of the content header.
    fn put_properties(&self, out: &mut BytesMut);
}

impl Outgoing for Delivery {
    fn id(&self) -> u64 {
        self.id
    }
    fn redelivered(&self) -> bool {
        self.redelivered
    }
    fn exchange(&self) -> &[u8] {
        self.msg.exchange()
    }
    fn routing_key(&self) -> &[u8] {
        self.msg.routing_key()
    }
    fn body(&self) -> &[u8] {
        self.msg.body()
    }
    fn stream_offset(&self) -> Option<i64> {
        self.stream_offset
    }
    fn properties_len(&self) -> usize {
        Delivery::properties_len(self)
    }
    fn put_properties(&self, out: &mut BytesMut) {
        Delivery::put_properties(self, out)
    }
}

/// A stream record as it is framed: its parts borrowed from the record.
struct FramedRecord<'a> {
    id: u64,
    offset: i64,
    parts: crate::stream::record::RecordParts<'a>,
}

impl Outgoing for FramedRecord<'_> {
    fn id(&self) -> u64 {
        self.id
    }
    fn redelivered(&self) -> bool {
        false
    }
    fn exchange(&self) -> &[u8] {
        self.parts.exchange
    }
    fn routing_key(&self) -> &[u8] {
        self.parts.routing_key
    }
    fn body(&self) -> &[u8] {
        self.parts.body
    }
    fn stream_offset(&self) -> Option<i64> {
        Some(self.offset)
    }
    fn properties_len(&self) -> usize {
        self.parts.properties.len() + crate::stream::record::STREAM_OFFSET_EXTRA
    }
    fn put_properties(&self, out: &mut BytesMut) {
        self.parts.put_properties(out, self.offset)
    }
}

/// Hands undelivered messages back to their queue unchanged.
pub fn give_back(conn: &Rc<Connection>, queue: &QueueRef, items: Vec<Delivery>) {
    let ids = items.into_iter().map(|d| d.id).collect();
    super::owner::give_back(&conn.shard, queue.clone(), ids);
}

/// Sends settles of delivery ids, per queue, to each queue's owner.
pub fn settle(conn: &Rc<Connection>, groups: Vec<(QueueRef, Vec<u64>)>, how: Settle) {
    for (queue, ids) in groups {
        let owner = queue.owner;
        outbox::push(&conn.shard, owner, QueueOp::Settle { queue, ids, how });
    }
}

#[cfg(test)]
mod tests;

//! `Channel`: one AMQP channel's state on its connection's shard — the publish being
//! assembled from content frames, delivery tags and the unacked messages they name, the
//! channel's consumers and prefetch settings, publisher-confirm bookkeeping and the
//! transaction buffer.
//!
//! Owned by its `Connection` (`Rc<RefCell<Channel>>`); methods are synchronous and never
//! awaited with a borrow held. Work for queues leaves through the shard's outbox.
//!
//! Prefetch is enforced in two places. Each consumer's own limit (basic.qos global=false)
//! is counted by the queue's owner shard, which stops delivering at it. The channel-wide
//! limit (basic.qos global=true) is shared by all the channel's consumers, whatever shard
//! owns their queues, so it is counted here: an owner may deliver up to the channel-wide
//! limit to each consumer, and deliveries that would take the channel past it wait in
//! `held`, in arrival order, until acks make room. Delivery tags are given when a message is
//! written, so they stay in write order. As in RabbitMQ one busy consumer may use the whole
//! channel-wide window.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use amq_protocol::protocol::{basic, AMQPClass};
use bytes::BytesMut;

use super::codec;
use super::connection::Connection;
use super::mesh::{Delivery, Op, Settle};
use super::message::Message;
use super::outbox;
use super::reply;
use super::routing::QueueRef;
use super::AmqpError;
use crate::metrics::Protocol;
use crate::storage::log::now_ms;
use crate::util::notify::Notify;

pub type ChannelRef = Rc<RefCell<Channel>>;

/// Deliveries taken by an ack/nack/reject: delivery ids per queue, and their tags.
pub type Taken = (Vec<(QueueRef, Vec<u64>)>, Vec<u64>);

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

struct Unacked {
    tag: u64,
    queue: QueueRef,
    id: u64,
    settled: bool,
    /// Body bytes, when the delivery counts against the channel-wide prefetch (a consumer
    /// delivery; basic.get is not limited by prefetch).
    counted: Option<u64>,
    /// When it was written (ms since the epoch): what the consumer timeout looks at.
    at_ms: i64,
}

/// A delivery that arrived while the channel-wide prefetch was full (or flow was off).
struct Held {
    cid: u64,
    queue: QueueRef,
    delivery: Delivery,
}

pub struct ConsumerInfo {
    pub tag: Arc<str>,
    pub queue: QueueRef,
    pub no_ack: bool,
    /// The per-consumer prefetch in force when it was created.
    pub prefetch_count: u32,
    pub prefetch_bytes: u64,
    /// consume-ok sent: deliveries may be written.
    pub ready: bool,
    buffered: Vec<Delivery>,
    /// Limits last sent to the owner.
    sent_limits: (u32, u64),
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
    next_tag: u64,
    unacked: VecDeque<Unacked>,
    pub consumers: HashMap<u64, ConsumerInfo>,
    pub prefetch_count: u32,
    pub prefetch_bytes: u64,
    pub global_count: u32,
    pub global_bytes: u64,
    /// Consumer deliveries written and not yet settled, and their body bytes (what the
    /// channel-wide prefetch counts).
    global_unacked: u32,
    global_unacked_bytes: u64,
    /// Deliveries waiting for room in the channel-wide prefetch (or for flow), in order.
    held: VecDeque<Held>,
    pub confirm: bool,
    pub next_seq: u64,
    /// seq → (queues still to confirm, nacked by one, when the publish arrived).
    pending_confirms: BTreeMap<u64, (u32, bool, Option<Instant>)>,
    /// seq → (acked, when the publish arrived): complete, not yet written.
    done_confirms: BTreeMap<u64, (bool, Option<Instant>)>,
    /// Fired when confirms complete (tx.commit waits on it).
    pub confirm_progress: Rc<Notify>,
    pub tx: Option<Tx>,
    /// The last exchange write permission was checked for, and the answer.
    pub write_allowed: Option<(String, bool)>,
    /// The direct reply-to consumer: its tag and key (`amqp::direct_reply`).
    pub direct_reply: Option<(Arc<str>, u64)>,
}

impl Channel {
    pub fn new(id: u16, conn: &Connection) -> ChannelRef {
        let prefetch = conn.shard.config.amqp.default_prefetch as u32;
        Rc::new(RefCell::new(Channel {
            id,
            closing: false,
            flow: true,
            publish: None,
            next_tag: 1,
            unacked: VecDeque::new(),
            consumers: HashMap::new(),
            prefetch_count: prefetch,
            prefetch_bytes: 0,
            global_count: 0,
            global_bytes: 0,
            global_unacked: 0,
            global_unacked_bytes: 0,
            held: VecDeque::new(),
            confirm: false,
            next_seq: 1,
            pending_confirms: BTreeMap::new(),
            done_confirms: BTreeMap::new(),
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
        let limited = self.global_count != 0 || self.global_bytes != 0;
        if !c.no_ack && (limited || !self.held.is_empty() || !self.flow) {
            self.held.extend(items.into_iter().map(|delivery| Held {
                cid,
                queue: queue.clone(),
                delivery,
            }));
            self.release_held(conn);
        } else {
            self.write_deliveries(conn, cid, queue, items);
        }
        None
    }

    /// Whether a delivery of `size` body bytes fits in the channel-wide prefetch (one
    /// always does when nothing is unacked, as for prefetch-size per consumer).
    fn fits_global(&self, size: u64) -> bool {
        (self.global_count == 0 || self.global_unacked < self.global_count)
            && (self.global_bytes == 0
                || self.global_unacked_bytes == 0
                || self.global_unacked_bytes + size <= self.global_bytes)
    }

    /// Writes held deliveries, oldest first, while the channel-wide prefetch has room
    /// and flow is on.
    pub fn release_held(&mut self, conn: &Rc<Connection>) {
        while self.flow && !self.closing {
            let Some(h) = self.held.front() else {
                break;
            };
            if !self.fits_global(h.delivery.msg.body.len() as u64) {
                break;
            }
            let Some(h) = self.held.pop_front() else {
                break;
            };
            // Consecutive deliveries for the same consumer go out together.
            let mut items = vec![h.delivery];
            let mut size = items[0].msg.body.len() as u64;
            while let Some(next) = self.held.front() {
                let next_size = next.delivery.msg.body.len() as u64;
                let room = (self.global_count == 0
                    || self.global_unacked + (items.len() as u32) < self.global_count)
                    && (self.global_bytes == 0
                        || self.global_unacked_bytes + size + next_size <= self.global_bytes);
                if next.cid != h.cid || !room {
                    break;
                }
                size += next_size;
                if let Some(n) = self.held.pop_front() {
                    items.push(n.delivery);
                }
            }
            self.write_deliveries(conn, h.cid, &h.queue, items);
        }
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
        let Some(c) = self.consumers.get(&cid) else {
            give_back(conn, queue, items);
            return;
        };
        let tag = c.tag.clone();
        let no_ack = c.no_ack;
        let n = items.len() as u32;
        let frame_max = conn.frame_max.get();
        let id = self.id;
        let mut tags = Vec::with_capacity(items.len());
        let at_ms = if no_ack { 0 } else { now_ms() };
        for d in &items {
            let t = self.next_tag;
            self.next_tag += 1;
            tags.push(t);
            if !no_ack {
                let size = d.msg.body.len() as u64;
                self.global_unacked += 1;
                self.global_unacked_bytes += size;
                self.unacked.push_back(Unacked {
                    tag: t,
                    queue: queue.clone(),
                    id: d.id,
                    settled: false,
                    counted: Some(size),
                    at_ms,
                });
            }
        }
        conn.write(|out| {
            for (d, t) in items.iter().zip(tags) {
                codec::put_deliver(
                    out,
                    id,
                    tag.as_bytes(),
                    t,
                    d.redelivered,
                    &d.msg.exchange,
                    &d.msg.routing_key,
                );
                codec::put_content(out, id, &d.msg.properties, &d.msg.body, frame_max);
            }
        });
        let bytes = items.iter().map(|d| d.msg.body.len() as u64).sum();
        conn.count_written(cid, queue, n, bytes);
        crate::metrics::with(|m| m.consumed(Protocol::Amqp, &queue.name, n as u64, bytes));
    }

    /// A counted delivery left the unacked set (or came back to it, `back`).
    fn uncount(&mut self, counted: Option<u64>, back: bool) {
        if let Some(size) = counted {
            if back {
                self.global_unacked += 1;
                self.global_unacked_bytes += size;
            } else {
                self.global_unacked = self.global_unacked.saturating_sub(1);
                self.global_unacked_bytes = self.global_unacked_bytes.saturating_sub(size);
            }
        }
    }

    /// Writes a delivery nobody acknowledges (a direct reply) to consumer `tag`.
    pub fn write_direct_reply(&mut self, conn: &Rc<Connection>, tag: &str, msg: &Message) {
        let t = self.next_tag;
        self.next_tag += 1;
        let frame_max = conn.frame_max.get();
        let id = self.id;
        conn.write(|out| {
            codec::put_deliver(
                out,
                id,
                tag.as_bytes(),
                t,
                false,
                &msg.exchange,
                &msg.routing_key,
            );
            codec::put_content(out, id, &msg.properties, &msg.body, frame_max);
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
        let t = self.next_tag;
        self.next_tag += 1;
        if !no_ack {
            self.unacked.push_back(Unacked {
                tag: t,
                queue: queue.clone(),
                id: d.id,
                settled: false,
                counted: None,
                at_ms: now_ms(),
            });
        }
        let frame_max = conn.frame_max.get();
        let id = self.id;
        conn.write(|out| {
            codec::put_get_ok(
                out,
                id,
                t,
                d.redelivered,
                &d.msg.exchange,
                &d.msg.routing_key,
                count,
            );
            codec::put_content(out, id, &d.msg.properties, &d.msg.body, frame_max);
        });
        let bytes = d.msg.body.len() as u64;
        crate::metrics::with(|m| m.consumed(Protocol::Amqp, &queue.name, 1, bytes));
    }

    pub fn add_consumer(&mut self, cid: u64, tag: Arc<str>, queue: QueueRef, no_ack: bool) {
        self.consumers.insert(
            cid,
            ConsumerInfo {
                tag,
                queue,
                no_ack,
                prefetch_count: self.prefetch_count,
                prefetch_bytes: self.prefetch_bytes,
                ready: false,
                buffered: Vec::new(),
                sent_limits: (0, 0),
            },
        );
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
        if self.held.iter().any(|h| h.cid == cid) {
            let (mine, rest): (VecDeque<Held>, VecDeque<Held>) = std::mem::take(&mut self.held)
                .into_iter()
                .partition(|h| h.cid == cid);
            self.held = rest;
            unsent.extend(mine.into_iter().map(|h| h.delivery));
        }
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

    /// The limits a consumer's owner enforces: its own prefetch, capped by the
    /// channel-wide one (0 = none).
    fn owner_limits(&self, c: &ConsumerInfo) -> (u32, u64) {
        let min0 = |a: u64, b: u64| match (a, b) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        (
            min0(c.prefetch_count as u64, self.global_count as u64) as u32,
            min0(c.prefetch_bytes, self.global_bytes),
        )
    }

    /// basic.qos(global) changed: tells owners whose consumers' limits changed, and
    /// writes held deliveries the new window has room for.
    pub fn global_qos_changed(&mut self, conn: &Rc<Connection>) {
        let mut changed = Vec::new();
        for (cid, c) in &self.consumers {
            let limits = self.owner_limits(c);
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
                Op::Limits {
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

    /// The limits a new consumer starts with.
    pub fn initial_limits(&mut self, cid: u64) -> (u32, u64) {
        let limits = match self.consumers.get(&cid) {
            Some(c) => self.owner_limits(c),
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
                Op::Limits {
                    queue: c.queue.clone(),
                    cid: *cid,
                    prefetch_count: c.sent_limits.0,
                    prefetch_bytes: c.sent_limits.1,
                    active,
                },
            );
        }
    }

    /// Takes the unacked deliveries an ack/nack/reject names: `tag` alone, every tag up to
    /// it (`multiple`), or all (`multiple` with tag 0). Unknown tags are a 406. Inside a
    /// transaction (`keep`) the entries stay, marked settled, until commit or rollback;
    /// the tags taken are returned for that.
    pub fn take_unacked(
        &mut self,
        tag: u64,
        multiple: bool,
        keep: bool,
    ) -> Result<Taken, AmqpError> {
        let unknown = || {
            AmqpError::channel(
                reply::PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - unknown delivery tag {tag}"),
            )
        };
        let mut taken: Vec<(QueueRef, u64)> = Vec::new();
        let mut tags = Vec::new();
        let mut counted = Vec::new();
        if multiple {
            if tag != 0 {
                let found = self
                    .unacked
                    .binary_search_by_key(&tag, |u| u.tag)
                    .ok()
                    .map(|i| !self.unacked[i].settled)
                    .unwrap_or(false);
                if !found {
                    return Err(unknown());
                }
            }
            for u in self.unacked.iter_mut() {
                if tag != 0 && u.tag > tag {
                    break;
                }
                if !u.settled {
                    u.settled = true;
                    taken.push((u.queue.clone(), u.id));
                    tags.push(u.tag);
                    counted.push(u.counted);
                }
            }
        } else {
            let i = self
                .unacked
                .binary_search_by_key(&tag, |u| u.tag)
                .map_err(|_| unknown())?;
            let u = &mut self.unacked[i];
            if u.settled {
                return Err(unknown());
            }
            u.settled = true;
            taken.push((u.queue.clone(), u.id));
            tags.push(u.tag);
            counted.push(u.counted);
        }
        for c in counted {
            self.uncount(c, false);
        }
        if !keep {
            self.compact();
        }
        Ok((group(taken), tags))
    }

    /// When the oldest delivery still unacknowledged was written (ms since the epoch).
    pub fn oldest_unacked_ms(&self) -> Option<i64> {
        self.unacked.iter().find(|u| !u.settled).map(|u| u.at_ms)
    }

    /// Drops settled entries from the front of the unacked list.
    pub fn compact(&mut self) {
        while self.unacked.front().map(|u| u.settled).unwrap_or(false) {
            self.unacked.pop_front();
        }
    }

    /// tx.rollback: acks, nacks and rejects of the transaction are undone.
    pub fn unsettle(&mut self, tags: &[u64]) {
        for t in tags {
            if let Ok(i) = self.unacked.binary_search_by_key(t, |u| u.tag) {
                if self.unacked[i].settled {
                    self.unacked[i].settled = false;
                    let counted = self.unacked[i].counted;
                    self.uncount(counted, true);
                }
            }
        }
    }

    /// Every unsettled delivery (recover, channel close).
    pub fn take_all_unacked(&mut self) -> Vec<(QueueRef, Vec<u64>)> {
        let taken = self
            .unacked
            .drain(..)
            .filter(|u| !u.settled)
            .map(|u| (u.queue, u.id))
            .collect();
        self.global_unacked = 0;
        self.global_unacked_bytes = 0;
        group(taken)
    }

    /// Registers a confirm-mode publish routed to `queues` queues, received at
    /// `received`; returns its seq.
    pub fn track_publish(&mut self, queues: u32, received: Option<Instant>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if queues == 0 {
            self.done_confirms.insert(seq, (true, received));
        } else {
            self.pending_confirms.insert(seq, (queues, false, received));
        }
        seq
    }

    /// Confirms from owners; completed publishes are acked or nacked to the client.
    pub fn confirmed(&mut self, conn: &Rc<Connection>, seqs: Vec<u64>, ack: bool) {
        for seq in seqs {
            if let Some(p) = self.pending_confirms.get_mut(&seq) {
                p.0 = p.0.saturating_sub(1);
                p.1 |= !ack;
                if p.0 == 0 {
                    let (nack, received) = (p.1, p.2);
                    self.pending_confirms.remove(&seq);
                    self.done_confirms.insert(seq, (!nack, received));
                }
            }
        }
        self.confirm_progress.notify();
        if self.confirm {
            self.emit_confirms(conn);
        }
    }

    /// Whether every tracked publish up to `seq` has completed; and whether any of them
    /// was nacked.
    pub fn settled_through(&self, seq: u64) -> bool {
        self.pending_confirms
            .first_key_value()
            .map(|(s, _)| *s > seq)
            .unwrap_or(true)
    }

    pub fn forget_confirms_through(&mut self, seq: u64) -> bool {
        let mut all_ack = true;
        let keep = self.done_confirms.split_off(&(seq + 1));
        for (_, (ack, _)) in std::mem::replace(&mut self.done_confirms, keep) {
            all_ack &= ack;
        }
        all_ack
    }

    /// Writes basic.ack/nack for completed publishes: runs below the oldest pending one
    /// as `multiple`, later ones one by one. Each publish's time to its confirm goes to
    /// the publish latency histogram.
    pub fn emit_confirms(&mut self, conn: &Rc<Connection>) {
        if self.done_confirms.is_empty() {
            return;
        }
        let low = self
            .pending_confirms
            .first_key_value()
            .map(|(s, _)| *s)
            .unwrap_or(u64::MAX);
        let done = std::mem::take(&mut self.done_confirms);
        let now = Instant::now();
        crate::metrics::with(|m| {
            for (_, received) in done.values() {
                if let Some(t) = received {
                    m.publish_latency(Protocol::Amqp, now.saturating_duration_since(*t));
                }
            }
        });
        let mut frames: Vec<(u64, bool, bool)> = Vec::new();
        let mut run: Option<(u64, bool)> = None;
        for (seq, (ack, _)) in done {
            if seq < low {
                match run {
                    Some((_, a)) if a == ack => run = Some((seq, ack)),
                    Some((s, a)) => {
                        frames.push((s, true, a));
                        run = Some((seq, ack));
                    }
                    None => run = Some((seq, ack)),
                }
            } else {
                frames.push((seq, false, ack));
            }
        }
        if let Some((s, a)) = run {
            frames.insert(0, (s, true, a));
        }
        frames.sort_by_key(|f| f.0);
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
                outbox::push(&conn.shard, owner, Op::Cancel { queue, cid });
            }
        }
        for (queue, ids) in self.take_all_unacked() {
            let owner = queue.owner;
            outbox::push(
                &conn.shard,
                owner,
                Op::Settle {
                    queue,
                    ids,
                    how: Settle::Requeue,
                },
            );
        }
        self.publish = None;
        self.tx = None;
        self.direct_reply = None;
        self.pending_confirms.clear();
        self.done_confirms.clear();
        self.confirm_progress.notify();
    }
}

/// Hands undelivered messages back to their queue unchanged.
pub fn give_back(conn: &Rc<Connection>, queue: &QueueRef, items: Vec<Delivery>) {
    let ids = items.into_iter().map(|d| d.id).collect();
    outbox::push(
        &conn.shard,
        queue.owner,
        Op::Settle {
            queue: queue.clone(),
            ids,
            how: Settle::Return,
        },
    );
}

fn group(taken: Vec<(QueueRef, u64)>) -> Vec<(QueueRef, Vec<u64>)> {
    let mut out: Vec<(QueueRef, Vec<u64>)> = Vec::new();
    for (q, id) in taken {
        match out.iter_mut().find(|(x, _)| x.id == q.id) {
            Some((_, ids)) => ids.push(id),
            None => out.push((q, vec![id])),
        }
    }
    out
}

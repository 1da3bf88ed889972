//! `Channel`: one AMQP channel's state on its connection's shard — the publish being
//! assembled from content frames, delivery tags and the unacked messages they name, the
//! channel's consumers and prefetch settings, publisher-confirm bookkeeping and the
//! transaction buffer.
//!
//! Owned by its `Connection` (`Rc<RefCell<Channel>>`); methods are synchronous and never
//! awaited with a borrow held. Work for queues leaves through the shard's outbox.

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
use crate::runtime::notify::Notify;

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
    /// Limits last sent to the owner (channel-wide qos shares).
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
            confirm: false,
            next_seq: 1,
            pending_confirms: BTreeMap::new(),
            done_confirms: BTreeMap::new(),
            confirm_progress: Rc::new(Notify::new()),
            tx: None,
            write_allowed: None,
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
        let tag = c.tag.clone();
        let no_ack = c.no_ack;
        let n = items.len() as u32;
        let frame_max = conn.frame_max.get();
        let id = self.id;
        let mut tags = Vec::with_capacity(items.len());
        for d in &items {
            let t = self.next_tag;
            self.next_tag += 1;
            tags.push(t);
            if !no_ack {
                self.unacked.push_back(Unacked {
                    tag: t,
                    queue: queue.clone(),
                    id: d.id,
                    settled: false,
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
        None
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

    /// Removes a consumer on this side; returns its queue.
    pub fn remove_consumer(&mut self, conn: &Rc<Connection>, cid: u64) -> Option<QueueRef> {
        let c = self.consumers.remove(&cid)?;
        if !c.buffered.is_empty() {
            give_back(conn, &c.queue, c.buffered);
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
        self.share_global_qos(conn);
    }

    /// Limits per consumer: its own prefetch, and its share of the channel-wide one
    /// (split evenly, at least one each) when basic.qos(global) set it.
    fn effective_limits(&self, c: &ConsumerInfo, share: (u32, u64)) -> (u32, u64) {
        let min0 = |a: u64, b: u64| match (a, b) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        (
            min0(c.prefetch_count as u64, share.0 as u64) as u32,
            min0(c.prefetch_bytes, share.1),
        )
    }

    /// Splits the channel-wide prefetch over the channel's consumers and tells owners
    /// whose limits changed.
    pub fn share_global_qos(&mut self, conn: &Rc<Connection>) {
        let mut cids: Vec<u64> = self
            .consumers
            .iter()
            .filter(|(_, c)| !c.no_ack)
            .map(|(k, _)| *k)
            .collect();
        cids.sort_unstable();
        let k = cids.len() as u64;
        if k == 0 {
            return;
        }
        for (i, cid) in cids.iter().enumerate() {
            let share_count = if self.global_count == 0 {
                0
            } else {
                let base = self.global_count as u64 / k;
                let extra = ((i as u64) < self.global_count as u64 % k) as u64;
                (base + extra).max(1) as u32
            };
            let share_bytes = if self.global_bytes == 0 {
                0
            } else {
                (self.global_bytes / k).max(1)
            };
            let Some(c) = self.consumers.get(cid) else {
                continue;
            };
            let limits = self.effective_limits(c, (share_count, share_bytes));
            if limits != c.sent_limits {
                let queue = c.queue.clone();
                if let Some(c) = self.consumers.get_mut(cid) {
                    c.sent_limits = limits;
                }
                outbox::push(
                    &conn.shard,
                    queue.owner,
                    Op::Limits {
                        queue,
                        cid: *cid,
                        prefetch_count: limits.0,
                        prefetch_bytes: limits.1,
                        active: self.flow,
                    },
                );
            }
        }
    }

    /// The limits a new consumer starts with.
    pub fn initial_limits(&mut self, cid: u64) -> (u32, u64) {
        let k = self.consumers.values().filter(|c| !c.no_ack).count().max(1) as u64;
        let share = (
            if self.global_count == 0 {
                0
            } else {
                (self.global_count as u64 / k).max(1) as u32
            },
            if self.global_bytes == 0 {
                0
            } else {
                (self.global_bytes / k).max(1)
            },
        );
        let limits = match self.consumers.get(&cid) {
            Some(c) => self.effective_limits(c, share),
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
        }
        if !keep {
            self.compact();
        }
        Ok((group(taken), tags))
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
                self.unacked[i].settled = false;
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

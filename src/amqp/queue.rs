//! `QueueState`: one AMQP queue on its owner shard — ready messages (one FIFO per
//! priority level), the unacked map, the consumers and their credit — and everything that
//! happens to it: enqueue with max-length/overflow, delivery round-robin by consumer
//! priority honouring prefetch, TTL expiry at the head, dead-lettering, requeue, purge.
//!
//! Only the owner shard holds a `QueueState` (in `ShardAmqp::queues`); other shards reach
//! it with `Op`s through the outbox. Methods are synchronous: what they produce for other
//! shards (deliveries, confirms, dead-lettered publishes) is queued in the outbox, and
//! persistent messages of durable queues are handed to the shard's message store, and
//! confirmed once the store's durability future says they are fdatasync'ed
//! (`owner::await_stored`).
//!
//! Counted in the owner shard's metrics per (vhost, queue): messages enqueued (publishes
//! the queue accepted) and dequeued (deliveries and basic.get, redeliveries included).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use super::mesh::{ConfirmTo, ConsumerSpec, Delivery, Op, QueueStats, Refusal, Settle};
use super::message::{dead_letter_cycle, dead_lettered, with_header, DeathReason, Message};
use super::outbox;
use super::reply;
use super::routing::QueueRef;
use super::store::Location;
use super::topology::{decode_table, queue_type, Overflow, Queue, QueueArgs, QueueType};
use crate::broker::Shard;
use crate::storage::log::now_ms;

pub struct Entry {
    /// Position in the queue: requeued messages go back to where they were.
    pub seq: u64,
    pub msg: Message,
    pub redelivered: bool,
    pub expires_at: Option<i64>,
    /// Written to the queue's message store (persistent message, durable queue).
    pub persisted: bool,
    /// Body size as published (what prefetch-size and x-max-length-bytes count, also
    /// while the body is paged out).
    pub body_len: u64,
    /// Where the message's record is in the queue's files, if it was written.
    pub loc: Option<Location>,
    /// The body is on disk only (paged out past the shard's memory budget).
    pub paged: bool,
    /// Times it came back unacknowledged (quorum queues count them; not kept across a
    /// restart).
    pub returns: u32,
}

struct Unacked {
    entry: Entry,
    cid: Option<u64>,
}

struct Consumer {
    spec: ConsumerSpec,
    unacked: u32,
    unacked_bytes: u64,
    /// Deliveries (and body bytes) that may still be sent before the consumer's
    /// connection reports earlier ones written: the broker's own flow control,
    /// independent of prefetch (`amqp.consumer_window`, `amqp.consumer_window_bytes`).
    window: u32,
    window_bytes: u64,
    /// The full window.
    window_max: (u32, u64),
    active: bool,
}

impl Consumer {
    fn can_take(&self, size: u64) -> bool {
        if !self.active || self.window == 0 {
            return false;
        }
        // One message is always allowed when nothing is in flight.
        if self.window_bytes < size && self.window_bytes < self.window_max.1 {
            return false;
        }
        if self.spec.no_ack {
            return true;
        }
        (self.spec.prefetch_count == 0 || self.unacked < self.spec.prefetch_count)
            && (self.spec.prefetch_bytes == 0
                || self.unacked_bytes == 0
                || self.unacked_bytes + size <= self.spec.prefetch_bytes)
    }
}

pub struct QueueState {
    pub qref: QueueRef,
    pub def: Queue,
    ready: Vec<VecDeque<Entry>>,
    ready_len: usize,
    /// Body bytes of ready messages (what x-max-length-bytes counts).
    ready_body_bytes: u64,
    unacked: HashMap<u64, Unacked>,
    next_seq: u64,
    next_delivery: u64,
    consumers: Vec<Consumer>,
    rr: usize,
    had_consumer: bool,
    last_used_ms: i64,
    expiry_timer: Option<i64>,
    /// A page-in of the head is on its way.
    paging_in: bool,
    pub deleted: bool,
    /// `x-queue-type` (quorum rules), read from the declared arguments.
    kind: QueueType,
}

fn level_count(def: &Queue) -> usize {
    def.args.max_priority.map(|p| p as usize + 1).unwrap_or(1)
}

impl QueueState {
    pub fn new(qref: QueueRef, def: Queue) -> QueueState {
        let kind = queue_type(&decode_table(&def.arguments));
        QueueState {
            kind,
            ready: (0..level_count(&def)).map(|_| VecDeque::new()).collect(),
            qref,
            def,
            ready_len: 0,
            ready_body_bytes: 0,
            unacked: HashMap::new(),
            next_seq: 0,
            next_delivery: 1,
            consumers: Vec::new(),
            rr: 0,
            had_consumer: false,
            last_used_ms: now_ms(),
            expiry_timer: None,
            paging_in: false,
            deleted: false,
        }
    }

    pub fn stats(&self) -> QueueStats {
        (self.ready_len as u32, self.consumers.len() as u32)
    }

    pub fn ready_len(&self) -> usize {
        self.ready_len
    }

    /// Messages delivered and not yet acknowledged.
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    pub fn touch(&mut self) {
        self.last_used_ms = now_ms();
    }

    fn durable_store(&self) -> bool {
        self.def.durable && self.def.exclusive_owner.is_none()
    }

    fn level_of(&self, msg: &Message) -> usize {
        (msg.priority as usize).min(self.ready.len() - 1)
    }

    fn expiry_for(&self, msg: &Message, now: i64) -> Option<i64> {
        let ttl = match (self.def.args.message_ttl, msg.expiration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ttl.map(|t| now.saturating_add(t.min(i64::MAX as u64 / 2) as i64))
    }

    /// Adds the message to the ready list at its place (by sequence within its level).
    fn insert_ready(&mut self, shard: &Rc<Shard>, entry: Entry) {
        let level = self.level_of(&entry.msg);
        self.ready_len += 1;
        self.ready_body_bytes += entry.body_len;
        shard.amqp.add_memory(entry.msg.size() as isize);
        let q = &mut self.ready[level];
        match q.back() {
            Some(last) if last.seq > entry.seq => {
                let at = q.partition_point(|e| e.seq < entry.seq);
                q.insert(at, entry);
            }
            _ => q.push_back(entry),
        }
    }

    fn pop_ready(&mut self, shard: &Rc<Shard>) -> Option<Entry> {
        let level = self.ready.iter().rposition(|q| !q.is_empty())?;
        let e = self.ready[level].pop_front()?;
        self.ready_len -= 1;
        self.ready_body_bytes -= e.body_len;
        shard.amqp.add_memory(-(e.msg.size() as isize));
        Some(e)
    }

    fn head(&self) -> Option<&Entry> {
        let level = self.ready.iter().rposition(|q| !q.is_empty())?;
        self.ready[level].front()
    }

    fn head_size(&self) -> Option<u64> {
        self.head().map(|e| e.body_len)
    }

    /// Whether the next message to deliver has its body on disk only.
    pub fn head_paged(&self) -> bool {
        self.head().map(|e| e.paged).unwrap_or(false)
    }

    /// A message arriving from a publisher (or a dead-letter exchange).
    pub fn publish(&mut self, shard: &Rc<Shard>, msg: Message, confirm: Option<ConfirmTo>) {
        let args = &self.def.args;
        let size = msg.body.len() as u64;
        let over = |len: usize, bytes: u64| {
            args.max_length.map(|m| len as u64 + 1 > m).unwrap_or(false)
                || args
                    .max_length_bytes
                    .map(|m| bytes + size > m)
                    .unwrap_or(false)
        };
        if matches!(
            args.overflow,
            Overflow::RejectPublish | Overflow::RejectPublishDlx
        ) && over(self.ready_len, self.ready_body_bytes)
        {
            if args.overflow == Overflow::RejectPublishDlx {
                self.dead_letter(shard, &msg, DeathReason::Maxlen);
            }
            if let Some(c) = confirm {
                confirm_to(shard, c, false);
            }
            return;
        }
        let now = now_ms();
        let seq = self.next_seq;
        self.next_seq += 1;
        let persisted = (msg.persistent || self.kind.quorum) && self.durable_store();
        // Past the shard's memory budget the body goes to disk (written first, dropped
        // from memory once the write is done).
        let page = shard.amqp.memory() + msg.size() > shard.config.amqp.memory_budget_bytes;
        let mut entry = Entry {
            seq,
            expires_at: self.expiry_for(&msg, now),
            body_len: msg.body.len() as u64,
            msg,
            redelivered: false,
            persisted,
            loc: None,
            paged: false,
            returns: 0,
        };
        if persisted || page {
            let confirm = confirm.filter(|_| persisted);
            let (loc, durable) =
                shard
                    .amqp
                    .store
                    .append(&self.qref, &entry, !persisted, confirm.is_some());
            super::owner::await_stored(shard, self.qref.id, seq, durable, confirm, page);
            entry.loc = Some(loc);
        }
        if !persisted {
            if let Some(c) = confirm {
                confirm_to(shard, c, true);
            }
        }
        self.insert_ready(shard, entry);
        crate::metrics::with(|m| m.enqueued(&self.qref.vhost, &self.qref.name, 1));
        self.run(shard);
        self.enforce_max_length(shard);
    }

    /// Drop-head: the oldest ready messages go (dead-lettered `maxlen`) until the queue
    /// fits its limits again.
    fn enforce_max_length(&mut self, shard: &Rc<Shard>) {
        let args = self.def.args.clone();
        if args.overflow != Overflow::DropHead {
            return;
        }
        loop {
            let over = args
                .max_length
                .map(|m| self.ready_len as u64 > m)
                .unwrap_or(false)
                || args
                    .max_length_bytes
                    .map(|m| self.ready_body_bytes > m)
                    .unwrap_or(false);
            if !over {
                break;
            }
            // The oldest message of the lowest non-empty priority goes first.
            let Some(level) = self.ready.iter().position(|q| !q.is_empty()) else {
                break;
            };
            let Some(e) = self.ready[level].pop_front() else {
                break;
            };
            self.ready_len -= 1;
            self.ready_body_bytes -= e.body_len;
            shard.amqp.add_memory(-(e.msg.size() as isize));
            self.dead_letter_entry(shard, e, DeathReason::Maxlen);
        }
    }

    /// A message leaves the queue for good: its stored copy is acked.
    fn forget(&self, shard: &Rc<Shard>, e: &Entry) {
        if e.loc.is_some() {
            shard.amqp.store.ack(&self.qref, e.seq);
        }
    }

    /// Dead-letters (or drops) a message leaving the queue; a paged-out body is read back
    /// first.
    fn dead_letter_entry(&self, shard: &Rc<Shard>, e: Entry, reason: DeathReason) {
        if !e.paged || self.def.args.dead_letter_exchange.is_none() {
            self.dead_letter(shard, &e.msg, reason);
            self.forget(shard, &e);
            return;
        }
        let (shard, qref, args) = (shard.clone(), self.qref.clone(), self.def.args.clone());
        super::spawn_later(async move {
            let Some(loc) = e.loc else {
                return;
            };
            match shard.amqp.store.read(&qref, loc).await {
                Ok(body) => {
                    let mut msg = e.msg.clone();
                    msg.body = body;
                    dead_letter(&shard, &qref, &args, &msg, reason);
                }
                Err(err) => log::error!("reading a paged message of '{}': {err}", qref.name),
            }
            shard.amqp.store.ack(&qref, e.seq);
        });
    }

    /// Republishes a message to the queue's dead-letter exchange, if it has one.
    fn dead_letter(&self, shard: &Rc<Shard>, msg: &Message, reason: DeathReason) {
        dead_letter(shard, &self.qref, &self.def.args, msg, reason);
    }

    /// Expires messages at the head of each level (RabbitMQ expires only at the head).
    fn expire_heads(&mut self, shard: &Rc<Shard>, now: i64) {
        for level in 0..self.ready.len() {
            while let Some(head) = self.ready[level].front() {
                match head.expires_at {
                    Some(t) if t <= now => {}
                    _ => break,
                }
                let Some(e) = self.ready[level].pop_front() else {
                    break;
                };
                self.ready_len -= 1;
                self.ready_body_bytes -= e.body_len;
                shard.amqp.add_memory(-(e.msg.size() as isize));
                self.dead_letter_entry(shard, e, DeathReason::Expired);
            }
        }
    }

    fn next_expiry(&self) -> Option<i64> {
        self.ready
            .iter()
            .filter_map(|q| q.front().and_then(|e| e.expires_at))
            .min()
    }

    /// Picks the consumer for a message of `size`: single-active-consumer takes the first
    /// registered; otherwise the highest consumer priority with room, round-robin among
    /// equals.
    fn pick(&mut self, size: u64) -> Option<usize> {
        if self.consumers.is_empty() {
            return None;
        }
        if self.def.args.single_active_consumer {
            return self.consumers[0].can_take(size).then_some(0);
        }
        let n = self.consumers.len();
        let mut best: Option<usize> = None;
        for i in 0..n {
            let idx = (self.rr + i) % n;
            let c = &self.consumers[idx];
            if !c.can_take(size) {
                continue;
            }
            match best {
                Some(b) if self.consumers[b].spec.priority >= c.spec.priority => {}
                _ => best = Some(idx),
            }
        }
        if let Some(b) = best {
            self.rr = (b + 1) % n;
        }
        best
    }

    /// Expires what is due, delivers what consumers have room for, re-arms the TTL timer.
    pub fn run(&mut self, shard: &Rc<Shard>) {
        let now = now_ms();
        self.expire_heads(shard, now);
        let mut batches: Vec<(usize, Vec<Delivery>)> = Vec::new();
        while let Some(size) = self.head_size() {
            let Some(ci) = self.pick(size) else {
                break;
            };
            if self.head_paged() {
                // Read the head back from disk first; delivery resumes after.
                self.page_in(shard);
                break;
            }
            let Some(e) = self.pop_ready(shard) else {
                break;
            };
            if e.expires_at.map(|t| t <= now).unwrap_or(false) {
                self.dead_letter_entry(shard, e, DeathReason::Expired);
                continue;
            }
            let id = self.next_delivery;
            self.next_delivery += 1;
            let c = &mut self.consumers[ci];
            c.window -= 1;
            c.window_bytes = c.window_bytes.saturating_sub(size);
            let d = Delivery {
                id,
                msg: e.msg.clone(),
                redelivered: e.redelivered,
            };
            if e.persisted && !e.redelivered && !c.spec.no_ack {
                // After a restart it comes back marked redelivered.
                shard.amqp.store.delivered(&self.qref, e.seq);
            }
            if c.spec.no_ack {
                self.forget(shard, &e);
            } else {
                c.unacked += 1;
                c.unacked_bytes += size;
                let cid = c.spec.cid;
                shard.amqp.add_memory(e.msg.size() as isize);
                self.unacked.insert(
                    id,
                    Unacked {
                        entry: e,
                        cid: Some(cid),
                    },
                );
            }
            match batches.iter_mut().find(|(i, _)| *i == ci) {
                Some((_, b)) => b.push(d),
                None => batches.push((ci, vec![d])),
            }
            self.expire_heads(shard, now);
        }
        let delivered: usize = batches.iter().map(|(_, b)| b.len()).sum();
        if delivered > 0 {
            crate::metrics::with(|m| {
                m.dequeued(&self.qref.vhost, &self.qref.name, delivered as u64)
            });
        }
        for (ci, items) in batches {
            let s = &self.consumers[ci].spec;
            log::trace!(
                "queue {}: {} deliveries to {}",
                self.qref.name,
                items.len(),
                s.tag
            );
            outbox::push(
                shard,
                s.shard,
                Op::Deliver {
                    conn: s.conn,
                    channel: s.channel,
                    cid: s.cid,
                    queue: self.qref.clone(),
                    items,
                },
            );
        }
        self.arm_expiry_timer(shard);
    }

    fn arm_expiry_timer(&mut self, shard: &Rc<Shard>) {
        let Some(at) = self.next_expiry() else {
            return;
        };
        if self.expiry_timer.map(|t| t <= at).unwrap_or(false) {
            return;
        }
        self.expiry_timer = Some(at);
        let shard = shard.clone();
        let qid = self.qref.id;
        super::spawn_later(async move {
            let wait = (at - now_ms()).max(0) as u64;
            glommio::timer::sleep(Duration::from_millis(wait)).await;
            if let Some(q) = shard.amqp.queue(qid) {
                let mut q = q.borrow_mut();
                if q.expiry_timer == Some(at) {
                    q.expiry_timer = None;
                }
                q.run(&shard);
            }
        });
    }

    pub fn consume(&mut self, shard: &Rc<Shard>, spec: ConsumerSpec) -> Result<(), Refusal> {
        if spec.exclusive && !self.consumers.is_empty() {
            return Err((
                reply::ACCESS_REFUSED,
                format!(
                    "ACCESS_REFUSED - queue '{}' in vhost '{}' in exclusive use",
                    self.qref.name, self.qref.vhost
                ),
            ));
        }
        if self.consumers.iter().any(|c| c.spec.exclusive) {
            return Err((
                reply::ACCESS_REFUSED,
                format!(
                    "ACCESS_REFUSED - queue '{}' in vhost '{}' in exclusive use",
                    self.qref.name, self.qref.vhost
                ),
            ));
        }
        self.consumers.push(Consumer {
            spec,
            unacked: 0,
            unacked_bytes: 0,
            window: shard.config.amqp.consumer_window,
            window_bytes: shard.config.amqp.consumer_window_bytes,
            window_max: (
                shard.config.amqp.consumer_window,
                shard.config.amqp.consumer_window_bytes,
            ),
            active: true,
        });
        self.had_consumer = true;
        self.touch();
        self.run(shard);
        Ok(())
    }

    /// Removes a consumer; its unacked messages stay until its channel settles them.
    /// Returns true when the queue should now be auto-deleted.
    pub fn cancel(&mut self, shard: &Rc<Shard>, cid: u64) -> bool {
        self.consumers.retain(|c| c.spec.cid != cid);
        if self.rr >= self.consumers.len() {
            self.rr = 0;
        }
        self.touch();
        if self.consumers.is_empty() {
            self.arm_expires(shard);
            if self.def.auto_delete && self.had_consumer {
                return true;
            }
        }
        self.run(shard);
        false
    }

    pub fn credit(&mut self, shard: &Rc<Shard>, cid: u64, n: u32, bytes: u64) {
        if let Some(c) = self.consumers.iter_mut().find(|c| c.spec.cid == cid) {
            c.window = (c.window + n).min(c.window_max.0);
            c.window_bytes = (c.window_bytes + bytes).min(c.window_max.1);
            self.run(shard);
        }
    }

    pub fn limits(&mut self, shard: &Rc<Shard>, cid: u64, count: u32, bytes: u64, active: bool) {
        if let Some(c) = self.consumers.iter_mut().find(|c| c.spec.cid == cid) {
            c.spec.prefetch_count = count;
            c.spec.prefetch_bytes = bytes;
            c.active = active;
            self.run(shard);
        }
    }

    pub fn settle(&mut self, shard: &Rc<Shard>, ids: Vec<u64>, how: Settle) {
        for id in ids {
            let Some(u) = self.unacked.remove(&id) else {
                continue;
            };
            let size = u.entry.body_len;
            shard.amqp.add_memory(-(u.entry.msg.size() as isize));
            if let Some(cid) = u.cid {
                if let Some(c) = self.consumers.iter_mut().find(|c| c.spec.cid == cid) {
                    c.unacked = c.unacked.saturating_sub(1);
                    c.unacked_bytes = c.unacked_bytes.saturating_sub(size);
                    if how == Settle::Return {
                        c.window = (c.window + 1).min(c.window_max.0);
                        c.window_bytes = (c.window_bytes + size).min(c.window_max.1);
                    }
                }
            }
            let mut e = u.entry;
            match how {
                Settle::Ack => self.forget(shard, &e),
                Settle::Reject => {
                    self.dead_letter(shard, &e.msg, DeathReason::Rejected);
                    self.forget(shard, &e);
                }
                Settle::Requeue if self.over_delivery_limit(&mut e) => {
                    self.dead_letter(shard, &e.msg, DeathReason::DeliveryLimit);
                    self.forget(shard, &e);
                }
                Settle::Requeue | Settle::Return => {
                    if how == Settle::Requeue {
                        e.redelivered = true;
                        if e.persisted {
                            shard.amqp.store.delivered(&self.qref, e.seq);
                        }
                    }
                    self.insert_ready(shard, e);
                }
            }
        }
        self.run(shard);
        self.enforce_max_length(shard);
    }

    /// A quorum queue counts a message's returns: true when this one takes it past
    /// `x-delivery-limit`; otherwise the redelivery carries `x-delivery-count`.
    fn over_delivery_limit(&self, e: &mut Entry) -> bool {
        if !self.kind.quorum {
            return false;
        }
        e.returns = e.returns.saturating_add(1);
        if let Some(limit) = self.kind.delivery_limit {
            if e.returns as u64 > limit {
                return true;
            }
        }
        e.msg = with_header(
            &e.msg,
            "x-delivery-count",
            amq_protocol::types::AMQPValue::LongLongInt(e.returns as i64),
        );
        false
    }

    /// basic.get; `None` when empty (the caller pages the head in first when it is on disk).
    pub fn get(&mut self, shard: &Rc<Shard>, no_ack: bool) -> Option<(Delivery, u32)> {
        self.touch();
        let now = now_ms();
        self.expire_heads(shard, now);
        if self.head_paged() {
            return None;
        }
        let e = self.pop_ready(shard)?;
        crate::metrics::with(|m| m.dequeued(&self.qref.vhost, &self.qref.name, 1));
        let id = self.next_delivery;
        self.next_delivery += 1;
        let d = Delivery {
            id,
            msg: e.msg.clone(),
            redelivered: e.redelivered,
        };
        if no_ack {
            self.forget(shard, &e);
        } else {
            if e.persisted && !e.redelivered {
                shard.amqp.store.delivered(&self.qref, e.seq);
            }
            shard.amqp.add_memory(e.msg.size() as isize);
            self.unacked.insert(
                id,
                Unacked {
                    entry: e,
                    cid: None,
                },
            );
        }
        self.arm_expiry_timer(shard);
        Some((d, self.ready_len as u32))
    }

    /// Finds a ready entry by sequence number.
    fn ready_entry(&mut self, seq: u64) -> Option<&mut Entry> {
        for q in self.ready.iter_mut() {
            if let Ok(i) = q.binary_search_by_key(&seq, |e| e.seq) {
                return q.get_mut(i);
            }
        }
        None
    }

    /// The store could not write these messages (a full disk) and their publishers were
    /// nacked: a persistent message leaves the queue (a nacked publish is not enqueued, so
    /// a publisher that re-sends it makes no duplicate); one already delivered stays with
    /// its consumer but is no longer stored. A transient message that was only being paged
    /// out stays, in memory.
    pub fn store_failed(&mut self, shard: &Rc<Shard>, seqs: &[u64]) {
        let failed: std::collections::HashSet<u64> = seqs.iter().copied().collect();
        let mut removed = 0usize;
        let mut freed = 0isize;
        let mut body_bytes = 0u64;
        for q in self.ready.iter_mut() {
            q.retain_mut(|e| {
                if !failed.contains(&e.seq) {
                    return true;
                }
                e.loc = None;
                if e.persisted {
                    removed += 1;
                    freed += e.msg.size() as isize;
                    body_bytes += e.body_len;
                    false
                } else {
                    true
                }
            });
        }
        for u in self.unacked.values_mut() {
            if failed.contains(&u.entry.seq) {
                u.entry.loc = None;
                u.entry.persisted = false;
            }
        }
        self.ready_len -= removed;
        self.ready_body_bytes -= body_bytes;
        shard.amqp.add_memory(-freed);
        if removed > 0 {
            log::warn!(
                "queue '{}' in vhost '{}': {removed} persistent messages the disk refused were nacked and removed",
                self.qref.name,
                self.qref.vhost
            );
        }
    }

    /// The store wrote these messages: their bodies leave memory (paged out).
    pub fn drop_bodies(&mut self, shard: &Rc<Shard>, seqs: &[u64]) {
        let mut freed = 0usize;
        for seq in seqs {
            if let Some(e) = self.ready_entry(*seq) {
                if !e.paged && e.loc.is_some() {
                    freed += e.msg.body.len();
                    e.msg.body = bytes::Bytes::new();
                    e.paged = true;
                }
            }
        }
        shard.amqp.add_memory(-(freed as isize));
    }

    /// Starts reading the paged-out messages at the head back into memory (up to 4 MiB
    /// or 1024 messages at a time); delivery resumes when they are in.
    fn page_in(&mut self, shard: &Rc<Shard>) {
        if self.paging_in {
            return;
        }
        let Some(level) = self.ready.iter().rposition(|q| !q.is_empty()) else {
            return;
        };
        let mut want = Vec::new();
        let mut bytes = 0u64;
        for e in self.ready[level].iter() {
            if want.len() >= 1024 || bytes >= 4 << 20 {
                break;
            }
            if let (true, Some(loc)) = (e.paged, e.loc) {
                want.push((e.seq, loc));
                bytes += e.body_len;
            }
        }
        if want.is_empty() {
            return;
        }
        log::debug!(
            "queue '{}': paging in {} messages from seq {}",
            self.qref.name,
            want.len(),
            want[0].0
        );
        self.paging_in = true;
        let shard = shard.clone();
        let qref = self.qref.clone();
        super::spawn_later(async move {
            // The first read opens the segment's read handle; the rest share it.
            let mut reads = Vec::with_capacity(want.len());
            if let Some((_, first)) = want.first() {
                reads.push(shard.amqp.store.read(&qref, *first).await);
            }
            let rest = want.iter().skip(1);
            reads.extend(
                futures::future::join_all(rest.map(|(_, loc)| shard.amqp.store.read(&qref, *loc)))
                    .await,
            );
            let Some(q) = shard.amqp.queue(qref.id) else {
                return;
            };
            let mut q = q.borrow_mut();
            q.paging_in = false;
            let mut added = 0usize;
            let mut lost = Vec::new();
            for ((seq, _), r) in want.into_iter().zip(reads) {
                match r {
                    Ok(body) => {
                        if let Some(e) = q.ready_entry(seq) {
                            if e.paged {
                                added += body.len();
                                e.msg.body = body;
                                e.paged = false;
                            }
                        }
                    }
                    Err(err) => {
                        log::error!("reading paged message {seq} of '{}': {err}", qref.name);
                        lost.push(seq);
                    }
                }
            }
            shard.amqp.add_memory(added as isize);
            // A message whose body cannot be read is dropped rather than delivered empty.
            for seq in lost {
                for level in q.ready.iter_mut() {
                    if let Ok(i) = level.binary_search_by_key(&seq, |e| e.seq) {
                        if let Some(e) = level.remove(i) {
                            q.ready_len -= 1;
                            q.ready_body_bytes -= e.body_len;
                            shard.amqp.add_memory(-(e.msg.size() as isize));
                            shard.amqp.store.ack(&qref, e.seq);
                        }
                        break;
                    }
                }
            }
            q.run(&shard);
        });
    }

    /// Reads the head back from disk if it is paged out, and waits for it (basic.get).
    pub async fn page_in_head(shard: &Rc<Shard>, qid: u64) {
        for _ in 0..100 {
            let Some(q) = shard.amqp.queue(qid) else {
                return;
            };
            {
                let mut q = q.borrow_mut();
                if !q.head_paged() {
                    return;
                }
                q.page_in(shard);
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn purge(&mut self, shard: &Rc<Shard>) -> u32 {
        let n = self.ready_len as u32;
        let levels = std::mem::take(&mut self.ready);
        self.ready = (0..levels.len()).map(|_| VecDeque::new()).collect();
        for e in levels.into_iter().flatten() {
            shard.amqp.add_memory(-(e.msg.size() as isize));
            self.forget(shard, &e);
        }
        self.ready_len = 0;
        self.ready_body_bytes = 0;
        n
    }

    pub fn has_consumers(&self) -> bool {
        !self.consumers.is_empty()
    }

    /// The queue is gone: consumers are told (basic.cancel from the server), memory freed.
    pub fn drop_all(&mut self, shard: &Rc<Shard>) {
        self.deleted = true;
        for c in self.consumers.drain(..) {
            outbox::push(
                shard,
                c.spec.shard,
                Op::Cancelled {
                    conn: c.spec.conn,
                    channel: c.spec.channel,
                    cid: c.spec.cid,
                },
            );
        }
        for e in self.ready.iter_mut().flat_map(|q| q.drain(..)) {
            shard.amqp.add_memory(-(e.msg.size() as isize));
        }
        for (_, u) in self.unacked.drain() {
            shard.amqp.add_memory(-(u.entry.msg.size() as isize));
        }
        self.ready_len = 0;
        self.ready_body_bytes = 0;
    }

    /// x-expires: deletes the queue once it has had no consumers and no use for that long.
    pub fn arm_expires(&self, shard: &Rc<Shard>) {
        let Some(ms) = self.def.args.expires else {
            return;
        };
        let shard = shard.clone();
        let qid = self.qref.id;
        super::spawn_later(async move {
            loop {
                let due = match shard.amqp.queue(qid) {
                    Some(q) => {
                        let q = q.borrow();
                        if q.deleted || q.has_consumers() {
                            return;
                        }
                        q.last_used_ms
                            .saturating_add(ms.min(i64::MAX as u64) as i64)
                    }
                    None => return,
                };
                let now = now_ms();
                if now >= due {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis((due - now) as u64)).await;
            }
            let qref = match shard.amqp.queue(qid) {
                Some(q) => q.borrow().qref.clone(),
                None => return,
            };
            log::debug!("queue '{}' expired (x-expires)", qref.name);
            super::owner::delete_queue(&shard, &qref).await;
        });
    }

    /// Restores a message recovered from the store (redelivered when it had been
    /// delivered before the restart).
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        &mut self,
        shard: &Rc<Shard>,
        seq: u64,
        expires_at: Option<i64>,
        mut msg: Message,
        redelivered: bool,
        loc: Location,
    ) {
        self.next_seq = self.next_seq.max(seq + 1);
        let body_len = msg.body.len() as u64;
        // Past the memory budget, recovered bodies stay on disk until delivered.
        let paged = shard.amqp.memory() + msg.size() > shard.config.amqp.memory_budget_bytes;
        if paged {
            msg.body = bytes::Bytes::new();
        }
        let entry = Entry {
            seq,
            body_len,
            loc: Some(loc),
            paged,
            expires_at,
            msg,
            redelivered,
            persisted: true,
            returns: 0,
        };
        self.insert_ready(shard, entry);
    }
}

pub type QueueHandle = Rc<std::cell::RefCell<QueueState>>;

/// Sends a confirm back to the publishing channel.
pub fn confirm_to(shard: &Rc<Shard>, c: ConfirmTo, ack: bool) {
    outbox::push(
        shard,
        c.shard,
        Op::Confirm {
            conn: c.conn,
            channel: c.channel,
            seqs: vec![c.seq],
            ack,
        },
    );
}

/// Republishes a message to the dead-letter exchange in `args`, if any, routed from this
/// shard's catalog replica; a route back into a queue the message already expired from
/// (without a rejection on record) is dropped, RabbitMQ's cycle rule.
fn dead_letter(
    shard: &Rc<Shard>,
    qref: &QueueRef,
    args: &QueueArgs,
    msg: &Message,
    reason: DeathReason,
) {
    let Some(dlx) = args.dead_letter_exchange.as_deref() else {
        return;
    };
    let now_secs = (now_ms() / 1000).max(0) as u64;
    let m = dead_lettered(
        msg,
        reason,
        &qref.name,
        dlx,
        args.dead_letter_routing_key.as_deref(),
        now_secs,
    );
    let router = shard.amqp.router(shard);
    let rk = String::from_utf8_lossy(&m.routing_key).into_owned();
    let headers_src = m.properties.clone();
    let mut headers = move || {
        super::message::scan_properties(&headers_src)
            .and_then(|v| v.headers)
            .map(|h| super::message::decode_headers(&h))
            .unwrap_or_default()
    };
    let Ok(targets) = router.route(&qref.vhost, dlx, &rk, &mut headers) else {
        log::debug!(
            "dead-letter exchange '{dlx}' of queue '{}' does not exist: message dropped",
            qref.name
        );
        return;
    };
    for t in targets {
        if reason != DeathReason::Rejected && dead_letter_cycle(&m, &t.name) {
            log::debug!("dead-letter cycle to '{}': message dropped", t.name);
            continue;
        }
        outbox::push(
            shard,
            t.owner,
            Op::Publish {
                queue: t,
                msg: m.clone(),
                confirm: None,
            },
        );
    }
}

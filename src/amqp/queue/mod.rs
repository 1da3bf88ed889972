//! `QueueState`: one AMQP queue on its owner shard — ready messages (`ready`: one FIFO per
//! priority level), the unacked map (`unacked`), the consumers and their credit
//! (`consumers`) — and everything that happens to it: enqueue with max-length/overflow
//! (`limits`), delivery by consumer priority honouring prefetch, TTL expiry at the head,
//! dead-lettering (`dead_letter`), requeue, purge.
//!
//! A pure state machine, like `kafka::groups::group`: every method is synchronous and
//! takes what it needs — an `Env` (the clock, the limits from config, the bytes the shard
//! holds in memory, the store handle `StoreHandle`) and an `Effects` sink it fills with
//! what must happen elsewhere (deliveries and confirms for other shards, dead-lettered
//! publishes, page-ins, timers, memory accounting). Only the owner shard holds a
//! `QueueState` (in `ShardAmqp::queues`); `owner.rs` builds the `Env`, calls in and carries
//! the effects out. Persistent messages of durable queues are handed to the store, which
//! hands back a durability future; the owner awaits it (`Effect::Stored`) and confirms
//! them after fdatasync.
//!
//! Counted in the owner shard's metrics per (vhost, queue) by the glue, from `Effects`:
//! messages enqueued (publishes the queue accepted) and dequeued (deliveries and
//! basic.get, redeliveries included).

pub mod consumers;
pub mod dead_letter;
pub mod effect;
pub mod held;
pub mod limits;
pub mod ready;
pub mod store_handle;
pub mod unacked;

use bytes::Bytes;

use super::mesh::{ConfirmTo, ConnOp, ConsumerSpec, Delivery, QueueStats, Refusal, Settle};
use super::message::{with_header, DeathReason, Message};
use super::reply;
use super::routing::QueueRef;
use super::store::Location;
use crate::catalog::amqp::arguments::{queue_type, QueueType};
use crate::catalog::amqp::tables::decode_table;
use crate::catalog::amqp::Queue;
use consumers::{Consumer, Consumers};
pub use effect::{Effect, Effects};
use ready::Ready;
pub use store_handle::StoreHandle;
use unacked::Unacked;

/// Confirms go out through the owner's glue.
pub use super::owner::confirm_to;

pub type QueueHandle = std::rc::Rc<std::cell::RefCell<QueueState>>;

/// One message in a queue.
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

/// The limits from config a queue applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A consumer's delivery window (`amqp.consumer_window`, `amqp.consumer_window_bytes`).
    pub consumer_window: u32,
    pub consumer_window_bytes: u64,
    /// Past this many bytes held by the shard's queues, bodies page out to disk
    /// (`amqp.memory_budget_bytes`).
    pub memory_budget: usize,
}

/// What a queue call reads from its shard.
pub struct Env<'a> {
    /// Now, in ms since the epoch.
    pub now: i64,
    pub limits: Limits,
    /// Message bytes the shard's queues hold in memory when the call starts (the call's own
    /// changes are in its `Effects::memory`).
    pub memory: usize,
    pub store: &'a dyn StoreHandle,
}

impl Env<'_> {
    /// Whether `size` more bytes go past the shard's memory budget.
    fn over_budget(&self, fx: &Effects, size: usize) -> bool {
        let held = (self.memory as isize + fx.memory).max(0) as usize;
        held + size > self.limits.memory_budget
    }
}

pub struct QueueState {
    pub qref: QueueRef,
    pub def: Queue,
    ready: Ready,
    unacked: Unacked,
    next_seq: u64,
    next_delivery: u64,
    consumers: Consumers,
    had_consumer: bool,
    last_used_ms: i64,
    /// When the armed TTL timer fires.
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
    pub fn new(qref: QueueRef, def: Queue, now: i64) -> QueueState {
        let kind = queue_type(&decode_table(&def.arguments));
        QueueState {
            kind,
            ready: Ready::new(level_count(&def)),
            qref,
            def,
            unacked: Unacked::default(),
            next_seq: 0,
            next_delivery: 1,
            consumers: Consumers::default(),
            had_consumer: false,
            last_used_ms: now,
            expiry_timer: None,
            paging_in: false,
            deleted: false,
        }
    }

    pub fn stats(&self) -> QueueStats {
        (self.ready.len() as u32, self.consumers.len() as u32)
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Messages delivered and not yet acknowledged.
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    pub fn has_consumers(&self) -> bool {
        !self.consumers.is_empty()
    }

    pub fn touch(&mut self, now: i64) {
        self.last_used_ms = now;
    }

    /// When `x-expires` deletes the queue: that long after its last use, while it has no
    /// consumers. `None`: never (no `x-expires`, consumers attached, already deleted).
    pub fn expires_at(&self) -> Option<i64> {
        let ms = self.def.args.expires?;
        if self.deleted || self.has_consumers() {
            return None;
        }
        Some(
            self.last_used_ms
                .saturating_add(ms.min(i64::MAX as u64) as i64),
        )
    }

    fn durable_store(&self) -> bool {
        self.def.durable && self.def.exclusive_owner.is_none()
    }

    fn expiry_for(&self, msg: &Message, now: i64) -> Option<i64> {
        let ttl = match (self.def.args.message_ttl, msg.expiration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ttl.map(|t| now.saturating_add(t.min(i64::MAX as u64 / 2) as i64))
    }

    /// Adds a message coming back (requeued, recovered) to the ready list at its place.
    fn insert_ready(&mut self, fx: &mut Effects, entry: Entry) {
        fx.memory += held::hold(&entry.msg);
        self.ready.insert(entry);
    }

    /// A message left the queue from the ready list (its memory with it).
    fn left_ready(fx: &mut Effects, e: &Entry) {
        fx.memory -= held::let_go(&e.msg);
    }

    /// Whether the next message to deliver has its body on disk only.
    pub fn head_paged(&self) -> bool {
        self.ready.head().map(|e| e.paged).unwrap_or(false)
    }

    /// A message arriving from a publisher (or a dead-letter exchange).
    pub fn publish(
        &mut self,
        env: &Env,
        fx: &mut Effects,
        msg: Message,
        confirm: Option<ConfirmTo>,
    ) {
        self.accept(env, fx, msg, confirm);
        self.run(env, fx);
        self.enforce_max_length(env, fx);
    }

    /// Whether messages that arrive together may all be taken before the consumers are
    /// served (`publish_all`): nothing about taking one depends on the deliveries before
    /// it. A length limit does (a consumer's delivery makes room), and so do priorities
    /// (a message delivered at once is not overtaken by a higher one arriving with it).
    pub fn takes_publishes_together(&self) -> bool {
        !limits::limited(&self.def.args) && self.def.args.max_priority.is_none()
    }

    /// Messages that arrived together (one envelope's run of publishes to this queue,
    /// `takes_publishes_together`), each taken as `publish` takes it, the consumers served
    /// once after the last: one batch of deliveries instead of one per message.
    pub fn publish_all(
        &mut self,
        env: &Env,
        fx: &mut Effects,
        msgs: impl IntoIterator<Item = (Message, Option<ConfirmTo>)>,
    ) {
        for (msg, confirm) in msgs {
            self.accept(env, fx, msg, confirm);
        }
        self.run(env, fx);
    }

    /// A message taken into the queue (or refused at its limit), the consumers not served
    /// yet.
    fn accept(&mut self, env: &Env, fx: &mut Effects, msg: Message, confirm: Option<ConfirmTo>) {
        let args = &self.def.args;
        let size = msg.body().len() as u64;
        if limits::rejects(args, self.ready.len(), self.ready.body_bytes(), size) {
            if limits::rejected_dead_letters(args) {
                self.dead_letter(env, fx, &msg, DeathReason::Maxlen);
            }
            if let Some(c) = confirm {
                fx.confirm(c, false);
            }
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let persisted = (msg.persistent || self.kind.quorum) && self.durable_store();
        // Past the shard's memory budget the body goes to disk (written first, dropped
        // from memory once the write is done).
        let (adds, page) = held::take(&msg, |bytes| env.over_budget(fx, bytes));
        let mut entry = Entry {
            seq,
            expires_at: self.expiry_for(&msg, env.now),
            body_len: msg.body().len() as u64,
            msg,
            redelivered: false,
            persisted,
            loc: None,
            paged: false,
            returns: 0,
        };
        if persisted || page {
            // Confirmed once fdatasync'ed; a paged body leaves memory once written.
            let confirm = confirm.filter(|_| persisted);
            let (loc, durable) =
                env.store
                    .append(&self.qref, &entry, !persisted, confirm.is_some());
            fx.push(Effect::Stored(effect::Stored {
                seq,
                durable,
                confirm,
                page,
            }));
            entry.loc = Some(loc);
        }
        if !persisted {
            if let Some(c) = confirm {
                fx.confirm(c, true);
            }
        }
        fx.memory += adds;
        self.ready.insert(entry);
        fx.enqueued += 1;
    }

    /// Drop-head: the oldest ready messages go (dead-lettered `maxlen`) until the queue
    /// fits its limits again.
    fn enforce_max_length(&mut self, env: &Env, fx: &mut Effects) {
        while limits::over_drop_head(&self.def.args, self.ready.len(), self.ready.body_bytes()) {
            // The oldest message of the lowest non-empty priority goes first.
            let Some(e) = self.ready.pop_oldest_lowest() else {
                break;
            };
            Self::left_ready(fx, &e);
            self.dead_letter_entry(env, fx, e, DeathReason::Maxlen);
        }
    }

    /// A message leaves the queue for good: its stored copy is acked.
    fn forget(&self, env: &Env, e: &Entry) {
        if e.loc.is_some() {
            env.store.ack(&self.qref, e.seq);
        }
    }

    /// Dead-letters (or drops) a message leaving the queue; a paged-out body is read back
    /// first (by the glue, which then acks it in the store).
    fn dead_letter_entry(&self, env: &Env, fx: &mut Effects, e: Entry, reason: DeathReason) {
        if !e.paged || self.def.args.dead_letter_exchange.is_none() {
            self.dead_letter(env, fx, &e.msg, reason);
            self.forget(env, &e);
            return;
        }
        let Some(loc) = e.loc else {
            return;
        };
        if let Some(mut dl) =
            dead_letter::dead_letter(&self.qref, &self.def.args, &e.msg, reason, env.now)
        {
            dl.paged = Some((e.seq, loc));
            fx.push(Effect::DeadLetter(dl));
        }
    }

    /// Republishes a message to the queue's dead-letter exchange, if it has one.
    fn dead_letter(&self, env: &Env, fx: &mut Effects, msg: &Message, reason: DeathReason) {
        if let Some(dl) = dead_letter::dead_letter(&self.qref, &self.def.args, msg, reason, env.now)
        {
            fx.push(Effect::DeadLetter(dl));
        }
    }

    /// Expires messages at the head of each level (RabbitMQ expires only at the head).
    fn expire_heads(&mut self, env: &Env, fx: &mut Effects) {
        for e in self.ready.pop_expired(env.now) {
            Self::left_ready(fx, &e);
            self.dead_letter_entry(env, fx, e, DeathReason::Expired);
        }
    }

    /// Expires what is due, delivers what consumers have room for, re-arms the TTL timer.
    pub fn run(&mut self, env: &Env, fx: &mut Effects) {
        let now = env.now;
        self.expire_heads(env, fx);
        let mut batches: Vec<(usize, Vec<Delivery>)> = Vec::new();
        while let Some(size) = self.ready.head().map(|e| e.body_len) {
            let Some(ci) = self
                .consumers
                .pick(size, self.def.args.single_active_consumer)
            else {
                break;
            };
            if self.head_paged() {
                // Read the head back from disk first; delivery resumes after.
                self.page_in(fx);
                break;
            }
            let Some(e) = self.ready.pop() else {
                break;
            };
            if e.expires_at.map(|t| t <= now).unwrap_or(false) {
                Self::left_ready(fx, &e);
                self.dead_letter_entry(env, fx, e, DeathReason::Expired);
                continue;
            }
            let id = self.next_delivery;
            self.next_delivery += 1;
            let c = self.consumers.at_mut(ci);
            c.window -= 1;
            c.window_bytes = c.window_bytes.saturating_sub(size);
            // How many more deliveries this consumer could take in this call.
            let more = (c.window as usize).min(self.ready.len()).min(1024);
            let d = Delivery {
                id,
                msg: e.msg.clone(),
                redelivered: e.redelivered,
                stream_offset: None,
            };
            if e.persisted && !e.redelivered && !c.spec.no_ack {
                // After a restart it comes back marked redelivered.
                env.store.delivered(&self.qref, e.seq);
            }
            if c.spec.no_ack {
                Self::left_ready(fx, &e);
                self.forget(env, &e);
            } else {
                // Held on in the unacked ledger: its memory stays counted.
                c.unacked += 1;
                c.unacked_bytes += size;
                let cid = c.spec.cid;
                self.unacked.insert(id, e, Some(cid));
            }
            match batches.iter_mut().find(|(i, _)| *i == ci) {
                Some((_, b)) => b.push(d),
                None => {
                    // Reserved at once: a delivery is a few hundred bytes, and a batch
                    // grown by doubling moves them each time.
                    let mut b = Vec::with_capacity(1 + more);
                    b.push(d);
                    batches.push((ci, b));
                }
            }
            self.expire_heads(env, fx);
        }
        let delivered: usize = batches.iter().map(|(_, b)| b.len()).sum();
        fx.dequeued += delivered as u64;
        for (ci, items) in batches {
            let s = &self.consumers.at(ci).spec;
            log::trace!(
                "queue {}: {} deliveries to {}",
                self.qref.name,
                items.len(),
                s.tag
            );
            fx.push(Effect::Send {
                to: s.shard,
                op: ConnOp::Deliver {
                    conn: s.conn,
                    channel: s.channel,
                    cid: s.cid,
                    queue: self.qref.clone(),
                    items,
                },
            });
        }
        self.arm_expiry_timer(fx);
    }

    /// Asks for a wake-up when the earliest head expires, unless one that early is armed.
    fn arm_expiry_timer(&mut self, fx: &mut Effects) {
        let Some(at) = self.ready.next_expiry() else {
            return;
        };
        if self.expiry_timer.map(|t| t <= at).unwrap_or(false) {
            return;
        }
        self.expiry_timer = Some(at);
        fx.push(Effect::WakeAt(at));
    }

    /// The wake-up asked for `at` came.
    pub fn timer_fired(&mut self, env: &Env, fx: &mut Effects, at: i64) {
        if self.expiry_timer == Some(at) {
            self.expiry_timer = None;
        }
        self.run(env, fx);
    }

    pub fn consume(
        &mut self,
        env: &Env,
        fx: &mut Effects,
        spec: ConsumerSpec,
    ) -> Result<(), Refusal> {
        if (spec.exclusive && !self.consumers.is_empty()) || self.consumers.any_exclusive() {
            return Err((
                reply::ACCESS_REFUSED,
                format!(
                    "ACCESS_REFUSED - queue '{}' in vhost '{}' in exclusive use",
                    self.qref.name, self.qref.vhost
                ),
            ));
        }
        let window = (env.limits.consumer_window, env.limits.consumer_window_bytes);
        self.consumers.push(Consumer::new(spec, window));
        self.had_consumer = true;
        self.touch(env.now);
        self.run(env, fx);
        Ok(())
    }

    /// Removes a consumer; its unacked messages stay until its channel settles them.
    /// Returns true when the queue should now be auto-deleted.
    pub fn cancel(&mut self, env: &Env, fx: &mut Effects, cid: u64) -> bool {
        self.consumers.remove(cid);
        self.touch(env.now);
        if self.consumers.is_empty() {
            if self.def.args.expires.is_some() {
                fx.push(Effect::WatchExpires);
            }
            if self.def.auto_delete && self.had_consumer {
                return true;
            }
        }
        self.run(env, fx);
        false
    }

    /// The consumer's connection wrote `n` deliveries (`bytes` of bodies).
    pub fn credit(&mut self, env: &Env, fx: &mut Effects, cid: u64, n: u32, bytes: u64) {
        if let Some(c) = self.consumers.get_mut(cid) {
            c.credit(n, bytes);
            self.run(env, fx);
        }
    }

    /// New prefetch limits (basic.qos, capped by the channel-wide one) or flow state of a
    /// consumer.
    pub fn set_limits(
        &mut self,
        env: &Env,
        fx: &mut Effects,
        cid: u64,
        count: u32,
        bytes: u64,
        active: bool,
    ) {
        if let Some(c) = self.consumers.get_mut(cid) {
            c.spec.prefetch_count = count;
            c.spec.prefetch_bytes = bytes;
            c.active = active;
            self.run(env, fx);
        }
    }

    /// Acks, requeues (nack/reject with requeue, marked redelivered), rejects
    /// (dead-lettered `rejected`) or returns (never reached the client) deliveries.
    pub fn settle(&mut self, env: &Env, fx: &mut Effects, ids: Vec<u64>, how: Settle) {
        for id in ids {
            let Some(u) = self.unacked.remove(id) else {
                continue;
            };
            let size = u.entry.body_len;
            fx.memory -= held::let_go(&u.entry.msg);
            if let Some(cid) = u.cid {
                if let Some(c) = self.consumers.get_mut(cid) {
                    c.unacked = c.unacked.saturating_sub(1);
                    c.unacked_bytes = c.unacked_bytes.saturating_sub(size);
                    if how == Settle::Return {
                        c.credit(1, size);
                    }
                }
            }
            let mut e = u.entry;
            match how {
                Settle::Ack => self.forget(env, &e),
                Settle::Reject => {
                    self.dead_letter(env, fx, &e.msg, DeathReason::Rejected);
                    self.forget(env, &e);
                }
                Settle::Requeue if self.over_delivery_limit(&mut e) => {
                    self.dead_letter(env, fx, &e.msg, DeathReason::DeliveryLimit);
                    self.forget(env, &e);
                }
                Settle::Requeue | Settle::Return => {
                    if how == Settle::Requeue {
                        e.redelivered = true;
                        if e.persisted {
                            env.store.delivered(&self.qref, e.seq);
                        }
                    }
                    self.insert_ready(fx, e);
                }
            }
        }
        self.run(env, fx);
        self.enforce_max_length(env, fx);
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

    /// basic.get; `None` when empty (the caller pages the head in first when it is on
    /// disk). The count is of the ready messages left.
    pub fn get(&mut self, env: &Env, fx: &mut Effects, no_ack: bool) -> Option<(Delivery, u32)> {
        self.touch(env.now);
        self.expire_heads(env, fx);
        if self.head_paged() {
            return None;
        }
        let e = self.ready.pop()?;
        fx.dequeued += 1;
        let id = self.next_delivery;
        self.next_delivery += 1;
        let d = Delivery {
            id,
            msg: e.msg.clone(),
            redelivered: e.redelivered,
            stream_offset: None,
        };
        if no_ack {
            Self::left_ready(fx, &e);
            self.forget(env, &e);
        } else {
            if e.persisted && !e.redelivered {
                env.store.delivered(&self.qref, e.seq);
            }
            // Held on in the unacked ledger: its memory stays counted.
            self.unacked.insert(id, e, None);
        }
        self.arm_expiry_timer(fx);
        Some((d, self.ready.len() as u32))
    }

    /// The store could not write these messages (a full disk) and their publishers were
    /// nacked: a persistent message leaves the queue (a nacked publish is not enqueued, so
    /// a publisher that re-sends it makes no duplicate); one already delivered stays with
    /// its consumer but is no longer stored. A transient message that was only being paged
    /// out stays, in memory.
    pub fn refused_by_store(&mut self, fx: &mut Effects, seqs: &[u64]) {
        let failed: std::collections::HashSet<u64> = seqs.iter().copied().collect();
        let removed = self.ready.retain_mut(|e| {
            if !failed.contains(&e.seq) {
                return true;
            }
            e.loc = None;
            !e.persisted
        });
        for e in self.unacked.entries_mut() {
            if failed.contains(&e.seq) {
                e.loc = None;
                e.persisted = false;
            }
        }
        for e in &removed {
            Self::left_ready(fx, e);
        }
        if !removed.is_empty() {
            log::warn!(
                "queue '{}' in vhost '{}': {} persistent messages the disk refused were nacked and removed",
                self.qref.name,
                self.qref.vhost,
                removed.len()
            );
        }
    }

    /// The store wrote these messages: their bodies leave memory (paged out).
    pub fn bodies_written(&mut self, fx: &mut Effects, seqs: &[u64]) {
        for seq in seqs {
            if let Some(e) = self.ready.entry_mut(*seq) {
                if !e.paged && e.loc.is_some() {
                    // Its memory goes when no other queue of the shard holds the body.
                    fx.memory -= held::let_go(&e.msg);
                    e.msg.drop_body();
                    fx.memory += held::hold(&e.msg);
                    e.paged = true;
                }
            }
        }
    }

    /// Asks for the paged-out messages at the head to be read back into memory (up to
    /// 4 MiB or 1024 messages at a time); delivery resumes when they are in
    /// (`paged_in`).
    pub fn page_in(&mut self, fx: &mut Effects) {
        if self.paging_in {
            return;
        }
        let mut want = Vec::new();
        let mut bytes = 0u64;
        for e in self.ready.head_level_entries() {
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
        fx.push(Effect::PageIn(want));
    }

    /// The bodies a page-in read (by seq); a message whose body could not be read is
    /// dropped rather than delivered empty. Delivery resumes.
    pub fn paged_in(
        &mut self,
        env: &Env,
        fx: &mut Effects,
        reads: Vec<(u64, std::io::Result<Bytes>)>,
    ) {
        self.paging_in = false;
        let mut lost = Vec::new();
        for (seq, r) in reads {
            match r {
                Ok(body) => {
                    if let Some(e) = self.ready.entry_mut(seq) {
                        if e.paged {
                            fx.memory -= held::let_go(&e.msg);
                            e.msg.edit().set_body(body);
                            fx.memory += held::hold(&e.msg);
                            e.paged = false;
                        }
                    }
                }
                Err(err) => {
                    log::error!("reading paged message {seq} of '{}': {err}", self.qref.name);
                    lost.push(seq);
                }
            }
        }
        for seq in lost {
            if let Some(e) = self.ready.remove(seq) {
                Self::left_ready(fx, &e);
                env.store.ack(&self.qref, e.seq);
            }
        }
        self.run(env, fx);
    }

    /// queue.purge: drops every ready message; returns how many.
    pub fn purge(&mut self, env: &Env, fx: &mut Effects) -> u32 {
        let n = self.ready.len() as u32;
        for e in self.ready.take_all() {
            Self::left_ready(fx, &e);
            self.forget(env, &e);
        }
        n
    }

    /// The queue is gone: consumers are told (basic.cancel from the server), memory freed.
    pub fn delete(&mut self, fx: &mut Effects) {
        self.deleted = true;
        for c in self.consumers.drain() {
            fx.push(Effect::Send {
                to: c.spec.shard,
                op: ConnOp::Cancelled {
                    conn: c.spec.conn,
                    channel: c.spec.channel,
                    cid: c.spec.cid,
                },
            });
        }
        for e in self.ready.take_all() {
            Self::left_ready(fx, &e);
        }
        for e in self.unacked.drain() {
            fx.memory -= held::let_go(&e.msg);
        }
    }

    /// Restores a message recovered from the store (redelivered when it had been
    /// delivered before the restart).
    #[allow(clippy::too_many_arguments)]
    pub fn recovered(
        &mut self,
        env: &Env,
        fx: &mut Effects,
        seq: u64,
        expires_at: Option<i64>,
        mut msg: Message,
        redelivered: bool,
        loc: Location,
    ) {
        self.next_seq = self.next_seq.max(seq + 1);
        let body_len = msg.body().len() as u64;
        // Past the memory budget, recovered bodies stay on disk until delivered.
        let paged = env.over_budget(fx, msg.size());
        if paged {
            msg.edit().set_body(Bytes::new());
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
        self.insert_ready(fx, entry);
    }
}

#[cfg(test)]
mod tests;

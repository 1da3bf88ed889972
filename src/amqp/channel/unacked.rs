//! `Unacked`: one channel's delivery tags and what they name — the unacked deliveries in
//! tag order (queue, the queue's delivery id, settled or not) — with the channel-wide
//! prefetch (basic.qos global=true) they count against and the deliveries `held` while that
//! prefetch is full or flow is off.
//!
//! A plain ledger owned by `Channel` on the connection's shard (LavinMQ's unacked store):
//! no I/O; the channel writes what it hands out. Each consumer's own prefetch is counted by
//! the queue's owner; the channel-wide one is counted here because it spans queues on any
//! shard. Tags are given when a delivery is written, so they stay in write order.

use std::collections::VecDeque;
use std::rc::Rc;

use super::super::mesh::Delivery;
use super::super::reply;
use super::super::routing::QueueRef;
use super::super::AmqpError;

/// Deliveries taken by an ack/nack/reject: delivery ids per queue, and their tags.
pub type Taken = (Vec<(QueueRef, Vec<u64>)>, Vec<u64>);

struct Tagged {
    tag: u64,
    /// Shared by the entries of one queue (`Unacked::queue`): one count, not atomic.
    queue: Rc<QueueRef>,
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

pub struct Unacked {
    next_tag: u64,
    tagged: VecDeque<Tagged>,
    /// The channel-wide prefetch: count and body bytes (0 = none).
    global_count: u32,
    global_bytes: u64,
    /// Consumer deliveries written and not yet settled, and their body bytes (what the
    /// channel-wide prefetch counts).
    global_unacked: u32,
    global_unacked_bytes: u64,
    /// Deliveries waiting for room in the channel-wide prefetch (or for flow), in order.
    held: VecDeque<Held>,
    /// The queue of the last deliveries recorded, shared by their entries.
    last_queue: Option<Rc<QueueRef>>,
}

impl Default for Unacked {
    fn default() -> Self {
        Unacked {
            next_tag: 1,
            tagged: VecDeque::new(),
            global_count: 0,
            global_bytes: 0,
            global_unacked: 0,
            global_unacked_bytes: 0,
            held: VecDeque::new(),
            last_queue: None,
        }
    }
}

impl Unacked {
    /// A ledger with nothing unacked or held whose next delivery tag is `next_tag` and whose
    /// channel-wide prefetch is `global` (a channel that moved to another shard).
    pub fn resumed(next_tag: u64, global: (u32, u64)) -> Unacked {
        Unacked {
            next_tag: next_tag.max(1),
            global_count: global.0,
            global_bytes: global.1,
            ..Unacked::default()
        }
    }

    /// No delivery unacked or held back.
    pub fn is_empty(&self) -> bool {
        self.tagged.is_empty() && self.held.is_empty()
    }

    /// The tag the next delivery gets (`next_tag` takes it).
    pub fn peek_tag(&self) -> u64 {
        self.next_tag
    }

    /// The channel-wide prefetch (count, bytes); 0 means none.
    pub fn global(&self) -> (u32, u64) {
        (self.global_count, self.global_bytes)
    }

    pub fn set_global(&mut self, count: u32, bytes: u64) {
        self.global_count = count;
        self.global_bytes = bytes;
    }

    /// Whether consumer deliveries (acked ones) must queue behind `held` rather than be
    /// written now.
    pub fn must_hold(&self, flow: bool) -> bool {
        self.global_count != 0 || self.global_bytes != 0 || !self.held.is_empty() || !flow
    }

    pub fn hold(&mut self, cid: u64, queue: &QueueRef, items: Vec<Delivery>) {
        self.held.extend(items.into_iter().map(|delivery| Held {
            cid,
            queue: queue.clone(),
            delivery,
        }));
    }

    /// Takes the held deliveries of consumer `cid` (it is going away).
    pub fn unhold(&mut self, cid: u64) -> Vec<Delivery> {
        if !self.held.iter().any(|h| h.cid == cid) {
            return Vec::new();
        }
        let (mine, rest): (VecDeque<Held>, VecDeque<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.cid == cid);
        self.held = rest;
        mine.into_iter().map(|h| h.delivery).collect()
    }

    /// Whether a delivery of `size` body bytes fits in the channel-wide prefetch (one
    /// always does when nothing is unacked, as for prefetch-size per consumer).
    fn fits_global(&self, size: u64) -> bool {
        (self.global_count == 0 || self.global_unacked < self.global_count)
            && (self.global_bytes == 0
                || self.global_unacked_bytes == 0
                || self.global_unacked_bytes + size <= self.global_bytes)
    }

    /// The next held deliveries the channel-wide prefetch has room for: the oldest, with
    /// the consecutive ones for the same consumer that also fit. The caller writes them
    /// (`record`) before asking again.
    pub fn next_release(&mut self) -> Option<(u64, QueueRef, Vec<Delivery>)> {
        let h = self.held.front()?;
        if !self.fits_global(h.delivery.msg.body().len() as u64) {
            return None;
        }
        let h = self.held.pop_front()?;
        let mut items = vec![h.delivery];
        let mut size = items[0].msg.body().len() as u64;
        while let Some(next) = self.held.front() {
            let next_size = next.delivery.msg.body().len() as u64;
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
        Some((h.cid, h.queue, items))
    }

    /// A tag for a delivery nobody acknowledges (no_ack, a direct reply).
    pub fn next_tag(&mut self) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        t
    }

    /// Gives tags to deliveries from `queue` being written, given as (delivery id, body
    /// bytes); unless `no_ack`, they are recorded as unacked, `counted` against the
    /// channel-wide prefetch (consumer deliveries) or not (basic.get). Returns the tags,
    /// in order.
    pub fn record(
        &mut self,
        queue: &QueueRef,
        items: impl ExactSizeIterator<Item = (u64, u64)>,
        no_ack: bool,
        counted: bool,
        at_ms: i64,
    ) -> Vec<u64> {
        let mut tags = Vec::with_capacity(items.len());
        let queue = self.queue(queue);
        for (id, size) in items {
            let tag = self.next_tag();
            tags.push(tag);
            if no_ack {
                continue;
            }
            if counted {
                self.global_unacked += 1;
                self.global_unacked_bytes += size;
            }
            self.tagged.push_back(Tagged {
                tag,
                queue: Rc::clone(&queue),
                id,
                settled: false,
                counted: counted.then_some(size),
                at_ms,
            });
        }
        tags
    }

    /// `queue` as the entries share it: the last one recorded when it is the same.
    fn queue(&mut self, queue: &QueueRef) -> Rc<QueueRef> {
        match &self.last_queue {
            Some(q) if **q == *queue => Rc::clone(q),
            _ => Rc::clone(self.last_queue.insert(Rc::new(queue.clone()))),
        }
    }

    /// Takes the unacked deliveries an ack/nack/reject names: `tag` alone, every tag up to
    /// it (`multiple`), or all (`multiple` with tag 0). Unknown tags are a 406. Inside a
    /// transaction (`keep`) the entries stay, marked settled, until commit or rollback;
    /// the tags taken are returned for that (none otherwise).
    pub fn take(&mut self, tag: u64, multiple: bool, keep: bool) -> Result<Taken, AmqpError> {
        let unknown = || {
            AmqpError::channel(
                reply::PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - unknown delivery tag {tag}"),
            )
        };
        // The entries the ack reaches (settled ones among them when `multiple`).
        let reach = match (multiple, tag) {
            (true, 0) => 0..self.tagged.len(),
            _ => match self.tagged.binary_search_by_key(&tag, |u| u.tag) {
                Ok(i) if !self.tagged[i].settled => (if multiple { 0 } else { i })..i + 1,
                _ => return Err(unknown()),
            },
        };
        let mut taken: Vec<(QueueRef, Vec<u64>)> = Vec::new();
        let mut tags = Vec::with_capacity(if keep { reach.len() } else { 0 });
        let (mut count, mut bytes) = (0u32, 0u64);
        let left = reach.len();
        for (n, u) in self.tagged.range_mut(reach).enumerate() {
            if u.settled {
                continue;
            }
            u.settled = true;
            add(&mut taken, &u.queue, u.id, left - n);
            if keep {
                tags.push(u.tag);
            }
            if let Some(size) = u.counted {
                count += 1;
                bytes += size;
            }
        }
        self.global_unacked = self.global_unacked.saturating_sub(count);
        self.global_unacked_bytes = self.global_unacked_bytes.saturating_sub(bytes);
        if !keep {
            self.compact();
        }
        Ok((taken, tags))
    }

    /// When the oldest delivery still unacknowledged was written (ms since the epoch).
    pub fn oldest_ms(&self) -> Option<i64> {
        self.tagged.iter().find(|u| !u.settled).map(|u| u.at_ms)
    }

    /// Drops settled entries from the front.
    pub fn compact(&mut self) {
        while self.tagged.front().map(|u| u.settled).unwrap_or(false) {
            self.tagged.pop_front();
        }
    }

    /// tx.rollback: acks, nacks and rejects of the transaction are undone.
    pub fn unsettle(&mut self, tags: &[u64]) {
        for t in tags {
            if let Ok(i) = self.tagged.binary_search_by_key(t, |u| u.tag) {
                let u = &mut self.tagged[i];
                if u.settled {
                    u.settled = false;
                    // A counted delivery is back in the channel-wide prefetch.
                    if let Some(size) = u.counted {
                        self.global_unacked += 1;
                        self.global_unacked_bytes += size;
                    }
                }
            }
        }
    }

    /// Every unsettled delivery (recover, channel close).
    pub fn take_all(&mut self) -> Vec<(QueueRef, Vec<u64>)> {
        let taken = self
            .tagged
            .drain(..)
            .filter(|u| !u.settled)
            .map(|u| (u.queue, u.id))
            .collect();
        self.global_unacked = 0;
        self.global_unacked_bytes = 0;
        group(taken)
    }
}

/// Delivery ids grouped by queue, queues in first-seen order.
fn group(taken: Vec<(Rc<QueueRef>, u64)>) -> Vec<(QueueRef, Vec<u64>)> {
    let mut out: Vec<(QueueRef, Vec<u64>)> = Vec::new();
    let mut left = taken.len();
    for (q, id) in taken {
        add(&mut out, &q, id, left);
        left -= 1;
    }
    out
}

/// Adds a delivery id to its queue's group (the queue is cloned only for a new group).
/// The first group is made with room for the `left` ids that may still come: a multiple
/// ack of one queue's deliveries fills one group, which growing id by id reallocated at
/// every doubling. Later groups grow as they fill (room for all of `left` in each would
/// hold queues × ids for an ack across many queues).
fn add(groups: &mut Vec<(QueueRef, Vec<u64>)>, queue: &QueueRef, id: u64, left: usize) {
    match groups.iter_mut().find(|(q, _)| q.id == queue.id) {
        Some((_, ids)) => ids.push(id),
        None => {
            let room = if groups.is_empty() { left.max(1) } else { 1 };
            let mut ids = Vec::with_capacity(room);
            ids.push(id);
            groups.push((queue.clone(), ids));
        }
    }
}

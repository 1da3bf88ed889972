//! `Consumers`: a queue's consumers as its owner shard counts them — each one's prefetch
//! (basic.qos per consumer, capped by the channel-wide limit its channel sends) and the
//! broker's own delivery window — and the choice of who gets the next message: the first
//! registered under single-active-consumer, otherwise the highest consumer priority with
//! room, round-robin among equals.
//!
//! A plain ledger owned by `QueueState`; no I/O.

use super::super::mesh::ConsumerSpec;

pub struct Consumer {
    pub spec: ConsumerSpec,
    /// Deliveries not yet settled, and their body bytes (what prefetch counts).
    pub unacked: u32,
    pub unacked_bytes: u64,
    /// Deliveries (and body bytes) that may still be sent before the consumer's
    /// connection reports earlier ones written: the broker's own flow control,
    /// independent of prefetch (`amqp.consumer_window`, `amqp.consumer_window_bytes`).
    pub window: u32,
    pub window_bytes: u64,
    /// The full window.
    pub window_max: (u32, u64),
    /// channel.flow on.
    pub active: bool,
}

impl Consumer {
    pub fn new(spec: ConsumerSpec, window: (u32, u64)) -> Consumer {
        Consumer {
            spec,
            unacked: 0,
            unacked_bytes: 0,
            window: window.0,
            window_bytes: window.1,
            window_max: window,
            active: true,
        }
    }

    /// Whether a message of `size` body bytes may go to this consumer now.
    pub fn can_take(&self, size: u64) -> bool {
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

    /// Gives back `n` deliveries (`bytes` of bodies) of window.
    pub fn credit(&mut self, n: u32, bytes: u64) {
        self.window = (self.window + n).min(self.window_max.0);
        self.window_bytes = (self.window_bytes + bytes).min(self.window_max.1);
    }
}

#[derive(Default)]
pub struct Consumers {
    list: Vec<Consumer>,
    /// Where the round-robin resumes.
    rr: usize,
}

impl Consumers {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn push(&mut self, c: Consumer) {
        self.list.push(c);
    }

    /// Whether any consumer asked for exclusive use.
    pub fn any_exclusive(&self) -> bool {
        self.list.iter().any(|c| c.spec.exclusive)
    }

    pub fn remove(&mut self, cid: u64) {
        self.list.retain(|c| c.spec.cid != cid);
        if self.rr >= self.list.len() {
            self.rr = 0;
        }
    }

    pub fn get_mut(&mut self, cid: u64) -> Option<&mut Consumer> {
        self.list.iter_mut().find(|c| c.spec.cid == cid)
    }

    pub fn at(&self, i: usize) -> &Consumer {
        &self.list[i]
    }

    pub fn at_mut(&mut self, i: usize) -> &mut Consumer {
        &mut self.list[i]
    }

    pub fn drain(&mut self) -> std::vec::Drain<'_, Consumer> {
        self.rr = 0;
        self.list.drain(..)
    }

    /// Picks the consumer for a message of `size`: single-active-consumer takes the first
    /// registered; otherwise the highest consumer priority with room, round-robin among
    /// equals.
    pub fn pick(&mut self, size: u64, single_active: bool) -> Option<usize> {
        if self.list.is_empty() {
            return None;
        }
        if single_active {
            return self.list[0].can_take(size).then_some(0);
        }
        let n = self.list.len();
        let mut best: Option<usize> = None;
        for i in 0..n {
            let idx = (self.rr + i) % n;
            let c = &self.list[idx];
            if !c.can_take(size) {
                continue;
            }
            match best {
                Some(b) if self.list[b].spec.priority >= c.spec.priority => {}
                _ => best = Some(idx),
            }
        }
        if let Some(b) = best {
            self.rr = (b + 1) % n;
        }
        best
    }
}

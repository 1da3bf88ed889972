//! `Confirms`: one channel's publisher-confirm bookkeeping (confirm.select, and tx.commit,
//! which waits for its publishes the same way). Each tracked publish gets the next
//! sequence number and waits for one confirm per queue it was routed to; it is nacked when
//! any of them refused it. Completed publishes become basic.ack / basic.nack frames:
//! `multiple` for the run below the oldest still pending, one by one above it.
//!
//! A plain ledger owned by `Channel` on the connection's shard; no I/O.

use std::collections::BTreeMap;
use std::time::Instant;

/// One basic.ack or basic.nack to write: (delivery tag = publish seq, multiple, ack).
pub type ConfirmFrame = (u64, bool, bool);

pub struct Confirms {
    next_seq: u64,
    /// seq → (queues still to confirm, nacked by one, when the publish arrived).
    pending: BTreeMap<u64, (u32, bool, Option<Instant>)>,
    /// seq → (acked, when the publish arrived): complete, not yet written.
    done: BTreeMap<u64, (bool, Option<Instant>)>,
}

impl Default for Confirms {
    fn default() -> Self {
        Confirms {
            next_seq: 1,
            pending: BTreeMap::new(),
            done: BTreeMap::new(),
        }
    }
}

impl Confirms {
    /// A ledger whose first publish gets `next_seq` (a channel that moved to another shard
    /// with its connection goes on numbering where it was).
    pub fn starting_at(next_seq: u64) -> Confirms {
        Confirms {
            next_seq: next_seq.max(1),
            ..Confirms::default()
        }
    }

    /// The sequence number the next publish gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Every publish tracked is confirmed to the client: none waits for a queue, none for
    /// its frame to be written.
    pub fn settled(&self) -> bool {
        self.pending.is_empty() && self.done.is_empty()
    }

    /// Registers a publish routed to `queues` queues, received at `received`; returns its
    /// seq. One routed nowhere is complete (acked) at once.
    pub fn track(&mut self, queues: u32, received: Option<Instant>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if queues == 0 {
            self.done.insert(seq, (true, received));
        } else {
            self.pending.insert(seq, (queues, false, received));
        }
        seq
    }

    /// Confirms from queues for these seqs (one each).
    pub fn confirmed(&mut self, seqs: &[u64], ack: bool) {
        for seq in seqs {
            if let Some(p) = self.pending.get_mut(seq) {
                p.0 = p.0.saturating_sub(1);
                p.1 |= !ack;
                if p.0 == 0 {
                    let (nack, received) = (p.1, p.2);
                    self.pending.remove(seq);
                    self.done.insert(*seq, (!nack, received));
                }
            }
        }
    }

    /// Whether every tracked publish up to `seq` has completed.
    pub fn settled_through(&self, seq: u64) -> bool {
        self.pending
            .first_key_value()
            .map(|(s, _)| *s > seq)
            .unwrap_or(true)
    }

    /// Forgets the completed publishes up to `seq` (tx.commit answered them); returns
    /// whether all of them were acked.
    pub fn forget_through(&mut self, seq: u64) -> bool {
        let mut all_ack = true;
        let keep = self.done.split_off(&(seq + 1));
        for (_, (ack, _)) in std::mem::replace(&mut self.done, keep) {
            all_ack &= ack;
        }
        all_ack
    }

    /// Takes the completed publishes as frames, in seq order, and when each arrived (for
    /// the publish latency histogram).
    pub fn take_frames(&mut self) -> (Vec<ConfirmFrame>, Vec<Instant>) {
        if self.done.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let low = self
            .pending
            .first_key_value()
            .map(|(s, _)| *s)
            .unwrap_or(u64::MAX);
        let done = std::mem::take(&mut self.done);
        let received = done.values().filter_map(|(_, r)| *r).collect();
        let mut frames: Vec<ConfirmFrame> = Vec::new();
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
        (frames, received)
    }

    /// The channel closed: nothing is waited for any more.
    pub fn clear(&mut self) {
        self.pending.clear();
        self.done.clear();
    }
}

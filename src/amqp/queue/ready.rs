//! `Ready`: a queue's ready messages, one FIFO per priority level (`x-max-priority`), with
//! their count and body bytes (what `x-max-length` and `x-max-length-bytes` count).
//!
//! A plain ledger owned by `QueueState` on the queue's owner shard: no I/O, no memory
//! accounting (the queue does that as entries come and go). Within a level entries stay in
//! sequence order, so a requeued message goes back to where it was.

use std::collections::VecDeque;

use super::Entry;

pub struct Ready {
    levels: Vec<VecDeque<Entry>>,
    len: usize,
    body_bytes: u64,
}

impl Ready {
    /// A ready list with `levels` priority levels (at least one).
    pub fn new(levels: usize) -> Ready {
        Ready {
            levels: (0..levels.max(1)).map(|_| VecDeque::new()).collect(),
            len: 0,
            body_bytes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Body bytes of the ready messages.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// The level a message of `priority` goes to: priorities above the queue's maximum
    /// count as the maximum.
    fn level_of(&self, priority: u8) -> usize {
        (priority as usize).min(self.levels.len() - 1)
    }

    /// Adds an entry at its place: by sequence within its priority level.
    pub fn insert(&mut self, entry: Entry) {
        let level = self.level_of(entry.msg.priority);
        self.len += 1;
        self.body_bytes += entry.body_len;
        let q = &mut self.levels[level];
        match q.back() {
            Some(last) if last.seq > entry.seq => {
                let at = q.partition_point(|e| e.seq < entry.seq);
                q.insert(at, entry);
            }
            _ => q.push_back(entry),
        }
    }

    fn took(&mut self, e: Entry) -> Entry {
        self.len -= 1;
        self.body_bytes -= e.body_len;
        e
    }

    /// The highest non-empty priority level.
    fn head_level(&self) -> Option<usize> {
        self.levels.iter().rposition(|q| !q.is_empty())
    }

    /// The next message to deliver: the oldest of the highest priority.
    pub fn head(&self) -> Option<&Entry> {
        self.levels[self.head_level()?].front()
    }

    /// Takes the next message to deliver.
    pub fn pop(&mut self) -> Option<Entry> {
        let level = self.head_level()?;
        let e = self.levels[level].pop_front()?;
        Some(self.took(e))
    }

    /// Takes the message drop-head overflow drops first: the oldest of the lowest
    /// non-empty priority.
    pub fn pop_oldest_lowest(&mut self) -> Option<Entry> {
        let level = self.levels.iter().position(|q| !q.is_empty())?;
        let e = self.levels[level].pop_front()?;
        Some(self.took(e))
    }

    /// Takes the expired messages at the head of each level (RabbitMQ expires only at the
    /// head), lowest level first, oldest first.
    pub fn pop_expired(&mut self, now: i64) -> Vec<Entry> {
        let mut out = Vec::new();
        for level in 0..self.levels.len() {
            while let Some(head) = self.levels[level].front() {
                match head.expires_at {
                    Some(t) if t <= now => {}
                    _ => break,
                }
                let Some(e) = self.levels[level].pop_front() else {
                    break;
                };
                out.push(e);
            }
        }
        for e in &out {
            self.len -= 1;
            self.body_bytes -= e.body_len;
        }
        out
    }

    /// When the first message at the head of a level expires.
    pub fn next_expiry(&self) -> Option<i64> {
        self.levels
            .iter()
            .filter_map(|q| q.front().and_then(|e| e.expires_at))
            .min()
    }

    /// The entries of the head level, in delivery order (what a page-in reads).
    pub fn head_level_entries(&self) -> impl Iterator<Item = &Entry> {
        self.head_level()
            .map(|l| self.levels[l].iter())
            .into_iter()
            .flatten()
    }

    /// A ready entry by sequence number.
    pub fn entry_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        for q in self.levels.iter_mut() {
            if let Ok(i) = q.binary_search_by_key(&seq, |e| e.seq) {
                return q.get_mut(i);
            }
        }
        None
    }

    /// Removes a ready entry by sequence number.
    pub fn remove(&mut self, seq: u64) -> Option<Entry> {
        for q in self.levels.iter_mut() {
            if let Ok(i) = q.binary_search_by_key(&seq, |e| e.seq) {
                let e = q.remove(i)?;
                return Some(self.took(e));
            }
        }
        None
    }

    /// Keeps the entries `keep` says to keep (it may change them); returns the others.
    pub fn retain_mut(&mut self, mut keep: impl FnMut(&mut Entry) -> bool) -> Vec<Entry> {
        let mut gone = Vec::new();
        for q in self.levels.iter_mut() {
            let mut kept = VecDeque::with_capacity(q.len());
            for mut e in q.drain(..) {
                if keep(&mut e) {
                    kept.push_back(e);
                } else {
                    gone.push(e);
                }
            }
            *q = kept;
        }
        for e in &gone {
            self.len -= 1;
            self.body_bytes -= e.body_len;
        }
        gone
    }

    /// Takes every ready entry, lowest level first.
    pub fn take_all(&mut self) -> Vec<Entry> {
        let levels = self.levels.len();
        let old = std::mem::replace(
            &mut self.levels,
            (0..levels).map(|_| VecDeque::new()).collect(),
        );
        self.len = 0;
        self.body_bytes = 0;
        old.into_iter().flatten().collect()
    }
}

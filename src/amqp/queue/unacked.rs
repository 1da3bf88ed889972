//! `Unacked`: the messages a queue delivered and has not seen settled, by the queue's
//! delivery id (the id `Delivery` carries and acks, nacks and rejects name), each with the
//! consumer it went to (none for basic.get).
//!
//! A plain ledger owned by `QueueState` on the owner shard. The channel keeps its own
//! ledger of delivery tags (`channel::unacked`); this one is what settles apply to.

use super::Entry;
use crate::util::IdMap;

pub struct Delivered {
    pub entry: Entry,
    /// The consumer it went to; `None` for basic.get.
    pub cid: Option<u64>,
}

#[derive(Default)]
pub struct Unacked {
    by_id: IdMap<u64, Delivered>,
}

impl Unacked {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn insert(&mut self, id: u64, entry: Entry, cid: Option<u64>) {
        self.by_id.insert(id, Delivered { entry, cid });
    }

    pub fn remove(&mut self, id: u64) -> Option<Delivered> {
        self.by_id.remove(&id)
    }

    pub fn entries_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.by_id.values_mut().map(|d| &mut d.entry)
    }

    pub fn drain(&mut self) -> impl Iterator<Item = Entry> + '_ {
        self.by_id.drain().map(|(_, d)| d.entry)
    }
}

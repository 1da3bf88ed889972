//! `Delivered`: which consumer and which record offset each unsettled stream delivery id
//! names, until an ack, nack or reject (or a delivery that never reached its client)
//! settles it. One `queue::deliver` call hands out consecutive ids (the shard's id
//! counter, with no turn in between), so its deliveries are kept as one run — the
//! consumer and the offsets in id order — instead of one map entry per delivery: one
//! allocation per batch, a settle finds its run by an ordered look-up.
//!
//! A plain ledger in `queue::Streams`, on the stream queue's AMQP owner shard.

use std::collections::BTreeMap;

/// An offset slot whose delivery was settled.
const SETTLED: i64 = i64::MIN;

/// The unsettled stream deliveries of one shard.
#[derive(Default)]
pub struct Delivered {
    /// First id of each run → its run.
    runs: BTreeMap<u64, Run>,
}

/// Consecutive delivery ids of one consumer.
struct Run {
    cid: u64,
    /// The record offset of id `first + i`, `SETTLED` once settled.
    offsets: Vec<i64>,
    /// Deliveries of the run not yet settled.
    open: usize,
}

/// Deliveries being handed out by one `queue::deliver` call, recorded with `add`.
pub struct Batch {
    cid: u64,
    first: u64,
    offsets: Vec<i64>,
}

impl Batch {
    pub fn new(cid: u64) -> Batch {
        Batch {
            cid,
            first: 0,
            offsets: Vec::new(),
        }
    }

    /// Delivery `id` of record `offset`; false (nothing recorded) when `id` does not
    /// follow the batch's last one: the caller records the batch and starts another.
    pub fn push(&mut self, id: u64, offset: i64) -> bool {
        if self.offsets.is_empty() {
            self.first = id;
        } else if Some(id) != self.first.checked_add(self.offsets.len() as u64) {
            return false;
        }
        self.offsets.push(offset);
        true
    }
}

impl Delivered {
    /// Records the deliveries of `batch`.
    pub fn add(&mut self, batch: Batch) {
        if batch.offsets.is_empty() {
            return;
        }
        let open = batch.offsets.len();
        self.runs.insert(
            batch.first,
            Run {
                cid: batch.cid,
                offsets: batch.offsets,
                open,
            },
        );
    }

    /// Settles delivery `id`: its consumer and record offset, or None when it is unknown
    /// or was settled already.
    pub fn take(&mut self, id: u64) -> Option<(u64, i64)> {
        let (&first, run) = self.runs.range_mut(..=id).next_back()?;
        let slot = run.offsets.get_mut(usize::try_from(id - first).ok()?)?;
        if *slot == SETTLED {
            return None;
        }
        let offset = std::mem::replace(slot, SETTLED);
        run.open -= 1;
        let cid = run.cid;
        if run.open == 0 {
            self.runs.remove(&first);
        }
        Some((cid, offset))
    }

    /// Unsettled deliveries.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.runs.values().map(|r| r.open).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(cid: u64, ids: std::ops::Range<u64>, offset: i64) -> Batch {
        let mut b = Batch::new(cid);
        for (i, id) in ids.enumerate() {
            assert!(b.push(id, offset + 2 * i as i64));
        }
        b
    }

    #[test]
    fn each_id_is_settled_once_with_its_consumer_and_offset() {
        let mut d = Delivered::default();
        d.add(batch(7, 10..15, 100));
        d.add(batch(8, 15..17, 0));
        d.add(batch(7, 30..31, 500));
        assert_eq!(d.len(), 8);
        assert_eq!(d.take(12), Some((7, 104)));
        assert_eq!(d.take(12), None, "settled already");
        assert_eq!(d.take(16), Some((8, 2)));
        assert_eq!(d.take(15), Some((8, 0)));
        assert_eq!(d.take(17), None, "between runs");
        assert_eq!(d.take(9), None, "before every run");
        assert_eq!(d.take(30), Some((7, 500)));
        assert_eq!(d.take(31), None);
        for id in [10, 11, 13, 14] {
            assert!(d.take(id).is_some());
        }
        assert_eq!(d.len(), 0);
        assert!(d.runs.is_empty(), "settled runs are dropped");
    }

    #[test]
    fn a_gap_in_ids_ends_a_batch() {
        let mut b = Batch::new(1);
        assert!(b.push(5, 0));
        assert!(b.push(6, 1));
        assert!(!b.push(9, 2));
        let mut d = Delivered::default();
        d.add(b);
        d.add(Batch::new(1));
        assert_eq!(d.len(), 2);
        assert_eq!(d.take(6), Some((1, 1)));
    }
}

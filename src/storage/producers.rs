//! Idempotent-producer state of one partition: for every producer id, its epoch and the
//! sequence ranges and offsets of its last five batches. A retried batch is recognised and
//! answered with its first offset instead of being appended again; a gap in sequence
//! numbers or a stale epoch is refused with the error the client expects.
//!
//! It also holds the partition's side of transactions: the ongoing transaction of each
//! transactional producer (the offset of its first batch in it), which gives the last
//! stable offset, and the coordinator epoch of the last marker (a marker from an older
//! coordinator is refused). A transaction begins with the producer's first transactional
//! batch and ends with its marker (`end_txn`); markers skip sequence checks.
//!
//! Part of a `PartitionLog` on its owner shard. Saved to `producers.snapshot` when a
//! segment is sealed and at a clean stop, and rebuilt on recovery from that snapshot plus
//! the batches the recovery scan reads, then cut back to what the disk holds
//! (`forget_from`).

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use rkyv::{Archive, Deserialize, Serialize};

use super::batch::BatchHeader;

/// How many recent batches per producer are remembered (Kafka's window).
const WINDOW: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct BatchRecord {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<BatchRecord>,
    pub last_timestamp: i64,
    /// The coordinator epoch of the last marker written for this producer (-1: none).
    pub coordinator_epoch: i32,
}

/// A transaction a marker ended, kept until the marker is durable: if the disk refuses
/// the marker (`forget_from`), the transaction is ongoing again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct EndedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub marker_offset: i64,
}

/// Why a marker is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerRefusal {
    /// Older than the producer's epoch on this partition.
    StaleEpoch,
    /// From a coordinator older than the one that wrote the last marker.
    CoordinatorFenced,
}

/// What to do with a produced batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not idempotent, or the next batch in sequence: append it.
    Append,
    /// Already appended: answer with this base offset.
    Duplicate(i64),
    OutOfOrder,
    StaleEpoch,
}

#[derive(Debug, Clone, Default, PartialEq, Archive, Serialize, Deserialize)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    /// Ongoing transactions: producer id → offset of its first batch in the transaction.
    ongoing: HashMap<i64, i64>,
    /// Transactions ended by markers not yet known durable, oldest first.
    ended: Vec<EndedTxn>,
}

/// Starts a snapshot file of this layout (one without it is from an older broker and is
/// not read: recovery rebuilds from the log).
const SNAPSHOT_MAGIC: &[u8; 4] = b"PS2\0";

fn batch_epoch(h: &BatchHeader) -> i16 {
    h.producer_epoch
}

fn last_seq(h: &BatchHeader) -> i32 {
    h.base_sequence.wrapping_add(h.last_offset_delta)
}

impl ProducerStates {
    pub fn check(&self, h: &BatchHeader) -> Verdict {
        if h.producer_id < 0 || h.base_sequence < 0 {
            return Verdict::Append;
        }
        let Some(entry) = self.producers.get(&h.producer_id) else {
            return Verdict::Append;
        };
        let epoch = batch_epoch(h);
        if epoch < entry.epoch {
            return Verdict::StaleEpoch;
        }
        if epoch > entry.epoch {
            // A new epoch starts its sequences again at 0.
            return if h.base_sequence == 0 {
                Verdict::Append
            } else {
                Verdict::OutOfOrder
            };
        }
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last_seq(h))
        {
            return Verdict::Duplicate(b.base_offset);
        }
        match entry.batches.back() {
            Some(last)
                if h.base_sequence != last.last_seq.wrapping_add(1)
                    && !(last.last_seq == i32::MAX && h.base_sequence == 0) =>
            {
                Verdict::OutOfOrder
            }
            _ => Verdict::Append,
        }
    }

    /// Forgets the batches at and after `offset` (their append was undone: the disk refused
    /// them), so the producer's retry is appended again instead of being answered as a
    /// duplicate of records that are gone.
    /// Transactions begun at or after `offset` are forgotten; those whose marker was at or
    /// after it are ongoing again.
    pub fn forget_from(&mut self, offset: i64) {
        for entry in self.producers.values_mut() {
            entry.batches.retain(|b| b.base_offset < offset);
        }
        self.producers
            .retain(|_, e| !e.batches.is_empty() || e.coordinator_epoch >= 0);
        self.ongoing.retain(|_, first| *first < offset);
        // Oldest first: a producer's transaction whose marker is undone is open again.
        for t in self.ended.iter().filter(|t| t.marker_offset >= offset) {
            if t.first_offset < offset {
                self.ongoing.entry(t.producer_id).or_insert(t.first_offset);
            }
        }
        self.ended.retain(|t| t.marker_offset < offset);
    }

    /// Forgets ended transactions whose marker lies below `durable` (it cannot be undone).
    pub fn prune_ended(&mut self, durable: i64) {
        self.ended.retain(|t| t.marker_offset >= durable);
    }

    /// Whether a marker of `producer_id` at `epoch` from a coordinator at
    /// `coordinator_epoch` may be written (Kafka's checks: the producer epoch must not go
    /// back, nor the coordinator epoch).
    pub fn check_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        coordinator_epoch: i32,
    ) -> Result<(), MarkerRefusal> {
        let Some(entry) = self.producers.get(&producer_id) else {
            return Ok(());
        };
        if epoch < entry.epoch {
            return Err(MarkerRefusal::StaleEpoch);
        }
        if coordinator_epoch < entry.coordinator_epoch {
            return Err(MarkerRefusal::CoordinatorFenced);
        }
        Ok(())
    }

    /// Records a marker of `producer_id` at `marker_offset`: ends its ongoing transaction
    /// (returning the offset the transaction began at, `None` when none was ongoing) and
    /// raises its epoch to the marker's (a newer epoch fences the producer's older
    /// instance and restarts its sequences).
    pub fn end_txn(
        &mut self,
        producer_id: i64,
        epoch: i16,
        coordinator_epoch: i32,
        marker_offset: i64,
    ) -> Option<i64> {
        let entry = self
            .producers
            .entry(producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch,
                batches: VecDeque::new(),
                last_timestamp: -1,
                coordinator_epoch,
            });
        if epoch > entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        entry.coordinator_epoch = entry.coordinator_epoch.max(coordinator_epoch);
        let first = self.ongoing.remove(&producer_id)?;
        self.ended.push(EndedTxn {
            producer_id,
            first_offset: first,
            marker_offset,
        });
        Some(first)
    }

    /// The first offset of the oldest ongoing transaction: the last stable offset when
    /// there is one.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.values().copied().min()
    }

    /// The ongoing transaction of `producer_id`: the offset it began at.
    pub fn ongoing_txn(&self, producer_id: i64) -> Option<i64> {
        self.ongoing.get(&producer_id).copied()
    }

    /// (producer id, first offset) of every ongoing transaction, by producer id.
    pub fn ongoing_txns(&self) -> Vec<(i64, i64)> {
        let mut out: Vec<(i64, i64)> = self.ongoing.iter().map(|(p, o)| (*p, *o)).collect();
        out.sort_unstable();
        out
    }

    /// The coordinator epoch of the last marker of `producer_id` (-1: none).
    pub fn coordinator_epoch(&self, producer_id: i64) -> i32 {
        self.producers
            .get(&producer_id)
            .map(|e| e.coordinator_epoch)
            .unwrap_or(-1)
    }

    /// Records an appended batch (with its final offsets).
    pub fn record(&mut self, h: &BatchHeader) {
        if h.producer_id >= 0 && h.is_transactional() && !h.is_control() {
            self.ongoing.entry(h.producer_id).or_insert(h.base_offset);
        }
        if h.producer_id < 0 || h.base_sequence < 0 {
            return;
        }
        let epoch = batch_epoch(h);
        let entry = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch,
                batches: VecDeque::new(),
                last_timestamp: -1,
                coordinator_epoch: -1,
            });
        if epoch > entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        let rec = BatchRecord {
            first_seq: h.base_sequence,
            last_seq: last_seq(h),
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
        };
        if entry.batches.iter().any(|b| *b == rec) {
            return;
        }
        entry.batches.push_back(rec);
        while entry.batches.len() > WINDOW {
            entry.batches.pop_front();
        }
        entry.last_timestamp = entry.last_timestamp.max(h.max_timestamp);
    }

    /// (producer id, epoch, last sequence, last timestamp) of every producer.
    pub fn describe(&self) -> Vec<(i64, i16, i32, i64)> {
        let mut out: Vec<_> = self
            .producers
            .iter()
            .map(|(id, e)| {
                (
                    *id,
                    e.epoch,
                    e.batches.back().map(|b| b.last_seq).unwrap_or(-1),
                    e.last_timestamp,
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Writes the snapshot (state as of `offset`) next to the segments.
    pub fn save(&self, dir: &Path, offset: i64) -> std::io::Result<()> {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&(offset, self.clone()))
            .map_err(std::io::Error::other)?;
        let mut framed = Vec::with_capacity(bytes.len() + 8);
        framed.extend_from_slice(SNAPSHOT_MAGIC);
        framed.extend_from_slice(&crc32fast::hash(&bytes).to_be_bytes());
        framed.extend_from_slice(&bytes);
        let tmp = dir.join("producers.snapshot.tmp");
        std::fs::write(&tmp, framed)?;
        std::fs::rename(tmp, dir.join("producers.snapshot"))
    }

    /// Loads the snapshot: the state and the offset it covers; `None` if absent or damaged.
    pub fn load(dir: &Path) -> Option<(i64, ProducerStates)> {
        let data = std::fs::read(dir.join("producers.snapshot")).ok()?;
        let data = data.strip_prefix(SNAPSHOT_MAGIC)?;
        let (crc, body) = data.split_at_checked(4)?;
        if crc32fast::hash(body) != u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return None;
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
        aligned.extend_from_slice(body);
        rkyv::from_bytes::<(i64, ProducerStates), rkyv::rancor::Error>(&aligned).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pid: i64, epoch: i16, seq: i32, n: i32, base: i64) -> BatchHeader {
        BatchHeader {
            base_offset: base,
            size: 100,
            last_offset_delta: n - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            attributes: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            records: n,
        }
    }

    #[test]
    fn duplicates_gaps_and_epochs() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(&h(7, 0, 0, 3, 0)), Verdict::Append);
        s.record(&h(7, 0, 0, 3, 10));
        assert_eq!(s.check(&h(7, 0, 0, 3, 0)), Verdict::Duplicate(10));
        assert_eq!(s.check(&h(7, 0, 5, 1, 0)), Verdict::OutOfOrder);
        assert_eq!(s.check(&h(7, 0, 3, 2, 0)), Verdict::Append);
        s.record(&h(7, 0, 3, 2, 13));
        assert_eq!(s.check(&h(7, 1, 4, 1, 0)), Verdict::OutOfOrder);
        assert_eq!(s.check(&h(7, 1, 0, 1, 0)), Verdict::Append);
        s.record(&h(7, 1, 0, 1, 15));
        assert_eq!(s.check(&h(7, 0, 5, 1, 0)), Verdict::StaleEpoch);
        assert_eq!(s.check(&h(-1, -1, -1, 1, 0)), Verdict::Append);
        let dir = tempfile::tempdir().unwrap();
        s.save(dir.path(), 16).unwrap();
        assert_eq!(ProducerStates::load(dir.path()), Some((16, s)));
    }

    #[test]
    fn forgetting_undone_batches_lets_their_retry_append_again() {
        let mut s = ProducerStates::default();
        s.record(&h(7, 0, 0, 3, 10));
        s.record(&h(7, 0, 3, 2, 13));
        s.record(&h(8, 0, 0, 1, 15));
        s.forget_from(13);
        // Producer 7's second batch is gone: its retry is appended, not a duplicate.
        assert_eq!(s.check(&h(7, 0, 3, 2, 0)), Verdict::Append);
        assert_eq!(s.check(&h(7, 0, 0, 3, 0)), Verdict::Duplicate(10));
        // Producer 8 had nothing below the cut: it is forgotten entirely.
        assert_eq!(s.check(&h(8, 0, 0, 1, 0)), Verdict::Append);
    }

    /// Undoing appends undoes transactions begun in them and markers among them: a
    /// producer whose marker is undone is in its old transaction again, not in the one it
    /// began after the marker.
    #[test]
    fn forgetting_a_marker_reopens_its_transaction() {
        let txn = |pid, seq, base| {
            let mut b = h(pid, 0, seq, 1, base);
            b.attributes = super::super::batch::TRANSACTIONAL_BIT;
            b
        };
        let mut s = ProducerStates::default();
        s.record(&txn(7, 0, 10));
        assert_eq!(s.end_txn(7, 0, 0, 12), Some(10));
        s.record(&txn(7, 1, 14));
        s.record(&txn(8, 0, 15));
        assert_eq!(s.ongoing_txns(), vec![(7, 14), (8, 15)]);
        s.forget_from(11);
        assert_eq!(s.ongoing_txns(), vec![(7, 10)]);
        assert_eq!(s.first_unstable_offset(), Some(10));
        // The marker again (the coordinator's retry) ends it once more.
        assert_eq!(s.end_txn(7, 0, 0, 11), Some(10));
        assert_eq!(s.first_unstable_offset(), None);
        // Once durable, an ended transaction cannot come back.
        s.prune_ended(12);
        s.forget_from(11);
        assert_eq!(s.first_unstable_offset(), None);
    }
}

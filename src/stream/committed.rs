//! Read-committed for AMQP stream consumers: drops, from batches a READ_COMMITTED fetch
//! returned (already cut at the last stable offset by the partition's owner), the batches
//! of aborted transactions, using the fetch's aborted-transactions list as a Kafka
//! consumer with `isolation.level=read_committed` does. Control batches (the markers) are
//! left for `record::records_of`, which skips them.
//!
//! Pure; runs on the stream queue's AMQP owner shard, in each consumer's reader.

use std::collections::HashSet;

use bytes::{Bytes, BytesMut};

use crate::storage::batch::BatchHeader;

/// The batches a read-committed reader may decode.
#[derive(Debug)]
pub struct Committed {
    /// The fetched batches without those of aborted transactions (the same bytes, not a
    /// copy, when nothing was dropped).
    pub batches: Bytes,
    /// The offset after the last batch dropped (`i64::MIN` when none was): a reader that
    /// decoded no record from `batches` moves on to at least here.
    pub skipped_to: i64,
}

/// Drops the batches of aborted transactions from `batches`. `aborted` is the fetch's
/// list of (producer id, first offset) of the aborted transactions overlapping it.
///
/// As Kafka's consumer: a transaction of producer P whose first offset is at or before a
/// batch's last offset is aborted from there on; P's transactional batches are dropped
/// until P's next control batch (the transaction's end marker). Never panics on any
/// bytes: what does not parse as a batch is left in place for the decoder to report.
pub fn committed(batches: Bytes, aborted: &[(i64, i64)]) -> Committed {
    let mut out = Committed {
        batches,
        skipped_to: i64::MIN,
    };
    if aborted.is_empty() {
        return out;
    }
    let mut pending: Vec<(i64, i64)> = aborted.to_vec();
    // Latest first, so the next to take is at the end.
    pending.sort_by_key(|(_, first)| std::cmp::Reverse(*first));
    let mut open: HashSet<i64> = HashSet::new();
    let src = &out.batches;
    let mut kept = BytesMut::new();
    let mut dropped_any = false;
    let mut at = 0usize;
    while at < src.len() {
        let rest = &src[at..];
        let Some(h) = BatchHeader::parse(rest).filter(|h| h.size <= rest.len()) else {
            // A partial or unreadable tail: the decoder deals with it.
            kept.extend_from_slice(rest);
            break;
        };
        let last = h.base_offset.saturating_add(i64::from(h.last_offset_delta));
        while pending.last().is_some_and(|(_, first)| *first <= last) {
            if let Some((pid, _)) = pending.pop() {
                open.insert(pid);
            }
        }
        let drop = if h.is_control() {
            open.remove(&h.producer_id);
            false
        } else {
            h.is_transactional() && open.contains(&h.producer_id)
        };
        if drop {
            dropped_any = true;
            out.skipped_to = out.skipped_to.max(last.saturating_add(1));
        } else {
            kept.extend_from_slice(&rest[..h.size]);
        }
        at += h.size;
    }
    if dropped_any {
        out.batches = kept.freeze();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::record;

    /// A batch of `n` one-byte records at `base`, of producer `pid` (transactional when
    /// `txn`), or a control batch.
    fn batch(base: i64, n: i32, pid: i64, txn: bool, control: bool) -> Vec<u8> {
        use crate::storage::batch::{self, PlainRecord};
        let records = (0..n).map(|_| PlainRecord {
            timestamp: 1,
            key: None,
            value: Some(Bytes::from_static(b"v")),
            headers: batch::Headers::default(),
        });
        let plain = batch::encode_plain_batch(records, kafka_protocol::records::Compression::None)
            .expect("encodes");
        let mut b = batch::assign(&plain, base, None, None).to_vec();
        let mut attributes: i16 = 0;
        if txn {
            attributes |= 0x10;
        }
        if control {
            attributes |= 0x20;
        }
        b[21..23].copy_from_slice(&attributes.to_be_bytes());
        b[43..51].copy_from_slice(&pid.to_be_bytes());
        b
    }

    fn offsets(c: &Committed) -> Vec<i64> {
        let mut budget = usize::MAX;
        record::records_within(
            &c.batches,
            0,
            &mut budget,
            crate::storage::inflate::MAX_INFLATED_BYTES,
        )
        .map(|d| d.records.iter().map(|r| r.offset).collect())
        .unwrap_or_default()
    }

    #[test]
    fn aborted_transactions_are_dropped_and_committed_kept() {
        let mut log = Vec::new();
        log.extend(batch(0, 2, -1, false, false)); // 0, 1 plain
        log.extend(batch(2, 2, 7, true, false)); // 2, 3 of txn 7 (committed)
        log.extend(batch(4, 1, 7, true, true)); // 4 commit marker
        log.extend(batch(5, 2, 8, true, false)); // 5, 6 of txn 8 (aborted)
        log.extend(batch(7, 1, 9, false, false)); // 7 plain, other producer
        log.extend(batch(8, 1, 8, true, true)); // 8 abort marker
        log.extend(batch(9, 1, 8, true, false)); // 9: producer 8's next txn, not aborted
        let c = committed(Bytes::from(log.clone()), &[(8, 5)]);
        assert_eq!(offsets(&c), vec![0, 1, 2, 3, 7, 9]);
        assert_eq!(c.skipped_to, 7);
        let all = committed(Bytes::from(log), &[]);
        assert_eq!(all.skipped_to, i64::MIN);
        assert_eq!(offsets(&all), vec![0, 1, 2, 3, 5, 6, 7, 9]);
    }

    #[test]
    fn garbage_is_left_for_the_decoder() {
        let mut log = batch(0, 1, 3, true, false);
        log.extend([1, 2, 3]);
        let c = committed(Bytes::from(log), &[(3, 0)]);
        assert_eq!(&c.batches[..], &[1, 2, 3]);
        assert_eq!(c.skipped_to, 1);
        let c = committed(Bytes::from_static(&[0xff; 70]), &[(3, 0)]);
        assert_eq!(c.batches.len(), 70);
    }
}

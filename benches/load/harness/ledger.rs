//! Loss detection: which messages the broker accepted and which came back, per producer
//! sequence number, and the verdict (lost, duplicated, unexpected).
//!
//! Producers keep a `Sequences` of what the broker acknowledged (Kafka delivery report,
//! AMQP confirm, or — without confirms — the publish written to the socket); each
//! consumer keeps a `Receipts` of what it got, per copy (a copy is one queue of a fanout;
//! Kafka and plain AMQP have one). The main thread merges them after the run: no locks
//! while messages flow.

use serde::{Deserialize, Serialize};

/// A growable set of sequence numbers (one bit each).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sequences {
    words: Vec<u64>,
    len: u64,
}

impl Sequences {
    /// Adds `seq`; false when it was already there.
    pub fn insert(&mut self, seq: u32) -> bool {
        let (w, bit) = (seq as usize / 64, 1u64 << (seq % 64));
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let fresh = self.words[w] & bit == 0;
        self.words[w] |= bit;
        self.len += u64::from(fresh);
        fresh
    }

    pub fn contains(&self, seq: u32) -> bool {
        self.words
            .get(seq as usize / 64)
            .is_some_and(|w| w & (1u64 << (seq % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Adds every member of `other`; returns how many were already here.
    pub fn union(&mut self, other: &Sequences) -> u64 {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        let mut overlap = 0u64;
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            overlap += u64::from((*mine & theirs).count_ones());
            *mine |= theirs;
        }
        self.len = self.len + other.len - overlap;
        overlap
    }

    /// Members of `self` missing from `other`, in order.
    pub fn missing_from<'a>(&'a self, other: &'a Sequences) -> impl Iterator<Item = u32> + 'a {
        self.words.iter().enumerate().flat_map(move |(w, mine)| {
            let theirs = other.words.get(w).copied().unwrap_or(0);
            let mut left = mine & !theirs;
            std::iter::from_fn(move || {
                if left == 0 {
                    return None;
                }
                let bit = left.trailing_zeros();
                left &= left - 1;
                Some(w as u32 * 64 + bit)
            })
        })
    }
}

/// What one consumer received: per copy, per producer, the sequences seen.
#[derive(Clone, Debug, Default)]
pub struct Receipts {
    copies: Vec<Vec<Sequences>>,
    /// Seen twice by this same consumer.
    pub duplicates: u64,
    /// Messages without our header (put there by someone else).
    pub foreign: u64,
}

impl Receipts {
    /// Records a message; false when this consumer had already seen it.
    pub fn record(&mut self, copy: usize, producer: u16, seq: u32) -> bool {
        if copy >= self.copies.len() {
            self.copies.resize_with(copy + 1, Vec::new);
        }
        let per_producer = &mut self.copies[copy];
        let p = producer as usize;
        if p >= per_producer.len() {
            per_producer.resize_with(p + 1, Sequences::default);
        }
        let fresh = per_producer[p].insert(seq);
        self.duplicates += u64::from(!fresh);
        fresh
    }

    /// Folds another consumer's receipts in; a message both saw is a duplicate.
    pub fn merge(&mut self, other: &Receipts) {
        if other.copies.len() > self.copies.len() {
            self.copies.resize_with(other.copies.len(), Vec::new);
        }
        for (mine, theirs) in self.copies.iter_mut().zip(&other.copies) {
            if theirs.len() > mine.len() {
                mine.resize_with(theirs.len(), Sequences::default);
            }
            for (m, t) in mine.iter_mut().zip(theirs) {
                self.duplicates += m.union(t);
            }
        }
        self.duplicates += other.duplicates;
        self.foreign += other.foreign;
    }

    /// Distinct messages received, over all copies.
    pub fn distinct(&self) -> u64 {
        self.copies.iter().flatten().map(Sequences::len).sum()
    }

    fn get(&self, copy: usize, producer: usize) -> Option<&Sequences> {
        self.copies.get(copy)?.get(producer)
    }
}

/// The loss verdict of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Acknowledged by the broker × copies: what consumers had to get.
    pub expected: u64,
    /// Distinct messages received (over all copies).
    pub received: u64,
    /// Acknowledged but never received.
    pub lost: u64,
    /// Received more than once.
    pub duplicates: u64,
    /// Received although the broker never acknowledged it (e.g. a send that timed out).
    pub unacknowledged_received: u64,
    /// Messages that did not carry the harness's header.
    pub foreign: u64,
    /// Up to ten lost messages as "copy/producer/sequence", to look for in broker logs.
    pub lost_examples: Vec<String>,
}

/// Compares what the broker acknowledged (`acked[producer]`) with what came back.
pub fn verify(acked: &[Sequences], copies: usize, receipts: &Receipts) -> Verdict {
    let empty = Sequences::default();
    let mut v = Verdict {
        received: receipts.distinct(),
        duplicates: receipts.duplicates,
        foreign: receipts.foreign,
        ..Verdict::default()
    };
    for copy in 0..copies.max(1) {
        for (p, sent) in acked.iter().enumerate() {
            v.expected += sent.len();
            let got = receipts.get(copy, p).unwrap_or(&empty);
            for seq in sent.missing_from(got) {
                v.lost += 1;
                if v.lost_examples.len() < 10 {
                    v.lost_examples.push(format!("{copy}/{p}/{seq}"));
                }
            }
            v.unacknowledged_received += got.missing_from(sent).count() as u64;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(range: impl IntoIterator<Item = u32>) -> Sequences {
        let mut s = Sequences::default();
        for i in range {
            s.insert(i);
        }
        s
    }

    #[test]
    fn sequences_union_and_difference() {
        let mut a = seqs(0..100);
        let b = seqs(50..300);
        assert_eq!(a.union(&b), 50);
        assert_eq!(a.len(), 300);
        let c = seqs((0..300).filter(|i| i % 97 != 0));
        assert_eq!(
            a.missing_from(&c).collect::<Vec<_>>(),
            vec![0, 97, 194, 291]
        );
        assert!(!c.contains(97) && c.contains(98));
    }

    #[test]
    fn everything_back_is_clean() {
        let acked = vec![seqs(0..1000), seqs(0..10)];
        let mut r1 = Receipts::default();
        let mut r2 = Receipts::default();
        for i in 0..1000 {
            let r = if i % 2 == 0 { &mut r1 } else { &mut r2 };
            r.record(0, 0, i);
        }
        for i in 0..10 {
            r2.record(0, 1, i);
        }
        r1.merge(&r2);
        let v = verify(&acked, 1, &r1);
        assert_eq!(
            (v.expected, v.received, v.lost, v.duplicates),
            (1010, 1010, 0, 0)
        );
    }

    #[test]
    fn one_missing_message_is_found_and_named() {
        let acked = vec![seqs(0..500)];
        let mut r = Receipts::default();
        for i in (0..500).filter(|i| *i != 321) {
            r.record(0, 0, i);
        }
        let v = verify(&acked, 1, &r);
        assert_eq!(v.lost, 1);
        assert_eq!(v.lost_examples, vec!["0/0/321".to_owned()]);
    }

    #[test]
    fn fanout_needs_every_copy() {
        let acked = vec![seqs(0..100)];
        let mut r = Receipts::default();
        for copy in 0..4 {
            for i in 0..100 {
                if !(copy == 3 && i == 42) {
                    r.record(copy, 0, i);
                }
            }
        }
        let v = verify(&acked, 4, &r);
        assert_eq!((v.expected, v.received, v.lost), (400, 399, 1));
        assert_eq!(v.lost_examples, vec!["3/0/42".to_owned()]);
    }

    #[test]
    fn duplicates_within_and_across_consumers_and_unacknowledged() {
        let acked = vec![seqs(0..10)];
        let mut a = Receipts::default();
        let mut b = Receipts::default();
        assert!(a.record(0, 0, 1));
        assert!(!a.record(0, 0, 1));
        b.record(0, 0, 1);
        for i in 0..12 {
            b.record(0, 0, i);
        }
        a.merge(&b);
        let v = verify(&acked, 1, &a);
        // a saw 1 twice; b saw 1 twice; a and b both saw 1.
        assert_eq!(v.duplicates, 3);
        assert_eq!(v.unacknowledged_received, 2);
        assert_eq!(v.lost, 0);
    }
}

//! The aborted-transaction index of one segment (`<base>.txnindex`, Kafka's layout): one
//! entry per transaction aborted by a marker in that segment — producer id, the offset the
//! transaction began at, the offset of its abort marker, and the last stable offset right
//! after the marker.
//!
//! Part of a `Segment` on the partition's owner shard. A read_committed Fetch returns the
//! entries that overlap what it reads, so a client can drop the aborted records; the
//! entries live and die with their segment (retention removes both). Written beside the
//! segment's other index files when it is sealed and at a clean stop; after a crash the
//! recovery scan rebuilds the entries of the part of the segment it reads.

/// One aborted transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The offset of the abort marker.
    pub last_offset: i64,
    pub last_stable_offset: i64,
}

/// Bytes of one entry: version i16 (0) | producer id i64 | first offset i64 | last offset
/// i64 | last stable offset i64.
pub const ENTRY_LEN: usize = 34;

fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// The file contents for `entries`.
pub fn encode(entries: &[AbortedTxn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&e.producer_id.to_be_bytes());
        out.extend_from_slice(&e.first_offset.to_be_bytes());
        out.extend_from_slice(&e.last_offset.to_be_bytes());
        out.extend_from_slice(&e.last_stable_offset.to_be_bytes());
    }
    out
}

/// The entries of a file; `None` when its length or an entry's version is wrong (the
/// caller then rebuilds it by scanning).
pub fn decode(data: &[u8]) -> Option<Vec<AbortedTxn>> {
    if !data.len().is_multiple_of(ENTRY_LEN) {
        return None;
    }
    data.chunks_exact(ENTRY_LEN)
        .map(|c| {
            (i16::from_be_bytes([c[0], c[1]]) == 0).then(|| AbortedTxn {
                producer_id: i64_at(c, 2),
                first_offset: i64_at(c, 10),
                last_offset: i64_at(c, 18),
                last_stable_offset: i64_at(c, 26),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_refused() {
        let entries = vec![
            AbortedTxn {
                producer_id: 7,
                first_offset: 10,
                last_offset: 15,
                last_stable_offset: 16,
            },
            AbortedTxn {
                producer_id: 9,
                first_offset: 12,
                last_offset: 20,
                last_stable_offset: 21,
            },
        ];
        let data = encode(&entries);
        assert_eq!(data.len(), 2 * ENTRY_LEN);
        assert_eq!(decode(&data), Some(entries));
        assert_eq!(decode(&data[..ENTRY_LEN + 3]), None);
        let mut bad = data.clone();
        bad[1] = 1;
        assert_eq!(decode(&bad), None);
        assert_eq!(decode(&[]), Some(Vec::new()));
    }
}

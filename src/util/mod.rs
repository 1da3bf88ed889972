//! Leaf helpers every layer may use and which use nothing of the broker: `Notify` (a
//! single-shard wake-up), `now_ms`, `stable_hash` and the ownership hashes built on it, and
//! `ShardIds` (ids unique in the process, minted on one shard).
//!
//! Nothing here names a protocol, the runtime or storage; runs on whichever shard calls it.

pub mod notify;

use std::cell::Cell;

/// A log line at most once a second, for lines a client can cause at will (refused
/// connections, failed logins, ACL denials): the lines held back are counted and named in
/// the next one, so the log cannot be flooded while nothing goes unmentioned. One per kind
/// of line and shard (keep it in a `thread_local!`).
pub struct LogLimit {
    last_ms: Cell<i64>,
    unlogged: Cell<u64>,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new()
    }
}

impl LogLimit {
    pub const fn new() -> LogLimit {
        LogLimit {
            last_ms: Cell::new(i64::MIN),
            unlogged: Cell::new(0),
        }
    }

    /// Logs `line()` as a warning, unless one was logged in the last second.
    pub fn warn(&self, line: impl FnOnce() -> String) {
        let now = now_ms();
        if now.saturating_sub(self.last_ms.get()) < 1000 {
            self.unlogged.set(self.unlogged.get() + 1);
            return;
        }
        self.last_ms.set(now);
        match self.unlogged.replace(0) {
            0 => log::warn!("{}", line()),
            n => log::warn!("{} (and {n} more like it in the last second)", line()),
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The hash of a map keyed by ids the broker hands out itself (delivery ids): one
/// multiplication. Not for keys a client picks; those keep std's seeded SipHash.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Ids are integers (`write_u64`); anything else is folded in a byte at a time.
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // The table takes a bucket from the low bits (for consecutive ids, products of an
        // odd constant with consecutive numbers: all distinct) and a tag from the top
        // seven, which the multiplication mixes from every bit.
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by broker-assigned ids, hashed with `IdHasher`.
pub type IdMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// `a == b` for names compared once per message. Two empty names are equal without a
/// call to `memcmp`: `==` calls it even for empty slices, and glibc's AVX-512 `memcmp`
/// then does a masked load from the empty slice's dangling address (page 0), which the
/// processor completes through a microcode assist, costing as much as the rest of a
/// publish's routing (a profile put 4 % of the broker's CPU at 16 B there, for the
/// default exchange's empty name).
pub fn same_name(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// FNV-1a: a hash that never changes between builds or runs, for ownership.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The owner shard of a topic partition: the topic's hash picks a starting shard and the
/// partitions of one topic follow round-robin, so a topic spreads evenly.
pub fn partition_owner(topic: &str, partition: i32, shards: usize) -> usize {
    let shards = shards.max(1) as u64;
    ((stable_hash(topic.as_bytes()) % shards + partition.max(0) as u64) % shards) as usize
}

/// Ids unique in the process, minted on one shard: the shard in the high 16 bits, a
/// counter below. Which shard minted an id (`ShardIds::shard_of`) is where its owner lives.
pub struct ShardIds {
    shard: usize,
    next: Cell<u64>,
}

impl ShardIds {
    pub fn new(shard: usize) -> ShardIds {
        ShardIds {
            shard,
            next: Cell::new(1),
        }
    }

    pub fn next(&self) -> u64 {
        let n = self.next.get();
        self.next.set(n + 1);
        ((self.shard as u64) << 48) | n
    }

    /// The shard that minted `id`.
    pub fn shard_of(id: u64) -> usize {
        (id >> 48) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_is_string_equality() {
        let names = ["", "a", "b", "ab", "amq.direct", "amq.direcT", "é"];
        for a in names {
            for b in names {
                assert_eq!(same_name(a, b), a == b, "{a:?} {b:?}");
            }
        }
        // An empty `String` and an empty literal point at different dangling addresses.
        assert!(same_name(String::new().as_str(), ""));
    }

    #[test]
    fn partitions_of_a_topic_spread_over_shards() {
        let owners: Vec<usize> = (0..6).map(|p| partition_owner("orders", p, 2)).collect();
        assert_eq!(owners.iter().filter(|o| **o == 0).count(), 3);
        assert_eq!(
            partition_owner("orders", 3, 2),
            partition_owner("orders", 3, 2)
        );
        assert!((0..100).all(|p| partition_owner("x", p, 1) == 0));
    }

    #[test]
    fn ids_name_the_shard_that_minted_them() {
        let ids = ShardIds::new(3);
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert_eq!(ShardIds::shard_of(a), 3);
        assert_eq!(ShardIds::shard_of(b), 3);
    }
}

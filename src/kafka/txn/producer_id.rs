//! Producer ids: unique without coordination. The allocating shard's wall clock in
//! milliseconds, its id and a counter, so ids are never reused across restarts as long as
//! the clock does not go back. Used by InitProducerId for idempotent producers (on the
//! connection's shard) and by the transaction coordinator (on the transactional id's
//! shard).

use std::cell::Cell;

thread_local! {
    /// (last millisecond used, ids handed out in it) on this shard's thread.
    static CLOCK: Cell<(i64, i64)> = const { Cell::new((0, 0)) };
}

const PER_MS: i64 = 64;
const SHARDS: i64 = 64;

pub fn allocate(shard: usize) -> i64 {
    CLOCK.with(|c| {
        let (last, n) = c.get();
        let now = crate::storage::log::now_ms().max(last);
        let (ms, n) = if now > last {
            (now, 0)
        } else if n + 1 < PER_MS {
            (last, n + 1)
        } else {
            (last + 1, 0)
        };
        c.set((ms, n));
        (ms * SHARDS + shard as i64 % SHARDS) * PER_MS + n
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_increasing() {
        let ids: Vec<i64> = (0..1000).map(|_| allocate(1)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_ne!(allocate(0) % (SHARDS * PER_MS) / PER_MS, 1);
    }
}

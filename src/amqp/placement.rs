//! Which shard owns a queue, and where a new queue goes.
//!
//! A queue's owner is its incarnation id modulo the shard count (`queue_owner`), so the
//! catalog needs no owner field: placing a queue is choosing its id (`queue_id`). Every
//! shard computes the same owner from its catalog replica; after a restart with another
//! shard count the queue directories move to their new owners (`store::migrate`).
//!
//! By default a new queue goes to the shard owning the fewest queues, and among those to
//! the shard of the connection that declares it (RabbitMQ's `balanced` locator, with a
//! preference for the declaring connection). An application whose connection declares the
//! queue it consumes from then usually pays no cross-shard hop for deliveries and acks,
//! while the queues one connection declares still spread over every shard (all of them on
//! one core would make that core the broker's limit: a fanout to four queues declared by
//! one connection ran at a third of the rate so). The queue arguments RabbitMQ documents
//! choose otherwise: `x-queue-leader-locator` (`client-local`, `balanced`) and the older
//! `x-queue-master-locator` (`client-local`, `min-masters`, `random`), parsed and checked
//! (406 on any other value) with the other arguments (`catalog::amqp::arguments::Locator`).
//! An exclusive queue is always on its connection's shard: only that connection may
//! consume from it.
//!
//! Pure functions, called by the declaring connection's shard (`methods::queue`) and by
//! every shard that routes to or recovers a queue.

pub use crate::catalog::amqp::arguments::Locator;

/// The owner shard of the queue whose incarnation id is `id`.
pub fn queue_owner(id: u64, shards: usize) -> usize {
    (id % shards.max(1) as u64) as usize
}

/// An incarnation id owned by shard `owner` of `shards`, random in its other bits (from
/// `seed`, e.g. `catalog::new_topic_id(name)`).
pub fn queue_id(owner: usize, shards: usize, seed: [u8; 16]) -> u64 {
    let shards = shards.max(1) as u64;
    let mut first = [0u8; 8];
    first.copy_from_slice(&seed[..8]);
    // Halved so that rounding down to a multiple of `shards` and adding the owner cannot
    // overflow.
    let r = u64::from_be_bytes(first) >> 1;
    r - r % shards + (owner as u64 % shards)
}

/// The shard a new queue goes to: `local` is the declaring connection's shard, `owned[s]`
/// the queues shard `s` owns now, `random` any number (used by `Locator::Random`).
pub fn choose(locator: Locator, local: usize, owned: &[usize], random: u64) -> usize {
    let shards = owned.len().max(1);
    let local = local.min(shards - 1);
    let count = |s: usize| owned.get(s).copied().unwrap_or(0);
    // The least loaded shard, the local one when it ties.
    let least = (0..shards)
        .min_by_key(|&s| (count(s), s != local))
        .unwrap_or(local);
    match locator {
        Locator::ClientLocal => local,
        Locator::Balanced => least,
        Locator::Random => (random % shards as u64) as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_chosen_for_a_shard_is_owned_by_it() {
        for shards in [1, 2, 3, 7, 64] {
            for owner in 0..shards {
                for seed in [[0u8; 16], [0xff; 16], [0x5a; 16]] {
                    let id = queue_id(owner, shards, seed);
                    assert_eq!(queue_owner(id, shards), owner, "{shards} {owner} {seed:?}");
                }
            }
        }
        // Different seeds give different ids on the same owner.
        assert_ne!(queue_id(1, 2, [1; 16]), queue_id(1, 2, [2; 16]));
    }

    #[test]
    fn balanced_prefers_the_local_shard_among_the_least_loaded() {
        assert_eq!(choose(Locator::Balanced, 1, &[0, 0], 0), 1);
        assert_eq!(choose(Locator::Balanced, 1, &[0, 1], 0), 0);
        assert_eq!(choose(Locator::Balanced, 0, &[5, 3, 2], 0), 2);
        assert_eq!(choose(Locator::Balanced, 1, &[5, 2, 2], 0), 1);
        // One connection declaring many queues spreads them evenly over the shards.
        let mut owned = vec![0usize; 3];
        for _ in 0..999 {
            let s = choose(Locator::Balanced, 0, &owned, 0);
            owned[s] += 1;
        }
        assert_eq!(owned, [333, 333, 333]);
    }

    #[test]
    fn explicit_locators() {
        assert_eq!(choose(Locator::ClientLocal, 1, &[0, 500], 0), 1);
        assert_eq!(choose(Locator::Balanced, 1, &[4, 5], 0), 0);
        assert_eq!(choose(Locator::Balanced, 1, &[4, 4], 0), 1);
        assert_eq!(choose(Locator::Random, 0, &[0, 0, 0], 5), 2);
        // A local shard beyond the count (a stale actor) is clamped.
        assert_eq!(choose(Locator::ClientLocal, 9, &[0, 0], 0), 1);
    }
}

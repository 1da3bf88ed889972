//! The bytes a shard's queues hold in memory, a message several of them share counted
//! once.
//!
//! A message routed to several queues is one allocation (`Message` is shared), so the
//! shard's memory budget (`amqp.memory_budget_bytes`) counts it once however many of the
//! shard's queues hold it. A message marked as routed to many (`Message::routed_to_many`)
//! carries a tally per shard of that shard's queues holding it (`Message::held_tally`,
//! written only by its shard): the first hold adds its size, the last let-go takes it
//! away. A message one queue holds, the common case, is counted as it is taken and let
//! go, with no tally; so is a shared one on a shard past `message::HELD_SLOTS`. A message
//! queues of two shards hold is counted on each.
//!
//! A queue takes a message when it enters the queue (`take` for a publish, which also
//! decides whether its body pages out; `hold` for one coming back: requeued, recovered)
//! and lets go of it (`let_go`) when it leaves (acked, dropped, expired, dead-lettered,
//! deleted), and around any change to a held message's parts (a body paged out or back
//! in). Moving between the ready list and the unacked ledger is neither.
//!
//! Paging a shared body frees its memory only once every holder on the shard has paged
//! it, so the first queue of the shard to take a shared message decides for the shard's
//! other queues that take it: all page it, or none.
//!
//! Runs on the queue's owner shard, inside `QueueState`'s calls.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::amqp::message::Message;

/// In a tally: the message's body pages out on this shard (its first holder's choice).
const PAGES: u32 = 1 << 31;

thread_local! {
    /// This shard's slot in a shared message's tallies (`set_shard`; 0 in tests).
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Names the shard this thread runs (once, when its AMQP state is made).
pub fn set_shard(id: usize) {
    SLOT.with(|s| s.set(id));
}

/// This shard's tally of the queues holding `msg`, for a shared message. Only this shard
/// writes it, so a load and a store (no read-modify-write) keep it exact.
fn tally(msg: &Message) -> Option<&AtomicU32> {
    msg.held_tally(SLOT.with(Cell::get))
}

/// A queue of this shard takes a published `msg`: the bytes that adds to the shard's
/// memory, and whether its body pages out to disk. `over(bytes)` says whether that many
/// more bytes go past the shard's budget; a shared message a queue of this shard holds
/// already adds none and pages as its first holder chose.
pub fn take(msg: &Message, over: impl FnOnce(usize) -> bool) -> (isize, bool) {
    let Some(t) = tally(msg) else {
        return (msg.size() as isize, over(msg.size()));
    };
    let now = t.load(Ordering::Relaxed);
    if now & !PAGES > 0 {
        t.store(now + 1, Ordering::Relaxed);
        return (0, now & PAGES != 0);
    }
    let pages = over(msg.size());
    t.store(if pages { PAGES | 1 } else { 1 }, Ordering::Relaxed);
    (msg.size() as isize, pages)
}

/// A queue of this shard takes `msg` back (requeued, recovered, its parts changed): the
/// bytes that adds to the shard's memory.
pub fn hold(msg: &Message) -> isize {
    let Some(t) = tally(msg) else {
        return msg.size() as isize;
    };
    let now = t.load(Ordering::Relaxed);
    t.store(now + 1, Ordering::Relaxed);
    if now & !PAGES == 0 {
        msg.size() as isize
    } else {
        0
    }
}

/// A queue of this shard lets go of `msg` (before dropping or changing it): the bytes that
/// leave the shard's memory.
pub fn let_go(msg: &Message) -> isize {
    let Some(t) = tally(msg) else {
        return msg.size() as isize;
    };
    let now = t.load(Ordering::Relaxed);
    match now & !PAGES {
        // Not taken through `take` or `hold`: counted as it was taken, in full.
        0 => msg.size() as isize,
        1 => {
            t.store(0, Ordering::Relaxed);
            msg.size() as isize
        }
        _ => {
            t.store(now - 1, Ordering::Relaxed);
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::message::{MessageData, Parts};
    use bytes::Bytes;

    fn message(body: &'static [u8]) -> Message {
        Message::new(MessageData {
            parts: Parts::apart(
                Bytes::new(),
                Bytes::from_static(b"rk"),
                Bytes::new(),
                Bytes::from_static(body),
            ),
            persistent: false,
            priority: 0,
            expiration: None,
        })
    }

    #[test]
    fn a_message_many_queues_share_counts_once_until_the_last_lets_go() {
        let mut m = message(b"0123456789");
        m.routed_to_many();
        let (a, b, c) = (m.clone(), m.clone(), m.clone());
        assert_eq!(
            take(&a, |bytes| bytes > 10),
            (12, true),
            "the first decides"
        );
        assert_eq!(take(&b, |_| false), (0, true), "held already: pages too");
        assert_eq!(hold(&c), 0, "a requeue");
        assert_eq!(let_go(&a), 0, "still held by the other queues");
        assert_eq!(let_go(&c), 0);
        assert_eq!(let_go(&b), 12, "the last");
        assert_eq!(tally(&a).map(|t| t.load(Ordering::Relaxed)), Some(0));
        // Taken again after all let go: counted again, decided again.
        assert_eq!(take(&a, |_| false), (12, false));
        assert_eq!(let_go(&a), 12);
    }

    #[test]
    fn a_message_one_queue_holds_and_a_copy_count_in_full() {
        let one = message(b"abc");
        assert_eq!(take(&one, |bytes| bytes == 5), (5, true));
        assert_eq!(hold(&one), 5);
        assert_eq!(hold(&one), 5, "unmarked: no tally");
        assert_eq!(let_go(&one), 5);
        // A message marked once others share it stays unmarked.
        let mut shared = message(b"abcd");
        let other = shared.clone();
        shared.routed_to_many();
        assert!(tally(&shared).is_none());
        drop(other);
        // A marked message's copy (an edit while shared) is its holder's own.
        let mut many = message(b"abcdef");
        many.routed_to_many();
        let kept = many.clone();
        assert_eq!(hold(&kept), 8);
        let mut copy = many.clone();
        copy.edit().priority = 1;
        assert!(tally(&copy).is_none());
        assert_eq!(hold(&copy), 8);
        assert_eq!(let_go(&copy), 8);
        assert_eq!(let_go(&kept), 8);
        assert_eq!(tally(&kept).map(|t| t.load(Ordering::Relaxed)), Some(0));
        // A shard past the tallied ones counts a shared message in full.
        set_shard(crate::amqp::message::HELD_SLOTS);
        assert_eq!(take(&kept, |_| false), (8, false));
        assert_eq!(hold(&kept), 8);
        assert_eq!(let_go(&kept), 8);
        set_shard(0);
    }
}

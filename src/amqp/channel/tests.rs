//! Unit tests of the channel's ledgers: delivery tags and acks, the channel-wide prefetch
//! and its held deliveries, per-consumer limits sent to owners, publisher confirms. No
//! connection, no shard.

use std::sync::Arc;

use bytes::Bytes;

use super::confirms::Confirms;
use super::consumers::ConsumerInfo;
use super::unacked::Unacked;
use crate::amqp::mesh::Delivery;
use crate::amqp::message::{Message, MessageData, Parts};
use crate::amqp::reply;
use crate::amqp::routing::QueueRef;
use crate::amqp::AmqpError;

fn queue(name: &str, id: u64) -> QueueRef {
    QueueRef {
        vhost: "/".into(),
        name: name.into(),
        id,
        owner: 0,
    }
}

/// What `Unacked::record` is given for these deliveries: (id, body bytes).
fn sizes(items: &[Delivery]) -> impl ExactSizeIterator<Item = (u64, u64)> + '_ {
    items.iter().map(|d| (d.id, d.msg.body().len() as u64))
}

fn delivery(id: u64, body: &str) -> Delivery {
    Delivery {
        id,
        msg: Message::new(MessageData {
            parts: Parts::apart(
                Bytes::new(),
                Bytes::new(),
                Bytes::new(),
                Bytes::copy_from_slice(body.as_bytes()),
            ),
            persistent: false,
            priority: 0,
            expiration: None,
        }),
        redelivered: false,
        stream_offset: None,
    }
}

fn ids(taken: &[(QueueRef, Vec<u64>)]) -> Vec<(u64, Vec<u64>)> {
    taken.iter().map(|(q, ids)| (q.id, ids.clone())).collect()
}

fn code(e: AmqpError) -> u16 {
    match e {
        AmqpError::Channel { code, .. } | AmqpError::Connection { code, .. } => code,
    }
}

#[test]
fn delivery_tags_count_up_from_one_across_deliveries_and_gets() {
    let mut u = Unacked::default();
    let q = queue("q", 1);
    assert_eq!(
        u.record(
            &q,
            sizes(&[delivery(10, "a"), delivery(11, "b")]),
            false,
            true,
            0
        ),
        [1, 2]
    );
    assert_eq!(
        u.record(&q, sizes(&[delivery(12, "c")]), true, true, 0),
        [3]
    );
    assert_eq!(
        u.record(&q, sizes(&[delivery(13, "d")]), false, false, 0),
        [4]
    );
    assert_eq!(u.next_tag(), 5);
}

#[test]
fn ack_single_multiple_and_all() {
    let mut u = Unacked::default();
    let (a, b) = (queue("a", 1), queue("b", 2));
    u.record(
        &a,
        sizes(&[delivery(10, "x"), delivery(11, "x")]),
        false,
        true,
        0,
    );
    u.record(&b, sizes(&[delivery(20, "x")]), false, true, 0);
    u.record(&a, sizes(&[delivery(12, "x")]), false, true, 0);
    // Tag 2 alone (inside a transaction: the tags taken come back).
    let (taken, tags) = u.take(2, false, true).unwrap_or_default();
    assert_eq!((ids(&taken), tags), (vec![(1, vec![11])], vec![2]));
    // Multiple up to 3: tags 1 and 3 (2 is settled already), grouped per queue.
    let (taken, tags) = u.take(3, true, true).unwrap_or_default();
    assert_eq!(ids(&taken), [(1, vec![10]), (2, vec![20])]);
    assert_eq!(tags, [1, 3]);
    // Multiple with tag 0: everything left; outside a transaction no tags come back.
    let (taken, tags) = u.take(0, true, false).unwrap_or_default();
    assert_eq!(ids(&taken), [(1, vec![12])]);
    assert!(tags.is_empty());
    assert_eq!(u.oldest_ms(), None);
}

#[test]
fn unknown_or_twice_acked_tags_are_precondition_failed() {
    let mut u = Unacked::default();
    let q = queue("q", 1);
    u.record(
        &q,
        sizes(&[delivery(10, "x"), delivery(11, "x")]),
        false,
        true,
        0,
    );
    assert_eq!(
        u.take(9, false, false).map_err(code).err(),
        Some(reply::PRECONDITION_FAILED)
    );
    assert!(u.take(1, false, false).is_ok());
    assert_eq!(
        u.take(1, false, false).map_err(code).err(),
        Some(reply::PRECONDITION_FAILED)
    );
    assert_eq!(
        u.take(1, true, false).map_err(code).err(),
        Some(reply::PRECONDITION_FAILED)
    );
    // A no_ack delivery has a tag but nothing to ack.
    let t = u.record(&q, sizes(&[delivery(12, "x")]), true, true, 0);
    assert_eq!(
        u.take(t[0], false, false).map_err(code).err(),
        Some(reply::PRECONDITION_FAILED)
    );
}

#[test]
fn a_transaction_keeps_settled_tags_until_rollback_restores_them() {
    let mut u = Unacked::default();
    let q = queue("q", 1);
    u.record(
        &q,
        sizes(&[delivery(10, "x"), delivery(11, "x")]),
        false,
        true,
        5,
    );
    let (_, tags) = u.take(2, true, true).unwrap_or_default();
    assert_eq!(tags, [1, 2]);
    assert_eq!(u.oldest_ms(), None);
    u.unsettle(&tags);
    assert_eq!(u.oldest_ms(), Some(5));
    // Everything unsettled goes back on close or recover.
    assert_eq!(ids(&u.take_all()), [(1, vec![10, 11])]);
}

#[test]
fn global_prefetch_holds_deliveries_until_acks_make_room_in_arrival_order() {
    let mut u = Unacked::default();
    let (a, b) = (queue("a", 1), queue("b", 2));
    u.set_global(2, 0);
    assert!(u.must_hold(true));
    u.hold(100, &a, vec![delivery(1, "a1"), delivery(2, "a2")]);
    u.hold(200, &b, vec![delivery(1, "b1")]);
    u.hold(100, &a, vec![delivery(3, "a3")]);
    // Room for two: both of consumer 100's first deliveries, in one batch.
    let Some((cid, q, items)) = u.next_release() else {
        panic!("nothing released")
    };
    assert_eq!((cid, q.id, items.len()), (100, 1, 2));
    u.record(&q, sizes(&items), false, true, 0);
    assert!(
        u.next_release().is_none(),
        "the channel-wide window is full"
    );
    // One ack: room for one, and the oldest held (consumer 200's) goes first.
    u.take(1, false, false).unwrap_or_default();
    let Some((cid, q, items)) = u.next_release() else {
        panic!("nothing released")
    };
    assert_eq!((cid, items.len()), (200, 1));
    u.record(&q, sizes(&items), false, true, 0);
    assert!(u.next_release().is_none());
    u.take(0, true, false).unwrap_or_default();
    let released = u.next_release().map(|(cid, _, items)| (cid, items.len()));
    assert_eq!(released, Some((100, 1)));
}

#[test]
fn global_prefetch_by_bytes_always_lets_one_through() {
    let mut u = Unacked::default();
    let q = queue("q", 1);
    u.set_global(0, 4);
    u.hold(1, &q, vec![delivery(1, "123456"), delivery(2, "1")]);
    let Some((_, _, items)) = u.next_release() else {
        panic!("nothing released")
    };
    assert_eq!(
        items.len(),
        1,
        "a delivery bigger than the window goes alone"
    );
    u.record(&q, sizes(&items), false, true, 0);
    assert!(u.next_release().is_none());
}

#[test]
fn basic_get_is_not_counted_against_global_prefetch() {
    let mut u = Unacked::default();
    let q = queue("q", 1);
    u.set_global(1, 0);
    u.record(&q, sizes(&[delivery(1, "got")]), false, false, 0);
    u.hold(7, &q, vec![delivery(2, "x")]);
    assert!(u.next_release().is_some());
}

#[test]
fn without_global_prefetch_or_with_flow_on_nothing_is_held() {
    let mut u = Unacked::default();
    assert!(!u.must_hold(true));
    assert!(u.must_hold(false), "flow off holds deliveries");
    let q = queue("q", 1);
    u.hold(1, &q, vec![delivery(1, "x")]);
    u.hold(2, &q, vec![delivery(2, "y")]);
    assert!(u.must_hold(true), "later deliveries queue behind held ones");
    assert_eq!(u.unhold(1).len(), 1);
    assert_eq!(u.next_release().map(|r| r.0), Some(2));
}

#[test]
fn a_consumer_s_owner_limit_is_its_prefetch_capped_by_the_channel_s() {
    let c = ConsumerInfo::new(Arc::from("t"), queue("q", 1), false, (10, 0));
    assert_eq!(c.owner_limits((0, 0)), (10, 0));
    assert_eq!(c.owner_limits((3, 0)), (3, 0));
    assert_eq!(c.owner_limits((30, 500)), (10, 500));
    let unlimited = ConsumerInfo::new(Arc::from("u"), queue("q", 1), false, (0, 0));
    assert_eq!(unlimited.owner_limits((5, 0)), (5, 0));
}

#[test]
fn confirms_ack_runs_as_multiple_and_later_ones_singly() {
    let mut c = Confirms::default();
    let s: Vec<u64> = (0..4).map(|_| c.track(1, None)).collect();
    assert_eq!(s, [1, 2, 3, 4]);
    // 1 and 2 confirmed, 3 pending, 4 confirmed.
    c.confirmed(&[1, 2, 4], true);
    let (frames, _) = c.take_frames();
    assert_eq!(frames, [(2, true, true), (4, false, true)]);
    c.confirmed(&[3], true);
    assert_eq!(c.take_frames().0, [(3, true, true)]);
    assert!(c.take_frames().0.is_empty());
}

#[test]
fn a_publish_to_several_queues_is_nacked_when_one_refuses() {
    let mut c = Confirms::default();
    let seq = c.track(3, None);
    c.confirmed(&[seq], true);
    c.confirmed(&[seq], false);
    assert!(c.take_frames().0.is_empty(), "waits for every queue");
    assert!(!c.settled_through(seq));
    c.confirmed(&[seq], true);
    assert!(c.settled_through(seq));
    assert_eq!(c.take_frames().0, [(1, true, false)]);
}

#[test]
fn acks_and_nacks_are_not_merged_into_one_multiple() {
    let mut c = Confirms::default();
    for _ in 0..4 {
        c.track(1, None);
    }
    c.confirmed(&[1, 2], true);
    c.confirmed(&[3], false);
    c.confirmed(&[4], true);
    assert_eq!(
        c.take_frames().0,
        [(2, true, true), (3, true, false), (4, true, true)]
    );
}

#[test]
fn an_unroutable_publish_is_acked_at_once() {
    let mut c = Confirms::default();
    let seq = c.track(0, None);
    assert!(c.settled_through(seq));
    assert_eq!(c.take_frames().0, [(1, true, true)]);
}

#[test]
fn tx_commit_forgets_completed_publishes_and_reports_a_nack() {
    let mut c = Confirms::default();
    let a = c.track(1, None);
    let b = c.track(1, None);
    c.confirmed(&[a], true);
    c.confirmed(&[b], false);
    assert!(!c.forget_through(b));
    assert!(c.take_frames().0.is_empty());
    let d = c.track(1, None);
    c.confirmed(&[d], true);
    assert!(c.forget_through(d));
}

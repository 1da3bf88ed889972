//! Unit tests of the queue state machine: no shard, no sockets. A recording fake stands in
//! for the message store; the clock is an argument.

use std::cell::RefCell;
use std::sync::Arc;

use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::Bytes;

use super::*;
use crate::amqp::message::{decode_headers, scan_properties, MessageData, Parts};
use crate::catalog::amqp::arguments::{Overflow, QueueArgs};
use crate::catalog::amqp::tables::{encode_table, int_value, str_value};
use crate::storage::journal::{Durable, Outcome};

/// What the queue asked of the store, in order.
#[derive(Debug, Clone, PartialEq)]
enum Stored {
    Append {
        seq: u64,
        confirm: bool,
        transient: bool,
    },
    Ack(u64),
    Delivered(u64),
}

#[derive(Default)]
struct FakeStore {
    calls: RefCell<Vec<Stored>>,
}

impl StoreHandle for FakeStore {
    fn append(
        &self,
        _q: &QueueRef,
        e: &Entry,
        transient: bool,
        synced: bool,
    ) -> (Location, Durable) {
        self.calls.borrow_mut().push(Stored::Append {
            seq: e.seq,
            confirm: synced,
            transient,
        });
        let loc = Location {
            segment: 0,
            offset: e.seq * 100,
            len: 100,
        };
        (loc, Durable::settled(Outcome::Pending))
    }
    fn ack(&self, _q: &QueueRef, seq: u64) {
        self.calls.borrow_mut().push(Stored::Ack(seq));
    }
    fn delivered(&self, _q: &QueueRef, seq: u64) {
        self.calls.borrow_mut().push(Stored::Delivered(seq));
    }
}

/// The store writes a call handed over: (seq, confirm seq waiting on it, page out).
fn store_waits(fx: &Effects) -> Vec<(u64, Option<u64>, bool)> {
    fx.list
        .iter()
        .filter_map(|e| match e {
            Effect::Stored(s) => Some((s.seq, s.confirm.map(|c| c.seq), s.page)),
            _ => None,
        })
        .collect()
}

const LIMITS: Limits = Limits {
    consumer_window: 1000,
    consumer_window_bytes: 1 << 30,
    memory_budget: 1 << 30,
};

/// A queue under test, its store, its clock and the memory its effects account.
struct Rig {
    q: QueueState,
    store: FakeStore,
    now: i64,
    limits: Limits,
    memory: isize,
}

impl Rig {
    fn new(args: QueueArgs) -> Rig {
        Rig::with(args, false, Vec::new())
    }

    fn with(args: QueueArgs, durable: bool, arguments: Vec<u8>) -> Rig {
        let qref = QueueRef {
            vhost: "/".into(),
            name: "q".into(),
            id: 7,
            owner: 0,
        };
        let def = Queue {
            name: "q".into(),
            id: 7,
            durable,
            exclusive_owner: None,
            auto_delete: false,
            arguments,
            args,
        };
        Rig {
            q: QueueState::new(qref, def, 1_000),
            store: FakeStore::default(),
            now: 1_000,
            limits: LIMITS,
            memory: 0,
        }
    }

    /// Runs one call with an `Env` at the rig's clock; returns its effects (memory is
    /// accounted in the rig).
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut QueueState, &Env, &mut Effects) -> R,
    ) -> (R, Effects) {
        let mut fx = Effects::default();
        let env = Env {
            now: self.now,
            limits: self.limits,
            memory: self.memory.max(0) as usize,
            store: &self.store,
        };
        let r = f(&mut self.q, &env, &mut fx);
        self.memory += fx.memory;
        (r, fx)
    }

    fn publish(&mut self, m: Message) -> Effects {
        self.call(|q, env, fx| q.publish(env, fx, m, None)).1
    }

    fn publish_confirmed(&mut self, m: Message, seq: u64) -> Effects {
        let c = ConfirmTo {
            shard: 1,
            conn: 9,
            channel: 1,
            seq,
        };
        self.call(|q, env, fx| q.publish(env, fx, m, Some(c))).1
    }

    fn consume(&mut self, spec: ConsumerSpec) -> Effects {
        let (r, fx) = self.call(|q, env, fx| q.consume(env, fx, spec));
        assert!(r.is_ok());
        fx
    }

    fn settle(&mut self, ids: Vec<u64>, how: Settle) -> Effects {
        self.call(|q, env, fx| q.settle(env, fx, ids, how)).1
    }

    fn stored(&self) -> Vec<Stored> {
        self.store.calls.borrow().clone()
    }
}

fn msg(body: &str) -> Message {
    Message::new(MessageData {
        parts: Parts::apart(
            Bytes::from_static(b"ex"),
            Bytes::from_static(b"rk"),
            Bytes::from(
                gen_properties(&AMQPProperties::default())(Vec::new().into())
                    .map(|c| c.into_inner().0)
                    .unwrap_or_default(),
            ),
            Bytes::copy_from_slice(body.as_bytes()),
        ),
        persistent: false,
        priority: 0,
        expiration: None,
    })
}

fn with_priority(mut m: Message, p: u8) -> Message {
    m.edit().priority = p;
    m
}

fn consumer(cid: u64, prefetch_count: u32) -> ConsumerSpec {
    ConsumerSpec {
        cid,
        shard: 1,
        conn: 9,
        channel: 1,
        tag: Arc::from(format!("c{cid}").as_str()),
        no_ack: false,
        prefetch_count,
        prefetch_bytes: 0,
        priority: 0,
        exclusive: false,
        stream_offset: None,
        stream_group: None,
        stream_filter: None,
    }
}

/// Deliveries in the effects: (consumer id, body, redelivered, delivery id).
fn deliveries(fx: &Effects) -> Vec<(u64, String, bool, u64)> {
    let mut out = Vec::new();
    for e in &fx.list {
        if let Effect::Send {
            op: ConnOp::Deliver { cid, items, .. },
            ..
        } = e
        {
            for d in items {
                out.push((
                    *cid,
                    String::from_utf8_lossy(d.msg.body()).into_owned(),
                    d.redelivered,
                    d.id,
                ));
            }
        }
    }
    out
}

fn bodies(fx: &Effects) -> Vec<String> {
    deliveries(fx).into_iter().map(|d| d.1).collect()
}

/// Confirms in the effects: (publish seq, ack).
fn confirms(fx: &Effects) -> Vec<(u64, bool)> {
    let mut out = Vec::new();
    for e in &fx.list {
        if let Effect::Send {
            op: ConnOp::Confirm { seqs, ack, .. },
            ..
        } = e
        {
            out.extend(seqs.iter().map(|s| (*s, *ack)));
        }
    }
    out
}

fn dead_letters(fx: &Effects) -> Vec<&dead_letter::DeadLetter> {
    fx.list
        .iter()
        .filter_map(|e| match e {
            Effect::DeadLetter(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// The one dead-lettered message in the effects: its body and its `x-death` reason.
fn one_dead_letter(fx: &Effects) -> (String, Option<String>) {
    let dl = dead_letters(fx);
    assert_eq!(dl.len(), 1, "one dead-lettered message");
    let m = &dl[0].msg;
    let body = String::from_utf8_lossy(m.body()).into_owned();
    (body, text(&first_death(m), "reason"))
}

fn headers(m: &Message) -> FieldTable {
    scan_properties(m.properties())
        .and_then(|v| v.headers)
        .map(decode_headers)
        .unwrap_or_default()
}

/// The first `x-death` entry of a dead-lettered message.
fn first_death(m: &Message) -> FieldTable {
    let h = headers(m);
    let Some(AMQPValue::FieldArray(a)) = h.inner().get("x-death") else {
        panic!("no x-death header");
    };
    match a.as_slice().first() {
        Some(AMQPValue::FieldTable(t)) => t.clone(),
        other => panic!("x-death entry is {other:?}"),
    }
}

fn text(t: &FieldTable, k: &str) -> Option<String> {
    t.inner().get(k).and_then(str_value)
}

fn dlx_args() -> QueueArgs {
    QueueArgs {
        dead_letter_exchange: Some("dlx".into()),
        dead_letter_routing_key: Some("dead".into()),
        ..QueueArgs::default()
    }
}

#[test]
fn higher_priority_is_delivered_first_fifo_within_a_priority() {
    let mut r = Rig::new(QueueArgs {
        max_priority: Some(5),
        ..QueueArgs::default()
    });
    r.publish(with_priority(msg("low-1"), 1));
    r.publish(with_priority(msg("top-1"), 5));
    r.publish(with_priority(msg("low-2"), 1));
    // Above x-max-priority counts as the maximum.
    r.publish(with_priority(msg("top-2"), 9));
    r.publish(with_priority(msg("none"), 0));
    let fx = r.consume(consumer(1, 0));
    assert_eq!(bodies(&fx), ["top-1", "top-2", "low-1", "low-2", "none"]);
}

#[test]
fn without_x_max_priority_priorities_are_ignored() {
    let mut r = Rig::new(QueueArgs::default());
    r.publish(with_priority(msg("a"), 0));
    r.publish(with_priority(msg("b"), 9));
    let fx = r.consume(consumer(1, 0));
    assert_eq!(bodies(&fx), ["a", "b"]);
}

#[test]
fn prefetch_count_stops_deliveries_until_acks_make_room() {
    let mut r = Rig::new(QueueArgs::default());
    for i in 0..5 {
        r.publish(msg(&format!("m{i}")));
    }
    let fx = r.consume(consumer(1, 2));
    let got = deliveries(&fx);
    assert_eq!(bodies(&fx), ["m0", "m1"]);
    assert_eq!(r.q.ready_len(), 3);
    assert_eq!(r.q.unacked_len(), 2);
    // One ack, one more delivery.
    let fx = r.settle(vec![got[0].3], Settle::Ack);
    assert_eq!(bodies(&fx), ["m2"]);
    assert_eq!(r.q.unacked_len(), 2);
    // A new publish waits for room too.
    let fx = r.publish(msg("m5"));
    assert!(deliveries(&fx).is_empty());
}

#[test]
fn prefetch_size_counts_body_bytes_but_always_lets_one_through() {
    let mut r = Rig::new(QueueArgs::default());
    r.publish(msg("123456"));
    r.publish(msg("123456"));
    let mut spec = consumer(1, 0);
    spec.prefetch_bytes = 10;
    let fx = r.consume(spec);
    assert_eq!(deliveries(&fx).len(), 1);
    let id = deliveries(&fx)[0].3;
    let fx = r.settle(vec![id], Settle::Ack);
    assert_eq!(deliveries(&fx).len(), 1);
}

#[test]
fn channel_limits_and_flow_from_the_channel_apply_to_its_consumer() {
    // The channel sends the consumer's limits capped by its channel-wide prefetch
    // (basic.qos global) and the flow state (channel.flow) as `set_limits`.
    let mut r = Rig::new(QueueArgs::default());
    let fx = r.consume(consumer(1, 0));
    assert!(deliveries(&fx).is_empty());
    let (_, fx) = r.call(|q, env, fx| q.set_limits(env, fx, 1, 1, 0, true));
    assert!(deliveries(&fx).is_empty());
    r.publish(msg("a"));
    let fx = r.publish(msg("b"));
    assert!(
        deliveries(&fx).is_empty(),
        "channel-wide limit of 1 is full"
    );
    // Flow off: nothing more, even with room.
    let (_, fx) = r.call(|q, env, fx| q.set_limits(env, fx, 1, 10, 0, false));
    assert!(deliveries(&fx).is_empty());
    let fx = r.settle(vec![1], Settle::Ack);
    assert!(deliveries(&fx).is_empty());
    let (_, fx) = r.call(|q, env, fx| q.set_limits(env, fx, 1, 10, 0, true));
    assert_eq!(bodies(&fx), ["b"]);
}

#[test]
fn equal_consumers_take_turns_and_a_higher_priority_one_goes_first() {
    let mut r = Rig::new(QueueArgs::default());
    r.consume(consumer(1, 0));
    r.consume(consumer(2, 0));
    let mut turns = Vec::new();
    for i in 0..4 {
        let fx = r.publish(msg(&format!("m{i}")));
        turns.extend(deliveries(&fx).into_iter().map(|d| d.0));
    }
    assert_eq!(turns, [1, 2, 1, 2]);
    let mut high = consumer(3, 1);
    high.priority = 10;
    r.consume(high);
    let fx = r.publish(msg("to-3"));
    assert_eq!(deliveries(&fx)[0].0, 3);
    // Consumer 3 is full (prefetch 1): the others take turns again.
    let fx = r.publish(msg("next"));
    assert_ne!(deliveries(&fx)[0].0, 3);
}

/// Publishes taken together (one envelope's run to this queue) give the consumers what
/// the same publishes one by one give them: the same bodies, to the same consumers in
/// turn, with the same delivery ids, and every confirm.
#[test]
fn publishes_taken_together_are_delivered_as_one_by_one() {
    let confirm = |seq| ConfirmTo {
        shard: 1,
        conn: 9,
        channel: 1,
        seq,
    };
    let rigs = || {
        let mut r = Rig::new(QueueArgs::default());
        r.consume(consumer(1, 2));
        r.consume(consumer(2, 3));
        r
    };
    let mut apart = rigs();
    let mut one_by_one = Vec::new();
    let mut confirmed = Vec::new();
    for i in 0..8u64 {
        let fx = apart
            .call(|q, env, fx| q.publish(env, fx, msg(&format!("m{i}")), Some(confirm(i))))
            .1;
        one_by_one.extend(deliveries(&fx));
        confirmed.extend(confirms(&fx));
    }
    let mut together = rigs();
    assert!(together.q.takes_publishes_together());
    let msgs = (0..8u64).map(|i| (msg(&format!("m{i}")), Some(confirm(i))));
    let fx = together.call(|q, env, fx| q.publish_all(env, fx, msgs)).1;
    // Five fit the two consumers' prefetch; three stay ready.
    assert_eq!(one_by_one.len(), 5);
    // Grouped by consumer (a batch each), the same deliveries by id.
    let mut got = deliveries(&fx);
    got.sort_by_key(|d| d.3);
    assert_eq!(got, one_by_one);
    assert_eq!(confirms(&fx), confirmed);
    assert_eq!(fx.enqueued, 8);
    assert_eq!(together.memory, apart.memory);
    // One batch of deliveries per consumer, not one per message.
    let sends = fx
        .list
        .iter()
        .filter(|e| {
            matches!(
                e,
                Effect::Send {
                    op: ConnOp::Deliver { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(sends, 2);
    // The rest follow as acks make room, the same in both.
    let a = apart.settle(vec![1, 2, 3, 4, 5], Settle::Ack);
    let t = together.settle(vec![1, 2, 3, 4, 5], Settle::Ack);
    let mut rest = bodies(&t);
    rest.sort();
    assert_eq!(rest, ["m5", "m6", "m7"]);
    assert_eq!(deliveries(&t), deliveries(&a));
    assert_eq!(together.memory, apart.memory);
}

/// A queue whose taking of a message depends on the deliveries before it takes each
/// publish on its own: a length limit (a delivery makes room) or priorities.
#[test]
fn limited_and_priority_queues_take_publishes_one_by_one() {
    assert!(Rig::new(QueueArgs::default()).q.takes_publishes_together());
    for args in [
        QueueArgs {
            max_length: Some(10),
            ..QueueArgs::default()
        },
        QueueArgs {
            max_length_bytes: Some(1 << 20),
            ..QueueArgs::default()
        },
        QueueArgs {
            max_priority: Some(5),
            ..QueueArgs::default()
        },
    ] {
        assert!(
            !Rig::new(args.clone()).q.takes_publishes_together(),
            "{args:?}"
        );
    }
}

#[test]
fn single_active_consumer_gets_everything_while_it_has_room() {
    let mut r = Rig::new(QueueArgs {
        single_active_consumer: true,
        ..QueueArgs::default()
    });
    r.consume(consumer(1, 2));
    r.consume(consumer(2, 0));
    let mut to = Vec::new();
    for i in 0..3 {
        to.extend(
            deliveries(&r.publish(msg(&format!("m{i}"))))
                .into_iter()
                .map(|d| d.0),
        );
    }
    assert_eq!(to, [1, 1]);
    assert_eq!(r.q.ready_len(), 1);
}

#[test]
fn exclusive_consumer_refuses_others() {
    let mut r = Rig::new(QueueArgs::default());
    let mut ex = consumer(1, 0);
    ex.exclusive = true;
    r.consume(ex);
    let (res, _) = r.call(|q, env, fx| q.consume(env, fx, consumer(2, 0)));
    assert_eq!(res.map_err(|e| e.0), Err(reply::ACCESS_REFUSED));
}

#[test]
fn nack_requeue_puts_messages_back_in_order_marked_redelivered() {
    let mut r = Rig::new(QueueArgs::default());
    for i in 0..3 {
        r.publish(msg(&format!("m{i}")));
    }
    let fx = r.consume(consumer(1, 3));
    let ids: Vec<u64> = deliveries(&fx).iter().map(|d| d.3).collect();
    assert!(deliveries(&fx).iter().all(|d| !d.2));
    // Requeue the last two, newest first: they come back in their original order, after
    // nothing (m0 is still unacked) and before anything published later.
    r.publish(msg("m3"));
    let fx = r.settle(vec![ids[2], ids[1]], Settle::Requeue);
    // Prefetch 3 with one unacked: two go out again, the oldest first.
    let got = deliveries(&fx);
    assert_eq!(
        got.iter().map(|d| (d.1.as_str(), d.2)).collect::<Vec<_>>(),
        [("m1", true), ("m2", true)]
    );
    // A redelivery gets a new delivery id.
    assert!(got.iter().all(|d| !ids.contains(&d.3)));
}

#[test]
fn a_delivery_that_never_reached_the_client_comes_back_not_redelivered() {
    let mut r = Rig::new(QueueArgs::default());
    r.publish(msg("m0"));
    let fx = r.consume(consumer(1, 0));
    let id = deliveries(&fx)[0].3;
    r.call(|q, env, fx| q.cancel(env, fx, 1));
    let fx = r.settle(vec![id], Settle::Return);
    assert!(deliveries(&fx).is_empty());
    let fx = r.consume(consumer(2, 0));
    assert_eq!(
        deliveries(&fx)
            .iter()
            .map(|d| (d.1.as_str(), d.2))
            .collect::<Vec<_>>(),
        [("m0", false)]
    );
}

#[test]
fn reject_without_requeue_dead_letters_as_rejected() {
    let mut r = Rig::new(dlx_args());
    r.publish(msg("m0"));
    let fx = r.consume(consumer(1, 0));
    let id = deliveries(&fx)[0].3;
    let fx = r.settle(vec![id], Settle::Reject);
    let dl = dead_letters(&fx);
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].exchange, "dlx");
    assert_eq!(dl[0].msg.routing_key(), b"dead");
    assert_eq!(dl[0].msg.exchange(), b"dlx");
    assert_eq!(
        text(&first_death(&dl[0].msg), "reason").as_deref(),
        Some("rejected")
    );
    assert_eq!(r.q.unacked_len(), 0);
    assert_eq!(r.q.ready_len(), 0);
}

#[test]
fn reject_without_a_dead_letter_exchange_drops() {
    let mut r = Rig::new(QueueArgs::default());
    r.publish(msg("m0"));
    let fx = r.consume(consumer(1, 0));
    let fx = r.settle(vec![deliveries(&fx)[0].3], Settle::Reject);
    assert!(dead_letters(&fx).is_empty());
    assert_eq!(r.q.ready_len() + r.q.unacked_len(), 0);
}

#[test]
fn message_ttl_expires_the_head_and_dead_letters_it_with_x_death() {
    let mut r = Rig::new(QueueArgs {
        message_ttl: Some(100),
        ..dlx_args()
    });
    let fx = r.publish(msg("old"));
    // A timer is asked for when the head expires.
    assert!(fx.list.iter().any(|e| matches!(e, Effect::WakeAt(1_100))));
    r.now = 1_050;
    r.publish(msg("young"));
    r.now = 3_100;
    let (_, fx) = r.call(|q, env, fx| q.timer_fired(env, fx, 1_100));
    let dl = dead_letters(&fx);
    assert_eq!(dl.len(), 2);
    let m = &dl[0].msg;
    assert_eq!(m.body(), b"old");
    assert_eq!(m.routing_key(), b"dead");
    let death = first_death(m);
    // As RabbitMQ writes it: queue, reason, count, exchange, routing-keys, time.
    assert_eq!(text(&death, "queue").as_deref(), Some("q"));
    assert_eq!(text(&death, "reason").as_deref(), Some("expired"));
    assert_eq!(death.inner().get("count").and_then(int_value), Some(1));
    assert_eq!(text(&death, "exchange").as_deref(), Some("ex"));
    match death.inner().get("routing-keys") {
        Some(AMQPValue::FieldArray(a)) => {
            assert_eq!(a.as_slice().len(), 1);
            assert_eq!(str_value(&a.as_slice()[0]).as_deref(), Some("rk"));
        }
        other => panic!("routing-keys is {other:?}"),
    }
    assert_eq!(death.inner().get("time"), Some(&AMQPValue::Timestamp(3)));
    let h = headers(m);
    assert_eq!(
        h.inner()
            .get("x-first-death-reason")
            .and_then(str_value)
            .as_deref(),
        Some("expired")
    );
    assert_eq!(
        h.inner()
            .get("x-first-death-queue")
            .and_then(str_value)
            .as_deref(),
        Some("q")
    );
    assert_eq!(r.q.ready_len(), 0);
}

#[test]
fn per_message_expiration_and_queue_ttl_take_the_smaller() {
    let mut r = Rig::new(QueueArgs {
        message_ttl: Some(1_000),
        ..dlx_args()
    });
    let mut m = msg("short");
    m.edit().expiration = Some(10);
    let fx = r.publish(m);
    assert!(fx.list.iter().any(|e| matches!(e, Effect::WakeAt(1_010))));
    r.now = 1_010;
    let fx = r.consume(consumer(1, 0));
    assert!(
        deliveries(&fx).is_empty(),
        "an expired head is never delivered"
    );
    assert_eq!(dead_letters(&fx).len(), 1);
}

#[test]
fn ttl_expires_only_at_the_head() {
    // RabbitMQ expires messages only at the head: a short-lived message behind a
    // long-lived one waits for it.
    let mut r = Rig::new(dlx_args());
    let mut long = msg("long");
    long.edit().expiration = Some(10_000);
    let mut short = msg("short");
    short.edit().expiration = Some(10);
    r.publish(long);
    r.publish(short);
    r.now = 2_000;
    let (_, fx) = r.call(|q, env, fx| q.run(env, fx));
    assert!(dead_letters(&fx).is_empty());
    assert_eq!(r.q.ready_len(), 2);
}

#[test]
fn expiry_without_a_dead_letter_exchange_drops_and_acks_the_stored_copy() {
    let mut r = Rig::with(
        QueueArgs {
            message_ttl: Some(5),
            ..QueueArgs::default()
        },
        true,
        Vec::new(),
    );
    let mut m = msg("p");
    m.edit().persistent = true;
    r.publish(m);
    r.now = 2_000;
    let (_, fx) = r.call(|q, env, fx| q.run(env, fx));
    assert!(dead_letters(&fx).is_empty());
    assert_eq!(r.q.ready_len(), 0);
    assert!(r.stored().contains(&Stored::Ack(0)));
}

#[test]
fn drop_head_drops_the_oldest_and_dead_letters_it_as_maxlen() {
    let mut r = Rig::new(QueueArgs {
        max_length: Some(2),
        ..dlx_args()
    });
    r.publish(msg("m0"));
    r.publish(msg("m1"));
    let fx = r.publish(msg("m2"));
    assert_eq!(one_dead_letter(&fx), ("m0".into(), Some("maxlen".into())));
    assert_eq!(r.q.ready_len(), 2);
    let fx = r.consume(consumer(1, 0));
    assert_eq!(bodies(&fx), ["m1", "m2"]);
}

#[test]
fn drop_head_by_bytes_and_lowest_priority_first() {
    let mut r = Rig::new(QueueArgs {
        max_length_bytes: Some(8),
        max_priority: Some(2),
        ..QueueArgs::default()
    });
    r.publish(with_priority(msg("hi01"), 2));
    r.publish(with_priority(msg("lo01"), 0));
    // 12 bytes: the oldest message of the lowest priority goes.
    r.publish(with_priority(msg("hi02"), 2));
    assert_eq!(r.q.ready_len(), 2);
    let fx = r.consume(consumer(1, 0));
    assert_eq!(bodies(&fx), ["hi01", "hi02"]);
    assert_eq!(r.memory, (2 * msg("hi01").size()) as isize);
}

#[test]
fn reject_publish_nacks_the_new_message_and_keeps_the_old() {
    let mut r = Rig::new(QueueArgs {
        max_length: Some(1),
        overflow: Overflow::RejectPublish,
        ..dlx_args()
    });
    let fx = r.publish_confirmed(msg("m0"), 1);
    assert_eq!(confirms(&fx), [(1, true)]);
    let fx = r.publish_confirmed(msg("m1"), 2);
    assert_eq!(confirms(&fx), [(2, false)]);
    assert!(
        dead_letters(&fx).is_empty(),
        "reject-publish does not dead-letter"
    );
    assert_eq!(r.q.ready_len(), 1);
    // Only ready messages count: once m0 is delivered there is room again.
    let fx = r.consume(consumer(1, 0));
    assert_eq!(bodies(&fx), ["m0"]);
    let fx = r.publish_confirmed(msg("m2"), 3);
    assert_eq!(confirms(&fx), [(3, true)]);
}

#[test]
fn reject_publish_dlx_nacks_and_dead_letters_the_new_message() {
    let mut r = Rig::new(QueueArgs {
        max_length_bytes: Some(4),
        overflow: Overflow::RejectPublishDlx,
        ..dlx_args()
    });
    r.publish_confirmed(msg("abcd"), 1);
    let fx = r.publish_confirmed(msg("e"), 2);
    assert_eq!(confirms(&fx), [(2, false)]);
    assert_eq!(one_dead_letter(&fx), ("e".into(), Some("maxlen".into())));
    assert_eq!(r.q.ready_len(), 1);
}

#[test]
fn persistent_messages_on_durable_queues_are_confirmed_by_the_store() {
    let mut r = Rig::with(QueueArgs::default(), true, Vec::new());
    let mut p = msg("p");
    p.edit().persistent = true;
    let fx = r.publish_confirmed(p, 1);
    // No confirm yet: it waits on the store's durability future (fdatasync).
    assert!(confirms(&fx).is_empty());
    assert_eq!(store_waits(&fx), [(0, Some(1), false)]);
    assert_eq!(
        r.stored(),
        [Stored::Append {
            seq: 0,
            confirm: true,
            transient: false
        }]
    );
    // A transient message is confirmed at once and not written.
    let fx = r.publish_confirmed(msg("t"), 2);
    assert_eq!(confirms(&fx), [(2, true)]);
    assert_eq!(r.stored().len(), 1);
    // Delivered, then acked: the store records both.
    let fx = r.consume(consumer(1, 0));
    let ids: Vec<u64> = deliveries(&fx).iter().map(|d| d.3).collect();
    r.settle(ids, Settle::Ack);
    assert_eq!(&r.stored()[1..], [Stored::Delivered(0), Stored::Ack(0)]);
}

#[test]
fn a_transient_queue_confirms_persistent_messages_at_once() {
    let mut r = Rig::new(QueueArgs::default());
    let mut p = msg("p");
    p.edit().persistent = true;
    let fx = r.publish_confirmed(p, 5);
    assert_eq!(confirms(&fx), [(5, true)]);
    assert!(r.stored().is_empty());
}

#[test]
fn messages_the_disk_refused_leave_the_queue() {
    let mut r = Rig::with(QueueArgs::default(), true, Vec::new());
    let mut p = msg("p");
    p.edit().persistent = true;
    r.publish_confirmed(p, 1);
    r.publish(msg("t"));
    let (_, _) = r.call(|q, _, fx| q.refused_by_store(fx, &[0]));
    assert_eq!(r.q.ready_len(), 1);
    let fx = r.consume(consumer(1, 0));
    assert_eq!(bodies(&fx), ["t"]);
}

#[test]
fn quorum_queue_counts_returns_and_dead_letters_past_the_delivery_limit() {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    t.insert("x-delivery-limit".into(), AMQPValue::LongInt(1));
    let mut r = Rig::with(dlx_args(), false, encode_table(&t));
    r.publish(msg("m"));
    let fx = r.consume(consumer(1, 0));
    let fx = r.settle(vec![deliveries(&fx)[0].3], Settle::Requeue);
    let d = deliveries(&fx);
    assert_eq!(d.len(), 1);
    let fx = r.settle(vec![d[0].3], Settle::Requeue);
    assert!(deliveries(&fx).is_empty());
    assert_eq!(
        one_dead_letter(&fx),
        ("m".into(), Some("delivery_limit".into()))
    );
}

#[test]
fn basic_get_takes_the_head_and_counts_what_is_left() {
    let mut r = Rig::new(QueueArgs::default());
    assert!(r.call(|q, env, fx| q.get(env, fx, false)).0.is_none());
    r.publish(msg("a"));
    r.publish(msg("b"));
    let (got, fx) = r.call(|q, env, fx| q.get(env, fx, false));
    let (d, left) = got.unwrap_or_else(|| panic!("no message"));
    assert_eq!((d.msg.body(), left), (&b"a"[..], 1));
    assert_eq!(fx.dequeued, 1);
    assert_eq!(r.q.unacked_len(), 1);
    // Requeued, it is the head again.
    r.settle(vec![d.id], Settle::Requeue);
    let (got, _) = r.call(|q, env, fx| q.get(env, fx, true));
    let (d, _) = got.unwrap_or_else(|| panic!("no message"));
    assert_eq!((d.msg.body(), d.redelivered), (&b"a"[..], true));
    assert_eq!(r.q.unacked_len(), 0);
}

#[test]
fn memory_is_accounted_while_messages_are_held() {
    let mut r = Rig::new(QueueArgs::default());
    let size = msg("abc").size() as isize;
    r.publish(msg("abc"));
    assert_eq!(r.memory, size);
    let fx = r.consume(consumer(1, 0));
    assert_eq!(r.memory, size, "an unacked message stays in memory");
    r.settle(vec![deliveries(&fx)[0].3], Settle::Ack);
    assert_eq!(r.memory, 0);
    r.publish(msg("abc"));
    r.call(|q, _, fx| q.delete(fx));
    assert_eq!(r.memory, 0);
}

/// A message two queues of a shard take (a fanout) counts once against the shard's
/// memory, until the last lets go; past the budget the first queue's choice to page it
/// out holds for the second (its memory leaves only when both have), though the second
/// alone is under the budget.
#[test]
fn a_message_two_queues_share_counts_once_and_both_page_it_or_neither() {
    let mut a = Rig::new(QueueArgs::default());
    let mut b = Rig::new(QueueArgs::default());
    let mut m = msg("abc");
    m.routed_to_many();
    let size = m.size() as isize;
    a.publish(m.clone());
    b.publish(m);
    assert_eq!(
        (a.memory, b.memory),
        (size, 0),
        "counted once, by the first"
    );
    let fx = a.consume(consumer(1, 0));
    a.settle(vec![deliveries(&fx)[0].3], Settle::Ack);
    assert_eq!(a.memory + b.memory, size, "the other queue holds it still");
    b.call(|q, _, fx| q.delete(fx));
    assert_eq!(a.memory + b.memory, 0);

    // Two queues with no consumer, the first past the budget.
    let (mut a, mut b) = (
        Rig::new(QueueArgs::default()),
        Rig::new(QueueArgs::default()),
    );
    let mut m = msg("0123456789abcdef");
    m.routed_to_many();
    let size = m.size() as isize;
    a.limits.memory_budget = 10;
    let (fa, fb) = (a.publish(m.clone()), b.publish(m));
    assert_eq!(store_waits(&fa), [(0, None, true)]);
    assert_eq!(
        store_waits(&fb),
        [(0, None, true)],
        "pages as the first chose"
    );
    let before = a.memory + b.memory;
    a.call(|q, _, fx| q.bodies_written(fx, &[0]));
    let bodiless = msg("").size() as isize;
    assert_eq!(
        a.memory + b.memory,
        before + bodiless,
        "the body stays while the other queue holds it (plus the paged copy's names)"
    );
    b.call(|q, _, fx| q.bodies_written(fx, &[0]));
    assert_eq!(
        a.memory + b.memory,
        2 * bodiless,
        "both paged: the body is gone"
    );
    assert_eq!(before, size);
    a.call(|q, _, fx| q.delete(fx));
    b.call(|q, _, fx| q.delete(fx));
    assert_eq!(a.memory + b.memory, 0);
}

#[test]
fn past_the_memory_budget_bodies_page_out_and_come_back_before_delivery() {
    let mut r = Rig::new(QueueArgs::default());
    r.limits.memory_budget = 10;
    let fx = r.publish(msg("0123456789abcdef"));
    assert!(bodies(&fx).is_empty());
    assert_eq!(
        r.stored(),
        [Stored::Append {
            seq: 0,
            confirm: false,
            transient: true
        }]
    );
    // Its body leaves memory once the store's future says it is written.
    assert_eq!(store_waits(&fx), [(0, None, true)]);
    // The store wrote it: the body leaves memory.
    r.call(|q, _, fx| q.bodies_written(fx, &[0]));
    assert!(r.q.head_paged());
    // A consumer arrives: the body is read back first.
    let fx = r.consume(consumer(1, 0));
    assert!(deliveries(&fx).is_empty());
    let want = fx
        .list
        .iter()
        .find_map(|e| match e {
            Effect::PageIn(w) => Some(w.clone()),
            _ => None,
        })
        .unwrap_or_default();
    assert_eq!(want.len(), 1);
    let reads = vec![(0, Ok(Bytes::from_static(b"0123456789abcdef")))];
    let (_, fx) = r.call(|q, env, fx| q.paged_in(env, fx, reads));
    assert_eq!(bodies(&fx), ["0123456789abcdef"]);
}

#[test]
fn x_expires_counts_from_the_last_use_while_unused() {
    let mut r = Rig::new(QueueArgs {
        expires: Some(500),
        ..QueueArgs::default()
    });
    assert_eq!(r.q.expires_at(), Some(1_500));
    r.consume(consumer(1, 0));
    assert_eq!(
        r.q.expires_at(),
        None,
        "a queue with consumers does not expire"
    );
    r.now = 2_000;
    let (_, fx) = r.call(|q, env, fx| q.cancel(env, fx, 1));
    assert!(fx.list.iter().any(|e| matches!(e, Effect::WatchExpires)));
    assert_eq!(r.q.expires_at(), Some(2_500));
}

#[test]
fn deleting_the_queue_cancels_its_consumers() {
    let mut r = Rig::new(QueueArgs::default());
    r.consume(consumer(1, 0));
    let (_, fx) = r.call(|q, _, fx| q.delete(fx));
    assert!(matches!(
        fx.list.as_slice(),
        [Effect::Send {
            to: 1,
            op: ConnOp::Cancelled { cid: 1, .. }
        }]
    ));
    assert!(r.q.deleted);
}

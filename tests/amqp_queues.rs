//! Queue arguments as RabbitMQ users rely on them: message TTL (queue and per message),
//! max-length and max-length-bytes with each overflow mode, dead-lettering with x-death,
//! priorities, single active consumer, consumer priorities, x-expires and auto-delete,
//! quorum queues.

mod common;

use std::time::Duration;

use common::amqp::*;
use common::{data_dir, Broker};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

fn int(v: i64) -> AMQPValue {
    AMQPValue::LongLongInt(v)
}

async fn passive(ch: &Channel, q: &str) -> Result<lapin::Queue, lapin::Error> {
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// The x-death entries of a dead-lettered message.
fn x_death(m: &lapin::message::BasicGetMessage) -> Vec<FieldTable> {
    let h = m.delivery.properties.headers().clone().expect("headers");
    match h.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death entry {other:?}"),
            })
            .collect(),
        other => panic!("no x-death: {other:?}"),
    }
}

fn text(t: &FieldTable, k: &str) -> String {
    match t.inner().get(k) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("{k}: {other:?}"),
    }
}

fn count(t: &FieldTable) -> i64 {
    match t.inner().get("count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("count: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_dead_lettering_with_x_death() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare(&ch, "dead", FieldTable::default()).await;
    // Queue TTL, dead-lettered through the default exchange to "dead".
    declare(
        &ch,
        "short",
        args(&[
            ("x-message-ttl", int(100)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dead")),
        ]),
    )
    .await;
    publish(&ch, "", "short", b"expiring").await;
    let m = get_within(&ch, "dead", 5)
        .await
        .expect("dead-lettered after ttl");
    assert_eq!(m.delivery.data, b"expiring");
    assert_eq!(m.delivery.routing_key.as_str(), "dead");
    let deaths = x_death(&m);
    assert_eq!(deaths.len(), 1);
    assert_eq!(text(&deaths[0], "reason"), "expired");
    assert_eq!(text(&deaths[0], "queue"), "short");
    assert_eq!(count(&deaths[0]), 1);
    assert!(drain(&ch, "short").await.is_empty());

    // Per-message expiration on a queue without TTL; the property is dropped on the way.
    declare(
        &ch,
        "plain",
        args(&[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dead")),
        ]),
    )
    .await;
    ch.basic_publish(
        "".into(),
        "plain".into(),
        BasicPublishOptions::default(),
        b"per-message",
        BasicProperties::default().with_expiration(ShortString::from("50")),
    )
    .await
    .expect("publish");
    let m = get_within(&ch, "dead", 5).await.expect("expired message");
    assert_eq!(m.delivery.data, b"per-message");
    assert!(m.delivery.properties.expiration().is_none());
    assert_eq!(text(&x_death(&m)[0], "original-expiration"), "50");

    // Rejected without requeue: dead-lettered with reason rejected; twice counts 2.
    publish(&ch, "", "plain", b"bad").await;
    let m = get_within_ack(&ch, "plain").await;
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    let m = get_within_ack(&ch, "dead").await;
    assert_eq!(text(&x_death(&m)[0], "reason"), "rejected");
    assert_eq!(text(&x_death(&m)[0], "queue"), "plain");
    m.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    // Round again through "plain", headers and all, and reject once more.
    ch.basic_publish(
        "".into(),
        "plain".into(),
        BasicPublishOptions::default(),
        &m.delivery.data,
        m.delivery.properties.clone(),
    )
    .await
    .expect("publish");
    let m = get_within_ack(&ch, "plain").await;
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    let m = get_within(&ch, "dead", 5).await.expect("dead again");
    let deaths = x_death(&m);
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    assert_eq!(count(&deaths[0]), 2);
}

async fn get_within_ack(ch: &Channel, q: &str) -> lapin::message::BasicGetMessage {
    for _ in 0..250 {
        if let Some(m) = ch
            .basic_get(q.into(), BasicGetOptions::default())
            .await
            .expect("get")
        {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing in {q}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_with_each_overflow_mode() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", FieldTable::default()).await;
    let dl = || {
        vec![
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dlq")),
        ]
    };

    // drop-head: the oldest go, dead-lettered with reason maxlen.
    let mut a = dl();
    a.push(("x-max-length", int(3)));
    declare(&ch, "head", args(&a)).await;
    for i in 0..5u8 {
        publish(&ch, "", "head", &[i]).await;
    }
    assert_eq!(drain(&ch, "head").await, vec![vec![2], vec![3], vec![4]]);
    let first = get_within(&ch, "dlq", 5).await.expect("dropped head");
    assert_eq!(first.delivery.data, vec![0]);
    assert_eq!(text(&x_death(&first)[0], "reason"), "maxlen");
    assert_eq!(
        get_within(&ch, "dlq", 5)
            .await
            .expect("second")
            .delivery
            .data,
        vec![1]
    );

    // max-length-bytes counts bodies.
    declare(&ch, "bytes", args(&[("x-max-length-bytes", int(10))])).await;
    for _ in 0..4 {
        publish(&ch, "", "bytes", b"abcd").await;
    }
    assert_eq!(drain(&ch, "bytes").await.len(), 2);

    // reject-publish: the newest are refused (nacked under confirms), not dead-lettered.
    let pch = channel(&conn).await;
    confirm_select(&pch).await;
    for (q, mode) in [("rp", "reject-publish"), ("rpd", "reject-publish-dlx")] {
        let mut a = dl();
        a.push(("x-max-length", int(2)));
        a.push(("x-overflow", s(mode)));
        declare(&pch, q, args(&a)).await;
        let mut acks = Vec::new();
        for i in 0..3u8 {
            let c = pch
                .basic_publish(
                    "".into(),
                    q.into(),
                    BasicPublishOptions::default(),
                    &[i],
                    BasicProperties::default(),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            acks.push(c.is_ack());
        }
        assert_eq!(acks, vec![true, true, false], "{mode}");
        assert_eq!(drain(&ch, q).await, vec![vec![0], vec![1]], "{mode}");
    }
    // Only reject-publish-dlx dead-letters the refused message.
    let m = get_within(&ch, "dlq", 5)
        .await
        .expect("refused message dead-lettered");
    assert_eq!(m.delivery.data, vec![2]);
    assert_eq!(text(&x_death(&m)[0], "queue"), "rpd");
    assert!(drain(&ch, "dlq").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_single_active_consumer_and_consumer_priority() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare(&ch, "prio", args(&[("x-max-priority", int(10))])).await;
    for p in [1u8, 5, 9, 0, 5, 200] {
        ch.basic_publish(
            "".into(),
            "prio".into(),
            BasicPublishOptions::default(),
            &[p],
            BasicProperties::default().with_priority(p),
        )
        .await
        .expect("publish");
    }
    // Highest first (above x-max-priority counts as the maximum), FIFO within a priority.
    assert_eq!(
        drain(&ch, "prio").await,
        vec![vec![200], vec![9], vec![5], vec![5], vec![1], vec![0]]
    );

    // Single active consumer: everything goes to the first until it cancels.
    declare(
        &ch,
        "sac",
        args(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let c1ch = channel(&conn).await;
    let c2ch = channel(&conn).await;
    let mut c1 = consume(&c1ch, "sac", true).await;
    let mut c2 = consume(&c2ch, "sac", true).await;
    for i in 0..10u8 {
        publish(&ch, "", "sac", &[i]).await;
    }
    for i in 0..10u8 {
        assert_eq!(
            next(&mut c1, 5).await.expect("to the active consumer").data,
            vec![i]
        );
    }
    assert!(next(&mut c2, 1).await.is_none());
    c1ch.basic_cancel(c1.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    publish(&ch, "", "sac", b"after").await;
    assert_eq!(
        next(&mut c2, 5).await.expect("second takes over").data,
        b"after"
    );

    // Consumer priorities: the higher one gets everything while it has room.
    declare(&ch, "cp", FieldTable::default()).await;
    let lowch = channel(&conn).await;
    let highch = channel(&conn).await;
    highch
        .basic_qos(3, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut low = lowch
        .basic_consume(
            "cp".into(),
            "".into(),
            BasicConsumeOptions::default(),
            args(&[("x-priority", int(1))]),
        )
        .await
        .expect("consume");
    let mut high = highch
        .basic_consume(
            "cp".into(),
            "".into(),
            BasicConsumeOptions::default(),
            args(&[("x-priority", int(10))]),
        )
        .await
        .expect("consume");
    for i in 0..5u8 {
        publish(&ch, "", "cp", &[i]).await;
    }
    let mut h = Vec::new();
    for _ in 0..3 {
        h.push(next(&mut high, 5).await.expect("high").data[0]);
    }
    assert_eq!(h, vec![0, 1, 2]);
    let mut l = Vec::new();
    for _ in 0..2 {
        l.push(next(&mut low, 5).await.expect("low gets the overflow").data[0]);
    }
    assert_eq!(l, vec![3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_expires_and_auto_delete() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare(&ch, "fleeting", args(&[("x-expires", int(300))])).await;
    assert!(passive(&ch, "fleeting").await.is_ok());
    // A declare (even passive) counts as use: check less often than the expiry.
    let mut gone = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let c = channel(&conn).await;
        if let Err(e) = passive(&c, "fleeting").await {
            assert_eq!(reply_code(&e), Some(404));
            gone = true;
            break;
        }
    }
    assert!(gone, "x-expires did not delete the unused queue");

    ch.queue_declare(
        "auto".into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let c = consume(&ch, "auto", true).await;
    assert!(passive(&ch, "auto").await.is_ok());
    ch.basic_cancel(c.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    let mut gone = false;
    for _ in 0..100 {
        let c = channel(&conn).await;
        if passive(&c, "auto").await.is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "auto-delete queue outlived its last consumer");
}

/// `x-queue-type: quorum` as RabbitMQ clients declare it: durable only; every message
/// written (a transient one survives `kill -9` once confirmed); a message requeued more
/// than `x-delivery-limit` times is dead-lettered with reason `delivery_limit`, and its
/// redeliveries count up in `x-delivery-count`. Stream queues are refused with 406.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_keep_rabbitmq_rules() {
    let (_d, data) = data_dir();
    let mut broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let quorum = || args(&[("x-queue-type", s("quorum"))]);
    for (opts, what) in [
        (QueueDeclareOptions::default(), "non-durable"),
        (
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            "exclusive-owner",
        ),
        (
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            "auto-delete",
        ),
    ] {
        let ch = channel(&conn).await;
        let r = ch.queue_declare("qq-bad".into(), opts, quorum()).await;
        let e = r
            .err()
            .unwrap_or_else(|| panic!("{what} quorum queue accepted"));
        assert_eq!(reply_code(&e), Some(406), "{what}: {e}");
        assert!(e.to_string().contains(what), "{what}: {e}");
    }
    // An unknown queue type is 406 (streams are tests/streams/queues.rs').
    let ch = channel(&conn).await;
    let r = ch
        .queue_declare(
            "qs".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args(&[("x-queue-type", s("lazy"))]),
        )
        .await;
    assert_eq!(r.err().as_ref().and_then(reply_code), Some(406));

    let ch = channel(&conn).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("qq-dead".into(), durable, FieldTable::default())
        .await
        .expect("dead-letter queue");
    ch.queue_declare(
        "qq".into(),
        durable,
        args(&[
            ("x-queue-type", s("quorum")),
            ("x-delivery-limit", int(2)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("qq-dead")),
        ]),
    )
    .await
    .expect("quorum queue");
    // Transient (delivery mode 1) and confirmed: a quorum queue writes it anyway.
    confirm_select(&ch).await;
    for body in [&b"bounce"[..], b"keep"] {
        ch.basic_publish(
            "".into(),
            "qq".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(1),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    broker.kill9();
    broker.restart();
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    ch.basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut c = consume(&ch, "qq", false).await;
    // Delivered three times (the first and two redeliveries), then dead-lettered.
    for attempt in 0..3i64 {
        let d = next(&mut c, 10).await.expect("delivery");
        assert_eq!(d.data, b"bounce", "attempt {attempt}");
        let count = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned());
        if attempt == 0 {
            assert_eq!(count, None);
        } else {
            assert_eq!(count, Some(AMQPValue::LongLongInt(attempt)));
            assert!(d.redelivered);
        }
        d.nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .expect("nack");
    }
    let d = next(&mut c, 10).await.expect("the next message");
    assert_eq!(
        d.data, b"keep",
        "the bounced message is gone from the queue"
    );
    d.ack(BasicAckOptions::default()).await.expect("ack");
    let dead = get_within(&ch, "qq-dead", 5)
        .await
        .expect("dead-lettered after the delivery limit");
    assert_eq!(dead.delivery.data, b"bounce");
    let headers = dead
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("no x-death: {headers:?}");
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else {
        panic!("x-death empty");
    };
    assert_eq!(
        first.inner().get("reason"),
        Some(&AMQPValue::LongString("delivery_limit".into()))
    );
}

//! Durability of AMQP topology and messages, proven by killing the real broker: durable
//! exchanges, queues and bindings survive; persistent messages confirmed on durable queues
//! survive `kill -9` (unacked ones come back redelivered); transient ones do not.

mod common;

use std::collections::BTreeSet;

use common::amqp::*;
use common::{data_dir, Broker};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn topology(ch: &Channel) {
    ch.exchange_declare(
        "orders-x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange");
    declare_durable(ch, "orders").await;
    bind(ch, "orders", "orders-x", "new", FieldTable::default()).await;
    ch.queue_declare(
        "scratch".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("transient queue");
}

/// Publishes with confirms and returns the numbers every confirm acked.
async fn publish_confirmed(
    ch: &Channel,
    from: u32,
    to: u32,
    props: BasicProperties,
) -> BTreeSet<u32> {
    let mut pending = Vec::new();
    for i in from..to {
        let c = ch
            .basic_publish(
                "orders-x".into(),
                "new".into(),
                BasicPublishOptions::default(),
                i.to_string().as_bytes(),
                props.clone(),
            )
            .await
            .expect("publish");
        pending.push((i, c));
    }
    let mut acked = BTreeSet::new();
    for (i, c) in pending {
        if c.await.expect("confirm").is_ack() {
            acked.insert(i);
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_persistent_messages_survive_kill_9() {
    let (_d, data) = data_dir();
    let mut broker = Broker::start(&data, &[("PORTASK_AMQP__SEGMENT_BYTES", "65536")]);
    let url = broker.amqp_url();
    let unacked: BTreeSet<u32>;
    let acked: BTreeSet<u32>;
    let confirmed: BTreeSet<u32>;
    {
        let conn = connect(&url).await;
        let ch = channel(&conn).await;
        topology(&ch).await;
        confirm_select(&ch).await;
        confirmed = publish_confirmed(&ch, 0, 3000, persistent()).await;
        assert_eq!(confirmed.len(), 3000);
        // Transient messages on the durable queue: confirmed, but lost on a crash.
        let transient = publish_confirmed(&ch, 100_000, 100_010, BasicProperties::default()).await;
        assert_eq!(transient.len(), 10);

        // Consume: ack the first 1000, keep the next 50 delivered but unacked.
        let cch = channel(&conn).await;
        cch.basic_qos(1050, BasicQosOptions::default())
            .await
            .expect("qos");
        confirm_select(&cch).await;
        let mut c = consume(&cch, "orders", false).await;
        let mut a = BTreeSet::new();
        let mut u = BTreeSet::new();
        let mut got = Vec::new();
        for _ in 0..1050 {
            got.push(next(&mut c, 10).await.expect("delivery"));
        }
        // No more deliveries (prefetch is full), then stop the consumer before acking.
        cch.basic_cancel(c.tag(), BasicCancelOptions::default())
            .await
            .expect("cancel");
        for (i, d) in got.into_iter().enumerate() {
            let n: u32 = std::str::from_utf8(&d.data).unwrap().parse().unwrap();
            if i < 1000 {
                d.ack(BasicAckOptions::default()).await.expect("ack");
                a.insert(n);
            } else {
                u.insert(n);
            }
        }
        // A confirmed publish on the acking channel: its fdatasync round also carries the
        // acks and delivery marks made before it.
        let barrier = cch
            .basic_publish(
                "orders-x".into(),
                "new".into(),
                BasicPublishOptions::default(),
                b"999999",
                persistent(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(barrier.is_ack());
        acked = a;
        unacked = u;
        broker.kill9();
    }

    broker.restart();
    let conn = connect(&url).await;
    let ch = channel(&conn).await;
    // Durable topology is intact, transient is gone.
    ch.exchange_declare(
        "orders-x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("durable exchange survived");
    let e = channel(&conn)
        .await
        .queue_declare(
            "scratch".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("transient queue is gone");
    assert_eq!(reply_code(&e), Some(404));
    let q = ch
        .queue_declare(
            "orders".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("durable queue survived");
    let expected: BTreeSet<u32> = confirmed
        .difference(&acked)
        .copied()
        .chain([999_999])
        .collect();
    assert_eq!(q.message_count() as usize, expected.len());

    // Every confirmed, unacked persistent message is back; the delivered ones redelivered.
    let mut c = consume(&ch, "orders", false).await;
    let mut got = BTreeSet::new();
    while got.len() < expected.len() {
        let d = next(&mut c, 10).await.expect("recovered message");
        let n: u32 = std::str::from_utf8(&d.data).unwrap().parse().unwrap();
        assert_eq!(
            d.redelivered,
            unacked.contains(&n),
            "redelivered flag of {n}"
        );
        assert!(got.insert(n), "{n} twice");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert_eq!(got, expected);
    // The binding survived: publishing through the exchange still reaches the queue.
    publish(&ch, "orders-x", "new", b"after").await;
    let d = next(&mut c, 10).await.expect("routed after restart");
    assert_eq!(d.data, b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_messages_and_acks() {
    let (_d, data) = data_dir();
    let mut broker = Broker::start(&data, &[]);
    let url = broker.amqp_url();
    {
        let conn = connect(&url).await;
        let ch = channel(&conn).await;
        topology(&ch).await;
        confirm_select(&ch).await;
        assert_eq!(
            publish_confirmed(&ch, 0, 200, persistent()).await.len(),
            200
        );
        for _ in 0..50 {
            get_and_ack(&ch, "orders").await;
        }
        assert!(broker.terminate().success());
    }
    broker.restart();
    let conn = connect(&url).await;
    let ch = channel(&conn).await;
    let left = drain(&ch, "orders").await;
    let nums: Vec<u32> = left
        .iter()
        .map(|b| std::str::from_utf8(b).unwrap().parse().unwrap())
        .collect();
    assert_eq!(nums, (50..200).collect::<Vec<_>>());
}

/// Every message of queue `name`, in order, by basic.get (the queue must hold them now).
async fn bodies(ch: &Channel, name: &str) -> Vec<String> {
    drain(ch, name)
        .await
        .into_iter()
        .map(|b| String::from_utf8(b).expect("utf-8 body"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_placed_on_each_shard_survive_kill_9_and_a_shard_count_change() {
    let (_d, data) = data_dir();
    let mut broker = Broker::start(&data, &[]);
    let names = ["placed-0", "placed-1"];
    let expected: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    {
        // Each queue is declared by a connection on its shard, so it is owned there.
        let chans = one_on_each_shard(&broker.amqp_url()).await;
        for (name, (_, ch)) in names.iter().zip(chans.iter()) {
            declare_durable(ch, name).await;
            confirm_select(ch).await;
            for body in &expected {
                let c = publish_outcome(ch, "", name, body.as_bytes(), persistent())
                    .await
                    .expect("publish");
                assert!(c.is_ack(), "confirmed");
            }
        }
    }
    broker.kill9();
    broker.restart();
    {
        let conn = connect(&broker.amqp_url()).await;
        let ch = channel(&conn).await;
        for name in names {
            let q = passive_queue(&ch, name).await.expect("still declared");
            assert_eq!(q.message_count(), 200, "{name} after kill -9");
        }
    }
    broker.kill9();
    drop(broker);
    // One shard owns every queue now: the queue shard 1 owned moves to shard 0.
    let one = Broker::start_with_shards(&data, &[], 1);
    assert!(
        one.log()
            .contains("moving queue 'placed-1' from shard 1 to shard 0"),
        "{}",
        one.log()
    );
    let conn = connect(&one.amqp_url()).await;
    let ch = channel(&conn).await;
    for name in names {
        assert_eq!(bodies(&ch, name).await, expected, "{name} after the move");
    }
}

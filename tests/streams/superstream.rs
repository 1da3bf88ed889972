//! Super streams and stream filtering: a Kafka topic of N partitions is a super stream over
//! AMQP (exchange `NAME` routing by the Kafka Java client's murmur2 partitioner, partition
//! queues `NAME-k` with Kafka's offsets), declared, grown and deleted from either side;
//! `x-stream-filter` consumers get exactly the records whose `x-stream-filter-value` they
//! asked for, whichever protocol wrote them.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::amqp::*;
use crate::common::kafka::{self, admin, assigned, create_topics, poll_n};
use crate::common::{data_dir, Broker};
use crate::kit::*;
use futures::executor::block_on;
use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, ExchangeKind};
use rdkafka::admin::{AdminOptions, NewPartitions};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::Offset;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn super_stream_routes_as_the_kafka_partitioner_and_keeps_offsets() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    create_topics(&broker, &[("orders", 3), ("mirror", 3)]);
    let keys: Vec<String> = (0..200)
        .map(|i| match i % 4 {
            0 => format!("customer-{i}"),
            1 => format!("{i}"),
            2 => format!("ключ-{i}-é"),
            _ => format!("a.longer.routing.key.{}.{i}", i * 7919),
        })
        .collect();

    // AMQP publishes through exchange `orders` (found without a declare), with confirms.
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    passive_exchange(&ch, "orders", ExchangeKind::Direct)
        .await
        .expect("the topic's super stream exchange");
    confirm_select(&ch).await;
    for (i, k) in keys.iter().enumerate() {
        let c = publish_outcome(
            &ch,
            "orders",
            k,
            format!("amqp {i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish");
        assert!(c.is_ack(), "confirmed");
    }

    // The same keys from a Kafka producer with the Java client's partitioner.
    let producer: FutureProducer = kafka::client(&broker, &[("partitioner", "murmur2_random")]);
    let mut kafka_partition = HashMap::new();
    for k in &keys {
        let d = block_on(
            producer
                .send_result(FutureRecord::to("mirror").key(k).payload("kafka"))
                .expect("enqueue"),
        )
        .expect("delivered")
        .expect("produced");
        kafka_partition.insert(k.clone(), d.partition);
    }
    producer.flush(Duration::from_secs(5)).expect("flush");

    // Each AMQP-published record is on the partition Kafka put its key on.
    let c = assigned(&broker, &[], "orders", 3, Offset::Beginning);
    let mut by_partition: HashMap<i32, Vec<(i64, String)>> = HashMap::new();
    let got = poll_n(&c, 200, Duration::from_secs(20), |m| {
        let key = String::from_utf8(m.key().expect("key").to_vec()).expect("utf-8 key");
        assert_eq!(
            kafka_partition.get(&key),
            Some(&m.partition()),
            "key {key:?}"
        );
        by_partition
            .entry(m.partition())
            .or_default()
            .push((m.offset(), key));
    });
    assert_eq!(got, 200);
    assert_eq!(by_partition.len(), 3, "keys spread over every partition");

    // Partition 1 over AMQP: exactly its records, with Kafka's offsets.
    let p1 = by_partition.remove(&1).unwrap_or_default();
    let q = passive_queue(&ch, "orders-1")
        .await
        .expect("partition queue");
    assert_eq!(q.message_count() as usize, p1.len());
    let ch2 = channel(&conn).await;
    let mut c1 = stream_consumer(&ch2, "orders-1", 50, &[("x-stream-offset", s("first"))])
        .await
        .expect("consume orders-1");
    let ds = take(&mut c1, p1.len() + 1, 2).await;
    let amqp: Vec<(i64, String)> = ds
        .iter()
        .map(|d| (stream_offset(d), d.routing_key.to_string()))
        .collect();
    assert_eq!(amqp, p1, "orders-1 is partition 1, same offsets");
    // A numeric offset is partition 1's offset.
    let ch3 = channel(&conn).await;
    let from = p1[p1.len() / 2].0;
    let mut c2 = stream_consumer(
        &ch3,
        "orders-1",
        50,
        &[("x-stream-offset", AMQPValue::LongLongInt(from))],
    )
    .await
    .expect("consume from an offset");
    let ds = take(&mut c2, p1.len(), 2).await;
    assert_eq!(ds.first().map(stream_offset), Some(from));

    // The management API shows the exchange, its partition queues and bindings.
    let http = broker.http_url();
    let (ex, bindings, queue) = tokio::task::spawn_blocking(move || {
        (
            json_at(&format!("{http}/api/v1/exchanges/%2f/orders")),
            json_at(&format!(
                "{http}/api/v1/exchanges/%2f/orders/bindings/source"
            )),
            json_at(&format!("{http}/api/v1/queues/%2f/orders-2")),
        )
    })
    .await
    .unwrap();
    assert_eq!(ex["type"], "direct", "{ex}");
    assert_eq!(ex["arguments"]["x-super-stream"], true, "{ex}");
    let dests: Vec<&str> = bindings
        .as_array()
        .expect("bindings")
        .iter()
        .filter_map(|b| b["destination"].as_str())
        .collect();
    assert_eq!(dests, ["orders-0", "orders-1", "orders-2"], "{bindings}");
    assert_eq!(queue["type"], "stream", "{queue}");
    let p2 = by_partition.get(&2).map_or(0, |v| v.len());
    assert_eq!(queue["messages"], p2 as u64, "{queue}");

    // No partition 9; the topic itself is no single stream queue.
    let ch = channel(&conn).await;
    assert_eq!(
        refused_code(passive_queue(&ch, "orders-9").await).await,
        404
    );
    let ch = channel(&conn).await;
    assert_eq!(refused_code(passive_queue(&ch, "orders").await).await, 406);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn super_stream_declared_grown_and_deleted_and_name_clashes() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    // RabbitMQ's exchange argument, and the partition count: a topic of 2 partitions.
    ch.exchange_declare(
        "events".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table(&[
            ("x-super-stream", AMQPValue::Boolean(true)),
            ("x-super-stream-partitions", AMQPValue::LongInt(2)),
            ("x-max-age", s("7D")),
        ]),
    )
    .await
    .expect("declare super stream");
    let md = admin(&broker)
        .inner()
        .fetch_metadata(Some("events"), Duration::from_secs(5))
        .expect("metadata");
    assert_eq!(md.topics()[0].partitions().len(), 2);
    passive_queue(&ch, "events-1").await.expect("partition 1");
    assert_eq!(
        refused_code(passive_queue(&ch, "events-2").await).await,
        404
    );

    // CreatePartitions: partition queues 2 and 3 at once, and routed to.
    let r = block_on(
        admin(&broker).create_partitions(&[NewPartitions::new("events", 4)], &AdminOptions::new()),
    )
    .expect("create partitions");
    assert!(r[0].is_ok(), "{r:?}");
    let ch = channel(&conn).await;
    passive_queue(&ch, "events-3")
        .await
        .expect("new partition 3");

    // A partition cannot be deleted on its own; the exchange deletes the super stream.
    let ch = channel(&conn).await;
    assert_eq!(
        refused_code(
            ch.queue_delete("events-1".into(), QueueDeleteOptions::default())
                .await
        )
        .await,
        406
    );
    let ch = channel(&conn).await;
    ch.exchange_delete("events".into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete super stream");
    assert_eq!(
        refused_code(passive_queue(&ch, "events-0").await).await,
        404
    );
    let md = admin(&broker)
        .inner()
        .fetch_metadata(None, Duration::from_secs(5))
        .expect("metadata");
    assert!(
        md.topics().iter().all(|t| t.name() != "events"),
        "topic deleted"
    );

    // A Kafka topic really named `clash-1` wins: it is its own stream queue, and topic
    // `clash` of 2 partitions is no super stream over AMQP (406 says why).
    create_topics(&broker, &[("clash", 2), ("clash-1", 1)]);
    let ch = channel(&conn).await;
    passive_queue(&ch, "clash-1").await.expect("topic clash-1");
    assert_eq!(
        refused_code(passive_exchange(&ch, "clash", ExchangeKind::Direct).await).await,
        406
    );
    // No partition count: 406.
    let ch = channel(&conn).await;
    let r = ch
        .exchange_declare(
            "nocount".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            table(&[("x-super-stream", AMQPValue::Boolean(true))]),
        )
        .await;
    assert_eq!(refused_code(r).await, 406);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn super_stream_filter_is_exact_for_records_from_both_protocols() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    ch.queue_declare(
        "filtered".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table(&[("x-queue-type", s("stream"))]),
    )
    .await
    .expect("declare stream");
    confirm_select(&ch).await;
    for i in 0..9 {
        let value = ["a", "b", ""][i % 3];
        let mut props = BasicProperties::default();
        if !value.is_empty() {
            props = props.with_headers(table(&[("x-stream-filter-value", s(value))]));
        }
        let body = format!("{}{i}", if value.is_empty() { "none" } else { value });
        let c = publish_outcome(&ch, "", "filtered", body.as_bytes(), props)
            .await
            .expect("publish");
        assert!(c.is_ack());
    }
    // A Kafka producer's record with the header is filtered the same way.
    let producer: FutureProducer = kafka::client(&broker, &[]);
    let hs = OwnedHeaders::new().insert(Header {
        key: "x-stream-filter-value",
        value: Some("a"),
    });
    block_on(
        producer
            .send_result(
                FutureRecord::<(), _>::to("filtered")
                    .payload("kafka-a")
                    .headers(hs),
            )
            .expect("enqueue"),
    )
    .expect("delivered")
    .expect("produced");

    let bodies = |filter: AMQPValue, unfiltered: Option<bool>| {
        let conn = &conn;
        async move {
            let ch = channel(conn).await;
            let mut a = vec![("x-stream-offset", s("first")), ("x-stream-filter", filter)];
            if let Some(u) = unfiltered {
                a.push(("x-stream-match-unfiltered", AMQPValue::Boolean(u)));
            }
            let mut c = stream_consumer(&ch, "filtered", 50, &a)
                .await
                .expect("consume");
            let ds = take(&mut c, 20, 2).await;
            ds.iter()
                .map(|d| String::from_utf8_lossy(&d.data).into_owned())
                .collect::<Vec<_>>()
        }
    };
    let arr =
        |vs: &[&str]| AMQPValue::FieldArray(vs.iter().map(|v| s(v)).collect::<Vec<_>>().into());
    assert_eq!(bodies(s("a"), None).await, ["a0", "a3", "a6", "kafka-a"]);
    assert_eq!(
        bodies(arr(&["a", "b"]), None).await,
        ["a0", "b1", "a3", "b4", "a6", "b7", "kafka-a"]
    );
    assert_eq!(
        bodies(arr(&["b"]), Some(true)).await,
        ["b1", "none2", "b4", "none5", "b7", "none8"]
    );
    // Not a string or an array of strings: 406.
    let ch = channel(&conn).await;
    let r = stream_consumer(
        &ch,
        "filtered",
        50,
        &[("x-stream-filter", AMQPValue::LongInt(1))],
    )
    .await;
    assert_eq!(refused_code(r).await, 406);
}

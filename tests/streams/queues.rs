//! Stream queues across protocols: an AMQP queue declared `x-queue-type: stream` is the
//! Kafka topic of its name. lapin publishes and rdkafka reads (and the reverse), consumers
//! start at every `x-stream-offset` form, acks only return credit, confirmed messages
//! survive kill -9, and the refusals are RabbitMQ's.

use std::time::Duration;

use crate::common::amqp::*;
use crate::common::kafka::{self, admin, assigned, create_topic, poll_n};
use crate::common::{data_dir, Broker};
use crate::kit::*;
use futures::executor::block_on;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use rdkafka::admin::{AdminOptions, ResourceSpecifier};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::Offset;

fn stream_args(more: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = table(more);
    t.insert("x-queue-type".into(), s("stream"));
    t
}

fn headers() -> FieldTable {
    table(&[
        ("text", s("héllo")),
        ("int", AMQPValue::LongInt(-7)),
        ("long", AMQPValue::LongLongInt(1 << 40)),
        ("flag", AMQPValue::Boolean(true)),
        ("when", AMQPValue::Timestamp(1_700_000_000)),
        ("nested", AMQPValue::FieldTable(table(&[("x", s("y"))]))),
    ])
}

fn properties(i: u32) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("identity"))
        .with_headers(headers())
        .with_delivery_mode(2)
        .with_priority(3)
        .with_correlation_id(ShortString::from(format!("corr-{i}")))
        .with_reply_to(ShortString::from("replies"))
        .with_expiration(ShortString::from("600000"))
        .with_message_id(ShortString::from(format!("id-{i}")))
        .with_timestamp(1_700_000_000 + i as u64)
        .with_type(ShortString::from("order"))
        .with_user_id(ShortString::from("guest"))
        .with_app_id(ShortString::from("tests"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_publish_with_confirms_is_read_by_kafka_and_replayed_identically() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare_stream(&ch, "orders", &[]).await;
    // Through an exchange and a binding, as any queue.
    ch.exchange_declare(
        "shop".into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange");
    bind(&ch, "orders", "shop", "new", FieldTable::default()).await;
    confirm_select(&ch).await;
    let n = 20u32;
    for i in 0..n {
        let c = ch
            .basic_publish(
                "shop".into(),
                "new".into(),
                BasicPublishOptions::default(),
                format!("order {i}").as_bytes(),
                properties(i),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(c.is_ack(), "message {i} confirmed");
    }

    // A Kafka consumer group reads every record, in order.
    let kc: BaseConsumer = kafka::client(
        &broker,
        &[
            ("group.id", "stream-readers"),
            ("auto.offset.reset", "earliest"),
            ("enable.auto.commit", "false"),
        ],
    );
    kc.subscribe(&["orders"]).expect("subscribe");
    let mut values = Vec::new();
    let got = poll_n(&kc, n as usize, Duration::from_secs(30), |m| {
        values.push((
            m.offset(),
            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            m.headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                            (h.key.to_owned(), v)
                        })
                        .collect::<std::collections::HashMap<_, _>>()
                })
                .unwrap_or_default(),
        ));
    });
    assert_eq!(got, n as usize);
    for (i, (offset, value, key, hs)) in values.iter().enumerate() {
        assert_eq!(*offset, i as i64);
        assert_eq!(value, &format!("order {i}"));
        assert_eq!(key.as_deref(), Some("new"), "routing key is the record key");
        // The documented headers a Kafka consumer reads (docs/streams.md).
        let h = |k: &str| hs.get(k).cloned().flatten();
        assert!(hs.contains_key("amqp-properties"), "{hs:?}");
        assert_eq!(h("amqp-exchange").as_deref(), Some("shop"));
        assert_eq!(h("content-type").as_deref(), Some("application/json"));
        assert_eq!(h("message-id"), Some(format!("id-{i}")));
        assert_eq!(h("amqp-header-text").as_deref(), Some("héllo"));
        assert_eq!(h("amqp-header-int").as_deref(), Some("-7"));
    }

    // An AMQP consumer from `first` gets byte-identical properties back.
    let ch2 = channel(&conn).await;
    let mut c = stream_consumer(&ch2, "orders", 5, &[("x-stream-offset", s("first"))])
        .await
        .expect("consume");
    let ds = take(&mut c, n as usize, 5).await;
    assert_eq!(ds.len(), n as usize);
    for (i, d) in ds.iter().enumerate() {
        assert_eq!(d.data, format!("order {i}").as_bytes());
        assert_eq!(stream_offset(d), i as i64);
        let mut want = properties(i as u32);
        let mut h = headers();
        h.insert("x-stream-offset".into(), AMQPValue::LongLongInt(i as i64));
        want = want.with_headers(h);
        assert_eq!(d.properties, want, "properties of message {i}");
        assert_eq!(d.exchange.as_str(), "shop");
        assert_eq!(d.routing_key.as_str(), "new");
    }
    // Passive declare: the message count is the records in the log.
    let q = passive_queue(&ch, "orders").await.expect("passive");
    assert_eq!(q.message_count(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_are_consumed_over_amqp_from_every_offset_spec() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    create_topic(&broker, "events", 1, &[]);
    let producer: FutureProducer = kafka::client(
        &broker,
        &[("compression.codec", "lz4"), ("linger.ms", "20")],
    );
    let produce = |from: usize, to: usize| {
        let futs: Vec<_> = (from..to)
            .map(|i| {
                let value = format!("event {i}");
                let key = format!("k{i}");
                let hs = OwnedHeaders::new().insert(Header {
                    key: "source",
                    value: Some("kafka"),
                });
                producer
                    .send_result(
                        FutureRecord::to("events")
                            .key(&key)
                            .payload(&value)
                            .headers(hs),
                    )
                    .expect("enqueue")
            })
            .collect();
        producer.flush(Duration::from_secs(10)).expect("flush");
        for f in futs {
            block_on(f).expect("delivered").expect("produced");
        }
    };
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 2;
    produce(0, 10);
    produce(10, 13); // the last batch: offsets 10..=12

    let conn = connect(&broker.amqp_url()).await;
    // The topic is a stream queue without any declare.
    let ch = channel(&conn).await;
    let q = passive_queue(&ch, "events")
        .await
        .expect("passive finds the topic");
    assert_eq!(q.message_count(), 13);

    let offsets =
        |ds: &[lapin::message::Delivery]| ds.iter().map(stream_offset).collect::<Vec<_>>();
    let ch = channel(&conn).await;
    let mut c = stream_consumer(&ch, "events", 4, &[("x-stream-offset", s("first"))])
        .await
        .unwrap();
    let ds = take(&mut c, 13, 5).await;
    assert_eq!(offsets(&ds), (0..13).collect::<Vec<i64>>());
    assert_eq!(ds[3].data, b"event 3");
    assert_eq!(ds[3].routing_key.as_str(), "k3");
    let h = ds[3].properties.headers().clone().expect("headers");
    assert_eq!(
        h.inner().get("source"),
        Some(&s("kafka")),
        "Kafka headers as AMQP headers"
    );
    let ts = ds[3].properties.timestamp().expect("timestamp property");
    assert!(
        ts >= before && ts <= before + 60,
        "record timestamp {ts} in seconds"
    );

    let ch = channel(&conn).await;
    let mut c = stream_consumer(
        &ch,
        "events",
        4,
        &[("x-stream-offset", AMQPValue::LongLongInt(5))],
    )
    .await
    .unwrap();
    assert_eq!(
        offsets(&take(&mut c, 8, 5).await),
        (5..13).collect::<Vec<i64>>()
    );

    let ch = channel(&conn).await;
    let mut c = stream_consumer(
        &ch,
        "events",
        4,
        &[("x-stream-offset", AMQPValue::Timestamp(before))],
    )
    .await
    .unwrap();
    assert_eq!(
        offsets(&take(&mut c, 13, 5).await),
        (0..13).collect::<Vec<i64>>()
    );

    let ch = channel(&conn).await;
    let mut last = stream_consumer(&ch, "events", 4, &[("x-stream-offset", s("last"))])
        .await
        .unwrap();
    let ch = channel(&conn).await;
    let mut next_c = stream_consumer(&ch, "events", 4, &[("x-stream-offset", s("next"))])
        .await
        .unwrap();
    let ch = channel(&conn).await;
    let mut dflt = stream_consumer(&ch, "events", 4, &[]).await.unwrap();
    assert_eq!(offsets(&take(&mut last, 3, 5).await), vec![10, 11, 12]);
    // `next` (and no argument) see only what comes after they attached, promptly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    produce(13, 15);
    let started = std::time::Instant::now();
    assert_eq!(offsets(&take(&mut next_c, 2, 5).await), vec![13, 14]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "woken by new data"
    );
    assert_eq!(offsets(&take(&mut dflt, 2, 5).await), vec![13, 14]);
    assert_eq!(offsets(&take(&mut last, 2, 5).await), vec![13, 14]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_read_independently_and_acks_only_return_credit() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare_stream(&ch, "log", &[]).await;
    confirm_select(&ch).await;
    for i in 0..10 {
        let body = format!("m{i}");
        let c = publish_outcome(&ch, "", "log", body.as_bytes(), Default::default()).await;
        assert!(c.expect("confirm").is_ack());
    }
    let cha = channel(&conn).await;
    let mut a = stream_consumer(&cha, "log", 3, &[("x-stream-offset", s("first"))])
        .await
        .unwrap();
    // Prefetch 3 and no acks: exactly 3 arrive.
    let mut held = Vec::new();
    while let Some(d) = next(&mut a, 1).await {
        held.push(d);
    }
    assert_eq!(held.len(), 3, "prefetch bounds the unacked deliveries");
    // Another consumer reads everything, whatever the first holds.
    let chb = channel(&conn).await;
    let mut b = stream_consumer(&chb, "log", 4, &[("x-stream-offset", s("first"))])
        .await
        .unwrap();
    assert_eq!(take(&mut b, 10, 5).await.len(), 10);
    // Nack with requeue and reject only return credit too; nothing is removed.
    held[0]
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    held[1]
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    held[2].ack(BasicAckOptions::default()).await.unwrap();
    let rest = take(&mut a, 7, 5).await;
    assert_eq!(
        rest.iter().map(stream_offset).collect::<Vec<_>>(),
        (3..10).collect::<Vec<i64>>()
    );
    let q = passive_queue(&ch, "log").await.unwrap();
    assert_eq!(q.message_count(), 10);
    assert_eq!(q.consumer_count(), 2);
    // The management API lists it as a stream with the log's offsets.
    let url = format!("{}/api/v1/queues/%2f/log", broker.http_url());
    let row: serde_json::Value = tokio::task::spawn_blocking(move || {
        let token = "Z3Vlc3Q6Z3Vlc3Q="; // guest:guest
        let text = ureq::get(&url)
            .set("Authorization", &format!("Basic {token}"))
            .call()
            .expect("GET queue")
            .into_string()
            .expect("body");
        serde_json::from_str(&text).expect("json")
    })
    .await
    .unwrap();
    assert_eq!(row["type"], "stream", "{row}");
    assert_eq!(row["messages"], 10, "{row}");
    assert_eq!(row["first_offset"], 0, "{row}");
    assert_eq!(row["last_offset"], 9, "{row}");
    assert_eq!(row["consumers"], 2, "{row}");
    // Cancel stops deliveries; queue.purge removes nothing.
    cha.basic_cancel(a.tag().as_str().into(), BasicCancelOptions::default())
        .await
        .unwrap();
    let purged = ch
        .queue_purge("log".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(purged, 0);
    assert_eq!(passive_queue(&ch, "log").await.unwrap().message_count(), 10);
}

/// A channel-wide prefetch (basic.qos global) holds a stream consumer's deliveries back
/// on the connection until acks make room; the held ones reach the client as the ones
/// written at once do: in order, with their properties and `x-stream-offset`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_wide_prefetch_holds_stream_deliveries_back() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare_stream(&ch, "held", &[]).await;
    confirm_select(&ch).await;
    let n = 12u32;
    for i in 0..n {
        let body = format!("m{i}");
        let c = publish_outcome(&ch, "", "held", body.as_bytes(), properties(i)).await;
        assert!(c.expect("confirm").is_ack());
    }
    let cc = channel(&conn).await;
    cc.basic_qos(4, BasicQosOptions { global: true })
        .await
        .expect("qos");
    let mut c = cc
        .basic_consume(
            "held".into(),
            "".into(),
            BasicConsumeOptions::default(),
            table(&[("x-stream-offset", s("first"))]),
        )
        .await
        .expect("consume with a channel-wide prefetch only");
    let mut first = Vec::new();
    while let Some(d) = next(&mut c, 1).await {
        first.push(d);
    }
    assert_eq!(
        first.len(),
        4,
        "the channel-wide prefetch bounds what is written"
    );
    for d in &first {
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let rest = take(&mut c, n as usize - 4, 5).await;
    let all: Vec<_> = first.iter().chain(&rest).collect();
    assert_eq!(all.len(), n as usize);
    for (i, d) in all.iter().enumerate() {
        assert_eq!(d.data, format!("m{i}").as_bytes());
        let mut h = headers();
        h.insert("x-stream-offset".into(), AMQPValue::LongLongInt(i as i64));
        assert_eq!(
            d.properties,
            properties(i as u32).with_headers(h),
            "message {i}"
        );
        assert_eq!(d.routing_key.as_str(), "held");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_kill9() {
    const N: u32 = 1500;
    let body = |i: u32| {
        let mut b = i.to_be_bytes().to_vec();
        b.resize(1024, b'x');
        b
    };
    let (_dir, data) = data_dir();
    let mut broker = Broker::start(&data, &[]);
    {
        let conn = connect(&broker.amqp_url()).await;
        let ch = channel(&conn).await;
        declare_stream(&ch, "durable-log", &[]).await;
        confirm_select(&ch).await;
        // A burst of 1.5 MB in 1 KiB messages: more than one batch may hold under the
        // topic's max.message.bytes, so the appender must split it (else all are nacked).
        let mut pending = Vec::new();
        for i in 0..N {
            pending.push(
                ch.basic_publish(
                    "".into(),
                    "durable-log".into(),
                    BasicPublishOptions::default(),
                    &body(i),
                    BasicProperties::default(),
                )
                .await
                .expect("publish"),
            );
        }
        for p in pending {
            assert!(p.await.expect("confirm").is_ack());
        }
    }
    broker.kill9();
    broker.restart();
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    let mut c = stream_consumer(&ch, "durable-log", 200, &[("x-stream-offset", s("first"))])
        .await
        .unwrap();
    let ds = take(&mut c, N as usize, 5).await;
    assert_eq!(
        ds.len(),
        N as usize,
        "every confirmed message is there after kill -9"
    );
    for (i, d) in ds.iter().enumerate() {
        assert_eq!(d.data, body(i as u32));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_rabbitmqs_and_arguments_are_topic_configs() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let declare_s = |durable, exclusive, auto_delete, more: Vec<(&'static str, AMQPValue)>| {
        let conn = &conn;
        async move {
            let ch = channel(conn).await;
            ch.queue_declare(
                "s".into(),
                QueueDeclareOptions {
                    durable,
                    exclusive,
                    auto_delete,
                    ..Default::default()
                },
                stream_args(&more),
            )
            .await
        }
    };
    assert_eq!(
        refused_code(declare_s(false, false, false, vec![]).await).await,
        406
    );
    assert_eq!(
        refused_code(declare_s(true, true, false, vec![]).await).await,
        406
    );
    assert_eq!(
        refused_code(declare_s(true, false, true, vec![]).await).await,
        406
    );
    let max_len = vec![("x-max-length", AMQPValue::LongInt(5))];
    assert_eq!(
        refused_code(declare_s(true, false, false, max_len).await).await,
        406
    );
    let bad_age = vec![("x-max-age", s("7 days"))];
    assert_eq!(
        refused_code(declare_s(true, false, false, bad_age).await).await,
        406
    );
    let ok = vec![
        ("x-max-length-bytes", AMQPValue::LongLongInt(1 << 30)),
        ("x-max-age", s("7D")),
        (
            "x-stream-max-segment-size-bytes",
            AMQPValue::LongInt(1 << 24),
        ),
        ("x-initial-cluster-size", AMQPValue::LongInt(3)),
    ];
    declare_s(true, false, false, ok)
        .await
        .expect("stream declared");

    // The arguments are the topic's configs, as Kafka describes them.
    let r = block_on(
        admin(&broker).describe_configs(&[ResourceSpecifier::Topic("s")], &AdminOptions::new()),
    )
    .expect("describe");
    let res = r.into_iter().next().unwrap().expect("described");
    let value = |k: &str| res.get(k).and_then(|e| e.value.clone());
    assert_eq!(value("retention.bytes").as_deref(), Some("1073741824"));
    assert_eq!(value("retention.ms").as_deref(), Some("604800000"));
    assert_eq!(value("segment.bytes").as_deref(), Some("16777216"));

    // Consuming: a prefetch and manual acks are required, and a valid offset spec.
    let ch = channel(&conn).await;
    let no_qos = ch
        .basic_consume(
            "s".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(refused_code(no_qos).await, 406);
    let ch = channel(&conn).await;
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let no_ack = ch
        .basic_consume(
            "s".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_eq!(refused_code(no_ack).await, 406);
    let ch = channel(&conn).await;
    let bad = stream_consumer(&ch, "s", 10, &[("x-stream-offset", s("middle"))]).await;
    assert_eq!(refused_code(bad).await, 406);
    // x-stream-offset on a classic queue is ignored.
    let ch = channel(&conn).await;
    declare(&ch, "classic", FieldTable::default()).await;
    stream_consumer(&ch, "classic", 10, &[("x-stream-offset", s("middle"))])
        .await
        .expect("ignored on a classic queue");
    // basic.get: not implemented for streams (connection error 540, as RabbitMQ).
    let ch = channel(&conn).await;
    let got = ch.basic_get("s".into(), BasicGetOptions::default()).await;
    assert_eq!(refused_code(got).await, 540);

    // A topic of several partitions is not a stream queue yet.
    let conn = connect(&broker.amqp_url()).await;
    create_topic(&broker, "wide", 3, &[]);
    let ch = channel(&conn).await;
    assert_eq!(refused_code(passive_queue(&ch, "wide").await).await, 406);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_queue_deletes_the_topic_and_the_reverse() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare_stream(&ch, "short-lived", &[]).await;
    let meta = |t: &str| {
        let c: BaseConsumer = assigned(&broker, &[], t, 1, Offset::Beginning);
        c.fetch_metadata(Some(t), Duration::from_secs(5))
            .map(|m| m.topics()[0].error().is_none())
            .unwrap_or(false)
    };
    assert!(meta("short-lived"), "declaring made the topic");
    // if-empty and if-unused refuse as for any queue (406), and keep the stream.
    confirm_select(&ch).await;
    let c = publish_outcome(&ch, "", "short-lived", b"m", Default::default()).await;
    assert!(c.expect("confirm").is_ack());
    let if_empty = QueueDeleteOptions {
        if_empty: true,
        ..Default::default()
    };
    assert_eq!(
        refused_code(ch.queue_delete("short-lived".into(), if_empty).await).await,
        406
    );
    let cc = channel(&conn).await;
    let _reader = stream_consumer(&cc, "short-lived", 5, &[("x-stream-offset", s("first"))])
        .await
        .expect("consume");
    let ch = channel(&conn).await;
    let if_unused = QueueDeleteOptions {
        if_unused: true,
        ..Default::default()
    };
    assert_eq!(
        refused_code(ch.queue_delete("short-lived".into(), if_unused).await).await,
        406
    );
    assert!(meta("short-lived"), "a refused delete keeps the topic");
    let ch = channel(&conn).await;
    ch.queue_delete("short-lived".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let r = block_on(admin(&broker).delete_topics(&["short-lived"], &AdminOptions::new()))
        .expect("delete_topics");
    assert!(r[0].is_err(), "the topic went with the queue: {r:?}");

    declare_stream(&ch, "by-kafka", &[]).await;
    let r = block_on(admin(&broker).delete_topics(&["by-kafka"], &AdminOptions::new()))
        .expect("delete_topics");
    assert!(r[0].is_ok(), "{r:?}");
    let ch = channel(&conn).await;
    assert_eq!(
        refused_code(passive_queue(&ch, "by-kafka").await).await,
        404
    );
}

/// A stream read runs on one shard: the stream queue is owned by its partition's shard,
/// and a consumer's connection moves there before its first `basic.consume`, whether the
/// stream was declared over AMQP or is a Kafka topic AMQP finds at that consume. From a
/// connection on each shard, each consumer is served by the queue's owner shard, reads
/// every record from `first` in order, and its acks return credit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_is_read_on_its_partitions_shard_from_either_shard() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    create_topic(&broker, "from-kafka", 1, &[]);
    let producer: FutureProducer = kafka::client(&broker, &[]);
    for i in 0..5 {
        let value = format!("k{i}");
        block_on(
            producer
                .send_result(FutureRecord::<(), _>::to("from-kafka").payload(&value))
                .expect("enqueue"),
        )
        .expect("delivered")
        .expect("produced");
    }
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare_stream(&ch, "from-amqp", &[]).await;
    confirm_select(&ch).await;
    for i in 0..5 {
        publish_acked(&ch, "from-amqp", format!("a{i}").as_bytes()).await;
    }
    for (queue, prefix) in [("from-kafka", "k"), ("from-amqp", "a")] {
        // The partition's shard; the connection on the other one consumes first (for
        // `from-kafka`, before AMQP shows the topic as a queue at all).
        let owner = portask::util::partition_owner(queue, 0, 2);
        // Fresh connections: one that already consumes stays where it is.
        let mut pair = one_on_each_shard(&broker.amqp_url()).await;
        pair.swap(0, 1 - owner);
        for (_, ch) in &pair {
            let mut c = stream_consumer(ch, queue, 2, &[("x-stream-offset", s("first"))])
                .await
                .expect("basic.consume");
            let shown = http_json(&broker, &format!("/api/v1/queues/%2f/{queue}"))["owner_shard"]
                .as_u64()
                .expect("owner_shard");
            assert_eq!(
                shown, owner as u64,
                "{queue}: owned by its partition's shard"
            );
            assert_eq!(
                shard_of(&c),
                owner,
                "{queue}: the consumer is served on the queue's shard"
            );
            for i in 0..5 {
                let d = next(&mut c, 10).await.expect("a record");
                assert_eq!(d.data, format!("{prefix}{i}").as_bytes(), "{queue}");
                assert_eq!(stream_offset(&d), i);
                // A prefetch of 2: the rest comes only as these acks return credit.
                d.ack(BasicAckOptions::default()).await.expect("ack");
            }
        }
    }
}

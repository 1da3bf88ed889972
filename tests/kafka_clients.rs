//! Kafka produce/consume and admin through librdkafka (the rdkafka crate) against the real
//! broker binary: two shards, ephemeral ports, a temp data dir.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::kafka::{self, admin, assign, create_topic, delivered, enqueue, poll_n};
use common::{data_dir, Broker};
use futures::executor::block_on;
use rdkafka::admin::{AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

fn producer(broker: &Broker, extra: &[(&str, &str)]) -> FutureProducer {
    let mut settings = vec![("message.timeout.ms", "30000"), ("linger.ms", "5")];
    settings.extend_from_slice(extra);
    kafka::client(broker, &settings)
}

fn consumer(broker: &Broker, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut settings = vec![
        ("group.id", "unused-assign-only"),
        ("enable.auto.commit", "false"),
        ("enable.partition.eof", "false"),
    ];
    settings.extend_from_slice(extra);
    kafka::client(broker, &settings)
}

#[test]
fn keyed_messages_round_trip_in_order_with_headers_and_timestamps() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    create_topic(&broker, "orders", 6, &[]);
    let p = producer(&broker, &[("acks", "1"), ("batch.num.messages", "1000")]);
    const N: usize = 100_000;
    let base_ts = 1_700_000_000_000i64;
    let mut sent_partition = HashMap::new();
    for chunk in (0..N).collect::<Vec<_>>().chunks(10_000) {
        let futures: Vec<_> = chunk
            .iter()
            .map(|i| {
                let key = format!("key-{i}");
                let value = format!("value-{i}-{}", "x".repeat(i % 50));
                let headers = OwnedHeaders::new().insert(Header {
                    key: "seq",
                    value: Some(&i.to_string()),
                });
                let record = FutureRecord::to("orders")
                    .key(key.as_str())
                    .payload(value.as_str())
                    .headers(headers)
                    .timestamp(base_ts + *i as i64);
                (*i, enqueue(&p, record))
            })
            .collect();
        for (i, f) in futures {
            let d = delivered(f);
            sent_partition.insert(i, (d.partition, d.offset));
        }
    }
    let parts: std::collections::HashSet<i32> = sent_partition.values().map(|(p, _)| *p).collect();
    assert_eq!(parts.len(), 6, "keys should spread over all partitions");

    let c = consumer(&broker, &[]);
    assign(&c, "orders", 6, Offset::Beginning);
    let mut seen = vec![false; N];
    let mut last_seq: HashMap<i32, usize> = HashMap::new();
    let got = poll_n(&c, N, Duration::from_secs(120), |m| {
        let seq: usize = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "seq"))
            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
            .expect("seq header");
        assert!(!seen[seq], "message {seq} delivered twice");
        seen[seq] = true;
        assert_eq!(m.key(), Some(format!("key-{seq}").as_bytes()));
        assert_eq!(
            m.payload(),
            Some(format!("value-{seq}-{}", "x".repeat(seq % 50)).as_bytes())
        );
        assert_eq!(m.timestamp().to_millis(), Some(base_ts + seq as i64));
        assert_eq!(sent_partition[&seq], (m.partition(), m.offset()));
        if let Some(prev) = last_seq.insert(m.partition(), seq) {
            assert!(
                prev < seq,
                "partition {} out of order: {prev} then {seq}",
                m.partition()
            );
        }
    });
    assert_eq!(got, N, "every message consumed");
    assert!(seen.iter().all(|s| *s));
}

#[test]
fn every_compression_codec_round_trips_and_is_stored_as_produced() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    for (codec, id) in [("gzip", 1), ("snappy", 2), ("lz4", 3), ("zstd", 4)] {
        let topic = format!("c-{codec}");
        create_topic(&broker, &topic, 1, &[]);
        let p = producer(
            &broker,
            &[("compression.codec", codec), ("linger.ms", "50")],
        );
        let futures: Vec<_> = (0..500)
            .map(|i| {
                let v = format!("{codec} message {i} {}", "abc".repeat(20));
                enqueue(&p, FutureRecord::to(&topic).key("k").payload(v.as_str()))
            })
            .collect();
        for f in futures {
            delivered(f);
        }
        let c = consumer(&broker, &[]);
        assign(&c, &topic, 1, Offset::Beginning);
        let mut i = 0;
        let got = poll_n(&c, 500, Duration::from_secs(30), |m| {
            let want = format!("{codec} message {i} {}", "abc".repeat(20));
            assert_eq!(m.payload(), Some(want.as_bytes()));
            i += 1;
        });
        assert_eq!(got, 500, "{codec}");
        // The batches on disk still carry the producer's codec in their attributes
        // (librdkafka sends a batch uncompressed when compressing would not shrink it).
        let path = find_segment(&data, &topic, 0);
        let bytes = std::fs::read(&path).expect("segment file");
        let mut codecs = Vec::new();
        let mut at = 0;
        while at + 61 <= bytes.len() {
            let len =
                i32::from_be_bytes([bytes[at + 8], bytes[at + 9], bytes[at + 10], bytes[at + 11]]);
            if len <= 0 {
                break;
            }
            codecs.push(i16::from_be_bytes([bytes[at + 21], bytes[at + 22]]) & 7);
            at += 12 + len as usize;
        }
        assert!(
            codecs.contains(&id),
            "{codec} batches stored as produced: {codecs:?} ({} bytes, parsed to {at})",
            bytes.len()
        );
    }
}

/// The active `.log` file of a partition, whichever shard owns it.
pub fn find_segment(data: &std::path::Path, topic: &str, partition: i32) -> std::path::PathBuf {
    for shard in std::fs::read_dir(data).expect("data dir").flatten() {
        let dir = shard
            .path()
            .join("kafka")
            .join(format!("{topic}-{partition}"));
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut logs: Vec<_> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            logs.sort();
            if let Some(first) = logs.into_iter().next() {
                return first;
            }
        }
    }
    panic!("no segment for {topic}-{partition}");
}

#[test]
fn long_poll_returns_as_soon_as_data_arrives() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    create_topic(&broker, "poll", 2, &[]);
    let c = consumer(
        &broker,
        &[("fetch.wait.max.ms", "20000"), ("fetch.min.bytes", "1")],
    );
    assign(&c, "poll", 2, Offset::End);
    // Let the consumer reach its long poll on the empty partitions.
    assert_eq!(poll_n(&c, 1, Duration::from_secs(2), |_| {}), 0);
    let p = producer(&broker, &[("linger.ms", "0")]);
    let sent = Instant::now();
    block_on(
        p.send(
            FutureRecord::to("poll")
                .key("k")
                .payload("wake up")
                .partition(1),
            Timeout::After(Duration::from_secs(10)),
        ),
    )
    .map_err(|(e, _)| e)
    .expect("delivery");
    let mut payload = Vec::new();
    let got = poll_n(&c, 1, Duration::from_secs(15), |m| {
        payload = m.payload().unwrap_or_default().to_vec();
    });
    assert_eq!(got, 1);
    assert_eq!(payload, b"wake up");
    // Well before the 20 s max wait: the poll was woken by the append.
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "took {:?}",
        sent.elapsed()
    );
}

#[test]
fn errors_clients_understand() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[("PORTASK_KAFKA__AUTO_CREATE_TOPICS", "false")]);
    // Unknown topic: the client is told, nothing is created.
    let p = producer(&broker, &[("message.timeout.ms", "3000")]);
    let r = block_on(p.send(
        FutureRecord::to("missing").key("k").payload("v"),
        Timeout::After(Duration::from_secs(5)),
    ));
    match r {
        Err((KafkaError::MessageProduction(code), _)) => assert!(
            matches!(
                code,
                RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownTopic
                    | RDKafkaErrorCode::MessageTimedOut
            ),
            "{code:?}"
        ),
        other => panic!("expected an error, got {other:?}"),
    }
    let md = p
        .client()
        .fetch_metadata(Some("missing"), Duration::from_secs(5))
        .expect("metadata");
    assert_eq!(
        md.topics()[0].error(),
        Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
    );

    // Too large for the topic's max.message.bytes.
    create_topic(&broker, "small", 1, &[("max.message.bytes", "1000")]);
    let big = "x".repeat(5000);
    let r = block_on(p.send(
        FutureRecord::to("small").key("k").payload(&big),
        Timeout::After(Duration::from_secs(5)),
    ));
    match r {
        Err((KafkaError::MessageProduction(code), _)) => {
            assert_eq!(code, RDKafkaErrorCode::MessageSizeTooLarge)
        }
        other => panic!("expected MESSAGE_TOO_LARGE, got {other:?}"),
    }

    // Bad topic name.
    let r = block_on(admin(&broker).create_topics(
        &[NewTopic::new("bad name!", 1, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .expect("create_topics");
    assert_eq!(
        r[0].as_ref().err().map(|e| e.1),
        Some(RDKafkaErrorCode::InvalidTopic)
    );

    // Offset out of range with auto.offset.reset=error.
    create_topic(&broker, "short", 1, &[]);
    block_on(p.send(
        FutureRecord::to("short").key("k").payload("only"),
        Timeout::After(Duration::from_secs(5)),
    ))
    .map_err(|(e, _)| e)
    .expect("delivery");
    let c = consumer(&broker, &[("auto.offset.reset", "error")]);
    assign(&c, "short", 1, Offset::Offset(1000));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut saw = None;
    while Instant::now() < deadline && saw.is_none() {
        if let Some(Err(e)) = c.poll(Duration::from_millis(200)) {
            saw = Some(e);
        }
    }
    let e = saw.expect("an offset-out-of-range error");
    // librdkafka reports the broker's OFFSET_OUT_OF_RANGE as a reset it may not do.
    assert!(
        format!("{e:?}").contains("AutoOffsetReset")
            || format!("{e:?}").contains("OffsetOutOfRange"),
        "{e:?}"
    );
}

#[test]
fn admin_create_validate_delete_and_grow_topics() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let a = admin(&broker);
    // validate_only creates nothing.
    let r = block_on(a.create_topics(
        &[NewTopic::new("checked", 3, TopicReplication::Fixed(1))],
        &AdminOptions::new().validate_only(true),
    ))
    .expect("create");
    assert!(r[0].is_ok());
    let md = a
        .inner()
        .fetch_metadata(None, Duration::from_secs(5))
        .expect("md");
    assert!(md.topics().iter().all(|t| t.name() != "checked"));

    create_topic(&broker, "grow", 2, &[]);
    let r = block_on(a.create_topics(
        &[NewTopic::new("grow", 2, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .expect("create");
    assert_eq!(
        r[0].as_ref().err().map(|e| e.1),
        Some(RDKafkaErrorCode::TopicAlreadyExists)
    );
    let r = block_on(a.create_partitions(&[NewPartitions::new("grow", 5)], &AdminOptions::new()))
        .expect("create partitions");
    assert!(r[0].is_ok(), "{:?}", r[0]);
    let md = a
        .inner()
        .fetch_metadata(Some("grow"), Duration::from_secs(5))
        .expect("md");
    assert_eq!(md.topics()[0].partitions().len(), 5);
    let r = block_on(a.create_partitions(&[NewPartitions::new("grow", 3)], &AdminOptions::new()))
        .expect("create partitions");
    assert_eq!(
        r[0].as_ref().err().map(|e| e.1),
        Some(RDKafkaErrorCode::InvalidPartitions)
    );

    // Produce to a new partition, then delete the topic: its files go.
    let p = producer(&broker, &[]);
    block_on(p.send(
        FutureRecord::to("grow").key("k").payload("v").partition(4),
        Timeout::After(Duration::from_secs(10)),
    ))
    .map_err(|(e, _)| e)
    .expect("delivery to a new partition");
    let seg = find_segment(&data, "grow", 4);
    assert!(seg.exists());
    let r = block_on(a.delete_topics(&["grow"], &AdminOptions::new())).expect("delete");
    assert!(r[0].is_ok(), "{:?}", r[0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while seg.parent().is_some_and(|d| d.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !seg.parent().is_some_and(|d| d.exists()),
        "partition directory removed"
    );
    let md = a
        .inner()
        .fetch_metadata(None, Duration::from_secs(5))
        .expect("md");
    assert!(md.topics().iter().all(|t| t.name() != "grow"));
}

#[test]
fn offsets_for_times_finds_the_first_record_at_a_timestamp() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    create_topic(&broker, "times", 1, &[]);
    let p = producer(&broker, &[("linger.ms", "0")]);
    for i in 0..20i64 {
        block_on(
            p.send(
                FutureRecord::to("times")
                    .key("k")
                    .payload("v")
                    .timestamp(1_000_000 + i * 1000),
                Timeout::After(Duration::from_secs(10)),
            ),
        )
        .map_err(|(e, _)| e)
        .expect("delivery");
    }
    let c = consumer(&broker, &[]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("times", 0, Offset::Offset(1_000_000 + 7500))
        .expect("tpl");
    let r = c
        .offsets_for_times(tpl, Duration::from_secs(5))
        .expect("offsets_for_times");
    assert_eq!(r.elements()[0].offset(), Offset::Offset(8));
    let (low, high) = c
        .fetch_watermarks("times", 0, Duration::from_secs(5))
        .expect("watermarks");
    assert_eq!((low, high), (0, 20));
}

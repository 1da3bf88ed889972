//! The stream queue record mapping (`portask::stream::record`) on batches real producers
//! wrote: rdkafka produces records with headers under every codec (and a transaction, so
//! the log holds a control batch), the test fetches the partition over the wire and maps
//! the stored batches to AMQP delivery parts with `records_of`/`delivery_of`. And a batch
//! of AMQP-mapped records (`record_of`), produced raw, reads back through rdkafka with
//! the documented header names and through the mapping with byte-identical properties.
//! Needs no stream queue: it checks the decoding of what real producers send.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::common::kafka::{
    assigned, client, create_topic, delivered, enqueue, read_frame, request_frame,
};
use crate::common::{data_dir, Broker};
use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::{Buf, Bytes};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use portask::amqp::message::{encode_properties, parse_props, Message, MessageData, Parts};
use portask::storage::batch::{encode_plain_batch, BatchHeader};
use portask::stream::record::{delivery_of, record_of, records_of, KeyFrom, StoredRecord};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};
use rdkafka::Offset;

const T: Duration = Duration::from_secs(30);

fn connect(b: &Broker) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", b.port)).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    s
}

/// The raw record batches of partition 0 of `topic` from `offset` (Fetch v11,
/// read_uncommitted), as a consumer receives them.
fn fetch_raw(s: &mut TcpStream, topic: &str, offset: i64) -> Bytes {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    s.write_all(&request_frame(ApiKey::Fetch, 11, 7, "stream-records", &req))
        .expect("write");
    let mut resp = read_frame(s).expect("fetch response");
    assert_eq!(resp.get_i32(), 7);
    let resp = FetchResponse::decode(&mut resp, 11).expect("fetch response");
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.records.clone().unwrap_or_default()
}

/// Every record of partition 0 of `topic` from `from` up to `end`, fetched and decoded
/// the way a stream queue's reader does (following `next_offset`).
fn read_records(s: &mut TcpStream, topic: &str, from: i64, end: i64) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut records = Vec::new();
    let mut at = from;
    while at < end {
        let batches = fetch_raw(s, topic, at);
        let mut budget = 1 << 20;
        let next =
            records_of(&batches, at, &mut budget, &mut records).expect("stored batches decode");
        assert!(next > at, "the read moves on from {at}");
        at = next;
        out.append(&mut records);
    }
    out
}

/// A produced record: key, value, headers.
type Expected = (
    Option<String>,
    Option<String>,
    Vec<(String, Option<String>)>,
);

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Produces to partition 0 of `mapped` five records with headers (one with a null key,
/// one with a null value) under each codec with rdkafka, then a committed transaction of
/// two; returns what each record holds, in offset order.
fn kafka_workload(broker: &Broker) -> Vec<Expected> {
    create_topic(broker, "mapped", 1, &[]);
    let mut expected: Vec<Expected> = Vec::new();
    for codec in ["gzip", "snappy", "lz4", "zstd", "none"] {
        let p: FutureProducer = client(
            broker,
            &[
                ("compression.type", codec),
                ("linger.ms", "50"),
                ("acks", "all"),
            ],
        );
        let futures: Vec<_> = (0..5)
            .map(|i| {
                let key = (i != 4).then(|| format!("{codec}-key-{i}"));
                let value = (i != 3).then(|| format!("{codec} value {i} {}", "z".repeat(200)));
                let mut record = FutureRecord::<String, String>::to("mapped")
                    .partition(0)
                    .timestamp(1_700_000_000_000 + i);
                if let Some(k) = &key {
                    record = record.key(k);
                }
                if let Some(v) = &value {
                    record = record.payload(v);
                }
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "codec",
                        value: Some(codec),
                    })
                    .insert(Header {
                        key: "null-header",
                        value: None::<&str>,
                    });
                expected.push((
                    key.clone(),
                    value.clone(),
                    vec![
                        ("codec".into(), Some(codec.into())),
                        ("null-header".into(), None),
                    ],
                ));
                let record = record.headers(headers);
                enqueue(&p, record)
            })
            .collect();
        for f in futures {
            delivered(f);
        }
    }
    // A committed transaction: two records, then a control batch (the commit marker).
    let tp: BaseProducer = client(
        broker,
        &[
            ("transactional.id", "stream-records"),
            ("compression.type", "lz4"),
        ],
    );
    tp.init_transactions(T).expect("init_transactions");
    tp.begin_transaction().expect("begin");
    for i in 0..2 {
        let v = format!("txn {i}");
        crate::common::kafka::send_base(
            &tp,
            BaseRecord::<str, str>::to("mapped")
                .partition(0)
                .key("t")
                .payload(&v),
        );
        expected.push((Some("t".into()), Some(v), vec![]));
    }
    tp.commit_transaction(T).expect("commit");
    expected
}

#[test]
fn kafka_producers_batches_map_to_amqp_deliveries() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let expected = kafka_workload(&broker);
    let (_, end) = crate::common::kafka::watermarks(&broker, "mapped", 0);
    assert_eq!(end, 28, "25 records, 2 in a transaction and its marker");

    let mut s = connect(&broker);
    // The log holds what the producers sent: batches of every codec, and a control batch.
    let mut codecs = std::collections::BTreeSet::new();
    let mut control = 0;
    let mut at = 0;
    while at < end {
        let batches = fetch_raw(&mut s, "mapped", at);
        let mut rest = &batches[..];
        while let Some(h) = BatchHeader::parse(rest).filter(|h| h.size <= rest.len()) {
            codecs.insert(h.compression());
            control += usize::from(h.is_control());
            at = h.last_offset() + 1;
            rest = &rest[h.size..];
        }
    }
    assert_eq!(codecs.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert_eq!(control, 1);
    let records = read_records(&mut s, "mapped", 0, end);
    assert_eq!(records.len(), expected.len(), "every record but the marker");
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..27).collect::<Vec<_>>());
    for (r, (key, value, headers)) in records.iter().zip(&expected) {
        let d = delivery_of(r);
        assert_eq!(d.exchange, "");
        assert_eq!(
            d.routing_key,
            key.clone().unwrap_or_default(),
            "offset {}",
            r.offset
        );
        assert_eq!(
            d.body,
            value.clone().unwrap_or_default(),
            "offset {}",
            r.offset
        );
        let p = parse_props(&d.properties).expect("valid AMQP properties");
        assert_eq!(*p.timestamp(), Some((r.timestamp / 1000) as u64));
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert(
                k.as_str().into(),
                v.as_deref().map_or(AMQPValue::Void, long_string),
            );
        }
        let got = p.headers().clone().unwrap_or_default();
        assert_eq!(got, table, "offset {}", r.offset);
    }
    assert_eq!(records[1].timestamp, 1_700_000_000_001);

    // From the middle of a compressed batch: the batch comes whole, the records before
    // the offset are left out.
    let batches = fetch_raw(&mut s, "mapped", 7);
    let mut budget = 1 << 20;
    let mut records = Vec::new();
    records_of(&batches, 7, &mut budget, &mut records).expect("decodes");
    assert_eq!(records.first().map(|r| r.offset), Some(7));
    // From the commit marker: nothing to deliver (what the buffer held is replaced), and
    // the next read starts past it.
    let batches = fetch_raw(&mut s, "mapped", 27);
    let next = records_of(&batches, 27, &mut budget, &mut records).expect("decodes");
    assert!(records.is_empty());
    assert_eq!(next, 28);
}

/// Produces `msg` as `record_of` maps it (key from the routing key), in one gzip batch,
/// to partition 0 of `topic` with a raw Produce v9.
fn produce_amqp(s: &mut TcpStream, topic: &str, msg: &Message) {
    let batch = encode_plain_batch(
        std::iter::once(record_of(msg, KeyFrom::RoutingKey, 1_700_000_000_000)),
        kafka_protocol::records::Compression::Gzip,
    )
    .expect("batch");
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch))])]);
    s.write_all(&request_frame(
        ApiKey::Produce,
        9,
        3,
        "stream-records",
        &req,
    ))
    .expect("write");
    let mut resp = read_frame(s).expect("produce response");
    assert_eq!(resp.get_i32(), 3);
    assert_eq!(resp.get_u8(), 0, "no header tags");
    let resp = ProduceResponse::decode(&mut resp, 9).expect("produce response");
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
}

#[test]
fn amqp_mapped_records_read_back_over_kafka_and_amqp() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    create_topic(&broker, "from-amqp", 1, &[]);
    let mut headers = FieldTable::default();
    headers.insert("tenant".into(), long_string("acme"));
    headers.insert("attempt".into(), AMQPValue::LongInt(3));
    let props = encode_properties(
        &AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_message_id("m-1".into())
            .with_correlation_id("c-1".into())
            .with_delivery_mode(2)
            .with_headers(headers),
    )
    .expect("encodes");
    let msg = Message::new(MessageData {
        parts: Parts::apart(
            Bytes::from_static(b"amq.topic"),
            Bytes::from_static(b"orders.eu"),
            props.clone(),
            Bytes::from_static(b"hello from AMQP"),
        ),
        persistent: true,
        priority: 0,
        expiration: None,
    });
    let mut s = connect(&broker);
    produce_amqp(&mut s, "from-amqp", &msg);

    // A Kafka consumer sees the AMQP properties under their documented names.
    let c = assigned(&broker, &[], "from-amqp", 1, Offset::Beginning);
    let m = match c.poll(T) {
        Some(Ok(m)) => m.detach(),
        Some(Err(e)) => panic!("consume: {e}"),
        None => panic!("no record within {T:?}"),
    };
    assert_eq!(m.key(), Some(&b"orders.eu"[..]));
    assert_eq!(m.payload(), Some(&b"hello from AMQP"[..]));
    let h = m.headers().expect("headers");
    let get = |name: &str| {
        h.iter()
            .find(|x| x.key == name)
            .and_then(|x| x.value)
            .map(|v| v.to_vec())
    };
    assert_eq!(get("content-type").as_deref(), Some(&b"text/plain"[..]));
    assert_eq!(get("message-id").as_deref(), Some(&b"m-1"[..]));
    assert_eq!(get("correlation-id").as_deref(), Some(&b"c-1"[..]));
    assert_eq!(get("delivery-mode").as_deref(), Some(&b"2"[..]));
    assert_eq!(get("amqp-exchange").as_deref(), Some(&b"amq.topic"[..]));
    assert_eq!(get("amqp-header-tenant").as_deref(), Some(&b"acme"[..]));
    assert_eq!(get("amqp-header-attempt").as_deref(), Some(&b"3"[..]));
    assert_eq!(get("amqp-properties").as_deref(), Some(&props[..]));

    // And an AMQP delivery gets the publisher's bytes back.
    let records = read_records(&mut s, "from-amqp", 0, 1);
    let d = delivery_of(&records[0]);
    assert_eq!(d.exchange, "amq.topic");
    assert_eq!(d.routing_key, "orders.eu");
    assert_eq!(d.properties, props);
    assert_eq!(d.body, "hello from AMQP");
}

/// Writes the seeds of the `stream_records` fuzz target (`fuzz/corpus/stream_records/`):
/// the batches of `kafka_workload` and of an AMQP-mapped message with every property, as
/// Fetch answers hold them, each behind the one-byte read offset the target takes first.
/// Ignored in the normal run (it rewrites files in the repository); run by hand:
/// `cargo test --test streams -- --ignored capture_seeds`.
#[test]
#[ignore = "rewrites fuzz/corpus/stream_records/ in the repository; run by hand"]
fn capture_seeds() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    kafka_workload(&broker);
    create_topic(&broker, "from-amqp", 1, &[]);
    let mut s = connect(&broker);
    let mut table = FieldTable::default();
    table.insert("n".into(), AMQPValue::LongLongInt(-1));
    table.insert("on".into(), AMQPValue::Boolean(true));
    table.insert("s".into(), long_string("text"));
    let props = encode_properties(
        &AMQPProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("identity".into())
            .with_headers(table)
            .with_delivery_mode(2)
            .with_priority(5)
            .with_correlation_id("c".into())
            .with_reply_to("r".into())
            .with_expiration("1000".into())
            .with_message_id("m".into())
            .with_timestamp(1_700_000_000)
            .with_type("t".into())
            .with_user_id("guest".into())
            .with_app_id("a".into())
            .with_cluster_id("c1".into()),
    )
    .expect("encodes");
    produce_amqp(
        &mut s,
        "from-amqp",
        &Message::new(MessageData {
            parts: Parts::apart(
                Bytes::from_static(b"x"),
                Bytes::from_static(b"rk"),
                props,
                Bytes::from_static(b"{}"),
            ),
            persistent: true,
            priority: 5,
            expiration: Some(1000),
        }),
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/stream_records");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    // Replaces the captured seeds; hand-added ones (`regression-*`) stay.
    for e in std::fs::read_dir(&dir).expect("corpus dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("fetch-") || name.starts_with("batch-") {
            std::fs::remove_file(e.path()).expect("remove seed");
        }
    }
    let mut n = 0;
    for (topic, from) in [
        ("mapped", 0),
        ("mapped", 7),
        ("mapped", 27),
        ("from-amqp", 0),
    ] {
        let batches = fetch_raw(&mut s, topic, from);
        let mut seed = vec![from as u8];
        seed.extend_from_slice(&batches);
        std::fs::write(dir.join(format!("fetch-{topic}-{from}.bin")), &seed).expect("write");
        // And each batch alone.
        let mut rest = &batches[..];
        while let Some(h) = BatchHeader::parse(rest).filter(|h| h.size <= rest.len()) {
            let mut seed = vec![0u8];
            seed.extend_from_slice(&rest[..h.size]);
            std::fs::write(dir.join(format!("batch-{n}.bin")), &seed).expect("write");
            n += 1;
            rest = &rest[h.size..];
        }
    }
}

//! Kafka helpers for the tests: rdkafka client builders with the settings the tests share,
//! topic creation that asserts it worked, sends that wait out a full client queue,
//! consumers assigned to every partition of a topic; and, for tests that speak the wire
//! protocol themselves, request frames and response reads.
//!
//! Every builder takes what to connect to as a [`Bootstrap`]: a [`Broker`] or a
//! `host:port` string (a test that puts a proxy in front of the broker passes the proxy's).
#![allow(dead_code)]

use std::io::Read;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::executor::block_on;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, FromClientConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message, ToBytes};
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::Broker;

/// What a client connects to: `bootstrap.servers`.
pub trait Bootstrap {
    fn servers(&self) -> String;
}

impl Bootstrap for Broker {
    fn servers(&self) -> String {
        self.bootstrap()
    }
}

impl Bootstrap for str {
    fn servers(&self) -> String {
        self.to_owned()
    }
}

impl Bootstrap for String {
    fn servers(&self) -> String {
        self.clone()
    }
}

/// A client of any kind (`FutureProducer`, `BaseProducer`, `ThreadedProducer`,
/// `BaseConsumer`…) with `bootstrap.servers` and `settings`, in that order.
pub fn client<T: FromClientConfig>(at: &(impl Bootstrap + ?Sized), settings: &[(&str, &str)]) -> T {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", at.servers());
    for (k, v) in settings {
        c.set(*k, *v);
    }
    c.create().expect("rdkafka client")
}

pub fn admin(at: &(impl Bootstrap + ?Sized)) -> AdminClient<DefaultClientContext> {
    client(at, &[])
}

/// Creates `name` with `partitions` and topic `configs`; panics unless it was created.
pub fn create_topic(
    at: &(impl Bootstrap + ?Sized),
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let r = block_on(admin(at).create_topics(&[t], &AdminOptions::new())).expect("create_topics");
    assert!(r[0].is_ok(), "create {name}: {:?}", r[0]);
}

/// Creates each `(name, partitions)` in one CreateTopics request; panics unless all were.
pub fn create_topics(at: &(impl Bootstrap + ?Sized), topics: &[(&str, i32)]) {
    let topics: Vec<NewTopic> = topics
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
        .collect();
    let r = block_on(admin(at).create_topics(&topics, &AdminOptions::new())).expect("create");
    for t in r {
        assert!(t.is_ok(), "{t:?}");
    }
}

/// Assigns `c` partitions `0..partitions` of `topic`, each from `from`.
pub fn assign(c: &BaseConsumer, topic: &str, partitions: i32, from: Offset) {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, from).expect("tpl");
    }
    c.assign(&tpl).expect("assign");
}

/// A consumer that only uses `assign()` (its group id is never joined and it commits
/// nothing), reading partitions `0..partitions` of `topic` from `from`. `settings` are
/// applied last, so they may override those two.
pub fn assigned(
    at: &(impl Bootstrap + ?Sized),
    settings: &[(&str, &str)],
    topic: &str,
    partitions: i32,
    from: Offset,
) -> BaseConsumer {
    let mut all = vec![
        ("group.id", "unused-assign-only"),
        ("enable.auto.commit", "false"),
    ];
    all.extend_from_slice(settings);
    let c: BaseConsumer = client(at, &all);
    assign(&c, topic, partitions, from);
    c
}

/// Polls until `n` messages arrived or `within` passed, handing each to `f`; returns how
/// many arrived. Consumer errors are skipped (the count tells a test what went missing).
pub fn poll_n(
    c: &BaseConsumer,
    n: usize,
    within: Duration,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> usize {
    let deadline = Instant::now() + within;
    let mut got = 0;
    while got < n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            f(&m);
            got += 1;
        }
    }
    got
}

/// Hands `f` every message up to the end of each of the consumer's `partitions` (the high
/// watermark, or the last stable offset for `read_committed`), so records past the
/// expected ones are caught too; stops at `within` if some partition never reaches its
/// end. The consumer must have `enable.partition.eof=true` (see `assigned_to_end`).
/// Returns whether every partition reached its end.
pub fn read_to_end(
    c: &BaseConsumer,
    partitions: i32,
    within: Duration,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> bool {
    let deadline = Instant::now() + within;
    let mut at_end = std::collections::BTreeSet::new();
    while (at_end.len() as i32) < partitions && Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                f(&m);
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            _ => {}
        }
    }
    at_end.len() as i32 == partitions
}

/// `assigned` from the beginning, with end-of-partition events on, for `read_to_end`.
pub fn assigned_to_end(
    at: &(impl Bootstrap + ?Sized),
    settings: &[(&str, &str)],
    topic: &str,
    partitions: i32,
) -> BaseConsumer {
    let all = [&[("enable.partition.eof", "true")], settings].concat();
    assigned(at, &all, topic, partitions, Offset::Beginning)
}

/// Enqueues `record`, waiting only while the client's queue is full.
pub fn enqueue<K, P>(p: &FutureProducer, mut record: FutureRecord<'_, K, P>) -> DeliveryFuture
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match p.send_result(record) {
            Ok(f) => return f,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => panic!("enqueue: {e}"),
        }
    }
}

/// Waits for a delivery report; panics unless the record was delivered.
pub fn delivered(f: DeliveryFuture) -> Delivery {
    block_on(f)
        .expect("delivery report")
        .map_err(|(e, _)| e)
        .expect("delivered")
}

/// Enqueues `record` on a `BaseProducer`, serving delivery callbacks while its queue is full.
pub fn send_base<K, P>(p: &BaseProducer, mut record: BaseRecord<'_, K, P>)
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                p.poll(Duration::from_millis(10));
            }
            Err((e, _)) => panic!("enqueue: {e}"),
        }
    }
}

/// (low, high) watermarks of one partition.
pub fn watermarks(at: &(impl Bootstrap + ?Sized), topic: &str, partition: i32) -> (i64, i64) {
    let c: BaseConsumer = client(at, &[]);
    c.fetch_watermarks(topic, partition, Duration::from_secs(10))
        .expect("watermarks")
}

/// One request as a client frames it: size, request header (`client_id`, the header version
/// the API and version call for), body encoded at `version`.
pub fn request_frame<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation: i32,
    client_id: &'static str,
    body: &R,
) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str(client_id)));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header
        .encode(&mut buf, api.request_header_version(version))
        .expect("request header");
    body.encode(&mut buf, version).expect("request body");
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    buf.to_vec()
}

/// Reads one response frame and returns what follows its size (the correlation id first);
/// `None` when the connection is closed or the read times out.
pub fn read_frame(s: &mut impl Read) -> Option<Bytes> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut resp = vec![0u8; usize::try_from(i32::from_be_bytes(len)).ok()?];
    s.read_exact(&mut resp).ok()?;
    Some(Bytes::from(resp))
}

/// A Produce request at `version` (acks=all) of `records` to partition 0 of `topic`, framed.
pub fn produce_frame(
    version: i16,
    correlation: i32,
    topic: &'static str,
    records: Bytes,
) -> Vec<u8> {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str(topic)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    request_frame(ApiKey::Produce, version, correlation, "test", &req)
}

/// A Produce v7 request (acks=all) of one record, `value`, to partition 0 of `topic`,
/// framed; its answer decodes with `produce_answer`.
pub fn produce_one_frame(topic: &'static str, correlation: i32, value: &[u8]) -> Vec<u8> {
    use portask::storage::batch::{encode_plain_batch, PlainRecord};
    let record = PlainRecord {
        timestamp: 1_700_000_000_000,
        key: None,
        value: Some(Bytes::copy_from_slice(value)),
        headers: Default::default(),
    };
    let batch = encode_plain_batch(
        [record].into_iter(),
        kafka_protocol::records::Compression::None,
    )
    .expect("batch");
    produce_frame(7, correlation, topic, batch)
}

/// Reads the answer to a `produce_one_frame`: its correlation id, error code and base offset;
/// `None` when the connection closed.
pub fn produce_answer(s: &mut impl Read) -> Option<(i32, i16, i64)> {
    use kafka_protocol::messages::{ProduceResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;
    let mut resp = read_frame(s)?;
    let header = ResponseHeader::decode(&mut resp, 0).expect("response header");
    let body = ProduceResponse::decode(&mut resp, 7).expect("produce body");
    let part = &body.responses[0].partition_responses[0];
    Some((header.correlation_id, part.error_code, part.base_offset))
}

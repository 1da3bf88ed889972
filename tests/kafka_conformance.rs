//! Kafka conformance gaps found by outside suites (issue 18): Fetch `max_bytes` bounds the
//! whole answer (KIP-74); a compacted topic refuses records without a key; DescribeCluster
//! and Metadata report the authorized operations asked for; the offset and describe APIs
//! treat the empty group id as Kafka does; auto-creation never makes a `__` topic; a
//! transactional producer fails fast; a clean stop logs no missing-file warnings.

mod common;

use portask::storage::batch::{encode_plain_batch, PlainRecord};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use common::kafka::{client, create_topic, read_frame, request_frame};
use common::{data_dir, Broker};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, DescribeClusterRequest, DescribeClusterResponse, FetchRequest, FetchResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::Compression;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;

/// Every operation Kafka supports on the cluster resource (CREATE, ALTER, DESCRIBE,
/// CLUSTER_ACTION, DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE) as bits.
const CLUSTER_OPS: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

fn connect(broker: &Broker) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", broker.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s
}

/// Sends `body` as `api` at `version` and returns the response body (after the
/// correlation id; flexible responses' header tag buffer skipped).
fn call<R: Encodable>(s: &mut TcpStream, api: ApiKey, version: i16, body: &R) -> Bytes {
    s.write_all(&request_frame(api, version, 7, "conformance", body))
        .expect("write");
    let mut resp = read_frame(s).expect("response");
    assert_eq!(resp.get_i32(), 7);
    if api.response_header_version(version) >= 1 {
        assert_eq!(resp.get_u8(), 0, "no header tags");
    }
    resp
}

fn name(s: &'static str) -> TopicName {
    TopicName(StrBytes::from_static_str(s))
}

/// One batch of `n` records of `size`-byte values; `keyed` decides whether they have keys.
fn batch(n: usize, size: usize, keyed: impl Fn(usize) -> bool) -> Bytes {
    let records = (0..n).map(|i| PlainRecord {
        timestamp: 1_700_000_000_000,
        key: keyed(i).then(|| Bytes::from(format!("k{i}"))),
        value: Some(Bytes::from(vec![b'v'; size])),
        headers: Default::default(),
    });
    encode_plain_batch(records, Compression::None).expect("encode batch")
}

fn produce(
    s: &mut TcpStream,
    version: i16,
    topic: &'static str,
    records: Bytes,
) -> ProduceResponse {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let mut resp = call(s, ApiKey::Produce, version, &req);
    ProduceResponse::decode(&mut resp, version).expect("produce body")
}

/// Fetch v11 of partitions `0..partitions` of `topic` from offset 0.
fn fetch(
    s: &mut TcpStream,
    topic: &'static str,
    partitions: i32,
    max_bytes: i32,
    partition_max_bytes: i32,
) -> FetchResponse {
    let req = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(
                (0..partitions)
                    .map(|p| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(partition_max_bytes)
                    })
                    .collect(),
            )]);
    let mut resp = call(s, ApiKey::Fetch, 11, &req);
    FetchResponse::decode(&mut resp, 11).expect("fetch body")
}

fn records_len(r: &FetchResponse) -> Vec<usize> {
    r.responses[0]
        .partitions
        .iter()
        .map(|p| p.records.as_ref().map_or(0, |b| b.len()))
        .collect()
}

/// KIP-74: the answer stays within `max_bytes` (and each partition within its
/// `partition_max_bytes`) except for the first batch of the first non-empty partition.
#[test]
fn fetch_max_bytes_bounds_the_whole_response() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    create_topic(&broker, "kip74", 2, &[]);
    let mut s = connect(&broker);
    // 20 batches of ~10 KB in partition 0, none in partition 1.
    for _ in 0..20 {
        let r = produce(&mut s, 9, "kip74", batch(10, 1000, |_| true));
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    let one = batch(10, 1000, |_| true).len();

    // The whole answer within max_bytes although the partition limit is larger.
    let r = fetch(&mut s, "kip74", 2, (3 * one + 10) as i32, 1 << 20);
    let sizes = records_len(&r);
    assert!(
        sizes[0] >= one && sizes[0] <= 3 * one && sizes[0].is_multiple_of(one),
        "whole batches within max_bytes: {sizes:?}"
    );

    // A limit below one batch still returns the first batch (and only it).
    let r = fetch(&mut s, "kip74", 2, 100, 1 << 20);
    assert_eq!(records_len(&r)[0], one);

    // The partition limit holds too.
    let r = fetch(&mut s, "kip74", 2, 1 << 20, (2 * one) as i32);
    let sizes = records_len(&r);
    assert!(sizes[0] >= one && sizes[0] <= 2 * one, "{sizes:?}");
}

/// librdkafka with `fetch.max.bytes` far below the data it is behind consumes everything
/// (it drops answers larger than `receive.message.max.bytes` and would retry for ever).
#[test]
fn librdkafka_with_small_fetch_max_bytes_consumes_everything() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    create_topic(&broker, "small-fetch", 1, &[]);
    // Batches of 4 records (~40 KB), below what the consumer can receive.
    let p: BaseProducer = client(&broker, &[("linger.ms", "5"), ("batch.num.messages", "4")]);
    let value = vec![b'x'; 10_000];
    for i in 0..300 {
        let key = format!("{i}");
        common::kafka::send_base(&p, BaseRecord::to("small-fetch").key(&key).payload(&value));
    }
    p.flush(Duration::from_secs(30)).expect("flush");

    let c: BaseConsumer = client(
        &broker,
        &[
            ("group.id", "small-fetch"),
            ("auto.offset.reset", "earliest"),
            ("message.max.bytes", "20000"),
            ("fetch.max.bytes", "60000"),
            ("receive.message.max.bytes", "61000"),
        ],
    );
    c.subscribe(&["small-fetch"]).expect("subscribe");
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen < 300 && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.expect("message");
            assert_eq!(m.payload().map(|p| p.len()), Some(10_000));
            seen += 1;
        }
    }
    assert_eq!(seen, 300, "every record consumed");
}

/// A compacted topic refuses records without a key with INVALID_RECORD, naming each
/// keyless record (Produce v8+ `record_errors`) and saying why.
#[test]
fn compacted_topic_refuses_records_without_a_key() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    create_topic(&broker, "compacted", 1, &[("cleanup.policy", "compact")]);
    create_topic(&broker, "deleting", 1, &[]);
    let mut s = connect(&broker);

    let r = produce(&mut s, 9, "compacted", batch(4, 10, |i| i != 1 && i != 3));
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 87, "INVALID_RECORD");
    let indexes: Vec<i32> = p.record_errors.iter().map(|e| e.batch_index).collect();
    assert_eq!(indexes, vec![1, 3]);
    let message = p
        .error_message
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    assert!(message.contains("key"), "{message}");

    // Before v8 only the code.
    let r = produce(&mut s, 7, "compacted", batch(2, 10, |_| false));
    assert_eq!(r.responses[0].partition_responses[0].error_code, 87);

    // Keyed records are taken; a topic that deletes takes anything.
    let r = produce(&mut s, 9, "compacted", batch(3, 10, |_| true));
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 0);
    let r = produce(&mut s, 9, "deleting", batch(3, 10, |_| false));
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
}

/// With no ACLs everything is allowed: DescribeCluster and Metadata report every cluster
/// operation when asked, and the "not asked" marker otherwise.
#[test]
fn cluster_authorized_operations_are_reported_when_asked() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut s = connect(&broker);
    for (asked, want) in [(true, CLUSTER_OPS), (false, i32::MIN)] {
        let req =
            DescribeClusterRequest::default().with_include_cluster_authorized_operations(asked);
        let mut resp = call(&mut s, ApiKey::DescribeCluster, 0, &req);
        let body = DescribeClusterResponse::decode(&mut resp, 0).expect("describe cluster");
        assert_eq!(body.error_code, 0);
        assert_eq!(body.cluster_authorized_operations, want);

        let req = MetadataRequest::default()
            .with_topics(Some(vec![]))
            .with_include_cluster_authorized_operations(asked);
        let mut resp = call(&mut s, ApiKey::Metadata, 8, &req);
        let body = MetadataResponse::decode(&mut resp, 8).expect("metadata");
        assert_eq!(body.cluster_authorized_operations, want);
    }
}

/// Auto-creation never makes an internal-looking (`__`) topic: probing for `__anything`
/// gets UNKNOWN_TOPIC_OR_PARTITION and creates nothing. `__consumer_offsets` is the broker's
/// own internal topic (Kafka's layout, 50 partitions), listed with `is_internal`.
#[test]
fn auto_creation_skips_double_underscore_topics() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut s = connect(&broker);
    let probe = |s: &mut TcpStream, topic: &'static str| {
        let req = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str(topic))))]))
            .with_allow_auto_topic_creation(true);
        let mut resp = call(s, ApiKey::Metadata, 9, &req);
        MetadataResponse::decode(&mut resp, 9).expect("metadata")
    };
    let body = probe(&mut s, "__anything");
    assert_eq!(
        body.topics[0].error_code, 3,
        "__anything: UNKNOWN_TOPIC_OR_PARTITION"
    );
    let body = probe(&mut s, "__consumer_offsets");
    assert_eq!(body.topics[0].error_code, 0);
    assert!(body.topics[0].is_internal);
    assert_eq!(body.topics[0].partitions.len(), 50);
    let mut resp = call(
        &mut s,
        ApiKey::Metadata,
        9,
        &MetadataRequest::default().with_topics(None),
    );
    let body = MetadataResponse::decode(&mut resp, 9).expect("metadata");
    let names: Vec<String> = body
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.to_string()))
        .collect();
    assert_eq!(names, vec!["__consumer_offsets".to_owned()]);
    // An ordinary name is still auto-created.
    let req = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("_single"))))]))
        .with_allow_auto_topic_creation(true);
    let mut resp = call(&mut s, ApiKey::Metadata, 9, &req);
    let body = MetadataResponse::decode(&mut resp, 9).expect("metadata");
    assert_eq!(body.topics[0].error_code, 0);
}

/// Kafka accepts the empty group id in OffsetCommit, OffsetFetch, DescribeGroups and
/// DeleteGroups (old consumers commit under it); the member APIs refuse it.
#[test]
fn empty_group_id_is_handled_as_kafka_does() {
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{
        DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
        GroupId, LeaveGroupRequest, LeaveGroupResponse, OffsetCommitRequest, OffsetCommitResponse,
        OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
    };
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    create_topic(&broker, "empty-group", 1, &[]);
    let mut s = connect(&broker);
    let empty = || GroupId(StrBytes::from_static_str(""));

    let commit = OffsetCommitRequest::default()
        .with_group_id(empty())
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(name("empty-group"))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(5)])]);
    let mut resp = call(&mut s, ApiKey::OffsetCommit, 2, &commit);
    let body = OffsetCommitResponse::decode(&mut resp, 2).expect("commit");
    assert_eq!(body.topics[0].partitions[0].error_code, 0);

    let fetch = OffsetFetchRequest::default()
        .with_group_id(empty())
        .with_topics(None);
    let mut resp = call(&mut s, ApiKey::OffsetFetch, 5, &fetch);
    let body = OffsetFetchResponse::decode(&mut resp, 5).expect("offset fetch");
    assert_eq!(body.error_code, 0);
    assert_eq!(body.topics[0].partitions[0].committed_offset, 5);

    let describe = DescribeGroupsRequest::default().with_groups(vec![empty()]);
    let mut resp = call(&mut s, ApiKey::DescribeGroups, 3, &describe);
    let body = DescribeGroupsResponse::decode(&mut resp, 3).expect("describe");
    assert_eq!(body.groups[0].error_code, 0);

    let sync = SyncGroupRequest::default()
        .with_group_id(empty())
        .with_generation_id(1)
        .with_member_id(StrBytes::from_static_str("m"));
    let mut resp = call(&mut s, ApiKey::SyncGroup, 3, &sync);
    let body = SyncGroupResponse::decode(&mut resp, 3).expect("sync");
    assert_eq!(body.error_code, 24, "INVALID_GROUP_ID");

    let leave = LeaveGroupRequest::default()
        .with_group_id(empty())
        .with_member_id(StrBytes::from_static_str("m"));
    let mut resp = call(&mut s, ApiKey::LeaveGroup, 2, &leave);
    let body = LeaveGroupResponse::decode(&mut resp, 2).expect("leave");
    assert_eq!(body.error_code, 24, "INVALID_GROUP_ID");

    let delete = DeleteGroupsRequest::default().with_groups_names(vec![empty()]);
    let mut resp = call(&mut s, ApiKey::DeleteGroups, 1, &delete);
    let body = DeleteGroupsResponse::decode(&mut resp, 1).expect("delete");
    assert_eq!(body.results[0].error_code, 0);
}

/// A partition that was read but never written leaves no "No such file or directory"
/// warning behind on a clean stop.
#[test]
fn clean_stop_after_reads_only_logs_no_missing_files() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, &[]);
    create_topic(&broker, "read-only", 2, &[]);
    let c: BaseConsumer = client(
        &broker,
        &[("group.id", "reader"), ("auto.offset.reset", "earliest")],
    );
    common::kafka::assign(&c, "read-only", 2, rdkafka::Offset::Beginning);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let _ = c.poll(Duration::from_millis(100));
    }
    drop(c);
    assert!(broker.terminate().success());
    let log = broker.log();
    assert!(!log.contains("No such file"), "{log}");
}

/// Counts the rebalances (assignments received) a consumer goes through.
#[derive(Clone, Default)]
struct Rebalances(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl rdkafka::client::ClientContext for Rebalances {}

impl rdkafka::consumer::ConsumerContext for Rebalances {
    fn post_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        r: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if matches!(r, rdkafka::consumer::Rebalance::Assign(_)) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Rebalances {
    fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn static_member(broker: &Broker, instance: &str, ctx: Rebalances) -> BaseConsumer<Rebalances> {
    let c: BaseConsumer<Rebalances> = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "static-group")
        .set("group.instance.id", instance)
        .set("session.timeout.ms", "30000")
        .set("heartbeat.interval.ms", "500")
        .set("auto.offset.reset", "earliest")
        .create_with_context(ctx)
        .expect("consumer");
    c.subscribe(&["static-topic"]).expect("subscribe");
    c
}

/// Polls `consumers` until `done` or 30 s.
fn poll_until(consumers: &[&BaseConsumer<Rebalances>], mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        for c in consumers {
            let _ = c.poll(Duration::from_millis(50));
        }
    }
}

fn assigned(c: &BaseConsumer<Rebalances>) -> Vec<i32> {
    let mut v: Vec<i32> = c
        .assignment()
        .expect("assignment")
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect();
    v.sort();
    v
}

/// KIP-345/KIP-814: the static member that leads the group restarts (a new member id for
/// the same `group.instance.id`); the group does not rebalance: the other member keeps its
/// partitions without a new assignment and the restarted leader gets its own back.
#[test]
fn restarted_static_leader_does_not_rebalance_the_group() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    create_topic(&broker, "static-topic", 4, &[]);
    let (ca, cb) = (Rebalances::default(), Rebalances::default());
    let a = static_member(&broker, "leader", ca.clone());
    poll_until(&[&a], || assigned(&a).len() == 4);
    let b = static_member(&broker, "follower", cb.clone());
    poll_until(&[&a, &b], || {
        assigned(&a).len() == 2 && assigned(&b).len() == 2 && cb.count() >= 1
    });
    let (a_parts, b_parts) = (assigned(&a), assigned(&b));
    let b_rebalances = cb.count();
    // A static member leaves no LeaveGroup behind: the group waits for it.
    drop(a);

    let ca2 = Rebalances::default();
    let a2 = static_member(&broker, "leader", ca2.clone());
    poll_until(&[&a2, &b], || ca2.count() >= 1 && !assigned(&a2).is_empty());
    assert_eq!(assigned(&a2), a_parts, "the leader's partitions come back");
    // Give a rebalance, if one were started, time to reach the follower.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let _ = a2.poll(Duration::from_millis(50));
        let _ = b.poll(Duration::from_millis(50));
    }
    assert_eq!(cb.count(), b_rebalances, "the follower saw no rebalance");
    assert_eq!(assigned(&b), b_parts);
}

//! The Kafka wire edge with raw sockets: bad frames close only their own connection (with
//! a log line) while a real client keeps working; pipelined requests are answered in order;
//! an unknown ApiVersions version gets the v0 fallback; old request versions that clients
//! in the field still send (Sarama 1.22: Produce v3, Fetch v4, ListOffsets v1) keep their
//! Kafka semantics. ApiVersions lists the served APIs and versions; the APIs of group
//! members refuse an empty group id.

mod common;

use portask::storage::batch::{encode_plain_batch, PlainRecord};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::kafka::{produce_frame, produce_one_frame};
use common::{closed_by_broker, data_dir, Broker};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, FetchRequest, FetchResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, ProduceResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::Compression;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

fn connect(broker: &Broker) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", broker.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Encodes one request frame.
fn request<R: Encodable>(api: ApiKey, version: i16, correlation: i32, body: &R) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str("wire-test")));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header
        .encode(&mut buf, api.request_header_version(version))
        .expect("header");
    body.encode(&mut buf, version).expect("body");
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    buf.to_vec()
}

/// Reads one response frame, or `None` when the broker closed the connection.
fn read_frame(s: &mut TcpStream) -> Option<Bytes> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(Bytes::from(body))
}

/// A Fetch of partition 0 of `topic` from offset 0, waiting up to `max_wait_ms` for a byte.
fn fetch_from_start(topic: &'static str, max_wait_ms: i32) -> FetchRequest {
    fetch_at(topic, 0, 1 << 20, max_wait_ms)
}

/// A Fetch of partition 0 of `topic` from `offset`, at most `partition_max_bytes` of it (at
/// least one whole batch all the same), waiting up to `max_wait_ms` for a byte.
fn fetch_at(
    topic: &'static str,
    offset: i64,
    partition_max_bytes: i32,
    max_wait_ms: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(topic)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(partition_max_bytes)])])
}

/// A librdkafka producer with its defaults.
fn producer(broker: &Broker) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("producer")
}

/// A real client still gets metadata from the broker.
fn client_still_works(broker: &Broker) {
    let p = producer(broker);
    let md = p
        .client()
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata after bad input");
    assert_eq!(md.brokers().len(), 1);
}

#[test]
fn bad_frames_close_only_their_connection() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut bystander = connect(&broker);

    // Random garbage.
    let mut s = connect(&broker);
    s.write_all(b"\x00\x00\x00\x10GET / HTTP/1.1\r\n\r\n")
        .expect("write");
    assert!(closed_by_broker(&mut s), "garbage closes the connection");
    client_still_works(&broker);

    // A 2 GiB size prefix.
    let mut s = connect(&broker);
    s.write_all(&0x7fff_ffffu32.to_be_bytes()).expect("write");
    assert!(
        closed_by_broker(&mut s),
        "oversize frame closes the connection"
    );

    // A negative size.
    let mut s = connect(&broker);
    s.write_all(&(-5i32).to_be_bytes()).expect("write");
    assert!(closed_by_broker(&mut s));

    // A frame cut short: the size promises more than is sent before the client stops.
    let mut s = connect(&broker);
    let full = request(ApiKey::Metadata, 9, 1, &MetadataRequest::default());
    s.write_all(&full[..full.len() - 3]).expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert!(closed_by_broker(&mut s));

    // A complete frame whose body is truncated inside the request.
    let mut s = connect(&broker);
    let mut f = request(
        ApiKey::Metadata,
        4,
        2,
        &MetadataRequest::default().with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("some-topic")))),
        ])),
    );
    f.truncate(f.len() - 6);
    let len = (f.len() - 4) as i32;
    f[0..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&f).expect("write");
    assert!(
        closed_by_broker(&mut s),
        "undecodable body closes the connection"
    );

    // An unknown API key, and a version out of range.
    let mut s = connect(&broker);
    let mut f = request(ApiKey::Metadata, 9, 3, &MetadataRequest::default());
    f[4..6].copy_from_slice(&999i16.to_be_bytes());
    s.write_all(&f).expect("write");
    assert!(closed_by_broker(&mut s));
    let mut s = connect(&broker);
    let mut f = request(ApiKey::Metadata, 9, 4, &MetadataRequest::default());
    f[6..8].copy_from_slice(&99i16.to_be_bytes());
    s.write_all(&f).expect("write");
    assert!(closed_by_broker(&mut s));

    // The untouched connection still answers.
    bystander
        .write_all(&request(
            ApiKey::ApiVersions,
            3,
            77,
            &ApiVersionsRequest::default(),
        ))
        .expect("write");
    let mut resp = read_frame(&mut bystander).expect("response");
    assert_eq!(resp.get_i32(), 77);
    client_still_works(&broker);
    let log = broker.log();
    assert!(log.contains("outside the accepted range"), "{log}");
    assert!(log.contains("unknown API key 999"), "{log}");
    assert!(log.contains("truncated request"), "{log}");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    client_still_works(&broker);
    // Create a topic through auto-creation so the fetch has something to wait on.
    let mut s = connect(&broker);
    let md = MetadataRequest::default()
        .with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("piped")))),
        ]))
        .with_allow_auto_topic_creation(true);
    s.write_all(&request(ApiKey::Metadata, 9, 1, &md))
        .expect("write");
    read_frame(&mut s).expect("metadata");

    // A slow long poll, then two fast requests, in one write.
    let fetch = fetch_from_start("piped", 800);
    let mut all = request(ApiKey::Fetch, 11, 10, &fetch);
    all.extend(request(
        ApiKey::ApiVersions,
        3,
        11,
        &ApiVersionsRequest::default(),
    ));
    all.extend(request(
        ApiKey::Metadata,
        9,
        12,
        &MetadataRequest::default(),
    ));
    s.write_all(&all).expect("write");
    let ids: Vec<i32> = (0..3)
        .map(|_| read_frame(&mut s).expect("response").get_i32())
        .collect();
    assert_eq!(ids, vec![10, 11, 12]);
}

#[test]
fn unknown_api_versions_version_gets_the_v0_fallback() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut s = connect(&broker);
    let mut f = request(ApiKey::ApiVersions, 3, 5, &ApiVersionsRequest::default());
    f[6..8].copy_from_slice(&42i16.to_be_bytes());
    s.write_all(&f).expect("write");
    let mut resp = read_frame(&mut s).expect("a v0 response, not a closed socket");
    assert_eq!(resp.get_i32(), 5);
    let body = ApiVersionsResponse::decode(&mut resp, 0).expect("v0 body");
    assert_eq!(body.error_code, 35, "UNSUPPORTED_VERSION");
    let av = body
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::ApiVersions as i16)
        .expect("ApiVersions listed");
    assert_eq!((av.min_version, av.max_version), (0, 4));
    // The connection stays usable: ask again with a version we speak.
    s.write_all(&request(
        ApiKey::ApiVersions,
        3,
        6,
        &ApiVersionsRequest::default(),
    ))
    .expect("write");
    let mut resp = read_frame(&mut s).expect("response");
    assert_eq!(resp.get_i32(), 6);
}

/// ApiVersions lists every API the broker serves with the versions it accepts, in the same
/// order and ranges as before the API list became one table (issue 14); clients pick their
/// request versions from it.
#[test]
fn api_versions_lists_the_served_apis_and_versions() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut s = connect(&broker);
    s.write_all(&request(
        ApiKey::ApiVersions,
        3,
        1,
        &ApiVersionsRequest::default(),
    ))
    .expect("write");
    let mut resp = read_frame(&mut s).expect("response");
    // ApiVersions responses keep header v0 at every version (KIP-511).
    assert_eq!(resp.get_i32(), 1);
    let body = ApiVersionsResponse::decode(&mut resp, 3).expect("v3 body");
    assert_eq!(body.error_code, 0);
    let listed: Vec<(i16, i16, i16)> = body
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.min_version, k.max_version))
        .collect();
    let expected: Vec<(i16, i16, i16)> = [
        (ApiKey::Produce, 0, 13),
        (ApiKey::Fetch, 0, 18),
        (ApiKey::ListOffsets, 0, 10),
        (ApiKey::Metadata, 0, 13),
        (ApiKey::FindCoordinator, 0, 6),
        (ApiKey::JoinGroup, 0, 9),
        (ApiKey::Heartbeat, 0, 4),
        (ApiKey::LeaveGroup, 0, 5),
        (ApiKey::SyncGroup, 0, 5),
        (ApiKey::OffsetCommit, 0, 9),
        (ApiKey::OffsetFetch, 0, 9),
        (ApiKey::ListGroups, 0, 5),
        (ApiKey::DescribeGroups, 0, 6),
        (ApiKey::DeleteGroups, 0, 2),
        (ApiKey::OffsetDelete, 0, 0),
        (ApiKey::ConsumerGroupHeartbeat, 0, 1),
        (ApiKey::ConsumerGroupDescribe, 0, 1),
        (ApiKey::InitProducerId, 0, 5),
        (ApiKey::AddPartitionsToTxn, 0, 5),
        (ApiKey::AddOffsetsToTxn, 0, 4),
        (ApiKey::EndTxn, 0, 4),
        (ApiKey::TxnOffsetCommit, 0, 4),
        (ApiKey::DescribeTransactions, 0, 0),
        (ApiKey::ListTransactions, 0, 2),
        (ApiKey::DescribeConfigs, 0, 4),
        (ApiKey::AlterConfigs, 0, 2),
        (ApiKey::IncrementalAlterConfigs, 0, 1),
        (ApiKey::DescribeCluster, 0, 2),
        (ApiKey::DescribeLogDirs, 0, 4),
        (ApiKey::DeleteRecords, 0, 2),
        (ApiKey::OffsetForLeaderEpoch, 0, 4),
        (ApiKey::DescribeProducers, 0, 0),
        (ApiKey::WriteTxnMarkers, 1, 1),
        (ApiKey::ApiVersions, 0, 4),
        (ApiKey::CreateTopics, 0, 7),
        (ApiKey::DeleteTopics, 0, 6),
        (ApiKey::CreatePartitions, 0, 3),
        (ApiKey::DescribeAcls, 0, 3),
        (ApiKey::CreateAcls, 0, 3),
        (ApiKey::DeleteAcls, 0, 3),
        (ApiKey::SaslHandshake, 0, 1),
        (ApiKey::SaslAuthenticate, 0, 2),
        (ApiKey::DescribeUserScramCredentials, 0, 0),
        (ApiKey::AlterUserScramCredentials, 0, 0),
    ]
    .into_iter()
    .map(|(k, min, max)| (k as i16, min, max))
    .collect();
    assert_eq!(listed, expected);
}

/// The APIs of group members refuse an empty group id with INVALID_GROUP_ID, as Kafka
/// does; the offset APIs accept it (old consumers commit under it).
#[test]
fn members_need_a_group_id() {
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::{
        GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
        OffsetFetchRequest, OffsetFetchResponse,
    };

    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut s = connect(&broker);
    let join = JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("")))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(StrBytes::from_static_str("range"))
            .with_metadata(Bytes::from_static(b"\0\0"))]);
    s.write_all(&request(ApiKey::JoinGroup, 5, 1, &join))
        .expect("write");
    let mut resp = read_frame(&mut s).expect("join response");
    assert_eq!(resp.get_i32(), 1);
    let body = JoinGroupResponse::decode(&mut resp, 5).expect("v5 body");
    assert_eq!(body.error_code, 24, "INVALID_GROUP_ID");
    assert_eq!(body.generation_id, -1);

    let heartbeat = HeartbeatRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("")))
        .with_member_id(StrBytes::from_static_str("m"))
        .with_generation_id(1);
    s.write_all(&request(ApiKey::Heartbeat, 3, 2, &heartbeat))
        .expect("write");
    let mut resp = read_frame(&mut s).expect("heartbeat response");
    assert_eq!(resp.get_i32(), 2);
    let body = HeartbeatResponse::decode(&mut resp, 3).expect("v3 body");
    assert_eq!(body.error_code, 24, "INVALID_GROUP_ID");

    let fetch = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("")))
        .with_topics(None);
    s.write_all(&request(ApiKey::OffsetFetch, 5, 3, &fetch))
        .expect("write");
    let mut resp = read_frame(&mut s).expect("offset fetch response");
    assert_eq!(resp.get_i32(), 3);
    let body = OffsetFetchResponse::decode(&mut resp, 5).expect("v5 body");
    assert_eq!(body.error_code, 0);
}

/// Creates `topic` (one partition) through Metadata auto-creation on connection `s`.
fn auto_create(s: &mut TcpStream, topic: &'static str) {
    let md = MetadataRequest::default()
        .with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str(topic)))),
        ]))
        .with_allow_auto_topic_creation(true);
    s.write_all(&request(ApiKey::Metadata, 9, 900, &md))
        .expect("write");
    read_frame(s).expect("metadata");
}

/// One record batch of `n` records stamped `base_ts`, `base_ts + 10`, …, encoded by
/// kafka-protocol with `compression`.
fn record_batch(n: i64, base_ts: i64, compression: Compression) -> Bytes {
    let records = (0..n).map(|i| PlainRecord {
        timestamp: base_ts + 10 * i,
        key: Some(Bytes::from(format!("key-{i}"))),
        value: Some(Bytes::from(format!("value-{i}"))),
        headers: Default::default(),
    });
    encode_plain_batch(records, compression).expect("encode batch")
}

/// The batch with its maxTimestamp field set to -1 and its CRC fixed: what Sarama before
/// 1.23 sends.
fn without_max_timestamp(batch: &Bytes) -> Bytes {
    let mut b = BytesMut::from(&batch[..]);
    b[35..43].copy_from_slice(&(-1i64).to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

/// Sends one Produce of `records` to partition 0 of `topic` at `version` (acks=-1) and
/// returns the partition's (error code, base offset).
fn produce(s: &mut TcpStream, version: i16, topic: &'static str, records: Bytes) -> (i16, i64) {
    s.write_all(&produce_frame(version, 1, topic, records))
        .expect("write");
    let mut resp = read_frame(s).expect("produce response");
    resp.get_i32();
    let body = ProduceResponse::decode(&mut resp, version).expect("produce body");
    let p = &body.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// ListOffsets v1 (Sarama's and kafka-python's old form) for partition 0 of `topic`:
/// (error code, offset, timestamp).
fn list_offset_v1(s: &mut TcpStream, topic: &'static str, timestamp: i64) -> (i16, i64, i64) {
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(topic)))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(timestamp)])]);
    s.write_all(&request(ApiKey::ListOffsets, 1, 2, &req))
        .expect("write");
    let mut resp = read_frame(s).expect("list offsets response");
    resp.get_i32();
    let body = ListOffsetsResponse::decode(&mut resp, 1).expect("list offsets body");
    let p = &body.topics[0].partitions[0];
    (p.error_code, p.offset, p.timestamp)
}

/// Zstd needs Produce v7 (KIP-110). Sarama 1.22 sends zstd batches in Produce v3; Kafka
/// answers UNSUPPORTED_COMPRESSION_TYPE (76) for that partition, and so must we, instead of
/// storing data that the old client's own Fetch version may not carry.
#[test]
fn zstd_before_produce_v7_is_unsupported_compression_type() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut s = connect(&broker);
    auto_create(&mut s, "zstd-old");
    let zstd = record_batch(3, 1_000_000, Compression::Zstd);
    assert_eq!(produce(&mut s, 3, "zstd-old", zstd.clone()).0, 76);
    assert_eq!(produce(&mut s, 6, "zstd-old", zstd.clone()).0, 76);
    assert_eq!(produce(&mut s, 7, "zstd-old", zstd), (0, 0));
    // Other codecs are fine in v3.
    let gzip = record_batch(3, 1_000_000, Compression::Gzip);
    assert_eq!(produce(&mut s, 3, "zstd-old", gzip), (0, 3));
}

/// A Produce (v3+) partition carries one record batch; Kafka refuses more with
/// INVALID_RECORD (87) and stores none of them.
#[test]
fn two_batches_for_one_partition_are_invalid_record() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut s = connect(&broker);
    auto_create(&mut s, "one-batch");
    let mut two = BytesMut::new();
    two.extend_from_slice(&record_batch(2, 1_000_000, Compression::None));
    two.extend_from_slice(&record_batch(3, 2_000_000, Compression::None));
    assert_eq!(produce(&mut s, 3, "one-batch", two.freeze()).0, 87);
    assert_eq!(
        produce(&mut s, 8, "one-batch", {
            let mut b = BytesMut::new();
            b.extend_from_slice(&record_batch(1, 1_000_000, Compression::Gzip));
            b.extend_from_slice(&record_batch(1, 1_000_000, Compression::Gzip));
            b.freeze()
        })
        .0,
        87
    );
    // Nothing was stored: the next good batch gets offset 0.
    let one = record_batch(2, 1_000_000, Compression::None);
    assert_eq!(produce(&mut s, 3, "one-batch", one), (0, 0));
}

/// Sarama before 1.23 leaves a batch's maxTimestamp at -1. Kafka's broker rewrites it from
/// the records, so ListOffsets by time (v1, as Sarama asks) finds them; it answers the
/// found record's own timestamp and, in a compressed batch, the exact record.
#[test]
fn unset_max_timestamp_is_rewritten_and_list_offsets_by_time_finds_the_record() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut s = connect(&broker);
    auto_create(&mut s, "by-time");
    let base = 1_700_000_000_000;
    let plain = without_max_timestamp(&record_batch(5, base, Compression::None));
    assert_eq!(produce(&mut s, 3, "by-time", plain), (0, 0));
    let zipped = without_max_timestamp(&record_batch(5, base + 100, Compression::Gzip));
    assert_eq!(produce(&mut s, 3, "by-time", zipped), (0, 5));

    assert_eq!(list_offset_v1(&mut s, "by-time", 0), (0, 0, base));
    assert_eq!(
        list_offset_v1(&mut s, "by-time", base + 15),
        (0, 2, base + 20)
    );
    // Inside the gzip batch: the record at base + 120 is offset 7, not the batch's 5.
    assert_eq!(
        list_offset_v1(&mut s, "by-time", base + 115),
        (0, 7, base + 120)
    );
    assert_eq!(list_offset_v1(&mut s, "by-time", base + 1_000), (0, -1, -1));
    assert_eq!(list_offset_v1(&mut s, "by-time", -2), (0, 0, -1));
    assert_eq!(list_offset_v1(&mut s, "by-time", -1), (0, 10, -1));

    // Fetch (v4, Sarama's) returns the batches with the rewritten maxTimestamp and a valid CRC.
    let fetch = fetch_from_start("by-time", 0);
    s.write_all(&request(ApiKey::Fetch, 4, 3, &fetch))
        .expect("write");
    let mut resp = read_frame(&mut s).expect("fetch response");
    resp.get_i32();
    let body = FetchResponse::decode(&mut resp, 4).expect("fetch body");
    let mut records = body.responses[0].partitions[0]
        .records
        .clone()
        .expect("records");
    let mut max_timestamps = Vec::new();
    while records.len() >= 61 {
        let size = 12 + i32::from_be_bytes(records[8..12].try_into().unwrap()) as usize;
        let one = records.split_to(size);
        let crc = u32::from_be_bytes(one[17..21].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c(&one[21..]), "batch CRC");
        max_timestamps.push(i64::from_be_bytes(one[35..43].try_into().unwrap()));
    }
    assert_eq!(max_timestamps, vec![base + 40, base + 140]);
}

/// Fetch of a topic whose `compression.type` is zstd with an old Fetch (< v10, before
/// KIP-110): Kafka answers UNSUPPORTED_COMPRESSION_TYPE for that partition rather than
/// hand the old client batches it cannot read; v10 and later read them.
#[test]
fn old_fetch_of_a_zstd_topic_is_unsupported_compression_type() {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut s = connect(&broker);
    let create = CreateTopicsRequest::default()
        .with_timeout_ms(5_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("zstd-topic")))
            .with_num_partitions(1)
            .with_replication_factor(1)
            .with_configs(vec![CreatableTopicConfig::default()
                .with_name(StrBytes::from_static_str("compression.type"))
                .with_value(Some(StrBytes::from_static_str("zstd")))])]);
    s.write_all(&request(ApiKey::CreateTopics, 4, 7, &create))
        .expect("write");
    let mut resp = read_frame(&mut s).expect("create topics response");
    resp.get_i32();
    let created = CreateTopicsResponse::decode(&mut resp, 4).expect("create body");
    assert_eq!(created.topics[0].error_code, 0);
    let zstd = record_batch(3, 1_000_000, Compression::Zstd);
    assert_eq!(produce(&mut s, 7, "zstd-topic", zstd), (0, 0));
    let fetch = |s: &mut TcpStream, version: i16| {
        let req = fetch_from_start("zstd-topic", 0);
        s.write_all(&request(ApiKey::Fetch, version, 8, &req))
            .expect("write");
        let mut resp = read_frame(s).expect("fetch response");
        resp.get_i32();
        let body = FetchResponse::decode(&mut resp, version).expect("fetch body");
        let p = &body.responses[0].partitions[0];
        (
            p.error_code,
            p.records.as_ref().map(|r| r.len()).unwrap_or(0),
        )
    };
    let (code, len) = fetch(&mut s, 4);
    assert_eq!((code, len), (76, 0), "Fetch v4 of a zstd topic");
    let (code, len) = fetch(&mut s, 9);
    assert_eq!((code, len), (76, 0), "Fetch v9 of a zstd topic");
    let (code, len) = fetch(&mut s, 10);
    assert_eq!(code, 0, "Fetch v10 reads zstd");
    assert!(len > 0, "Fetch v10 returns the batch");
}

#[test]
fn idle_and_stalled_connections_are_closed_but_a_long_poll_is_not() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[("PORTASK_KAFKA__CONNECTIONS_MAX_IDLE_MS", "400")]);
    // A connection that never sends anything.
    let mut silent = connect(&broker);
    // One that stops inside a frame: a size prefix promising 100 bytes, and 10 of them.
    let mut stalled = connect(&broker);
    stalled.write_all(&100i32.to_be_bytes()).expect("write");
    stalled.write_all(&[0u8; 10]).expect("write");
    assert!(
        closed_by_broker(&mut silent),
        "an idle connection is closed"
    );
    assert!(closed_by_broker(&mut stalled), "a stalled frame is closed");

    // A Fetch that waits longer than the idle limit for data is owed its answer: the
    // connection stays, and the answer comes when the wait is over.
    let mut s = connect(&broker);
    auto_create(&mut s, "long-poll");
    let req = fetch_from_start("long-poll", 1_500);
    let started = std::time::Instant::now();
    s.write_all(&request(ApiKey::Fetch, 4, 11, &req))
        .expect("write");
    let mut resp = read_frame(&mut s).expect("the long poll is answered");
    assert!(
        started.elapsed() >= Duration::from_millis(1_000),
        "the fetch waited for data ({:?})",
        started.elapsed()
    );
    assert_eq!(resp.get_i32(), 11, "correlation id");
    let body = FetchResponse::decode(&mut resp, 4).expect("fetch body");
    assert_eq!(body.responses[0].partitions[0].error_code, 0);
    // librdkafka, left quiet past the limit, reconnects on its own and keeps producing.
    let producer = producer(&broker);
    for round in 0..2 {
        producer
            .send(rdkafka::producer::BaseRecord::<(), str>::to("long-poll").payload("x"))
            .map_err(|(e, _)| e)
            .expect("send");
        producer
            .flush(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        // Long enough for the broker to close the producer's connections as idle.
        std::thread::sleep(Duration::from_millis(1_500));
    }
    let mut s = connect(&broker);
    assert_eq!(
        list_offset_v1(&mut s, "long-poll", -1).1,
        2,
        "both records stored"
    );
}

#[test]
fn a_client_that_stops_reading_its_answers_is_closed_as_idle() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[("PORTASK_KAFKA__CONNECTIONS_MAX_IDLE_MS", "400")]);
    let producer = producer(&broker);
    let value = vec![b'v'; 512 * 1024];
    for _ in 0..8 {
        producer
            .send(rdkafka::producer::BaseRecord::<(), [u8]>::to("unread").payload(&value[..]))
            .map_err(|(e, _)| e)
            .expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    // Twenty fetches of the whole 4 MiB, and none of the answers read: far more than the
    // socket buffers hold, so the broker's writes stop making progress.
    let mut req = fetch_from_start("unread", 0);
    req.max_bytes = 64 << 20;
    req.topics[0].partitions[0].partition_max_bytes = 64 << 20;
    let mut s = connect(&broker);
    for i in 0..20 {
        s.write_all(&request(ApiKey::Fetch, 11, i, &req))
            .expect("write");
    }
    // Long enough for the broker to give up on the connection.
    std::thread::sleep(Duration::from_secs(2));
    // What the socket buffers held can still be read; then the stream ends, short of the
    // twenty answers (a broker still waiting would send them all as they are read).
    let mut answers = 0;
    while read_frame(&mut s).is_some() {
        answers += 1;
    }
    assert!(
        answers < 20,
        "all {answers} answers came: the connection was kept"
    );
    client_still_works(&broker);
}

/// The shard `/api/v1/connections` lists the connection from `local` (our side) on.
fn shard_of(broker: &Broker, local: std::net::SocketAddr) -> Option<u64> {
    broker.connection_shard(local, "guest", "guest")
}

/// A connection whose Produce or Fetch requests all go to the partitions of the other shard
/// moves there between two requests (`runtime::placement`), with pipelined requests waiting
/// in its socket; its client sees nothing of it. Connections opened until two sit on each
/// shard: on the partition's shard one producer, on the other shard a producer and a
/// reader, each sending requests four at a time. Every answer comes, in order, every record
/// gets its own offset, the reader reads each record at its offset, and afterwards all
/// three connections are on the partition's shard (the two that moved counted in
/// `portask_connections_moved_total`).
#[test]
fn connections_move_to_the_shard_of_their_partition_and_every_answer_comes_in_order() {
    const TOPIC: &str = "follow-me";
    const ROUNDS: i32 = 20;
    const PIPELINED: i32 = 4;
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let owner = portask::util::partition_owner(TOPIC, 0, 2) as u64;
    let mut here = Vec::new();
    let mut there = Vec::new();
    for _ in 0..64 {
        if here.len() >= 2 && there.len() >= 2 {
            break;
        }
        let mut s = connect(&broker);
        auto_create(&mut s, TOPIC);
        let local = s.local_addr().expect("local address");
        match shard_of(&broker, local) {
            Some(shard) if shard == owner && here.len() < 2 => here.push(s),
            Some(shard) if shard != owner && there.len() < 2 => there.push(s),
            _ => {}
        }
    }
    assert!(
        here.len() == 2 && there.len() == 2,
        "the kernel spread 64 connections over both shards"
    );
    let reader = there.pop().expect("a reader on the other shard");
    let producers: Vec<TcpStream> = there.into_iter().chain(here.into_iter().take(1)).collect();

    // Four Produce requests at a time on each producer, answered in order.
    let produce_request = |p: usize, i: i32| {
        produce_one_frame(TOPIC, i, format!("producer-{p}-record-{i}").as_bytes())
    };
    let mut producers = producers;
    let mut at_offset = std::collections::BTreeMap::new();
    // A connection moves after a run of requests lasting a second (`placement::FOLLOW_FOR`):
    // the requests are spread over a little more.
    let pause = Duration::from_millis(75);
    for round in 0..ROUNDS {
        std::thread::sleep(pause);
        for (p, s) in producers.iter_mut().enumerate() {
            let first = round * PIPELINED;
            let frames: Vec<u8> = (first..first + PIPELINED)
                .flat_map(|i| produce_request(p, i))
                .collect();
            s.write_all(&frames).expect("write");
            for i in first..first + PIPELINED {
                let mut resp = read_frame(s).expect("produce answered");
                assert_eq!(resp.get_i32(), i, "answers come in request order");
                let body = ProduceResponse::decode(&mut resp, 7).expect("produce body");
                let part = &body.responses[0].partition_responses[0];
                assert_eq!(part.error_code, 0, "producer {p} request {i}");
                let value = format!("producer-{p}-record-{i}");
                assert!(
                    at_offset.insert(part.base_offset, value).is_none(),
                    "offset {} given twice",
                    part.base_offset
                );
            }
        }
    }
    let total = ROUNDS * PIPELINED * producers.len() as i32;
    assert_eq!(at_offset.len(), total as usize);
    assert_eq!(
        at_offset.keys().copied().collect::<Vec<_>>(),
        (0..total as i64).collect::<Vec<_>>()
    );

    // The reader fetches one record per request (1-byte partition limit: one whole batch),
    // four requests at a time.
    let mut reader = reader;
    let one_batch_at = |offset: i64| {
        request(
            ApiKey::Fetch,
            4,
            offset as i32,
            &fetch_at(TOPIC, offset, 1, 500),
        )
    };
    for first in (0..total as i64).step_by(PIPELINED as usize) {
        std::thread::sleep(pause / 3);
        let frames: Vec<u8> = (first..first + PIPELINED as i64)
            .flat_map(one_batch_at)
            .collect();
        reader.write_all(&frames).expect("write");
        for offset in first..first + PIPELINED as i64 {
            let mut resp = read_frame(&mut reader).expect("fetch answered");
            assert_eq!(
                resp.get_i32() as i64,
                offset,
                "answers come in request order"
            );
            let body = FetchResponse::decode(&mut resp, 4).expect("fetch body");
            let part = &body.responses[0].partitions[0];
            assert_eq!(part.error_code, 0);
            let records = part.records.clone().expect("records");
            assert!(records.len() > 8, "a batch at offset {offset}");
            assert_eq!(i64::from_be_bytes(records[..8].try_into().unwrap()), offset);
            let value = at_offset[&offset].as_bytes();
            assert!(
                records.windows(value.len()).any(|w| w == value),
                "offset {offset} holds {}",
                at_offset[&offset]
            );
        }
    }

    for s in producers.iter().chain(std::iter::once(&reader)) {
        let local = s.local_addr().expect("local address");
        assert_eq!(
            shard_of(&broker, local),
            Some(owner),
            "the connection from {local} is served by the partition's shard"
        );
    }
    let moved = broker.metric_total("portask_connections_moved_total", &[("protocol", "kafka")]);
    assert_eq!(
        moved, 2.0,
        "the producer and the reader from the other shard moved"
    );
}

/// A Fetch answered from the tail cache writes the cached batches as they are, large ones
/// passed to the socket in the same write as the frame around them: the records section is
/// byte for byte the batches produced (with their offsets) at every Fetch version that
/// names topics, within `partition_max_bytes` by whole batches, from any batch's offset.
#[test]
fn a_fetch_of_cached_batches_large_and_small_gives_them_byte_for_byte() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut s = connect(&broker);
    auto_create(&mut s, "pieces");
    let batch = |value_bytes: usize, n: i64| {
        let records = (0..n).map(|i| PlainRecord {
            timestamp: 1_000_000 + i,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(vec![b'a' + i as u8; value_bytes])),
            headers: Default::default(),
        });
        encode_plain_batch(records, Compression::None).expect("encode batch")
    };
    // Two batches past the 32 KiB a piece needs to be passed uncopied, three under it.
    let sent = [
        batch(40_000, 1),
        batch(10, 3),
        batch(35_000, 2),
        batch(100, 1),
        batch(7, 2),
    ];
    let mut stored = Vec::new();
    let mut next = 0;
    for b in &sent {
        let (code, base) = produce(&mut s, 8, "pieces", b.clone());
        assert_eq!((code, base), (0, next));
        let mut with_offset = b.to_vec();
        with_offset[..8].copy_from_slice(&base.to_be_bytes());
        next = base + i64::from(i32::from_be_bytes(b[23..27].try_into().unwrap())) + 1;
        stored.push((base, with_offset));
    }
    let fetch = |s: &mut TcpStream, version: i16, offset: i64, max: i32| {
        records_of_fetch(
            s,
            version,
            &fetch_at("pieces", offset, max, 0),
            Duration::ZERO,
        )
    };
    let from = |i: usize, n: usize| -> Vec<u8> {
        stored[i..i + n]
            .iter()
            .flat_map(|(_, b)| b.clone())
            .collect()
    };
    for version in [4, 7, 11, 12] {
        assert_eq!(
            fetch(&mut s, version, 0, 1 << 20),
            from(0, 5),
            "v{version}: all"
        );
        // Whole batches within the partition's limit: the first two and a byte of room.
        let two = (stored[0].1.len() + stored[1].1.len() + 1) as i32;
        assert_eq!(
            fetch(&mut s, version, 0, two),
            from(0, 2),
            "v{version}: limit"
        );
        // From an offset inside the third batch: that batch and the rest.
        let third = stored[2].0 + 1;
        assert_eq!(
            fetch(&mut s, version, third, 1 << 20),
            from(2, 3),
            "v{version}: middle"
        );
        // A limit smaller than the first batch still gives that batch alone (KIP-74).
        assert_eq!(
            fetch(&mut s, version, 0, 100),
            from(0, 1),
            "v{version}: first alone"
        );
    }
    // A 6.6 MB answer of 200 large batches (more than one write takes) to a client with a
    // 4 KiB receive buffer that reads only after half a second: more than the socket's
    // 4 MiB send buffer, so the broker's writes find it full (checked once: five times in
    // this run), and what it did not take follows from where the last write stopped.
    let mut big = Vec::new();
    for _ in 0..200 {
        let b = batch(33_000, 1);
        let (code, base) = produce(&mut s, 8, "pieces", b.clone());
        assert_eq!(code, 0);
        big.extend_from_slice(&base.to_be_bytes());
        big.extend_from_slice(&b[8..]);
    }
    let small =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    small.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], broker.port).into();
    small.connect(&addr.into()).expect("connect");
    let mut slow: TcpStream = small.into();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = fetch_at("pieces", next, 8 << 20, 0).with_max_bytes(8 << 20);
    let late = records_of_fetch(&mut slow, 11, &req, Duration::from_millis(500));
    assert!(late == big, "the late-read answer differs");
    client_still_works(&broker);
}

/// Sends `req` at `version`, waits `read_after` before reading the answer, and returns the
/// records of its one partition (which must have no error; the frame must hold nothing past
/// the response).
fn records_of_fetch(
    s: &mut TcpStream,
    version: i16,
    req: &FetchRequest,
    read_after: Duration,
) -> Vec<u8> {
    s.write_all(&request(ApiKey::Fetch, version, 9, req))
        .expect("write");
    std::thread::sleep(read_after);
    let mut resp = read_frame(s).expect("fetch response");
    let header = ApiKey::Fetch.response_header_version(version);
    ResponseHeader::decode(&mut resp, header).expect("response header");
    let body = FetchResponse::decode(&mut resp, version).expect("fetch body");
    assert!(
        !resp.has_remaining(),
        "v{version}: the frame has bytes past the response"
    );
    let p = &body.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.records.clone().unwrap_or_default().to_vec()
}

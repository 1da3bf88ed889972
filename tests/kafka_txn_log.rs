//! Transactions at the partition (issue 18): transactional batches produced raw over a
//! socket (after InitProducerId and AddPartitionsToTxn, which the coordinator checks),
//! markers written with WriteTxnMarkers (what `kafka-transactions.sh abort` sends to end
//! a hanging transaction on a partition); a read_committed Fetch stops at the last stable
//! offset and lists aborted transactions so librdkafka drops their records; ListOffsets
//! READ_COMMITTED; DescribeProducers' transaction start; a read_committed long poll woken
//! by a marker; markers left out of old clients' down-converted fetches; the LSO and
//! aborted index back after kill -9; WriteTxnMarkers' ACL.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use common::kafka::{assigned_to_end, create_topic, read_frame, read_to_end, request_frame};
use common::{data_dir, Broker};
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, BrokerId,
    DescribeProducersRequest, DescribeProducersResponse, FetchRequest, FetchResponse,
    InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse,
    ProduceRequest, ProduceResponse, ProducerId, TopicName, TransactionalId,
    WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use portask::storage::batch::record_count;
use rdkafka::Message;

const TOPIC: &str = "txl";

fn connect(broker: &Broker) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", broker.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s
}

/// Sends `body` as `api` at `version`; the response body (header skipped).
fn call<R: Encodable>(s: &mut TcpStream, api: ApiKey, version: i16, body: &R) -> Bytes {
    s.write_all(&request_frame(api, version, 9, "txn-log", body))
        .expect("write");
    let mut resp = read_frame(s).expect("response");
    assert_eq!(resp.get_i32(), 9);
    if api.response_header_version(version) >= 1 {
        assert_eq!(resp.get_u8(), 0, "no header tags");
    }
    resp
}

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str(TOPIC))
}

/// One batch of `n` records valued `<label>-<i>`: transactional of `producer` (id, epoch,
/// base sequence), or plain.
fn batch(label: &str, n: usize, producer: Option<(i64, i16, i32)>) -> Bytes {
    let (pid, epoch, seq) = producer.unwrap_or((-1, -1, -1));
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: producer.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder keeps records in one batch while offset - sequence is constant;
            // a plain batch's base sequence is -1.
            sequence: if seq < 0 {
                i as i32 - 1
            } else {
                seq + i as i32
            },
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("{label}-{i}"))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode");
    buf.freeze()
}

/// A transactional producer as a client drives it: InitProducerId for `id`, then
/// AddPartitionsToTxn of partition 0 (the coordinator checks a transactional produce
/// against it, KIP-890); (producer id, epoch).
fn begin(s: &mut TcpStream, id: &'static str) -> (i64, i16) {
    let tid = || TransactionalId(StrBytes::from_static_str(id));
    let req = InitProducerIdRequest::default()
        .with_transactional_id(Some(tid()))
        .with_transaction_timeout_ms(120_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let mut resp = call(s, ApiKey::InitProducerId, 4, &req);
    let init = InitProducerIdResponse::decode(&mut resp, 4).expect("init response");
    assert_eq!(init.error_code, 0, "InitProducerId");
    let req = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(tid())
        .with_v3_and_below_producer_id(init.producer_id)
        .with_v3_and_below_producer_epoch(init.producer_epoch)
        .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
            .with_name(topic())
            .with_partitions(vec![0])]);
    let mut resp = call(s, ApiKey::AddPartitionsToTxn, 3, &req);
    let added = AddPartitionsToTxnResponse::decode(&mut resp, 3).expect("add response");
    let code = added.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code;
    assert_eq!(code, 0, "AddPartitionsToTxn");
    (init.producer_id.0, init.producer_epoch)
}

/// Produces `records` to partition 0 (v8, acks=all), as the transactional producer `id`
/// when given; (error, base offset).
fn produce(s: &mut TcpStream, records: Bytes, id: Option<&'static str>) -> (i16, i64) {
    let req = ProduceRequest::default()
        .with_transactional_id(id.map(|id| TransactionalId(StrBytes::from_static_str(id))))
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let mut resp = call(s, ApiKey::Produce, 8, &req);
    let resp = ProduceResponse::decode(&mut resp, 8).expect("produce response");
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Writes one marker to partition 0; its error code.
fn marker(s: &mut TcpStream, pid: i64, epoch: i16, commit: bool) -> i16 {
    let req = WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_transaction_result(commit)
        .with_coordinator_epoch(0)
        .with_topics(vec![WritableTxnMarkerTopic::default()
            .with_name(topic())
            .with_partition_indexes(vec![0])])]);
    let mut resp = call(s, ApiKey::WriteTxnMarkers, 1, &req);
    let resp = WriteTxnMarkersResponse::decode(&mut resp, 1).expect("markers response");
    resp.markers[0].topics[0].partitions[0].error_code
}

/// What a Fetch (v11) of partition 0 answered.
struct Fetched {
    records: usize,
    high_watermark: i64,
    last_stable_offset: i64,
    aborted: Vec<(i64, i64)>,
}

fn fetch(s: &mut TcpStream, offset: i64, read_committed: bool, max_wait_ms: i32) -> Fetched {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_isolation_level(i8::from(read_committed))
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic())
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    let mut resp = call(s, ApiKey::Fetch, 11, &req);
    let resp = FetchResponse::decode(&mut resp, 11).expect("fetch response");
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    Fetched {
        records: p.records.as_ref().map_or(0, |r| record_count(r) as usize),
        high_watermark: p.high_watermark,
        last_stable_offset: p.last_stable_offset,
        aborted: p
            .aborted_transactions
            .iter()
            .flatten()
            .map(|a| (a.producer_id.0, a.first_offset))
            .collect(),
    }
}

/// ListOffsets (v5) LATEST of partition 0.
fn latest(s: &mut TcpStream, read_committed: bool) -> i64 {
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(i8::from(read_committed))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic())
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    let mut resp = call(s, ApiKey::ListOffsets, 5, &req);
    let resp = ListOffsetsResponse::decode(&mut resp, 5).expect("list offsets response");
    let p = &resp.topics[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.offset
}

/// (producer id, current transaction start offset) of partition 0's producers.
fn producers(s: &mut TcpStream) -> Vec<(i64, i64)> {
    let req = DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
        .with_name(topic())
        .with_partition_indexes(vec![0])]);
    let mut resp = call(s, ApiKey::DescribeProducers, 0, &req);
    let resp = DescribeProducersResponse::decode(&mut resp, 0).expect("describe response");
    resp.topics[0].partitions[0]
        .active_producers
        .iter()
        .map(|p| (p.producer_id.0, p.current_txn_start_offset))
        .collect()
}

/// The offsets of the messages a Fetch v2 (down-converted to magic-1 messages, as old
/// clients read) returns from partition 0, offset 0; frames written by hand, as the codec
/// has no encoder for Kafka 4's removed versions.
fn old_fetch_offsets(s: &mut TcpStream) -> Vec<i64> {
    use bytes::BufMut;
    let mut body = BytesMut::new();
    body.put_i16(1); // Fetch
    body.put_i16(2);
    body.put_i32(9);
    body.put_i16(7);
    body.put_slice(b"txn-log");
    body.put_i32(-1); // replica id
    body.put_i32(100); // max wait
    body.put_i32(1); // min bytes
    body.put_i32(1);
    body.put_i16(TOPIC.len() as i16);
    body.put_slice(TOPIC.as_bytes());
    body.put_i32(1);
    body.put_i32(0); // partition
    body.put_i64(0); // offset
    body.put_i32(1 << 20);
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    s.write_all(&frame).expect("write");
    let mut r = read_frame(s).expect("response");
    assert_eq!(r.get_i32(), 9);
    r.get_i32(); // throttle time
    assert_eq!(r.get_i32(), 1);
    let n = r.get_i16() as usize;
    r.advance(n);
    assert_eq!(r.get_i32(), 1);
    r.get_i32(); // partition
    assert_eq!(r.get_i16(), 0);
    r.get_i64(); // high watermark
    let len = r.get_i32() as usize;
    let mut set = r.split_to(len);
    let mut offsets = Vec::new();
    while set.remaining() >= 12 {
        offsets.push(set.get_i64());
        let size = set.get_i32() as usize;
        set.advance(size.min(set.remaining()));
    }
    offsets
}

/// The values a consumer at `isolation` reads from partition 0, to its end.
fn consume(broker: &Broker, isolation: &str) -> Vec<String> {
    let c = assigned_to_end(broker, &[("isolation.level", isolation)], TOPIC, 1);
    let mut values = Vec::new();
    let mut keep = |m: &rdkafka::message::BorrowedMessage<'_>| {
        values.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
    };
    read_to_end(&c, 1, Duration::from_secs(20), &mut keep);
    values
}

/// Open, aborted and committed transactions between plain records, as each reader sees
/// them: read_committed Fetch stops at the open transaction and lists the aborted one;
/// librdkafka's read_committed consumer drops the aborted records; markers never show.
#[test]
fn read_committed_stops_at_the_open_transaction_and_drops_aborted_ones() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    create_topic(&broker, TOPIC, 1, &[]);
    let mut s = connect(&broker);

    let (a, a_epoch) = begin(&mut s, "tx-a");
    assert_eq!(produce(&mut s, batch("a", 3, None), None), (0, 0));
    assert_eq!(
        produce(&mut s, batch("x", 2, Some((a, a_epoch, 0))), Some("tx-a")),
        (0, 3)
    );
    assert_eq!(produce(&mut s, batch("b", 2, None), None), (0, 5));

    // The transaction of producer a is open at 3: the LSO.
    let all = fetch(&mut s, 0, false, 0);
    assert_eq!((all.records, all.high_watermark), (7, 7));
    assert_eq!(all.last_stable_offset, 3);
    let stable = fetch(&mut s, 0, true, 0);
    assert_eq!((stable.records, stable.last_stable_offset), (3, 3));
    assert!(stable.aborted.is_empty());
    assert_eq!((latest(&mut s, true), latest(&mut s, false)), (3, 7));
    assert_eq!(producers(&mut s), vec![(a, 3)]);
    assert_eq!(consume(&broker, "read_committed"), ["a-0", "a-1", "a-2"]);

    // Abort it on the partition: everything is stable, the aborted transaction listed.
    assert_eq!(marker(&mut s, a, a_epoch, false), 0);
    let stable = fetch(&mut s, 0, true, 0);
    assert_eq!((stable.high_watermark, stable.last_stable_offset), (8, 8));
    assert_eq!(stable.records, 8, "the marker is a record of the log");
    assert_eq!(stable.aborted, vec![(a, 3)]);
    assert_eq!(producers(&mut s), vec![(a, -1)]);
    // From past the marker nothing aborted overlaps.
    assert_eq!(fetch(&mut s, 8, true, 0).aborted, vec![]);

    // A committed transaction of another producer.
    let (b, b_epoch) = begin(&mut s, "tx-b");
    assert_eq!(
        produce(&mut s, batch("y", 2, Some((b, b_epoch, 0))), Some("tx-b")),
        (0, 8)
    );
    assert_eq!(latest(&mut s, true), 8);
    assert_eq!(marker(&mut s, b, b_epoch, true), 0);
    assert_eq!(latest(&mut s, true), 11);

    let committed = consume(&broker, "read_committed");
    assert_eq!(
        committed,
        ["a-0", "a-1", "a-2", "b-0", "b-1", "y-0", "y-1"],
        "aborted records dropped, markers never shown"
    );
    let everything = consume(&broker, "read_uncommitted");
    assert_eq!(
        everything,
        ["a-0", "a-1", "a-2", "x-0", "x-1", "b-0", "b-1", "y-0", "y-1"]
    );
    // An old client (Fetch v0–3, no isolation) gets every record, the markers (7 and 10)
    // left out: they have no old message form.
    assert_eq!(old_fetch_offsets(&mut s), [0, 1, 2, 3, 4, 5, 6, 8, 9]);

    // A marker with a newer epoch fences the producer's old instance on the partition.
    assert_eq!(marker(&mut s, b, b_epoch + 1, false), 0);
    let (error, _) = produce(&mut s, batch("z", 1, Some((b, b_epoch, 2))), Some("tx-b"));
    assert_eq!(error, 47, "INVALID_PRODUCER_EPOCH");
    assert_eq!(
        marker(&mut s, b, b_epoch, false),
        47,
        "an older marker is refused"
    );
}

/// A read_committed long poll at the LSO wakes when the marker moves it, long before its
/// max_wait.
#[test]
fn a_read_committed_long_poll_wakes_when_the_transaction_ends() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    create_topic(&broker, TOPIC, 1, &[]);
    let mut s = connect(&broker);
    let (p, epoch) = begin(&mut s, "tx-poll");
    assert_eq!(
        produce(&mut s, batch("x", 2, Some((p, epoch, 0))), Some("tx-poll")),
        (0, 0)
    );
    let mut poller = connect(&broker);
    let started = Instant::now();
    let waiting = std::thread::spawn(move || fetch(&mut poller, 0, true, 15_000));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(marker(&mut s, p, epoch, true), 0);
    let got = waiting.join().expect("poller");
    let took = started.elapsed();
    assert_eq!((got.records, got.last_stable_offset), (3, 3));
    assert!(took < Duration::from_secs(8), "long poll took {took:?}");
}

/// kill -9 with one transaction open and one aborted: after the restart the LSO and the
/// aborted list are the same, and the open transaction can still be ended.
#[test]
fn the_last_stable_offset_and_aborted_index_survive_kill_9() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, &[]);
    // Small segments: the transactions span several.
    create_topic(&broker, TOPIC, 1, &[("segment.bytes", "1024")]);
    let mut s = connect(&broker);
    let (one, one_epoch) = begin(&mut s, "tx-1");
    let (two, two_epoch) = begin(&mut s, "tx-2");
    produce(
        &mut s,
        batch("x", 2, Some((one, one_epoch, 0))),
        Some("tx-1"),
    );
    produce(
        &mut s,
        batch("o", 1, Some((two, two_epoch, 0))),
        Some("tx-2"),
    );
    for i in 0..12 {
        produce(&mut s, batch(&format!("p{i}"), 1, None), None);
    }
    produce(
        &mut s,
        batch("x", 1, Some((one, one_epoch, 2))),
        Some("tx-1"),
    );
    assert_eq!(marker(&mut s, one, one_epoch, false), 0);
    for i in 12..24 {
        produce(&mut s, batch(&format!("p{i}"), 1, None), None);
    }
    let before = fetch(&mut s, 0, true, 0);
    assert_eq!(before.last_stable_offset, 2);
    assert_eq!(before.aborted, vec![(one, 0)]);
    let all = fetch(&mut s, 3, true, 0);
    assert_eq!(all.records, 0, "nothing stable past the open transaction");
    drop(s);

    broker.kill9();
    broker.restart();
    let mut s = connect(&broker);
    let after = fetch(&mut s, 0, true, 0);
    assert_eq!(
        (
            after.high_watermark,
            after.last_stable_offset,
            after.records
        ),
        (before.high_watermark, 2, 2)
    );
    assert_eq!(after.aborted, vec![(one, 0)]);
    let mut expected = vec![(one, -1), (two, 2)];
    expected.sort_unstable();
    assert_eq!(producers(&mut s), expected);
    assert_eq!(marker(&mut s, two, two_epoch, true), 0);
    let end = fetch(&mut s, 0, true, 0);
    assert_eq!(end.last_stable_offset, end.high_watermark);
    assert_eq!(end.aborted, vec![(one, 0)]);
}

/// WriteTxnMarkers needs CLUSTER_ACTION on the cluster, as in Kafka: without it every
/// partition gets CLUSTER_AUTHORIZATION_FAILED and nothing is written.
#[test]
fn write_txn_markers_needs_cluster_action() {
    let topic_rights = r#"{resource_type = "topic", resource_name = "txl", principal = "User:ANONYMOUS", operations = ["all"]}"#;
    for (ops, expected) in [("\"create\"", 31), ("\"create\", \"cluster_action\"", 0)] {
        let (_tmp, data) = data_dir();
        let cluster = format!(
            r#"{{resource_type = "cluster", principal = "User:ANONYMOUS", operations = [{ops}]}}"#
        );
        let bindings = format!("[{topic_rights}, {cluster}]");
        let broker = Broker::start(
            &data,
            &[
                ("PORTASK_ACL__ENABLED", "true"),
                ("PORTASK_ACL__BINDINGS", &bindings),
            ],
        );
        create_topic(&broker, TOPIC, 1, &[]);
        let mut s = connect(&broker);
        assert_eq!(produce(&mut s, batch("a", 1, None), None), (0, 0));
        assert_eq!(marker(&mut s, 3, 0, false), expected, "with {ops}");
        // Written, the marker takes offset 1.
        let end = fetch(&mut s, 0, false, 0).high_watermark;
        assert_eq!(end, if expected == 0 { 2 } else { 1 }, "with {ops}");
    }
}

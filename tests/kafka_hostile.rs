//! Requests whose counts and lengths lie: a tiny frame claiming 0x7fffffff elements used to
//! make kafka-protocol pre-allocate ~200 GB and abort the whole broker. Now every such
//! request closes only its own connection, and every shard keeps serving; the decoders
//! refuse such counts for every API and version the broker advertises.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{closed_by_broker, data_dir, kafka, Broker};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;

/// The request of the report, byte for byte: Fetch v4 whose topic count is 0x7fffffff.
const FETCH_V4_HUGE_COUNT: &str =
    "0000002200010004000000010003726570ffffffff000001f40000000100100000007fffffff";

/// A request frame: size, header (v1, or v2 with empty tagged fields when `flexible`), body.
fn frame(api: ApiKey, version: i16, flexible: bool, body: &[u8]) -> Vec<u8> {
    let mut f = BytesMut::new();
    f.put_i32(0);
    f.put_i16(api as i16);
    f.put_i16(version);
    f.put_i32(7);
    f.put_i16(1);
    f.put_u8(b'x');
    if flexible {
        f.put_u8(0);
    }
    f.put_slice(body);
    let len = (f.len() - 4) as i32;
    f[0..4].copy_from_slice(&len.to_be_bytes());
    f.to_vec()
}

const HUGE: [u8; 4] = 0x7fff_ffffu32.to_be_bytes();
/// An unsigned varint of u32::MAX: a compact array or string of 4 294 967 294 elements.
const HUGE_VARINT: [u8; 5] = [0xff, 0xff, 0xff, 0xff, 0x0f];

/// One lying request per API the report named, and a few more, old and flexible versions.
fn lying_requests() -> Vec<(&'static str, Vec<u8>)> {
    let cat = |parts: &[&[u8]]| parts.concat();
    vec![
        (
            "Fetch v4 (the report's)",
            hex(FETCH_V4_HUGE_COUNT).expect("hex"),
        ),
        ("Metadata v1", frame(ApiKey::Metadata, 1, false, &HUGE)),
        (
            "Metadata v9 (compact)",
            frame(ApiKey::Metadata, 9, true, &HUGE_VARINT),
        ),
        (
            "DeleteRecords v0",
            frame(ApiKey::DeleteRecords, 0, false, &HUGE),
        ),
        (
            "DescribeConfigs v0",
            frame(ApiKey::DescribeConfigs, 0, false, &HUGE),
        ),
        (
            "CreateTopics v0",
            frame(ApiKey::CreateTopics, 0, false, &HUGE),
        ),
        (
            "DeleteGroups v0",
            frame(ApiKey::DeleteGroups, 0, false, &HUGE),
        ),
        (
            "Produce v3",
            frame(
                ApiKey::Produce,
                3,
                false,
                &cat(&[b"\xff\xff\xff\xff\x00\x00\x13\x88", &HUGE]),
            ),
        ),
        (
            "ListOffsets v1",
            frame(
                ApiKey::ListOffsets,
                1,
                false,
                &cat(&[b"\xff\xff\xff\xff", &HUGE]),
            ),
        ),
        (
            "OffsetFetch v1",
            frame(ApiKey::OffsetFetch, 1, false, &cat(&[b"\x00\x01g", &HUGE])),
        ),
        (
            "CreateTopics v0, a topic name of 32767 bytes in a 40-byte frame",
            frame(ApiKey::CreateTopics, 0, false, b"\x00\x00\x00\x01\x7f\xff"),
        ),
    ]
}

fn hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// ApiVersions v0 on a fresh connection is answered with our correlation id.
fn answers_api_versions(broker: &Broker) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", broker.port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(&frame(ApiKey::ApiVersions, 0, false, &[]))
        .is_err()
    {
        return false;
    }
    let mut len = [0u8; 4];
    let mut corr = [0u8; 4];
    s.read_exact(&mut len).is_ok()
        && s.read_exact(&mut corr).is_ok()
        && i32::from_be_bytes(corr) == 7
}

#[test]
fn lying_counts_close_only_their_connection_and_every_shard_keeps_serving() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, &[]);
    // SO_REUSEPORT spreads connections over both shards: several of each request reach each.
    for round in 0..6 {
        for (what, bytes) in lying_requests() {
            let mut s = TcpStream::connect(("127.0.0.1", broker.port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(&bytes).expect("write");
            assert!(
                closed_by_broker(&mut s),
                "{what} (round {round}): the broker answered instead of closing"
            );
            assert!(
                broker.exit_status().is_none(),
                "{what} (round {round}) stopped the broker:\n{}",
                broker.log()
            );
        }
    }
    for _ in 0..8 {
        assert!(
            answers_api_versions(&broker),
            "a fresh connection is served"
        );
    }
    assert!(
        broker.log().contains("exceeds the"),
        "the close is logged with its reason"
    );

    // Partitions of both shards still take and give records.
    kafka::create_topics(&broker, &[("after-lies", 4)]);
    let producer: BaseProducer = kafka::client(&broker, &[("acks", "all")]);
    for p in 0..4 {
        let value = format!("v{p}");
        producer
            .send(
                BaseRecord::<(), _>::to("after-lies")
                    .partition(p)
                    .payload(&value),
            )
            .expect("enqueue");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let consumer = kafka::assigned(&broker, &[], "after-lies", 4, rdkafka::Offset::Beginning);
    let mut seen = std::collections::BTreeSet::new();
    kafka::poll_n(&consumer, 4, Duration::from_secs(30), |m| {
        seen.insert((m.partition(), m.payload().map(|v| v.to_vec())));
    });
    let want: std::collections::BTreeSet<_> = (0..4)
        .map(|p| (p, Some(format!("v{p}").into_bytes())))
        .collect();
    assert_eq!(seen, want);
    assert!(broker.exit_status().is_none());
}

/// Calls `$m!(request type, api)` for every API the broker serves.
macro_rules! every_request {
    ($m:ident) => {
        $m!(ProduceRequest, Produce);
        $m!(FetchRequest, Fetch);
        $m!(ListOffsetsRequest, ListOffsets);
        $m!(MetadataRequest, Metadata);
        $m!(FindCoordinatorRequest, FindCoordinator);
        $m!(JoinGroupRequest, JoinGroup);
        $m!(HeartbeatRequest, Heartbeat);
        $m!(LeaveGroupRequest, LeaveGroup);
        $m!(SyncGroupRequest, SyncGroup);
        $m!(OffsetCommitRequest, OffsetCommit);
        $m!(OffsetFetchRequest, OffsetFetch);
        $m!(ListGroupsRequest, ListGroups);
        $m!(DescribeGroupsRequest, DescribeGroups);
        $m!(DeleteGroupsRequest, DeleteGroups);
        $m!(OffsetDeleteRequest, OffsetDelete);
        $m!(InitProducerIdRequest, InitProducerId);
        $m!(DescribeConfigsRequest, DescribeConfigs);
        $m!(AlterConfigsRequest, AlterConfigs);
        $m!(IncrementalAlterConfigsRequest, IncrementalAlterConfigs);
        $m!(DescribeClusterRequest, DescribeCluster);
        $m!(DescribeLogDirsRequest, DescribeLogDirs);
        $m!(DeleteRecordsRequest, DeleteRecords);
        $m!(OffsetForLeaderEpochRequest, OffsetForLeaderEpoch);
        $m!(DescribeProducersRequest, DescribeProducers);
        $m!(ApiVersionsRequest, ApiVersions);
        $m!(CreateTopicsRequest, CreateTopics);
        $m!(DeleteTopicsRequest, DeleteTopics);
        $m!(CreatePartitionsRequest, CreatePartitions);
    };
}

/// Every request type at every version the broker advertises, given a body that is zeros
/// up to some offset and then a count of 0x7fffffff (or a compact count of u32::MAX):
/// whatever field the lie lands in, decoding fails or succeeds without allocating for the
/// lie. Before the patch this test aborted its process on the first array it reached.
#[test]
fn no_request_version_allocates_for_a_count_it_has_not_received() {
    let mut decoded = 0usize;
    let mut refused = 0usize;
    macro_rules! sweep {
        ($req:ty, $key:ident) => {
            let range = portask::kafka::codec::versions(ApiKey::$key);
            for version in range.min..=range.max {
                for zeros in 0..48 {
                    for lie in [&HUGE[..], &HUGE_VARINT[..]] {
                        let mut body = vec![0u8; zeros];
                        body.extend_from_slice(lie);
                        body.extend_from_slice(&[0u8; 16]);
                        match <$req>::decode(&mut Bytes::from(body), version) {
                            Ok(_) => decoded += 1,
                            Err(_) => refused += 1,
                        }
                    }
                }
            }
        };
    }
    every_request!(sweep);
    // Each lie of 0x7fffffff elements in at most 68 bytes must be refused at least once
    // per API; the sweep reached every API's arrays.
    assert!(refused > 28 * 48, "refused {refused}, decoded {decoded}");
}

/// A decoded request never keeps more than its frame's worth of elements: the largest
/// honest count a frame can carry is bounded by the bytes it has.
#[test]
fn a_count_the_frame_can_hold_still_decodes() {
    // Metadata v1 with 3 topics named "a", "b", "c": 4 + 3 × 3 bytes.
    let mut body = BytesMut::new();
    body.put_i32(3);
    for name in [b'a', b'b', b'c'] {
        body.put_i16(1);
        body.put_u8(name);
    }
    let req = MetadataRequest::decode(&mut body.freeze(), 1).expect("decodes");
    let names: Vec<String> = req
        .topics
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    // The same with a count one larger than the elements present is refused.
    let mut body = BytesMut::new();
    body.put_i32(4);
    body.put_i16(1);
    body.put_u8(b'a');
    assert!(MetadataRequest::decode(&mut body.freeze(), 1).is_err());
}

/// Metadata v1 for `n` topics named `t0000`, `t0001`…, as a frame with correlation id `c`.
fn metadata_for(n: usize, c: i32) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i32(n as i32);
    for i in 0..n {
        let name = format!("t{i:04}");
        body.put_i16(name.len() as i16);
        body.put_slice(name.as_bytes());
    }
    let mut f = frame(ApiKey::Metadata, 1, false, &body);
    f[8..12].copy_from_slice(&c.to_be_bytes());
    f
}

/// Reads one answer's correlation id, or `None` when the broker closed the connection.
fn answer(s: &mut TcpStream) -> Option<i32> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len).max(4) as usize];
    s.read_exact(&mut body).ok()?;
    Some(i32::from_be_bytes([body[0], body[1], body[2], body[3]]))
}

/// Produces `value` to partition 0 of `topic` through librdkafka (uncompressed, so its frame
/// is as large as the value) and returns the partition's high watermark afterwards.
fn produce_one(broker: &Broker, topic: &str, value: &[u8]) -> i64 {
    let producer: BaseProducer = kafka::client(broker, &[("compression.type", "none")]);
    producer
        .send(BaseRecord::<(), _>::to(topic).partition(0).payload(value))
        .expect("enqueue");
    producer.flush(Duration::from_secs(30)).expect("produce");
    let (_, high) = producer
        .client()
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    high
}

/// Requests other than Produce decode into up to ~157x their frame, so they have their own
/// frame limit (`kafka.max_nonproduce_request_bytes`): one over it closes its connection
/// with a log line naming the key; one under it is answered; a Produce larger than it is
/// still taken.
#[test]
fn requests_other_than_produce_have_their_own_frame_limit() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(
        &data,
        &[("PORTASK_KAFKA__MAX_NONPRODUCE_REQUEST_BYTES", "2048")],
    );
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", broker.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    };
    let mut s = connect();
    s.write_all(&metadata_for(100, 1)).expect("write"); // ~800 bytes
    assert_eq!(answer(&mut s), Some(1), "a small Metadata is answered");
    s.write_all(&metadata_for(400, 2)).expect("write"); // ~2.8 KB
    assert_eq!(
        answer(&mut s),
        None,
        "an oversize Metadata closes the connection"
    );
    assert!(
        broker
            .log()
            .contains("over kafka.max_nonproduce_request_bytes (2048)"),
        "{}",
        broker.log()
    );

    // A 6 KB record through librdkafka: its Produce frame is over 2048 bytes.
    assert_eq!(
        produce_one(&broker, "big-produce", &[b'p'; 6000]),
        1,
        "the large Produce was stored"
    );
}

/// What a decoded request holds is charged to the connection's budget after it is taken,
/// so pipelined requests whose charges exceed the budget still all get answered, in order
/// (one at a time), rather than waiting for budget that never comes back.
#[test]
fn pipelined_requests_charged_over_the_budget_are_all_answered() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(
        &data,
        &[("PORTASK_LIMITS__CONNECTION_INFLIGHT_BYTES", "65536")],
    );
    let mut s = TcpStream::connect(("127.0.0.1", broker.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // ~800-byte frames, each charged ~128 KB: two over the connection's budget.
    let mut all = Vec::new();
    for c in 0..20 {
        all.extend(metadata_for(100, c));
    }
    s.write_all(&all).expect("write");
    for c in 0..20 {
        assert_eq!(answer(&mut s), Some(c));
    }
}

/// A Produce of nothing but empty topic entries decodes to ~33x its frame; its entries are
/// counted before decoding, and one whose entries alone would outweigh the shard's whole
/// in-flight budget closes its connection with a log line, while ordinary produces go on.
#[test]
fn a_produce_of_empty_entries_wider_than_the_shard_budget_is_refused() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(
        &data,
        &[("PORTASK_LIMITS__SHARD_INFLIGHT_BYTES", "1048576")],
    );
    // Produce v9: null transactional id, acks -1, timeout 5 s, 20 000 topics with an empty
    // name and no partitions (3 bytes each on the wire, ~96 bytes decoded).
    let mut body = vec![0u8, 0xff, 0xff, 0x00, 0x00, 0x13, 0x88];
    let mut n = 20_001u32;
    while n >= 0x80 {
        body.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    body.push(n as u8);
    for _ in 0..20_000 {
        body.extend_from_slice(&[1, 1, 0]);
    }
    body.push(0);
    let mut s = TcpStream::connect(("127.0.0.1", broker.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&frame(ApiKey::Produce, 9, true, &body))
        .expect("write");
    assert!(closed_by_broker(&mut s), "the wide Produce was taken");
    assert!(
        broker.log().contains("20000 topic and 0 partition entries"),
        "{}",
        broker.log()
    );

    assert_eq!(produce_one(&broker, "narrow", b"ok"), 1);
}

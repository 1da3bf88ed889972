//! Request versions that Kafka 0.11–3.x accepted and Kafka 4 removed (KIP-896), which old
//! clients still send: sarama 1.22's OffsetCommit v1, kafka-go 0.2's CreateTopics v0,
//! Burrow's ListOffsets v0. Raw sockets with the old formats written out by hand (not with
//! the broker's own encoder), so each test pins the wire format an old client reads.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{data_dir, kafka, Broker, FAST_GROUPS};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn connect(broker: &Broker) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", broker.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// A request body in the classic encoding.
#[derive(Default)]
struct W(BytesMut);

impl W {
    fn i8(mut self, v: i8) -> Self {
        self.0.put_i8(v);
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.put_i16(v);
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.put_i32(v);
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.put_i64(v);
        self
    }
    fn str(mut self, s: &str) -> Self {
        self.0.put_i16(s.len() as i16);
        self.0.put_slice(s.as_bytes());
        self
    }
    fn null(mut self) -> Self {
        self.0.put_i16(-1);
        self
    }
}

/// Sends one request (header v1) and returns the response body after its correlation id.
fn call(s: &mut TcpStream, api: i16, version: i16, body: W) -> Bytes {
    let mut f = BytesMut::new();
    f.put_i32(0);
    f.put_i16(api);
    f.put_i16(version);
    f.put_i32(77);
    f.put_i16(4);
    f.put_slice(b"old1");
    f.put_slice(&body.0);
    let len = (f.len() - 4) as i32;
    f[0..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&f).expect("write");
    let mut len = [0u8; 4];
    s.read_exact(&mut len)
        .unwrap_or_else(|e| panic!("api {api} v{version}: no answer ({e})"));
    let mut resp = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut resp).expect("body");
    let mut resp = Bytes::from(resp);
    assert_eq!(resp.get_i32(), 77, "correlation id");
    resp
}

fn string(b: &mut Bytes) -> String {
    let n = b.get_i16();
    if n < 0 {
        return String::new();
    }
    String::from_utf8(b.split_to(n as usize).to_vec()).expect("utf-8")
}

const LIST_OFFSETS: i16 = 2;
const OFFSET_FOR_LEADER_EPOCH: i16 = 23;
const DESCRIBE_CONFIGS: i16 = 32;
const OFFSET_COMMIT: i16 = 8;
const OFFSET_FETCH: i16 = 9;
const CREATE_TOPICS: i16 = 19;
const DELETE_TOPICS: i16 = 20;

/// CreateTopics v0, as kafka-go 0.2 sends it: answered with (name, error) and no throttle
/// time; a second create of the same name is TOPIC_ALREADY_EXISTS (36).
fn create_v0(s: &mut TcpStream, topic: &str, partitions: i32) -> i16 {
    let body = W::default()
        .i32(1)
        .str(topic)
        .i32(partitions)
        .i16(1)
        .i32(0)
        .i32(0)
        .i32(5000);
    let mut r = call(s, CREATE_TOPICS, 0, body);
    assert_eq!(r.get_i32(), 1);
    assert_eq!(string(&mut r), topic);
    let code = r.get_i16();
    assert!(!r.has_remaining(), "v0 has nothing after the error code");
    code
}

#[test]
fn old_create_delete_commit_and_fetch_versions_work() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut s = connect(&broker);

    assert_eq!(create_v0(&mut s, "old-a", 2), 0);
    assert_eq!(create_v0(&mut s, "old-a", 2), 36);

    // CreateTopics v1: v0 with validate_only, answered with an error message.
    let body = W::default()
        .i32(1)
        .str("old-b")
        .i32(1)
        .i16(1)
        .i32(0)
        .i32(0)
        .i32(5000)
        .i8(0); // validate_only = false
    let mut r = call(&mut s, CREATE_TOPICS, 1, body);
    assert_eq!(r.get_i32(), 1);
    assert_eq!(string(&mut r), "old-b");
    assert_eq!(r.get_i16(), 0);
    assert_eq!(string(&mut r), "", "no error message");
    assert!(!r.has_remaining());

    // OffsetCommit v0 (no generation) and v1 (generation -1, a commit timestamp), as simple
    // consumers and sarama 1.22 send them; the response is per partition.
    let v0 = W::default()
        .str("old-group")
        .i32(1)
        .str("old-a")
        .i32(1)
        .i32(0)
        .i64(5)
        .str("meta0");
    let mut r = call(&mut s, OFFSET_COMMIT, 0, v0);
    assert_eq!(r.get_i32(), 1);
    assert_eq!(string(&mut r), "old-a");
    assert_eq!(r.get_i32(), 1);
    assert_eq!((r.get_i32(), r.get_i16()), (0, 0));
    let v1 = W::default()
        .str("old-group")
        .i32(-1)
        .str("")
        .i32(1)
        .str("old-a")
        .i32(1)
        .i32(1)
        .i64(7)
        .i64(-1)
        .null();
    let mut r = call(&mut s, OFFSET_COMMIT, 1, v1);
    assert_eq!(r.get_i32(), 1);
    assert_eq!(string(&mut r), "old-a");
    assert_eq!(r.get_i32(), 1);
    assert_eq!((r.get_i32(), r.get_i16()), (1, 0));
    assert!(!r.has_remaining());

    // OffsetFetch v0 and v1 read the same store (v0 read ZooKeeper in old Kafka); no
    // top-level error code before v2.
    for version in [0, 1] {
        let body = W::default()
            .str("old-group")
            .i32(1)
            .str("old-a")
            .i32(2)
            .i32(0)
            .i32(1);
        let mut r = call(&mut s, OFFSET_FETCH, version, body);
        assert_eq!(r.get_i32(), 1);
        assert_eq!(string(&mut r), "old-a");
        assert_eq!(r.get_i32(), 2);
        let mut got = Vec::new();
        for _ in 0..2 {
            let p = r.get_i32();
            let offset = r.get_i64();
            let meta = string(&mut r);
            let error = r.get_i16();
            got.push((p, offset, meta, error));
        }
        got.sort();
        assert_eq!(
            got,
            vec![(0, 5, "meta0".to_owned(), 0), (1, 7, String::new(), 0)],
            "OffsetFetch v{version}"
        );
        assert!(!r.has_remaining(), "OffsetFetch v{version}: trailing bytes");
    }

    // DeleteTopics v0: v1 without the throttle time.
    let mut r = call(
        &mut s,
        DELETE_TOPICS,
        0,
        W::default().i32(1).str("old-b").i32(5000),
    );
    assert_eq!(r.get_i32(), 1);
    assert_eq!(string(&mut r), "old-b");
    assert_eq!(r.get_i16(), 0);
    assert!(!r.has_remaining());
}

/// ListOffsets v0 (Burrow's): `old_style_offsets`, one offset for latest (-1) and earliest
/// (-2), none for an unknown partition, which gets UNKNOWN_TOPIC_OR_PARTITION (3).
#[test]
fn list_offsets_v0_answers_old_style_offsets() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut s = connect(&broker);
    assert_eq!(create_v0(&mut s, "lag", 1), 0);
    let p: FutureProducer = kafka::client(&broker, &[]);
    for i in 0..5 {
        kafka::delivered(kafka::enqueue(
            &p,
            FutureRecord::to("lag").payload(&format!("m{i}")).key("k"),
        ));
    }
    let body = W::default()
        .i32(-1)
        .i32(1)
        .str("lag")
        .i32(3)
        .i32(0)
        .i64(-1)
        .i32(1)
        .i32(0)
        .i64(-2)
        .i32(1)
        .i32(9)
        .i64(-1)
        .i32(1);
    let mut r = call(&mut s, LIST_OFFSETS, 0, body);
    assert_eq!(r.get_i32(), 1);
    assert_eq!(string(&mut r), "lag");
    assert_eq!(r.get_i32(), 3);
    let mut answers = Vec::new();
    for _ in 0..3 {
        let p = r.get_i32();
        let error = r.get_i16();
        let n = r.get_i32();
        let offsets: Vec<i64> = (0..n).map(|_| r.get_i64()).collect();
        answers.push((p, error, offsets));
    }
    assert!(!r.has_remaining());
    assert_eq!(
        answers,
        vec![(0, 0, vec![5]), (0, 0, vec![0]), (9, 3, vec![])]
    );

    // OffsetForLeaderEpoch v0 (error, partition, end offset) and v1 (with the epoch), as
    // replicas and clients of Kafka 0.11–2.0 ask; the broker's one epoch is 0.
    for version in [0, 1] {
        let body = W::default().i32(1).str("lag").i32(1).i32(0).i32(0);
        let mut r = call(&mut s, OFFSET_FOR_LEADER_EPOCH, version, body);
        assert_eq!(r.get_i32(), 1);
        assert_eq!(string(&mut r), "lag");
        assert_eq!(r.get_i32(), 1);
        assert_eq!((r.get_i16(), r.get_i32()), (0, 0), "v{version}");
        if version == 1 {
            assert_eq!(r.get_i32(), 0, "leader epoch");
        }
        assert_eq!(r.get_i64(), 5, "end offset");
        assert!(!r.has_remaining());
    }

    // DescribeConfigs v0: `is_default` per config instead of the source, no synonyms.
    let body = W::default().i32(1).i8(2).str("lag").i32(-1);
    let mut r = call(&mut s, DESCRIBE_CONFIGS, 0, body);
    r.get_i32(); // throttle time
    assert_eq!(r.get_i32(), 1);
    assert_eq!(r.get_i16(), 0);
    string(&mut r);
    assert_eq!(r.get_i8(), 2);
    assert_eq!(string(&mut r), "lag");
    let n = r.get_i32();
    let mut configs = Vec::new();
    for _ in 0..n {
        let name = string(&mut r);
        let value = string(&mut r);
        let (_read_only, is_default, _sensitive) = (r.get_i8(), r.get_i8(), r.get_i8());
        configs.push((name, value, is_default));
    }
    assert!(!r.has_remaining(), "DescribeConfigs v0: trailing bytes");
    assert!(
        configs.contains(&("cleanup.policy".to_owned(), "delete".to_owned(), 1)),
        "{configs:?}"
    );
}

const PRODUCE: i16 = 0;
const FETCH: i16 = 1;

/// One message of format `magic` (0 or 1), uncompressed unless `codec` is set.
fn message(
    offset: i64,
    magic: i8,
    codec: i8,
    ts: i64,
    key: Option<&[u8]>,
    value: &[u8],
) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i8(magic);
    body.put_i8(codec);
    if magic == 1 {
        body.put_i64(ts);
    }
    match key {
        Some(k) => {
            body.put_i32(k.len() as i32);
            body.put_slice(k);
        }
        None => body.put_i32(-1),
    }
    body.put_i32(value.len() as i32);
    body.put_slice(value);
    let mut m = BytesMut::new();
    m.put_i64(offset);
    m.put_i32(body.len() as i32 + 4);
    m.put_u32(crc32fast::hash(&body));
    m.put_slice(&body);
    m.to_vec()
}

/// A Produce v0–2 request body for one partition.
fn produce_body(topic: &str, partition: i32, set: &[u8]) -> W {
    let mut w = W::default()
        .i16(-1)
        .i32(5000)
        .i32(1)
        .str(topic)
        .i32(1)
        .i32(partition)
        .i32(set.len() as i32);
    w.0.put_slice(set);
    w
}

/// (partition, error, base offset) of a one-partition Produce v0–2 answer.
fn produce_answer(mut r: Bytes, version: i16) -> (i32, i16, i64) {
    assert_eq!(r.get_i32(), 1);
    string(&mut r);
    assert_eq!(r.get_i32(), 1);
    let answer = (r.get_i32(), r.get_i16(), r.get_i64());
    if version >= 2 {
        r.get_i64(); // log append time
    }
    if version >= 1 {
        r.get_i32(); // throttle time
    }
    assert!(!r.has_remaining(), "Produce v{version}: trailing bytes");
    answer
}

/// Messages of format v0/v1 produced with Produce v0, v1 and v2 (one a gzip wrapper) are
/// stored as record batches: a current client reads them back with their keys, values
/// and (from magic 1) timestamps. A message with a bad CRC is CORRUPT_MESSAGE (2) for its
/// partition, and the connection stays open.
#[test]
fn old_produce_versions_convert_messages_to_record_batches() {
    use std::io::Write as _;
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut s = connect(&broker);
    assert_eq!(create_v0(&mut s, "oldp", 1), 0);

    let v0 = message(0, 0, 0, 0, Some(b"k0"), b"v0");
    let r = call(&mut s, PRODUCE, 0, produce_body("oldp", 0, &v0));
    assert_eq!(produce_answer(r, 0), (0, 0, 0));

    let mut v1 = message(0, 0, 0, 0, None, b"v1a");
    v1.extend(message(1, 0, 0, 0, Some(b"k1"), b"v1b"));
    let r = call(&mut s, PRODUCE, 1, produce_body("oldp", 0, &v1));
    assert_eq!(produce_answer(r, 1), (0, 0, 1));

    let mut inner = message(0, 1, 0, 1_600_000_000_001, Some(b"k2"), b"v2a");
    inner.extend(message(1, 1, 0, 1_600_000_000_002, Some(b"k3"), b"v2b"));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&inner).expect("gzip");
    let wrapper = message(
        1,
        1,
        1,
        1_600_000_000_002,
        None,
        &gz.finish().expect("gzip"),
    );
    let r = call(&mut s, PRODUCE, 2, produce_body("oldp", 0, &wrapper));
    assert_eq!(produce_answer(r, 2), (0, 0, 3));

    let mut corrupt = message(0, 1, 0, 5, None, b"bad");
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let r = call(&mut s, PRODUCE, 2, produce_body("oldp", 0, &corrupt));
    assert_eq!(produce_answer(r, 2).1, 2, "CORRUPT_MESSAGE");

    use rdkafka::Message as _;
    use rdkafka::Offset;
    let c = kafka::assigned(&broker, &[], "oldp", 1, Offset::Beginning);
    let mut got: Vec<(Option<Vec<u8>>, Vec<u8>, i64)> = Vec::new();
    kafka::poll_n(&c, 5, Duration::from_secs(20), |m| {
        got.push((
            m.key().map(|k| k.to_vec()),
            m.payload().unwrap_or_default().to_vec(),
            m.offset(),
        ))
    });
    let expect: Vec<(Option<Vec<u8>>, Vec<u8>, i64)> = vec![
        (Some(b"k0".to_vec()), b"v0".to_vec(), 0),
        (None, b"v1a".to_vec(), 1),
        (Some(b"k1".to_vec()), b"v1b".to_vec(), 2),
        (Some(b"k2".to_vec()), b"v2a".to_vec(), 3),
        (Some(b"k3".to_vec()), b"v2b".to_vec(), 4),
    ];
    assert_eq!(got, expect);
}

/// The old-style offsets of one partition (ListOffsets v0 for `timestamp`, `max` offsets).
fn old_style_offsets(s: &mut TcpStream, topic: &str, timestamp: i64, max: i32) -> Vec<i64> {
    let body = W::default()
        .i32(-1)
        .i32(1)
        .str(topic)
        .i32(1)
        .i32(0)
        .i64(timestamp)
        .i32(max);
    let mut r = call(s, LIST_OFFSETS, 0, body);
    assert_eq!(r.get_i32(), 1);
    assert_eq!(string(&mut r), topic);
    assert_eq!(r.get_i32(), 1);
    assert_eq!((r.get_i32(), r.get_i16()), (0, 0));
    let n = r.get_i32();
    let offsets = (0..n).map(|_| r.get_i64()).collect();
    assert!(!r.has_remaining());
    offsets
}

/// ListOffsets v0 with `max_num_offsets` above 1 lists segment boundaries, as Kafka before
/// 0.10.1 answered "offsets before a time": the high watermark, then the base offset of
/// each segment going back, highest first, at most `max_num_offsets` of them; earliest is
/// the log start; a time lists from the last segment written by then, and a time before
/// every segment lists nothing.
#[test]
fn list_offsets_v0_lists_segment_boundaries() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    kafka::create_topic(&broker, "segs", 1, &[("segment.bytes", "2048")]);
    let mut s = connect(&broker);
    let value = [b'x'; 200];
    for i in 0..40 {
        let m = message(0, 0, 0, 0, None, &value);
        let r = call(&mut s, PRODUCE, 0, produce_body("segs", 0, &m));
        assert_eq!(produce_answer(r, 0), (0, 0, i));
    }
    let all = old_style_offsets(&mut s, "segs", -1, 100);
    assert!(all.len() > 3, "several segments rolled: {all:?}");
    assert_eq!((all[0], all[all.len() - 1]), (40, 0), "{all:?}");
    assert!(all.windows(2).all(|w| w[0] > w[1]), "descending: {all:?}");
    assert_eq!(old_style_offsets(&mut s, "segs", -1, 2), all[..2].to_vec());
    assert_eq!(old_style_offsets(&mut s, "segs", -1, 1), vec![40]);
    assert_eq!(old_style_offsets(&mut s, "segs", -2, 5), vec![0]);
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        + 3_600_000;
    assert_eq!(old_style_offsets(&mut s, "segs", later, 100), all);
    assert_eq!(old_style_offsets(&mut s, "segs", 1, 100), Vec::<i64>::new());
}

/// Messages of format v0 carry no timestamp, so retention by time judges their segments by
/// when the files were last written, as Kafka does (`largestTimestamp` falls back to the
/// segment's modification time): old segments of magic-0 data go once `retention.ms` has
/// passed, instead of being kept for ever.
#[test]
fn time_retention_removes_segments_of_messages_without_timestamps() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(
        &data,
        &[("PORTASK_KAFKA__RETENTION_CHECK_INTERVAL_MS", "200")],
    );
    kafka::create_topic(
        &broker,
        "old-ret",
        1,
        &[("segment.bytes", "2048"), ("retention.ms", "1500")],
    );
    let mut s = connect(&broker);
    let value = [b'x'; 200];
    for i in 0..40 {
        let m = message(0, 0, 0, 0, None, &value);
        let r = call(&mut s, PRODUCE, 0, produce_body("old-ret", 0, &m));
        assert_eq!(produce_answer(r, 0), (0, 0, i));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (low, high) = kafka::watermarks(&broker, "old-ret", 0);
        assert_eq!(high, 40);
        if low > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "segments of magic-0 messages were never removed by retention.ms"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A fetched message: offset, magic, timestamp, key, value.
type Fetched = (i64, i8, i64, Option<Vec<u8>>, Vec<u8>);

/// The messages of one Fetch v0–3 partition answer: (offset, magic, timestamp, key, value),
/// each CRC checked.
fn fetched(mut r: Bytes, version: i16) -> (i16, i64, Vec<Fetched>) {
    if version >= 1 {
        r.get_i32(); // throttle time
    }
    assert_eq!(r.get_i32(), 1);
    string(&mut r);
    assert_eq!(r.get_i32(), 1);
    r.get_i32();
    let error = r.get_i16();
    let hw = r.get_i64();
    let len = r.get_i32() as usize;
    let mut set = r.split_to(len);
    assert!(!r.has_remaining(), "Fetch v{version}: trailing bytes");
    let mut out = Vec::new();
    while set.remaining() >= 12 {
        let offset = set.get_i64();
        let size = set.get_i32() as usize;
        if set.remaining() < size {
            break;
        }
        let mut m = set.split_to(size);
        let crc = m.get_u32();
        assert_eq!(crc32fast::hash(&m), crc, "CRC of offset {offset}");
        let magic = m.get_i8();
        assert_eq!(m.get_i8(), 0, "uncompressed");
        let ts = if magic == 1 { m.get_i64() } else { -1 };
        let k = m.get_i32();
        let key = (k >= 0).then(|| m.split_to(k as usize).to_vec());
        let v = m.get_i32();
        let value = m.split_to(v.max(0) as usize).to_vec();
        out.push((offset, magic, ts, key, value));
    }
    (error, hw, out)
}

fn fetch_body(version: i16, topic: &str, offset: i64) -> W {
    let mut w = W::default().i32(-1).i32(100).i32(1);
    if version >= 3 {
        w = w.i32(1 << 20);
    }
    w.i32(1).str(topic).i32(1).i32(0).i64(offset).i32(1 << 20)
}

/// Records a current client produced (lz4-compressed batches) are fetched with Fetch v0–3
/// down-converted: magic 0 for v0–1, magic 1 with the record timestamps for v2–3, one
/// uncompressed message per record at its own offset, from the fetch offset on.
#[test]
fn old_fetch_versions_down_convert_record_batches() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut s = connect(&broker);
    assert_eq!(create_v0(&mut s, "oldf", 1), 0);
    let p: FutureProducer =
        kafka::client(&broker, &[("compression.type", "lz4"), ("linger.ms", "50")]);
    let futures: Vec<_> = (0..4)
        .map(|i| {
            kafka::enqueue(
                &p,
                FutureRecord::to("oldf")
                    .partition(0)
                    .key(&format!("k{i}"))
                    .payload(&format!("value-{i}"))
                    .timestamp(1_700_000_000_000 + i),
            )
        })
        .collect();
    for f in futures {
        kafka::delivered(f);
    }
    for version in 0..=3 {
        let r = call(&mut s, FETCH, version, fetch_body(version, "oldf", 1));
        // The messages start at the fetch offset: the converted (uncompressed) messages
        // before it are left out, as Kafka's down-conversion leaves them out.
        let (error, hw, messages) = fetched(r, version);
        assert_eq!((error, hw), (0, 4), "Fetch v{version}");
        let magic = if version >= 2 { 1 } else { 0 };
        let expect: Vec<_> = (1..4)
            .map(|i| {
                (
                    i,
                    magic,
                    if magic == 1 {
                        1_700_000_000_000 + i
                    } else {
                        -1
                    },
                    Some(format!("k{i}").into_bytes()),
                    format!("value-{i}").into_bytes(),
                )
            })
            .collect();
        assert_eq!(messages, expect, "Fetch v{version}");
    }
}

/// kafka-python pinned to old protocol versions (0.8.2: Produce v0, Fetch v0, OffsetCommit
/// v1 with Kafka-stored offsets; 0.9: Produce v1, Fetch v1, magic-0 lz4 with its broken
/// frame checksum; 0.10: Produce v2, Fetch v2, magic 1) creates, produces with acks=all and
/// each codec, and resumes a group from its commit with nothing lost or read twice.
/// Skipped, saying so, where kafka-python (`pip install kafka-python lz4 python-snappy
/// xxhash`) is not installed.
#[test]
fn kafka_python_at_old_protocol_versions() {
    let pythonpath = kafka_python();
    let (_tmp, data) = data_dir();
    // Two group joins per run, each into an empty group: without this, the broker's
    // initial rebalance delay (3 s, as Kafka's) is most of the test's time.
    let broker = Broker::start(&data, FAST_GROUPS);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kafka_python_old.py"
    );
    for (version, codec) in [
        ("0.8.2", "none"),
        ("0.9", "lz4"),
        ("0.9", "gzip"),
        ("0.10", "snappy"),
        ("0.10", "lz4"),
        ("0.11", "gzip"),
    ] {
        let out = std::process::Command::new("python3")
            .env("PYTHONPATH", pythonpath)
            .args([script, &broker.bootstrap(), version, codec])
            .output()
            .expect("python3");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("OK"),
            "kafka-python {version} {codec}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Where kafka-python and its codecs (lz4, python-snappy, xxhash) can be imported from.
/// They are required, not optional: when the machine lacks them they are installed from
/// PyPI into the target directory (once; later runs find them there), after Debian's
/// python3 and pip when even those are missing, so this test always runs a real old client.
fn kafka_python() -> &'static str {
    const DIR: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/kafka-python");
    let has_pip = || {
        std::process::Command::new("python3")
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has_pip() {
        common::apt::apt_install(&["python3", "python3-pip"]);
    }
    let importable = || {
        std::process::Command::new("python3")
            .env("PYTHONPATH", DIR)
            .args(["-c", "import kafka, lz4, snappy, xxhash"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !importable() {
        let out = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args([
                "--target",
                DIR,
                "kafka-python==3.0.12",
                "lz4",
                "python-snappy",
            ])
            .arg("xxhash")
            .output()
            .expect("python3 -m pip");
        assert!(
            out.status.success(),
            "installing kafka-python with pip: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(importable(), "kafka-python installed but not importable");
    }
    DIR
}

const DESCRIBE_ACLS: i16 = 29;
const CREATE_ACLS: i16 = 30;
const DELETE_ACLS: i16 = 31;

/// The ACL filter of DescribeAcls v0 / a DeleteAcls v0 filter: topics, any name, any
/// principal and host, any operation and permission (no pattern type: v0 has none).
fn any_topic_acl_filter(w: W) -> W {
    w.i8(2).null().null().null().i8(1).i8(1)
}

/// One resource DescribeAcls v0 lists: (resource type, name, [(principal, host, operation,
/// permission)]).
type ListedAcls = (i8, String, Vec<(String, String, i8, i8)>);

/// DescribeAcls v0, per resource; v0 has no pattern type after the name.
fn describe_acls_v0(s: &mut TcpStream) -> Vec<ListedAcls> {
    let mut r = call(s, DESCRIBE_ACLS, 0, any_topic_acl_filter(W::default()));
    let _throttle = r.get_i32();
    assert_eq!(r.get_i16(), 0, "DescribeAcls v0 error code");
    let _message = string(&mut r);
    let resources = (0..r.get_i32())
        .map(|_| {
            let resource_type = r.get_i8();
            let name = string(&mut r);
            let acls = (0..r.get_i32())
                .map(|_| {
                    let principal = string(&mut r);
                    let host = string(&mut r);
                    (principal, host, r.get_i8(), r.get_i8())
                })
                .collect();
            (resource_type, name, acls)
        })
        .collect();
    assert!(!r.has_remaining(), "DescribeAcls v0 has nothing more");
    resources
}

#[test]
fn acl_apis_at_v0_create_describe_and_delete_literal_acls() {
    // Kafka 0.11–1.x clients (and kafka-acls.sh of that time) manage ACLs at v0, before
    // pattern types existed: every v0 ACL is a literal one.
    let (_dir, data) = data_dir();
    let grant = r#"[{resource_type = "cluster", resource_name = "kafka-cluster", principal = "User:ANONYMOUS", operations = ["alter", "describe"]}]"#;
    let broker = Broker::start(
        &data,
        &[
            ("PORTASK_ACL__ENABLED", "true"),
            ("PORTASK_ACL__BINDINGS", grant),
        ],
    );
    let mut s = connect(&broker);
    // CreateAcls v0: READ on topic "orders" for User:bob from any host (allow = 3).
    let body = W::default()
        .i32(1)
        .i8(2)
        .str("orders")
        .str("User:bob")
        .str("*")
        .i8(3)
        .i8(3);
    let mut r = call(&mut s, CREATE_ACLS, 0, body);
    let _throttle = r.get_i32();
    assert_eq!(r.get_i32(), 1, "one creation result");
    assert_eq!(r.get_i16(), 0, "created");
    let _message = string(&mut r);
    assert!(!r.has_remaining());

    let listed = describe_acls_v0(&mut s);
    assert_eq!(
        listed,
        vec![(
            2,
            "orders".to_owned(),
            vec![("User:bob".to_owned(), "*".to_owned(), 3, 3)]
        )]
    );

    // DeleteAcls v0 removes it and returns it without a pattern type.
    let mut r = call(
        &mut s,
        DELETE_ACLS,
        0,
        any_topic_acl_filter(W::default().i32(1)),
    );
    let _throttle = r.get_i32();
    assert_eq!(r.get_i32(), 1, "one filter result");
    assert_eq!(r.get_i16(), 0);
    let _message = string(&mut r);
    assert_eq!(r.get_i32(), 1, "one matching ACL");
    assert_eq!(r.get_i16(), 0);
    let _message = string(&mut r);
    assert_eq!(r.get_i8(), 2);
    assert_eq!(string(&mut r), "orders");
    assert_eq!(string(&mut r), "User:bob");
    assert_eq!(string(&mut r), "*");
    assert_eq!((r.get_i8(), r.get_i8()), (3, 3));
    assert!(!r.has_remaining(), "DeleteAcls v0 has no pattern type");
    assert!(describe_acls_v0(&mut s).is_empty());
}

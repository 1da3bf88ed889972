//! Request versions that Kafka 0.11–3.x accepted and Kafka 4 removed (KIP-896), which old
//! clients still send: sarama 1.22's OffsetCommit v1, kafka-go 0.2's CreateTopics v0,
//! Burrow's ListOffsets v0. Raw sockets with the old formats written out by hand (not with
//! the broker's own encoder), so each test pins the wire format an old client reads.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{data_dir, kafka, Broker};
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
}

//! Durability and log maintenance, proven by killing the real broker process: acks=all
//! survives `kill -9`; a torn tail is dropped on restart; SIGTERM stops cleanly; retention
//! deletes whole old segments.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::kafka::{self, create_topic, watermarks};
use common::{data_dir, Broker};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn producer(broker: &Broker, acks: &str) -> FutureProducer {
    kafka::client(
        broker,
        &[
            ("acks", acks),
            ("linger.ms", "2"),
            ("message.timeout.ms", "30000"),
        ],
    )
}

/// Sends `n` messages numbered from `start` and returns the acknowledged (partition, offset).
fn produce(p: &FutureProducer, topic: &str, start: usize, n: usize) -> Vec<(usize, i32, i64)> {
    let pending: Vec<_> = (start..start + n)
        .map(|i| {
            let value = format!("m{i}");
            let key = format!("k{i}");
            let record = FutureRecord::to(topic)
                .key(key.as_str())
                .payload(value.as_str());
            (i, kafka::enqueue(p, record))
        })
        .collect();
    pending
        .into_iter()
        .map(|(i, f)| {
            let d = kafka::delivered(f);
            (i, d.partition, d.offset)
        })
        .collect()
}

/// Reads every message of `topic` from the beginning: (partition, offset, value).
fn read_all(broker: &Broker, topic: &str, partitions: i32) -> Vec<(i32, i64, String)> {
    let c = kafka::assigned_to_end(broker, &[], topic, partitions);
    let mut out = Vec::new();
    let mut keep = |m: &rdkafka::message::BorrowedMessage<'_>| {
        out.push((
            m.partition(),
            m.offset(),
            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
        ))
    };
    // Everything up to each partition's end, extras included.
    kafka::read_to_end(&c, partitions, Duration::from_secs(60), &mut keep);
    out
}

fn partition_dir(data: &Path, topic: &str, partition: i32) -> PathBuf {
    for shard in std::fs::read_dir(data).expect("data").flatten() {
        let d = shard
            .path()
            .join("kafka")
            .join(format!("{topic}-{partition}"));
        if d.exists() {
            return d;
        }
    }
    panic!("no directory for {topic}-{partition}");
}

/// Byte ranges of the batches in a segment file (stops at padding or damage).
fn batches(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 61 <= bytes.len() {
        let len =
            i32::from_be_bytes([bytes[at + 8], bytes[at + 9], bytes[at + 10], bytes[at + 11]]);
        if len <= 0 || at + 12 + len as usize > bytes.len() {
            break;
        }
        out.push((at, at + 12 + len as usize));
        at += 12 + len as usize;
    }
    out
}

#[test]
fn acks_all_survives_kill_9_and_a_torn_tail_is_dropped() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, &[]);
    create_topic(&broker, "durable", 3, &[]);
    let p = producer(&broker, "all");
    let acked = produce(&p, "durable", 0, 3000);
    drop(p);
    broker.kill9();
    broker.restart();
    assert!(broker.log().contains("after unclean stop"));
    let got = read_all(&broker, "durable", 3);
    let mut values: Vec<&str> = got.iter().map(|(_, _, v)| v.as_str()).collect();
    values.sort();
    values.dedup();
    assert_eq!(
        values.len(),
        acked.len(),
        "every acknowledged message is back"
    );
    for (i, part, offset) in &acked {
        assert!(
            got.iter()
                .any(|(p, o, v)| p == part && o == offset && *v == format!("m{i}")),
            "message {i} at {part}/{offset}"
        );
    }
    for part in 0..3 {
        let n = acked.iter().filter(|(_, p, _)| *p == part).count() as i64;
        assert_eq!(
            watermarks(&broker, "durable", part),
            (0, n),
            "partition {part}"
        );
    }

    // Tear the last batch of partition 0: cut a few bytes off its end.
    broker.kill9();
    let dir = partition_dir(&data, "durable", 0);
    let seg = dir.join("00000000000000000000.log");
    let bytes = std::fs::read(&seg).expect("segment");
    let all = batches(&bytes);
    let (last_start, last_end) = *all.last().expect("batches");
    let last_count = i32::from_be_bytes([
        bytes[last_start + 57],
        bytes[last_start + 58],
        bytes[last_start + 59],
        bytes[last_start + 60],
    ]) as i64;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open");
    f.set_len((last_end - 5) as u64).expect("truncate");
    drop(f);
    let (_, before) = {
        let n = acked.iter().filter(|(_, p, _)| *p == 0).count() as i64;
        (0, n)
    };
    broker.restart();
    assert!(
        broker.log().contains("truncating torn tail"),
        "recovery logs the torn tail:\n{}",
        broker.log()
    );
    assert_eq!(watermarks(&broker, "durable", 0), (0, before - last_count));
    // The partition takes new writes after the repair, at the next offset.
    let p = producer(&broker, "all");
    let more = produce(&p, "durable", 10_000, 50);
    assert!(more.iter().all(|(_, _, o)| *o >= 0));
    let p0: Vec<i64> = more
        .iter()
        .filter(|(_, p, _)| *p == 0)
        .map(|(_, _, o)| *o)
        .collect();
    if let Some(min) = p0.iter().min() {
        assert_eq!(*min, before - last_count);
    }
}

#[test]
fn sigterm_stops_cleanly_and_the_restart_needs_no_scan() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, &[]);
    create_topic(&broker, "clean", 2, &[]);
    let p = producer(&broker, "1");
    let acked = produce(&p, "clean", 0, 2000);
    drop(p);
    let status = broker.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(broker.log().contains("stopped cleanly"));
    // Clean stop: files are cut to their logical size and index files written.
    let dir = partition_dir(&data, "clean", 0);
    let seg = std::fs::read(dir.join("00000000000000000000.log")).expect("segment");
    let b = batches(&seg);
    assert_eq!(
        b.last().map(|(_, e)| *e),
        Some(seg.len()),
        "no padding after a clean stop"
    );
    assert!(dir.join("00000000000000000000.index").exists());
    broker.restart();
    assert!(broker.log().contains("(clean start)"));
    let got = read_all(&broker, "clean", 2);
    assert_eq!(got.len(), acked.len());
}

#[test]
fn retention_deletes_old_segments_and_moves_the_log_start() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(
        &data,
        &[("PORTASK_KAFKA__RETENTION_CHECK_INTERVAL_MS", "200")],
    );
    create_topic(
        &broker,
        "short-lived",
        1,
        &[("segment.bytes", "4096"), ("retention.bytes", "8192")],
    );
    let p = producer(&broker, "1");
    // Twenty rounds, so the log holds many batches (a segment never splits a batch).
    let mut acked = Vec::new();
    for round in 0..20 {
        acked.extend(produce(&p, "short-lived", round * 100, 100));
    }
    let last = acked.iter().map(|(_, _, o)| *o).max().expect("offsets");
    let dir = partition_dir(&data, "short-lived", 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (low, high) = watermarks(&broker, "short-lived", 0);
        assert_eq!(high, last + 1);
        let segments = std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .count();
        if low > 0 && segments <= 4 {
            // The earliest offset is the base of the first remaining segment.
            let mut names: Vec<i64> = std::fs::read_dir(&dir)
                .expect("dir")
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
                .collect();
            names.sort();
            assert_eq!(names[0], low);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention did not run: low {low}, {segments} segments"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Reading from the new start works; reading below it is out of range.
    let got = read_all(&broker, "short-lived", 1);
    assert!(!got.is_empty());
    assert!(got[0].1 >= watermarks(&broker, "short-lived", 0).0);
}

#[test]
fn changing_the_shard_count_moves_partitions_to_their_new_owners() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, &[]);
    create_topic(&broker, "moving", 6, &[]);
    let p = producer(&broker, "all");
    let acked = produce(&p, "moving", 0, 600);
    drop(p);
    assert!(broker.terminate().success());
    drop(broker);
    // One shard now owns every partition: shard 1's directories move to shard 0.
    let mut one = Broker::start_with_shards(&data, &[], 1);
    assert!(
        one.log().contains("from shard 1 to shard 0"),
        "{}",
        one.log()
    );
    let got = read_all(&one, "moving", 6);
    assert_eq!(
        got.len(),
        acked.len(),
        "every message readable after the move"
    );
    let left_on_shard_1 = std::fs::read_dir(data.join("1").join("kafka"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        left_on_shard_1, 0,
        "no partition directory left on the old owner"
    );
    assert!(one.terminate().success());
}

//! Log compaction through librdkafka: keys updated many times and some deleted with
//! tombstones; after compaction a consumer from offset 0 sees only the latest value of each
//! key, at its original offset, and no deleted key once delete.retention.ms has passed.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::kafka::{self, delivered};
use common::{data_dir, Broker};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Everything a consumer from offset 0 reads: (key, value, offset), and whether it got to
/// the partition's end (EOF) within 20 s.
fn read_from_start(broker: &Broker) -> (Vec<(String, Option<String>, i64)>, bool) {
    let c = kafka::assigned_to_end(broker, &[], "latest", 1);
    let mut out = Vec::new();
    let reached_end = kafka::read_to_end(&c, 1, Duration::from_secs(20), |m| {
        out.push((
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            m.payload().map(|p| String::from_utf8_lossy(p).into_owned()),
            m.offset(),
        ))
    });
    (out, reached_end)
}

/// A broker compacting every 300 ms, with topic `latest` (one partition, compacted, its
/// active segment rolled after a second) and the topic configs `extra`.
fn compacted_topic(extra: &[(&str, &str)]) -> (tempfile::TempDir, Broker) {
    let (tmp, data) = data_dir();
    let broker = Broker::start(&data, &[("PORTASK_KAFKA__COMPACTION_INTERVAL_MS", "300")]);
    let configs = [
        &[("cleanup.policy", "compact"), ("segment.ms", "1000")],
        extra,
    ]
    .concat();
    kafka::create_topic(&broker, "latest", 1, &configs);
    (tmp, broker)
}

#[test]
fn compaction_keeps_the_latest_value_per_key_and_drops_tombstones() {
    let (_tmp, broker) =
        compacted_topic(&[("segment.bytes", "2048"), ("delete.retention.ms", "500")]);
    let p: FutureProducer =
        kafka::client(&broker, &[("compression.codec", "lz4"), ("linger.ms", "5")]);
    // Ten versions of twenty keys, one round per version so the log holds many batches.
    let mut latest: HashMap<String, (String, i64)> = HashMap::new();
    for version in 0..10 {
        let futures: Vec<_> = (0..20)
            .map(|k| {
                let key = format!("k{k:02}");
                let value = format!("{key}-v{version}-{}", "x".repeat(40));
                let f = p
                    .send_result(
                        FutureRecord::to("latest")
                            .key(key.as_str())
                            .payload(value.as_str()),
                    )
                    .map_err(|(e, _)| e)
                    .expect("enqueue");
                (key, value, f)
            })
            .collect();
        for (key, value, f) in futures {
            let d = delivered(f);
            latest.insert(key, (value, d.offset));
        }
    }
    // Tombstones for the first five keys.
    for k in 0..5 {
        let key = format!("k{k:02}");
        let f = p
            .send_result(FutureRecord::<str, str>::to("latest").key(key.as_str()))
            .map_err(|(e, _)| e)
            .expect("enqueue");
        delivered(f);
        latest.remove(&key);
    }
    // The log's final batch is never cleaned (as Kafka never cleans its active segment), so
    // the tombstones above go only once a record follows them.
    let f = p
        .send_result(FutureRecord::to("latest").key("last").payload("end"))
        .map_err(|(e, _)| e)
        .expect("enqueue");
    let d = delivered(f);
    latest.insert("last".into(), ("end".into(), d.offset));
    // After segment.ms the active segment rolls and the compactor cleans the sealed ones.
    let deadline = Instant::now() + Duration::from_secs(40);
    let seen = loop {
        std::thread::sleep(Duration::from_millis(500));
        let (seen, reached_end) = read_from_start(&broker);
        let tombstones_gone = !seen.iter().any(|(k, _, _)| k.as_str() < "k05");
        if seen.len() == latest.len() && tombstones_gone && reached_end {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted: {} records, tombstoned keys present: {}, end reached: {}",
            seen.len(),
            !tombstones_gone,
            reached_end
        );
    };
    for (key, value, offset) in seen {
        let (want, want_offset) = latest
            .get(&key)
            .unwrap_or_else(|| panic!("{key} should be gone"));
        assert_eq!(value.as_deref(), Some(want.as_str()), "{key}");
        assert_eq!(offset, *want_offset, "{key} keeps its offset");
    }
    assert!(broker.log().contains("compacted latest-0"));
    // New writes keep their offsets after the compacted range.
    let f = p
        .send_result(FutureRecord::to("latest").key("k19").payload("after"))
        .map_err(|(e, _)| e)
        .expect("enqueue");
    let d = delivered(f);
    assert_eq!(d.offset, 206);
}

/// A log that ends in tombstones, compacted once they are past `delete.retention.ms` and
/// its segment has rolled: a consumer from the start still reaches the end of the
/// partition (what a Kafka Streams restore or Connect's config reader waits for), and the
/// final batch keeps its tombstone; the other records, superseded, are gone.
#[test]
fn a_consumer_reaches_the_end_of_a_log_whose_tail_was_compacted() {
    let (_tmp, broker) = compacted_topic(&[("delete.retention.ms", "0")]);
    let p: FutureProducer = kafka::client(&broker, &[("linger.ms", "0")]);
    let send = |key: &str, value: Option<&str>| {
        let mut r = FutureRecord::<str, str>::to("latest").key(key);
        if let Some(v) = value {
            r = r.payload(v);
        }
        delivered(p.send_result(r).map_err(|(e, _)| e).expect("enqueue")).offset
    };
    let kept = send("a", Some("a-1"));
    send("b", Some("b-1"));
    send("b", None);
    let last = send("c", None);
    // Compacted once the active segment rolled (segment.ms) and a pass ran.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !broker.log().contains("compacted latest-0") {
        assert!(Instant::now() < deadline, "never compacted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (seen, reached_end) = read_from_start(&broker);
    assert!(
        reached_end,
        "the consumer never got to the end: read {seen:?}"
    );
    let offsets: Vec<i64> = seen.iter().map(|r| r.2).collect();
    assert_eq!(offsets, vec![kept, last], "{seen:?}");
    assert_eq!(seen[1].1, None, "the final batch keeps its tombstone");
}

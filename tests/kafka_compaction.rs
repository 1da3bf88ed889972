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
use rdkafka::Offset;

/// Everything a consumer from offset 0 reads: (key, value, offset), up to the partition's
/// end, or until a second passes with nothing more once offset `last` has been read.
///
/// Once the tombstones at the end of the log are compacted away, no record is left at the
/// high watermark's last offsets, so the consumer never reaches it and reports no EOF;
/// records after `last` would still come in the same fetch as `last`.
fn read_from_start(broker: &Broker, last: i64) -> Vec<(String, Option<String>, i64)> {
    let c = kafka::assigned(
        broker,
        &[("enable.partition.eof", "true")],
        "latest",
        1,
        Offset::Beginning,
    );
    let mut out: Vec<(String, Option<String>, i64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                quiet_since = Instant::now();
                out.push((
                    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    m.payload().map(|p| String::from_utf8_lossy(p).into_owned()),
                    m.offset(),
                ))
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => panic!("consume: {e}"),
            None => {
                let past_last = out.last().is_some_and(|r| r.2 >= last);
                if past_last && quiet_since.elapsed() >= Duration::from_secs(1) {
                    break;
                }
            }
        }
    }
    out
}

#[test]
fn compaction_keeps_the_latest_value_per_key_and_drops_tombstones() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[("PORTASK_KAFKA__COMPACTION_INTERVAL_MS", "300")]);
    kafka::create_topic(
        &broker,
        "latest",
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "2048"),
            ("segment.ms", "1000"),
            ("delete.retention.ms", "500"),
        ],
    );
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
    // After segment.ms the active segment rolls and the compactor cleans the sealed ones.
    let deadline = Instant::now() + Duration::from_secs(40);
    let seen = loop {
        std::thread::sleep(Duration::from_millis(500));
        let last = latest
            .values()
            .map(|(_, offset)| *offset)
            .max()
            .unwrap_or(0);
        let seen = read_from_start(&broker, last);
        let tombstones_gone = !seen.iter().any(|(k, _, _)| k.as_str() < "k05");
        if seen.len() == latest.len() && tombstones_gone {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted: {} records, tombstoned keys present: {}",
            seen.len(),
            !tombstones_gone
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
    assert_eq!(d.offset, 205);
}

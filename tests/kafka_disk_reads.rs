//! Fetches served from disk on a freshly created data directory: a consumer that starts
//! behind the tail cache must read the segment files (librdkafka against the real
//! binary, two shards, a 256 KiB tail cache so the reads cannot come from memory).

mod common;

use std::time::Duration;

use common::{data_dir, kafka, Broker};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Offset;

#[test]
fn a_consumer_behind_the_tail_cache_reads_every_message_from_disk() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[("PORTASK_STORAGE__TAIL_CACHE_BYTES", "262144")]);
    let producer: BaseProducer =
        kafka::client(&broker, &[("enable.idempotence", "false"), ("acks", "all")]);
    const N: usize = 4_000;
    let value = vec![b'v'; 1024];
    for i in 0..N {
        let key = i.to_string();
        kafka::send_base(
            &producer,
            BaseRecord::to("behind").key(key.as_str()).payload(&value),
        );
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    // Four megabytes later the first batches are long gone from the 256 KiB tail cache.
    let consumer = kafka::assigned(&broker, &[], "behind", 1, Offset::Offset(0));
    let mut next = 0i64;
    kafka::poll_n(&consumer, N, Duration::from_secs(30), |m| {
        assert_eq!(m.offset(), next);
        assert_eq!(m.key(), Some(next.to_string().as_bytes()));
        next += 1;
    });
    assert_eq!(
        next as usize,
        N,
        "the consumer stalled at offset {next}:\n{}",
        broker
            .log()
            .lines()
            .filter(|l| !l.contains(" INFO "))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Large batches (librdkafka lingering into ~1 MB batches) reach a consumer whole and
/// byte-exact, both from the tail cache and from disk: such record sections go to the
/// socket as they are stored, as chunks of their own beside the encoded response.
#[test]
fn large_batches_arrive_byte_exact_from_the_tail_cache_and_from_disk() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let producer: BaseProducer = kafka::client(
        &broker,
        &[
            ("enable.idempotence", "false"),
            ("acks", "all"),
            ("linger.ms", "200"),
            ("batch.size", "1000000"),
        ],
    );
    const N: usize = 3_000;
    let value = |i: usize| -> Vec<u8> { (0..1024).map(|j| ((i * 31 + j) % 251) as u8).collect() };
    for i in 0..N {
        let key = i.to_string();
        let v = value(i);
        kafka::send_base(
            &producer,
            BaseRecord::to("large").key(key.as_str()).payload(&v),
        );
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    let read_all = |broker: &Broker| {
        let consumer = kafka::assigned(
            broker,
            &[("check.crcs", "true"), ("fetch.max.bytes", "4000000")],
            "large",
            1,
            Offset::Offset(0),
        );
        let mut next = 0usize;
        kafka::poll_n(&consumer, N, Duration::from_secs(30), |m| {
            assert_eq!(m.offset(), next as i64);
            assert_eq!(m.key(), Some(next.to_string().as_bytes()));
            assert_eq!(
                m.payload(),
                Some(&value(next)[..]),
                "value of offset {next}"
            );
            next += 1;
        });
        assert_eq!(next, N, "the consumer stalled at offset {next}");
    };
    // From the tail cache, then (after a restart, which starts with none) from disk.
    read_all(&broker);
    drop(broker);
    let broker = Broker::start(&data, &[]);
    read_all(&broker);
}

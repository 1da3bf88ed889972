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

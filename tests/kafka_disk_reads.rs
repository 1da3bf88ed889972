//! Fetches served from disk on a freshly created data directory: a consumer that starts
//! behind the tail cache must read the segment files (librdkafka against the real
//! binary, two shards, a 256 KiB tail cache so the reads cannot come from memory).

mod common;

use std::time::{Duration, Instant};

use common::{data_dir, Broker};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

#[test]
fn a_consumer_behind_the_tail_cache_reads_every_message_from_disk() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[("PORTASK_STORAGE__TAIL_CACHE_BYTES", "262144")]);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .create()
        .expect("producer");
    const N: usize = 4_000;
    let value = vec![b'v'; 1024];
    for i in 0..N {
        let key = i.to_string();
        let mut record = BaseRecord::to("behind").key(key.as_str()).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    // Four megabytes later the first batches are long gone from the 256 KiB tail cache.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "unused-assign-only")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("behind", 0, Offset::Offset(0))
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next = 0i64;
    while (next as usize) < N && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                assert_eq!(m.offset(), next);
                assert_eq!(m.key(), Some(next.to_string().as_bytes()));
                next += 1;
            }
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
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

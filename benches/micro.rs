//! `cargo bench --bench micro`: criterion micro-benchmarks of the hot paths one request
//! takes through a shard — Kafka request decode and response encode, record-batch
//! validation and offset assignment, and the synchronous append to a partition log.
//!
//! Single-threaded, no executor and no disk: `PartitionLog::append` only queues bytes for
//! the flusher (which is not running here), so this measures the CPU cost of the append
//! path, not I/O.
//!
//! Also AMQP topic-exchange routing through the real `Router` with 10 000 bindings, and
//! the metrics bookkeeping one AMQP message costs on its way through a shard.

use bytes::{BufMut, Bytes, BytesMut};
use portask::storage::batch::{encode_plain_batch, PlainRecord};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, FetchResponse, MetadataRequest, ProduceRequest, ProduceResponse, RequestHeader,
    TopicName,
};
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::Compression;

use portask::amqp::routing::Router;
use portask::catalog::amqp::arguments::QueueArgs;
use portask::catalog::amqp::{Binding, DestKind, Exchange, ExchangeKind, Queue, VhostTopology};
use portask::catalog::{log_settings, CatalogState, Topic};
use portask::config::Config;
use portask::kafka::codec::{decode_body, decode_frame, encode_response};
use portask::storage::batch;
use portask::storage::log::PartitionLog;

const RECORD_SIZE: usize = 1024;
const RECORDS_PER_BATCH: usize = 16;

/// One uncompressed magic-2 batch of `n` records of `size` bytes, as a producer sends it.
fn record_batch(n: usize, size: usize) -> Bytes {
    let records = (0..n).map(|i| PlainRecord {
        timestamp: 1_700_000_000_000 + i as i64,
        key: None,
        value: Some(Bytes::from(vec![b'x'; size])),
        headers: Default::default(),
    });
    encode_plain_batch(records, Compression::None).expect("encode record batch")
}

/// A request frame without its size prefix, as `decode_frame` receives it.
fn request_frame<R: Encodable + HeaderVersion>(api: ApiKey, version: i16, body: &R) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("bench")));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, R::header_version(version))
        .expect("encode header");
    body.encode(&mut buf, version).expect("encode body");
    buf.freeze()
}

fn produce_request(batch: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("orders")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch))])])
}

fn kafka_codec(c: &mut Criterion) {
    let batch = record_batch(RECORDS_PER_BATCH, RECORD_SIZE);
    let mut g = c.benchmark_group("kafka_codec");

    let produce = request_frame(ApiKey::Produce, 9, &produce_request(batch.clone()));
    g.throughput(Throughput::Bytes(produce.len() as u64));
    g.bench_function("decode produce v9 (16 x 1 KiB)", |b| {
        b.iter(|| {
            let frame = decode_frame(black_box(produce.clone())).expect("frame");
            decode_body::<ProduceRequest>("produce", frame.body, frame.version).expect("body")
        })
    });

    let metadata = request_frame(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
    );
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode metadata v12", |b| {
        b.iter(|| {
            let frame = decode_frame(black_box(metadata.clone())).expect("frame");
            decode_body::<MetadataRequest>("metadata", frame.body, frame.version).expect("body")
        })
    });

    let produce_response =
        ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
            .with_name(TopicName(StrBytes::from_static_str("orders")))
            .with_partition_responses(vec![PartitionProduceResponse::default()
                .with_index(0)
                .with_base_offset(1_000)])]);
    g.bench_function("encode produce response v9", |b| {
        b.iter(|| encode_response(7, 9, black_box(&produce_response)).expect("encode"))
    });

    // A caught-up consumer's fetch: one partition carrying 256 KiB of batches.
    let mut records = BytesMut::new();
    for _ in 0..16 {
        records.put_slice(&batch);
    }
    let records = records.freeze();
    let fetch_response =
        FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("orders")))
            .with_partitions(vec![PartitionData::default()
                .with_partition_index(0)
                .with_high_watermark(1_000)
                .with_records(Some(records.clone()))])]);
    g.throughput(Throughput::Bytes(records.len() as u64));
    g.bench_function("encode fetch response v12 (256 KiB)", |b| {
        b.iter(|| encode_response(7, 12, black_box(&fetch_response)).expect("encode"))
    });
    g.finish();
}

fn record_batches(c: &mut Criterion) {
    let mut g = c.benchmark_group("record_batch");
    for (n, size) in [(1, 100), (16, RECORD_SIZE)] {
        let one = record_batch(n, size);
        g.throughput(Throughput::Bytes(one.len() as u64));
        let label = format!("{n} x {size} B");
        g.bench_with_input(
            BenchmarkId::new("validate (CRC-32C)", &label),
            &one,
            |b, one| b.iter(|| batch::validate(black_box(one)).expect("valid")),
        );
        g.bench_with_input(BenchmarkId::new("assign offset", &label), &one, |b, one| {
            b.iter(|| batch::assign(black_box(one), 42, None, None))
        });
        g.bench_with_input(
            BenchmarkId::new("check maxTimestamp (record walk)", &label),
            &one,
            |b, one| {
                let h = batch::validate(one).expect("valid");
                b.iter(|| batch::create_time_max(black_box(one), &h))
            },
        );
        g.bench_with_input(
            BenchmarkId::new("assign offset + LogAppendTime", &label),
            &one,
            |b, one| b.iter(|| batch::assign(black_box(one), 42, Some(1_700_000_000_000), None)),
        );
    }
    // A produce request's records field holding 64 batches (about 1 MiB).
    let one = record_batch(RECORDS_PER_BATCH, RECORD_SIZE);
    let mut many = BytesMut::new();
    for _ in 0..64 {
        many.put_slice(&one);
    }
    let many = many.freeze();
    g.throughput(Throughput::Bytes(many.len() as u64));
    g.throughput(Throughput::Bytes(many.len() as u64));
    g.bench_function("split 64 batches (1 MiB)", |b| {
        b.iter(|| batch::split(black_box(&many)).expect("valid"))
    });
    g.finish();
}

fn log_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = Topic {
        name: "orders".into(),
        id: [0; 16],
        partitions: 1,
        configs: Default::default(),
    };
    let settings = log_settings(&Config::default(), &Default::default(), &topic);
    let one = record_batch(RECORDS_PER_BATCH, RECORD_SIZE);
    let batches = batch::split(&one).expect("valid");
    // Appends queue bytes for a flusher that is not running, so memory only grows: start a
    // fresh log every `PER_LOG` appends, outside the timed section. A running broker
    // reuses the memory of batches its flusher has written; keep freed memory in the
    // process here too (no trimming back to the kernel), or the benchmark mostly measures
    // page faults on fresh pages.
    const PER_LOG: u64 = 256;
    // SAFETY: mallopt only tunes glibc's allocator; called before the timed loops.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
    }
    let mut g = c.benchmark_group("partition_log");
    g.throughput(Throughput::Bytes(one.len() as u64));
    g.bench_function("append 16 x 1 KiB batch", |b| {
        b.iter_custom(|iters| {
            let mut spent = std::time::Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(PER_LOG);
                let mut log = PartitionLog::create(
                    dir.path().join("orders-0"),
                    "orders",
                    0,
                    settings.clone(),
                    64 << 20,
                );
                let start = std::time::Instant::now();
                for _ in 0..n {
                    log.append(black_box(&batches)).expect("append");
                }
                spent += start.elapsed();
                drop(log);
                left -= n;
            }
            spent
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    kafka_codec,
    record_batches,
    log_append,
    topic_routing,
    amqp_message_metrics
);
criterion_main!(benches);

/// A topic exchange with 10 000 queues, each bound with its own pattern (a mix of exact
/// words, `*` and `#`), and the cost of routing one key through the real router.
fn topic_routing(c: &mut Criterion) {
    let mut v = VhostTopology::default();
    v.exchanges.insert(
        "market".into(),
        Exchange {
            name: "market".into(),
            kind: ExchangeKind::Topic,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: Vec::new(),
            alternate: None,
        },
    );
    for i in 0..10_000u64 {
        let name = format!("q{i}");
        v.queues.insert(
            name.clone(),
            Queue {
                name: name.clone(),
                id: i + 1,
                durable: false,
                exclusive_owner: None,
                auto_delete: false,
                arguments: Vec::new(),
                args: QueueArgs::default(),
            },
        );
        let pattern = match i % 4 {
            0 => format!("stock.{}.nyse.{i}", i % 100),
            1 => format!("stock.{}.*.{i}", i % 100),
            2 => format!("stock.{}.#", i % 100),
            _ => format!("*.{}.nasdaq.*", i % 100),
        };
        v.bindings.push(Binding {
            source: "market".into(),
            destination: name,
            dest_kind: DestKind::Queue,
            routing_key: pattern,
            arguments: Vec::new(),
        });
    }
    let mut state = CatalogState::default();
    state.amqp.insert("/".into(), v);
    let router = Router::build(&state, 2);
    let mut group = c.benchmark_group("amqp_topic_routing");
    group.throughput(Throughput::Elements(1));
    group.bench_function("10000_bindings", |b| {
        b.iter(|| {
            let r = router
                .route(
                    "/",
                    "market",
                    black_box("stock.42.nyse.4242"),
                    &mut Default::default,
                )
                .expect("routes");
            black_box(r.len())
        })
    });
    group.finish();
}

/// What the shard's metrics cost one AMQP message: the method frame counted
/// (`basic.publish`), the publish by exchange, enqueue and dequeue on the queue's owner,
/// the delivery by queue; and in confirm mode the publish-to-confirm latency (two clock
/// reads and a histogram record). The same calls, on the same thread-local, as the broker
/// makes.
fn amqp_message_metrics(c: &mut Criterion) {
    use portask::metrics::{self, Protocol};
    let mut group = c.benchmark_group("amqp_metrics");
    group.throughput(Throughput::Elements(1));
    group.bench_function("counters_per_message", |b| {
        b.iter(|| {
            metrics::with(|m| {
                m.request(Protocol::Amqp, black_box("basic.publish"));
                m.produced(Protocol::Amqp, black_box("orders"), 1, 1024);
            });
            metrics::with(|m| m.enqueued(black_box("/"), black_box("orders.eu"), 1));
            metrics::with(|m| m.dequeued(black_box("/"), black_box("orders.eu"), 1));
            metrics::with(|m| m.consumed(Protocol::Amqp, black_box("orders.eu"), 1, 1024));
        })
    });
    group.bench_function("confirm_latency_per_message", |b| {
        b.iter(|| {
            let received = std::time::Instant::now();
            let now = std::time::Instant::now();
            metrics::with(|m| {
                m.publish_latency(Protocol::Amqp, now.saturating_duration_since(received))
            });
        })
    });
    group.bench_function("request_counter", |b| {
        b.iter(|| metrics::with(|m| m.request(Protocol::Amqp, black_box("basic.publish"))))
    });
    group.bench_function("clock_read", |b| b.iter(std::time::Instant::now));
    group.finish();
}

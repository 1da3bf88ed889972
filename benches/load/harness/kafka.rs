//! The Kafka side of the harness, with librdkafka (rdkafka): topic set-up, producer
//! threads on the rate schedule, consumer threads on `assign()`ed partitions.
//!
//! Runs on plain OS threads: one per producer (a `ThreadedProducer`, whose own polling
//! thread serves delivery reports as librdkafka gets them, so an ack is timed when it
//! arrives rather than when the paced sender next looks) and one per consumer (a
//! `BaseConsumer`).
//! Consumers start at each partition's high watermark read before the first send, so a
//! reused topic works and nothing produced by this run can be missed. No consumer group,
//! no commits, no idempotence unless asked (`-P enable.idempotence=true`, or
//! `--transactional N`: a transaction committed every N records per producer).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use super::ledger::Receipts;
use super::options::{Acks, KafkaArgs};
use super::payload::{self, Clock, Stamp};
use super::report::{Outcome, Report};
use super::schedule::{sleep_until, Next, Schedule};
use super::stats::Latency;
use super::{Acknowledged, BrokerCpu, HarnessError, Produced, Progress, Sink};

const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

fn kafka_err(context: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Kafka(format!("{context}: {e}"))
}

fn base_config(args: &KafkaArgs) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &args.brokers);
    if let Some(ca) = &args.tls_ca {
        c.set("security.protocol", "ssl");
        c.set("ssl.ca.location", ca.display().to_string());
    }
    c
}

/// Adds the `-X` properties, then the role's own (`-P` or `-C`), which win.
fn with_properties(
    mut c: ClientConfig,
    args: &KafkaArgs,
    role: &[(String, String)],
) -> ClientConfig {
    for (k, v) in args.properties.iter().chain(role) {
        c.set(k, v);
    }
    c
}

/// Creates the topic (an existing one is fine) and returns its partition count as the
/// broker's metadata reports it.
fn prepare_topic(args: &KafkaArgs, topic: &str) -> Result<i32, HarnessError> {
    let admin: AdminClient<DefaultClientContext> = base_config(args)
        .create()
        .map_err(|e| kafka_err("admin client", e))?;
    let new = NewTopic::new(topic, args.partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(SETUP_TIMEOUT));
    let results =
        block_on(admin.create_topics([&new], &opts)).map_err(|e| kafka_err("create topic", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(kafka_err(&format!("create topic {t}"), code)),
        }
    }
    // Wait until the metadata shows every partition with a leader.
    let probe: BaseConsumer = base_config(args)
        .set("group.id", "portask-load")
        .create()
        .map_err(|e| kafka_err("metadata client", e))?;
    let deadline = std::time::Instant::now() + SETUP_TIMEOUT;
    loop {
        let md = probe
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map_err(|e| kafka_err("metadata", e))?;
        let ready = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .and_then(|t| {
                let parts = t.partitions();
                let all_led = !parts.is_empty() && parts.iter().all(|p| p.leader() >= 0);
                (t.error().is_none() && all_led).then_some(parts.len() as i32)
            });
        if let Some(n) = ready {
            if n != args.partitions {
                eprintln!(
                    "note: topic {topic} already has {n} partitions (asked for {})",
                    args.partitions
                );
            }
            return Ok(n);
        }
        if std::time::Instant::now() > deadline {
            return Err(HarnessError::Kafka(format!(
                "topic {topic} has no leaders after {SETUP_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The high watermark of every partition: where this run's messages will start.
fn start_offsets(args: &KafkaArgs, topic: &str, partitions: i32) -> Result<Vec<i64>, HarnessError> {
    let probe: BaseConsumer = base_config(args)
        .set("group.id", "portask-load")
        .create()
        .map_err(|e| kafka_err("watermark client", e))?;
    (0..partitions)
        .map(|p| {
            probe
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map(|(_, high)| high)
                .map_err(|e| kafka_err(&format!("watermarks of {topic}-{p}"), e))
        })
        .collect()
}

/// Delivery reports of one producer: which sequences the broker acknowledged, and when.
/// Each record's delivery opaque is the harness clock at its send call (ns), so the ack
/// latency costs one clock read per message and no lookup.
struct Deliveries {
    producer: u16,
    /// Shared with the sender, which reads it once the polling thread has stopped.
    acked: Arc<Mutex<Acknowledged>>,
    /// Whether delivery reports are acknowledgements to time (not with acks=0, where
    /// librdkafka reports a message delivered once it is written).
    timed: bool,
    failed: Arc<AtomicU64>,
    progress: Arc<Progress>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        match result {
            Ok(m) => {
                let Some(stamp) = m.payload().and_then(payload::read) else {
                    return;
                };
                if stamp.producer != self.producer {
                    return;
                }
                let waited = self
                    .timed
                    .then(|| self.progress.clock.now_ns().saturating_sub(sent_ns as u64));
                if let Ok(mut acked) = self.acked.lock() {
                    acked.record(stamp.sequence, waited, &self.progress);
                }
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.progress.error(format!("produce: {e}"));
            }
        }
    }
}

/// Whether the producers' delivery reports are broker acknowledgements: not with acks=0
/// (from --acks, or a `-X`/`-P acks=` that overrides it).
fn acks_timed(args: &KafkaArgs) -> bool {
    let overridden = args
        .properties
        .iter()
        .chain(&args.producer_properties)
        .rfind(|(k, _)| k == "acks" || k == "request.required.acks")
        .map(|(_, v)| v.as_str());
    match overridden {
        Some(v) => v != "0",
        None => args.acks != Acks::None || args.transactional.is_some(),
    }
}

fn produce(
    args: &KafkaArgs,
    topic: &str,
    k: u32,
    schedule: Schedule,
    progress: Arc<Progress>,
) -> Result<Produced, HarnessError> {
    let producer_id = k as u16;
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let failed = Arc::new(AtomicU64::new(0));
    let context = Deliveries {
        producer: producer_id,
        acked: acked.clone(),
        timed: acks_timed(args),
        failed: failed.clone(),
        progress: progress.clone(),
    };
    let config = with_properties(
        {
            let mut c = base_config(args);
            c.set("acks", args.acks.as_config())
                .set("enable.idempotence", "false")
                .set("message.timeout.ms", "60000");
            if args.transactional.is_some() {
                c.set("acks", "all")
                    .set("enable.idempotence", "true")
                    .set("transactional.id", format!("load-{topic}-{k}"));
            }
            c
        },
        args,
        &args.producer_properties,
    );
    let producer: ThreadedProducer<Deliveries> = config
        .create_with_context(context)
        .map_err(|e| kafka_err("producer", e))?;
    let txn_timeout = Duration::from_secs(60);
    if args.transactional.is_some() {
        producer
            .init_transactions(txn_timeout)
            .and_then(|()| producer.begin_transaction())
            .map_err(|e| kafka_err("init_transactions", e))?;
    }
    let clock = progress.clock;
    let mut body = payload::body(args.workload.message_size as usize);
    let mut sent = 0u64;
    let mut rejected = 0u64;
    loop {
        let (index, stamp_ns) = match schedule.next(sent, clock.now_ns()) {
            Next::Done => break,
            Next::Wait { until_ns } => {
                sleep_until(until_ns, || clock.now_ns());
                continue;
            }
            Next::Send { index, stamp_ns } => (index, stamp_ns),
        };
        let Ok(sequence) = u32::try_from(index) else {
            break;
        };
        payload::write(
            &mut body,
            Stamp {
                producer: producer_id,
                sequence,
                sent_ns: stamp_ns,
            },
        );
        let mut record = BaseRecord::<(), [u8], usize>::with_opaque_to(topic, 0).payload(&body);
        loop {
            // The ack latency starts at the send call that the client accepts.
            record.delivery_opaque = clock.now_ns() as usize;
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    rejected += 1;
                    progress.error(format!("enqueue: {e}"));
                    break;
                }
            }
        }
        sent += 1;
        if let Some(n) = args.transactional.filter(|n| sent.is_multiple_of(*n)) {
            // commit_transaction flushes first: the transaction's records are acked.
            if let Err(e) = producer
                .commit_transaction(txn_timeout)
                .and_then(|()| producer.begin_transaction())
            {
                progress.error(format!("transaction of {n} records: {e}"));
                break;
            }
        }
    }
    if args.transactional.is_some() {
        if let Err(e) = producer.commit_transaction(txn_timeout) {
            progress.error(format!("last transaction: {e}"));
        }
    } else if let Err(e) = producer.flush(Duration::from_secs(90)) {
        progress.error(format!("flush: {e}"));
    }
    // Stops and joins the polling thread: no delivery report comes after this.
    drop(producer);
    let acked = acked
        .lock()
        .map(|mut a| std::mem::take(&mut *a))
        .unwrap_or_default();
    Ok(Produced {
        producer: producer_id,
        acked,
        sent,
        failed: rejected + failed.load(Ordering::Relaxed),
    })
}

fn consume(
    consumer: BaseConsumer,
    assigned: Vec<(String, i32, i64)>,
    progress: Arc<Progress>,
    ignore_nth: Option<u64>,
) -> (Receipts, Latency) {
    let mut sink = Sink::new(0, progress.clone(), ignore_nth);
    while !progress.stopped() {
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            Some(Ok(m)) => sink.on_message(m.payload().unwrap_or_default()),
            Some(Err(e)) => progress.error(format!("consume: {e}")),
        }
    }
    if !progress.complete.load(Ordering::Relaxed) {
        report_stall(&consumer, &assigned, &progress);
    }
    (sink.receipts, sink.latency)
}

/// After an incomplete drain: where each partition's consumer stopped against its high
/// watermark. librdkafka retries fetch errors (KAFKA_STORAGE_ERROR, …) without telling the
/// application, so a stall is otherwise silent on the client side.
fn report_stall(consumer: &BaseConsumer, assigned: &[(String, i32, i64)], progress: &Progress) {
    let positions = consumer.position().ok();
    for (topic, partition, start) in assigned {
        let at = positions
            .as_ref()
            .and_then(|tpl| tpl.find_partition(topic, *partition))
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .unwrap_or(*start);
        match consumer.fetch_watermarks(topic, *partition, Duration::from_secs(5)) {
            Ok((_, high)) if at < high => progress.error(format!(
                "consumer stalled on {topic}-{partition} at offset {at} of {high} \
                 (librdkafka retries fetch errors silently: check the broker's log)"
            )),
            Ok(_) => {}
            Err(e) => progress.error(format!("watermarks of {topic}-{partition}: {e}")),
        }
    }
}

/// One Kafka run: set-up, producers and consumers, drain, report.
pub fn run(args: &KafkaArgs) -> Result<Report, HarnessError> {
    let w = &args.workload;
    let topic = args.topic.clone().unwrap_or_else(super::fresh_name);
    let partitions = prepare_topic(args, &topic)?;
    let starts = start_offsets(args, &topic, partitions)?;

    let clock = Clock::new();
    let progress = Progress::new(clock);
    let consumers = w.consumers.min(partitions as u32);
    if consumers < w.consumers {
        eprintln!(
            "note: {} consumers for {partitions} partitions: {} would stay idle, using {consumers}",
            w.consumers,
            w.consumers - consumers
        );
    }
    let mut consumer_threads = Vec::new();
    if !w.prefill {
        consumer_threads =
            start_consumers(args, &topic, partitions, consumers, &starts, &progress)?;
    }

    let start_ns = clock.now_ns();
    let mut cpu = BrokerCpu::start(w.broker_pid);
    let limit = w.message_limit();
    let mut producer_threads = Vec::new();
    for k in 0..w.producers {
        let schedule = Schedule::new(start_ns, w.producers, k, limit, w.rate, w.duration);
        let (args, topic, progress) = (args.clone(), topic.clone(), progress.clone());
        producer_threads.push(
            std::thread::Builder::new()
                .name(format!("producer-{k}"))
                .spawn(move || produce(&args, &topic, k, schedule, progress))?,
        );
    }
    let mut produced = Vec::new();
    let mut failure = None;
    for t in producer_threads {
        match t.join() {
            Ok(Ok(p)) => produced.push(p),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(HarnessError::Setup("a producer thread panicked".into())),
        }
    }
    if w.prefill && failure.is_none() {
        // The read: consumers start now, at the offsets read before the first send.
        progress
            .read_start_ns
            .store(clock.now_ns(), Ordering::Relaxed);
        cpu = BrokerCpu::start(w.broker_pid);
        consumer_threads =
            start_consumers(args, &topic, partitions, consumers, &starts, &progress)?;
    }
    let expected = progress.acked.load(Ordering::Relaxed);
    if failure.is_none() && progress.drain(expected, w.drain_timeout) {
        progress.complete.store(true, Ordering::Relaxed);
    }
    let cpu_used = cpu.map(|c| c.used());
    progress.stop.store(true, Ordering::Relaxed);
    let mut receipts = Receipts::default();
    let mut latency = Latency::new();
    for t in consumer_threads {
        match t.join() {
            Ok((r, l)) => {
                receipts.merge(&r);
                latency.merge(&l);
            }
            Err(_) => failure = Some(HarnessError::Setup("a consumer thread panicked".into())),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let mut settings = BTreeMap::new();
    settings.insert("topic".into(), topic);
    settings.insert("partitions".into(), partitions.to_string());
    settings.insert("acks".into(), args.acks.as_config().into());
    let security = if args.tls_ca.is_some() {
        "ssl"
    } else {
        "plaintext"
    };
    settings.insert("security.protocol".into(), security.into());
    for (prefix, props) in [
        ("X", &args.properties),
        ("P", &args.producer_properties),
        ("C", &args.consumer_properties),
    ] {
        for (k, v) in props {
            settings.insert(format!("{prefix}:{k}"), v.clone());
        }
    }
    let mut report = Report::build(Outcome {
        protocol: "kafka",
        broker: args.brokers.clone(),
        workload: w,
        settings,
        start_ns,
        copies: 1,
        produced,
        receipts,
        latency,
        progress: &progress,
    });
    if let Some(used) = cpu_used {
        report.set_broker_cpu(used, w.prefill);
    }
    Ok(report)
}

/// One consumer thread per `consumers`, each assigned its share of the partitions at
/// `starts`.
fn start_consumers(
    args: &KafkaArgs,
    topic: &str,
    partitions: i32,
    consumers: u32,
    starts: &[i64],
    progress: &Arc<Progress>,
) -> Result<Vec<ConsumerThread>, HarnessError> {
    let w = &args.workload;
    let mut consumer_threads = Vec::new();
    for c in 0..consumers {
        let mut tpl = TopicPartitionList::new();
        let mut assigned = Vec::new();
        for p in (0..partitions).filter(|p| *p as u32 % consumers == c) {
            let start = starts[p as usize];
            tpl.add_partition_offset(topic, p, Offset::Offset(start))
                .map_err(|e| kafka_err("assignment", e))?;
            assigned.push((topic.to_owned(), p, start));
        }
        let consumer: BaseConsumer = with_properties(
            {
                let mut cc = base_config(args);
                cc.set("group.id", "portask-load")
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    .set("enable.partition.eof", "false");
                cc
            },
            args,
            &args.consumer_properties,
        )
        .create()
        .map_err(|e| kafka_err("consumer", e))?;
        consumer.assign(&tpl).map_err(|e| kafka_err("assign", e))?;
        let progress = progress.clone();
        let ignore = if c == 0 { w.test_ignore_receipt } else { None };
        consumer_threads.push(
            std::thread::Builder::new()
                .name(format!("consumer-{c}"))
                .spawn(move || consume(consumer, assigned, progress, ignore))?,
        );
    }

    Ok(consumer_threads)
}

type ConsumerThread = std::thread::JoinHandle<(Receipts, Latency)>;

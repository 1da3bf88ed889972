//! The AMQP 0-9-1 side of the harness, with lapin on a tokio runtime: topology (one queue,
//! or a fanout exchange bound to N queues), publisher tasks, consumer tasks, clean-up.
//!
//! Every producer and consumer has its own connection. A producer task keeps a window of
//! publishes in flight (with `--confirm`, up to `--max-unconfirmed` awaiting their
//! confirm). With `--rate`, a pacer OS thread per producer hands it (index, due time)
//! ticks: thread sleeps are precise where tokio timers round to a millisecond, and a
//! publisher that falls behind still stamps each message with its due time.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::mpsc;

use super::ledger::Receipts;
use super::options::AmqpArgs;
use super::payload::{self, Clock, Stamp};
use super::report::{Outcome, Report};
use super::schedule::{sleep_until, Next, Schedule};
use super::stats::Latency;
use super::{Acknowledged, BrokerCpu, HarnessError, Produced, Progress, Sink};

/// Publishes a producer keeps in flight without confirms (they only wait for the socket).
const PUBLISH_WINDOW: usize = 64;

fn amqp_err(context: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Amqp(format!("{context}: {e}"))
}

/// The URL without its password, for reports.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Where producers publish and which queues consumers read.
struct Topology {
    exchange: String,
    routing_key: String,
    queues: Vec<String>,
}

async fn connect(url: &str) -> Result<Connection, HarnessError> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| amqp_err(&format!("connect to {}", redact(url)), e))
}

async fn declare(ch: &Channel, args: &AmqpArgs, base: &str) -> Result<Topology, HarnessError> {
    let queue_opts = QueueDeclareOptions {
        // Streams are durable by nature (RabbitMQ refuses a transient one).
        durable: args.persistent || args.stream,
        ..QueueDeclareOptions::default()
    };
    if args.fanout == 0 {
        let mut queue_args = FieldTable::default();
        if args.stream {
            queue_args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("stream".into()),
            );
        }
        ch.queue_declare(base.into(), queue_opts, queue_args)
            .await
            .map_err(|e| amqp_err("queue.declare", e))?;
        return Ok(Topology {
            exchange: String::new(),
            routing_key: base.to_owned(),
            queues: vec![base.to_owned()],
        });
    }
    let exchange = format!("{base}.fanout");
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: args.persistent,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|e| amqp_err("exchange.declare", e))?;
    let mut queues = Vec::new();
    for i in 0..args.fanout {
        let q = format!("{base}.{i}");
        ch.queue_declare(q.as_str().into(), queue_opts, FieldTable::default())
            .await
            .map_err(|e| amqp_err("queue.declare", e))?;
        ch.queue_bind(
            q.as_str().into(),
            exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| amqp_err("queue.bind", e))?;
        queues.push(q);
    }
    Ok(Topology {
        exchange,
        routing_key: String::new(),
        queues,
    })
}

async fn tear_down(ch: &Channel, topology: &Topology) {
    for q in &topology.queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    if !topology.exchange.is_empty() {
        let _ = ch
            .exchange_delete(
                topology.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// Ticks for a paced producer: (index, due time), sent by a thread that sleeps precisely.
fn pace(schedule: Schedule, clock: Clock, ticks: mpsc::UnboundedSender<(u64, u64)>) {
    let mut index = 0;
    loop {
        match schedule.next(index, clock.now_ns()) {
            Next::Done => return,
            Next::Wait { until_ns } => sleep_until(until_ns, || clock.now_ns()),
            Next::Send { index: i, stamp_ns } => {
                if ticks.send((i, stamp_ns)).is_err() {
                    return;
                }
                index += 1;
            }
        }
    }
}

struct Publisher {
    k: u16,
    channel: Channel,
    exchange: String,
    routing_key: String,
    properties: BasicProperties,
    window: usize,
    /// Publisher confirms are on: a publish is acknowledged by its confirm, and timed.
    confirms: bool,
    body: Vec<u8>,
    progress: Arc<Progress>,
}

/// Outcome of one publish: its sequence, and whether the broker took it (with the time
/// from the basic.publish call to its confirm, or to the socket without confirms).
type Published = (u32, Result<u64, String>);

impl Publisher {
    fn publish(
        &mut self,
        index: u64,
        stamp_ns: u64,
    ) -> Option<impl std::future::Future<Output = Published>> {
        let sequence = u32::try_from(index).ok()?;
        payload::write(
            &mut self.body,
            Stamp {
                producer: self.k,
                sequence,
                sent_ns: stamp_ns,
            },
        );
        let (ch, body, props) = (
            self.channel.clone(),
            self.body.clone(),
            self.properties.clone(),
        );
        let (exchange, key) = (self.exchange.clone(), self.routing_key.clone());
        let clock = self.progress.clock;
        Some(async move {
            let handed_ns = clock.now_ns();
            let confirm = match ch
                .basic_publish(
                    exchange.as_str().into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
            {
                Ok(c) => c,
                Err(e) => return (sequence, Err(format!("publish: {e}"))),
            };
            match confirm.await {
                Ok(c) if c.is_nack() => (sequence, Err("publish: nacked by the broker".into())),
                Ok(_) => (sequence, Ok(clock.now_ns().saturating_sub(handed_ns))),
                Err(e) => (sequence, Err(format!("confirm: {e}"))),
            }
        })
    }

    fn settle(&self, out: &mut Produced, (seq, result): Published) {
        match result {
            Ok(waited_ns) => {
                let timed = self.confirms.then_some(waited_ns);
                out.acked.record(seq, timed, &self.progress);
            }
            Err(e) => {
                out.failed += 1;
                self.progress.error(e);
            }
        }
    }

    async fn run(
        mut self,
        schedule: Schedule,
        mut ticks: Option<mpsc::UnboundedReceiver<(u64, u64)>>,
    ) -> Produced {
        let clock = self.progress.clock;
        let mut inflight = FuturesUnordered::new();
        let mut out = Produced {
            producer: self.k,
            acked: Acknowledged::default(),
            sent: 0,
            failed: 0,
        };
        loop {
            // Room in the window first: a full window waits for the oldest to settle.
            while inflight.len() >= self.window {
                if let Some(done) = inflight.next().await {
                    self.settle(&mut out, done);
                }
            }
            let next = match ticks.as_mut() {
                None => match schedule.next(out.sent, clock.now_ns()) {
                    Next::Send { index, stamp_ns } => Some((index, stamp_ns)),
                    // Closed loop: never waits; only the limits end it.
                    Next::Wait { .. } | Next::Done => None,
                },
                Some(rx) => loop {
                    // Keep publishes moving while waiting for the next tick.
                    tokio::select! {
                        biased;
                        Some(done) = inflight.next(), if !inflight.is_empty() => {
                            self.settle(&mut out, done);
                        }
                        tick = rx.recv() => break tick,
                    }
                },
            };
            let Some((index, stamp_ns)) = next else { break };
            let Some(fut) = self.publish(index, stamp_ns) else {
                break;
            };
            inflight.push(fut);
            out.sent += 1;
        }
        while let Some(done) = inflight.next().await {
            self.settle(&mut out, done);
        }
        out
    }
}

async fn consume(
    conn: Connection,
    queue: String,
    tag: String,
    args: AmqpArgs,
    mut sink: Sink,
    progress: Arc<Progress>,
) -> Result<(Receipts, Latency), HarnessError> {
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| amqp_err("channel", e))?;
    ch.basic_qos(args.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| amqp_err("basic.qos", e))?;
    let mut consume_args = FieldTable::default();
    if args.stream {
        consume_args.insert(
            "x-stream-offset".into(),
            AMQPValue::LongString("first".into()),
        );
    }
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions {
                no_ack: args.auto_ack,
                ..BasicConsumeOptions::default()
            },
            consume_args,
        )
        .await
        .map_err(|e| amqp_err("basic.consume", e))?;
    let ack_every = args.ack_interval();
    let (mut unacked, mut last_tag) = (0u64, 0u64);
    let multiple = BasicAckOptions { multiple: true };
    while !progress.stopped() {
        match tokio::time::timeout(Duration::from_millis(50), consumer.next()).await {
            Err(_) => {
                // Idle: acknowledge what is held so the broker can forget it.
                if unacked > 0 {
                    if let Err(e) = ch.basic_ack(last_tag, multiple).await {
                        progress.error(format!("basic.ack: {e}"));
                    }
                    unacked = 0;
                }
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                progress.error(format!("consume: {e}"));
                break;
            }
            Ok(Some(Ok(delivery))) => {
                sink.on_message(&delivery.data);
                if !args.auto_ack {
                    unacked += 1;
                    last_tag = delivery.delivery_tag;
                    if unacked >= ack_every {
                        if let Err(e) = ch.basic_ack(last_tag, multiple).await {
                            progress.error(format!("basic.ack: {e}"));
                        }
                        unacked = 0;
                    }
                }
            }
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok((sink.receipts, sink.latency))
}

/// One AMQP run: topology, consumers, producers, drain, clean-up, report.
pub fn run(args: &AmqpArgs) -> Result<Report, HarnessError> {
    let rt = match client_runtime(args) {
        ClientRuntime::OneThread => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        ClientRuntime::Workers => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    rt.block_on(run_async(args))
}

/// Which tokio runtime the client tasks run on.
#[derive(Clone, Copy)]
enum ClientRuntime {
    /// A worker per core: closed-loop runs, where the client's throughput is the limit.
    Workers,
    /// The calling thread alone: paced runs (`--rate`). Their producers wait for ticks and
    /// their consumers for deliveries, so workers would only hand each message's wake-ups
    /// from one thread to another: on the broker's cores that cost over a quarter more
    /// client CPU and a higher median latency (`benches/results/2026-12-07-2vcpu-epyc/
    /// issue19-client-runtime/`). lapin's I/O threads and the pacer threads are the same
    /// either way.
    OneThread,
}

fn client_runtime(args: &AmqpArgs) -> ClientRuntime {
    if args.workload.rate.is_some() {
        ClientRuntime::OneThread
    } else {
        ClientRuntime::Workers
    }
}

async fn run_async(args: &AmqpArgs) -> Result<Report, HarnessError> {
    let w = &args.workload;
    let base = args.queue.clone().unwrap_or_else(super::fresh_name);
    // The first consumer's connection declares the topology, as an application that
    // declares the queue it consumes from does (a broker may place the queue with it);
    // with --prefill (or no consumer) the admin connection does.
    let mut first_consumer = None;
    if !w.prefill && w.consumers > 0 {
        first_consumer = Some(connect(&args.url).await?);
    }
    let admin = connect(&args.url).await?;
    let admin_ch = admin
        .create_channel()
        .await
        .map_err(|e| amqp_err("channel", e))?;
    // With --one-connection, the publishers' channels are opened on that connection now,
    // before it goes to its consumer task.
    let mut shared_channels = Vec::new();
    if let (true, Some(conn)) = (args.one_connection, &first_consumer) {
        for _ in 0..w.producers {
            shared_channels.push(
                conn.create_channel()
                    .await
                    .map_err(|e| amqp_err("channel", e))?,
            );
        }
    }
    let topology = match &first_consumer {
        Some(conn) => {
            let ch = conn
                .create_channel()
                .await
                .map_err(|e| amqp_err("channel", e))?;
            let topology = declare(&ch, args, &base).await?;
            let _ = ch.close(200, "declared".into()).await;
            topology
        }
        None => declare(&admin_ch, args, &base).await?,
    };

    let clock = Clock::new();
    let progress = Progress::new(clock);
    let mut consumers = Vec::new();
    if !w.prefill {
        consumers = start_consumers(args, &topology, &progress, first_consumer).await?;
        // Give consumers a moment to register before the first publish (a message
        // published before basic.consume is still delivered; this only keeps the start
        // even).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut properties = BasicProperties::default();
    if args.persistent {
        properties = properties.with_delivery_mode(2);
    }
    let mut connections = Vec::new();
    let mut publishers = Vec::new();
    let mut shared_channels = shared_channels.into_iter();
    for k in 0..w.producers {
        let channel = match shared_channels.next() {
            Some(channel) => channel,
            None => {
                let conn = connect(&args.url).await?;
                let channel = conn
                    .create_channel()
                    .await
                    .map_err(|e| amqp_err("channel", e))?;
                connections.push(conn);
                channel
            }
        };
        if args.confirm {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| amqp_err("confirm.select", e))?;
        }
        publishers.push(Publisher {
            k: k as u16,
            channel,
            exchange: topology.exchange.clone(),
            routing_key: topology.routing_key.clone(),
            properties: properties.clone(),
            confirms: args.confirm,
            window: if args.confirm {
                args.max_unconfirmed as usize
            } else {
                PUBLISH_WINDOW
            },
            body: payload::body(w.message_size as usize),
            progress: progress.clone(),
        });
    }

    let start_ns = clock.now_ns();
    let mut cpu = BrokerCpu::start(w.broker_pid);
    let limit = w.message_limit();
    let mut producer_tasks = Vec::new();
    let mut pacers = Vec::new();
    for (k, publisher) in publishers.into_iter().enumerate() {
        let schedule = Schedule::new(start_ns, w.producers, k as u32, limit, w.rate, w.duration);
        let ticks = if w.rate.is_some() {
            let (tx, rx) = mpsc::unbounded_channel();
            let s = schedule.clone();
            pacers.push(
                std::thread::Builder::new()
                    .name(format!("pacer-{k}"))
                    .spawn(move || pace(s, clock, tx))?,
            );
            Some(rx)
        } else {
            None
        };
        producer_tasks.push(tokio::spawn(publisher.run(schedule, ticks)));
    }
    let mut produced = Vec::new();
    let mut failure = None;
    for t in producer_tasks {
        match t.await {
            Ok(p) => produced.push(p),
            Err(e) => failure = Some(HarnessError::Setup(format!("producer task: {e}"))),
        }
    }
    for p in pacers {
        let _ = p.join();
    }
    if w.prefill && failure.is_none() {
        // The read: consumers start now, from the first message.
        progress
            .read_start_ns
            .store(clock.now_ns(), Ordering::Relaxed);
        cpu = BrokerCpu::start(w.broker_pid);
        consumers = start_consumers(args, &topology, &progress, None).await?;
    }
    let copies = topology.queues.len();
    let expected = progress.acked.load(Ordering::Relaxed) * copies as u64;
    if failure.is_none() {
        let (p, stall) = (progress.clone(), w.drain_timeout);
        let complete = tokio::task::spawn_blocking(move || p.drain(expected, stall))
            .await
            .map_err(|e| HarnessError::Setup(format!("drain: {e}")))?;
        progress.complete.store(complete, Ordering::Relaxed);
    }
    let cpu_used = cpu.map(|c| c.used());
    progress.stop.store(true, Ordering::Relaxed);
    let mut receipts = Receipts::default();
    let mut latency = Latency::new();
    for t in consumers {
        match t.await {
            Ok(Ok((r, l))) => {
                receipts.merge(&r);
                latency.merge(&l);
            }
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(HarnessError::Setup(format!("consumer task: {e}"))),
        }
    }
    for conn in connections {
        let _ = conn.close(200, "done".into()).await;
    }
    tear_down(&admin_ch, &topology).await;
    let _ = admin.close(200, "done".into()).await;
    if let Some(e) = failure {
        return Err(e);
    }
    let mut settings = BTreeMap::new();
    settings.insert("queues".into(), topology.queues.join(","));
    if !topology.exchange.is_empty() {
        settings.insert("exchange".into(), topology.exchange.clone());
    }
    settings.insert("confirm".into(), args.confirm.to_string());
    settings.insert("persistent".into(), args.persistent.to_string());
    settings.insert("prefetch".into(), args.prefetch.to_string());
    settings.insert("ack_every".into(), args.ack_interval().to_string());
    settings.insert("auto_ack".into(), args.auto_ack.to_string());
    settings.insert("fanout".into(), args.fanout.to_string());
    let runtime = match client_runtime(args) {
        ClientRuntime::OneThread => "tokio current-thread",
        ClientRuntime::Workers => "tokio multi-thread",
    };
    settings.insert("client_runtime".into(), runtime.into());
    if args.stream {
        settings.insert("stream".into(), "true (x-stream-offset first)".into());
    }
    let mut report = Report::build(Outcome {
        protocol: "amqp",
        broker: redact(&args.url),
        workload: w,
        settings,
        start_ns,
        copies,
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

/// One consumer connection per (queue, consumer), each on its own task; `declared_with`,
/// when given, is the first one.
async fn start_consumers(
    args: &AmqpArgs,
    topology: &Topology,
    progress: &Arc<Progress>,
    mut declared_with: Option<Connection>,
) -> Result<Vec<ConsumerTask>, HarnessError> {
    let w = &args.workload;
    let mut consumers = Vec::new();
    for (copy, queue) in topology.queues.iter().enumerate() {
        for c in 0..w.consumers {
            // The first consumer uses the connection that declared the topology.
            let conn = match declared_with.take() {
                Some(conn) => conn,
                None => connect(&args.url).await?,
            };
            let ignore = if copy == 0 && c == 0 {
                w.test_ignore_receipt
            } else {
                None
            };
            let sink = Sink::new(copy, progress.clone(), ignore);
            consumers.push(tokio::spawn(consume(
                conn,
                queue.clone(),
                format!("load-{copy}-{c}"),
                args.clone(),
                sink,
                progress.clone(),
            )));
        }
    }
    Ok(consumers)
}

type ConsumerTask = tokio::task::JoinHandle<Result<(Receipts, Latency), HarnessError>>;

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_stay_out_of_reports() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }
}

//! What a shard costs in memory and file descriptors, measured on the release binary.
//!
//! `cargo bench --bench sizing -- [--items N] [--fill-bytes B] [--fill-rounds R]
//!  [--queue-messages M] [--shard-counts 1,2,4]`
//!
//! 1. Fixed cost: starts the broker with each of `--shard-counts` shards on an empty data
//!    directory and reads its resident memory (VmRSS from `/proc/<pid>/status`) once it
//!    has settled.
//! 2. Per item: starts one broker (1 shard, unpinned, temp dir, ephemeral ports, through
//!    `tests/common/launch.rs` like the tests) and adds,
//!    in turn, N partitions (one topic, CreateTopics through the rdkafka admin client), one
//!    1 KiB record to each of them (which opens its files), N transient and N durable AMQP
//!    queues (lapin), N idle Kafka connections (each answered one ApiVersions request),
//!    N idle AMQP connections (lapin, one open channel each), and `--queue-messages`
//!    transient 16 B messages left in one queue. After each step it prints the growth of
//!    RSS and of open descriptors, divided by the count.
//! 3. Tail caches: `--fill-rounds` times, produces `--fill-bytes` of 1 KiB records to each
//!    of the N partitions and prints the bytes on disk, `portask_shard_memory_bytes
//!    {kind="tail_cache"}` and RSS, which shows the per-shard cap
//!    `storage.shard_tail_cache_bytes` at work.
//!
//! RSS counts what the broker touched; freed memory may stay in the allocator, so figures
//! are an upper bound per item. The bench process itself is not counted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

#[path = "../tests/common/launch.rs"]
mod launch;

#[derive(clap::Parser)]
#[command(
    name = "sizing",
    about = "Memory and descriptors per shard, partition, queue and connection"
)]
struct Args {
    /// Partitions, queues and connections added per step.
    #[arg(long, default_value_t = 1000)]
    items: usize,
    /// Bytes produced to each partition per tail-cache round.
    #[arg(long, default_value_t = 512 * 1024)]
    fill_bytes: usize,
    #[arg(long, default_value_t = 2)]
    fill_rounds: usize,
    /// Transient 16 B messages left in one queue.
    #[arg(long, default_value_t = 100_000)]
    queue_messages: usize,
    /// Shard counts whose fixed cost is measured (`1,2,4`).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4])]
    shard_counts: Vec<usize>,
}

fn args() -> Args {
    use clap::Parser;
    // `cargo bench` appends `--bench`.
    Args::parse_from(std::env::args().filter(|a| a != "--bench"))
}

/// The release broker on a temp dir (started by the harness tests share), killed on drop.
struct Broker(launch::Scratch);

impl Broker {
    fn start(shards: usize) -> Broker {
        Self::start_with(shards, &[])
    }

    /// Starts with extra environment variables (`PORTASK_*` configuration keys and others).
    fn start_with(shards: usize, env: &[(&str, String)]) -> Broker {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Broker(launch::Scratch::start(shards, &env))
    }

    fn pid(&self) -> u32 {
        self.0.pid()
    }

    fn kafka_port(&self) -> u16 {
        self.0.launch.kafka_port
    }

    fn bootstrap(&self) -> String {
        self.0.launch.bootstrap()
    }

    fn amqp_url(&self) -> String {
        self.0.launch.amqp_url()
    }

    /// Resident memory and open descriptors, after the broker has been idle for a moment.
    fn settled(&self) -> (u64, usize) {
        std::thread::sleep(Duration::from_millis(1500));
        (launch::rss_bytes(self.pid()), open_fds(self.pid()))
    }

    /// A sample of `/metrics`, summed over its label sets that contain `label`.
    fn metric(&self, name: &str, label: &str) -> f64 {
        let text = ureq::get(&format!("{}/metrics", self.0.launch.http_url()))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1_048_576.0)
}

/// One row of the per-item table: growth between `before` and now, divided by `n`.
fn row(what: &str, n: usize, before: (u64, usize), after: (u64, usize), took: Duration) {
    let drss = after.0 as f64 - before.0 as f64;
    let dfd = after.1 as f64 - before.1 as f64;
    println!(
        "| {what} | {n} | {} | {} | {:.1} KiB | {:.2} | {:.1} s |",
        mib(before.0 as f64),
        mib(after.0 as f64),
        drss / n as f64 / 1024.0,
        dfd / n as f64,
        took.as_secs_f64()
    );
}

fn create_partitions(b: &Broker, topic: &str, n: usize) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .create()
        .expect("admin client");
    let topics = [NewTopic::new(topic, n as i32, TopicReplication::Fixed(1))];
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(120)));
    let result = block_on(admin.create_topics(&topics, &opts)).expect("CreateTopics");
    for r in result {
        if let Err(e) = r {
            panic!("creating {topic}: {e:?}");
        }
    }
}

fn declare_queues(b: &Broker, n: usize, durable: bool) {
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let conn = Connection::connect(&b.amqp_url(), ConnectionProperties::default())
            .await
            .expect("amqp connect");
        let ch = conn.create_channel().await.expect("channel");
        let kind = if durable { "durable" } else { "transient" };
        for i in 0..n {
            ch.queue_declare(
                format!("sizing-{kind}-{i}").as_str().into(),
                QueueDeclareOptions {
                    durable,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue.declare");
        }
        let _ = conn.close(200, "done".into()).await;
    });
}

/// ApiVersions v0 request: size, api key 18, version 0, correlation id, client id "sizing".
fn api_versions_request(correlation: i32) -> Vec<u8> {
    let client = b"sizing";
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&correlation.to_be_bytes());
    body.extend_from_slice(&(client.len() as i16).to_be_bytes());
    body.extend_from_slice(client);
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// N Kafka connections that each completed one ApiVersions round trip, then stay idle.
fn kafka_connections(b: &Broker, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", b.kafka_port())).expect("kafka connect");
            s.write_all(&api_versions_request(i as i32))
                .expect("send ApiVersions");
            let mut size = [0u8; 4];
            s.read_exact(&mut size).expect("ApiVersions response size");
            let mut rest = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
            s.read_exact(&mut rest).expect("ApiVersions response");
            s
        })
        .collect()
}

/// N AMQP connections with one open channel each, idle; kept alive by their runtime.
fn amqp_connections(
    b: &Broker,
    n: usize,
) -> (tokio::runtime::Runtime, Vec<(Connection, lapin::Channel)>) {
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let url = b.amqp_url();
    let conns = rt.block_on(async {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let c = Connection::connect(&url, ConnectionProperties::default())
                .await
                .expect("amqp connect");
            let ch = c.create_channel().await.expect("channel");
            conns.push((c, ch));
        }
        conns
    });
    (rt, conns)
}

/// Produces `bytes` of 1 KiB records to each of `partitions` partitions of `topic`.
fn fill(b: &Broker, topic: &str, partitions: usize, bytes: usize) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("linger.ms", "20")
        .set("acks", "1")
        .set("enable.idempotence", "false")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .expect("producer");
    let value = vec![b'x'; 1024];
    let per = bytes.div_ceil(1024);
    for _ in 0..per {
        for part in 0..partitions {
            let mut record = BaseRecord::<(), [u8]>::to(topic)
                .partition(part as i32)
                .payload(&value[..]);
            loop {
                match p.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        p.poll(Duration::from_millis(5));
                    }
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(300)).expect("flush");
}

/// Publishes `m` transient 16 B messages to one queue nobody consumes, with publisher
/// confirms so that every message is in the queue when this returns.
fn queue_backlog(b: &Broker, m: usize) {
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let conn = Connection::connect(&b.amqp_url(), ConnectionProperties::default())
            .await
            .expect("amqp connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare(
            "sizing-backlog".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        let body = [b'x'; 16];
        let mut window = Vec::with_capacity(1000);
        for _ in 0..m {
            let confirm = ch
                .basic_publish(
                    "".into(),
                    "sizing-backlog".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await
                .expect("basic.publish");
            window.push(confirm);
            if window.len() == 1000 {
                for c in window.drain(..) {
                    c.await.expect("confirm");
                }
            }
        }
        for c in window.drain(..) {
            c.await.expect("confirm");
        }
        let _ = conn.close(200, "done".into()).await;
    });
}

fn main() {
    let a = args();
    let n = a.items;
    println!(
        "# Portask sizing: cargo bench --bench sizing -- --items {n} --fill-bytes {} --fill-rounds {} --queue-messages {} --shard-counts {}",
        a.fill_bytes,
        a.fill_rounds,
        a.queue_messages,
        a.shard_counts
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    println!();
    println!(
        "release binary, default configuration, unpinned, empty temp data directory, ephemeral ports; \
         {} cores, kernel {}",
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!("RSS = VmRSS of the broker process; fds = entries in /proc/<pid>/fd");
    println!();

    println!("## Fixed cost of an idle broker by shard count");
    println!();
    println!("| shards | RSS | fds |");
    println!("|---|---|---|");
    let mut fixed = Vec::new();
    for &shards in &a.shard_counts {
        let b = Broker::start(shards);
        let (rss, fds) = b.settled();
        println!("| {shards} | {} | {fds} |", mib(rss as f64));
        fixed.push((shards as f64, rss as f64));
    }
    if fixed.len() >= 2 {
        let (first, last) = (fixed[0], fixed[fixed.len() - 1]);
        println!();
        println!(
            "per extra shard: {} ((RSS at {} shards - RSS at {} shards) / {})",
            mib((last.1 - first.1) / (last.0 - first.0)),
            last.0,
            first.0,
            last.0 - first.0
        );
    }
    println!();

    println!("## Per item, one shard, N = {n}");
    println!();
    println!("| step | N | RSS before | RSS after | RSS per item | fds per item | took |");
    println!("|---|---|---|---|---|---|---|");
    let b = Broker::start(1);
    let topic = "sizing";

    let before = b.settled();
    let t = Instant::now();
    create_partitions(&b, topic, n);
    let took = t.elapsed();
    let after = b.settled();
    row("partitions created (one topic)", n, before, after, took);

    let before = after;
    let t = Instant::now();
    fill(&b, topic, n, 1024);
    let took = t.elapsed();
    let after = b.settled();
    row(
        "the same partitions after their first 1 KiB record",
        n,
        before,
        after,
        took,
    );

    let before = after;
    let t = Instant::now();
    declare_queues(&b, n, false);
    let took = t.elapsed();
    let after = b.settled();
    row("transient AMQP queues (empty)", n, before, after, took);

    let before = after;
    let t = Instant::now();
    declare_queues(&b, n, true);
    let took = t.elapsed();
    let after = b.settled();
    row("durable AMQP queues (empty)", n, before, after, took);

    let before = after;
    let t = Instant::now();
    let kafka = kafka_connections(&b, n);
    let took = t.elapsed();
    let after = b.settled();
    row(
        "idle Kafka connections (after ApiVersions)",
        n,
        before,
        after,
        took,
    );

    let before = after;
    let t = Instant::now();
    let (rt, amqp) = amqp_connections(&b, n);
    let took = t.elapsed();
    let after = b.settled();
    row(
        "idle AMQP connections (one channel each)",
        n,
        before,
        after,
        took,
    );
    drop(kafka);
    rt.block_on(async {
        for (c, _) in &amqp {
            let _ = c.close(200, "done".into()).await;
        }
    });
    drop(amqp);
    drop(rt);

    let m = a.queue_messages;
    let before = b.settled();
    let t = Instant::now();
    queue_backlog(&b, m);
    let took = t.elapsed();
    let after = b.settled();
    row(
        "transient 16 B messages waiting in one queue",
        m,
        before,
        after,
        took,
    );
    let queued = b.metric("portask_shard_memory_bytes", "kind=\"amqp_queues\"");
    println!();
    println!(
        "portask_shard_memory_bytes{{kind=\"amqp_queues\"}} with those {m} messages: {} ({:.0} B per message)",
        mib(queued),
        queued / m as f64
    );
    println!();

    drop(b);
    println!();

    println!(
        "## Tail caches: a fresh broker (1 shard), {n} partitions, rounds of {} of 1 KiB records into each",
        mib(a.fill_bytes as f64)
    );
    println!();
    println!("storage.tail_cache_bytes = 8 MiB per partition (default) in every run.");
    println!();
    println!(
        "| storage.shard_tail_cache_bytes | limits.shard_inflight_bytes | after round | payload produced | on disk (partition_size_bytes) | tail_cache metric | RSS | RSS 10 s later |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // The last run also fixes glibc's mmap and trim thresholds (normally they adapt and
    // let freed large buffers stay in the heap), to show how much RSS that retention is.
    for (cap, inflight, glibc) in [
        (256usize << 20, 512usize << 20, false),
        (64 << 20, 512 << 20, false),
        (64 << 20, 64 << 20, false),
        (256 << 20, 512 << 20, true),
    ] {
        let mut env = vec![
            ("PORTASK_STORAGE__SHARD_TAIL_CACHE_BYTES", cap.to_string()),
            ("PORTASK_LIMITS__SHARD_INFLIGHT_BYTES", inflight.to_string()),
        ];
        if glibc {
            env.push(("MALLOC_MMAP_THRESHOLD_", "131072".to_string()));
            env.push(("MALLOC_TRIM_THRESHOLD_", "131072".to_string()));
        }
        let b = Broker::start_with(1, &env);
        create_partitions(&b, topic, n);
        let (rss, _) = b.settled();
        let label = format!(
            "{} MiB | {} MiB{}",
            cap >> 20,
            inflight >> 20,
            if glibc {
                " (MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=131072)"
            } else {
                ""
            }
        );
        println!(
            "| {label} | 0 (empty) | 0 | 0 | 0 | {} | |",
            mib(rss as f64)
        );
        for round in 1..=a.fill_rounds {
            fill(&b, topic, n, a.fill_bytes);
            let (rss, _) = b.settled();
            std::thread::sleep(Duration::from_secs(10));
            let (later, _) = b.settled();
            println!(
                "| {label} | {round} | {} | {} | {} | {} | {} |",
                mib((a.fill_bytes * n * round) as f64),
                mib(b.metric(
                    "portask_partition_size_bytes",
                    &format!("topic=\"{topic}\"")
                )),
                mib(b.metric("portask_shard_memory_bytes", "kind=\"tail_cache\"")),
                mib(rss as f64),
                mib(later as f64)
            );
        }
    }
}

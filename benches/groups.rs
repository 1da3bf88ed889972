//! Consumer-group figures against a running broker, through librdkafka:
//! - rebalance time: three members share a 6-partition topic, a fourth subscribes; the
//!   time until all four hold partitions again (median of `--rounds`);
//! - group throughput: `--messages` 1 KiB messages on 6 partitions consumed by three
//!   members of one group with auto-commit, first poll to last message.
//!
//! `cargo bench --bench groups -- --brokers 127.0.0.1:9092 [--messages N] [--rounds N]`, or
//! `--start-broker [--broker-shards N]` instead of `--brokers` for a Portask of its own.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

#[derive(clap::Parser)]
#[command(
    name = "groups",
    about = "Consumer-group rebalance time and group throughput"
)]
struct Args {
    /// Bootstrap servers of a running broker.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// 1 KiB messages consumed by the group.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Rebalances measured (the median is printed).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[command(flatten)]
    start: launch::StartFlags,
}

#[path = "../tests/common/launch.rs"]
mod launch;

fn args() -> Args {
    use clap::Parser;
    // `cargo bench` appends `--bench`.
    Args::parse_from(std::env::args().filter(|a| a != "--bench"))
}

fn create_topic(brokers: &str, name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin");
    let r = block_on(admin.create_topics(
        &[NewTopic::new(name, 6, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .expect("create topic");
    if let Some(Err(e)) = r.into_iter().next() {
        eprintln!("create {name}: {e:?}");
    }
}

/// A group member polling on its own thread; reports its partition count and messages.
struct Member {
    stop: Arc<AtomicBool>,
    partitions: Arc<AtomicUsize>,
    handle: std::thread::JoinHandle<()>,
}

fn member(brokers: &str, group: &str, topic: &str, consumed: Arc<AtomicUsize>) -> Member {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let stop = Arc::new(AtomicBool::new(false));
    let partitions = Arc::new(AtomicUsize::new(0));
    let (s, p) = (stop.clone(), partitions.clone());
    let handle = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            if let Some(Ok(_)) = c.poll(Duration::from_millis(50)) {
                consumed.fetch_add(1, Ordering::SeqCst);
            }
            let n = c.assignment().map(|a| a.count()).unwrap_or(0);
            p.store(n, Ordering::SeqCst);
        }
        c.unsubscribe();
        for _ in 0..10 {
            c.poll(Duration::from_millis(20));
        }
    });
    Member {
        stop,
        partitions,
        handle,
    }
}

fn wait(what: &str, within: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        if Instant::now() > deadline {
            eprintln!("timed out waiting for {what}");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn rebalance_time(a: &Args, round: usize) -> Duration {
    let topic = format!("rebalance-{round}-{}", std::process::id());
    let group = format!("g-{topic}");
    create_topic(&a.brokers, &topic);
    let consumed = Arc::new(AtomicUsize::new(0));
    let members: Vec<Member> = (0..3)
        .map(|_| member(&a.brokers, &group, &topic, consumed.clone()))
        .collect();
    wait(
        "three members to share six partitions",
        Duration::from_secs(60),
        || {
            members
                .iter()
                .all(|m| m.partitions.load(Ordering::SeqCst) == 2)
        },
    );
    let started = Instant::now();
    let fourth = member(&a.brokers, &group, &topic, consumed.clone());
    let all = Mutex::new(());
    wait(
        "four members to hold partitions",
        Duration::from_secs(60),
        || {
            let _g = all.lock();
            let counts: Vec<usize> = members
                .iter()
                .chain(std::iter::once(&fourth))
                .map(|m| m.partitions.load(Ordering::SeqCst))
                .collect();
            counts.iter().all(|n| *n > 0) && counts.iter().sum::<usize>() == 6
        },
    );
    let took = started.elapsed();
    for m in members.into_iter().chain(std::iter::once(fourth)) {
        m.stop.store(true, Ordering::SeqCst);
        let _ = m.handle.join();
    }
    took
}

fn group_throughput(a: &Args) -> (f64, f64) {
    let topic = format!("group-throughput-{}", std::process::id());
    create_topic(&a.brokers, &topic);
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &a.brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "false")
        .create()
        .expect("producer");
    let value = vec![b'x'; 1024];
    for i in 0..a.messages {
        let key = i.to_string();
        let mut record = BaseRecord::to(&topic).key(key.as_str()).payload(&value);
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
    p.flush(Duration::from_secs(60)).expect("flush");
    let consumed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let group = format!("g-{topic}");
    let members: Vec<Member> = (0..3)
        .map(|_| member(&a.brokers, &group, &topic, consumed.clone()))
        .collect();
    wait("every message consumed", Duration::from_secs(300), || {
        consumed.load(Ordering::SeqCst) >= a.messages
    });
    let secs = started.elapsed().as_secs_f64();
    for m in members {
        m.stop.store(true, Ordering::SeqCst);
        let _ = m.handle.join();
    }
    let rate = a.messages as f64 / secs;
    (rate, rate * 1024.0 / 1_048_576.0)
}

fn main() {
    let mut a = args();
    // Kept for the whole run; dropping it kills the broker.
    let broker = a.start.start();
    if let Some(b) = &broker {
        a.brokers = b.launch.bootstrap();
    }
    let mut times: Vec<Duration> = (0..a.rounds).map(|r| rebalance_time(&a, r)).collect();
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "rebalance 3 -> 4 members: median {:.0} ms over {} rounds (all: {:?})",
        median.as_secs_f64() * 1000.0,
        a.rounds,
        times.iter().map(|t| t.as_millis()).collect::<Vec<_>>()
    );
    let (msgs, mb) = group_throughput(&a);
    println!(
        "group consumption, 3 members, 6 partitions, {} x 1 KiB: {msgs:.0} msg/s, {mb:.1} MB/s (first poll to last message, includes the first rebalance)",
        a.messages
    );
}

//! Consumer-group figures against a running broker, through librdkafka:
//! - rebalance time, per group protocol: three members share a 12-partition topic that a
//!   producer keeps writing to (a record to each partition every ~25 ms); a fourth member
//!   subscribes, later one member leaves; each time, the time from the change until every
//!   partition is owned again (by exactly the members of the new group) and has delivered
//!   a record since, and how long deliveries of each partition paused meanwhile (the
//!   median partition's and the worst one's longest gap; medians of `--rounds`). The protocols: `classic` (librdkafka's
//!   default eager range assignor), `cooperative` (classic with cooperative-sticky) and
//!   `consumer` (KIP-848, the broker's uniform assignor);
//! - group throughput: `--messages` 1 KiB messages on 6 partitions consumed by three
//!   members of one group with auto-commit, first poll to last message.
//!
//! `cargo bench --bench groups -- --brokers 127.0.0.1:9092 [--messages N] [--rounds N]
//! [--protocols classic,cooperative,consumer]`, or `--start-broker [--broker-shards N]
//! [--consumer-heartbeat-ms MS]` instead of `--brokers` for a Portask of its own.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
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
    /// 1 KiB messages consumed by the group (0: skip the throughput figure).
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Rebalances measured per protocol (the median is printed).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Group protocols whose rebalances are measured: classic, cooperative, consumer.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "classic,cooperative,consumer"
    )]
    protocols: Vec<String>,
    /// `group.consumer.heartbeat.interval.ms` of the broker `--start-broker` starts
    /// (Kafka's default, 5000, unless given); classic members heartbeat every 500 ms.
    #[arg(long)]
    consumer_heartbeat_ms: Option<u64>,
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

fn create_topic(brokers: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin");
    let r = block_on(admin.create_topics(
        &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .expect("create topic");
    if let Some(Err(e)) = r.into_iter().next() {
        eprintln!("create {name}: {e:?}");
    }
}

/// When each partition last delivered a record to any member, and the longest gap between
/// two of its deliveries since `reset`.
struct Deliveries {
    last: Vec<Option<Instant>>,
    gap: Vec<Duration>,
}

impl Deliveries {
    fn new() -> Deliveries {
        Deliveries {
            last: vec![None; PARTITIONS],
            gap: vec![Duration::ZERO; PARTITIONS],
        }
    }

    fn delivered(&mut self, partition: usize) {
        let now = Instant::now();
        if let (Some(Some(last)), Some(gap)) =
            (self.last.get(partition), self.gap.get_mut(partition))
        {
            *gap = (*gap).max(now.duration_since(*last));
        }
        if let Some(slot) = self.last.get_mut(partition) {
            *slot = Some(now);
        }
    }

    fn reset(&mut self) {
        self.gap = vec![Duration::ZERO; PARTITIONS];
    }
}

type LastSeen = Arc<Mutex<Deliveries>>;

/// A group member polling on its own thread; reports its partition count and messages.
struct Member {
    stop: Arc<AtomicBool>,
    partitions: Arc<AtomicUsize>,
    handle: std::thread::JoinHandle<()>,
}

fn member(
    brokers: &str,
    group: &str,
    topic: &str,
    protocol: &str,
    consumed: Arc<AtomicUsize>,
    last: Option<LastSeen>,
) -> Member {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true");
    match protocol {
        "consumer" => {
            config.set("group.protocol", "consumer");
        }
        other => {
            config
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "500");
            if other == "cooperative" {
                config.set("partition.assignment.strategy", "cooperative-sticky");
            }
        }
    }
    let c: BaseConsumer = config.create().expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let stop = Arc::new(AtomicBool::new(false));
    let partitions = Arc::new(AtomicUsize::new(0));
    let (s, p) = (stop.clone(), partitions.clone());
    let handle = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
                consumed.fetch_add(1, Ordering::SeqCst);
                if let Some(last) = &last {
                    last.lock().expect("lock").delivered(m.partition() as usize);
                }
            }
            let n = c.assignment().map(|a| a.count()).unwrap_or(0);
            p.store(n, Ordering::SeqCst);
        }
        p.store(0, Ordering::SeqCst);
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

fn wait(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        if Instant::now() > deadline {
            eprintln!("timed out waiting for {what}");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

const PARTITIONS: usize = 12;

/// A producer writing a record to each partition in turn, every 2 ms, until stopped.
fn keep_producing(brokers: &str, topic: &str) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let topic = topic.to_owned();
    let handle = std::thread::spawn(move || {
        let mut i = 0usize;
        while !s.load(Ordering::SeqCst) {
            let partition = (i % PARTITIONS) as i32;
            let _ = p.send(
                BaseRecord::<(), _>::to(&topic)
                    .partition(partition)
                    .payload("x"),
            );
            p.poll(Duration::from_millis(2));
            i += 1;
        }
        p.flush(Duration::from_secs(5)).ok();
    });
    (stop, handle)
}

/// What one membership change cost: the time until the group settled, and the longest
/// pause of deliveries of the median and of the worst partition meanwhile.
#[derive(Clone, Copy)]
struct Change {
    settled: Duration,
    median_stall: Duration,
    max_stall: Duration,
}

/// Waits until `members` hold every partition between them and every partition has
/// delivered a record since that moment; the time from `since`, and the stalls.
fn settled(members: &[&Member], last: &LastSeen, since: Instant) -> Change {
    let mut owned_at: Option<Instant> = None;
    let mut done: Option<Instant> = None;
    wait("the group to settle", Duration::from_secs(120), || {
        let counts: Vec<usize> = members
            .iter()
            .map(|m| m.partitions.load(Ordering::SeqCst))
            .collect();
        let owned = counts.iter().all(|n| *n > 0) && counts.iter().sum::<usize>() == PARTITIONS;
        if !owned {
            owned_at = None;
            return false;
        }
        let from = *owned_at.get_or_insert_with(Instant::now);
        let seen = last.lock().expect("lock");
        if seen.last.iter().all(|t| t.is_some_and(|t| t > from)) {
            done = seen.last.iter().flatten().max().copied();
            true
        } else {
            false
        }
    });
    let mut gaps = last.lock().expect("lock").gap.clone();
    gaps.sort();
    Change {
        settled: done.unwrap_or_else(Instant::now).duration_since(since),
        median_stall: gaps[gaps.len() / 2],
        max_stall: gaps[gaps.len() - 1],
    }
}

/// One round: (3 -> 4 join, 4 -> 3 leave) settle times.
fn rebalance_times(a: &Args, protocol: &str, round: usize) -> (Change, Change) {
    let topic = format!("rebalance-{protocol}-{round}-{}", std::process::id());
    let group = format!("g-{topic}");
    create_topic(&a.brokers, &topic, PARTITIONS as i32);
    let (stop_producing, producer) = keep_producing(&a.brokers, &topic);
    let consumed = Arc::new(AtomicUsize::new(0));
    let last: LastSeen = Arc::new(Mutex::new(Deliveries::new()));
    let spawn = || {
        member(
            &a.brokers,
            &group,
            &topic,
            protocol,
            consumed.clone(),
            Some(last.clone()),
        )
    };
    let mut members: Vec<Member> = (0..3).map(|_| spawn()).collect();
    settled(&members.iter().collect::<Vec<_>>(), &last, Instant::now());
    last.lock().expect("lock").reset();
    let started = Instant::now();
    members.push(spawn());
    let join = settled(&members.iter().collect::<Vec<_>>(), &last, started);
    let leaving = members.remove(0);
    last.lock().expect("lock").reset();
    let started = Instant::now();
    leaving.stop.store(true, Ordering::SeqCst);
    let leave = settled(&members.iter().collect::<Vec<_>>(), &last, started);
    let _ = leaving.handle.join();
    for m in members {
        m.stop.store(true, Ordering::SeqCst);
        let _ = m.handle.join();
    }
    stop_producing.store(true, Ordering::SeqCst);
    let _ = producer.join();
    (join, leave)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// "settled / median stall / worst stall" in ms, medians over the rounds.
fn cell(changes: &[Change]) -> String {
    let m = |f: fn(&Change) -> Duration| ms(median(changes.iter().map(f).collect()));
    format!(
        "{} / {} / {}",
        m(|c| c.settled),
        m(|c| c.median_stall),
        m(|c| c.max_stall)
    )
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn group_throughput(a: &Args) -> (f64, f64) {
    let topic = format!("group-throughput-{}", std::process::id());
    create_topic(&a.brokers, &topic, 6);
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
        .map(|_| {
            member(
                &a.brokers,
                &group,
                &topic,
                "classic",
                consumed.clone(),
                None,
            )
        })
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
    let broker = a.start.start_broker.then(|| {
        let heartbeat = a.consumer_heartbeat_ms.unwrap_or(5000).to_string();
        launch::Scratch::start(
            a.start.broker_shards,
            &[(
                "PORTASK_KAFKA__GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS",
                heartbeat.as_str(),
            )],
        )
    });
    if let Some(b) = &broker {
        a.brokers = b.launch.bootstrap();
    }
    println!(
        "12 partitions; per change: settled / median partition's stall / worst stall (ms), \
         median of {} rounds",
        a.rounds
    );
    println!("| protocol | 3 -> 4 join | 4 -> 3 leave | settled per round (join, leave) |");
    println!("|---|---|---|---|");
    for protocol in &a.protocols {
        let rounds: Vec<(Change, Change)> = (0..a.rounds)
            .map(|r| rebalance_times(&a, protocol, r))
            .collect();
        let joins: Vec<Change> = rounds.iter().map(|r| r.0).collect();
        let leaves: Vec<Change> = rounds.iter().map(|r| r.1).collect();
        println!(
            "| {protocol} | {} | {} | {:?} |",
            cell(&joins),
            cell(&leaves),
            rounds
                .iter()
                .map(|(j, l)| (ms(j.settled), ms(l.settled)))
                .collect::<Vec<_>>()
        );
    }
    if a.messages > 0 {
        let (msgs, mb) = group_throughput(&a);
        println!(
            "group consumption, 3 members, 6 partitions, {} x 1 KiB: {msgs:.0} msg/s, {mb:.1} MB/s (first poll to last message, includes the first rebalance)",
            a.messages
        );
    }
}

//! Online migration between the classic and the consumer group protocol (KIP-848, Kafka
//! 4's `group.consumer.migration.policy=bidirectional`) through librdkafka against the
//! real broker: a rolling upgrade of a classic group's consumers to `group.protocol=
//! consumer` and a rolling downgrade back, both under a steady producer, with every record
//! consumed, the committed offsets never going back, and the group's type (management
//! API) following the migration.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{data_dir, kafka, Broker};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::TopicPartitionList;

const FAST: &[(&str, &str)] = &[
    ("PORTASK_KAFKA__GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS", "300"),
    ("PORTASK_KAFKA__GROUP_INITIAL_REBALANCE_DELAY_MS", "100"),
    ("PORTASK_KAFKA__GROUP_MIN_SESSION_TIMEOUT_MS", "1000"),
];

const TOPIC: &str = "migrate";
const PARTITIONS: i32 = 4;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Protocol {
    /// `group.protocol=classic` with librdkafka's default (eager) assignors.
    Classic,
    /// `group.protocol=classic` with the cooperative-sticky assignor.
    Cooperative,
    Consumer,
}

fn consumer(broker: &Broker, group: &str, protocol: Protocol) -> BaseConsumer {
    let mut settings = vec![
        ("group.id", group),
        ("enable.auto.commit", "false"),
        ("auto.offset.reset", "earliest"),
    ];
    match protocol {
        Protocol::Consumer => settings.push(("group.protocol", "consumer")),
        Protocol::Classic | Protocol::Cooperative => {
            if protocol == Protocol::Cooperative {
                settings.push(("partition.assignment.strategy", "cooperative-sticky"));
            }
            settings.push(("group.protocol", "classic"));
            settings.push(("session.timeout.ms", "6000"));
            settings.push(("heartbeat.interval.ms", "300"));
        }
    }
    kafka::client(broker, &settings)
}

/// What the members saw.
#[derive(Default)]
struct Seen {
    values: HashSet<usize>,
    deliveries: usize,
    /// Each running member's partitions, by member number.
    assignments: HashMap<usize, Vec<i32>>,
}

struct Running {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Running {
    /// Closes the consumer gracefully (it leaves the group).
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("member thread");
    }
}

fn spawn_member(
    broker: &Broker,
    id: usize,
    group: &str,
    protocol: Protocol,
    seen: Arc<Mutex<Seen>>,
) -> Running {
    let c = consumer(broker, group, protocol);
    c.subscribe(&[TOPIC]).expect("subscribe");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                let v: usize = std::str::from_utf8(m.payload().unwrap_or_default())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .expect("numeric payload");
                // A commit refused in a rebalance only means the record may come again.
                let _ = c.commit_message(&m, CommitMode::Sync);
                let mut s = seen.lock().expect("lock");
                s.values.insert(v);
                s.deliveries += 1;
            }
            if let Ok(a) = c.assignment() {
                let parts: Vec<i32> = a.elements().iter().map(|e| e.partition()).collect();
                seen.lock().expect("lock").assignments.insert(id, parts);
            }
        }
        seen.lock().expect("lock").assignments.remove(&id);
        c.unsubscribe();
        drop(c);
    });
    Running { stop, handle }
}

/// `members` running members each own some partitions and together all, each once.
fn covered(seen: &Mutex<Seen>, members: usize) -> bool {
    let s = seen.lock().expect("lock");
    let mut all: Vec<i32> = s.assignments.values().flatten().copied().collect();
    all.sort();
    s.assignments.len() == members
        && s.assignments.values().all(|p| !p.is_empty())
        && all == (0..PARTITIONS).collect::<Vec<_>>()
}

fn wait_until(what: &str, within: Duration, seen: &Mutex<Seen>, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        if Instant::now() >= deadline {
            let s = seen.lock().expect("lock");
            panic!("timed out waiting for {what}: {:?}", s.assignments);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A producer writing 0, 1, 2, … into the topic until stopped; returns how many it wrote.
struct Producing {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    handle: JoinHandle<()>,
}

fn produce_steadily(broker: &Broker) -> Producing {
    let p: FutureProducer = kafka::client(broker, &[("linger.ms", "5")]);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let (flag, count) = (stop.clone(), sent.clone());
    let handle = std::thread::spawn(move || {
        let mut i = 0usize;
        while !flag.load(Ordering::SeqCst) {
            let batch: Vec<_> = (i..i + 20)
                .map(|v| {
                    let v = v.to_string();
                    kafka::enqueue(
                        &p,
                        FutureRecord::to(TOPIC).key(v.as_str()).payload(v.as_str()),
                    )
                })
                .collect();
            for f in batch {
                kafka::delivered(f);
            }
            i += 20;
            count.store(i, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    Producing { stop, sent, handle }
}

/// The group's committed offset of every partition (-1: none).
fn committed(broker: &Broker, group: &str) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = kafka::client(broker, &[("group.id", group)]);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    got.elements()
        .iter()
        .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
        .collect()
}

/// The group's type (`classic` or `consumer`) as the management API lists it.
fn group_type(broker: &Broker, group: &str) -> String {
    let url = format!("{}/api/v1/consumer-groups", broker.http_url());
    // guest:guest, the default management user.
    let body = ureq::get(&url)
        .set("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
        .call()
        .expect("GET")
        .into_string()
        .expect("body");
    let groups: serde_json::Value = serde_json::from_str(&body).expect("json");
    groups
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["group"] == group)
        .and_then(|g| g["group_type"].as_str())
        .unwrap_or("none")
        .to_owned()
}

fn type_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Classic | Protocol::Cooperative => "classic",
        Protocol::Consumer => "consumer",
    }
}

/// Runs members of `from`, then replaces them one by one with members of `to` (the first
/// replacement after one extra `to` member joined), under a steady producer; checks every
/// record is consumed, the group keeps covering every partition, and the committed offsets
/// never go back and end at the end of each partition.
fn rolling(group: &str, from: Protocol, to: Protocol) {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, FAST);
    kafka::create_topic(&broker, TOPIC, PARTITIONS, &[]);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let producing = produce_steadily(&broker);
    let within = Duration::from_secs(60);
    let a = spawn_member(&broker, 1, group, from, seen.clone());
    let b = spawn_member(&broker, 2, group, from, seen.clone());
    wait_until("two members of the old protocol", within, &seen, || {
        covered(&seen, 2)
    });
    assert_eq!(group_type(&broker, group), type_name(from));
    let mut floor = committed(&broker, group);
    let mut check_offsets = |step: &str| {
        let now = committed(&broker, group);
        for (p, off) in &now {
            let before = floor.get(p).copied().unwrap_or(-1);
            assert!(
                *off >= before,
                "{step}: partition {p} went back {before} → {off}"
            );
        }
        floor = now;
    };
    // A member of the new protocol joins the running group.
    let c = spawn_member(&broker, 3, group, to, seen.clone());
    wait_until("a third member of the new protocol", within, &seen, || {
        covered(&seen, 3)
    });
    check_offsets("the third member joined");
    // Upgraded at once; a downgrade waits for the last consumer-protocol member to leave.
    assert_eq!(group_type(&broker, group), "consumer");
    // Rolling: each old member restarts with the new protocol.
    a.stop();
    let a2 = spawn_member(&broker, 4, group, to, seen.clone());
    wait_until("the first restarted member", within, &seen, || {
        covered(&seen, 3)
    });
    check_offsets("the first member restarted");
    b.stop();
    let b2 = spawn_member(&broker, 5, group, to, seen.clone());
    wait_until("the second restarted member", within, &seen, || {
        covered(&seen, 3)
    });
    check_offsets("the second member restarted");
    assert_eq!(group_type(&broker, group), type_name(to));
    producing.stop.store(true, Ordering::SeqCst);
    producing.handle.join().expect("producer");
    let sent = producing.sent.load(Ordering::SeqCst);
    assert!(sent > 0);
    wait_until("every record consumed", within, &seen, || {
        seen.lock().expect("lock").values.len() >= sent
    });
    let s = seen.lock().expect("lock");
    let missing: Vec<usize> = (0..sent).filter(|v| !s.values.contains(v)).collect();
    assert!(missing.is_empty(), "lost records: {missing:?}");
    let deliveries = s.deliveries;
    drop(s);
    // Every record was consumed and committed: the offsets end at each partition's end.
    let deadline = Instant::now() + within;
    loop {
        let ends: BTreeMap<i32, i64> = (0..PARTITIONS)
            .map(|p| (p, kafka::watermarks(&broker, TOPIC, p).1))
            .collect();
        if committed(&broker, group) == ends {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "committed offsets never reached {ends:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    check_offsets("the end");
    println!("{group}: {sent} records, {deliveries} deliveries");
    for m in [c, a2, b2] {
        m.stop();
    }
}

#[test]
fn a_rolling_upgrade_from_classic_to_consumer_loses_nothing() {
    rolling("upgrade", Protocol::Classic, Protocol::Consumer);
}

#[test]
fn a_rolling_downgrade_from_consumer_to_classic_loses_nothing() {
    rolling("downgrade", Protocol::Consumer, Protocol::Classic);
}

#[test]
fn a_rolling_upgrade_of_cooperative_sticky_consumers_loses_nothing() {
    rolling(
        "upgrade-cooperative",
        Protocol::Cooperative,
        Protocol::Consumer,
    );
}

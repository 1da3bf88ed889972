//! The KIP-848 consumer group protocol through librdkafka (`group.protocol=consumer`)
//! against the real broker: joining, consuming and leaving; scaling 3 → 4 → 2 while a
//! producer writes, without loss; the `range` and `uniform` server-side assignors; a static
//! member coming back within its session timeout; classic and consumer groups side by side
//! and an empty classic group turned consumer group (and back) keeping its offsets; offsets
//! across `kill -9`; and the errors of ConsumerGroupHeartbeat, ConsumerGroupDescribe,
//! DescribeGroups and JoinGroup as Kafka 4 gives them, over raw frames.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{data_dir, kafka, Broker};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, ConsumerGroupDescribeRequest,
    ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, GroupId, JoinGroupRequest, JoinGroupResponse,
    ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// Heartbeats every 300 ms, so reconciliation takes a few of them, not seconds each.
const FAST: &[(&str, &str)] = &[
    ("PORTASK_KAFKA__GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS", "300"),
    ("PORTASK_KAFKA__GROUP_INITIAL_REBALANCE_DELAY_MS", "100"),
    ("PORTASK_KAFKA__GROUP_MIN_SESSION_TIMEOUT_MS", "1000"),
];

fn produce(broker: &Broker, topic: &str, from: usize, n: usize) {
    let p: FutureProducer = kafka::client(broker, &[("linger.ms", "5")]);
    let pending: Vec<_> = (from..from + n)
        .map(|i| {
            let v = format!("{i}");
            kafka::enqueue(
                &p,
                FutureRecord::to(topic).key(v.as_str()).payload(v.as_str()),
            )
        })
        .collect();
    for f in pending {
        kafka::delivered(f);
    }
}

/// A consumer of the consumer group protocol (KIP-848) in `group`.
fn member(broker: &Broker, group: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut settings = vec![
        ("group.id", group),
        ("group.protocol", "consumer"),
        ("enable.auto.commit", "false"),
        ("auto.offset.reset", "earliest"),
    ];
    settings.extend_from_slice(extra);
    kafka::client(broker, &settings)
}

/// A consumer of the classic protocol in `group`.
fn classic(broker: &Broker, group: &str) -> BaseConsumer {
    kafka::client(
        broker,
        &[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
        ],
    )
}

fn value(m: &rdkafka::message::BorrowedMessage<'_>) -> usize {
    std::str::from_utf8(m.payload().unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("numeric payload")
}

/// Polls `c` (committing each record) until `n` records arrived or `within` passed.
fn consume(c: &BaseConsumer, n: usize, within: Duration) -> Vec<usize> {
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    while got.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            got.push(value(&m));
            c.commit_message(&m, CommitMode::Sync).expect("commit");
        }
    }
    got
}

fn partitions_of(c: &BaseConsumer) -> BTreeSet<(String, i32)> {
    c.assignment()
        .map(|a| {
            a.elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls every consumer until `f` holds of their assignments.
fn poll_until(
    what: &str,
    within: Duration,
    consumers: &[&BaseConsumer],
    mut f: impl FnMut(&[BTreeSet<(String, i32)>]) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        for c in consumers {
            let _ = c.poll(Duration::from_millis(20));
        }
        let a: Vec<_> = consumers.iter().map(|c| partitions_of(c)).collect();
        if f(&a) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {a:?}"
        );
    }
}

/// What every member of the scaling test saw.
#[derive(Default)]
struct Seen {
    deliveries: HashMap<usize, usize>,
    /// Values whose commit failed (they may be delivered again, legitimately).
    uncommitted: HashSet<usize>,
    assignments: HashMap<usize, Vec<i32>>,
}

struct Running {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

fn spawn_member(broker: &Broker, id: usize, group: &str, seen: Arc<Mutex<Seen>>) -> Running {
    let c = member(broker, group, &[]);
    c.subscribe(&["work"]).expect("subscribe");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                let v = value(&m);
                let committed = c.commit_message(&m, CommitMode::Sync).is_ok();
                let mut s = seen.lock().expect("lock");
                *s.deliveries.entry(v).or_default() += 1;
                if !committed {
                    s.uncommitted.insert(v);
                }
            }
            if let Ok(a) = c.assignment() {
                let parts: Vec<i32> = a.elements().iter().map(|e| e.partition()).collect();
                seen.lock().expect("lock").assignments.insert(id, parts);
            }
        }
        // Graceful close: a heartbeat with epoch -1.
        c.unsubscribe();
        drop(c);
        seen.lock().expect("lock").assignments.remove(&id);
    });
    Running { stop, handle }
}

fn owners_cover(seen: &Mutex<Seen>, members: usize, partitions: i32) -> bool {
    let s = seen.lock().expect("lock");
    let mut all: Vec<i32> = s.assignments.values().flatten().copied().collect();
    all.sort();
    s.assignments.values().filter(|p| !p.is_empty()).count() == members
        && all == (0..partitions).collect::<Vec<_>>()
}

#[test]
fn a_member_joins_consumes_commits_and_leaves() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, FAST);
    kafka::create_topic(&broker, "orders", 4, &[]);
    produce(&broker, "orders", 0, 200);
    let c = member(&broker, "kip848-solo", &[]);
    c.subscribe(&["orders"]).expect("subscribe");
    let got = consume(&c, 200, Duration::from_secs(60));
    assert_eq!(got.len(), 200, "every record consumed");
    assert_eq!(
        partitions_of(&c).len(),
        4,
        "the lone member owns every partition"
    );
    // The HTTP API lists it as a consumer-protocol group.
    let groups = http_groups(&broker);
    let g = groups
        .iter()
        .find(|g| g["group"] == "kip848-solo")
        .unwrap_or_else(|| panic!("group listed: {groups:?}"));
    assert_eq!(g["group_type"], "consumer");
    assert_eq!(g["members"], 1);
    // Described with its member's partitions and its lag.
    let one = http_get(&broker, "/api/v1/consumer-groups/kip848-solo");
    assert_eq!(one["group_type"], "consumer", "{one}");
    assert_eq!(one["state"], "Stable", "{one}");
    let parts = one["members"][0]["assignment"][0]["partitions"]
        .as_array()
        .map(Vec::len);
    assert_eq!(parts, Some(4), "{one}");
    assert_eq!(one["lag"], 0, "{one}");
    c.unsubscribe();
    drop(c);
    wait_until("the member to leave", Duration::from_secs(10), || {
        http_groups(&broker)
            .iter()
            .any(|g| g["group"] == "kip848-solo" && g["members"] == 0 && g["state"] == "Empty")
    });
    // Its committed offsets stay: a new member starts after them.
    produce(&broker, "orders", 200, 10);
    // /metrics counts the group's lag from those offsets.
    wait_until("the lag of 10 in /metrics", Duration::from_secs(10), || {
        let text = ureq::get(&format!("{}/metrics", broker.http_url()))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default();
        let lag: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("portask_consumer_group_lag{") && l.contains("group=\"kip848-solo\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        lag == 10.0
    });
    let c = member(&broker, "kip848-solo", &[]);
    c.subscribe(&["orders"]).expect("subscribe");
    let mut rest = consume(&c, 10, Duration::from_secs(60));
    rest.sort();
    assert_eq!(rest, (200..210).collect::<Vec<_>>());
}

fn http_get(broker: &Broker, path: &str) -> serde_json::Value {
    let url = format!("{}{path}", broker.http_url());
    // guest:guest, the default management user.
    let body = ureq::get(&url)
        .set("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
        .call()
        .expect("GET")
        .into_string()
        .expect("body");
    serde_json::from_str(&body).expect("json")
}

fn http_groups(broker: &Broker) -> Vec<serde_json::Value> {
    http_get(broker, "/api/v1/consumer-groups")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn scaling_3_to_4_to_2_while_producing_loses_nothing() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, FAST);
    kafka::create_topic(&broker, "work", 12, &[]);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let group = "kip848-scale";
    let mut members: Vec<Running> = (0..3)
        .map(|i| spawn_member(&broker, i, group, seen.clone()))
        .collect();
    wait_until(
        "three members to own all 12",
        Duration::from_secs(60),
        || owners_cover(&seen, 3, 12),
    );
    produce(&broker, "work", 0, 2000);
    members.push(spawn_member(&broker, 3, group, seen.clone()));
    produce(&broker, "work", 2000, 2000);
    wait_until(
        "four members to share all 12",
        Duration::from_secs(60),
        || owners_cover(&seen, 4, 12),
    );
    for _ in 0..2 {
        let leaving = members.remove(0);
        leaving.stop.store(true, Ordering::SeqCst);
        leaving.handle.join().expect("member thread");
    }
    produce(&broker, "work", 4000, 2000);
    wait_until("every record consumed", Duration::from_secs(90), || {
        seen.lock().expect("lock").deliveries.len() >= 6000
    });
    wait_until("two members to own all 12", Duration::from_secs(60), || {
        owners_cover(&seen, 2, 12)
    });
    for m in members {
        m.stop.store(true, Ordering::SeqCst);
        m.handle.join().expect("member thread");
    }
    let s = seen.lock().expect("lock");
    for v in 0..6000 {
        let n = s.deliveries.get(&v).copied().unwrap_or(0);
        assert!(n >= 1, "record {v} lost");
        if n > 1 {
            assert!(
                s.uncommitted.contains(&v),
                "record {v} delivered {n} times though its commit succeeded"
            );
        }
    }
}

/// Two members of `group` asking for `assignor`, subscribed to "left" and "right" (3
/// partitions each): their partition counts once they own all six, and the assignor the
/// group's ConsumerGroupDescribe names.
fn two_member_assignment(broker: &Broker, group: &str, assignor: &str) -> (Vec<usize>, String) {
    let a = member(broker, group, &[("group.remote.assignor", assignor)]);
    let b = member(broker, group, &[("group.remote.assignor", assignor)]);
    a.subscribe(&["left", "right"]).expect("subscribe");
    b.subscribe(&["left", "right"]).expect("subscribe");
    let mut sizes = Vec::new();
    poll_until(
        "both members to own all six partitions",
        Duration::from_secs(60),
        &[&a, &b],
        |owned| {
            let total: usize = owned.iter().map(BTreeSet::len).sum();
            let disjoint = owned[0].is_disjoint(&owned[1]);
            if total == 6 && disjoint && owned.iter().all(|o| !o.is_empty()) {
                sizes = owned.iter().map(BTreeSet::len).collect();
                // Range: each member has the same partition numbers of both topics.
                if assignor == "range" {
                    for o in owned {
                        let l: BTreeSet<i32> =
                            o.iter().filter(|(t, _)| t == "left").map(|p| p.1).collect();
                        let r: BTreeSet<i32> = o
                            .iter()
                            .filter(|(t, _)| t == "right")
                            .map(|p| p.1)
                            .collect();
                        assert_eq!(l, r, "range co-partitions");
                    }
                }
                true
            } else {
                false
            }
        },
    );
    sizes.sort();
    let mut s = connect(broker);
    let d: ConsumerGroupDescribeResponse = roundtrip(
        &mut s,
        ApiKey::ConsumerGroupDescribe,
        0,
        &ConsumerGroupDescribeRequest::default().with_group_ids(vec![gid(group)]),
    );
    assert_eq!(d.groups[0].error_code, 0);
    assert_eq!(d.groups[0].members.len(), 2);
    (sizes, d.groups[0].assignor_name.to_string())
}

#[test]
fn range_and_uniform_assignors_as_the_members_ask() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, FAST);
    kafka::create_topics(&broker, &[("left", 3), ("right", 3)]);
    // Range: per topic, 2 + 1 partitions, the same member first in both: 4 and 2.
    let (sizes, name) = two_member_assignment(&broker, "kip848-range", "range");
    assert_eq!((sizes, name.as_str()), (vec![2, 4], "range"));
    // Uniform: balanced over all six: 3 and 3.
    let (sizes, name) = two_member_assignment(&broker, "kip848-uniform", "uniform");
    assert_eq!((sizes, name.as_str()), (vec![3, 3], "uniform"));
    // An id that is no consumer group.
    let mut s = connect(&broker);
    let d: ConsumerGroupDescribeResponse = roundtrip(
        &mut s,
        ApiKey::ConsumerGroupDescribe,
        1,
        &ConsumerGroupDescribeRequest::default().with_group_ids(vec![gid("kip848-nothing")]),
    );
    assert_eq!(d.groups[0].error_code, 69, "GROUP_ID_NOT_FOUND");
}

#[test]
fn a_static_member_restarting_within_the_session_timeout_keeps_its_partitions() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, FAST);
    kafka::create_topic(&broker, "static", 4, &[]);
    let a = member(&broker, "kip848-static", &[("group.instance.id", "a")]);
    let b = member(&broker, "kip848-static", &[("group.instance.id", "b")]);
    a.subscribe(&["static"]).expect("subscribe");
    b.subscribe(&["static"]).expect("subscribe");
    poll_until("a 2/2 split", Duration::from_secs(60), &[&a, &b], |o| {
        o[0].len() == 2 && o[1].len() == 2
    });
    let (a_parts, b_parts) = (partitions_of(&a), partitions_of(&b));
    // a closes (epoch -2: a static member leaving for now) and comes back.
    drop(a);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let _ = b.poll(Duration::from_millis(50));
        assert_eq!(partitions_of(&b), b_parts, "b keeps only its own meanwhile");
    }
    let a = member(&broker, "kip848-static", &[("group.instance.id", "a")]);
    a.subscribe(&["static"]).expect("subscribe");
    poll_until(
        "a to get its partitions back",
        Duration::from_secs(30),
        &[&a, &b],
        |o| !o[0].is_empty(),
    );
    assert_eq!(partitions_of(&a), a_parts, "the same partitions as before");
    assert_eq!(partitions_of(&b), b_parts);
}

#[test]
fn classic_and_consumer_groups_read_one_topic_side_by_side() {
    let (_tmp, data) = data_dir();
    // Without online migration (`disabled`) the two kinds refuse each other's members.
    let disabled = [
        FAST,
        &[("PORTASK_KAFKA__GROUP_CONSUMER_MIGRATION_POLICY", "disabled")],
    ]
    .concat();
    let broker = Broker::start(&data, &disabled);
    kafka::create_topic(&broker, "shared", 3, &[]);
    produce(&broker, "shared", 0, 300);
    let old = classic(&broker, "kip848-classic");
    let new = member(&broker, "kip848-new", &[]);
    old.subscribe(&["shared"]).expect("subscribe");
    new.subscribe(&["shared"]).expect("subscribe");
    let (mut a, mut b) = (HashSet::new(), HashSet::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while (a.len() < 300 || b.len() < 300) && Instant::now() < deadline {
        if let Some(Ok(m)) = old.poll(Duration::from_millis(20)) {
            a.insert(value(&m));
        }
        if let Some(Ok(m)) = new.poll(Duration::from_millis(20)) {
            b.insert(value(&m));
        }
    }
    assert_eq!(a.len(), 300, "the classic group reads everything");
    assert_eq!(b.len(), 300, "the consumer group reads everything");
    // ListGroups v5 tells their types apart, and filters by type.
    let mut s = connect(&broker);
    let l: ListGroupsResponse = roundtrip(
        &mut s,
        ApiKey::ListGroups,
        5,
        &ListGroupsRequest::default()
            .with_types_filter(vec![StrBytes::from_static_str("consumer")]),
    );
    let ids: Vec<String> = l.groups.iter().map(|g| g.group_id.to_string()).collect();
    assert_eq!(ids, vec!["kip848-new".to_owned()]);
    assert_eq!(l.groups[0].group_type.as_str(), "consumer");
    // A consumer member cannot join the classic group that has members, and the reverse
    // (migration disabled; `kafka_group_migration.rs` has the online migration).
    let hb: ConsumerGroupHeartbeatResponse = roundtrip(
        &mut s,
        ApiKey::ConsumerGroupHeartbeat,
        1,
        &join_request("kip848-classic", "raw-1"),
    );
    assert_eq!(
        hb.error_code, 69,
        "GROUP_ID_NOT_FOUND: not a consumer group"
    );
    let j: JoinGroupResponse = roundtrip(&mut s, ApiKey::JoinGroup, 5, &classic_join("kip848-new"));
    assert_eq!(j.error_code, 23, "INCONSISTENT_GROUP_PROTOCOL");
    // DescribeGroups answers a consumer group as Kafka 4 does.
    let d: DescribeGroupsResponse = roundtrip(
        &mut s,
        ApiKey::DescribeGroups,
        6,
        &DescribeGroupsRequest::default().with_groups(vec![gid("kip848-new")]),
    );
    assert_eq!(d.groups[0].error_code, 69);
    assert_eq!(d.groups[0].group_state.as_str(), "Dead");
}

#[test]
fn an_empty_classic_group_becomes_a_consumer_group_with_its_offsets_and_back() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, FAST);
    kafka::create_topic(&broker, "convert", 2, &[]);
    produce(&broker, "convert", 0, 100);
    let old = classic(&broker, "kip848-convert");
    old.subscribe(&["convert"]).expect("subscribe");
    assert_eq!(consume(&old, 40, Duration::from_secs(60)).len(), 40);
    old.unsubscribe();
    drop(old);
    // The same group id with the consumer protocol resumes after the 40.
    let new = member(&broker, "kip848-convert", &[]);
    new.subscribe(&["convert"]).expect("subscribe");
    let got = consume(&new, 30, Duration::from_secs(60));
    assert_eq!(got.len(), 30);
    let mut s = connect(&broker);
    let d: ConsumerGroupDescribeResponse = roundtrip(
        &mut s,
        ApiKey::ConsumerGroupDescribe,
        1,
        &ConsumerGroupDescribeRequest::default().with_group_ids(vec![gid("kip848-convert")]),
    );
    assert_eq!(d.groups[0].error_code, 0);
    assert_eq!(d.groups[0].members.len(), 1);
    new.unsubscribe();
    drop(new);
    // Empty again: a classic member turns it back and resumes after the 70.
    let old = classic(&broker, "kip848-convert");
    old.subscribe(&["convert"]).expect("subscribe");
    let got = consume(&old, 30, Duration::from_secs(60));
    assert_eq!(got.len(), 30);
    let all: HashSet<usize> = got.into_iter().collect();
    assert_eq!(all.len(), 30, "no record twice");
    let _ = old.poll(Duration::from_millis(500));
    assert!(
        old.poll(Duration::from_millis(500)).is_none(),
        "nothing beyond the 100"
    );
}

#[test]
fn after_kill_9_the_group_resumes_from_committed_offsets() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, FAST);
    kafka::create_topic(&broker, "ledger", 2, &[]);
    produce(&broker, "ledger", 0, 100);
    let c = member(&broker, "kip848-crash", &[]);
    c.subscribe(&["ledger"]).expect("subscribe");
    let first = consume(&c, 60, Duration::from_secs(60));
    assert_eq!(first.len(), 60);
    broker.kill9();
    drop(c);
    broker.restart();
    let c = member(&broker, "kip848-crash", &[]);
    c.subscribe(&["ledger"]).expect("subscribe");
    let rest = consume(&c, 40, Duration::from_secs(60));
    let first: HashSet<usize> = first.into_iter().collect();
    let rest: HashSet<usize> = rest.into_iter().collect();
    assert_eq!(rest.len(), 40, "the 40 not yet consumed follow");
    assert!(first.is_disjoint(&rest), "no committed record again");
}

#[test]
fn a_regex_subscription_follows_topics_created_and_partitions_added() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, FAST);
    kafka::create_topics(&broker, &[("grow-a", 1), ("other", 1)]);
    produce(&broker, "grow-a", 0, 10);
    produce(&broker, "other", 1000, 10);
    let c = member(&broker, "kip848-regex", &[]);
    c.subscribe(&["^grow-.*"]).expect("subscribe");
    let mut got = consume(&c, 10, Duration::from_secs(60));
    assert_eq!(got.len(), 10, "grow-a read");
    // A new matching topic is assigned and read.
    kafka::create_topic(&broker, "grow-b", 2, &[]);
    produce(&broker, "grow-b", 100, 10);
    got.extend(consume(&c, 10, Duration::from_secs(60)));
    // Partitions added to a subscribed topic are assigned too.
    let admin = kafka::admin(&broker);
    let r = futures::executor::block_on(admin.create_partitions(
        &[rdkafka::admin::NewPartitions::new("grow-a", 3)],
        &rdkafka::admin::AdminOptions::new(),
    ))
    .expect("create partitions");
    assert!(r[0].is_ok(), "{r:?}");
    poll_until(
        "grow-a's new partitions",
        Duration::from_secs(60),
        &[&c],
        |o| o[0].iter().filter(|(t, _)| t == "grow-a").count() == 3,
    );
    let p: FutureProducer = kafka::client(&broker, &[]);
    for partition in 1..3 {
        let v = format!("{}", 200 + partition);
        kafka::delivered(kafka::enqueue(
            &p,
            FutureRecord::to("grow-a")
                .partition(partition)
                .key(v.as_str())
                .payload(v.as_str()),
        ));
    }
    got.extend(consume(&c, 2, Duration::from_secs(60)));
    // The broker resolved the regex (ConsumerGroupHeartbeat v1's subscribed_topic_regex).
    let mut s = connect(&broker);
    let d: ConsumerGroupDescribeResponse = roundtrip(
        &mut s,
        ApiKey::ConsumerGroupDescribe,
        1,
        &ConsumerGroupDescribeRequest::default().with_group_ids(vec![gid("kip848-regex")]),
    );
    let m = &d.groups[0].members[0];
    let regex = m.subscribed_topic_regex.as_ref().map(|r| r.to_string());
    assert!(regex.is_some_and(|r| r.contains("^grow-.*")), "{m:?}");
    assert_eq!(m.assignment.topic_partitions.len(), 2, "grow-a and grow-b");
    got.sort();
    let expected: Vec<usize> = (0..10).chain(100..110).chain(201..203).collect();
    assert_eq!(got, expected, "every matching record once, none of `other`");
}

/// Consume-transform-produce from a consumer-protocol member: the transaction's offsets
/// (TxnOffsetCommit with the member id and epoch) are checked against the member's epoch,
/// not a classic generation, and committed with the transaction.
#[test]
fn a_member_commits_its_offsets_in_a_transaction() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, FAST);
    kafka::create_topics(&broker, &[("txn-in", 1), ("txn-out", 1)]);
    produce(&broker, "txn-in", 0, 10);
    let c = member(
        &broker,
        "kip848-txn",
        &[("isolation.level", "read_committed")],
    );
    c.subscribe(&["txn-in"]).expect("subscribe");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < 10 && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            got.push(value(&m));
        }
    }
    assert_eq!(got.len(), 10);
    let p: rdkafka::producer::BaseProducer =
        kafka::client(&broker, &[("transactional.id", "kip848-tx")]);
    let t = Duration::from_secs(30);
    p.init_transactions(t).expect("init transactions");
    p.begin_transaction().expect("begin");
    for v in &got {
        let v = v.to_string();
        p.send(rdkafka::producer::BaseRecord::<(), _>::to("txn-out").payload(v.as_str()))
            .expect("send");
    }
    let positions = c.position().expect("position");
    p.send_offsets_to_transaction(&positions, &c.group_metadata().expect("group"), t)
        .expect("the member's offsets join the transaction");
    p.commit_transaction(t).expect("commit");
    // The transaction's offsets are committed once its markers are written.
    wait_until(
        "the offsets of the transaction",
        Duration::from_secs(20),
        || {
            let committed = c.committed(Duration::from_secs(10)).expect("committed");
            let offset = committed.elements().first().map(|e| e.offset());
            offset == Some(rdkafka::Offset::Offset(10))
        },
    );
}

#[test]
fn heartbeat_errors_are_kafkas() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, FAST);
    kafka::create_topic(&broker, "raw", 2, &[]);
    let mut s = connect(&broker);
    // Both APIs are advertised.
    let v: ApiVersionsResponse = roundtrip(
        &mut s,
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    );
    for key in [
        ApiKey::ConsumerGroupHeartbeat,
        ApiKey::ConsumerGroupDescribe,
    ] {
        let k = v.api_keys.iter().find(|k| k.api_key == key as i16);
        assert_eq!(
            k.map(|k| (k.min_version, k.max_version)),
            Some((0, 1)),
            "{key:?}"
        );
    }
    // An assignor the broker does not have.
    let mut bad = join_request("kip848-raw", "m1");
    bad.server_assignor = Some(StrBytes::from_static_str("sticky"));
    let r: ConsumerGroupHeartbeatResponse =
        roundtrip(&mut s, ApiKey::ConsumerGroupHeartbeat, 1, &bad);
    assert_eq!(r.error_code, 112, "UNSUPPORTED_ASSIGNOR");
    // A join: epoch 1, both partitions.
    let r: ConsumerGroupHeartbeatResponse = roundtrip(
        &mut s,
        ApiKey::ConsumerGroupHeartbeat,
        1,
        &join_request("kip848-raw", "m1"),
    );
    assert_eq!((r.error_code, r.member_epoch), (0, 1));
    assert_eq!(r.heartbeat_interval_ms, 300);
    let assigned = r.assignment.expect("assignment");
    assert_eq!(assigned.topic_partitions[0].partitions.len(), 2);
    // An epoch ahead of the member's is fenced; an unknown member is refused.
    let beat = |member: &str, epoch: i32| {
        ConsumerGroupHeartbeatRequest::default()
            .with_group_id(gid("kip848-raw"))
            .with_member_id(StrBytes::from_string(member.to_owned()))
            .with_member_epoch(epoch)
            .with_rebalance_timeout_ms(-1)
    };
    let r: ConsumerGroupHeartbeatResponse =
        roundtrip(&mut s, ApiKey::ConsumerGroupHeartbeat, 1, &beat("m1", 7));
    assert_eq!(r.error_code, 110, "FENCED_MEMBER_EPOCH");
    let r: ConsumerGroupHeartbeatResponse =
        roundtrip(&mut s, ApiKey::ConsumerGroupHeartbeat, 1, &beat("who", 1));
    assert_eq!(r.error_code, 25, "UNKNOWN_MEMBER_ID");
    // A regex that does not compile.
    let mut re = join_request("kip848-raw", "m2");
    re.subscribed_topic_names = None;
    re.subscribed_topic_regex = Some(StrBytes::from_static_str("(unclosed"));
    let r: ConsumerGroupHeartbeatResponse =
        roundtrip(&mut s, ApiKey::ConsumerGroupHeartbeat, 1, &re);
    assert_eq!(r.error_code, 128, "INVALID_REGULAR_EXPRESSION");
    // An empty group id.
    let r: ConsumerGroupHeartbeatResponse = roundtrip(
        &mut s,
        ApiKey::ConsumerGroupHeartbeat,
        1,
        &join_request("", "m3"),
    );
    assert_eq!(r.error_code, 42, "INVALID_REQUEST");
    // OffsetCommit and OffsetFetch v9 check the member's epoch (STALE_MEMBER_EPOCH).
    let commit = |epoch: i32| {
        OffsetCommitRequest::default()
            .with_group_id(gid("kip848-raw"))
            .with_member_id(StrBytes::from_static_str("m1"))
            .with_generation_id_or_member_epoch(epoch)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("raw")))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(5)])])
    };
    let r: OffsetCommitResponse = roundtrip(&mut s, ApiKey::OffsetCommit, 9, &commit(0));
    assert_eq!(
        r.topics[0].partitions[0].error_code, 113,
        "STALE_MEMBER_EPOCH"
    );
    let r: OffsetCommitResponse = roundtrip(&mut s, ApiKey::OffsetCommit, 9, &commit(1));
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    let fetch = |epoch: i32| {
        OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
            .with_group_id(gid("kip848-raw"))
            .with_member_id(Some(StrBytes::from_static_str("m1")))
            .with_member_epoch(epoch)
            .with_topics(None)])
    };
    let r: OffsetFetchResponse = roundtrip(&mut s, ApiKey::OffsetFetch, 9, &fetch(0));
    assert_eq!(r.groups[0].error_code, 113, "STALE_MEMBER_EPOCH");
    let r: OffsetFetchResponse = roundtrip(&mut s, ApiKey::OffsetFetch, 9, &fetch(1));
    assert_eq!(r.groups[0].error_code, 0);
    assert_eq!(r.groups[0].topics[0].partitions[0].committed_offset, 5);
    // Leaving: epoch -1 back.
    let r: ConsumerGroupHeartbeatResponse =
        roundtrip(&mut s, ApiKey::ConsumerGroupHeartbeat, 1, &beat("m1", -1));
    assert_eq!((r.error_code, r.member_epoch), (0, -1));
}

#[test]
fn heartbeats_and_describes_follow_the_acls() {
    let (_tmp, data) = data_dir();
    let anyone = "User:ANONYMOUS";
    let bindings = format!(
        r#"[{{resource_type = "cluster", principal = "{anyone}", operations = ["create"]}},
            {{resource_type = "group", resource_name = "kip848-ok", principal = "{anyone}", operations = ["read", "describe"]}},
            {{resource_type = "topic", resource_name = "raw", principal = "{anyone}", operations = ["describe", "read"]}}]"#
    );
    let mut env = vec![
        ("PORTASK_ACL__ENABLED", "true"),
        ("PORTASK_ACL__BINDINGS", bindings.as_str()),
    ];
    env.extend_from_slice(FAST);
    let broker = Broker::start(&data, &env);
    kafka::create_topics(&broker, &[("raw", 1), ("hidden", 1)]);
    let mut s = connect(&broker);
    // READ on the group.
    let r: ConsumerGroupHeartbeatResponse = roundtrip(
        &mut s,
        ApiKey::ConsumerGroupHeartbeat,
        1,
        &join_request("kip848-no", "m1"),
    );
    assert_eq!(r.error_code, 30, "GROUP_AUTHORIZATION_FAILED");
    // DESCRIBE on every subscribed topic.
    let mut hidden = join_request("kip848-ok", "m1");
    hidden.subscribed_topic_names = Some(vec![
        TopicName(StrBytes::from_static_str("raw")),
        TopicName(StrBytes::from_static_str("hidden")),
    ]);
    let r: ConsumerGroupHeartbeatResponse =
        roundtrip(&mut s, ApiKey::ConsumerGroupHeartbeat, 1, &hidden);
    assert_eq!(r.error_code, 29, "TOPIC_AUTHORIZATION_FAILED");
    let r: ConsumerGroupHeartbeatResponse = roundtrip(
        &mut s,
        ApiKey::ConsumerGroupHeartbeat,
        1,
        &join_request("kip848-ok", "m1"),
    );
    assert_eq!((r.error_code, r.member_epoch), (0, 1));
    // DESCRIBE on the group for ConsumerGroupDescribe.
    let d: ConsumerGroupDescribeResponse = roundtrip(
        &mut s,
        ApiKey::ConsumerGroupDescribe,
        1,
        &ConsumerGroupDescribeRequest::default()
            .with_group_ids(vec![gid("kip848-ok"), gid("kip848-no")]),
    );
    assert_eq!(d.groups[0].error_code, 0);
    assert_eq!(
        d.groups[0].members[0].assignment.topic_partitions[0]
            .topic_name
            .as_str(),
        "raw"
    );
    assert_eq!(d.groups[1].error_code, 30, "GROUP_AUTHORIZATION_FAILED");
}

fn gid(id: &str) -> GroupId {
    GroupId(StrBytes::from_string(id.to_owned()))
}

fn join_request(group: &str, member: &str) -> ConsumerGroupHeartbeatRequest {
    ConsumerGroupHeartbeatRequest::default()
        .with_group_id(gid(group))
        .with_member_id(StrBytes::from_string(member.to_owned()))
        .with_member_epoch(0)
        .with_rebalance_timeout_ms(30_000)
        .with_subscribed_topic_names(Some(vec![TopicName(StrBytes::from_static_str("raw"))]))
        .with_topic_partitions(Some(Vec::new()))
}

fn classic_join(group: &str) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(gid(group))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(StrBytes::from_static_str(""))
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(StrBytes::from_static_str("range"))
            .with_metadata(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))])
}

fn connect(broker: &Broker) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", broker.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s
}

/// Sends one request at `version` and decodes its response.
fn roundtrip<Req: Encodable + HeaderVersion, Resp: Decodable + HeaderVersion>(
    s: &mut TcpStream,
    api: ApiKey,
    version: i16,
    body: &Req,
) -> Resp {
    s.write_all(&kafka::request_frame(api, version, 7, "raw", body))
        .expect("write");
    let mut resp = kafka::read_frame(s).expect("response");
    let header = ResponseHeader::decode(&mut resp, api.response_header_version(version))
        .expect("response header");
    assert_eq!(header.correlation_id, 7);
    Resp::decode(&mut resp, version).expect("response body")
}

//! Consumer groups through librdkafka against the real broker: rebalances as members come
//! and go (eager and cooperative-sticky), committed offsets across `kill -9`, and a member
//! that stops heartbeating losing its partitions.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{data_dir, kafka, Broker, FAST_GROUPS};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::{
    ApiKey, GroupId, JoinGroupRequest, JoinGroupResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

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

fn group_consumer(
    broker: &Broker,
    group: &str,
    strategy: &str,
    extra: &[(&str, &str)],
) -> BaseConsumer {
    let mut settings = vec![
        ("group.id", group),
        ("enable.auto.commit", "false"),
        ("auto.offset.reset", "earliest"),
        ("partition.assignment.strategy", strategy),
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ];
    settings.extend_from_slice(extra);
    kafka::client(broker, &settings)
}

/// What every member of the test group saw.
#[derive(Default)]
struct Seen {
    /// value → how many times it was delivered
    deliveries: HashMap<usize, usize>,
    /// values processed whose commit failed (may be delivered again, legitimately)
    uncommitted: HashSet<usize>,
    assignments: HashMap<usize, Vec<i32>>,
}

struct Member {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

fn spawn_member(
    broker: &Broker,
    id: usize,
    group: &str,
    strategy: &str,
    topic: &str,
    seen: Arc<Mutex<Seen>>,
) -> Member {
    let c = group_consumer(broker, group, strategy, &[]);
    c.subscribe(&[topic]).expect("subscribe");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let v: usize = std::str::from_utf8(m.payload().unwrap_or_default())
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .expect("numeric payload");
                    let committed = c.commit_message(&m, CommitMode::Sync).is_ok();
                    let mut s = seen.lock().expect("lock");
                    *s.deliveries.entry(v).or_default() += 1;
                    if !committed {
                        s.uncommitted.insert(v);
                    }
                }
                Some(Err(e)) => eprintln!("member {id}: {e}"),
                None => {}
            }
            if let Ok(a) = c.assignment() {
                let parts: Vec<i32> = a.elements().iter().map(|e| e.partition()).collect();
                seen.lock().expect("lock").assignments.insert(id, parts);
            }
        }
        // Graceful close: LeaveGroup.
        c.unsubscribe();
        drop(c);
        seen.lock().expect("lock").assignments.remove(&id);
    });
    Member { stop, handle }
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rebalance_scenario(strategy: &str) {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, FAST_GROUPS);
    kafka::create_topic(&broker, "work", 6, &[]);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let group = format!("workers-{strategy}");
    let mut members: Vec<Member> = (0..3)
        .map(|i| spawn_member(&broker, i, &group, strategy, "work", seen.clone()))
        .collect();
    // Three members share all six partitions.
    wait_until(
        "three members to own all six partitions",
        Duration::from_secs(60),
        || {
            let s = seen.lock().expect("lock");
            let owners = s.assignments.values().filter(|p| !p.is_empty()).count();
            let mut all: Vec<i32> = s.assignments.values().flatten().copied().collect();
            all.sort();
            owners == 3 && all == vec![0, 1, 2, 3, 4, 5]
        },
    );
    produce(&broker, "work", 0, 2000);
    wait_until("the first 2000", Duration::from_secs(60), || {
        seen.lock().expect("lock").deliveries.len() >= 2000
    });
    // A fourth member joins while messages flow.
    members.push(spawn_member(
        &broker,
        3,
        &group,
        strategy,
        "work",
        seen.clone(),
    ));
    produce(&broker, "work", 2000, 2000);
    wait_until(
        "four members to share the partitions",
        Duration::from_secs(60),
        || {
            let s = seen.lock().expect("lock");
            let mut all: Vec<i32> = s.assignments.values().flatten().copied().collect();
            all.sort();
            s.assignments.values().filter(|p| !p.is_empty()).count() == 4
                && all == vec![0, 1, 2, 3, 4, 5]
        },
    );
    // One leaves.
    let leaving = members.remove(0);
    leaving.stop.store(true, Ordering::SeqCst);
    leaving.handle.join().expect("member thread");
    produce(&broker, "work", 4000, 2000);
    wait_until("every message consumed", Duration::from_secs(90), || {
        seen.lock().expect("lock").deliveries.len() >= 6000
    });
    wait_until(
        "the three remaining members to own everything",
        Duration::from_secs(60),
        || {
            let s = seen.lock().expect("lock");
            let mut all: Vec<i32> = s.assignments.values().flatten().copied().collect();
            all.sort();
            all == vec![0, 1, 2, 3, 4, 5]
        },
    );
    for m in members {
        m.stop.store(true, Ordering::SeqCst);
        m.handle.join().expect("member thread");
    }
    let s = seen.lock().expect("lock");
    for v in 0..6000 {
        let n = s.deliveries.get(&v).copied().unwrap_or(0);
        assert!(n >= 1, "message {v} lost");
        if n > 1 {
            assert!(
                s.uncommitted.contains(&v),
                "message {v} delivered {n} times though its commit succeeded"
            );
        }
    }
}

#[test]
fn group_rebalances_as_members_join_and_leave_eager() {
    rebalance_scenario("range");
}

#[test]
fn group_rebalances_as_members_join_and_leave_cooperative_sticky() {
    rebalance_scenario("cooperative-sticky");
}

#[test]
fn committed_offsets_survive_kill_9() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, FAST_GROUPS);
    kafka::create_topic(&broker, "ledger", 2, &[]);
    produce(&broker, "ledger", 0, 100);
    // A consumer that assigns its partitions and commits into group "auditors".
    let c = group_consumer(&broker, "auditors", "range", &[]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("ledger", 0, Offset::Beginning)
        .expect("tpl");
    tpl.add_partition_offset("ledger", 1, Offset::Beginning)
        .expect("tpl");
    c.assign(&tpl).expect("assign");
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < 60 && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            c.commit_message(&m, CommitMode::Sync).expect("commit");
            got += 1;
        }
    }
    assert_eq!(got, 60);
    let before: HashMap<i32, Offset> = c
        .committed(Duration::from_secs(10))
        .expect("committed offsets")
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect();
    drop(c);
    broker.kill9();
    broker.restart();
    // After the crash the group's offsets are what was acknowledged.
    let c = group_consumer(&broker, "auditors", "range", &[]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("ledger", 0);
    tpl.add_partition("ledger", 1);
    let after = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed after restart");
    for e in after.elements() {
        assert_eq!(
            Some(&e.offset()),
            before.get(&e.partition()),
            "partition {}",
            e.partition()
        );
    }
    // Resuming from the stored offsets yields exactly the 40 uncommitted messages.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("ledger", 0, Offset::Stored)
        .expect("tpl");
    tpl.add_partition_offset("ledger", 1, Offset::Stored)
        .expect("tpl");
    c.assign(&tpl).expect("assign");
    let mut rest = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rest.len() < 40 && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let start = match before.get(&m.partition()) {
                Some(Offset::Offset(o)) => *o,
                _ => 0,
            };
            assert!(
                m.offset() >= start,
                "re-delivered committed offset {} of {}",
                m.offset(),
                m.partition()
            );
            rest.insert((m.partition(), m.offset()));
        }
    }
    assert_eq!(rest.len(), 40, "the 40 uncommitted messages follow");
}

/// A raw group member: joins with the consumer protocol, syncs, then never heartbeats.
fn raw_member_joins_and_goes_silent(port: u16, group: &str, topic: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut metadata = BytesMut::new();
    metadata.put_i16(0);
    metadata.put_i32(1);
    metadata.put_i16(topic.len() as i16);
    metadata.put_slice(topic.as_bytes());
    metadata.put_i32(-1);
    let join = |s: &mut TcpStream, member: &str, corr: i32| -> JoinGroupResponse {
        let req = JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
            .with_session_timeout_ms(1500)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(StrBytes::from_string(member.to_owned()))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(metadata.clone().freeze())]);
        let mut resp = roundtrip(s, ApiKey::JoinGroup, 5, corr, &req);
        JoinGroupResponse::decode(&mut resp, 5).expect("join response")
    };
    let first = join(&mut s, "", 1);
    assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED");
    let member = first.member_id.to_string();
    let joined = join(&mut s, &member, 2);
    assert_eq!(joined.error_code, 0);
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
        .with_generation_id(joined.generation_id)
        .with_member_id(StrBytes::from_string(member));
    let mut resp = roundtrip(&mut s, ApiKey::SyncGroup, 3, 3, &sync);
    let synced = SyncGroupResponse::decode(&mut resp, 3).expect("sync response");
    assert_eq!(synced.error_code, 0);
    s
}

fn roundtrip<R: Encodable>(
    s: &mut TcpStream,
    api: ApiKey,
    version: i16,
    corr: i32,
    body: &R,
) -> Bytes {
    s.write_all(&kafka::request_frame(
        api,
        version,
        corr,
        "raw-member",
        body,
    ))
    .expect("write");
    let mut resp = kafka::read_frame(s).expect("response");
    assert_eq!(resp.get_i32(), corr);
    resp
}

#[test]
fn a_member_that_stops_heartbeating_loses_its_partitions() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, FAST_GROUPS);
    kafka::create_topic(&broker, "beats", 6, &[]);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let live = spawn_member(&broker, 0, "beaters", "range", "beats", seen.clone());
    wait_until(
        "the live member to own all partitions",
        Duration::from_secs(60),
        || {
            seen.lock()
                .expect("lock")
                .assignments
                .get(&0)
                .is_some_and(|p| p.len() == 6)
        },
    );
    // The silent member joins (the live one rejoins and, as leader, gives it half).
    let port = broker.port;
    let silent =
        std::thread::spawn(move || raw_member_joins_and_goes_silent(port, "beaters", "beats"));
    wait_until(
        "the partitions to be shared",
        Duration::from_secs(60),
        || {
            seen.lock()
                .expect("lock")
                .assignments
                .get(&0)
                .is_some_and(|p| p.len() == 3)
        },
    );
    let _socket = silent.join().expect("raw member");
    // After its 1.5 s session lapses the silent member is removed and everything moves back.
    wait_until(
        "the silent member's partitions to move",
        Duration::from_secs(30),
        || {
            seen.lock()
                .expect("lock")
                .assignments
                .get(&0)
                .is_some_and(|p| p.len() == 6)
        },
    );
    assert!(broker.log().contains("expired"), "{}", broker.log());
    produce(&broker, "beats", 0, 60);
    wait_until(
        "all messages consumed by the live member",
        Duration::from_secs(30),
        || seen.lock().expect("lock").deliveries.len() >= 60,
    );
    live.stop.store(true, Ordering::SeqCst);
    live.handle.join().expect("member");
}

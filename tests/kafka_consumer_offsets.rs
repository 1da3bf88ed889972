//! `__consumer_offsets` as Kafka lays it out: an rdkafka group commits, another rdkafka
//! consumer reads the internal topic from the beginning and decodes the records with the
//! reader below (written from Kafka's `OffsetCommitKey`/`OffsetCommitValue` and
//! `GroupMetadataKey` schemas, not with the broker's encoder); the records survive a
//! restart; clients cannot produce to the topic, delete it or add partitions to it; a data
//! dir whose offsets predate the topic gets them written once; and Debian's Burrow (the lag
//! monitor, which reads the topic) reports the lag Portask's HTTP API reports.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use common::{data_dir, kafka, Broker, FAST_GROUPS};
use futures::executor::block_on;
use rdkafka::admin::{AdminOptions, NewPartitions, ResourceSpecifier};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::Offset;
use serde_json::Value;

const PARTITIONS: i32 = 50;

/// Kafka's `partitionFor`: Java's `String.hashCode`, sign bit masked, modulo partitions.
fn partition_for(group: &str) -> i32 {
    let mut h: i32 = 0;
    for c in group.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(c as i32);
    }
    (h & 0x7fff_ffff) % PARTITIONS
}

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    /// (group, topic, partition, offset; None for a tombstone)
    Offset(String, String, i32, Option<i64>),
    /// (group, protocol type, generation, member count; None for a tombstone)
    Group(String, Option<(String, i32, i32)>),
}

fn string(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_i16();
    if n < 0 {
        return Some(String::new());
    }
    let n = n as usize;
    if b.remaining() < n {
        return None;
    }
    String::from_utf8(b.split_to(n).to_vec()).ok()
}

/// Decodes one `__consumer_offsets` record.
fn decode(key: &[u8], value: Option<&[u8]>) -> Option<Entry> {
    let mut k = Bytes::copy_from_slice(key);
    let version = k.get_i16();
    match version {
        0 | 1 => {
            let group = string(&mut k)?;
            let topic = string(&mut k)?;
            let partition = k.get_i32();
            let offset = value.map(|v| {
                let mut v = Bytes::copy_from_slice(v);
                let _value_version = v.get_i16();
                v.get_i64()
            });
            Some(Entry::Offset(group, topic, partition, offset))
        }
        2 => {
            let group = string(&mut k)?;
            let value = match value {
                None => None,
                Some(v) => {
                    let mut v = Bytes::copy_from_slice(v);
                    let value_version = v.get_i16();
                    assert_eq!(value_version, 3, "GroupMetadataValue version");
                    let protocol_type = string(&mut v)?;
                    let generation = v.get_i32();
                    let _protocol = string(&mut v)?;
                    let _leader = string(&mut v)?;
                    let _state_ts = v.get_i64();
                    let members = v.get_i32();
                    Some((protocol_type, generation, members))
                }
            };
            Some(Entry::Group(group, value))
        }
        _ => None,
    }
}

/// Reads `__consumer_offsets` partition `partition` from the beginning until `done` holds
/// for what was read (or 20 s pass); returns what was read.
fn read_topic(broker: &Broker, partition: i32, done: impl Fn(&[Entry]) -> bool) -> Vec<Entry> {
    read_topic_until(broker, partition, |e, _| done(e))
}

/// `read_topic` with a `done` that is also told how long nothing new has been read.
fn read_topic_until(
    broker: &Broker,
    partition: i32,
    done: impl Fn(&[Entry], Duration) -> bool,
) -> Vec<Entry> {
    let c: BaseConsumer = kafka::client(
        broker,
        &[
            ("group.id", "offsets-reader"),
            ("enable.auto.commit", "false"),
        ],
    );
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("__consumer_offsets", partition, Offset::Beginning)
        .expect("tpl");
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_read = Instant::now();
    while Instant::now() < deadline && !done(&out, last_read.elapsed()) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            if let Some(e) = m.key().and_then(|k| decode(k, m.payload())) {
                out.push(e);
                last_read = Instant::now();
            }
        }
    }
    out
}

/// The latest committed offset per (group, topic, partition) in what was read.
fn latest(entries: &[Entry]) -> HashMap<(String, String, i32), Option<i64>> {
    let mut m = HashMap::new();
    for e in entries {
        if let Entry::Offset(g, t, p, o) = e {
            m.insert((g.clone(), t.clone(), *p), *o);
        }
    }
    m
}

#[test]
fn committed_offsets_and_group_metadata_are_readable_and_survive_a_restart() {
    let (_dir, data) = data_dir();
    let mut broker = Broker::start_with_shards(&data, FAST_GROUPS, 2);
    kafka::create_topic(&broker, "orders", 2, &[]);
    let p: rdkafka::producer::FutureProducer = kafka::client(&broker, &[]);
    for i in 0..10 {
        let k = format!("k{i}");
        let f = kafka::enqueue(
            &p,
            FutureRecord::to("orders")
                .key(k.as_str())
                .payload("v")
                .partition(i % 2),
        );
        kafka::delivered(f);
    }

    let group = "lag-group";
    let c: BaseConsumer = kafka::client(
        &broker,
        &[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", "6000"),
        ],
    );
    c.subscribe(&["orders"]).expect("subscribe");
    assert_eq!(kafka::poll_n(&c, 10, Duration::from_secs(30), |_| {}), 10);
    c.commit_consumer_state(CommitMode::Sync).expect("commit");

    let want = |entries: &[Entry]| {
        let l = latest(entries);
        l.get(&(group.into(), "orders".into(), 0)) == Some(&Some(5))
            && l.get(&(group.into(), "orders".into(), 1)) == Some(&Some(5))
            && entries.iter().any(|e| {
                matches!(e, Entry::Group(g, Some((pt, gen, members)))
                    if g == group && pt == "consumer" && *gen >= 1 && *members == 1)
            })
    };
    let at = partition_for(group);
    let before = read_topic(&broker, at, want);
    assert!(
        want(&before),
        "read from __consumer_offsets-{at}: {before:?}"
    );
    drop(c);

    // Producing to the internal topic is refused, as Kafka refuses a client.
    let p: rdkafka::producer::FutureProducer =
        kafka::client(&broker, &[("message.timeout.ms", "5000")]);
    let r = block_on(
        p.send(
            FutureRecord::to("__consumer_offsets")
                .key("x")
                .payload("y")
                .partition(0),
            Duration::from_secs(5),
        ),
    );
    match r {
        Err((KafkaError::MessageProduction(code), _)) => {
            assert_eq!(code, RDKafkaErrorCode::InvalidTopic)
        }
        other => panic!("produce to __consumer_offsets: {other:?}"),
    }
    // Nor deleted, nor repartitioned.
    let admin = kafka::admin(&broker);
    let del = block_on(admin.delete_topics(&["__consumer_offsets"], &AdminOptions::new()))
        .expect("delete_topics");
    assert!(del[0].is_err(), "{del:?}");
    let grow = block_on(admin.create_partitions(
        &[NewPartitions::new("__consumer_offsets", 60)],
        &AdminOptions::new(),
    ))
    .expect("create_partitions");
    assert!(grow[0].is_err(), "{grow:?}");
    // Nor are its records deleted: INVALID_TOPIC_EXCEPTION, as Kafka answers a client.
    let mut cut = rdkafka::TopicPartitionList::new();
    cut.add_partition_offset("__consumer_offsets", 0, rdkafka::Offset::Offset(1))
        .expect("partition offset");
    let deleted =
        block_on(admin.delete_records(&cut, &AdminOptions::new())).expect("delete_records");
    let part = deleted
        .find_partition("__consumer_offsets", 0)
        .expect("partition 0 in the answer");
    assert_eq!(
        part.error().err(),
        Some(rdkafka::error::KafkaError::OffsetFetch(
            rdkafka::types::RDKafkaErrorCode::InvalidTopic
        )),
        "{deleted:?}"
    );

    // DescribeConfigs shows the internal topic's configs.
    let configs = block_on(admin.describe_configs(
        &[ResourceSpecifier::Topic("__consumer_offsets")],
        &AdminOptions::new(),
    ))
    .expect("describe_configs");
    let resource = configs[0].as_ref().expect("configs");
    let policy = resource.get("cleanup.policy").and_then(|e| e.value.clone());
    assert_eq!(policy.as_deref(), Some("compact"));

    // Restart: the records are still there (a real partition log).
    broker.terminate();
    broker.restart();
    let after = read_topic(&broker, at, want);
    assert!(want(&after), "after restart: {after:?}");
}

#[test]
fn deleted_offsets_become_tombstones() {
    let (_dir, data) = data_dir();
    let broker = Broker::start_with_shards(&data, FAST_GROUPS, 2);
    kafka::create_topic(&broker, "events", 1, &[]);
    // A simple consumer (assign only) commits; then the group is deleted.
    let group = "simple-group";
    let c: BaseConsumer = kafka::client(
        &broker,
        &[("group.id", group), ("enable.auto.commit", "false")],
    );
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("events", 0, Offset::Offset(3))
        .expect("tpl");
    c.commit(&tpl, CommitMode::Sync).expect("commit");
    drop(c);
    let admin = kafka::admin(&broker);
    let r = block_on(admin.delete_groups(&[group], &AdminOptions::new())).expect("delete");
    assert!(r[0].is_ok(), "{r:?}");

    let at = partition_for(group);
    let key = (group.to_owned(), "events".to_owned(), 0);
    let entries = read_topic(&broker, at, |e| {
        e.contains(&Entry::Offset(key.0.clone(), key.1.clone(), 0, Some(3)))
            && latest(e).get(&key) == Some(&None)
            && e.contains(&Entry::Group(group.to_owned(), None))
    });
    assert!(
        entries.contains(&Entry::Offset(key.0.clone(), key.1.clone(), 0, Some(3))),
        "{entries:?}"
    );
    assert_eq!(latest(&entries).get(&key), Some(&None), "{entries:?}");
    assert!(
        entries.contains(&Entry::Group(group.to_owned(), None)),
        "{entries:?}"
    );
}

/// One group that consumed part of `orders` (2 partitions, 10 records, then 5 more to
/// partition 0) and committed 3 and 4: lag 7 on partition 0 and 1 on partition 1.
fn lagging_group(broker: &Broker, group: &str) {
    kafka::create_topic(broker, "orders", 2, &[]);
    let p: rdkafka::producer::FutureProducer = kafka::client(broker, &[]);
    for i in 0..15 {
        let f = kafka::enqueue(
            &p,
            FutureRecord::to("orders")
                .key("k")
                .payload("v")
                .partition(if i < 10 { i % 2 } else { 0 }),
        );
        kafka::delivered(f);
    }
    let c: BaseConsumer = kafka::client(
        broker,
        &[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("session.timeout.ms", "6000"),
        ],
    );
    c.subscribe(&["orders"]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.assignment().map(|a| a.count()).unwrap_or(0) < 2 {
        assert!(Instant::now() < deadline, "no assignment");
        let _ = c.poll(Duration::from_millis(200));
    }
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("orders", 0, Offset::Offset(3))
        .expect("tpl");
    tpl.add_partition_offset("orders", 1, Offset::Offset(4))
        .expect("tpl");
    c.commit(&tpl, CommitMode::Sync).expect("commit");
    c.unsubscribe();
}

#[test]
fn offsets_committed_before_the_topic_existed_are_written_once() {
    let (_dir, data) = data_dir();
    let mut broker = Broker::start_with_shards(&data, FAST_GROUPS, 2);
    let group = "old-group";
    lagging_group(&broker, group);
    broker.terminate();
    // What a data dir from before `__consumer_offsets` looks like to the view: committed
    // offsets in the group store, nothing in the topic and no "written" marker.
    for shard in ["0", "1"] {
        let dir = data.join(shard);
        let _ = std::fs::remove_file(dir.join("groups/offsets-topic.written"));
        for e in std::fs::read_dir(dir.join("kafka"))
            .expect("kafka dir")
            .flatten()
        {
            if e.file_name()
                .to_string_lossy()
                .starts_with("__consumer_offsets-")
            {
                std::fs::remove_dir_all(e.path()).expect("remove partition");
            }
        }
    }
    broker.restart();
    let at = partition_for(group);
    let want = |e: &[Entry]| {
        let l = latest(e);
        l.get(&(group.into(), "orders".into(), 0)) == Some(&Some(3))
            && l.get(&(group.into(), "orders".into(), 1)) == Some(&Some(4))
    };
    let entries = read_topic(&broker, at, want);
    assert!(want(&entries), "{entries:?}");
    // Once: a second restart does not write them again.
    broker.terminate();
    broker.restart();
    // The backfill is the first thing a shard writes after it starts, so a second one would
    // follow the first one's records within seconds (this waited all of the 20 s deadline).
    let again = read_topic_until(&broker, at, |e, quiet| {
        e.len() > entries.len() || (e.len() == entries.len() && quiet >= Duration::from_secs(3))
    });
    assert_eq!(again.len(), entries.len(), "{again:?}");
}

fn burrow_installed() -> bool {
    let ok = || Path::new("/usr/bin/Burrow").exists() && Path::new(ZOOKEEPER_JAR).exists();
    ok() || (common::apt::apt_install(&["burrow", "zookeeper"]) && ok())
}

const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";

/// A child process killed when the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_json(url: &str, auth: Option<(&str, &str)>) -> Option<Value> {
    let mut req = ureq::get(url).timeout(Duration::from_secs(5));
    if let Some((user, password)) = auth {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        req = req.set("Authorization", &format!("Basic {token}"));
    }
    let text = req.call().ok()?.into_string().ok()?;
    serde_json::from_str(&text).ok()
}

/// Debian's Burrow (1.2.1, sarama underneath) with its consumer module reading
/// `__consumer_offsets` reports the group's partitions and lag as Portask's
/// `/api/v1/consumer-groups/<group>` does. Burrow 1.2 needs a ZooKeeper for its own
/// coordination; Debian's `zookeeper` package provides one, run standalone here.
#[test]
fn burrow_reports_the_lag_portask_reports() {
    assert!(
        burrow_installed(),
        "Burrow or ZooKeeper not found and could not be installed: this test drives Debian's \
         burrow. Install them with `apt-get install -y --no-install-recommends burrow zookeeper`."
    );
    let (dir, data) = data_dir();
    let broker = Broker::start_with_shards(&data, FAST_GROUPS, 2);
    let group = "lag-group";
    lagging_group(&broker, group);

    let zk_port = common::launch::free_port();
    let zk_dir = dir.path().join("zk");
    std::fs::create_dir_all(&zk_dir).expect("zk dir");
    let _zk = Running(
        Command::new("java")
            .args([
                "-cp",
                ZOOKEEPER_JAR,
                "org.apache.zookeeper.server.ZooKeeperServerMain",
            ])
            .arg(zk_port.to_string())
            .arg(&zk_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start zookeeper"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", zk_port)).is_err() {
        assert!(Instant::now() < deadline, "ZooKeeper did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let http_port = common::launch::free_port();
    let conf = dir.path().join("burrow");
    std::fs::create_dir_all(&conf).expect("burrow dir");
    let bootstrap = broker.bootstrap();
    std::fs::write(
        conf.join("burrow.toml"),
        format!(
            r#"[general]
pidfile="{pid}"
[logging]
level="info"
[zookeeper]
servers=["127.0.0.1:{zk_port}"]
timeout=6
root-path="/burrow"
[client-profile.portask]
client-id="burrow"
kafka-version="0.10.2"
[cluster.local]
class-name="kafka"
servers=["{bootstrap}"]
client-profile="portask"
topic-refresh=5
offset-refresh=2
[consumer.local]
class-name="kafka"
cluster="local"
servers=["{bootstrap}"]
client-profile="portask"
start-latest=false
[httpserver.default]
address="127.0.0.1:{http_port}"
[storage.default]
class-name="inmemory"
workers=2
intervals=10
expire-group=604800
min-distance=1
"#,
            pid = conf.join("burrow.pid").display(),
        ),
    )
    .expect("burrow.toml");
    let spawn_burrow = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(conf.join("burrow.log"))
            .expect("log");
        Running(
            Command::new("/usr/bin/Burrow")
                .arg("-config-dir")
                .arg(&conf)
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start Burrow"),
        )
    };
    let mut burrow = spawn_burrow();

    let portask = http_json(
        &format!("{}/api/v1/consumer-groups/{group}", broker.http_url()),
        Some(("guest", "guest")),
    )
    .expect("portask group");
    let mut want: Vec<(String, i64, i64)> = portask["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|o| {
            (
                o["topic"].as_str().unwrap_or_default().to_owned(),
                o["partition"].as_i64().unwrap_or(-1),
                o["lag"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    want.sort();
    assert_eq!(
        want,
        vec![("orders".to_owned(), 0, 7), ("orders".to_owned(), 1, 1)],
        "{portask}"
    );

    // Burrow reads __consumer_offsets and the high watermarks (ListOffsets) on its own
    // schedule; wait until it reports the group.
    let url = format!("http://127.0.0.1:{http_port}/v3/kafka/local/consumer/{group}/lag");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Value::Null;
    loop {
        if let Some(v) = http_json(&url, None) {
            let mut got: Vec<(String, i64, i64)> = v["status"]["partitions"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            (
                                p["topic"].as_str().unwrap_or_default().to_owned(),
                                p["partition"].as_i64().unwrap_or(-1),
                                p["current_lag"].as_i64().unwrap_or(-1),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            got.sort();
            if got == want {
                assert_eq!(
                    v["status"]["totallag"].as_i64(),
                    portask["lag"].as_i64(),
                    "{v}"
                );
                return;
            }
            last = v;
        }
        // Burrow exits when ZooKeeper, just started, refuses its first session: again.
        if burrow.0.try_wait().ok().flatten().is_some() {
            burrow = spawn_burrow();
        }
        assert!(
            Instant::now() < deadline,
            "Burrow did not report {want:?}; last answer {last}; log:\n{}",
            std::fs::read_to_string(conf.join("burrow.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

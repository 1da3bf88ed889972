//! Operating the broker: the connection limit per shard refuses the extra connection while
//! the others keep working; SIGTERM in the middle of a produce load exits 0, the restart
//! needs no recovery scan, and nothing acknowledged is lost; a small in-flight budget slows
//! a pipelining producer without losing anything; the shard's tail-cache budget caps its
//! memory while every record stays readable.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{data_dir, kafka, Broker};
use futures::executor::block_on;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Offset;

fn api_versions_frame(correlation: i32) -> Vec<u8> {
    kafka::request_frame(
        ApiKey::ApiVersions,
        2,
        correlation,
        "ops-test",
        &ApiVersionsRequest::default(),
    )
}

/// Sends ApiVersions and reads the answer; false when the broker closed the socket.
fn answers(s: &mut TcpStream, correlation: i32) -> bool {
    if s.write_all(&api_versions_frame(correlation)).is_err() {
        return false;
    }
    let mut len = [0u8; 4];
    if s.read_exact(&mut len).is_err() {
        return false;
    }
    let mut body = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
    s.read_exact(&mut body).is_ok() && body[0..4] == correlation.to_be_bytes()
}

#[test]
fn connections_past_the_limit_are_refused_and_the_others_keep_working() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start_with_shards(
        &data,
        &[("PORTASK_LIMITS__MAX_CONNECTIONS_PER_SHARD", "2")],
        1,
    );
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", broker.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s
    };
    // The harness's readiness probes were connections too: let the broker see them close.
    std::thread::sleep(Duration::from_secs(1));
    let mut a = connect();
    let mut b = connect();
    assert!(answers(&mut a, 1));
    assert!(answers(&mut b, 2));
    let mut c = connect();
    assert!(!answers(&mut c, 3), "the third connection is refused");
    assert!(
        answers(&mut a, 4) && answers(&mut b, 5),
        "the first two are unaffected"
    );
    assert!(
        broker.log().contains("connections already open"),
        "{}",
        broker.log()
    );
    // Once one closes, a new connection is accepted again.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut d = connect();
        if answers(&mut d, 6) {
            break;
        }
        assert!(Instant::now() < deadline, "a freed slot is reused");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_during_a_produce_load_loses_nothing_acknowledged() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, &[]);
    let producer: FutureProducer = kafka::client(
        &broker,
        &[
            ("acks", "all"),
            ("linger.ms", "2"),
            ("message.timeout.ms", "5000"),
            ("enable.idempotence", "false"),
        ],
    );
    let acked: Arc<Mutex<Vec<(i32, i64, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let futures: Vec<_> = (0..50)
                    .filter_map(|_| {
                        i += 1;
                        let v = format!("m{i}");
                        producer
                            .send_result(FutureRecord::to("load").key("k").payload(v.as_str()))
                            .ok()
                            .map(|f| (v, f))
                    })
                    .collect();
                for (v, f) in futures {
                    if let Ok(Ok(d)) = block_on(f) {
                        acked.lock().expect("lock").push((d.partition, d.offset, v));
                    }
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().expect("lock").len() < 500 {
        assert!(Instant::now() < deadline, "the load did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = broker.terminate();
    stop.store(true, Ordering::SeqCst);
    worker.join().expect("producer thread");
    assert!(status.success(), "exit status {status}");
    assert!(broker.log().contains("stopped cleanly"));
    broker.restart();
    assert!(
        broker.log().contains("(clean start)"),
        "the restart needs no recovery scan"
    );
    let acked = acked.lock().expect("lock").clone();
    let c = kafka::assigned(&broker, &[], "load", 1, Offset::Beginning);
    let mut seen = std::collections::HashMap::new();
    kafka::poll_n(&c, acked.len(), Duration::from_secs(60), |m| {
        seen.insert(
            m.offset(),
            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
        );
    });
    for (_, offset, v) in &acked {
        assert_eq!(
            seen.get(offset),
            Some(v),
            "acknowledged message at offset {offset}"
        );
    }
}

/// Produces `n` keyed records of `value` to `topic` (partition `i % partitions`) with
/// acks=all and waits for every delivery report.
fn produce_all(
    b: &Broker,
    extra: &[(&str, &str)],
    topic: &str,
    partitions: i32,
    n: usize,
    value: &[u8],
) {
    let mut settings = vec![("acks", "all"), ("message.timeout.ms", "60000")];
    settings.extend_from_slice(extra);
    let p: FutureProducer = kafka::client(b, &settings);
    let pending: Vec<_> = (0..n)
        .map(|i| {
            let key = i.to_string();
            let r = FutureRecord::to(topic)
                .key(&key)
                .payload(value)
                .partition(i as i32 % partitions);
            kafka::enqueue(&p, r)
        })
        .collect();
    for f in pending {
        kafka::delivered(f);
    }
}

/// Reads `topic` from the beginning until `n` distinct keys were seen, each value
/// `value_len` bytes long.
fn read_back_keys(b: &Broker, topic: &str, partitions: i32, n: usize, value_len: usize) {
    let c = kafka::assigned(b, &[], topic, partitions, Offset::Beginning);
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < n {
        assert!(Instant::now() < deadline, "read back {} of {n}", seen.len());
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            assert_eq!(m.payload().map(<[u8]>::len), Some(value_len));
            seen.insert(m.key().map(<[u8]>::to_vec));
        }
    }
}

/// `/metrics` as text.
fn metrics_text(b: &Broker) -> String {
    ureq::get(&format!("{}/metrics", b.http_url()))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text")
}

#[test]
fn a_small_inflight_budget_slows_a_pipelining_producer_and_loses_nothing() {
    let (_d, data) = data_dir();
    // 4 KiB per connection: librdkafka pipelines produce requests of ~8 KiB, so the broker
    // must stop reading the socket while one is being synced.
    let b = Broker::start(
        &data,
        &[
            ("PORTASK_LIMITS__CONNECTION_INFLIGHT_BYTES", "4096"),
            ("PORTASK_LIMITS__SHARD_INFLIGHT_BYTES", "16384"),
        ],
    );
    const N: usize = 2000;
    let producer = [("linger.ms", "0"), ("batch.size", "8192")];
    produce_all(&b, &producer, "budget", 1, N, &[b'v'; 1000]);
    let throttled: f64 = metrics_text(&b)
        .lines()
        .find_map(|l| l.strip_prefix("portask_backpressure_total{protocol=\"kafka\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("backpressure counter");
    assert!(throttled > 0.0, "the budget never held a request back");
    read_back_keys(&b, "budget", 1, N, 1000);
}

#[test]
fn the_shard_tail_cache_budget_caps_memory_and_reads_still_see_everything() {
    let (_d, data) = data_dir();
    let b = Broker::start(
        &data,
        &[
            ("PORTASK_STORAGE__SHARD_TAIL_CACHE_BYTES", "262144"),
            ("PORTASK_KAFKA__NUM_PARTITIONS", "4"),
        ],
    );
    // 8 MiB over 4 partitions: the per-partition caches (8 MiB each by default) would hold
    // all of it without the shard budget of 256 KiB.
    const N: usize = 1024;
    produce_all(&b, &[("linger.ms", "2")], "capped", 4, N, &[b'm'; 8192]);
    // After the flusher's next rounds every shard is within its budget (plus at most the
    // batches not yet written, which are never dropped).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = metrics_text(&b);
        let cached: Vec<f64> = metrics
            .lines()
            .filter(|l| {
                l.starts_with("portask_shard_memory_bytes{") && l.contains("kind=\"tail_cache\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert_eq!(cached.len(), 2, "{metrics}");
        if cached.iter().all(|c| *c <= 262_144.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tail caches over budget: {cached:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Everything is still there: what left memory is read from disk.
    read_back_keys(&b, "capped", 4, N, 8192);
}

#[test]
fn a_second_broker_on_the_same_ports_is_refused() {
    let (_d, data) = data_dir();
    let b = Broker::start(&data, &[]);
    let (_d2, other) = data_dir();
    // Another data dir, so the lock does not stop it: the port check must.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portask"))
        .arg("--data-dir")
        .arg(&other)
        .args(["--shards", "1", "--placement", "unpinned"])
        .arg("--kafka-addr")
        .arg(b.bootstrap())
        .arg("--amqp-addr")
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .output()
        .expect("run second broker");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("kafka.addr") && text.contains("already in use"),
        "{text}"
    );
    // The first one still answers.
    let mut s = TcpStream::connect(b.bootstrap()).expect("connect");
    assert!(answers(&mut s, 7));
}

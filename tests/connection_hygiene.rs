//! Connection hygiene over real sockets: a request (Kafka) or frame (AMQP) trickled a byte
//! at a time is closed once `kafka.request_read_timeout_ms` / `amqp.frame_read_timeout_ms`
//! pass from its first byte, and a trickled HTTP body gets 408 at `http.read_timeout_ms`,
//! while normal clients (rdkafka, lapin, a long-polling Fetch, HTTP requests) keep
//! working; and `limits.max_connections_per_ip` (here through its override for 127.0.0.1)
//! refuses the connection past the limit on the Kafka, AMQP and HTTP ports alike, counts it
//! in `/metrics`, and accepts again once one closes; and each connection holds one
//! descriptor on the broker's side, given back when it closes (also when closed from
//! outside through the HTTP API).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{data_dir, kafka, Broker};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::producer::Producer;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};

/// ApiVersions v0 with correlation id 7, size prefix included.
const API_VERSIONS: [u8; 14] = [0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 7, 0xff, 0xff];

/// Whether the broker answers `request` on `s` rather than closing it. A Kafka answer
/// (`request` starts with a size prefix) is read whole, so the next one starts clean.
fn answered(s: &mut TcpStream, request: &[u8]) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    if s.write_all(request).is_err() {
        return false;
    }
    if request.starts_with(b"AMQP") || request.starts_with(b"GET") {
        let mut some = [0u8; 4096];
        return s.read(&mut some).is_ok_and(|n| n > 0);
    }
    let mut prefix = [0u8; 4];
    if s.read_exact(&mut prefix).is_err() {
        return false;
    }
    let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
    s.read_exact(&mut body).is_ok()
}

/// Sends `frame` one byte every `gap` until the broker closes the socket; how long after
/// the first byte that was, or `None` if it read every byte.
fn trickle(s: &mut TcpStream, frame: &[u8], gap: Duration) -> Option<Duration> {
    s.set_read_timeout(Some(Duration::from_millis(1)))
        .expect("timeout");
    let start = Instant::now();
    for b in frame {
        if s.write_all(&[*b]).is_err() {
            return Some(start.elapsed());
        }
        let mut one = [0u8; 1];
        match s.read(&mut one) {
            Ok(0) => return Some(start.elapsed()),
            Err(e)
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut =>
            {
                return Some(start.elapsed())
            }
            _ => {}
        }
        std::thread::sleep(gap);
    }
    None
}

fn producer(b: &Broker) -> ThreadedProducer<DefaultProducerContext> {
    kafka::client(b, &[("linger.ms", "0")])
}

fn produce_one(p: &ThreadedProducer<DefaultProducerContext>, topic: &str) {
    p.send(BaseRecord::<(), str>::to(topic).payload("x"))
        .map_err(|(e, _)| e)
        .expect("enqueue");
    p.flush(Duration::from_secs(20)).expect("delivered");
}

fn fetch_frame(topic: &str, offset: i64, max_wait_ms: i32) -> Vec<u8> {
    let request = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    kafka::request_frame(ApiKey::Fetch, 4, 9, "trickle-test", &request)
}

#[test]
fn a_trickled_kafka_request_is_closed_while_normal_clients_keep_working() {
    let (_dir, data) = data_dir();
    let b = Broker::start(&data, &[("PORTASK_KAFKA__REQUEST_READ_TIMEOUT_MS", "1500")]);
    let p = producer(&b);
    produce_one(&p, "hygiene");

    // A Fetch of 300 bytes sent a byte every 100 ms would take 30 s: the broker closes it
    // about 1.5 s after its first byte, though no gap between bytes is long.
    let mut frame = fetch_frame("hygiene", 1, 100);
    frame.resize(300, 0);
    frame[..4].copy_from_slice(&296u32.to_be_bytes());
    let mut slow = TcpStream::connect(b.bootstrap()).expect("connect");
    let closed = trickle(&mut slow, &frame, Duration::from_millis(100))
        .expect("the trickled request was never cut off");
    assert!(
        closed >= Duration::from_millis(1400) && closed < Duration::from_secs(6),
        "closed after {closed:?}"
    );
    assert!(
        b.log().contains("(kafka.request_read_timeout_ms)"),
        "{}",
        b.log()
    );

    // Meanwhile and after, a normal producer is served.
    produce_one(&p, "hygiene");

    // A connection that stays silent between requests for longer than the timeout, then
    // long-polls a Fetch that waits longer than the timeout, is answered both times.
    let mut idle = TcpStream::connect(b.bootstrap()).expect("connect");
    assert!(answered(&mut idle, &API_VERSIONS));
    std::thread::sleep(Duration::from_millis(2000));
    let asked = Instant::now();
    assert!(answered(&mut idle, &fetch_frame("hygiene", 2, 2500)));
    assert!(
        asked.elapsed() >= Duration::from_millis(2000),
        "the fetch did not long-poll"
    );
    assert!(answered(&mut idle, &API_VERSIONS));
    assert_eq!(
        b.log().matches("(kafka.request_read_timeout_ms)").count(),
        1,
        "{}",
        b.log()
    );
}

/// Opens an AMQP connection by hand with the frames lapin sends (captured in the fuzz
/// corpus); `None` when the broker closes it instead.
fn amqp_handshake(port: u16) -> Option<TcpStream> {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/amqp_frame");
    let frame = |name: &str| std::fs::read(corpus.join(name)).expect("corpus frame");
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"AMQP\x00\x00\x09\x01").ok()?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).ok()?; // connection.start
    if n == 0 {
        return None;
    }
    s.write_all(&frame("connection-start-ok-0.bin")).ok()?;
    let _ = s.read(&mut buf).ok()?; // connection.tune
    s.write_all(&frame("connection-tune-ok-0.bin")).ok()?;
    s.write_all(&frame("connection-open-0.bin")).ok()?;
    let n = s.read(&mut buf).ok()?;
    // open-ok: a method frame of class 10, method 41.
    assert!(n >= 11 && buf[7..11] == [0, 10, 0, 41], "{:?}", &buf[..n]);
    Some(s)
}

#[test]
fn a_trickled_amqp_frame_is_closed_while_normal_clients_keep_working() {
    let (_dir, data) = data_dir();
    let b = Broker::start(&data, &[("PORTASK_AMQP__FRAME_READ_TIMEOUT_MS", "1500")]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let conn = rt.block_on(common::amqp::connect(&b.amqp_url()));
    let ch = rt.block_on(common::amqp::channel(&conn));
    rt.block_on(common::amqp::declare(&ch, "hygiene", Default::default()));

    let mut slow = amqp_handshake(b.amqp_port).expect("handshake");
    // channel.open on channel 1, padded to a 200-byte frame: 20 s at a byte per 100 ms.
    let mut frame = vec![1u8, 0, 1];
    frame.extend_from_slice(&192u32.to_be_bytes());
    frame.extend_from_slice(&[0, 20, 0, 10, 0]);
    frame.resize(7 + 192, 0);
    frame.push(0xce);
    let closed = trickle(&mut slow, &frame, Duration::from_millis(100))
        .expect("the trickled frame was never cut off");
    assert!(
        closed >= Duration::from_millis(1400) && closed < Duration::from_secs(6),
        "closed after {closed:?}"
    );
    assert!(
        b.log().contains("(amqp.frame_read_timeout_ms)"),
        "{}",
        b.log()
    );

    // The lapin connection, idle meanwhile for longer than the timeout, still works.
    rt.block_on(common::amqp::publish(&ch, "", "hygiene", b"still here"));
    let got = rt.block_on(common::amqp::drain(&ch, "hygiene"));
    assert_eq!(got, vec![b"still here".to_vec()]);
}

#[test]
fn a_trickled_http_body_gets_408_while_others_are_served() {
    let (_dir, data) = data_dir();
    let b = Broker::start(&data, &[("PORTASK_HTTP__READ_TIMEOUT_MS", "1500")]);
    let mut slow = TcpStream::connect(("127.0.0.1", b.http_port)).expect("connect");
    slow.write_all(b"POST /api/v1/topics HTTP/1.1\r\nHost: x\r\nContent-Length: 300\r\n\r\n")
        .expect("head");
    // 300 bytes at one per 100 ms: no gap is long, the whole would take 30 s.
    let started = Instant::now();
    let body = vec![b' '; 300];
    let mut answer = Vec::new();
    for byte in &body {
        if slow.write_all(&[*byte]).is_err() {
            break;
        }
        slow.set_read_timeout(Some(Duration::from_millis(1)))
            .expect("timeout");
        let mut buf = [0u8; 1024];
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if !answer.is_empty() {
            break;
        }
        assert_eq!(
            ureq::get(&format!("{}/health", b.http_url()))
                .call()
                .map(|r| r.status())
                .ok(),
            Some(200)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "after {took:?}: {answer}"
    );
    assert!(took < Duration::from_secs(6), "{took:?}");
}

/// What one connection to `port` gets for `request`: `true` when it is answered, `false`
/// when the broker closes it unanswered.
fn served(port: u16, request: &[u8]) -> (Option<TcpStream>, bool) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (None, false);
    };
    let ok = answered(&mut s, request);
    (Some(s), ok)
}

const AMQP_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";
const HTTP_HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn connections_past_the_per_ip_limit_are_refused_on_every_port_and_counted() {
    let (_dir, data) = data_dir();
    // One connection per address, but three for 127.0.0.1 (Kafka's overrides form).
    let b = Broker::start(
        &data,
        &[
            ("PORTASK_LIMITS__MAX_CONNECTIONS_PER_IP", "1"),
            (
                "PORTASK_LIMITS__MAX_CONNECTIONS_PER_IP_OVERRIDES",
                "10.0.0.5:0,127.0.0.1:3",
            ),
        ],
    );
    // Three held connections, one per port (the start-up probes may still hold slots for
    // a moment after closing, hence the retries).
    let deadline = Instant::now() + Duration::from_secs(10);
    let hold = |port: u16, open: &dyn Fn() -> Option<TcpStream>| loop {
        if let Some(s) = open() {
            break s;
        }
        assert!(Instant::now() < deadline, "port {port} never accepted");
        std::thread::sleep(Duration::from_millis(50));
    };
    let answering = |port: u16, request: &'static [u8]| {
        move || match served(port, request) {
            (Some(s), true) => Some(s),
            _ => None,
        }
    };
    let mut kafka = hold(b.port, &answering(b.port, &API_VERSIONS));
    let _http = hold(b.http_port, &answering(b.http_port, HTTP_HEALTH));
    // The AMQP one completes its handshake, so the handshake timeout does not end it.
    let _amqp = hold(b.amqp_port, &|| amqp_handshake(b.amqp_port));

    // A fourth from the same address is closed unanswered, whichever port it tries.
    for (port, request) in [
        (b.port, &API_VERSIONS[..]),
        (b.amqp_port, AMQP_HEADER),
        (b.http_port, HTTP_HEALTH),
    ] {
        assert!(
            !served(port, request).1,
            "port {port} accepted a 4th connection"
        );
    }
    // The held ones still work.
    assert!(answered(&mut kafka, &API_VERSIONS));
    assert!(
        b.log()
            .contains("(limits.max_connections_per_ip, or its override)"),
        "{}",
        b.log()
    );

    // Once one closes, a new one is accepted: the scrape itself is that connection.
    drop(kafka);
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let r = ureq::get(&format!("{}/metrics", b.http_url())).call();
        match r {
            Ok(r) => break r.into_string().expect("metrics"),
            Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "no connection accepted after a close"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let scrape =
        prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned()))).expect("parse");
    for protocol in ["kafka", "amqp", "http"] {
        let refused: f64 = scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == "portask_connections_refused_total"
                    && s.labels.get("protocol") == Some(protocol)
                    && s.labels.get("reason") == Some("per_ip")
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum();
        assert!(refused >= 1.0, "{protocol}: refused {refused}\n{metrics}");
    }
}

/// Descriptors the broker process has open.
fn open_descriptors(b: &Broker) -> usize {
    let pid = b.pid().expect("broker running");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .count()
}

/// Waits until the broker holds `want` descriptors (connections open and close in the
/// shards' own time); returns what it holds last.
fn settle_descriptors(b: &Broker, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = open_descriptors(b);
        if n == want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn each_connection_holds_one_descriptor_and_closing_from_outside_still_works() {
    let (_d, data) = data_dir();
    let b = Broker::start(&data, &[]);
    // What the broker holds once startup's own connections (the launcher's readiness
    // checks) have closed: the same count for a whole second.
    let mut before = open_descriptors(&b);
    let mut steady = Instant::now();
    while steady.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(50));
        let n = open_descriptors(&b);
        if n != before {
            (before, steady) = (n, Instant::now());
        }
    }
    // Each Kafka and AMQP connection opens one socket on the broker's side; its reader,
    // its writer and the shard's connection list share it (there were three each).
    let mut amqp = (0..30)
        .map(|_| amqp_handshake(b.amqp_port).expect("AMQP handshake"))
        .collect::<Vec<_>>();
    let kafka = (0..30)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", b.port)).expect("connect");
            assert!(answered(&mut s, &API_VERSIONS), "ApiVersions answered");
            s
        })
        .collect::<Vec<_>>();
    assert_eq!(settle_descriptors(&b, before + 60), before + 60);

    // Closing a connection from outside still shuts its socket down: the client sees the
    // end, and the descriptor is given back.
    let http = ureq::AgentBuilder::new().build();
    // guest:guest, the default user.
    let auth = "Basic Z3Vlc3Q6Z3Vlc3Q=";
    let conns: serde_json::Value = serde_json::from_str(
        &http
            .get(&format!("{}/api/v1/connections", b.http_url()))
            .set("Authorization", auth)
            .call()
            .expect("GET connections")
            .into_string()
            .expect("body"),
    )
    .expect("json");
    let ids: Vec<u64> = conns
        .as_array()
        .expect("a list")
        .iter()
        .filter(|c| c["protocol"] == "amqp")
        .filter_map(|c| c["id"].as_u64())
        .collect();
    assert_eq!(ids.len(), 30, "{conns}");
    for id in &ids {
        let r = http
            .delete(&format!("{}/api/v1/connections/{id}", b.http_url()))
            .set("Authorization", auth)
            .call();
        assert!(r.is_ok(), "DELETE connection {id}: {r:?}");
    }
    drop(http);
    for s in &mut amqp {
        let mut buf = [0u8; 512];
        // Whatever the broker still sends (a connection.close), then the end.
        let ended = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        assert!(
            ended,
            "the broker ended the connection it was told to close"
        );
    }
    drop(kafka);
    assert_eq!(settle_descriptors(&b, before), before);
}

//! The HTTP endpoint against the real broker: health and readiness, Prometheus metrics
//! parsed as Prometheus parses them, REST produce/read interchanging with librdkafka,
//! topic and consumer-group management, connections, server-sent events, basic auth with
//! management tags, and bad input answered with the right status.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{data_dir, kafka, Broker};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

/// A response's status and body (ureq reports 4xx/5xx as errors; here they are answers).
fn call(req: ureq::Request, body: Option<&Value>) -> (u16, Value) {
    let r = match body {
        Some(b) => req
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => req.call(),
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("http: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn get(b: &Broker, path: &str) -> (u16, Value) {
    call(
        ureq::get(&format!("{}{path}", b.http_url()))
            .set("Authorization", &basic("guest", "guest")),
        None,
    )
}

fn send(b: &Broker, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    call(
        ureq::request(method, &format!("{}{path}", b.http_url()))
            .set("Authorization", &basic("guest", "guest")),
        body,
    )
}

/// Polls `f` until it returns Some or `secs` pass.
fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `/metrics` parsed by a Prometheus text-format parser.
fn scrape(b: &Broker) -> prometheus_parse::Scrape {
    let text = ureq::get(&format!("{}/metrics", b.http_url()))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parse")
}

/// The sum of `name` over samples whose labels include all of `labels`.
fn metric(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref h) => {
                h.iter().map(|c| c.count).fold(0.0, f64::max)
            }
            _ => 0.0,
        })
        .sum()
}

fn producer(b: &Broker) -> ThreadedProducer<DefaultProducerContext> {
    kafka::client(b, &[("linger.ms", "1"), ("compression.type", "zstd")])
}

fn consumer(b: &Broker, group: &str) -> BaseConsumer {
    kafka::client(
        b,
        &[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
        ],
    )
}

/// (partition, offset, key, value, headers) of a consumed message.
type Consumed = (i32, i64, Vec<u8>, Vec<u8>, Vec<(String, Vec<u8>)>);

/// Reads `n` messages from `topic` partitions `0..parts` from the beginning.
fn read_all(c: &BaseConsumer, topic: &str, parts: i32, n: usize) -> Vec<Consumed> {
    kafka::assign(c, topic, parts, Offset::Beginning);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages",
            out.len()
        );
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.expect("message");
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| (x.key.to_owned(), x.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            out.push((
                m.partition(),
                m.offset(),
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
                headers,
            ));
        }
    }
    out
}

#[test]
fn health_readiness_and_metrics_that_move_with_kafka_traffic() {
    let (_d, data) = data_dir();
    let b = Broker::start(&data, &[]);
    // Open without credentials by default, as probes and Prometheus expect.
    let (status, health) = call(ureq::get(&format!("{}/health", b.http_url())), None);
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["shards"].as_array().map(Vec::len), Some(2));
    let (status, ready) = call(ureq::get(&format!("{}/health/ready", b.http_url())), None);
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));

    let before = scrape(&b);
    assert_eq!(
        metric(
            &before,
            "portask_messages_produced_total",
            &[("topic", "metered")]
        ),
        0.0
    );
    assert_eq!(metric(&before, "portask_build_info", &[]), 1.0);
    assert!(metric(&before, "portask_memory_usage_bytes", &[]) > 0.0);
    assert!(metric(&before, "portask_start_time_seconds", &[]) > 1.0e9);
    assert!(metric(&before, "portask_disk_total_bytes", &[]) > 0.0);

    let p = producer(&b);
    for i in 0..60 {
        let key = format!("k{i}");
        let value = format!("v{i}");
        p.send(BaseRecord::to("metered").key(&key).payload(&value))
            .expect("enqueue");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
    let c = consumer(&b, "metered-readers");
    let got = read_all(&c, "metered", 1, 60);
    assert_eq!(got.len(), 60);

    let after = eventually(10, "the consumed counter", || {
        let s = scrape(&b);
        let consumed = metric(
            &s,
            "portask_messages_consumed_total",
            &[("protocol", "kafka"), ("topic", "metered")],
        );
        (consumed >= 60.0).then_some(s)
    });
    let k = [("protocol", "kafka"), ("topic", "metered")];
    assert_eq!(metric(&after, "portask_messages_produced_total", &k), 60.0);
    assert!(metric(&after, "portask_bytes_in_total", &[("protocol", "kafka")]) > 0.0);
    assert!(metric(&after, "portask_bytes_out_total", &[("protocol", "kafka")]) > 0.0);
    assert_eq!(
        metric(
            &after,
            "portask_partition_high_watermark",
            &[("topic", "metered"), ("partition", "0")]
        ),
        60.0
    );
    assert!(
        metric(
            &after,
            "portask_partition_size_bytes",
            &[("topic", "metered")]
        ) > 0.0
    );
    assert!(
        metric(
            &after,
            "portask_requests_total",
            &[("protocol", "kafka"), ("api", "Produce")]
        ) >= 1.0
    );
    assert!(
        metric(
            &after,
            "portask_requests_total",
            &[("protocol", "kafka"), ("api", "Fetch")]
        ) >= 1.0
    );
    assert!(
        metric(
            &after,
            "portask_connections_active",
            &[("protocol", "kafka")]
        ) >= 2.0
    );
    assert!(
        metric(
            &after,
            "portask_publish_duration_seconds_count",
            &[("protocol", "kafka")]
        ) >= 1.0
    );
    assert!(
        metric(
            &after,
            "portask_fetch_duration_seconds_count",
            &[("protocol", "kafka")]
        ) >= 1.0
    );
    assert_eq!(
        after
            .samples
            .iter()
            .filter(|s| s.metric == "portask_shard_busy_ratio")
            .count(),
        2
    );

    // Lag: the group commits 40 of 60, so 20 remain.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("metered", 0, Offset::Offset(40))
        .expect("tpl");
    c.commit(&tpl, CommitMode::Sync).expect("commit");
    let s = scrape(&b);
    assert_eq!(
        metric(
            &s,
            "portask_consumer_group_lag",
            &[
                ("group", "metered-readers"),
                ("topic", "metered"),
                ("partition", "0")
            ]
        ),
        20.0
    );
    let (_, groups) = get(&b, "/api/v1/consumer-groups/metered-readers");
    assert_eq!(groups["lag"], 20, "{groups}");
    assert_eq!(groups["offsets"][0]["committed_offset"], 40);

    // The overview adds it up for the dashboard.
    let (status, o) = get(&b, "/api/v1/overview");
    assert_eq!(status, 200);
    assert!(o["totals"]["messages_in"].as_u64() >= Some(60), "{o}");
    assert!(o["connections"]["kafka"].as_u64() >= Some(2));
    let topic = o["topics"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "metered"))
        .cloned()
        .expect("topic row");
    assert_eq!(topic["messages"], 60);
    let group = o["consumer_groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["group"] == "metered-readers"))
        .cloned()
        .expect("group row");
    assert_eq!(group["lag"], 20);
}

#[test]
fn rest_produce_is_read_by_rdkafka_and_rdkafka_produce_is_read_over_rest() {
    let (_d, data) = data_dir();
    let b = Broker::start(&data, &[]);
    let (status, created) = send(
        &b,
        "POST",
        "/api/v1/topics",
        Some(&json!({"name": "rest-in", "partitions": 3})),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["partitions"].as_array().map(Vec::len), Some(3));

    let (status, answer) = send(
        &b,
        "POST",
        "/api/v1/topics/rest-in/records",
        Some(&json!({
            "acks": "all",
            "records": [
                {"key": "alpha", "value": "first", "partition": 2, "headers": {"trace": "t-1"}},
                {"value": {"n": 2, "ok": true}, "partition": 2},
                {"key_base64": "AAE=", "value_base64": "/wD+", "partition": 0}
            ]
        })),
    );
    assert_eq!(status, 200, "{answer}");
    let offsets = answer["offsets"].as_array().cloned().expect("offsets");
    assert_eq!(offsets[0]["partition"], 2);
    assert_eq!(offsets[0]["offset"], 0);
    assert_eq!(offsets[1]["offset"], 1);
    assert_eq!(offsets[2]["partition"], 0);

    // A raw body is one record's value.
    let resp = ureq::post(&format!(
        "{}/api/v1/topics/rest-in/records?partition=1&key=raw",
        b.http_url()
    ))
    .set("Authorization", &basic("guest", "guest"))
    .set("Content-Type", "application/octet-stream")
    .send_bytes(&[1, 2, 3, 255])
    .expect("raw produce");
    assert_eq!(resp.status(), 200);

    let c = consumer(&b, "rest-readers");
    let mut got = read_all(&c, "rest-in", 3, 4);
    got.sort_by_key(|m| (m.0, m.1));
    assert_eq!(got[0].0, 0);
    assert_eq!(got[0].2, vec![0u8, 1]);
    assert_eq!(got[0].3, vec![0xffu8, 0, 0xfe]);
    assert_eq!(
        (got[1].0, got[1].2.as_slice(), got[1].3.as_slice()),
        (1, &b"raw"[..], &[1u8, 2, 3, 255][..])
    );
    assert_eq!(got[2].0, 2);
    assert_eq!(got[2].2, b"alpha");
    assert_eq!(got[2].3, b"first");
    assert_eq!(got[2].4, vec![("trace".to_string(), b"t-1".to_vec())]);
    let v: Value = serde_json::from_slice(&got[3].3).expect("json value");
    assert_eq!(v, json!({"n": 2, "ok": true}));

    // The other way: zstd-compressed batches from librdkafka, read back over REST.
    let p = producer(&b);
    for i in 0..25 {
        let value = format!("from-kafka-{i}");
        let headers = OwnedHeaders::new().insert(Header {
            key: "i",
            value: Some(&i.to_string()),
        });
        p.send(
            BaseRecord::<str, str>::to("kafka-out")
                .payload(&value)
                .headers(headers),
        )
        .expect("enqueue");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
    let (status, page) = get(
        &b,
        "/api/v1/topics/kafka-out/partitions/0/records?offset=5&max_records=10",
    );
    assert_eq!(status, 200, "{page}");
    let records = page["records"].as_array().cloned().expect("records");
    assert_eq!(records.len(), 10);
    assert_eq!(records[0]["offset"], 5);
    assert_eq!(records[0]["value"], "from-kafka-5");
    assert_eq!(records[0]["headers"]["i"], "5");
    assert_eq!(records[9]["value"], "from-kafka-14");
    assert_eq!(page["next_offset"], 15);
    assert_eq!(page["high_watermark"], 25);
    let (_, binary) = get(&b, "/api/v1/topics/rest-in/partitions/0/records");
    assert_eq!(binary["records"][0]["value_base64"], "/wD+");
}

#[test]
fn auth_asks_credentials_and_management_tags() {
    let (_d, data) = data_dir();
    let guest = portask::amqp::auth::hash_password([1, 2, 3, 4], "guest");
    let mon = portask::amqp::auth::hash_password([5, 6, 7, 8], "watch");
    let plain = portask::amqp::auth::hash_password([9, 9, 9, 9], "app");
    let users = format!(
        "[{{name=\"guest\",password_hash=\"{guest}\",tags=[\"administrator\"]}},\
          {{name=\"mon\",password_hash=\"{mon}\",tags=[\"monitoring\"]}},\
          {{name=\"app\",password_hash=\"{plain}\",tags=[]}}]"
    );
    let b = Broker::start(&data, &[("PORTASK_AMQP__USERS", &users)]);
    let url = b.http_url();

    let (status, body) = call(ureq::get(&format!("{url}/api/v1/overview")), None);
    assert_eq!(status, 401, "{body}");
    let challenge = match ureq::get(&format!("{url}/api/v1/topics")).call() {
        Err(ureq::Error::Status(401, r)) => r.header("WWW-Authenticate").map(str::to_owned),
        other => panic!("expected 401, got {other:?}"),
    };
    assert!(challenge.is_some_and(|c| c.starts_with("Basic")));
    let wrong =
        ureq::get(&format!("{url}/api/v1/topics")).set("Authorization", &basic("mon", "nope"));
    assert_eq!(call(wrong, None).0, 401);

    // monitoring reads, but may not change anything.
    let as_mon = |m: &str, p: &str| {
        ureq::request(m, &format!("{url}{p}")).set("Authorization", &basic("mon", "watch"))
    };
    assert_eq!(call(as_mon("GET", "/api/v1/topics"), None).0, 200);
    assert_eq!(call(as_mon("GET", "/"), None).0, 200);
    let (status, body) = call(
        as_mon("POST", "/api/v1/topics"),
        Some(&json!({"name": "x"})),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body["reason"]
        .as_str()
        .is_some_and(|r| r.contains("administrator")));
    assert_eq!(call(as_mon("DELETE", "/api/v1/topics/x"), None).0, 403);
    // A user without any management tag reads nothing.
    let as_app =
        ureq::get(&format!("{url}/api/v1/topics")).set("Authorization", &basic("app", "app"));
    assert_eq!(call(as_app, None).0, 403);
    // Health and metrics stay open.
    assert_eq!(call(ureq::get(&format!("{url}/metrics")), None).0, 200);
    assert_eq!(call(ureq::get(&format!("{url}/health")), None).0, 200);
    // The administrator may.
    let (status, body) = send(&b, "POST", "/api/v1/topics", Some(&json!({"name": "x"})));
    assert_eq!(status, 201, "{body}");
}

#[test]
fn bad_input_gets_the_right_status_and_the_broker_keeps_serving() {
    let (_d, data) = data_dir();
    let b = Broker::start(&data, &[("PORTASK_HTTP__MAX_BODY_BYTES", "4096")]);
    let url = b.http_url();
    send(
        &b,
        "POST",
        "/api/v1/topics",
        Some(&json!({"name": "small", "partitions": 1})),
    );

    // Over the body limit: 413, with or without a declared length. A client that writes the
    // whole request before reading its answer (ureq, like most) reads the 413, not a broken
    // pipe, even when the body is far over the limit.
    for size in [10_000, 4 << 20] {
        let big = vec![b'x'; size];
        let r = ureq::post(&format!("{url}/api/v1/topics/small/records"))
            .set("Authorization", &basic("guest", "guest"))
            .send_bytes(&big);
        assert!(
            matches!(r, Err(ureq::Error::Status(413, _))),
            "{size} bytes: {r:?}"
        );
    }
    let auth = basic("guest", "guest");
    // One that asks `Expect: 100-continue` hears the 413 before sending any of it.
    let mut s = TcpStream::connect(("127.0.0.1", b.http_port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = format!(
        "POST /api/v1/topics/small/records HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 100000000\r\nExpect: 100-continue\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("status line");
    assert_eq!(&head, b"HTTP/1.1 413");
    let mut s = TcpStream::connect(("127.0.0.1", b.http_port)).expect("connect");
    let chunk = vec![b'y'; 3000];
    let mut req = format!(
        "POST /api/v1/topics/small/records HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..3 {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(&chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("status line");
    assert_eq!(&head, b"HTTP/1.1 413");

    // Bad JSON: 400 saying what is wrong.
    let r = ureq::post(&format!("{url}/api/v1/topics"))
        .set("Authorization", &auth)
        .set("Content-Type", "application/json")
        .send_string("{\"name\": ");
    let (status, body) = match r {
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
        other => panic!("expected 400, got {other:?}"),
    };
    assert_eq!(status, 400);
    assert!(body.contains("not valid JSON"), "{body}");
    let (status, body) = send(
        &b,
        "POST",
        "/api/v1/topics/small/records",
        Some(&json!({"records": [{"value": 1, "colour": "red"}]})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["reason"]
        .as_str()
        .is_some_and(|r| r.contains("colour")));

    // Unknown things: 404.
    assert_eq!(
        send(
            &b,
            "POST",
            "/api/v1/topics/nope/records",
            Some(&json!({"records": [{"value": "x"}]}))
        )
        .0,
        404
    );
    assert_eq!(get(&b, "/api/v1/topics/nope").0, 404);
    assert_eq!(get(&b, "/api/v1/topics/small/partitions/7/records").0, 404);
    assert_eq!(get(&b, "/api/v1/no-such-thing").0, 404);
    assert_eq!(send(&b, "DELETE", "/api/v1/topics/nope", None).0, 404);
    // An offset past the end names the valid range.
    let (status, body) = get(&b, "/api/v1/topics/small/partitions/0/records?offset=99");
    assert_eq!(status, 400, "{body}");
    // Conflicts and bad values.
    assert_eq!(
        send(
            &b,
            "POST",
            "/api/v1/topics",
            Some(&json!({"name": "small"}))
        )
        .0,
        409
    );
    assert_eq!(
        send(
            &b,
            "POST",
            "/api/v1/topics",
            Some(&json!({"name": "bad/name"}))
        )
        .0,
        400
    );
    assert_eq!(
        send(
            &b,
            "PATCH",
            "/api/v1/topics/small/config",
            Some(&json!({"retention.ms": "soon"}))
        )
        .0,
        400
    );
    assert_eq!(send(&b, "PUT", "/api/v1/overview", None).0, 405);

    // Garbage on the socket: the connection gets 400 and nothing else changes.
    let mut g = TcpStream::connect(("127.0.0.1", b.http_port)).expect("connect");
    g.write_all(b"\x16\x03\x01 not http at all\r\n\r\n")
        .expect("write");
    g.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answer = Vec::new();
    let _ = g.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    let (status, body) = send(
        &b,
        "POST",
        "/api/v1/topics/small/records",
        Some(&json!({"records": [{"value": "still here"}]})),
    );
    assert_eq!(status, 200, "{body}");
    let (_, page) = get(&b, "/api/v1/topics/small/partitions/0/records");
    assert_eq!(page["records"][0]["value"], "still here");
    assert_eq!(page["records"].as_array().map(Vec::len), Some(1));
}

#[test]
fn topics_connections_and_the_event_stream() {
    let (_d, data) = data_dir();
    let b = Broker::start(&data, &[]);
    assert_eq!(
        send(
            &b,
            "POST",
            "/api/v1/topics",
            Some(
                &json!({"name": "managed", "partitions": 2, "configs": {"retention.ms": "3600000"}})
            )
        )
        .0,
        201
    );
    let (_, config) = get(&b, "/api/v1/topics/managed/config");
    assert_eq!(config["retention.ms"], "3600000");
    let (status, config) = send(
        &b,
        "PATCH",
        "/api/v1/topics/managed/config",
        Some(&json!({"retention.ms": null, "cleanup.policy": "compact"})),
    );
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["cleanup.policy"], "compact");
    assert_eq!(config["retention.ms"], "604800000");
    assert_eq!(
        send(
            &b,
            "POST",
            "/api/v1/topics/managed/partitions",
            Some(&json!({"partitions": 4}))
        )
        .0,
        200
    );

    // librdkafka sees what REST made.
    let c = consumer(&b, "meta");
    let md = c
        .fetch_metadata(Some("managed"), Duration::from_secs(10))
        .expect("metadata");
    assert_eq!(md.topics()[0].partitions().len(), 4);

    let (_, list) = get(&b, "/api/v1/topics");
    assert!(list.as_array().is_some_and(|l| l
        .iter()
        .any(|t| t["name"] == "managed" && t["partitions"] == 4)));

    // Connections: the consumer's is listed; closing it ends it on the broker. librdkafka
    // (2.x, KIP-899) closes its bootstrap connection once metadata names the broker, and
    // connects again only when it needs to: fetching keeps it connected.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("managed", 0, Offset::Beginning)
        .expect("tpl");
    c.assign(&tpl).expect("assign");
    let kafka: Vec<u64> = eventually(10, "the consumer's connection to be listed", || {
        let _ = c.poll(Duration::from_millis(100));
        let (_, conns) = get(&b, "/api/v1/connections");
        let ids: Vec<u64> = conns
            .as_array()
            .map(|l| {
                l.iter()
                    .filter(|c| c["protocol"] == "kafka")
                    .filter_map(|c| c["id"].as_u64())
                    .collect()
            })
            .unwrap_or_default();
        (!ids.is_empty()).then_some(ids)
    });
    for id in &kafka {
        assert_eq!(
            send(&b, "DELETE", &format!("/api/v1/connections/{id}"), None).0,
            204
        );
    }
    eventually(10, "closed connections to leave the list", || {
        let (_, conns) = get(&b, "/api/v1/connections");
        let left = conns
            .as_array()
            .map(|l| {
                l.iter()
                    .filter(|c| kafka.contains(&c["id"].as_u64().unwrap_or(0)))
                    .count()
            })
            .unwrap_or(usize::MAX);
        (left == 0).then_some(())
    });
    assert_eq!(send(&b, "DELETE", "/api/v1/connections/12345", None).0, 404);

    // Deleting the topic: gone for REST and for Kafka.
    assert_eq!(send(&b, "DELETE", "/api/v1/topics/managed", None).0, 204);
    assert_eq!(get(&b, "/api/v1/topics/managed").0, 404);

    // The event stream: an overview event at once, another a second later.
    let mut s = TcpStream::connect(("127.0.0.1", b.http_port)).expect("connect");
    write!(
        s,
        "GET /api/v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
        basic("guest", "guest")
    )
    .expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut seen = String::new();
    let mut buf = [0u8; 8192];
    while seen.matches("event: overview\n").count() < 2 {
        let n = s.read(&mut buf).expect("read stream");
        assert!(n > 0, "stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/event-stream"));
    let data = seen
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("data line");
    let o: Value = serde_json::from_str(data).expect("overview json");
    assert_eq!(o["shards"].as_array().map(Vec::len), Some(2));
}

#[test]
fn a_stalled_client_is_timed_out_and_everyone_else_is_served() {
    let (_d, data) = data_dir();
    let b = Broker::start(&data, &[("PORTASK_HTTP__READ_TIMEOUT_MS", "500")]);
    let auth = basic("guest", "guest");
    let open = || {
        let s = TcpStream::connect(("127.0.0.1", b.http_port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    };
    // A body that stops partway: 408, then the connection closes.
    let mut body = open();
    body.write_all(
        format!(
            "POST /api/v1/topics HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 1000\r\n\r\n{{\"name\": "
        )
        .as_bytes(),
    )
    .expect("write");
    // Headers that stop partway: the connection closes.
    let mut head = open();
    head.write_all(b"GET /health HTT").expect("write");
    // Others are served meanwhile.
    assert_eq!(get(&b, "/health").0, 200);
    let mut answer = Vec::new();
    body.read_to_end(&mut answer).expect("the broker closes");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("http.read_timeout_ms"), "{answer}");
    let mut answer = Vec::new();
    head.read_to_end(&mut answer).expect("the broker closes");
    assert_eq!(get(&b, "/health").0, 200);
}

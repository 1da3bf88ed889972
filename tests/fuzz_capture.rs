//! Captures the fuzz seed corpus (`fuzz/corpus/<target>/`) from real clients: rdkafka,
//! lapin and ureq talk to a broker through a recording TCP proxy, and what each client
//! sent is cut into request frames (Kafka), frames (AMQP) and requests (HTTP) and written
//! as binary files. Ignored in the normal run (it rewrites files in the repository); run
//! it by hand when a client or an API version changes, and commit the result:
//!
//! `cargo test --test fuzz_capture -- --ignored --nocapture`

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{data_dir, Broker};
use futures::executor::block_on;

/// What one client connection sent, as the proxy saw it.
type Session = Arc<Mutex<Vec<u8>>>;

/// A TCP proxy to `target` that records every byte each client connection sent.
struct Recorder {
    port: u16,
    sessions: Arc<Mutex<Vec<Session>>>,
}

impl Recorder {
    fn start(listener: TcpListener, target: u16) -> Recorder {
        let port = listener.local_addr().expect("addr").port();
        let sessions: Arc<Mutex<Vec<Session>>> = Arc::default();
        let all = sessions.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    return;
                };
                let log = Arc::new(Mutex::new(Vec::new()));
                all.lock().expect("lock").push(log.clone());
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                std::thread::spawn(move || pump(client, server, Some(log)));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        Recorder { port, sessions }
    }

    fn streams(&self) -> Vec<Vec<u8>> {
        self.sessions
            .lock()
            .expect("lock")
            .iter()
            .map(|s| s.lock().expect("lock").clone())
            .collect()
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, log: Option<Arc<Mutex<Vec<u8>>>>) {
    let mut buf = [0u8; 65536];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(log) = &log {
            log.lock().expect("lock").extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Replaces the files of `fuzz/corpus/<target>/` with `seeds` (name → bytes).
fn write_corpus(target: &str, seeds: &BTreeMap<String, Vec<u8>>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
    eprintln!("{}: {} seeds", dir.display(), seeds.len());
}

/// Keeps at most `per_kind` seeds of each kind, named `<kind>-<n>.bin`.
fn add(seeds: &mut BTreeMap<String, Vec<u8>>, kind: &str, bytes: &[u8], per_kind: usize) {
    if seeds.values().any(|b| b == bytes) {
        return;
    }
    for n in 0..per_kind {
        let name = format!("{kind}-{n}.bin");
        if let std::collections::btree_map::Entry::Vacant(e) = seeds.entry(name) {
            e.insert(bytes.to_vec());
            return;
        }
    }
}

#[test]
#[ignore = "rewrites fuzz/corpus/ in the repository; run by hand (see the file's comment)"]
fn capture_corpus() {
    let (_dir, data) = data_dir();
    // The proxies' ports are advertised, so every connection a client makes goes through.
    let kafka_proxy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let kafka_proxy_port = kafka_proxy.local_addr().expect("addr").port().to_string();
    let b = Broker::start(
        &data,
        &[
            ("PORTASK_KAFKA__ADVERTISED_PORT", kafka_proxy_port.as_str()),
            ("PORTASK_KAFKA__GROUP_INITIAL_REBALANCE_DELAY_MS", "100"),
        ],
    );
    let kafka = Recorder::start(kafka_proxy, b.port);
    let amqp = Recorder::start(TcpListener::bind("127.0.0.1:0").expect("bind"), b.amqp_port);
    let http = Recorder::start(TcpListener::bind("127.0.0.1:0").expect("bind"), b.http_port);

    let bootstrap = format!("127.0.0.1:{}", kafka.port);
    kafka_workload(&bootstrap, "seeds", &[]);
    // Older, non-flexible versions of the same APIs, as clients of Kafka 2.0 send them.
    kafka_workload(
        &bootstrap,
        "seeds-old",
        &[
            ("api.version.request", "false"),
            ("broker.version.fallback", "2.0.0"),
        ],
    );
    amqp_workload(&format!("amqp://guest:guest@127.0.0.1:{}/%2f", amqp.port));
    http_workload(&format!("http://127.0.0.1:{}", http.port));
    std::thread::sleep(Duration::from_millis(500));

    let mut seeds = BTreeMap::new();
    for stream in kafka.streams() {
        let mut at = 0;
        while let Some(prefix) = stream.get(at..at + 4) {
            let len = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            let Some(frame) = stream.get(at + 4..at + 4 + len) else {
                break;
            };
            let api = i16::from_be_bytes([frame[0], frame[1]]);
            let version = i16::from_be_bytes([frame[2], frame[3]]);
            let name = kafka_protocol::messages::ApiKey::try_from(api)
                .map(|a| format!("{a:?}"))
                .unwrap_or_else(|_| format!("api{api}"));
            add(&mut seeds, &format!("{name}-v{version}"), frame, 2);
            for (v, other) in every_version(frame) {
                add(&mut seeds, &format!("{name}-v{v}"), &other, 2);
            }
            at += 4 + len;
        }
    }
    // Issue 13's Fetch v4 with a partition count of 0x7fffffff.
    seeds.insert(
        "regression-fetch-v4-count-7fffffff.bin".into(),
        hex("00010004000000010003726570ffffffff000001f40000000100100000007fffffff"),
    );
    write_corpus("kafka_request", &seeds);

    let mut seeds = BTreeMap::new();
    for stream in amqp.streams() {
        let Some(frames) = stream.get(8..) else {
            continue;
        };
        // The whole session after the protocol header, and each frame alone.
        add(&mut seeds, "session", frames, 8);
        let mut at = 0;
        while let Some(head) = frames.get(at..at + 7) {
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let Some(frame) = frames.get(at..at + 8 + size) else {
                break;
            };
            let kind = match head[0] {
                1 => {
                    let ids = |i: usize| u16::from_be_bytes([frame[7 + i], frame[8 + i]]);
                    portask::amqp::codec::method_name(ids(0), ids(2)).replace('.', "-")
                }
                2 => "content-header".into(),
                3 => "content-body".into(),
                _ => "heartbeat".into(),
            };
            add(&mut seeds, &kind, frame, 3);
            at += 8 + size;
        }
    }
    write_corpus("amqp_frame", &seeds);

    let mut seeds = BTreeMap::new();
    for stream in http.streams() {
        let line = stream.split(|&c| c == b'\r').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_whitespace();
        let method = words.next().unwrap_or("none").to_lowercase();
        let path: String = words
            .next()
            .unwrap_or("")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        add(&mut seeds, &format!("{method}{path}"), &stream, 2);
    }
    write_corpus("http_request", &seeds);
}

/// A captured request re-encoded at every other version the broker accepts (clients
/// negotiate the newest, so the older forms would otherwise go untested), for every API of
/// the broker's list (`codec::decode_request` and `Request::encode` are generated from it).
fn every_version(frame: &[u8]) -> Vec<(i16, Vec<u8>)> {
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::protocol::Encodable;
    use portask::kafka::codec;

    let Ok(f) = codec::decode_frame(Bytes::copy_from_slice(frame)) else {
        return Vec::new();
    };
    let range = codec::versions(f.api);
    let Ok(req) = codec::decode_request(f.api, f.body, f.version) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for v in range.min..=range.max {
        if v == f.version {
            continue;
        }
        let mut buf = BytesMut::new();
        let header = f.header.clone().with_request_api_version(v);
        if header
            .encode(&mut buf, f.api.request_header_version(v))
            .is_ok()
            && req.encode(&mut buf, v).is_ok()
        {
            out.push((v, buf.to_vec()));
        }
    }
    out
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn kafka_workload(bootstrap: &str, topic: &str, extra: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::Message;

    let config = || {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap);
        for (k, v) in extra {
            c.set(*k, *v);
        }
        c
    };
    let doomed = format!("{topic}-doomed");
    let group = format!("{topic}-readers");
    let admin: AdminClient<DefaultClientContext> = config().create().expect("admin");
    let opts = AdminOptions::new();
    let r = block_on(admin.create_topics(
        &[
            NewTopic::new(topic, 2, TopicReplication::Fixed(1)).set("retention.ms", "600000"),
            NewTopic::new(&doomed, 1, TopicReplication::Fixed(1)),
        ],
        &opts,
    ))
    .expect("create");
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    let _ = block_on(admin.create_partitions(&[NewPartitions::new(topic, 3)], &opts));
    let _ =
        block_on(admin.describe_configs(&[rdkafka::admin::ResourceSpecifier::Topic(topic)], &opts));
    for (compression, idempotent) in [("none", "true"), ("lz4", "false"), ("zstd", "false")] {
        let p: FutureProducer = config()
            .set("compression.type", compression)
            .set("enable.idempotence", idempotent)
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        for i in 0..6 {
            let key = format!("k{i}");
            let value = format!("value {i} {compression}");
            let record = FutureRecord::to(topic).key(&key).payload(&value).headers(
                rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                    key: "trace",
                    value: Some("t-1"),
                }),
            );
            let _ = block_on(p.send(record, Duration::from_secs(10)));
        }
    }
    let consumer: BaseConsumer = config()
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut got = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while got < 18 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            got += 1;
            let _ = m.offset();
        }
    }
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    let _ = consumer.committed(Duration::from_secs(5));
    let _ = consumer.fetch_watermarks(topic, 0, Duration::from_secs(5));
    let _ = consumer.fetch_group_list(None, Duration::from_secs(5));
    let _ = consumer.offsets_for_timestamp(0, Duration::from_secs(5));
    drop(consumer);
    let _ = block_on(admin.delete_groups(&[group.as_str()], &opts));
    let _ = block_on(admin.delete_topics(&[doomed.as_str()], &opts));
}

fn amqp_workload(url: &str) {
    use lapin::options::*;
    use lapin::types::{AMQPValue, FieldArray, FieldTable};
    use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        let mut inner = FieldTable::default();
        inner.insert("depth".into(), AMQPValue::LongInt(2));
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(60_000));
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(1000));
        args.insert("nested".into(), AMQPValue::FieldTable(inner.clone()));
        args.insert(
            "list".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongString("a".into()),
                AMQPValue::Boolean(true),
            ])),
        );
        ch.exchange_declare(
            "seed-ex".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange");
        ch.queue_declare("seed-q".into(), QueueDeclareOptions::default(), args)
            .await
            .expect("queue");
        ch.queue_bind(
            "seed-q".into(),
            "seed-ex".into(),
            "a.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm");
        ch.basic_qos(10, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut headers = FieldTable::default();
        headers.insert("tenant".into(), AMQPValue::LongString("acme".into()));
        headers.insert("inner".into(), AMQPValue::FieldTable(inner));
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("c-1".into())
            .with_reply_to("replies".into())
            .with_expiration("60000".into())
            .with_message_id("m-1".into())
            .with_timestamp(1_700_000_000)
            .with_type("t".into())
            .with_user_id("guest".into())
            .with_app_id("seeds".into());
        for i in 0..3 {
            let body = vec![b'x'; 10 + i * 300];
            ch.basic_publish(
                "seed-ex".into(),
                "a.b".into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        }
        if let Ok(Some(m)) = ch
            .basic_get("seed-q".into(), BasicGetOptions::default())
            .await
        {
            let _ = m.ack(BasicAckOptions::default()).await;
        }
        let consumer = ch
            .basic_consume(
                "seed-q".into(),
                "seed-consumer".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        use futures::StreamExt;
        let mut consumer = consumer;
        if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
        {
            let _ = d.nack(BasicNackOptions::default()).await;
        }
        let _ = ch
            .basic_cancel("seed-consumer".into(), BasicCancelOptions::default())
            .await;
        let _ = ch
            .queue_purge("seed-q".into(), QueuePurgeOptions::default())
            .await;
        let _ = ch
            .queue_unbind(
                "seed-q".into(),
                "seed-ex".into(),
                "a.*".into(),
                FieldTable::default(),
            )
            .await;
        let _ = ch
            .queue_delete("seed-q".into(), QueueDeleteOptions::default())
            .await;
        let _ = ch
            .exchange_delete("seed-ex".into(), ExchangeDeleteOptions::default())
            .await;
        let tx = conn.create_channel().await.expect("channel");
        let _ = tx.tx_select().await;
        let _ = tx.tx_commit().await;
        let _ = tx.close(200, "bye".into()).await;
        let _ = ch.close(200, "bye".into()).await;
        let _ = conn.close(200, "bye".into()).await;
    });
}

fn http_workload(url: &str) {
    use base64::Engine;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("guest:guest")
    );
    // A fresh agent per request: one request per connection, one seed per request.
    let call = |method: &str, path: &str, body: Option<&str>| {
        let req = ureq::AgentBuilder::new()
            .build()
            .request(method, &format!("{url}{path}"))
            .set("Authorization", &auth);
        let _ = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
    };
    call("GET", "/health", None);
    call("GET", "/health/ready", None);
    call("GET", "/metrics", None);
    call("GET", "/api/v1/overview", None);
    call("GET", "/api/v1/shards", None);
    call(
        "POST",
        "/api/v1/topics",
        Some(r#"{"name": "rest-seeds", "partitions": 2}"#),
    );
    call("GET", "/api/v1/topics", None);
    call("GET", "/api/v1/topics/rest-seeds", None);
    call(
        "POST",
        "/api/v1/topics/rest-seeds/records",
        Some(
            r#"{"acks": "all", "records": [{"key": "alpha", "value": "first", "partition": 1, "headers": {"trace": "t-1"}}, {"value": {"n": 2}}, {"key_base64": "AAE=", "value_base64": "/wD+"}]}"#,
        ),
    );
    call(
        "GET",
        "/api/v1/topics/rest-seeds/partitions/1/records?offset=0&max_records=10",
        None,
    );
    call("GET", "/api/v1/consumer-groups", None);
    call(
        "PUT",
        "/api/v1/queues/%2F/rest-q",
        Some(r#"{"durable": true, "arguments": {"x-max-length": 10}}"#),
    );
    call(
        "POST",
        "/api/v1/exchanges/%2F/amq.default/publish",
        Some(
            r#"{"routing_key": "rest-q", "payload": "hi", "payload_encoding": "string", "properties": {"headers": {"a": 1}}}"#,
        ),
    );
    call(
        "POST",
        "/api/v1/queues/%2F/rest-q/get",
        Some(r#"{"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"}"#),
    );
    call("GET", "/api/v1/connections", None);
    call("DELETE", "/api/v1/queues/%2F/rest-q", None);
    call("DELETE", "/api/v1/topics/rest-seeds", None);
    // Chunked encoding, and two requests on one connection.
    let mut s = TcpStream::connect(url.trim_start_matches("http://")).expect("connect");
    let _ = s.write_all(
        format!(
            "POST /api/v1/topics HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
             Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n\
             e\r\n{{\"name\": \"ch\"}}\r\n0\r\n\r\n\
             GET /api/v1/topics/ch?x=1&y=%20 HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

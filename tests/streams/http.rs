//! Stream queues in the HTTP API and the dashboard's data (issue 17, goals 4 and 7): a
//! stream declared and fed with lapin, read by an `x-consumer-group` consumer that acks
//! part of what it got, then seen from outside as a user sees it: `GET
//! /api/v1/queues/%2f/NAME` (type, offsets, records, bytes, retention, consumers with their
//! offsets and lag, the group's committed offset and lag), the `overview` (polled, and the
//! first `overview` event of `/api/v1/stream`, which feeds the dashboard), `/metrics`
//! (the group's lag and committed offset in the series Kafka groups use), the group list;
//! a stream without consumers in the overview; a super stream's exchange and partition rows.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use crate::common::amqp::*;
use crate::common::{data_dir, Broker};
use crate::kit::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde_json::Value;

/// The first `overview` event of `/api/v1/stream` (what the dashboard renders).
fn first_event(b: &Broker) -> Value {
    let r = ureq::get(&format!("{}/api/v1/stream", b.http_url()))
        .set("Authorization", GUEST)
        .timeout(Duration::from_secs(10))
        .call()
        .expect("GET /api/v1/stream");
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let mut event = String::new();
    for line in BufReader::new(r.into_reader()).lines() {
        let line = line.expect("read the event stream");
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            assert_eq!(event, "overview");
            return serde_json::from_str(data).expect("event json");
        }
    }
    panic!("the event stream ended before an overview event");
}

fn row<'a>(rows: &'a Value, name: &str) -> &'a Value {
    rows.as_array()
        .and_then(|a| a.iter().find(|q| q["name"] == name))
        .unwrap_or_else(|| panic!("no row '{name}' in {rows}"))
}

/// Publishes `n` messages through `exchange` (with the routing key `key(i)`), each
/// confirmed.
async fn publish_n(ch: &Channel, exchange: &str, n: u32, key: impl Fn(u32) -> String) {
    for i in 0..n {
        let body = format!("message {i}");
        let c = publish_outcome(
            ch,
            exchange,
            &key(i),
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish and confirm");
        assert!(c.is_ack());
    }
}

/// Polls `path` until `ready` holds for its JSON (10 s at most).
fn await_json(b: &Broker, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = http_json(b, path);
        if ready(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{path} never got there: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_offsets_consumers_and_group_lag_show_in_rest_overview_and_metrics() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    confirm_select(&ch).await;
    declare_stream(
        &ch,
        "audit",
        &[
            ("x-max-length-bytes", AMQPValue::LongLongInt(50_000_000)),
            ("x-max-age", s("7D")),
        ],
    )
    .await;
    publish_n(&ch, "", 10, |_| "audit".to_owned()).await;
    // A stream nobody consumes still has a row with its offsets.
    declare_stream(&ch, "quiet", &[]).await;
    publish_n(&ch, "", 3, |_| "quiet".to_owned()).await;

    // A group consumer reads all 10 and acks 0..=5: the group commits 6, its lag is 4.
    let cch = channel(&conn).await;
    cch.basic_qos(20, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut args = FieldTable::default();
    args.insert("x-consumer-group".into(), s("auditors"));
    args.insert("x-stream-offset".into(), s("first"));
    let mut c = cch
        .basic_consume(
            "audit".into(),
            "auditor-1".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .expect("consume");
    let mut got = Vec::new();
    while got.len() < 10 {
        got.push(next(&mut c, 5).await.expect("a delivery"));
    }
    for d in &got[..6] {
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }

    // The management API: the queue is its topic, with Kafka's offsets.
    let q = await_json(&broker, "/api/v1/queues/%2f/audit", |q| {
        q["consumer_groups"][0]["committed_offset"] == 6
    });
    assert_eq!(q["type"], "stream", "{q}");
    assert_eq!(q["topic"], "audit", "{q}");
    assert_eq!(q["partition"], 0, "{q}");
    assert!(q.get("super_stream").is_none(), "{q}");
    assert_eq!(q["first_offset"], 0, "{q}");
    assert_eq!(q["last_offset"], 9, "{q}");
    assert_eq!(q["next_offset"], 10, "{q}");
    assert_eq!(q["messages"], 10, "{q}");
    assert_eq!(q["messages_unacknowledged"], 4, "{q}");
    assert!(q["size_bytes"].as_u64().unwrap_or(0) > 10 * 9, "{q}");
    assert_eq!(q["retention_bytes"], 50_000_000, "{q}");
    assert_eq!(q["retention_ms"], 7 * 24 * 3600 * 1000i64, "{q}");
    assert!(q["segment_bytes"].as_i64().unwrap_or(0) > 0, "{q}");
    let consumer = &q["consumer_details"][0];
    assert_eq!(consumer["consumer_tag"], "auditor-1", "{q}");
    assert_eq!(consumer["consumer_group"], "auditors", "{q}");
    assert_eq!(consumer["offset"], 6, "{q}");
    assert_eq!(consumer["lag"], 4, "{q}");
    assert_eq!(consumer["unacked"], 4, "{q}");
    assert_eq!(
        q["consumer_groups"],
        serde_json::json!([{"group": "auditors", "committed_offset": 6, "lag": 4}]),
        "{q}"
    );

    // The overview, polled and as the dashboard's first event: the same rows.
    let polled = http_json(&broker, "/api/v1/overview");
    let event = first_event(&broker);
    for o in [&polled, &event] {
        let audit = row(&o["queues"], "audit");
        assert_eq!(audit["type"], "stream", "{audit}");
        assert_eq!(audit["first_offset"], 0, "{audit}");
        assert_eq!(audit["last_offset"], 9, "{audit}");
        assert_eq!(audit["next_offset"], 10, "{audit}");
        assert_eq!(audit["messages_ready"], 10, "{audit}");
        assert_eq!(audit["consumers"], 1, "{audit}");
        assert_eq!(audit["retention_ms"], 7 * 24 * 3600 * 1000i64, "{audit}");
        assert_eq!(audit["consumer_details"][0]["lag"], 4, "{audit}");
        assert_eq!(audit["consumer_groups"][0]["lag"], 4, "{audit}");
        let quiet = row(&o["queues"], "quiet");
        assert_eq!(quiet["type"], "stream", "{quiet}");
        assert_eq!(quiet["next_offset"], 3, "{quiet}");
        assert_eq!(quiet["messages_ready"], 3, "{quiet}");
        assert_eq!(quiet["consumers"], 0, "{quiet}");
        assert_eq!(quiet["consumer_groups"], serde_json::json!([]), "{quiet}");
        // The AMQP-only group is listed with Kafka's groups, with its lag.
        let group = o["consumer_groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["group"] == "auditors"))
            .unwrap_or_else(|| panic!("no group auditors in {}", o["consumer_groups"]));
        assert_eq!(group["lag"], 4, "{group}");
        assert_eq!(group["members"], 0, "{group}");
    }

    // /metrics: the series Kafka groups have.
    let text = http_get(&broker, "/metrics");
    let labels = [
        ("group", "auditors"),
        ("topic", "audit"),
        ("partition", "0"),
    ];
    assert_eq!(
        metric(&text, "portask_consumer_group_lag", &labels),
        Some(4.0)
    );
    assert_eq!(
        metric(&text, "portask_consumer_group_committed_offset", &labels),
        Some(6.0)
    );
    let groups = http_json(&broker, "/api/v1/consumer-groups");
    let listed = row_by(&groups, "group", "auditors");
    assert_eq!(listed["lag"], 4, "{groups}");
}

fn row_by<'a>(rows: &'a Value, key: &str, value: &str) -> &'a Value {
    rows.as_array()
        .and_then(|a| a.iter().find(|r| r[key] == value))
        .unwrap_or_else(|| panic!("no row with {key} = {value} in {rows}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_super_stream_shows_its_partitions_in_rest_and_overview() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    confirm_select(&ch).await;
    let mut args = FieldTable::default();
    args.insert("x-super-stream".into(), AMQPValue::Boolean(true));
    args.insert("x-super-stream-partitions".into(), AMQPValue::LongInt(3));
    ch.exchange_declare(
        "invoices".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("declare the super stream");
    publish_n(&ch, "invoices", 12, |i| format!("customer-{i}")).await;

    let ex = http_json(&broker, "/api/v1/exchanges/%2f/invoices");
    assert_eq!(
        ex["super_stream"],
        serde_json::json!({"topic": "invoices", "partitions": 3}),
        "{ex}"
    );
    let o = http_json(&broker, "/api/v1/overview");
    let mut total = 0;
    for k in 0..3 {
        let name = format!("invoices-{k}");
        let p = row(&o["queues"], &name);
        assert_eq!(p["type"], "stream", "{p}");
        assert_eq!(p["super_stream"], "invoices", "{p}");
        assert_eq!(p["topic"], "invoices", "{p}");
        assert_eq!(p["partition"], k, "{p}");
        assert_eq!(p["first_offset"], 0, "{p}");
        assert_eq!(p["next_offset"], p["messages_ready"], "{p}");
        total += p["messages_ready"].as_i64().expect("messages");
        let q = http_json(&broker, &format!("/api/v1/queues/%2f/{name}"));
        assert_eq!(q["super_stream"], "invoices", "{q}");
        assert_eq!(q["next_offset"], p["next_offset"], "{q}");
    }
    assert_eq!(total, 12, "every message is in one partition");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_a_stream_only_to_whom_may_describe_its_topic() {
    let (_dir, data) = data_dir();
    // guest may do everything on topic `open`, nothing on `secret` (no ACL found: denied).
    let bindings = r#"[
        {resource_type = "topic", resource_name = "open", principal = "User:guest", operations = ["all"]},
    ]"#;
    let broker = Broker::start(
        &data,
        &[
            ("PORTASK_ACL__ENABLED", "true"),
            ("PORTASK_ACL__BINDINGS", bindings),
        ],
    );
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare_stream(&ch, "open", &[]).await;
    declare_stream(&ch, "secret", &[]).await;
    let o = http_json(&broker, "/api/v1/overview");
    let names: Vec<&str> = o["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    assert!(names.contains(&"open"), "{names:?}");
    assert!(!names.contains(&"secret"), "{names:?}");
}

/// A stream queue's row in the overview (what the dashboard, the REST API and the
/// Publish/s and Deliver/s columns read) counts its publishes and deliveries as a classic
/// queue's does: rates over the last second, nonzero while messages flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_counts_its_publishes_and_deliveries_in_the_queue_rates() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    confirm_select(&ch).await;
    declare_stream(&ch, "rated", &[]).await;
    let rate = |o: &Value, key: &str| {
        o["queues"]
            .as_array()
            .and_then(|a| a.iter().find(|q| q["name"] == "rated"))
            .and_then(|q| q[key].as_f64())
            .unwrap_or(0.0)
    };
    publish_n(&ch, "", 20, |_| "rated".to_owned()).await;
    await_json(&broker, "/api/v1/overview", |o| {
        rate(o, "publish_per_second") > 0.0
    });

    let cch = channel(&conn).await;
    let mut c = stream_consumer(&cch, "rated", 50, &[("x-stream-offset", s("first"))])
        .await
        .expect("consume");
    assert_eq!(take(&mut c, 20, 5).await.len(), 20);
    let o = await_json(&broker, "/api/v1/overview", |o| {
        rate(o, "deliver_per_second") > 0.0
    });
    assert_eq!(row(&o["queues"], "rated")["type"], "stream");
}

//! The AMQP side of the HTTP API, against the real binary: topology declared over REST is
//! what lapin sees (and the reverse), REST publish and get carry messages with their
//! properties to and from lapin clients, AMQP permissions and errors map to HTTP statuses,
//! and `/metrics` follows AMQP traffic.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::amqp::*;
use common::{data_dir, Broker};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde_json::{json, Value};

/// A blocking client of the broker's HTTP API as one user.
struct Api {
    base: String,
    auth: Option<String>,
}

/// What came back: status, JSON body (Null when empty or not JSON), `Location`.
struct Answer {
    status: u16,
    body: Value,
    location: Option<String>,
}

impl Api {
    fn new(broker: &Broker, user: &str, password: &str) -> Api {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Api {
            base: broker.http_url(),
            auth: Some(format!("Basic {token}")),
        }
    }

    fn anonymous(broker: &Broker) -> Api {
        Api {
            base: broker.http_url(),
            auth: None,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let mut r =
            ureq::request(method, &format!("{}{path}", self.base)).timeout(Duration::from_secs(30));
        if let Some(a) = &self.auth {
            r = r.set("Authorization", a);
        }
        let result = match body {
            Some(b) => r.set("Content-Type", "application/json").send_string(b),
            None => r.call(),
        };
        let resp = match result {
            Ok(resp) => resp,
            Err(ureq::Error::Status(_, resp)) => resp,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let location = resp.header("Location").map(str::to_owned);
        let text = resp.into_string().expect("response body");
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            location,
        }
    }

    fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None)
    }

    fn put(&self, path: &str, body: Value) -> Answer {
        self.call("PUT", path, Some(&body.to_string()))
    }

    fn post(&self, path: &str, body: Value) -> Answer {
        self.call("POST", path, Some(&body.to_string()))
    }

    fn delete(&self, path: &str) -> Answer {
        self.call("DELETE", path, None)
    }

    /// `POST /api/v1/queues/%2F/{queue}/get`.
    fn take(&self, queue: &str, count: u32, ackmode: &str) -> Vec<Value> {
        let a = self.post(
            &format!("/api/v1/queues/%2F/{queue}/get"),
            json!({"count": count, "ackmode": ackmode, "encoding": "auto"}),
        );
        assert_eq!(a.status, 200, "get from {queue}: {}", a.body);
        a.body.as_array().cloned().expect("an array of messages")
    }

    /// `messages_ready` of a queue of the default vhost.
    fn ready(&self, queue: &str) -> u64 {
        let a = self.get(&format!("/api/v1/queues/%2F/{queue}"));
        assert_eq!(a.status, 200, "{}", a.body);
        a.body["messages_ready"].as_u64().expect("messages_ready")
    }
}

/// The answer is an error `status` whose reason mentions `what`.
fn refused(a: &Answer, status: u16, what: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    let reason = a.body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(what), "'{what}' not in: {reason}");
}

/// Polls `f` until it is true or `secs` pass.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn guest(broker: &Broker) -> Api {
    Api::new(broker, "guest", "guest")
}

fn properties() -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("tenant".into(), AMQPValue::LongString("acme".into()));
    headers.insert("attempt".into(), AMQPValue::LongLongInt(3));
    headers.insert("urgent".into(), AMQPValue::Boolean(true));
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("identity"))
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(4)
        .with_correlation_id(ShortString::from("corr-1"))
        .with_reply_to(ShortString::from("replies"))
        .with_message_id(ShortString::from("m-1"))
        .with_timestamp(1_700_000_000)
        .with_type(ShortString::from("order"))
        .with_app_id(ShortString::from("shop"))
}

async fn confirmed_publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    p: BasicProperties,
) {
    let confirm = publish_outcome(ch, exchange, key, body, p).await;
    assert!(confirm.expect("confirm").is_ack());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_returns_confirmed_messages_and_ack_modes_behave() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let api = guest(&broker);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    // Durable, so the persistent messages are confirmed once on disk.
    let a = api.put("/api/v1/queues/%2F/jobs", json!({"durable": true}));
    assert_eq!(a.status, 201, "{}", a.body);
    confirm_select(&ch).await;
    for i in 0..3 {
        let body = format!("{{\"job\":{i}}}");
        confirmed_publish(&ch, "", "jobs", body.as_bytes(), properties()).await;
    }
    // Confirmed means on the queue: the owner's figures say so at once.
    assert_eq!(api.ready("jobs"), 3);

    // ack_requeue_true: the messages come back, marked redelivered, in their places.
    let first = api.take("jobs", 2, "ack_requeue_true");
    assert_eq!(first.len(), 2);
    let m = &first[0];
    assert_eq!(m["payload"], "{\"job\":0}");
    assert_eq!(m["payload_encoding"], "string");
    assert_eq!(m["payload_bytes"], 9);
    assert_eq!(m["redelivered"], false);
    assert_eq!(m["exchange"], "");
    assert_eq!(m["routing_key"], "jobs");
    assert_eq!(m["message_count"], 2);
    assert_eq!(first[1]["message_count"], 1);
    let p = &m["properties"];
    assert_eq!(p["content_type"], "application/json");
    assert_eq!(p["content_encoding"], "identity");
    assert_eq!(p["delivery_mode"], 2);
    assert_eq!(p["priority"], 4);
    assert_eq!(p["correlation_id"], "corr-1");
    assert_eq!(p["reply_to"], "replies");
    assert_eq!(p["message_id"], "m-1");
    assert_eq!(p["timestamp"], 1_700_000_000u64);
    assert_eq!(p["type"], "order");
    assert_eq!(p["app_id"], "shop");
    assert_eq!(
        p["headers"],
        json!({"tenant": "acme", "attempt": 3, "urgent": true})
    );
    assert_eq!(api.ready("jobs"), 3);
    let again = api.take("jobs", 5, "reject_requeue_true");
    let flags: Vec<(String, bool)> = again
        .iter()
        .map(|m| {
            (
                m["payload"].as_str().unwrap_or_default().to_owned(),
                m["redelivered"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        flags,
        vec![
            ("{\"job\":0}".to_owned(), true),
            ("{\"job\":1}".to_owned(), true),
            ("{\"job\":2}".to_owned(), false),
        ]
    );

    // ack_requeue_false: gone for good; the queue is empty for REST and for AMQP.
    assert_eq!(api.take("jobs", 5, "ack_requeue_false").len(), 3);
    assert!(api.take("jobs", 5, "ack_requeue_false").is_empty());
    assert_eq!(api.ready("jobs"), 0);
    assert!(drain(&ch, "jobs").await.is_empty());

    // reject_requeue_false dead-letters: a queue declared over REST with its arguments.
    let a = api.put("/api/v1/queues/%2F/dead", json!({"durable": true}));
    assert_eq!(a.status, 201, "{}", a.body);
    let a = api.put(
        "/api/v1/queues/%2F/work",
        json!({"durable": true, "arguments": {
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"}}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    confirmed_publish(&ch, "", "work", b"\xff\x00binary", properties()).await;
    let got = api.post(
        "/api/v1/queues/%2F/work/get",
        json!({"count": 1, "ackmode": "reject_requeue_false", "encoding": "auto", "truncate": 3}),
    );
    assert_eq!(got.status, 200, "{}", got.body);
    let m = &got.body[0];
    // Not UTF-8: base64, cut to `truncate` bytes; payload_bytes is the whole body.
    assert_eq!(m["payload_encoding"], "base64");
    assert_eq!(m["payload"], "/wBi");
    assert_eq!(m["payload_bytes"], 8);
    let dead = get_within(&ch, "dead", 10)
        .await
        .expect("dead-lettered message");
    assert_eq!(dead.delivery.data, b"\xff\x00binary");
    assert_eq!(api.ready("work"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rest_publish_reaches_a_topic_consumer_with_its_properties() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let api = guest(&broker);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    ch.exchange_declare(
        "events".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
    declare(&ch, "all-events", FieldTable::default()).await;
    ch.queue_bind(
        "all-events".into(),
        "events".into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
    let mut consumer = consume(&ch, "all-events", true).await;

    let a = api.post(
        "/api/v1/exchanges/%2F/events/publish",
        json!({
            "routing_key": "order.created.eu",
            "payload": "{\"id\":42}",
            "payload_encoding": "string",
            "properties": {
                "content_type": "application/json",
                "content_encoding": "identity",
                "headers": {"tenant": "acme", "attempt": 3, "urgent": true},
                "delivery_mode": 2,
                "priority": 4,
                "correlation_id": "corr-1",
                "reply_to": "replies",
                "expiration": "60000",
                "message_id": "m-1",
                "timestamp": 1_700_000_000u64,
                "type": "order",
                "user_id": "guest",
                "app_id": "shop"
            }
        }),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, json!({"routed": true}));
    let d = next(&mut consumer, 10).await.expect("delivery");
    assert_eq!(d.data, b"{\"id\":42}");
    assert_eq!(d.exchange.as_str(), "events");
    assert_eq!(d.routing_key.as_str(), "order.created.eu");
    let want = properties()
        .with_expiration(ShortString::from("60000"))
        .with_user_id(ShortString::from("guest"));
    assert_eq!(d.properties.content_type(), want.content_type());
    assert_eq!(d.properties.content_encoding(), want.content_encoding());
    assert_eq!(d.properties.delivery_mode(), want.delivery_mode());
    assert_eq!(d.properties.priority(), want.priority());
    assert_eq!(d.properties.correlation_id(), want.correlation_id());
    assert_eq!(d.properties.reply_to(), want.reply_to());
    assert_eq!(d.properties.expiration(), want.expiration());
    assert_eq!(d.properties.message_id(), want.message_id());
    assert_eq!(d.properties.timestamp(), want.timestamp());
    assert_eq!(d.properties.kind(), want.kind());
    assert_eq!(d.properties.user_id(), want.user_id());
    assert_eq!(d.properties.app_id(), want.app_id());
    let headers = d.properties.headers().clone().expect("headers");
    let h = headers.inner();
    assert_eq!(h.get("tenant"), Some(&AMQPValue::LongString("acme".into())));
    assert_eq!(h.get("attempt"), Some(&AMQPValue::LongLongInt(3)));
    assert_eq!(h.get("urgent"), Some(&AMQPValue::Boolean(true)));

    // Binary payloads travel as base64.
    let a = api.post(
        "/api/v1/exchanges/%2F/events/publish",
        json!({"routing_key": "x", "payload": "AAEC/w==", "payload_encoding": "base64",
               "properties": {}}),
    );
    assert_eq!(a.body, json!({"routed": true}));
    let d = next(&mut consumer, 10).await.expect("delivery");
    assert_eq!(d.data, vec![0u8, 1, 2, 255]);

    // Nothing bound matches: not routed, and nothing arrives.
    let a = api.put(
        "/api/v1/exchanges/%2F/quiet",
        json!({"type": "topic", "durable": false}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = api.post(
        "/api/v1/exchanges/%2F/quiet/publish",
        json!({"routing_key": "a.b", "payload": "lost", "payload_encoding": "string",
               "properties": {}, "mandatory": true}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, json!({"routed": false}));
    // The default exchange is `amq.default` in a path.
    let a = api.post(
        "/api/v1/exchanges/%2F/amq.default/publish",
        json!({"routing_key": "all-events", "payload": "direct", "properties": {}}),
    );
    assert_eq!(a.body, json!({"routed": true}));
    let d = next(&mut consumer, 10).await.expect("delivery");
    assert_eq!(d.data, b"direct");
    assert_eq!(d.exchange.as_str(), "");

    // A user_id that is not the caller is refused, as over AMQP.
    let a = api.post(
        "/api/v1/exchanges/%2F/events/publish",
        json!({"routing_key": "a", "payload": "x", "properties": {"user_id": "mallory"}}),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(next(&mut consumer, 1).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topology_declared_over_rest_is_what_amqp_clients_see() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let api = guest(&broker);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;

    let orders = "/api/v1/queues/%2F/orders";
    let args = json!({"durable": true, "arguments": {"x-max-length": 100}});
    assert_eq!(api.put(orders, args.clone()).status, 201);
    assert_eq!(api.put(orders, args).status, 204);
    let a = api.put(
        orders,
        json!({"durable": true, "arguments": {"x-max-length": 5}}),
    );
    refused(&a, 400, "inequivalent");
    let a = api.get(orders);
    assert_eq!(a.body["durable"], true);
    assert_eq!(a.body["arguments"], json!({"x-max-length": 100}));

    let shop = "/api/v1/exchanges/%2F/shop";
    assert_eq!(api.put(shop, json!({"type": "direct"})).status, 201);
    assert_eq!(api.put(shop, json!({"type": "direct"})).status, 204);
    assert_eq!(api.put(shop, json!({"type": "fanout"})).status, 400);
    assert_eq!(api.get(shop).body["type"], "direct");
    let a = api.post(
        "/api/v1/bindings/%2F/e/shop/q/orders",
        json!({"routing_key": "new order", "arguments": {}}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let location = a.location.expect("Location header");
    assert_eq!(location, "/api/v1/bindings/%2F/e/shop/q/orders/new%20order");
    let listed = api.get("/api/v1/bindings/%2F/e/shop/q/orders").body;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["routing_key"], "new order");
    assert_eq!(listed[0]["properties_key"], "new order");
    assert_eq!(api.get(&location).body["destination"], "orders");

    // lapin sees all of it, and routing works.
    passive_queue(&ch, "orders")
        .await
        .expect("passive queue.declare");
    passive_exchange(&ch, "shop", ExchangeKind::Direct)
        .await
        .expect("passive exchange.declare");
    confirm_select(&ch).await;
    confirmed_publish(&ch, "shop", "new order", b"one", BasicProperties::default()).await;
    assert_eq!(api.ready("orders"), 1);

    // Exchange-to-exchange bindings over REST route too.
    assert_eq!(
        api.put("/api/v1/exchanges/%2F/audit", json!({"type": "fanout"}))
            .status,
        201
    );
    assert_eq!(
        api.put("/api/v1/queues/%2F/audit-log", json!({})).status,
        201
    );
    assert_eq!(
        api.post("/api/v1/bindings/%2F/e/audit/q/audit-log", json!({}))
            .status,
        201
    );
    let a = api.post(
        "/api/v1/bindings/%2F/e/shop/e/audit",
        json!({"routing_key": "new order"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    confirmed_publish(&ch, "shop", "new order", b"two", BasicProperties::default()).await;
    assert_eq!(api.ready("orders"), 2);
    assert_eq!(api.ready("audit-log"), 1);

    // Unbinding over REST stops the route.
    assert_eq!(api.delete(&location).status, 204);
    assert_eq!(api.delete(&location).status, 404);
    confirmed_publish(
        &ch,
        "shop",
        "new order",
        b"three",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(api.ready("orders"), 2);

    // if-empty refuses, purge empties, then the delete goes through.
    let a = api.delete(&format!("{orders}?if-empty=true"));
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(api.delete(&format!("{orders}/contents")).status, 204);
    assert_eq!(api.ready("orders"), 0);
    assert_eq!(api.delete(&format!("{orders}?if-empty=true")).status, 204);
    assert_eq!(api.get(orders).status, 404);
    assert_eq!(api.delete(orders).status, 404);
    let names: Vec<Value> = api
        .get("/api/v1/queues/%2F")
        .body
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(names.iter().all(|q| q["name"] != "orders"), "{names:?}");
    assert!(names.iter().any(|q| q["name"] == "audit-log"), "{names:?}");

    let e = passive_queue(&ch, "orders")
        .await
        .expect_err("the queue was deleted over REST");
    assert_eq!(reply_code(&e), Some(404));

    assert_eq!(api.delete(shop).status, 204);
    assert_eq!(api.delete(shop).status, 404);
    let ch = channel(&conn).await;
    let e = passive_exchange(&ch, "shop", ExchangeKind::Direct)
        .await
        .expect_err("the exchange was deleted over REST");
    assert_eq!(reply_code(&e), Some(404));

    // The broker's own exchanges are not for declaring or deleting.
    assert_eq!(
        api.put("/api/v1/exchanges/%2F/amq.mine", json!({"type": "direct"}))
            .status,
        403
    );
    assert_eq!(api.delete("/api/v1/exchanges/%2F/amq.direct").status, 403);
    assert_eq!(api.delete("/api/v1/exchanges/%2F/amq.default").status, 403);
    let listed = api.get("/api/v1/exchanges/%2F").body;
    let names: Vec<&str> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(names.contains(&"") && names.contains(&"amq.topic") && names.contains(&"audit"));
    assert!(!names.contains(&"shop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permissions_and_bad_requests_get_the_status_a_user_expects() {
    let (_d, data) = data_dir();
    let hash = |p: &str| portask::amqp::auth::hash_password([1, 2, 3, 4], p);
    let users = format!(
        "[{{name=\"guest\",password_hash=\"{}\",tags=[\"administrator\"]}},\
          {{name=\"mon\",password_hash=\"{}\",tags=[\"monitoring\"]}},\
          {{name=\"reader\",password_hash=\"{}\",tags=[\"management\"]}}]",
        hash("guest"),
        hash("mon"),
        hash("reader")
    );
    let permissions = "[{user=\"guest\",vhost=\"/\",configure=\".*\",write=\".*\",read=\".*\"},\
          {user=\"mon\",vhost=\"/\",configure=\".*\",write=\".*\",read=\".*\"},\
          {user=\"reader\",vhost=\"/\",configure=\"\",write=\"\",read=\".*\"}]";
    let broker = Broker::start(
        &data,
        &[
            ("PORTASK_AMQP__USERS", users.as_str()),
            ("PORTASK_AMQP__PERMISSIONS", permissions),
            ("PORTASK_AMQP__VHOSTS", "[\"/\", \"staging\"]"),
        ],
    );
    let admin = guest(&broker);
    let mon = Api::new(&broker, "mon", "mon");
    let reader = Api::new(&broker, "reader", "reader");
    assert_eq!(admin.put("/api/v1/queues/%2F/inbox", json!({})).status, 201);

    // Tags: monitoring reads but does not change topology.
    assert_eq!(mon.get("/api/v1/queues").status, 200);
    let a = mon.put("/api/v1/queues/%2F/mine", json!({}));
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(admin.get("/api/v1/queues/%2F/mine").status, 404);
    assert_eq!(Api::anonymous(&broker).get("/api/v1/queues").status, 401);

    // AMQP permissions: reader may get but not publish.
    let a = reader.post(
        "/api/v1/exchanges/%2F/amq.default/publish",
        json!({"routing_key": "inbox", "payload": "x", "properties": {}}),
    );
    refused(&a, 403, "write");
    assert_eq!(admin.ready("inbox"), 0);
    let a = admin.post(
        "/api/v1/exchanges/%2F/amq.default/publish",
        json!({"routing_key": "inbox", "payload": "x", "properties": {}}),
    );
    assert_eq!(a.body, json!({"routed": true}));
    assert_eq!(reader.take("inbox", 1, "ack_requeue_false").len(), 1);
    // An administrator without permissions in a vhost cannot declare there.
    let a = admin.put("/api/v1/queues/staging/q", json!({}));
    assert_eq!(a.status, 403, "{}", a.body);
    // Someone who sees the vhost but lacks the permission.
    assert_eq!(reader.get("/api/v1/queues/staging").status, 403);

    // Unknown things are 404.
    assert_eq!(admin.get("/api/v1/queues/nowhere").status, 404);
    assert_eq!(admin.put("/api/v1/queues/nowhere/q", json!({})).status, 404);
    assert_eq!(admin.get("/api/v1/queues/%2F/missing").status, 404);
    assert_eq!(admin.get("/api/v1/exchanges/%2F/missing").status, 404);
    assert_eq!(admin.get("/api/v1/vhosts/nowhere").status, 404);
    assert_eq!(admin.get("/api/v1/queues/%2F/missing/bindings").status, 404);
    let a = admin.get("/api/v1/bindings/%2F/e/amq.direct/q/missing");
    assert_eq!(a.status, 404, "{}", a.body);
    let a = admin.post("/api/v1/bindings/%2F/e/amq.direct/q/missing", json!({}));
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(
        admin.get("/api/v1/bindings/%2F/e/amq.direct/q/inbox").body,
        json!([])
    );
    let a = admin.post(
        "/api/v1/queues/%2F/missing/get",
        json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}),
    );
    assert_eq!(a.status, 404, "{}", a.body);
    let a = admin.post(
        "/api/v1/exchanges/%2F/missing/publish",
        json!({"routing_key": "", "payload": "x", "properties": {}}),
    );
    assert_eq!(a.status, 404, "{}", a.body);

    // Bad bodies are 400 and say what is wrong.
    let a = admin.call(
        "PUT",
        "/api/v1/queues/%2F/broken",
        Some("{\"durable\": tru"),
    );
    refused(&a, 400, "JSON");
    let a = admin.put("/api/v1/queues/%2F/broken", json!({"durabel": true}));
    refused(&a, 400, "durabel");
    let a = admin.put(
        "/api/v1/queues/%2F/broken",
        json!({"arguments": {"x-max-length": "many"}}),
    );
    refused(&a, 400, "x-max-length");
    let a = admin.post(
        "/api/v1/queues/%2F/inbox/get",
        json!({"count": 1, "ackmode": "maybe", "encoding": "auto"}),
    );
    refused(&a, 400, "ackmode");
    let a = admin.post(
        "/api/v1/exchanges/%2F/amq.default/publish",
        json!({"routing_key": "inbox", "payload": "%%%", "payload_encoding": "base64"}),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    let a = admin.put("/api/v1/exchanges/%2F/odd", json!({"type": "sideways"}));
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(
        admin.get("/api/v1/vhosts").body.as_array().map(Vec::len),
        Some(2)
    );
    // Still serving after all that.
    assert_eq!(admin.get("/api/v1/queues/%2F/inbox").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_follow_amqp_publish_and_consume() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;
    let ch = channel(&conn).await;
    declare(&ch, "metered", FieldTable::default()).await;
    confirm_select(&ch).await;
    for _ in 0..3 {
        confirmed_publish(&ch, "", "metered", b"12345", BasicProperties::default()).await;
    }
    let ready = [("vhost", "/"), ("queue", "metered"), ("state", "ready")];
    let s = broker.scrape();
    assert_eq!(
        common::sample(
            &s,
            "portask_messages_produced_total",
            &[("protocol", "amqp"), ("topic", "amq.default")]
        ),
        3.0
    );
    assert_eq!(common::sample(&s, "portask_queue_messages", &ready), 3.0);
    assert_eq!(
        common::sample(
            &s,
            "portask_requests_total",
            &[("protocol", "amqp"), ("api", "basic.publish")]
        ),
        3.0
    );
    assert_eq!(
        common::sample(
            &s,
            "portask_publish_duration_seconds_count",
            &[("protocol", "amqp")]
        ),
        3.0
    );

    let mut consumer = consume(&ch, "metered", false).await;
    for _ in 0..3 {
        let d = next(&mut consumer, 10).await.expect("delivery");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    eventually(10, "the queue to drain in /metrics", || {
        let s = broker.scrape();
        common::sample(&s, "portask_queue_messages", &ready) == 0.0
            && common::sample(
                &s,
                "portask_queue_messages",
                &[("vhost", "/"), ("queue", "metered"), ("state", "unacked")],
            ) == 0.0
    });
    let s = broker.scrape();
    assert_eq!(
        common::sample(
            &s,
            "portask_messages_consumed_total",
            &[("protocol", "amqp"), ("topic", "metered")]
        ),
        3.0
    );
    assert_eq!(
        common::sample(&s, "portask_bytes_out_total", &[("protocol", "amqp")]),
        15.0
    );

    // A channel the broker closes is counted by its reply code.
    let ch2 = channel(&conn).await;
    let e = passive_queue(&ch2, "absent")
        .await
        .expect_err("no such queue");
    assert_eq!(reply_code(&e), Some(404));
    let s = broker.scrape();
    assert_eq!(
        common::sample(
            &s,
            "portask_errors_total",
            &[("protocol", "amqp"), ("code", "404")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_publish_answered_is_on_disk() {
    let (_d, data) = data_dir();
    let mut broker = Broker::start(&data, &[]);
    let api = guest(&broker);
    assert_eq!(
        api.put("/api/v1/queues/%2F/ledger", json!({"durable": true}))
            .status,
        201
    );
    for i in 0..20 {
        let a = api.post(
            "/api/v1/exchanges/%2F/amq.default/publish",
            json!({"routing_key": "ledger", "payload": format!("entry {i}"),
                   "properties": {"delivery_mode": 2, "message_id": format!("m{i}")}}),
        );
        assert_eq!(a.body, json!({"routed": true}));
    }
    // No clean shutdown: what was answered must have been fdatasync'ed.
    broker.kill9();
    broker.restart();
    let api = guest(&broker);
    assert_eq!(api.ready("ledger"), 20);
    let got = api.take("ledger", 20, "ack_requeue_false");
    let ids: Vec<&str> = got
        .iter()
        .filter_map(|m| m["properties"]["message_id"].as_str())
        .collect();
    let want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(ids, want);
    assert_eq!(got[19]["payload"], "entry 19");
}

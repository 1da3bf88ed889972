//! What the stream test modules share: declaring a stream queue, a stream consumer with
//! its arguments, a confirmed publish, the `x-stream-offset` header of a delivery, taking deliveries, and the
//! reply code of a refusal; reading the HTTP API and `/metrics` as guest.

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer};

use crate::common::amqp::{next, publish_outcome, reply_code};
use crate::common::Broker;

/// An AMQP long string.
pub fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

/// A field table of `pairs`.
pub fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// Declares durable stream queue `name` with the arguments `more` besides
/// `x-queue-type: stream`.
pub async fn try_declare_stream(
    ch: &Channel,
    name: &str,
    more: &[(&str, AMQPValue)],
) -> Result<lapin::Queue, lapin::Error> {
    let mut t = table(more);
    t.insert("x-queue-type".into(), s("stream"));
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        t,
    )
    .await
}

/// [`try_declare_stream`] that must succeed.
pub async fn declare_stream(ch: &Channel, name: &str, more: &[(&str, AMQPValue)]) {
    try_declare_stream(ch, name, more)
        .await
        .expect("declare stream");
}

/// A stream consumer (manual ack) of `queue` with prefetch `prefetch` and the consumer
/// arguments `args` (`x-stream-offset`, `x-consumer-group`, `x-stream-filter`…).
pub async fn stream_consumer(
    ch: &Channel,
    queue: &str,
    prefetch: u16,
    args: &[(&str, AMQPValue)],
) -> Result<Consumer, lapin::Error> {
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        table(args),
    )
    .await
}

/// Publishes `body` to `queue` through the default exchange on a channel in confirm mode,
/// and checks the broker confirmed it.
pub async fn publish_acked(ch: &Channel, queue: &str, body: &[u8]) {
    let c = publish_outcome(ch, "", queue, body, lapin::BasicProperties::default())
        .await
        .expect("publish and confirm");
    assert!(c.is_ack(), "confirmed to {queue}");
}

/// The `x-stream-offset` header every stream delivery carries.
pub fn stream_offset(d: &lapin::message::Delivery) -> i64 {
    let h = d.properties.headers().clone().expect("headers");
    match h.inner().get("x-stream-offset") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("x-stream-offset header {other:?}"),
    }
}

/// Receives and acks up to `n` deliveries; fewer if none comes for `quiet` seconds.
pub async fn take(c: &mut Consumer, n: usize, quiet: u64) -> Vec<lapin::message::Delivery> {
    let mut out = Vec::new();
    while out.len() < n {
        let Some(d) = next(c, quiet).await else { break };
        d.ack(BasicAckOptions::default()).await.expect("ack");
        out.push(d);
    }
    out
}

/// (offset, body) of each delivery.
pub fn offsets_and_bodies(ds: &[lapin::message::Delivery]) -> Vec<(i64, String)> {
    ds.iter()
        .map(|d| {
            (
                stream_offset(d),
                String::from_utf8_lossy(&d.data).into_owned(),
            )
        })
        .collect()
}

/// The reply code `r` was refused with (panics if it was not refused).
pub async fn refused_code<T>(r: Result<T, lapin::Error>) -> u16 {
    match r {
        Ok(_) => panic!("not refused"),
        Err(e) => reply_code(&e).unwrap_or_else(|| panic!("no reply code: {e:?}")),
    }
}

/// `Authorization` for guest:guest.
pub const GUEST: &str = "Basic Z3Vlc3Q6Z3Vlc3Q=";

/// The body of GET `url`, as guest.
pub fn get_as_guest(url: &str) -> String {
    ureq::get(url)
        .set("Authorization", GUEST)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .into_string()
        .expect("body")
}

/// The JSON of GET `url`, as guest.
pub fn json_at(url: &str) -> serde_json::Value {
    serde_json::from_str(&get_as_guest(url)).expect("json")
}

/// The body of GET `path` of the broker's HTTP API, as guest.
pub fn http_get(b: &Broker, path: &str) -> String {
    get_as_guest(&format!("{}{path}", b.http_url()))
}

/// The JSON of GET `path` of the broker's HTTP API, as guest.
pub fn http_json(b: &Broker, path: &str) -> serde_json::Value {
    json_at(&format!("{}{path}", b.http_url()))
}

/// The sample of Prometheus metric `name` whose labels include every pair of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

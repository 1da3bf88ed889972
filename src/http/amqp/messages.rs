//! Messaging over HTTP: `POST /exchanges/{vhost}/{name}/publish` (basic.publish, answered
//! once confirmed) and `POST /queues/{vhost}/{name}/get` (basic.get up to `count` times,
//! then settled by `ackmode`). Runs on the shard serving the request; the messages go to
//! and come from the queues' owner shards as for AMQP clients.

use std::rc::Rc;
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::json::{encode_properties, properties_json, PropertiesIn};
use super::{amqp_error, check_name, InVhost};
use crate::amqp::mesh::{QueueOp, Settle};
use crate::amqp::message::Body;
use crate::amqp::methods::{self, basic_get, basic_publish, Access};
use crate::amqp::outbox;
use crate::amqp::routing::QueueRef;
use crate::broker::Shard;
use crate::http::{ok_json, ApiError, ApiResult, Req};
use crate::metrics::Protocol;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishIn {
    #[serde(default)]
    properties: Option<PropertiesIn>,
    #[serde(default)]
    routing_key: String,
    payload: String,
    #[serde(default = "string_encoding")]
    payload_encoding: String,
    /// Accepted for RabbitMQ clients; `routed` in the answer says what mandatory would.
    #[serde(default)]
    #[allow(dead_code)]
    mandatory: bool,
}

fn string_encoding() -> String {
    "string".into()
}

/// `POST /exchanges/{vhost}/{name}/publish`: basic.publish, answered once confirmed.
pub(super) async fn publish(
    shard: &Rc<Shard>,
    req: &Req,
    vhost: &str,
    exchange: &str,
) -> ApiResult {
    let started = Instant::now();
    let who = InVhost::new(shard, req, vhost)?;
    let p: PublishIn = req.json()?;
    check_name("routing key", &p.routing_key)?;
    let payload = match p.payload_encoding.as_str() {
        "string" => Bytes::from(p.payload),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(p.payload.as_bytes())
            .map(Bytes::from)
            .map_err(|e| ApiError::BadRequest(format!("payload is not valid base64: {e}")))?,
        other => {
            return Err(ApiError::BadRequest(format!(
                "payload_encoding must be string or base64, not '{other}'"
            )))
        }
    };
    let max = shard.config.amqp.max_message_bytes;
    if payload.len() > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "message size {} is larger than amqp.max_message_bytes ({max})",
            payload.len()
        )));
    }
    let properties = encode_properties(p.properties.unwrap_or_default())?;
    let bytes = payload.len() as u64;
    let msg = basic_publish::message(
        exchange,
        &p.routing_key,
        &properties,
        Body::Own(payload),
        &who.user,
    )
    .map_err(amqp_error)?;
    let (reached, acked) =
        basic_publish::publish_confirmed(&who.actor(shard), exchange, &p.routing_key, msg)
            .await
            .map_err(amqp_error)?;
    crate::metrics::with(|m| {
        m.produced(
            Protocol::Http,
            basic_publish::exchange_label(exchange.as_bytes()),
            1,
            bytes,
        );
        m.publish_latency(Protocol::Http, started.elapsed());
    });
    if !acked {
        return Err(ApiError::Unavailable(
            "a queue refused the message (x-overflow reject-publish): a publisher confirm would be a nack".into(),
        ));
    }
    ok_json(&json!({ "routed": reached > 0 }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetIn {
    #[serde(default = "one")]
    count: u32,
    #[serde(default = "requeue")]
    ackmode: String,
    #[serde(default = "auto")]
    encoding: String,
    /// Payloads are cut to this many bytes (`payload_bytes` keeps the full size).
    #[serde(default)]
    truncate: Option<usize>,
}

fn one() -> u32 {
    1
}

fn requeue() -> String {
    "ack_requeue_true".into()
}

fn auto() -> String {
    "auto".into()
}

/// Messages a get took (unacked on the owner) and has not settled yet. If the request
/// ends before it settles them (the client left), they go back to the queue as they were.
struct Taken<'a> {
    shard: &'a Rc<Shard>,
    queue: QueueRef,
    ids: Vec<u64>,
}

impl Taken<'_> {
    fn settle(&mut self, how: Settle) {
        let ids = std::mem::take(&mut self.ids);
        if !ids.is_empty() {
            outbox::push(
                self.shard,
                self.queue.owner,
                QueueOp::Settle {
                    queue: self.queue.clone(),
                    ids,
                    how,
                },
            );
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.settle(Settle::Return);
    }
}

/// `POST /queues/{vhost}/{name}/get`: basic.get up to `count` times, then the `ackmode`.
pub(super) async fn get(shard: &Rc<Shard>, req: &Req, vhost: &str, name: &str) -> ApiResult {
    let started = Instant::now();
    let who = InVhost::new(shard, req, vhost)?;
    let g: GetIn = req.json()?;
    let how = match g.ackmode.as_str() {
        "ack_requeue_true" | "reject_requeue_true" => Settle::Requeue,
        "ack_requeue_false" => Settle::Ack,
        "reject_requeue_false" => Settle::Reject,
        other => {
            return Err(ApiError::BadRequest(format!(
                "ackmode must be ack_requeue_true, ack_requeue_false, reject_requeue_true or reject_requeue_false, not '{other}'"
            )))
        }
    };
    let base64_only = match g.encoding.as_str() {
        "auto" => false,
        "base64" => true,
        other => {
            return Err(ApiError::BadRequest(format!(
                "encoding must be auto or base64, not '{other}'"
            )))
        }
    };
    let actor = who.actor(shard);
    methods::allowed(&actor, Access::Read, "queue", name).map_err(amqp_error)?;
    let (qref, _) = methods::lookup_queue(&actor, name)
        .await
        .map_err(amqp_error)?;
    let mut taken = Taken {
        shard,
        queue: qref.clone(),
        ids: Vec::new(),
    };
    let mut got = Vec::new();
    let (mut bytes, max) = (0usize, shard.config.http.max_body_bytes);
    for _ in 0..g.count {
        match basic_get::take(shard, &qref, false)
            .await
            .map_err(amqp_error)?
        {
            Some((d, left)) => {
                taken.ids.push(d.id);
                bytes += d.msg.body().len();
                got.push((d, left));
            }
            None => break,
        }
        // The answer stays within what a request may carry.
        if bytes >= max {
            break;
        }
    }
    taken.settle(how);
    // The next get (or list) sees the settle: requeued messages are back when we answer.
    outbox::barrier(shard, qref.owner).await;
    crate::metrics::with(|m| {
        m.consumed(Protocol::Http, name, got.len() as u64, bytes as u64);
        m.fetch_latency(Protocol::Http, started.elapsed());
    });
    let rows: Vec<Value> = got
        .iter()
        .map(|(d, left)| {
            let body = d.msg.body();
            let shown = &body[..g.truncate.unwrap_or(usize::MAX).min(body.len())];
            let text = if base64_only {
                None
            } else {
                std::str::from_utf8(shown).ok()
            };
            let (payload, encoding) = match text {
                Some(s) => (s.to_owned(), "string"),
                None => (
                    base64::engine::general_purpose::STANDARD.encode(shown),
                    "base64",
                ),
            };
            json!({
                "payload_bytes": body.len(),
                "redelivered": d.redelivered,
                "exchange": String::from_utf8_lossy(d.msg.exchange()),
                "routing_key": String::from_utf8_lossy(d.msg.routing_key()),
                "message_count": left,
                "properties": properties_json(d.msg.properties()),
                "payload": payload,
                "payload_encoding": encoding,
            })
        })
        .collect();
    ok_json(&rows)
}

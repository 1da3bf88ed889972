//! `/queues`: list (with figures from the owner shards), declare (`PUT`, queue.declare),
//! delete (queue.delete) and purge (`DELETE .../contents`, queue.purge). Runs on the shard
//! serving the request.

use std::collections::HashMap;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::json::{arguments_json, arguments_table};
use super::{
    amqp_error, body, check_name, created_or_not, flag, listing, one_or_all, yes, InVhost,
};
use crate::amqp::methods::queue;
use crate::broker::Shard;
use crate::catalog::amqp::arguments::queue_type;
use crate::catalog::amqp::tables::decode_table;
use crate::http::stats::ShardStats;
use crate::http::{no_content, ApiError, ApiResult, Req};
use crate::metrics::QueueStats;

/// Queue figures by (vhost, name), from every owner shard's stats.
pub(super) fn figures(stats: &[ShardStats]) -> HashMap<(String, String), &QueueStats> {
    stats
        .iter()
        .flat_map(|s| &s.queues)
        .map(|q| ((q.vhost.clone(), q.name.clone()), q))
        .collect()
}

pub(super) async fn list(
    shard: &Rc<Shard>,
    req: &Req,
    vhost: Option<&str>,
    one: Option<&str>,
) -> ApiResult {
    let (names, state) = listing(shard, req, vhost).await?;
    let stats = shard.stats_all().await;
    let figures = figures(&stats);
    let streams = crate::http::streams::Index::new(&stats);
    let mut rows = Vec::new();
    for v in names {
        let Some(t) = state.amqp.get(v) else {
            continue;
        };
        for (name, q) in &t.queues {
            if one.is_some_and(|o| o != name) {
                continue;
            }
            let f = figures.get(&(v.to_owned(), name.clone()));
            let ready = f.map_or(0, |f| f.messages_ready);
            let unacked = f.map_or(0, |f| f.messages_unacknowledged);
            let kind = queue_type(&decode_table(&q.arguments));
            let mut row = json!({
                "name": name,
                "vhost": v,
                "durable": q.durable,
                "auto_delete": q.auto_delete,
                "exclusive": q.exclusive_owner.is_some(),
                "arguments": arguments_json(&q.arguments),
                "messages": ready + unacked,
                "messages_ready": ready,
                "messages_unacknowledged": unacked,
                "consumers": f.map_or(0, |f| f.consumers),
                "state": "running",
                "type": if kind.stream { "stream" } else if kind.quorum { "quorum" } else { "classic" },
                "owner_shard": crate::amqp::queue_owner(q.id, shard.count),
            });
            // A stream queue's messages are its topic's records; its offsets are Kafka's.
            let view = (kind.stream && v == crate::stream::queue::VHOST)
                .then(|| streams.view(&shard.config, &state, q))
                .flatten();
            if let (Some(view), Some(o)) = (view, row.as_object_mut()) {
                o.insert("messages_ready".into(), json!(view.messages));
                if let Ok(Value::Object(fields)) = serde_json::to_value(view) {
                    o.extend(fields);
                }
            }
            rows.push(row);
        }
    }
    one_or_all(rows, "queue", vhost, one)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueIn {
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    exclusive: bool,
    #[serde(default)]
    arguments: Map<String, Value>,
    /// RabbitMQ clients name a cluster node; there is one.
    #[serde(default)]
    #[allow(dead_code)]
    node: Option<String>,
}

/// `PUT /queues/{vhost}/{name}`: queue.declare.
pub(super) async fn declare(shard: &Rc<Shard>, req: &Req, vhost: &str, name: &str) -> ApiResult {
    let who = InVhost::new(shard, req, vhost)?;
    check_name("queue name", name)?;
    let q: QueueIn = body(req)?;
    if q.exclusive {
        return Err(ApiError::BadRequest(
            "an exclusive queue belongs to the AMQP connection that declares it; it cannot be declared over HTTP".into(),
        ));
    }
    let args = arguments_table(&q.arguments)?;
    let declared = queue::declare_queue(
        &who.actor(shard),
        name,
        q.durable,
        false,
        q.auto_delete,
        &args,
    )
    .await
    .map_err(amqp_error)?;
    // As queue.declare-ok does: the owner takes the queue up now (and counts the
    // declare as a use, for x-expires).
    queue::queue_stats(shard, declared.queue)
        .await
        .map_err(amqp_error)?;
    created_or_not(declared.created)
}

/// `DELETE /queues/{vhost}/{name}?if-unused=&if-empty=`: queue.delete.
pub(super) async fn delete(shard: &Rc<Shard>, req: &Req, vhost: &str, name: &str) -> ApiResult {
    let who = InVhost::new(shard, req, vhost)?;
    let (if_unused, if_empty) = (flag(req, "if-unused")?, flag(req, "if-empty")?);
    queue::delete_queue(&who.actor(shard), name, if_unused, if_empty)
        .await
        .map_err(amqp_error)?;
    no_content()
}

/// `DELETE /queues/{vhost}/{name}/contents`: queue.purge.
pub(super) async fn purge(shard: &Rc<Shard>, req: &Req, vhost: &str, name: &str) -> ApiResult {
    let who = InVhost::new(shard, req, vhost)?;
    queue::purge_queue(&who.actor(shard), name)
        .await
        .map_err(amqp_error)?;
    no_content()
}

//! `/exchanges`: list (the built-in ones with the declared), declare (`PUT`,
//! exchange.declare) and delete (exchange.delete); the default exchange and `amq.*` are
//! the broker's (403). Runs on the shard serving the request.

use std::rc::Rc;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::json::{arguments_json, arguments_table};
use super::{amqp_error, check_name, created_or_not, flag, listing, one_or_all, yes, InVhost};
use crate::amqp::methods::{self, exchange};
use crate::broker::Shard;
use crate::catalog::amqp::VhostTopology;
use crate::http::{no_content, ApiError, ApiResult, Req};

pub(super) async fn list(
    shard: &Rc<Shard>,
    req: &Req,
    vhost: Option<&str>,
    one: Option<&str>,
) -> ApiResult {
    let (names, state) = listing(shard, req, vhost).await?;
    let empty = VhostTopology::default();
    let mut rows = Vec::new();
    for v in names {
        let t = state.amqp.get(v).unwrap_or(&empty);
        let builtin = crate::catalog::amqp::BUILTIN_EXCHANGES
            .iter()
            .filter_map(|(n, _)| crate::catalog::amqp::builtin_exchange(n));
        for e in builtin.chain(t.exchanges.values().cloned()) {
            if one.is_some_and(|o| o != e.name) {
                continue;
            }
            let mut row = json!({
                "name": e.name,
                "vhost": v,
                "type": e.kind.as_str(),
                "durable": e.durable,
                "auto_delete": e.auto_delete,
                "internal": e.internal,
                "arguments": arguments_json(&e.arguments),
            });
            // A super stream: its topic's partitions, one partition queue each.
            let partitions = crate::stream::superstream::is_super_exchange(&e.arguments)
                .then(|| state.topic(&e.name).map(|t| t.partitions))
                .flatten();
            if let (Some(n), Some(o)) = (partitions, row.as_object_mut()) {
                o.insert(
                    "super_stream".into(),
                    json!({"topic": e.name, "partitions": n}),
                );
            }
            rows.push(row);
        }
    }
    one_or_all(rows, "exchange", vhost, one)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    arguments: Map<String, Value>,
}

/// The default exchange and `amq.*` are the broker's: 403, as RabbitMQ.
fn reserved(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.starts_with("amq.") {
        let shown = if name.is_empty() { "amq.default" } else { name };
        return Err(ApiError::Forbidden(format!(
            "exchange '{shown}' is built in: it cannot be declared or deleted (the amq. prefix is reserved)"
        )));
    }
    Ok(())
}

/// `PUT /exchanges/{vhost}/{name}`: exchange.declare.
pub(super) async fn declare(shard: &Rc<Shard>, req: &Req, vhost: &str, name: &str) -> ApiResult {
    let who = InVhost::new(shard, req, vhost)?;
    reserved(name)?;
    check_name("exchange name", name)?;
    let e: ExchangeIn = req.json()?;
    let args = arguments_table(&e.arguments)?;
    let actor = who.actor(shard);
    let existed = methods::exchange_exists(&actor, name).await;
    let exchange =
        exchange::new_exchange(name, &e.kind, e.durable, e.auto_delete, e.internal, &args)
            .map_err(amqp_error)?;
    exchange::declare_exchange(&actor, exchange)
        .await
        .map_err(amqp_error)?;
    created_or_not(!existed)
}

/// `DELETE /exchanges/{vhost}/{name}?if-unused=`: exchange.delete.
pub(super) async fn delete(shard: &Rc<Shard>, req: &Req, vhost: &str, name: &str) -> ApiResult {
    let who = InVhost::new(shard, req, vhost)?;
    reserved(name)?;
    let if_unused = flag(req, "if-unused")?;
    let actor = who.actor(shard);
    methods::known_exchange(&actor, name)
        .await
        .map_err(amqp_error)?;
    exchange::delete_exchange(&actor, name, if_unused)
        .await
        .map_err(amqp_error)?;
    no_content()
}

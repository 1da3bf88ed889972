//! `/bindings`: list (all, a vhost's, or between two ends), one binding by its properties
//! key, bind (`POST`, queue.bind / exchange.bind) and unbind (`DELETE`). Runs on the shard
//! serving the request; reads come from its catalog replica.

use std::rc::Rc;

use amq_protocol::types::FieldTable;
use base64::Engine;
use http::{header, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::json::{arguments_json, arguments_table};
use super::{amqp_error, body, caller, check_name, listing, vhosts_for, InVhost};
use crate::amqp::methods::{self, apply_binding, exchange, queue, Actor};
use crate::broker::Shard;
use crate::catalog::amqp::tables::{decode_table, encode_table};
use crate::catalog::amqp::{Binding, DestKind};
use crate::http::{json, no_content, ok_json, ApiError, ApiResult, Req};

/// The two ends a binding path names.
pub(super) struct Pair<'a> {
    pub(super) source: &'a str,
    pub(super) dest_kind: DestKind,
    pub(super) destination: &'a str,
}

impl Pair<'_> {
    pub(super) fn matches(&self, b: &Binding) -> bool {
        b.source == self.source
            && b.dest_kind == self.dest_kind
            && b.destination == self.destination
    }
}

/// The key naming a binding among those of the same two ends: `~` for an empty routing
/// key without arguments, the routing key without arguments, else `{key}~{hash}`.
pub fn properties_key(routing_key: &str, arguments: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let table = decode_table(arguments);
    if table.inner().is_empty() {
        return if routing_key.is_empty() {
            "~".into()
        } else {
            routing_key.to_owned()
        };
    }
    let digest = Sha256::digest(encode_table(&table));
    let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..9]);
    format!("{routing_key}~{hash}")
}

fn binding_json(vhost: &str, b: &Binding) -> Value {
    json!({
        "source": b.source,
        "vhost": vhost,
        "destination": b.destination,
        "destination_type": match b.dest_kind {
            DestKind::Queue => "queue",
            DestKind::Exchange => "exchange",
        },
        "routing_key": b.routing_key,
        "arguments": arguments_json(&b.arguments),
        "properties_key": properties_key(&b.routing_key, &b.arguments),
    })
}

/// Path segments as a URL names them (RFC 3986 unreserved characters kept).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn segment(s: &str) -> String {
    let s = if s.is_empty() { "amq.default" } else { s };
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// The bindings of the vhosts a request sees (or the one it names) that `keep` keeps;
/// 404 unless the queues and exchanges in `ends` exist.
pub(super) async fn list(
    shard: &Rc<Shard>,
    req: &Req,
    vhost: Option<&str>,
    ends: &[(DestKind, &str)],
    keep: &dyn Fn(&Binding) -> bool,
) -> ApiResult {
    let (names, state) = listing(shard, req, vhost).await?;
    for (kind, name) in ends {
        let t = names.first().and_then(|v| state.amqp.get(*v));
        let (found, what) = match kind {
            DestKind::Queue => (t.is_some_and(|t| t.queues.contains_key(*name)), "queue"),
            DestKind::Exchange => (
                t.map_or_else(
                    || crate::catalog::amqp::builtin_exchange(name).is_some(),
                    |t| t.has_exchange(name),
                ),
                "exchange",
            ),
        };
        if !found {
            return Err(ApiError::NotFound(format!(
                "no {what} '{name}' in vhost '{}'",
                vhost.unwrap_or_default()
            )));
        }
    }
    let rows: Vec<Value> = names
        .into_iter()
        .flat_map(|v| {
            state
                .amqp
                .get(v)
                .into_iter()
                .flat_map(|t| t.bindings.iter())
                .filter(|b| keep(b))
                .map(move |b| binding_json(v, b))
        })
        .collect();
    ok_json(&rows)
}

/// The binding of `pair` with properties key `props`, from this shard's replica.
async fn find_binding(
    shard: &Rc<Shard>,
    vhost: &str,
    pair: &Pair<'_>,
    props: &str,
) -> Result<Binding, ApiError> {
    methods::refresh_catalog(shard).await;
    let state = shard.catalog.current();
    state
        .amqp
        .get(vhost)
        .and_then(|t| {
            t.bindings
                .iter()
                .find(|b| pair.matches(b) && properties_key(&b.routing_key, &b.arguments) == props)
        })
        .cloned()
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no binding '{props}' from '{}' to '{}' in vhost '{vhost}'",
                pair.source, pair.destination
            ))
        })
}

pub(super) async fn one(
    shard: &Rc<Shard>,
    req: &Req,
    vhost: &str,
    pair: &Pair<'_>,
    props: &str,
) -> ApiResult {
    let user = caller(req)?;
    vhosts_for(shard, user, Some(vhost))?;
    let b = find_binding(shard, vhost, pair, props).await?;
    ok_json(&binding_json(vhost, &b))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingIn {
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Map<String, Value>,
}

/// The binding checked as queue.bind / exchange.bind check it.
async fn checked_binding(
    actor: &Actor<'_>,
    pair: &Pair<'_>,
    routing_key: &str,
    arguments: &FieldTable,
) -> Result<Binding, ApiError> {
    match pair.dest_kind {
        DestKind::Queue => {
            queue::queue_binding(actor, pair.destination, pair.source, routing_key, arguments).await
        }
        DestKind::Exchange => {
            exchange::exchange_binding(actor, pair.destination, pair.source, routing_key, arguments)
                .await
        }
    }
    .map_err(amqp_error)
}

/// `POST /bindings/{vhost}/e/{source}/q|e/{destination}`: queue.bind / exchange.bind;
/// 201 with the new binding's path in `Location`.
pub(super) async fn bind(shard: &Rc<Shard>, req: &Req, vhost: &str, pair: &Pair<'_>) -> ApiResult {
    let who = InVhost::new(shard, req, vhost)?;
    let b: BindingIn = body(req)?;
    check_name("routing key", &b.routing_key)?;
    let args = arguments_table(&b.arguments)?;
    let actor = who.actor(shard);
    let binding = checked_binding(&actor, pair, &b.routing_key, &args).await?;
    let props = properties_key(&binding.routing_key, &binding.arguments);
    apply_binding(&actor, binding, true)
        .await
        .map_err(amqp_error)?;
    let location = format!(
        "/api/v1/bindings/{}/e/{}/{}/{}/{}",
        segment(vhost),
        segment(pair.source),
        if pair.dest_kind == DestKind::Queue {
            "q"
        } else {
            "e"
        },
        segment(pair.destination),
        percent_encoding::utf8_percent_encode(&props, SEGMENT)
    );
    let mut r = json(StatusCode::CREATED, &json!({ "properties_key": props }));
    if let Ok(v) = header::HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

/// `DELETE /bindings/{vhost}/e/{source}/q|e/{destination}/{props}`: queue.unbind /
/// exchange.unbind.
pub(super) async fn unbind(
    shard: &Rc<Shard>,
    req: &Req,
    vhost: &str,
    pair: &Pair<'_>,
    props: &str,
) -> ApiResult {
    let who = InVhost::new(shard, req, vhost)?;
    let found = find_binding(shard, vhost, pair, props).await?;
    let actor = who.actor(shard);
    let args = decode_table(&found.arguments);
    let binding = checked_binding(&actor, pair, &found.routing_key, &args).await?;
    apply_binding(&actor, binding, false)
        .await
        .map_err(amqp_error)?;
    no_content()
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::AMQPValue;

    #[test]
    fn properties_keys_follow_rabbitmq() {
        let none = encode_table(&FieldTable::default());
        assert_eq!(properties_key("", &none), "~");
        assert_eq!(properties_key("a.b", &none), "a.b");
        let mut t = FieldTable::default();
        t.insert("x-match".into(), AMQPValue::LongString("any".into()));
        let with = encode_table(&t);
        let k = properties_key("a.b", &with);
        assert!(k.starts_with("a.b~") && k.len() > 5, "{k}");
        assert_eq!(k, properties_key("a.b", &with));
        assert_ne!(k, properties_key("a.c", &with));
    }
}

//! `/api/v1/vhosts`, `/api/v1/queues`, `/api/v1/exchanges`, `/api/v1/bindings`: the AMQP
//! topology (list, declare, delete, bind) and messaging (publish to an exchange, get from a
//! queue) in the shapes of RabbitMQ's management API, with the semantics of the AMQP
//! methods they stand for. Runs on the shard serving the request.
//!
//! Every change goes through the code the AMQP methods run (`crate::amqp::methods`, with
//! an `Actor` made of the request's user and vhost): the same permission checks (the
//! user's configure/write/read patterns in `amqp.permissions`, 403), the same catalog
//! writer, the same routing and owner-shard ops. Figures (messages, consumers) come from
//! the queues' owner shards through the mesh (`Shard::stats_all`).
//!
//! Paths name the vhost percent-encoded (`%2F` for `/`) and the default exchange
//! `amq.default`, as RabbitMQ's do. Where this API differs from RabbitMQ's:
//! - `PUT /queues/{vhost}/{name}` and `PUT /exchanges/{vhost}/{name}` answer 201 when they
//!   made the queue or exchange and 204 when an equivalent one existed; `durable` defaults
//!   to true; an exclusive queue cannot be declared over HTTP (it belongs to an AMQP
//!   connection), and another connection's exclusive queue is 409 (AMQP's 405).
//! - A redeclare with other properties or bad arguments is 400 (AMQP's 406), as RabbitMQ.
//! - `DELETE` of an unknown queue or exchange is 404 (AMQP's delete is idempotent).
//! - Binding properties keys: `~` for an empty routing key without arguments, the routing
//!   key itself without arguments, `{routing_key}~{hash}` with arguments (hash: the first
//!   9 bytes of SHA-256 of the arguments' AMQP encoding, base64url). The implicit bindings
//!   of the default exchange are not listed.
//! - `POST .../publish` waits until every queue the message reached has it (a persistent
//!   message on a durable queue fdatasync'ed), as a publisher confirm; a queue refusing it
//!   (`x-overflow` `reject-publish`, a confirm's nack) is 503.
//! - `POST .../get` takes up to `count` messages (unacked on the owner; fewer once their
//!   bodies reach `http.max_body_bytes`), then settles them all by `ackmode`:
//!   `ack_requeue_true` / `reject_requeue_true` put them back marked redelivered,
//!   `ack_requeue_false` acks them, `reject_requeue_false` rejects them (dead-lettered if
//!   the queue says so). A request that ends early gives them back.
//! - Lists are not paginated; a user without the `monitoring` or `administrator` tag sees
//!   the vhosts they have permissions in.
//!
//! Publishes and gets made here count in the metrics under `protocol="http"` (by exchange,
//! `amq.default` for the default one, and by queue); the queue's own enqueued/dequeued
//! figures and depth move on its owner as for AMQP clients.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use base64::Engine;
use bytes::Bytes;
use http::{header, Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::User;
use super::{json, no_content, ok_json, ApiError, ApiResult, Reply, Req};
use crate::amqp::auth::Permissions;
use crate::amqp::mesh::{QueueOp, Settle};
use crate::amqp::methods::{
    self, apply_binding, basic_get, basic_publish, exchange, queue, Access, Actor,
};
use crate::amqp::routing::QueueRef;
use crate::amqp::topology::{decode_table, encode_table, Binding, DestKind, VhostTopology};
use crate::amqp::{outbox, reply, AmqpError};
use crate::broker::Shard;
use crate::metrics::{Protocol, QueueStats};

pub async fn route(shard: &Rc<Shard>, req: &Req, rest: &[&str]) -> ApiResult {
    let m = &req.method;
    let get = m == Method::GET;
    match rest {
        ["vhosts"] if get => vhosts(shard, req, None).await,
        ["vhosts", vhost] if get => vhosts(shard, req, Some(vhost)).await,
        // Vhosts come from the configuration (`amqp.vhosts`).
        ["vhosts"] | ["vhosts", _] => Err(ApiError::MethodNotAllowed),

        ["queues"] if get => queues(shard, req, None, None).await,
        ["queues", vhost] if get => queues(shard, req, Some(vhost), None).await,
        ["queues", vhost, name] if get => queues(shard, req, Some(vhost), Some(name)).await,
        ["queues", vhost, name] if m == Method::PUT => declare_queue(shard, req, vhost, name).await,
        ["queues", vhost, name] if m == Method::DELETE => {
            delete_queue(shard, req, vhost, name).await
        }
        ["queues", vhost, name, "contents"] if m == Method::DELETE => {
            purge(shard, req, vhost, name).await
        }
        ["queues", vhost, name, "get"] if m == Method::POST => {
            get_messages(shard, req, vhost, name).await
        }
        ["queues", vhost, name, "bindings"] if get => {
            let (vhost, name) = (*vhost, *name);
            bindings(shard, req, Some(vhost), &[(DestKind::Queue, name)], &|b| {
                b.dest_kind == DestKind::Queue && b.destination == name
            })
            .await
        }
        ["queues", _] | ["queues", _, _] | ["queues", _, _, "contents" | "get" | "bindings"] => {
            Err(ApiError::MethodNotAllowed)
        }

        ["exchanges"] if get => exchanges(shard, req, None, None).await,
        ["exchanges", vhost] if get => exchanges(shard, req, Some(vhost), None).await,
        ["exchanges", vhost, name] if get => {
            exchanges(shard, req, Some(vhost), Some(exchange_name(name))).await
        }
        ["exchanges", vhost, name] if m == Method::PUT => {
            declare_exchange(shard, req, vhost, exchange_name(name)).await
        }
        ["exchanges", vhost, name] if m == Method::DELETE => {
            delete_exchange(shard, req, vhost, exchange_name(name)).await
        }
        ["exchanges", vhost, name, "publish"] if m == Method::POST => {
            publish(shard, req, vhost, exchange_name(name)).await
        }
        ["exchanges", vhost, name, "bindings", side @ ("source" | "destination")] if get => {
            let (vhost, name, source) = (*vhost, exchange_name(name), *side == "source");
            bindings(
                shard,
                req,
                Some(vhost),
                &[(DestKind::Exchange, name)],
                &|b| {
                    if source {
                        b.source == name
                    } else {
                        b.dest_kind == DestKind::Exchange && b.destination == name
                    }
                },
            )
            .await
        }
        ["exchanges", _] | ["exchanges", _, _] | ["exchanges", _, _, "publish"] => {
            Err(ApiError::MethodNotAllowed)
        }

        ["bindings"] if get => bindings(shard, req, None, &[], &|_| true).await,
        ["bindings", vhost] if get => bindings(shard, req, Some(vhost), &[], &|_| true).await,
        ["bindings", vhost, "e", source, kind @ ("q" | "e"), dest, props @ ..]
            if props.len() <= 1 =>
        {
            let pair = Pair {
                source: exchange_name(source),
                dest_kind: if *kind == "q" {
                    DestKind::Queue
                } else {
                    DestKind::Exchange
                },
                destination: exchange_name(dest),
            };
            match props.first() {
                None if get => {
                    let ends = [
                        (DestKind::Exchange, pair.source),
                        (pair.dest_kind, pair.destination),
                    ];
                    bindings(shard, req, Some(vhost), &ends, &|b| pair.matches(b)).await
                }
                None if m == Method::POST => bind(shard, req, vhost, &pair).await,
                Some(props) if get => binding(shard, req, vhost, &pair, props).await,
                Some(props) if m == Method::DELETE => unbind(shard, req, vhost, &pair, props).await,
                _ => Err(ApiError::MethodNotAllowed),
            }
        }
        ["bindings"] | ["bindings", _] => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound(format!(
            "no such endpoint: /api/v1/{}",
            rest.join("/")
        ))),
    }
}

/// The exchange a path segment names: `amq.default` is the default exchange "".
fn exchange_name(segment: &str) -> &str {
    if segment == "amq.default" {
        ""
    } else {
        segment
    }
}

/// The HTTP form of an AMQP refusal (reply code and text).
pub fn refusal(code: u16, text: String) -> ApiError {
    match code {
        reply::ACCESS_REFUSED => ApiError::Forbidden(text),
        reply::NOT_FOUND => ApiError::NotFound(text),
        reply::RESOURCE_LOCKED => ApiError::Conflict(text),
        reply::PRECONDITION_FAILED
        | reply::FRAME_ERROR
        | reply::SYNTAX_ERROR
        | reply::COMMAND_INVALID
        | reply::NOT_ALLOWED => ApiError::BadRequest(text),
        reply::RESOURCE_ERROR => ApiError::Unavailable(text),
        _ => ApiError::Internal(text),
    }
}

fn amqp_error(e: AmqpError) -> ApiError {
    match e {
        AmqpError::Channel { code, text } | AmqpError::Connection { code, text } => {
            refusal(code, text)
        }
    }
}

fn caller(req: &Req) -> Result<&User, ApiError> {
    req.user.as_ref().ok_or(ApiError::Unauthorized)
}

/// Whether `user` sees `vhost` in lists: monitoring and administrator users see every
/// vhost, others those they have permissions in (as in RabbitMQ).
fn sees(shard: &Shard, user: &User, vhost: &str) -> bool {
    user.tags
        .iter()
        .any(|t| t == "monitoring" || t == "administrator")
        || Permissions::of(&shard.config.amqp, &user.name, vhost).is_some()
}

/// The vhosts a request is about: the one named (404 when not configured, 403 when the
/// user may not see it), or every vhost the user sees.
fn vhosts_for<'a>(
    shard: &'a Shard,
    user: &User,
    vhost: Option<&str>,
) -> Result<Vec<&'a str>, ApiError> {
    let all = &shard.config.amqp.vhosts;
    match vhost {
        Some(v) => {
            let Some(known) = all.iter().find(|x| *x == v) else {
                return Err(ApiError::NotFound(format!("vhost '{v}' does not exist")));
            };
            if !sees(shard, user, v) {
                return Err(ApiError::Forbidden(format!(
                    "user '{}' has no access to vhost '{v}'",
                    user.name
                )));
            }
            Ok(vec![known.as_str()])
        }
        None => Ok(all
            .iter()
            .filter(|v| sees(shard, user, v))
            .map(String::as_str)
            .collect()),
    }
}

/// The request's user in one vhost, with their permissions there: what an `Actor` is
/// made of. 404 for a vhost that is not configured, 403 without permissions in it.
struct InVhost {
    vhost: String,
    user: String,
    perms: Permissions,
}

impl InVhost {
    fn new(shard: &Shard, req: &Req, vhost: &str) -> Result<InVhost, ApiError> {
        let user = caller(req)?;
        if !shard.config.amqp.vhosts.iter().any(|v| v == vhost) {
            return Err(ApiError::NotFound(format!(
                "vhost '{vhost}' does not exist"
            )));
        }
        let perms = Permissions::of(&shard.config.amqp, &user.name, vhost).ok_or_else(|| {
            ApiError::Forbidden(format!(
                "access to vhost '{vhost}' refused for user '{}'",
                user.name
            ))
        })?;
        Ok(InVhost {
            vhost: vhost.to_owned(),
            user: user.name.clone(),
            perms,
        })
    }

    fn actor<'a>(&'a self, shard: &'a Rc<Shard>) -> Actor<'a> {
        Actor {
            shard,
            vhost: &self.vhost,
            user: &self.user,
            perms: Some(&self.perms),
            conn: None,
        }
    }
}

/// AMQP names and routing keys are short strings: at most 255 bytes.
fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if name.len() > 255 {
        return Err(ApiError::BadRequest(format!(
            "the {what} is {} bytes long; AMQP allows 255",
            name.len()
        )));
    }
    Ok(())
}

/// The body as JSON of type `T`; an empty body is `{}`.
fn body<T: serde::de::DeserializeOwned>(req: &Req) -> Result<T, ApiError> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_str("{}").map_err(|e| ApiError::BadRequest(e.to_string()));
    }
    req.json()
}

/// A `true` / `false` query parameter (absent: false).
fn flag(req: &Req, key: &str) -> Result<bool, ApiError> {
    match req.query.get(key).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "query parameter {key} must be true or false, not '{other}'"
        ))),
    }
}

// ---- JSON <-> AMQP field tables and properties ----

/// A JSON object as an AMQP field table: strings are long strings, integers signed 64-bit,
/// other numbers doubles, `null` void, arrays and objects nested.
fn json_table(what: &str, map: &Map<String, Value>) -> Result<FieldTable, ApiError> {
    let mut t = FieldTable::default();
    for (k, v) in map {
        let key = ShortString::try_new(k.as_str()).map_err(|_| {
            ApiError::BadRequest(format!("{what}: key '{k}' is longer than 255 bytes"))
        })?;
        t.insert(key, json_value(what, v)?);
    }
    Ok(t)
}

fn json_value(what: &str, v: &Value) -> Result<AMQPValue, ApiError> {
    Ok(match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => {
                return Err(ApiError::BadRequest(format!(
                    "{what}: the number {n} has no AMQP form"
                )))
            }
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(a) => AMQPValue::FieldArray(
            a.iter()
                .map(|x| json_value(what, x))
                .collect::<Result<Vec<_>, _>>()?
                .into(),
        ),
        Value::Object(m) => AMQPValue::FieldTable(json_table(what, m)?),
    })
}

/// An AMQP field table as JSON (byte arrays and long strings as text, lossy).
fn table_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &AMQPValue) -> Value {
    let float = |f: f64| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number);
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(x) => json!(x),
        AMQPValue::ShortShortUInt(x) => json!(x),
        AMQPValue::ShortInt(x) => json!(x),
        AMQPValue::ShortUInt(x) => json!(x),
        AMQPValue::LongInt(x) => json!(x),
        AMQPValue::LongUInt(x) => json!(x),
        AMQPValue::LongLongInt(x) => json!(x),
        AMQPValue::Timestamp(x) => json!(x),
        AMQPValue::Float(f) => float(*f as f64),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => float(d.value as f64 / 10f64.powi(d.scale as i32)),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::Void => Value::Null,
    }
}

/// Stored (encoded) arguments as JSON.
fn arguments_json(encoded: &[u8]) -> Value {
    table_json(&decode_table(encoded))
}

fn arguments_table(map: &Map<String, Value>) -> Result<FieldTable, ApiError> {
    json_table("arguments", map)
}

/// The basic properties RabbitMQ's publish takes.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PropertiesIn {
    content_type: Option<String>,
    content_encoding: Option<String>,
    headers: Option<Map<String, Value>>,
    delivery_mode: Option<u8>,
    priority: Option<u8>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    /// Milliseconds, as a string (a number is taken too).
    expiration: Option<Value>,
    message_id: Option<String>,
    /// Seconds since the epoch.
    timestamp: Option<u64>,
    #[serde(rename = "type")]
    kind: Option<String>,
    user_id: Option<String>,
    app_id: Option<String>,
    cluster_id: Option<String>,
}

/// The properties in their wire encoding (what the message carries, as from a client).
fn encode_properties(p: PropertiesIn) -> Result<Bytes, ApiError> {
    let short = |field: &str, v: String| {
        ShortString::try_new(v).map_err(|_| {
            ApiError::BadRequest(format!("properties.{field} is longer than 255 bytes"))
        })
    };
    let expiration = match p.expiration {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "properties.expiration must be a string of milliseconds".into(),
            ))
        }
    };
    type Setter = fn(AMQPProperties, ShortString) -> AMQPProperties;
    let texts: [(&str, Option<String>, Setter); 10] = [
        (
            "content_type",
            p.content_type,
            AMQPProperties::with_content_type,
        ),
        (
            "content_encoding",
            p.content_encoding,
            AMQPProperties::with_content_encoding,
        ),
        (
            "correlation_id",
            p.correlation_id,
            AMQPProperties::with_correlation_id,
        ),
        ("reply_to", p.reply_to, AMQPProperties::with_reply_to),
        ("expiration", expiration, AMQPProperties::with_expiration),
        ("message_id", p.message_id, AMQPProperties::with_message_id),
        ("type", p.kind, AMQPProperties::with_type),
        ("user_id", p.user_id, AMQPProperties::with_user_id),
        ("app_id", p.app_id, AMQPProperties::with_app_id),
        ("cluster_id", p.cluster_id, AMQPProperties::with_cluster_id),
    ];
    let mut out = AMQPProperties::default();
    for (field, value, set) in texts {
        if let Some(v) = value {
            out = set(out, short(field, v)?);
        }
    }
    if let Some(h) = p.headers {
        out = out.with_headers(json_table("properties.headers", &h)?);
    }
    if let Some(v) = p.delivery_mode {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        out = out.with_priority(v);
    }
    if let Some(v) = p.timestamp {
        out = out.with_timestamp(v);
    }
    let encoded = gen_properties(&out)(Vec::new().into())
        .map(|ctx| Bytes::from(ctx.into_inner().0))
        .map_err(|e| ApiError::BadRequest(format!("the properties cannot be encoded: {e}")));
    encoded
}

/// A message's properties as JSON, the fields it has.
fn properties_json(raw: &[u8]) -> Value {
    let Some(p) = crate::amqp::message::parse_props(&bytes::Bytes::copy_from_slice(raw)) else {
        return json!({});
    };
    let mut out = Map::new();
    let mut text = |k: &str, v: &Option<ShortString>| {
        if let Some(v) = v {
            out.insert(k.to_owned(), Value::String(v.as_str().to_owned()));
        }
    };
    text("content_type", p.content_type());
    text("content_encoding", p.content_encoding());
    text("correlation_id", p.correlation_id());
    text("reply_to", p.reply_to());
    text("expiration", p.expiration());
    text("message_id", p.message_id());
    text("type", p.kind());
    text("user_id", p.user_id());
    text("app_id", p.app_id());
    text("cluster_id", p.cluster_id());
    if let Some(h) = p.headers() {
        out.insert("headers".into(), table_json(h));
    }
    if let Some(v) = p.delivery_mode() {
        out.insert("delivery_mode".into(), json!(v));
    }
    if let Some(v) = p.priority() {
        out.insert("priority".into(), json!(v));
    }
    if let Some(v) = p.timestamp() {
        out.insert("timestamp".into(), json!(v));
    }
    Value::Object(out)
}

// ---- vhosts and queues ----

/// Queue figures by (vhost, name), from every owner shard.
async fn queue_figures(shard: &Rc<Shard>) -> HashMap<(String, String), QueueStats> {
    shard
        .stats_all()
        .await
        .into_iter()
        .flat_map(|s| s.queues)
        .map(|q| ((q.vhost.clone(), q.name.clone()), q))
        .collect()
}

async fn vhosts(shard: &Rc<Shard>, req: &Req, one: Option<&str>) -> ApiResult {
    let user = caller(req)?;
    let names = vhosts_for(shard, user, one)?;
    methods::refresh_catalog(shard).await;
    let state = shard.catalog.current();
    let figures = queue_figures(shard).await;
    let rows: Vec<Value> = names
        .iter()
        .map(|v| {
            let queues = state.amqp.get(*v).map(|t| &t.queues);
            let (mut ready, mut unacked) = (0u64, 0u64);
            for name in queues.into_iter().flat_map(|q| q.keys()) {
                if let Some(f) = figures.get(&(v.to_string(), name.clone())) {
                    ready += f.messages_ready;
                    unacked += f.messages_unacknowledged;
                }
            }
            json!({
                "name": v,
                "tracing": false,
                "messages": ready + unacked,
                "messages_ready": ready,
                "messages_unacknowledged": unacked,
            })
        })
        .collect();
    match one {
        Some(_) => ok_json(&rows.first()),
        None => ok_json(&rows),
    }
}

async fn queues(shard: &Rc<Shard>, req: &Req, vhost: Option<&str>, one: Option<&str>) -> ApiResult {
    let user = caller(req)?;
    let names = vhosts_for(shard, user, vhost)?;
    methods::refresh_catalog(shard).await;
    let state = shard.catalog.current();
    let figures = queue_figures(shard).await;
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
            rows.push(json!({
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
                "type": "classic",
                "owner_shard": crate::amqp::queue_owner(v, name, shard.count),
            }));
        }
    }
    one_or_all(rows, "queue", vhost, one)
}

/// The one row a path names (404 without it), or the list.
fn one_or_all(
    mut rows: Vec<Value>,
    what: &str,
    vhost: Option<&str>,
    one: Option<&str>,
) -> ApiResult {
    match (vhost, one) {
        (Some(v), Some(name)) => match rows.pop() {
            Some(row) => ok_json(&row),
            None => Err(ApiError::NotFound(format!(
                "no {what} '{name}' in vhost '{v}'"
            ))),
        },
        _ => ok_json(&rows),
    }
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

fn yes() -> bool {
    true
}

fn created_or_not(created: bool) -> ApiResult {
    if created {
        let mut r = Reply::new(super::Body::Full(None));
        *r.status_mut() = StatusCode::CREATED;
        Ok(r)
    } else {
        no_content()
    }
}

/// `PUT /queues/{vhost}/{name}`: queue.declare.
async fn declare_queue(shard: &Rc<Shard>, req: &Req, vhost: &str, name: &str) -> ApiResult {
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
async fn delete_queue(shard: &Rc<Shard>, req: &Req, vhost: &str, name: &str) -> ApiResult {
    let who = InVhost::new(shard, req, vhost)?;
    let (if_unused, if_empty) = (flag(req, "if-unused")?, flag(req, "if-empty")?);
    queue::delete_queue(&who.actor(shard), name, if_unused, if_empty)
        .await
        .map_err(amqp_error)?;
    no_content()
}

/// `DELETE /queues/{vhost}/{name}/contents`: queue.purge.
async fn purge(shard: &Rc<Shard>, req: &Req, vhost: &str, name: &str) -> ApiResult {
    let who = InVhost::new(shard, req, vhost)?;
    queue::purge_queue(&who.actor(shard), name)
        .await
        .map_err(amqp_error)?;
    no_content()
}

// ---- exchanges ----

async fn exchanges(
    shard: &Rc<Shard>,
    req: &Req,
    vhost: Option<&str>,
    one: Option<&str>,
) -> ApiResult {
    let user = caller(req)?;
    let names = vhosts_for(shard, user, vhost)?;
    methods::refresh_catalog(shard).await;
    let state = shard.catalog.current();
    let empty = VhostTopology::default();
    let mut rows = Vec::new();
    for v in names {
        let t = state.amqp.get(v).unwrap_or(&empty);
        let builtin = crate::amqp::topology::BUILTIN_EXCHANGES
            .iter()
            .filter_map(|(n, _)| crate::amqp::topology::builtin_exchange(n));
        for e in builtin.chain(t.exchanges.values().cloned()) {
            if one.is_some_and(|o| o != e.name) {
                continue;
            }
            rows.push(json!({
                "name": e.name,
                "vhost": v,
                "type": e.kind.as_str(),
                "durable": e.durable,
                "auto_delete": e.auto_delete,
                "internal": e.internal,
                "arguments": arguments_json(&e.arguments),
            }));
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
async fn declare_exchange(shard: &Rc<Shard>, req: &Req, vhost: &str, name: &str) -> ApiResult {
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
async fn delete_exchange(shard: &Rc<Shard>, req: &Req, vhost: &str, name: &str) -> ApiResult {
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

// ---- bindings ----

/// The two ends a binding path names.
struct Pair<'a> {
    source: &'a str,
    dest_kind: DestKind,
    destination: &'a str,
}

impl Pair<'_> {
    fn matches(&self, b: &Binding) -> bool {
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
async fn bindings(
    shard: &Rc<Shard>,
    req: &Req,
    vhost: Option<&str>,
    ends: &[(DestKind, &str)],
    keep: &dyn Fn(&Binding) -> bool,
) -> ApiResult {
    let user = caller(req)?;
    let names = vhosts_for(shard, user, vhost)?;
    methods::refresh_catalog(shard).await;
    let state = shard.catalog.current();
    for (kind, name) in ends {
        let t = names.first().and_then(|v| state.amqp.get(*v));
        let (found, what) = match kind {
            DestKind::Queue => (t.is_some_and(|t| t.queues.contains_key(*name)), "queue"),
            DestKind::Exchange => (
                t.map_or_else(
                    || crate::amqp::topology::builtin_exchange(name).is_some(),
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

async fn binding(
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
async fn bind(shard: &Rc<Shard>, req: &Req, vhost: &str, pair: &Pair<'_>) -> ApiResult {
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
async fn unbind(
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

// ---- messaging ----

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
async fn publish(shard: &Rc<Shard>, req: &Req, vhost: &str, exchange: &str) -> ApiResult {
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
    let msg = basic_publish::message(exchange, &p.routing_key, properties, payload, &who.user)
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
async fn get_messages(shard: &Rc<Shard>, req: &Req, vhost: &str, name: &str) -> ApiResult {
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
                bytes += d.msg.body.len();
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
            let body = &d.msg.body[..];
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
                "exchange": String::from_utf8_lossy(&d.msg.exchange),
                "routing_key": String::from_utf8_lossy(&d.msg.routing_key),
                "message_count": left,
                "properties": properties_json(&d.msg.properties),
                "payload": payload,
                "payload_encoding": encoding,
            })
        })
        .collect();
    ok_json(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn json_and_field_tables_round_trip() {
        let v = json!({"s": "x", "i": -3, "f": 1.5, "b": true, "n": null,
                        "a": [1, "two"], "o": {"k": "v"}});
        let Value::Object(m) = &v else { unreachable!() };
        let t = json_table("headers", m).unwrap();
        assert_eq!(table_json(&t), v);
        let long = "k".repeat(256);
        let mut bad = Map::new();
        bad.insert(long, json!(1));
        assert!(json_table("headers", &bad).is_err());
    }

    #[test]
    fn properties_encode_and_decode() {
        let p: PropertiesIn = serde_json::from_value(json!({
            "content_type": "text/plain", "delivery_mode": 2, "priority": 3,
            "headers": {"h": "v"}, "type": "t", "timestamp": 7, "expiration": 1000
        }))
        .unwrap();
        let raw = encode_properties(p).unwrap();
        let out = properties_json(&raw);
        assert_eq!(out["content_type"], "text/plain");
        assert_eq!(out["delivery_mode"], 2);
        assert_eq!(out["headers"]["h"], "v");
        assert_eq!(out["type"], "t");
        assert_eq!(out["expiration"], "1000");
        let too_long: PropertiesIn =
            serde_json::from_value(json!({"message_id": "m".repeat(300)})).unwrap();
        assert!(encode_properties(too_long).is_err());
    }
}

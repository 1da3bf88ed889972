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

//!
//! Layout: `route` and what every resource uses (the caller's vhosts and permissions,
//! names, flags, AMQP refusals as HTTP errors) are here; the JSON forms of AMQP field
//! tables and message properties in `json`; one file per resource: `vhosts`, `queues`,
//! `exchanges`, `bindings`, and `messages` (publish to an exchange, get from a queue).

mod bindings;
mod exchanges;
mod json;
mod messages;
mod queues;
mod vhosts;

use std::rc::Rc;
use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::Value;

use super::auth::User;
use super::{no_content, ok_json, ApiError, ApiResult, Reply, Req};
use crate::amqp::auth::Permissions;
use crate::amqp::methods::{self, Actor};
use crate::amqp::{reply, AmqpError};
use crate::broker::Shard;
use crate::catalog::amqp::DestKind;
use crate::catalog::CatalogState;

/// Serves `/api/v1/{rest}` for the AMQP resources; each resource's file holds its
/// handlers.
pub async fn route(shard: &Rc<Shard>, req: &Req, rest: &[&str]) -> ApiResult {
    let m = &req.method;
    let get = m == Method::GET;
    match rest {
        ["vhosts"] if get => vhosts::list(shard, req, None).await,
        ["vhosts", vhost] if get => vhosts::list(shard, req, Some(vhost)).await,
        // Vhosts come from the configuration (`amqp.vhosts`).
        ["vhosts"] | ["vhosts", _] => Err(ApiError::MethodNotAllowed),

        ["queues"] if get => queues::list(shard, req, None, None).await,
        ["queues", vhost] if get => queues::list(shard, req, Some(vhost), None).await,
        ["queues", vhost, name] if get => queues::list(shard, req, Some(vhost), Some(name)).await,
        ["queues", vhost, name] if m == Method::PUT => {
            queues::declare(shard, req, vhost, name).await
        }
        ["queues", vhost, name] if m == Method::DELETE => {
            queues::delete(shard, req, vhost, name).await
        }
        ["queues", vhost, name, "contents"] if m == Method::DELETE => {
            queues::purge(shard, req, vhost, name).await
        }
        ["queues", vhost, name, "get"] if m == Method::POST => {
            messages::get(shard, req, vhost, name).await
        }
        ["queues", vhost, name, "bindings"] if get => {
            let (vhost, name) = (*vhost, *name);
            bindings::list(shard, req, Some(vhost), &[(DestKind::Queue, name)], &|b| {
                b.dest_kind == DestKind::Queue && b.destination == name
            })
            .await
        }
        ["queues", _] | ["queues", _, _] | ["queues", _, _, "contents" | "get" | "bindings"] => {
            Err(ApiError::MethodNotAllowed)
        }

        ["exchanges"] if get => exchanges::list(shard, req, None, None).await,
        ["exchanges", vhost] if get => exchanges::list(shard, req, Some(vhost), None).await,
        ["exchanges", vhost, name] if get => {
            exchanges::list(shard, req, Some(vhost), Some(exchange_name(name))).await
        }
        ["exchanges", vhost, name] if m == Method::PUT => {
            exchanges::declare(shard, req, vhost, exchange_name(name)).await
        }
        ["exchanges", vhost, name] if m == Method::DELETE => {
            exchanges::delete(shard, req, vhost, exchange_name(name)).await
        }
        ["exchanges", vhost, name, "publish"] if m == Method::POST => {
            messages::publish(shard, req, vhost, exchange_name(name)).await
        }
        ["exchanges", vhost, name, "bindings", side @ ("source" | "destination")] if get => {
            let (vhost, name, source) = (*vhost, exchange_name(name), *side == "source");
            bindings::list(
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

        ["bindings"] if get => bindings::list(shard, req, None, &[], &|_| true).await,
        ["bindings", vhost] if get => bindings::list(shard, req, Some(vhost), &[], &|_| true).await,
        ["bindings", vhost, "e", source, kind @ ("q" | "e"), dest, props @ ..]
            if props.len() <= 1 =>
        {
            let pair = bindings::Pair {
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
                    bindings::list(shard, req, Some(vhost), &ends, &|b| pair.matches(b)).await
                }
                None if m == Method::POST => bindings::bind(shard, req, vhost, &pair).await,
                Some(props) if get => bindings::one(shard, req, vhost, &pair, props).await,
                Some(props) if m == Method::DELETE => {
                    bindings::unbind(shard, req, vhost, &pair, props).await
                }
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

/// The start of every listing: the vhosts the caller may list (`vhost`, or all it sees) and
/// the catalog as of now (brought up to date from the writer first).
async fn listing<'a>(
    shard: &'a Rc<Shard>,
    req: &Req,
    vhost: Option<&str>,
) -> Result<(Vec<&'a str>, Arc<CatalogState>), ApiError> {
    let names = vhosts_for(shard, caller(req)?, vhost)?;
    methods::refresh_catalog(shard).await;
    Ok((names, shard.catalog.current()))
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

/// `true`, for `#[serde(default = "yes")]`.
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

//! One file per AMQP method family, each documenting the methods it serves in their
//! protocol form. `dispatch` runs on the connection's shard for every method frame on an
//! open channel, in arrival order; a handler either answers at once or awaits the
//! catalog writer or a queue's owner shard (through the outbox) before answering.

pub mod basic_ack;
pub mod basic_consume;
pub mod basic_get;
pub mod basic_publish;
pub mod basic_qos;
pub mod channel;
pub mod confirm;
pub mod exchange;
pub mod queue;
pub mod tx;

use std::rc::Rc;

use amq_protocol::protocol::{
    access, basic, channel as chan, confirm as conf, exchange as ex, queue as qm, tx as txm,
    AMQPClass,
};
use bytes::Bytes;

use super::auth::Permissions;
use super::channel::ChannelRef;
use super::connection::Connection;
use super::placement::{self, Locator};
use super::routing::QueueRef;
use super::{reply, AmqpError};
use crate::broker::Shard;
use crate::catalog::amqp::Queue;
use crate::catalog::{CatalogError, Change};

/// Runs the handler of one method. The methods that wait (topology changes, consume, get,
/// tx.commit) run boxed: their futures (up to 2.8 KiB) would otherwise sit inline in every
/// AMQP connection's task for its whole life, idle or not; publish and ack do not wait.
pub async fn dispatch(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    method: AMQPClass,
    payload: &Bytes,
) -> Result<(), AmqpError> {
    match method {
        AMQPClass::Channel(m) => match m {
            chan::AMQPMethod::Open(_) => Err(AmqpError::connection(
                reply::CHANNEL_ERROR,
                "CHANNEL_ERROR - second 'channel.open' seen",
            )),
            chan::AMQPMethod::Flow(f) => channel::flow(conn, ch, f),
            chan::AMQPMethod::FlowOk(_) => Ok(()),
            chan::AMQPMethod::Close(_) => channel::close(conn, ch),
            chan::AMQPMethod::CloseOk(_) => Ok(()),
            _ => Err(invalid()),
        },
        AMQPClass::Exchange(m) => match m {
            ex::AMQPMethod::Declare(d) => Box::pin(exchange::declare(conn, ch, d)).await,
            ex::AMQPMethod::Delete(d) => Box::pin(exchange::delete(conn, ch, d)).await,
            ex::AMQPMethod::Bind(b) => Box::pin(exchange::bind(conn, ch, b)).await,
            ex::AMQPMethod::Unbind(u) => Box::pin(exchange::unbind(conn, ch, u)).await,
            _ => Err(invalid()),
        },
        AMQPClass::Queue(m) => match m {
            qm::AMQPMethod::Declare(d) => Box::pin(queue::declare(conn, ch, d)).await,
            qm::AMQPMethod::Bind(b) => Box::pin(queue::bind(conn, ch, b)).await,
            qm::AMQPMethod::Unbind(u) => Box::pin(queue::unbind(conn, ch, u)).await,
            qm::AMQPMethod::Purge(p) => Box::pin(queue::purge(conn, ch, p)).await,
            qm::AMQPMethod::Delete(d) => Box::pin(queue::delete(conn, ch, d)).await,
            _ => Err(invalid()),
        },
        AMQPClass::Basic(m) => match m {
            basic::AMQPMethod::Qos(q) => basic_qos::qos(conn, ch, q, payload),
            basic::AMQPMethod::Consume(c) => Box::pin(basic_consume::consume(conn, ch, c)).await,
            basic::AMQPMethod::Cancel(c) => basic_consume::cancel(conn, ch, c),
            // `channels::frame` reads basic.publish itself (`codec::decode_publish`) and
            // never gets here with one; this arm keeps dispatch whole for any method.
            basic::AMQPMethod::Publish(p) => basic_publish::publish(
                conn,
                ch,
                crate::amqp::codec::PublishArgs {
                    exchange: p.exchange.as_str(),
                    routing_key: p.routing_key.as_str(),
                    mandatory: p.mandatory,
                    immediate: p.immediate,
                },
            ),
            basic::AMQPMethod::Get(g) => Box::pin(basic_get::get(conn, ch, g)).await,
            basic::AMQPMethod::Ack(a) => basic_ack::ack(conn, ch, a),
            basic::AMQPMethod::Nack(n) => basic_ack::nack(conn, ch, n),
            basic::AMQPMethod::Reject(r) => basic_ack::reject(conn, ch, r),
            basic::AMQPMethod::Recover(r) => basic_ack::recover(conn, ch, r.requeue, true),
            basic::AMQPMethod::RecoverAsync(r) => basic_ack::recover(conn, ch, r.requeue, false),
            _ => Err(invalid()),
        },
        AMQPClass::Confirm(conf::AMQPMethod::Select(s)) => confirm::select(conn, ch, s),
        AMQPClass::Tx(m) => match m {
            txm::AMQPMethod::Select(_) => tx::select(conn, ch),
            txm::AMQPMethod::Commit(_) => Box::pin(tx::commit(conn, ch)).await,
            txm::AMQPMethod::Rollback(_) => tx::rollback(conn, ch),
            _ => Err(invalid()),
        },
        // Old clients ask for a ticket first; RabbitMQ answers ticket 1 and ignores it.
        AMQPClass::Access(access::AMQPMethod::Request(_)) => {
            let id = ch.borrow().id;
            conn.send_method(
                id,
                AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
            );
            Ok(())
        }
        _ => Err(invalid()),
    }
}

fn invalid() -> AmqpError {
    AmqpError::connection(
        reply::COMMAND_INVALID,
        "COMMAND_INVALID - method not valid here",
    )
}

/// A method frame that did not decode: one too short to name its method is a
/// FRAME_ERROR, unknown class/method ids are NOT_IMPLEMENTED, known ones with bad (or too
/// deeply nested) arguments SYNTAX_ERROR.
pub fn undecodable(payload: &[u8]) -> AmqpError {
    if payload.len() < 4 {
        return AmqpError::connection(
            reply::FRAME_ERROR,
            format!(
                "FRAME_ERROR - method frame of {} bytes has no class and method ids",
                payload.len()
            ),
        );
    }
    let (c, m) = super::codec::method_ids(payload);
    let known = super::codec::method_name(c, m) != "unknown";
    if known {
        AmqpError::connection(
            reply::SYNTAX_ERROR,
            format!("SYNTAX_ERROR - malformed arguments of method {c}.{m}"),
        )
    } else {
        AmqpError::connection(
            reply::NOT_IMPLEMENTED,
            format!("NOT_IMPLEMENTED - unknown method {c}.{m}"),
        )
    }
}

/// Who acts on the topology or moves messages, and where: the shard doing the work, the
/// vhost, the user and their permissions there, and the AMQP connection if there is one
/// (an exclusive queue belongs to its connection; the HTTP API has none). The shared code
/// of the methods below takes an `Actor`, so an AMQP method and its HTTP form
/// (`crate::http::amqp`) run the same checks and the same changes.
pub struct Actor<'a> {
    pub shard: &'a Rc<Shard>,
    pub vhost: &'a str,
    pub user: &'a str,
    /// `None`: no permissions at all in this vhost.
    pub perms: Option<&'a Permissions>,
    pub conn: Option<u64>,
}

/// The three kinds of AMQP permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Configure,
    Write,
    Read,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

/// A catalog refusal as the client sees it.
pub fn catalog_error(e: CatalogError) -> AmqpError {
    match e {
        CatalogError::Amqp { code, text } => AmqpError::from_code(code, text),
        other => AmqpError::connection(reply::INTERNAL_ERROR, format!("INTERNAL_ERROR - {other}")),
    }
}

/// Applies one catalog change through the writer (read-your-writes on return).
pub async fn change(shard: &Rc<Shard>, c: Change) -> Result<(), AmqpError> {
    let r = shard.change_catalog(vec![c], false).await;
    match r.into_iter().next() {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(catalog_error(e)),
        None => Err(AmqpError::connection(
            reply::INTERNAL_ERROR,
            "INTERNAL_ERROR - no answer from the catalog writer",
        )),
    }
}

/// Applies several catalog changes through the writer in one call; the first refusal is
/// the answer.
pub async fn changes(shard: &Rc<Shard>, cs: Vec<Change>) -> Result<(), AmqpError> {
    let n = cs.len();
    let r = shard.change_catalog(cs, false).await;
    if r.len() < n {
        return Err(AmqpError::connection(
            reply::INTERNAL_ERROR,
            "INTERNAL_ERROR - no answer from the catalog writer",
        ));
    }
    r.into_iter().try_for_each(|r| r.map_err(catalog_error))
}

/// Adds (`bind`) or removes a binding through the catalog writer: queue.bind/unbind and
/// exchange.bind/unbind differ only in how they check and build the binding.
pub async fn apply_binding(
    actor: &Actor<'_>,
    binding: crate::catalog::amqp::Binding,
    bind: bool,
) -> Result<(), AmqpError> {
    use crate::catalog::amqp::TopologyChange;
    let vhost = actor.vhost.to_owned();
    let c = if bind {
        TopologyChange::Bind { vhost, binding }
    } else {
        TopologyChange::Unbind { vhost, binding }
    };
    change(actor.shard, Change::Amqp(c)).await
}

/// Brings this shard's replica up to the writer's latest version; used before
/// answering NOT_FOUND, since a change made on another shard may still be on its way.
pub async fn refresh_catalog(shard: &Rc<Shard>) {
    if shard.id != 0 {
        shard.change_catalog(Vec::new(), false).await;
    }
}

pub fn access_refused(actor: &Actor<'_>, what: Access, kind: &str, name: &str) -> AmqpError {
    let shown = if name.is_empty() { "amq.default" } else { name };
    AmqpError::channel(
        reply::ACCESS_REFUSED,
        format!(
            "ACCESS_REFUSED - access to {kind} '{shown}' in vhost '{}' refused for user '{}' ({})",
            actor.vhost,
            actor.user,
            what.as_str()
        ),
    )
}

/// Checks a permission of the acting user.
pub fn allowed(actor: &Actor<'_>, what: Access, kind: &str, name: &str) -> Result<(), AmqpError> {
    let ok = match actor.perms {
        Some(p) => match what {
            Access::Configure => p.configure(name),
            Access::Write => p.write(name),
            Access::Read => p.read(name),
        },
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(access_refused(actor, what, kind, name))
    }
}

/// A declared queue: its reference for ops and its definition. NOT_FOUND after a
/// refresh; RESOURCE_LOCKED when it is another connection's exclusive queue (every
/// exclusive queue, for an actor without a connection).
pub async fn lookup_queue(actor: &Actor<'_>, name: &str) -> Result<(QueueRef, Queue), AmqpError> {
    let vhost = actor.vhost;
    for attempt in 0..2 {
        let state = actor.shard.catalog.current();
        if let Some(def) = state.amqp.get(vhost).and_then(|t| t.queues.get(name)) {
            if let Some(owner) = def.exclusive_owner {
                if Some(owner) != actor.conn {
                    return Err(AmqpError::channel(
                        reply::RESOURCE_LOCKED,
                        format!(
                            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
                        ),
                    ));
                }
            }
            let router = actor.shard.amqp.router(actor.shard);
            if let Some(q) = router.queue(vhost, name) {
                return Ok((q.clone(), def.clone()));
            }
        }
        if attempt == 0 {
            refresh_catalog(actor.shard).await;
        }
    }
    // A partition of a Kafka topic of N partitions: its super stream is shown at once.
    let member = crate::stream::superstream::member_by_name(&actor.shard.catalog.current(), name);
    if let Some((topic, _)) = member {
        if vhost == crate::stream::queue::VHOST && adopt_super_stream(actor, &topic).await? {
            let router = actor.shard.amqp.router(actor.shard);
            let state = actor.shard.catalog.current();
            let def = state.amqp.get(vhost).and_then(|t| t.queues.get(name));
            if let (Some(def), Some(q)) = (def, router.queue(vhost, name)) {
                return Ok((q.clone(), def.clone()));
            }
        }
    }
    // A Kafka topic nobody declared over AMQP yet is a stream queue (`stream::declare`).
    let state = actor.shard.catalog.current();
    let id = crate::stream::declare::id(name, name, 0, actor.shard.count);
    if let Some(queue) = crate::stream::declare::adoptable(&state, vhost, name, id)? {
        let declare = crate::catalog::amqp::TopologyChange::DeclareQueue {
            vhost: vhost.to_owned(),
            queue,
        };
        change(actor.shard, Change::Amqp(declare)).await?;
        let state = actor.shard.catalog.current();
        let def = state.amqp.get(vhost).and_then(|t| t.queues.get(name));
        let router = actor.shard.amqp.router(actor.shard);
        if let (Some(def), Some(q)) = (def, router.queue(vhost, name)) {
            return Ok((q.clone(), def.clone()));
        }
    }
    Err(AmqpError::channel(
        reply::NOT_FOUND,
        format!("NOT_FOUND - no queue '{name}' in vhost '{vhost}'"),
    ))
}

/// Whether an exchange exists (refreshing the replica once before saying no).
pub async fn exchange_exists(actor: &Actor<'_>, name: &str) -> bool {
    let has = || {
        actor
            .shard
            .catalog
            .current()
            .amqp
            .get(actor.vhost)
            .map(|t| t.has_exchange(name))
            .unwrap_or_else(|| crate::catalog::amqp::builtin_exchange(name).is_some())
    };
    if has() {
        return true;
    }
    refresh_catalog(actor.shard).await;
    has()
}

/// NOT_FOUND unless the exchange exists (refreshing the replica once before saying so);
/// a Kafka topic of several partitions is found as its super stream's exchange.
pub async fn known_exchange(actor: &Actor<'_>, name: &str) -> Result<(), AmqpError> {
    if exchange_exists(actor, name).await || adopt_super_stream(actor, name).await? {
        Ok(())
    } else {
        Err(no_exchange(actor, name))
    }
}

/// Shows Kafka topic `topic` of several partitions as a super stream in the actor's
/// vhost (`stream::superstream::adopt`): true when it is one now; 406 on a name clash.
pub async fn adopt_super_stream(actor: &Actor<'_>, topic: &str) -> Result<bool, AmqpError> {
    let state = actor.shard.catalog.current();
    let cs = crate::stream::superstream::adopt(&state, actor.vhost, topic, Some(actor.shard.count))
        .map_err(|text| AmqpError::channel(reply::PRECONDITION_FAILED, text))?;
    if !cs.is_empty() {
        changes(actor.shard, cs).await?;
    }
    Ok(actor
        .shard
        .catalog
        .current()
        .amqp
        .get(actor.vhost)
        .and_then(|t| t.exchanges.get(topic))
        .is_some_and(|e| crate::stream::superstream::is_super_exchange(&e.arguments)))
}

pub fn no_exchange(actor: &Actor<'_>, name: &str) -> AmqpError {
    AmqpError::channel(
        reply::NOT_FOUND,
        format!(
            "NOT_FOUND - no exchange '{name}' in vhost '{}'",
            actor.vhost
        ),
    )
}

/// The incarnation id of a queue this shard is about to declare: owned by the shard
/// `locator` picks from this one and the queues each shard owns (`amqp::placement`).
pub fn new_queue_id(shard: &Rc<Shard>, locator: Locator, name: &str) -> u64 {
    let seed = crate::catalog::new_topic_id(name);
    let router = shard.amqp.router(shard);
    let random = u64::from_be_bytes(seed[8..].try_into().unwrap_or([0; 8]));
    let owner = placement::choose(locator, shard.id, router.owned(), random);
    placement::queue_id(owner, shard.count, seed)
}

/// A random-looking name suffix for server-named queues and consumer tags.
pub fn random_suffix(seed: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::catalog::new_topic_id(seed))
}

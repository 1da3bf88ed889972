//! The queue class:
//! - `queue.declare(queue, passive, durable, exclusive, auto-delete, nowait, arguments)` →
//!   `declare-ok(queue, message-count, consumer-count)`. An empty name gets a server name
//!   `amq.gen-…`; arguments are validated (406 on a bad one); a redeclare with other
//!   properties is 406; another connection's exclusive queue is 405; passive on a missing
//!   queue 404.
//! - `queue.bind/unbind(queue, exchange, routing-key, arguments)` → `bind-ok`/`unbind-ok`
//!   (headers exchanges match on the arguments).
//! - `queue.purge(queue, nowait)` → `purge-ok(message-count)`.
//! - `queue.delete(queue, if-unused, if-empty, nowait)` → `delete-ok(message-count)`,
//!   decided by the owner shard, which knows the queue's consumers and messages.
//!
//! The checks and changes behind them (`declare_queue`, `queue_binding`, `purge_queue`,
//! `delete_queue`, `queue_stats`) take an `Actor`, and serve the HTTP API too.

use std::rc::Rc;

use amq_protocol::protocol::{queue as qm, AMQPClass};
use amq_protocol::types::FieldTable;

use super::{
    allowed, apply_binding, change, changes, known_exchange, lookup_queue, new_queue_id,
    random_suffix, Access, Actor,
};
use crate::amqp::channel::ChannelRef;
use crate::amqp::connection::Connection;
use crate::amqp::mesh::QueueOp;
use crate::amqp::placement::Locator;
use crate::amqp::routing::QueueRef;
use crate::amqp::{outbox, reply, AmqpError};
use crate::broker::Shard;
use crate::catalog::amqp::arguments::{parse_queue_args, queue_type};
use crate::catalog::amqp::tables::encode_table;
use crate::catalog::amqp::{Binding, DestKind, Queue, TopologyChange};
use crate::catalog::Change;

fn answer(conn: &Connection, ch: &ChannelRef, nowait: bool, m: qm::AMQPMethod) {
    if !nowait {
        conn.send_method(ch.borrow().id, AMQPClass::Queue(m));
    }
}

fn gone() -> AmqpError {
    AmqpError::connection(
        reply::INTERNAL_ERROR,
        "INTERNAL_ERROR - queue owner shard unreachable",
    )
}

/// What a declare did.
pub struct Declared {
    pub name: String,
    pub queue: QueueRef,
    pub def: Queue,
    /// This declare made the queue (rather than finding an equivalent one).
    pub created: bool,
}

/// Declares a queue: an empty name gets a server name `amq.gen-…`; configure permission;
/// the arguments validated (406); the catalog writer refuses a redeclare with other
/// properties (406), another connection's exclusive queue (405) and `amq.*` names (403).
/// `exclusive` makes the actor's connection the owner.
pub async fn declare_queue(
    actor: &Actor<'_>,
    name: &str,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    arguments: &FieldTable,
) -> Result<Declared, AmqpError> {
    let vhost = actor.vhost;
    let name = if name.is_empty() {
        let seed = format!("{}{:?}", actor.shard.id, actor.conn);
        format!("amq.gen-{}", random_suffix(&seed))
    } else {
        name.to_owned()
    };
    allowed(actor, Access::Configure, "queue", &name)?;
    let args = parse_queue_args(&name, vhost, arguments)
        .map_err(|text| AmqpError::channel(reply::PRECONDITION_FAILED, text))?;
    let kind = queue_type(arguments);
    if kind.quorum || kind.stream {
        // RabbitMQ's rules for quorum and stream queues, with its words.
        let bad = [
            (!durable, "non-durable"),
            (exclusive, "exclusive-owner"),
            (auto_delete, "auto-delete"),
        ];
        if let Some((_, property)) = bad.iter().find(|(b, _)| *b) {
            return Err(AmqpError::channel(
                reply::PRECONDITION_FAILED,
                format!(
                    "PRECONDITION_FAILED - invalid property '{property}' for queue '{name}' in vhost '{vhost}'"
                ),
            ));
        }
    }
    // Only its declaring connection consumes from an exclusive queue: it goes there.
    let locator = if exclusive {
        Locator::ClientLocal
    } else {
        crate::catalog::amqp::arguments::locator(arguments)
    };
    let id = if kind.stream {
        crate::stream::declare::id(&name, &name, 0, actor.shard.count)
    } else {
        new_queue_id(actor.shard, locator, &name)
    };
    // A stream is a Kafka topic: made (or found) in the same catalog call.
    let topic = if kind.stream {
        crate::stream::declare::topic_change(
            &actor.shard.catalog.current(),
            vhost,
            &name,
            arguments,
        )?
    } else {
        None
    };
    let queue = Queue {
        name: name.clone(),
        id,
        durable,
        exclusive_owner: if exclusive { actor.conn } else { None },
        auto_delete,
        arguments: encode_table(arguments),
        args,
    };
    let declare = Change::Amqp(TopologyChange::DeclareQueue {
        vhost: vhost.to_owned(),
        queue,
    });
    match topic {
        Some(topic) => changes(actor.shard, vec![topic, declare]).await?,
        None => change(actor.shard, declare).await?,
    }
    let (queue, def) = lookup_queue(actor, &name).await?;
    Ok(Declared {
        created: def.id == id,
        name,
        queue,
        def,
    })
}

pub async fn declare(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    d: qm::Declare,
) -> Result<(), AmqpError> {
    let actor = conn.actor();
    if d.queue.as_str() == crate::amqp::direct_reply::PSEUDO_QUEUE {
        // RabbitMQ answers for the direct reply-to pseudo queue: always there, empty.
        answer(conn, ch, d.nowait, ok(d.queue.as_str(), (0, 0)));
        return Ok(());
    }
    if d.passive {
        let name = d.queue.as_str();
        let (qref, _) = lookup_queue(&actor, name).await?;
        let stats = queue_stats(&conn.shard, qref).await?;
        answer(conn, ch, d.nowait, ok(name, stats));
        return Ok(());
    }
    let declared = declare_queue(
        &actor,
        d.queue.as_str(),
        d.durable,
        d.exclusive,
        d.auto_delete,
        &d.arguments,
    )
    .await?;
    if declared.created && d.exclusive {
        conn.exclusive.borrow_mut().push((
            actor.vhost.to_owned(),
            declared.name.clone(),
            declared.def.id,
        ));
    }
    let stats = queue_stats(&conn.shard, declared.queue).await?;
    answer(conn, ch, d.nowait, ok(&declared.name, stats));
    Ok(())
}

fn ok(name: &str, (messages, consumers): (u32, u32)) -> qm::AMQPMethod {
    qm::AMQPMethod::DeclareOk(qm::DeclareOk {
        queue: name.into(),
        message_count: messages,
        consumer_count: consumers,
    })
}

/// (messages ready, consumers) of a queue, from its owner.
pub async fn queue_stats(shard: &Rc<Shard>, qref: QueueRef) -> Result<(u32, u32), AmqpError> {
    let (reply, answer) = shard.expect();
    let owner = qref.owner;
    outbox::push(shard, owner, QueueOp::Stats { queue: qref, reply });
    match answer.await {
        Some(Some(s)) => Ok(s),
        Some(None) => Ok((0, 0)),
        None => Err(gone()),
    }
}

/// A queue binding, checked: write permission on the queue, read on the exchange, both
/// existing.
pub async fn queue_binding(
    actor: &Actor<'_>,
    queue: &str,
    exchange: &str,
    routing_key: &str,
    arguments: &FieldTable,
) -> Result<Binding, AmqpError> {
    allowed(actor, Access::Write, "queue", queue)?;
    allowed(actor, Access::Read, "exchange", exchange)?;
    lookup_queue(actor, queue).await?;
    known_exchange(actor, exchange).await?;
    Ok(Binding {
        source: exchange.to_owned(),
        destination: queue.to_owned(),
        dest_kind: DestKind::Queue,
        routing_key: routing_key.to_owned(),
        arguments: encode_table(arguments),
    })
}

pub async fn bind(conn: &Rc<Connection>, ch: &ChannelRef, b: qm::Bind) -> Result<(), AmqpError> {
    let actor = conn.actor();
    let binding = queue_binding(
        &actor,
        b.queue.as_str(),
        b.exchange.as_str(),
        b.routing_key.as_str(),
        &b.arguments,
    )
    .await?;
    apply_binding(&actor, binding, true).await?;
    answer(conn, ch, b.nowait, qm::AMQPMethod::BindOk(qm::BindOk {}));
    Ok(())
}

pub async fn unbind(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    u: qm::Unbind,
) -> Result<(), AmqpError> {
    let actor = conn.actor();
    let binding = queue_binding(
        &actor,
        u.queue.as_str(),
        u.exchange.as_str(),
        u.routing_key.as_str(),
        &u.arguments,
    )
    .await?;
    apply_binding(&actor, binding, false).await?;
    answer(conn, ch, false, qm::AMQPMethod::UnbindOk(qm::UnbindOk {}));
    Ok(())
}

/// Drops a queue's ready messages on its owner (read permission); returns how many.
pub async fn purge_queue(actor: &Actor<'_>, name: &str) -> Result<u32, AmqpError> {
    allowed(actor, Access::Read, "queue", name)?;
    let (qref, _) = lookup_queue(actor, name).await?;
    let (reply, answer) = actor.shard.expect();
    let owner = qref.owner;
    outbox::push(actor.shard, owner, QueueOp::Purge { queue: qref, reply });
    answer.await.ok_or_else(gone)
}

pub async fn purge(conn: &Rc<Connection>, ch: &ChannelRef, p: qm::Purge) -> Result<(), AmqpError> {
    let n = purge_queue(&conn.actor(), p.queue.as_str()).await?;
    answer(
        conn,
        ch,
        p.nowait,
        qm::AMQPMethod::PurgeOk(qm::PurgeOk { message_count: n }),
    );
    Ok(())
}

/// Deletes a queue (configure permission), decided by its owner: 406 when `if_unused`
/// and it has consumers or `if_empty` and it has messages; 404 when it does not exist.
/// Returns the ready messages it had.
pub async fn delete_queue(
    actor: &Actor<'_>,
    name: &str,
    if_unused: bool,
    if_empty: bool,
) -> Result<u32, AmqpError> {
    allowed(actor, Access::Configure, "queue", name)?;
    let (qref, _) = lookup_queue(actor, name).await?;
    let (reply, answer) = actor.shard.expect();
    let owner = qref.owner;
    outbox::push(
        actor.shard,
        owner,
        QueueOp::Delete {
            queue: qref,
            if_unused,
            if_empty,
            reply,
        },
    );
    match answer.await {
        Some(Ok((n, state))) => {
            actor.shard.install_catalog(state);
            Ok(n)
        }
        Some(Err((code, text))) => Err(AmqpError::from_code(code, text)),
        None => Err(gone()),
    }
}

pub async fn delete(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    d: qm::Delete,
) -> Result<(), AmqpError> {
    let n = match delete_queue(&conn.actor(), d.queue.as_str(), d.if_unused, d.if_empty).await {
        Ok(n) => n,
        // Deleting a queue that does not exist succeeds, as in RabbitMQ.
        Err(AmqpError::Channel {
            code: reply::NOT_FOUND,
            ..
        }) => 0,
        Err(e) => return Err(e),
    };
    answer(
        conn,
        ch,
        d.nowait,
        qm::AMQPMethod::DeleteOk(qm::DeleteOk { message_count: n }),
    );
    Ok(())
}

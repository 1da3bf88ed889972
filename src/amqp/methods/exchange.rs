//! The exchange class:
//! - `exchange.declare(exchange, type, passive, durable, auto-delete, internal, nowait,
//!   arguments)` → `declare-ok`. Types direct, fanout, topic, headers; an unknown type is
//!   503 COMMAND_INVALID; a redeclare with other properties 406; a name starting with
//!   `amq.` 403; passive on a missing exchange 404. `alternate-exchange` is honoured.
//! - `exchange.delete(exchange, if-unused, nowait)` → `delete-ok` (idempotent; 406 when
//!   if-unused and it has bindings; 403 on the default and `amq.*` exchanges).
//! - `exchange.bind/unbind(destination, source, routing-key, nowait, arguments)` →
//!   `bind-ok`/`unbind-ok`: exchange-to-exchange bindings.
//!
//! The checks and changes behind them (`new_exchange`, `declare_exchange`,
//! `delete_exchange`, `exchange_binding`) take an `Actor`, and serve the HTTP API too.
//! A declare with `x-super-stream: true` makes a super stream (`stream::superstream`),
//! and deleting a super stream's exchange deletes its Kafka topic.

use std::rc::Rc;

use amq_protocol::protocol::{exchange as ex, AMQPClass};
use amq_protocol::types::FieldTable;

use super::{allowed, apply_binding, change, changes, known_exchange, Access, Actor};
use crate::amqp::channel::ChannelRef;
use crate::amqp::connection::Connection;
use crate::amqp::{reply, AmqpError};
use crate::catalog::amqp::tables::{encode_table, str_value};
use crate::catalog::amqp::{Binding, DestKind, Exchange, ExchangeKind, TopologyChange};
use crate::catalog::Change;

fn reply_to(conn: &Connection, ch: &ChannelRef, nowait: bool, m: ex::AMQPMethod) {
    if !nowait {
        conn.send_method(ch.borrow().id, AMQPClass::Exchange(m));
    }
}

/// The exchange a declare describes: an unknown type is 503 COMMAND_INVALID, the
/// default exchange 403; `alternate-exchange` is taken from the arguments.
pub fn new_exchange(
    name: &str,
    kind: &str,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: &FieldTable,
) -> Result<Exchange, AmqpError> {
    let Some(kind) = ExchangeKind::parse(kind) else {
        return Err(AmqpError::connection(
            reply::COMMAND_INVALID,
            format!("COMMAND_INVALID - unknown exchange type '{kind}'"),
        ));
    };
    if name.is_empty() {
        return Err(AmqpError::channel(
            reply::ACCESS_REFUSED,
            "ACCESS_REFUSED - operation not permitted on the default exchange",
        ));
    }
    let alternate = arguments
        .inner()
        .get("alternate-exchange")
        .and_then(str_value);
    Ok(Exchange {
        name: name.to_owned(),
        kind,
        durable,
        auto_delete,
        internal,
        arguments: encode_table(arguments),
        alternate,
    })
}

/// Declares `exchange` (configure permission; the catalog writer refuses `amq.*` and a
/// redeclare with other properties).
pub async fn declare_exchange(actor: &Actor<'_>, exchange: Exchange) -> Result<(), AmqpError> {
    allowed(actor, Access::Configure, "exchange", &exchange.name)?;
    // `x-super-stream: true`: a Kafka topic of N partitions and its partition queues.
    let state = actor.shard.catalog.current();
    if let Some(cs) =
        crate::stream::superstream::declare(&state, actor.vhost, &exchange, actor.shard.count)
    {
        let cs = cs.map_err(|text| AmqpError::channel(reply::PRECONDITION_FAILED, text))?;
        return if cs.is_empty() {
            Ok(())
        } else {
            changes(actor.shard, cs).await
        };
    }
    change(
        actor.shard,
        Change::Amqp(TopologyChange::DeclareExchange {
            vhost: actor.vhost.to_owned(),
            exchange,
        }),
    )
    .await
}

/// Deletes an exchange (idempotent; 406 when `if_unused` and it is a binding's source,
/// 403 on the default and `amq.*` exchanges).
pub async fn delete_exchange(
    actor: &Actor<'_>,
    name: &str,
    if_unused: bool,
) -> Result<(), AmqpError> {
    allowed(actor, Access::Configure, "exchange", name)?;
    // A super stream's exchange (unless if-unused refuses it): deleting the super stream
    // deletes its Kafka topic, and the partition queues go with it.
    let state = actor.shard.catalog.current();
    let super_stream = state
        .amqp
        .get(actor.vhost)
        .and_then(|t| t.exchanges.get(name))
        .is_some_and(|e| crate::stream::superstream::is_super_exchange(&e.arguments));
    if super_stream && !if_unused && state.topic(name).is_some() {
        let r = actor
            .shard
            .change_catalog(vec![Change::DeleteTopic(name.to_owned())], false)
            .await;
        return match r.into_iter().next() {
            Some(Err(e)) => Err(AmqpError::channel(
                reply::PRECONDITION_FAILED,
                format!(
                    "PRECONDITION_FAILED - cannot delete super stream '{name}' (its Kafka topic): {e}"
                ),
            )),
            _ => Ok(()),
        };
    }
    change(
        actor.shard,
        Change::Amqp(TopologyChange::DeleteExchange {
            vhost: actor.vhost.to_owned(),
            name: name.to_owned(),
            if_unused,
        }),
    )
    .await
}

pub async fn declare(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    d: ex::Declare,
) -> Result<(), AmqpError> {
    let actor = conn.actor();
    let name = d.exchange.as_str();
    if d.passive {
        known_exchange(&actor, name).await?;
    } else {
        let exchange = new_exchange(
            name,
            d.kind.as_str(),
            d.durable,
            d.auto_delete,
            d.internal,
            &d.arguments,
        )?;
        declare_exchange(&actor, exchange).await?;
    }
    reply_to(
        conn,
        ch,
        d.nowait,
        ex::AMQPMethod::DeclareOk(ex::DeclareOk {}),
    );
    Ok(())
}

pub async fn delete(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    d: ex::Delete,
) -> Result<(), AmqpError> {
    delete_exchange(&conn.actor(), d.exchange.as_str(), d.if_unused).await?;
    reply_to(
        conn,
        ch,
        d.nowait,
        ex::AMQPMethod::DeleteOk(ex::DeleteOk {}),
    );
    Ok(())
}

/// An exchange-to-exchange binding, checked: write permission on the destination, read
/// on the source, both existing.
pub async fn exchange_binding(
    actor: &Actor<'_>,
    destination: &str,
    source: &str,
    routing_key: &str,
    arguments: &FieldTable,
) -> Result<Binding, AmqpError> {
    allowed(actor, Access::Write, "exchange", destination)?;
    allowed(actor, Access::Read, "exchange", source)?;
    for name in [source, destination] {
        known_exchange(actor, name).await?;
    }
    Ok(Binding {
        source: source.to_owned(),
        destination: destination.to_owned(),
        dest_kind: DestKind::Exchange,
        routing_key: routing_key.to_owned(),
        arguments: encode_table(arguments),
    })
}

pub async fn bind(conn: &Rc<Connection>, ch: &ChannelRef, b: ex::Bind) -> Result<(), AmqpError> {
    let actor = conn.actor();
    let binding = exchange_binding(
        &actor,
        b.destination.as_str(),
        b.source.as_str(),
        b.routing_key.as_str(),
        &b.arguments,
    )
    .await?;
    apply_binding(&actor, binding, true).await?;
    reply_to(conn, ch, b.nowait, ex::AMQPMethod::BindOk(ex::BindOk {}));
    Ok(())
}

pub async fn unbind(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    u: ex::Unbind,
) -> Result<(), AmqpError> {
    let actor = conn.actor();
    let binding = exchange_binding(
        &actor,
        u.destination.as_str(),
        u.source.as_str(),
        u.routing_key.as_str(),
        &u.arguments,
    )
    .await?;
    apply_binding(&actor, binding, false).await?;
    reply_to(
        conn,
        ch,
        u.nowait,
        ex::AMQPMethod::UnbindOk(ex::UnbindOk {}),
    );
    Ok(())
}

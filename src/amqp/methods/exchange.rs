//! The exchange class:
//! - `exchange.declare(exchange, type, passive, durable, auto-delete, internal, nowait,
//!   arguments)` → `declare-ok`. Types direct, fanout, topic, headers; an unknown type is
//!   503 COMMAND_INVALID; a redeclare with other properties 406; a name starting with
//!   `amq.` 403; passive on a missing exchange 404. `alternate-exchange` is honoured.
//! - `exchange.delete(exchange, if-unused, nowait)` → `delete-ok` (idempotent; 406 when
//!   if-unused and it has bindings; 403 on the default and `amq.*` exchanges).
//! - `exchange.bind/unbind(destination, source, routing-key, nowait, arguments)` →
//!   `bind-ok`/`unbind-ok`: exchange-to-exchange bindings.

use std::rc::Rc;

use amq_protocol::protocol::{exchange as ex, AMQPClass};

use super::{allowed, change, exchange_exists, no_exchange};
use crate::amqp::channel::ChannelRef;
use crate::amqp::connection::Connection;
use crate::amqp::topology::{
    encode_table, str_value, Binding, DestKind, Exchange, ExchangeKind, TopologyChange,
};
use crate::amqp::{reply, AmqpError};
use crate::catalog::Change;

fn reply_to(conn: &Connection, ch: &ChannelRef, nowait: bool, m: ex::AMQPMethod) {
    if !nowait {
        conn.send_method(ch.borrow().id, AMQPClass::Exchange(m));
    }
}

pub async fn declare(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    d: ex::Declare,
) -> Result<(), AmqpError> {
    let name = d.exchange.as_str().to_owned();
    if d.passive {
        if !exchange_exists(conn, &name).await {
            return Err(no_exchange(conn, &name));
        }
        reply_to(
            conn,
            ch,
            d.nowait,
            ex::AMQPMethod::DeclareOk(ex::DeclareOk {}),
        );
        return Ok(());
    }
    let Some(kind) = ExchangeKind::parse(d.kind.as_str()) else {
        return Err(AmqpError::connection(
            reply::COMMAND_INVALID,
            format!("COMMAND_INVALID - unknown exchange type '{}'", d.kind),
        ));
    };
    if name.is_empty() {
        return Err(AmqpError::channel(
            reply::ACCESS_REFUSED,
            "ACCESS_REFUSED - operation not permitted on the default exchange",
        ));
    }
    allowed(conn, "configure", "exchange", &name)?;
    let alternate = d
        .arguments
        .inner()
        .get("alternate-exchange")
        .and_then(str_value);
    let exchange = Exchange {
        name,
        kind,
        durable: d.durable,
        auto_delete: d.auto_delete,
        internal: d.internal,
        arguments: encode_table(&d.arguments),
        alternate,
    };
    change(
        conn,
        Change::Amqp(TopologyChange::DeclareExchange {
            vhost: conn.vhost(),
            exchange,
        }),
    )
    .await?;
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
    let name = d.exchange.as_str().to_owned();
    allowed(conn, "configure", "exchange", &name)?;
    change(
        conn,
        Change::Amqp(TopologyChange::DeleteExchange {
            vhost: conn.vhost(),
            name,
            if_unused: d.if_unused,
        }),
    )
    .await?;
    reply_to(
        conn,
        ch,
        d.nowait,
        ex::AMQPMethod::DeleteOk(ex::DeleteOk {}),
    );
    Ok(())
}

async fn binding(
    conn: &Rc<Connection>,
    destination: &str,
    source: &str,
    routing_key: &str,
    arguments: &amq_protocol::types::FieldTable,
) -> Result<Binding, AmqpError> {
    allowed(conn, "write", "exchange", destination)?;
    allowed(conn, "read", "exchange", source)?;
    for name in [source, destination] {
        if !exchange_exists(conn, name).await {
            return Err(no_exchange(conn, name));
        }
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
    let binding = binding(
        conn,
        b.destination.as_str(),
        b.source.as_str(),
        b.routing_key.as_str(),
        &b.arguments,
    )
    .await?;
    super::apply_binding(conn, binding, true).await?;
    reply_to(conn, ch, b.nowait, ex::AMQPMethod::BindOk(ex::BindOk {}));
    Ok(())
}

pub async fn unbind(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    u: ex::Unbind,
) -> Result<(), AmqpError> {
    let binding = binding(
        conn,
        u.destination.as_str(),
        u.source.as_str(),
        u.routing_key.as_str(),
        &u.arguments,
    )
    .await?;
    super::apply_binding(conn, binding, false).await?;
    reply_to(
        conn,
        ch,
        u.nowait,
        ex::AMQPMethod::UnbindOk(ex::UnbindOk {}),
    );
    Ok(())
}

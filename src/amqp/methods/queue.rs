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

use std::rc::Rc;

use amq_protocol::protocol::{queue as qm, AMQPClass};
use futures::channel::oneshot;

use super::{allowed, change, exchange_exists, lookup_queue, no_exchange, random_suffix};
use crate::amqp::channel::ChannelRef;
use crate::amqp::connection::Connection;
use crate::amqp::mesh::Op;
use crate::amqp::topology::{
    encode_table, parse_queue_args, Binding, DestKind, Queue, TopologyChange,
};
use crate::amqp::{outbox, reply, AmqpError};
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

pub async fn declare(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    d: qm::Declare,
) -> Result<(), AmqpError> {
    let vhost = conn.vhost();
    let mut name = d.queue.as_str().to_owned();
    if d.passive {
        let (qref, _) = lookup_queue(conn, &name).await?;
        let stats = stats(conn, qref).await?;
        answer(conn, ch, d.nowait, ok(&name, stats));
        return Ok(());
    }
    if name.is_empty() {
        name = format!("amq.gen-{}", random_suffix(&format!("{}", conn.id)));
    }
    allowed(conn, "configure", "queue", &name)?;
    let args = parse_queue_args(&name, &vhost, &d.arguments)
        .map_err(|text| AmqpError::channel(reply::PRECONDITION_FAILED, text))?;
    let id = u64::from_be_bytes(
        crate::catalog::new_topic_id(&name)[..8]
            .try_into()
            .unwrap_or([1; 8]),
    );
    let queue = Queue {
        name: name.clone(),
        id,
        durable: d.durable,
        exclusive_owner: d.exclusive.then_some(conn.id),
        auto_delete: d.auto_delete,
        arguments: encode_table(&d.arguments),
        args,
    };
    change(
        conn,
        Change::Amqp(TopologyChange::DeclareQueue {
            vhost: vhost.clone(),
            queue,
        }),
    )
    .await?;
    let (qref, def) = lookup_queue(conn, &name).await?;
    if def.id == id && d.exclusive {
        conn.exclusive.borrow_mut().push((vhost, name.clone(), id));
    }
    let stats = stats(conn, qref).await?;
    answer(conn, ch, d.nowait, ok(&name, stats));
    Ok(())
}

fn ok(name: &str, (messages, consumers): (u32, u32)) -> qm::AMQPMethod {
    qm::AMQPMethod::DeclareOk(qm::DeclareOk {
        queue: name.into(),
        message_count: messages,
        consumer_count: consumers,
    })
}

async fn stats(
    conn: &Rc<Connection>,
    qref: crate::amqp::routing::QueueRef,
) -> Result<(u32, u32), AmqpError> {
    let (tx, rx) = oneshot::channel();
    let owner = qref.owner;
    outbox::push(
        &conn.shard,
        owner,
        Op::Stats {
            queue: qref,
            reply: tx,
        },
    );
    match rx.await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Ok((0, 0)),
        Err(_) => Err(gone()),
    }
}

async fn queue_binding(
    conn: &Rc<Connection>,
    queue: &str,
    exchange: &str,
    routing_key: &str,
    arguments: &amq_protocol::types::FieldTable,
) -> Result<Binding, AmqpError> {
    allowed(conn, "write", "queue", queue)?;
    allowed(conn, "read", "exchange", exchange)?;
    lookup_queue(conn, queue).await?;
    if !exchange_exists(conn, exchange).await {
        return Err(no_exchange(conn, exchange));
    }
    Ok(Binding {
        source: exchange.to_owned(),
        destination: queue.to_owned(),
        dest_kind: DestKind::Queue,
        routing_key: routing_key.to_owned(),
        arguments: encode_table(arguments),
    })
}

pub async fn bind(conn: &Rc<Connection>, ch: &ChannelRef, b: qm::Bind) -> Result<(), AmqpError> {
    let binding = queue_binding(
        conn,
        b.queue.as_str(),
        b.exchange.as_str(),
        b.routing_key.as_str(),
        &b.arguments,
    )
    .await?;
    super::apply_binding(conn, binding, true).await?;
    answer(conn, ch, b.nowait, qm::AMQPMethod::BindOk(qm::BindOk {}));
    Ok(())
}

pub async fn unbind(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    u: qm::Unbind,
) -> Result<(), AmqpError> {
    let binding = queue_binding(
        conn,
        u.queue.as_str(),
        u.exchange.as_str(),
        u.routing_key.as_str(),
        &u.arguments,
    )
    .await?;
    super::apply_binding(conn, binding, false).await?;
    answer(conn, ch, false, qm::AMQPMethod::UnbindOk(qm::UnbindOk {}));
    Ok(())
}

pub async fn purge(conn: &Rc<Connection>, ch: &ChannelRef, p: qm::Purge) -> Result<(), AmqpError> {
    allowed(conn, "read", "queue", p.queue.as_str())?;
    let (qref, _) = lookup_queue(conn, p.queue.as_str()).await?;
    let (tx, rx) = oneshot::channel();
    let owner = qref.owner;
    outbox::push(
        &conn.shard,
        owner,
        Op::Purge {
            queue: qref,
            reply: tx,
        },
    );
    let n = rx.await.map_err(|_| gone())?;
    answer(
        conn,
        ch,
        p.nowait,
        qm::AMQPMethod::PurgeOk(qm::PurgeOk { message_count: n }),
    );
    Ok(())
}

pub async fn delete(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    d: qm::Delete,
) -> Result<(), AmqpError> {
    allowed(conn, "configure", "queue", d.queue.as_str())?;
    let qref = match lookup_queue(conn, d.queue.as_str()).await {
        Ok((q, _)) => q,
        // Deleting a queue that does not exist succeeds, as in RabbitMQ.
        Err(AmqpError::Channel {
            code: reply::NOT_FOUND,
            ..
        }) => {
            answer(
                conn,
                ch,
                d.nowait,
                qm::AMQPMethod::DeleteOk(qm::DeleteOk { message_count: 0 }),
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let (tx, rx) = oneshot::channel();
    let owner = qref.owner;
    outbox::push(
        &conn.shard,
        owner,
        Op::Delete {
            queue: qref,
            if_unused: d.if_unused,
            if_empty: d.if_empty,
            reply: tx,
        },
    );
    match rx.await {
        Ok(Ok((n, state))) => {
            conn.shard.install_catalog(state);
            answer(
                conn,
                ch,
                d.nowait,
                qm::AMQPMethod::DeleteOk(qm::DeleteOk { message_count: n }),
            );
            Ok(())
        }
        Ok(Err((code, text))) => Err(AmqpError::from_code(code, text)),
        Err(_) => Err(gone()),
    }
}

//! `basic.get(queue, no-ack)` → `get-ok(delivery-tag, redelivered, exchange, routing-key,
//! message-count)` with the content, or `get-empty`. The message is taken on the queue's
//! owner shard; unless no-ack it stays unacked under the channel's next delivery tag.

use std::rc::Rc;

use amq_protocol::protocol::{basic, AMQPClass};
use futures::channel::oneshot;

use super::{allowed, lookup_queue};
use crate::amqp::channel::ChannelRef;
use crate::amqp::connection::Connection;
use crate::amqp::mesh::Op;
use crate::amqp::{outbox, reply, AmqpError};

pub async fn get(conn: &Rc<Connection>, ch: &ChannelRef, g: basic::Get) -> Result<(), AmqpError> {
    allowed(conn, "read", "queue", g.queue.as_str())?;
    let (qref, _) = lookup_queue(conn, g.queue.as_str()).await?;
    let (tx, rx) = oneshot::channel();
    let owner = qref.owner;
    outbox::push(
        &conn.shard,
        owner,
        Op::Get {
            queue: qref.clone(),
            no_ack: g.no_ack,
            reply: tx,
        },
    );
    let got = rx.await.map_err(|_| {
        AmqpError::connection(
            reply::INTERNAL_ERROR,
            "INTERNAL_ERROR - queue owner unreachable",
        )
    })?;
    let mut c = ch.borrow_mut();
    match got {
        Some((d, count)) if !c.closing => c.deliver_get(conn, &qref, d, g.no_ack, count),
        Some((d, _)) => crate::amqp::channel::give_back(conn, &qref, vec![d]),
        None => conn.send_method(
            c.id,
            AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
        ),
    }
    Ok(())
}

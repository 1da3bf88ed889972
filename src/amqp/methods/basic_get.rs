//! `basic.get(queue, no-ack)` → `get-ok(delivery-tag, redelivered, exchange, routing-key,
//! message-count)` with the content, or `get-empty`. The message is taken on the queue's
//! owner shard; unless no-ack it stays unacked under the channel's next delivery tag.
//!
//! `take` (the hop to the owner) serves the HTTP API's get too.

use std::rc::Rc;

use amq_protocol::protocol::{basic, AMQPClass};

use super::{allowed, lookup_queue, Access};
use crate::amqp::channel::ChannelRef;
use crate::amqp::connection::Connection;
use crate::amqp::mesh::{Delivery, GetAnswer, QueueOp};
use crate::amqp::routing::QueueRef;
use crate::amqp::{outbox, reply, AmqpError};
use crate::broker::Shard;

/// Takes the next ready message of `queue` on its owner, with the count of ready messages
/// left; `None` when it is empty. Unless `no_ack` the message waits on the owner, unacked,
/// for a settle naming its delivery id (and if this future is dropped before the answer
/// arrives, the owner puts it back).
pub async fn take(
    shard: &Rc<Shard>,
    queue: &QueueRef,
    no_ack: bool,
) -> Result<Option<(Delivery, u32)>, AmqpError> {
    let (reply_to, answer) = shard.expect::<GetAnswer>();
    outbox::push(
        shard,
        queue.owner,
        QueueOp::Get {
            queue: queue.clone(),
            no_ack,
            reply: reply_to,
        },
    );
    match answer.await {
        Some(a) => Ok(a.got),
        None => Err(AmqpError::connection(
            reply::INTERNAL_ERROR,
            "INTERNAL_ERROR - queue owner unreachable",
        )),
    }
}

pub async fn get(conn: &Rc<Connection>, ch: &ChannelRef, g: basic::Get) -> Result<(), AmqpError> {
    let actor = conn.actor();
    allowed(&actor, Access::Read, "queue", g.queue.as_str())?;
    let (qref, def) = lookup_queue(&actor, g.queue.as_str()).await?;
    if def.is_stream() {
        // As RabbitMQ: a stream is read with basic.consume only.
        return Err(AmqpError::connection(
            reply::NOT_IMPLEMENTED,
            format!(
                "NOT_IMPLEMENTED - basic.get not supported by stream queues queue '{}' in vhost '{}'",
                qref.name, qref.vhost
            ),
        ));
    }
    let got = take(&conn.shard, &qref, g.no_ack).await?;
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

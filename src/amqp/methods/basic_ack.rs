//! Settling deliveries:
//! - `basic.ack(delivery-tag, multiple)`: done with the message(s).
//! - `basic.nack(delivery-tag, multiple, requeue)` / `basic.reject(delivery-tag,
//!   requeue)`: back to the queue marked redelivered, or dead-lettered (reason
//!   `rejected`) / dropped.
//! - `basic.recover(requeue)` → `recover-ok` (and recover-async): every unacked delivery
//!   of the channel goes back to its queue, redelivered.
//!
//! `multiple` covers every tag up to the given one (all with tag 0); an unknown tag is
//! 406 PRECONDITION_FAILED. Settles go to each owner shard as one op per queue.

use std::rc::Rc;

use amq_protocol::protocol::{basic, AMQPClass};

use crate::amqp::channel::{self, ChannelRef};
use crate::amqp::connection::Connection;
use crate::amqp::mesh::Settle;
use crate::amqp::AmqpError;

fn settle(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    tag: u64,
    multiple: bool,
    how: Settle,
) -> Result<(), AmqpError> {
    let mut c = ch.borrow_mut();
    let in_tx = c.tx.is_some();
    let (groups, tags) = c.take_unacked(tag, multiple, in_tx)?;
    c.release_held(conn);
    if let Some(tx) = c.tx.as_mut() {
        for (queue, ids) in groups {
            tx.settles.push((queue, ids, how));
        }
        tx.tags.extend(tags);
        return Ok(());
    }
    drop(c);
    channel::settle(conn, groups, how);
    Ok(())
}

pub fn ack(conn: &Rc<Connection>, ch: &ChannelRef, a: basic::Ack) -> Result<(), AmqpError> {
    settle(conn, ch, a.delivery_tag, a.multiple, Settle::Ack)
}

pub fn nack(conn: &Rc<Connection>, ch: &ChannelRef, n: basic::Nack) -> Result<(), AmqpError> {
    let how = if n.requeue {
        Settle::Requeue
    } else {
        Settle::Reject
    };
    settle(conn, ch, n.delivery_tag, n.multiple, how)
}

pub fn reject(conn: &Rc<Connection>, ch: &ChannelRef, r: basic::Reject) -> Result<(), AmqpError> {
    let how = if r.requeue {
        Settle::Requeue
    } else {
        Settle::Reject
    };
    settle(conn, ch, r.delivery_tag, false, how)
}

/// Both requeue values requeue: redelivering to the same consumer only is not offered
/// (RabbitMQ does the same).
pub fn recover(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    _requeue: bool,
    answer: bool,
) -> Result<(), AmqpError> {
    let (groups, id) = {
        let mut c = ch.borrow_mut();
        let groups = c.take_all_unacked();
        c.release_held(conn);
        (groups, c.id)
    };
    for (queue, ids) in &groups {
        log::debug!("recover: requeue {ids:?} of {}", queue.name);
    }
    channel::settle(conn, groups, Settle::Requeue);
    if answer {
        conn.send_method(
            id,
            AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
        );
    }
    Ok(())
}

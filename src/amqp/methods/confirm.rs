//! `confirm.select(nowait)` → `select-ok`: publisher confirms. From then on every publish
//! on the channel is numbered from 1 and acked (basic.ack, `multiple` for runs) once every
//! queue it reached has it — after fdatasync for persistent messages on durable queues —
//! or nacked (basic.nack) when a queue refused it (x-overflow reject-publish).

use std::rc::Rc;

use amq_protocol::protocol::{confirm as conf, AMQPClass};

use crate::amqp::channel::ChannelRef;
use crate::amqp::connection::Connection;
use crate::amqp::{reply, AmqpError};

pub fn select(conn: &Rc<Connection>, ch: &ChannelRef, s: conf::Select) -> Result<(), AmqpError> {
    let id = {
        let mut c = ch.borrow_mut();
        if c.tx.is_some() {
            return Err(AmqpError::channel(
                reply::PRECONDITION_FAILED,
                "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
            ));
        }
        c.confirm = true;
        c.id
    };
    if !s.nowait {
        conn.send_method(
            id,
            AMQPClass::Confirm(conf::AMQPMethod::SelectOk(conf::SelectOk {})),
        );
    }
    Ok(())
}

//! `basic.qos(prefetch-size, prefetch-count, global)` → `qos-ok`.
//!
//! global=false sets the limits of consumers created afterwards on this channel (per
//! consumer, as RabbitMQ does); global=true sets a limit shared by all the channel's
//! consumers, existing and new, counted by the channel (see `amqp::channel`). Both apply
//! when both are set. prefetch-size limits unacked body bytes (a message is still
//! delivered when nothing is unacked). amq-protocol does not surface prefetch-size, so it
//! is read from the payload.

use std::rc::Rc;

use amq_protocol::protocol::{basic, AMQPClass};
use bytes::Bytes;

use crate::amqp::channel::ChannelRef;
use crate::amqp::connection::Connection;
use crate::amqp::AmqpError;

pub fn qos(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    q: basic::Qos,
    payload: &Bytes,
) -> Result<(), AmqpError> {
    let size = payload
        .get(4..8)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0) as u64;
    let id = {
        let mut c = ch.borrow_mut();
        if q.global {
            c.set_global_qos(conn, q.prefetch_count as u32, size);
        } else {
            c.prefetch_count = q.prefetch_count as u32;
            c.prefetch_bytes = size;
        }
        c.id
    };
    conn.send_method(
        id,
        AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
    );
    Ok(())
}

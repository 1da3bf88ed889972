//! The channel class: `channel.flow(active)` → `flow-ok(active)`; `channel.close(code,
//! text, class, method)` → `close-ok`. (channel.open is handled by the connection, which
//! creates the channel.)

use std::rc::Rc;

use amq_protocol::protocol::{channel as chan, AMQPClass};

use crate::amqp::channel::ChannelRef;
use crate::amqp::connection::Connection;
use crate::amqp::AmqpError;

/// channel.flow: pauses (active=false) or resumes deliveries to this channel's consumers.
pub fn flow(conn: &Rc<Connection>, ch: &ChannelRef, f: chan::Flow) -> Result<(), AmqpError> {
    let id = {
        let mut c = ch.borrow_mut();
        c.set_flow(conn, f.active);
        c.id
    };
    conn.send_method(
        id,
        AMQPClass::Channel(chan::AMQPMethod::FlowOk(chan::FlowOk { active: f.active })),
    );
    Ok(())
}

/// channel.close from the client: consumers cancelled, unacked messages requeued.
pub fn close(conn: &Rc<Connection>, ch: &ChannelRef) -> Result<(), AmqpError> {
    let id = {
        let mut c = ch.borrow_mut();
        c.release(conn);
        c.id
    };
    conn.channels.borrow_mut().remove(&id);
    conn.send_method(
        id,
        AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
    );
    Ok(())
}

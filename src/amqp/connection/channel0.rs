//! The connection's own methods on channel 0 once it runs: close (the client's, answered
//! after the clean-up with close-ok, then the socket is the client's to close) and
//! close-ok, blocked/unblocked (ignored), update-secret (RabbitMQ's credential refresh);
//! and, once our close or close-ok has gone out, the rest of the close handshake.
//!
//! Runs on the connection's shard, in its reader task.

use std::rc::Rc;

use amq_protocol::protocol::{connection as conn_m, AMQPClass};

use super::{Connection, Phase};
use crate::amqp::codec::{self, Frame};
use crate::amqp::{methods, reply, AmqpError};

/// A frame on channel 0 after the handshake. Ok(false) ends the connection.
pub(super) async fn method(
    conn: &Rc<Connection>,
    phase: &mut Phase,
    frame: Frame,
) -> Result<bool, AmqpError> {
    if frame.kind != codec::FRAME_METHOD {
        return Err(AmqpError::connection(
            reply::UNEXPECTED_FRAME,
            "UNEXPECTED_FRAME - content frame on channel 0",
        ));
    }
    conn.method_received(&frame.payload);
    match codec::decode_method(&frame.payload) {
        Some(AMQPClass::Connection(conn_m::AMQPMethod::Close(c))) => {
            log::debug!(
                "amqp connection from {} closed by client: {} {}",
                conn.peer,
                c.reply_code,
                c.reply_text
            );
            conn.clean_up().await;
            conn.send_close_ok();
            // As RabbitMQ: the client closes the socket (a repeated close gets close-ok
            // again), within `closed_linger`.
            *phase = Phase::Closed;
            Ok(true)
        }
        Some(AMQPClass::Connection(conn_m::AMQPMethod::CloseOk(_))) => Ok(false),
        Some(AMQPClass::Connection(conn_m::AMQPMethod::Blocked(_)))
        | Some(AMQPClass::Connection(conn_m::AMQPMethod::Unblocked(_))) => Ok(true),
        Some(AMQPClass::Connection(conn_m::AMQPMethod::UpdateSecret(u))) => {
            // RabbitMQ's credential refresh (OAuth 2 tokens). Its internal users, like
            // ours, have passwords checked at login only: the refresh re-checks nothing
            // and is answered update-secret-ok.
            log::debug!(
                "amqp connection from {}: secret updated for user '{}' ({})",
                conn.peer,
                conn.user(),
                u.reason
            );
            conn.send_method(
                0,
                AMQPClass::Connection(conn_m::AMQPMethod::UpdateSecretOk(
                    conn_m::UpdateSecretOk {},
                )),
            );
            Ok(true)
        }
        Some(_) => Err(AmqpError::connection(
            reply::COMMAND_INVALID,
            "COMMAND_INVALID - unexpected method on channel 0",
        )),
        None => Err(methods::undecodable(&frame.payload)),
    }
}

/// A frame once the connection's close has gone out (ours, or our close-ok to the
/// client's): only channel 0's close and close-ok matter. A close (crossing ours, or
/// repeated) is answered with close-ok and the wait goes on; close-ok ends the connection
/// (false). Everything else, content included, is ignored.
pub(super) fn while_closing(conn: &Connection, frame: Frame) -> bool {
    if frame.kind == codec::FRAME_METHOD && frame.channel == 0 {
        match codec::decode_method(&frame.payload) {
            Some(AMQPClass::Connection(conn_m::AMQPMethod::CloseOk(_))) => return false,
            Some(AMQPClass::Connection(conn_m::AMQPMethod::Close(_))) => conn.send_close_ok(),
            _ => {}
        }
    }
    true
}

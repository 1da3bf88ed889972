//! The connection's own methods on channel 0 once it runs: close (the client's, answered
//! after the clean-up) and close-ok, blocked/unblocked (ignored), update-secret
//! (RabbitMQ's credential refresh); and, once we have sent connection.close, the wait for
//! the client's close-ok.
//!
//! Runs on the connection's shard, in its reader task.

use std::rc::Rc;

use amq_protocol::protocol::{connection as conn_m, AMQPClass};

use super::Connection;
use crate::amqp::codec::{self, Frame};
use crate::amqp::{auth, methods, reply, AmqpError};

/// A frame on channel 0 after the handshake. Ok(false) ends the connection.
pub(super) async fn method(conn: &Rc<Connection>, frame: Frame) -> Result<bool, AmqpError> {
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
            conn.send_method(
                0,
                AMQPClass::Connection(conn_m::AMQPMethod::CloseOk(conn_m::CloseOk {})),
            );
            Ok(false)
        }
        Some(AMQPClass::Connection(conn_m::AMQPMethod::CloseOk(_))) => Ok(false),
        Some(AMQPClass::Connection(conn_m::AMQPMethod::Blocked(_)))
        | Some(AMQPClass::Connection(conn_m::AMQPMethod::Unblocked(_))) => Ok(true),
        Some(AMQPClass::Connection(conn_m::AMQPMethod::UpdateSecret(u))) => {
            // RabbitMQ's credential refresh: the new secret must be the user's
            // password (no token backends here); 530 otherwise.
            let user = conn.user();
            let ok = conn
                .shard
                .config
                .amqp
                .users
                .iter()
                .find(|x| x.name == user)
                .is_some_and(|x| {
                    auth::check_password(
                        &x.password_hash,
                        &String::from_utf8_lossy(u.new_secret.as_bytes()),
                    )
                });
            if !ok {
                return Err(AmqpError::connection(
                    reply::NOT_ALLOWED,
                    format!("NOT_ALLOWED - Secret update was refused for user '{user}'"),
                ));
            }
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

/// A frame while we wait for the client's close-ok: only close-ok (or a crossing close,
/// answered) matters; false ends the connection.
pub(super) fn while_closing(conn: &Connection, frame: Frame) -> bool {
    // Only close-ok (or a crossing close) matters now.
    if frame.kind == codec::FRAME_METHOD && frame.channel == 0 {
        match codec::decode_method(&frame.payload) {
            Some(AMQPClass::Connection(conn_m::AMQPMethod::CloseOk(_))) => return false,
            Some(AMQPClass::Connection(conn_m::AMQPMethod::Close(_))) => {
                conn.send_method(
                    0,
                    AMQPClass::Connection(conn_m::AMQPMethod::CloseOk(conn_m::CloseOk {})),
                );
                return false;
            }
            _ => {}
        }
    }
    true
}

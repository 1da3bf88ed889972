//! Frames for channels 1..=channel_max: channel.open, methods (basic.publish read in place,
//! the rest to `methods::dispatch`), content (to `basic_publish::content`, then `finish`),
//! the close handshake of a channel; a channel error closes only that channel
//! (`close_channel`: consumers cancelled, unacked messages requeued). Also RabbitMQ's
//! consumer timeout, which closes a channel that holds a delivery unacknowledged too long.
//!
//! Runs on the connection's shard, in its reader task (and a consumer-timeout task).

use std::rc::Rc;
use std::time::Duration;

use amq_protocol::protocol::{channel as chan, AMQPClass};

use super::{still_running, Connection};
use crate::amqp::channel::{Channel, ChannelRef};
use crate::amqp::codec::{self, Frame};
use crate::amqp::{methods, reply, AmqpError};
use crate::metrics::Protocol;
use crate::storage::log::now_ms;

/// A decoded method: basic.publish (once per message) read in place, the rest by
/// amq-protocol.
enum Method<'a> {
    Publish(codec::PublishArgs<'a>),
    Other(AMQPClass),
}

/// A frame on a channel other than 0, after the handshake. Ok(false) ends the connection.
pub(super) async fn frame(conn: &Rc<Connection>, frame: Frame) -> Result<bool, AmqpError> {
    if frame.channel > conn.channel_max.get() {
        return Err(AmqpError::connection(
            reply::CHANNEL_ERROR,
            format!(
                "CHANNEL_ERROR - channel {} exceeds channel_max {}",
                frame.channel,
                conn.channel_max.get()
            ),
        ));
    }
    let ch = conn.channel(frame.channel);
    match frame.kind {
        codec::FRAME_METHOD => {
            conn.method_received(&frame.payload);
            // basic.publish, once per message, is read in place; the rest by amq-protocol.
            let method = match codec::decode_publish(&frame.payload) {
                Some(p) => Method::Publish(p),
                None => match codec::decode_method(&frame.payload) {
                    Some(m) => Method::Other(m),
                    None => return Err(methods::undecodable(&frame.payload)),
                },
            };
            let Some(ch) = ch else {
                if let Method::Other(AMQPClass::Channel(chan::AMQPMethod::Open(_))) = method {
                    let ch = Channel::new(
                        frame.channel,
                        conn.shard.config.amqp.default_prefetch as u32,
                    );
                    conn.channels.borrow_mut().insert(frame.channel, ch);
                    conn.send_method(
                        frame.channel,
                        AMQPClass::Channel(chan::AMQPMethod::OpenOk(chan::OpenOk {})),
                    );
                    return Ok(true);
                }
                return Err(AmqpError::connection(
                    reply::CHANNEL_ERROR,
                    format!(
                        "CHANNEL_ERROR - expected 'channel.open' on channel {}",
                        frame.channel
                    ),
                ));
            };
            let closing = ch.borrow().closing;
            if closing {
                // We sent channel.close: only close-ok ends it. A crossing close is
                // answered with close-ok and the channel still waits for the client's
                // close-ok to ours (so the channel number is not free before it).
                // Everything else is ignored.
                match method {
                    Method::Other(AMQPClass::Channel(chan::AMQPMethod::CloseOk(_))) => {
                        conn.channels.borrow_mut().remove(&frame.channel);
                    }
                    Method::Other(AMQPClass::Channel(chan::AMQPMethod::Close(_))) => {
                        conn.send_method(
                            frame.channel,
                            AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                        );
                    }
                    _ => {}
                }
                return Ok(true);
            }
            if ch.borrow().publish.is_some() {
                return Err(AmqpError::connection(
                    reply::UNEXPECTED_FRAME,
                    "UNEXPECTED_FRAME - expected content header or body, got a method",
                ));
            }
            let r = match method {
                Method::Publish(p) => methods::basic_publish::publish(conn, &ch, p),
                Method::Other(m) => methods::dispatch(conn, &ch, m, &frame.payload).await,
            };
            channel_result(conn, &ch, r)?;
            Ok(true)
        }
        codec::FRAME_HEADER | codec::FRAME_BODY => {
            let Some(ch) = ch else {
                return Err(AmqpError::connection(
                    reply::CHANNEL_ERROR,
                    format!(
                        "CHANNEL_ERROR - content on channel {} which is not open",
                        frame.channel
                    ),
                ));
            };
            if ch.borrow().closing {
                return Ok(true);
            }
            let r = match methods::basic_publish::content(conn, &ch, frame) {
                Ok(Some(p)) => methods::basic_publish::finish(conn, &ch, p).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            channel_result(conn, &ch, r)?;
            Ok(true)
        }
        _ => Ok(true),
    }
}

/// A channel error closes only that channel (channel.close, then wait for close-ok);
/// connection errors pass up.
fn channel_result(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    r: Result<(), AmqpError>,
) -> Result<(), AmqpError> {
    match r {
        Ok(()) => Ok(()),
        Err(AmqpError::Channel { code, text }) => {
            if ch.borrow().closing {
                // Closed meanwhile (the consumer timeout, while the method awaited): one
                // channel.close only.
                return Ok(());
            }
            let (class_id, method_id) = conn.last_method.get();
            log::debug!("amqp channel {} of {}: {text}", ch.borrow().id, conn.peer);
            close_channel(conn, ch, code, &text, (class_id, method_id));
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Closes a channel from the broker's side: its consumers are cancelled and its unacked
/// messages requeued at once; channel.close goes out and close-ok is awaited.
fn close_channel(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    code: u16,
    text: &str,
    method: (u16, u16),
) {
    crate::metrics::with(|m| m.error(Protocol::Amqp, code as i32));
    let id = {
        let mut c = ch.borrow_mut();
        c.release(conn);
        c.closing = true;
        c.id
    };
    conn.send_method(
        id,
        AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
            reply_code: code,
            reply_text: codec::short(text),
            class_id: method.0,
            method_id: method.1,
        })),
    );
}

/// Starts `consumer_timeout_loop` when `amqp.consumer_timeout_ms` is set (not 0).
pub(super) fn start_consumer_timeouts(conn: &Rc<Connection>) {
    let timeout = conn.shard.config.amqp.consumer_timeout_ms;
    if timeout > 0 {
        glommio::spawn_local(consumer_timeout_loop(Rc::downgrade(conn), timeout)).detach();
    }
}

/// RabbitMQ's consumer timeout: a channel whose oldest unacknowledged delivery is older
/// than `amqp.consumer_timeout_ms` is closed with 406 (its messages go back to their
/// queues). Checked once a minute, or at a quarter of a shorter timeout. Holds the
/// connection weakly, so a closed connection is freed at once.
async fn consumer_timeout_loop(conn: std::rc::Weak<Connection>, timeout: u64) {
    let tick = Duration::from_millis((timeout / 4).clamp(50, 60_000));
    loop {
        glommio::timer::sleep(tick).await;
        let Some(conn) = still_running(&conn) else {
            return;
        };
        let now = now_ms();
        let late: Vec<ChannelRef> = conn
            .channels
            .borrow()
            .values()
            .filter(|ch| {
                let c = ch.borrow();
                !c.closing
                    && c.oldest_unacked_ms()
                        .is_some_and(|t| now.saturating_sub(t) > timeout as i64)
            })
            .cloned()
            .collect();
        for ch in late {
            let id = ch.borrow().id;
            log::info!(
                "amqp connection from {}: channel {id} held a delivery unacknowledged over {timeout} ms, closing the channel",
                conn.peer
            );
            let text = format!(
                "PRECONDITION_FAILED - delivery acknowledgement on channel {id} timed out. Timeout value used: {timeout} ms. This timeout value can be configured, see consumers doc guide to learn more"
            );
            close_channel(&conn, &ch, reply::PRECONDITION_FAILED, &text, (0, 0));
        }
    }
}

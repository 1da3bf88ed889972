//! `basic.publish(exchange, routing-key, mandatory, immediate)` followed by a content
//! header and body frames.
//!
//! When the last body frame arrives the message is routed on this shard (the catalog
//! replica's `Router`) and sent once to each owner shard of the matched queues through the
//! outbox. A missing exchange is 404 and an internal one 403 (channel errors); a body
//! over `amqp.max_message_bytes` is 406; a `user-id` property other than the logged-in
//! user is 406; an unroutable mandatory message comes back as basic.return 312 NO_ROUTE.
//! In confirm mode the publish gets the channel's next sequence number; inside a
//! transaction it is buffered until tx.commit.

use std::rc::Rc;

use amq_protocol::protocol::{basic, AMQPClass};
use bytes::{Bytes, BytesMut};

use super::{allowed, no_exchange, refresh_catalog};
use crate::amqp::channel::{ChannelRef, PendingPublish, TxPublish};
use crate::amqp::codec::{self, Frame};
use crate::amqp::connection::Connection;
use crate::amqp::mesh::{ConfirmTo, Op};
use crate::amqp::message::{decode_headers, parse_expiration, scan_properties, Message};
use crate::amqp::routing::{QueueRef, RouteError};
use crate::amqp::{outbox, reply, AmqpError};

pub fn publish(
    _conn: &Rc<Connection>,
    ch: &ChannelRef,
    p: basic::Publish,
) -> Result<(), AmqpError> {
    ch.borrow_mut().publish = Some(PendingPublish {
        exchange: p.exchange.as_str().to_owned(),
        routing_key: p.routing_key.as_str().to_owned(),
        mandatory: p.mandatory,
        header: None,
        body: BytesMut::new(),
        single: None,
    });
    Ok(())
}

fn unexpected(what: &str) -> AmqpError {
    AmqpError::connection(
        reply::UNEXPECTED_FRAME,
        format!("UNEXPECTED_FRAME - {what}"),
    )
}

/// A content header or body frame for the channel's pending publish.
pub async fn content(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    frame: Frame,
) -> Result<(), AmqpError> {
    let complete = {
        let mut c = ch.borrow_mut();
        let Some(p) = c.publish.as_mut() else {
            return Err(unexpected("content frame without basic.publish"));
        };
        if frame.kind == codec::FRAME_HEADER {
            if p.header.is_some() {
                return Err(unexpected("second content header"));
            }
            let Some(h) = codec::decode_content_header(&frame.payload) else {
                return Err(AmqpError::connection(
                    reply::FRAME_ERROR,
                    "FRAME_ERROR - malformed content header",
                ));
            };
            if h.class_id != 60 {
                return Err(AmqpError::connection(
                    reply::FRAME_ERROR,
                    "FRAME_ERROR - content header of a class other than basic",
                ));
            }
            let max = conn.shard.config.amqp.max_message_bytes as u64;
            if h.body_size > max {
                c.publish = None;
                return Err(AmqpError::channel(
                    reply::PRECONDITION_FAILED,
                    format!("PRECONDITION_FAILED - message size {} is larger than configured max size {max}", h.body_size),
                ));
            }
            p.header = Some((h.body_size, h.properties));
            h.body_size == 0
        } else {
            let Some((size, _)) = p.header else {
                return Err(unexpected("content body before its header"));
            };
            let have = p.body.len() as u64 + p.single.as_ref().map(|b| b.len() as u64).unwrap_or(0);
            let n = frame.payload.len() as u64;
            if have + n > size {
                return Err(AmqpError::connection(
                    reply::FRAME_ERROR,
                    "FRAME_ERROR - content body larger than its header said",
                ));
            }
            if have == 0 && n == size {
                // The common case: one body frame, kept without a copy.
                p.single = Some(frame.payload);
            } else {
                if let Some(first) = p.single.take() {
                    p.body.extend_from_slice(&first);
                }
                p.body.extend_from_slice(&frame.payload);
            }
            have + n == size
        }
    };
    if !complete {
        return Ok(());
    }
    let Some(p) = ch.borrow_mut().publish.take() else {
        return Ok(());
    };
    finish(conn, ch, p).await
}

/// Builds the message of a complete publish and routes it (or buffers it in a tx).
async fn finish(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    p: PendingPublish,
) -> Result<(), AmqpError> {
    let (_, properties) = p.header.unwrap_or((0, Bytes::from_static(&[0, 0])));
    // A copy: a slice would keep the whole socket read buffer alive as long as the
    // message lives (also once its body is paged out).
    let properties = Bytes::copy_from_slice(&properties);
    let body = match p.single {
        Some(b) => b,
        None => p.body.freeze(),
    };
    let Some(view) = scan_properties(&properties) else {
        return Err(AmqpError::connection(
            reply::FRAME_ERROR,
            "FRAME_ERROR - malformed content properties",
        ));
    };
    if let Some(uid) = &view.user_id {
        let user = conn.user.borrow();
        if uid[..] != *user.as_bytes() {
            return Err(AmqpError::channel(
                reply::PRECONDITION_FAILED,
                format!(
                    "PRECONDITION_FAILED - user_id property set to '{}' but authenticated user was '{}'",
                    String::from_utf8_lossy(uid),
                    user
                ),
            ));
        }
    }
    let expiration = match &view.expiration {
        Some(e) => Some(parse_expiration(e).ok_or_else(|| {
            AmqpError::channel(
                reply::PRECONDITION_FAILED,
                format!(
                    "PRECONDITION_FAILED - invalid expiration '{}'",
                    String::from_utf8_lossy(e)
                ),
            )
        })?),
        None => None,
    };
    let msg = Message {
        exchange: Bytes::copy_from_slice(p.exchange.as_bytes()),
        routing_key: Bytes::copy_from_slice(p.routing_key.as_bytes()),
        persistent: view.delivery_mode == Some(2),
        priority: view.priority.unwrap_or(0),
        expiration,
        properties,
        body,
    };
    write_allowed(conn, ch, &p.exchange)?;
    if ch.borrow().tx.is_some() {
        // Routing happens at commit; the exchange must exist now.
        route(conn, &p.exchange, &p.routing_key, &msg).await?;
        if let Some(tx) = ch.borrow_mut().tx.as_mut() {
            tx.publishes.push(TxPublish {
                exchange: p.exchange,
                routing_key: p.routing_key,
                mandatory: p.mandatory,
                msg,
            });
        }
        return Ok(());
    }
    let targets = route(conn, &p.exchange, &p.routing_key, &msg).await?;
    send(conn, ch, targets, msg, p.mandatory, true);
    Ok(())
}

/// Write permission on the exchange, cached per channel for the last exchange used.
fn write_allowed(conn: &Rc<Connection>, ch: &ChannelRef, exchange: &str) -> Result<(), AmqpError> {
    let cached = match &ch.borrow().write_allowed {
        Some((e, ok)) if e == exchange => Some(*ok),
        _ => None,
    };
    let ok = match cached {
        Some(ok) => ok,
        None => {
            let ok = allowed(conn, "write", "exchange", exchange).is_ok();
            ch.borrow_mut().write_allowed = Some((exchange.to_owned(), ok));
            ok
        }
    };
    if ok {
        Ok(())
    } else {
        Err(super::access_refused("write", "exchange", exchange, conn))
    }
}

/// The queues a message reaches; 404 for a missing exchange, 403 for an internal one.
pub async fn route(
    conn: &Rc<Connection>,
    exchange: &str,
    routing_key: &str,
    msg: &Message,
) -> Result<Vec<QueueRef>, AmqpError> {
    let vhost = conn.vhost();
    let props = msg.properties.clone();
    let mut headers = move || {
        scan_properties(&props)
            .and_then(|v| v.headers)
            .map(|h| decode_headers(&h))
            .unwrap_or_default()
    };
    for attempt in 0..2 {
        let router = conn.shard.amqp.router(&conn.shard);
        if router.exchange_internal(&vhost, exchange) == Some(true) {
            return Err(AmqpError::channel(
                reply::ACCESS_REFUSED,
                format!("ACCESS_REFUSED - cannot publish to internal exchange '{exchange}' in vhost '{vhost}'"),
            ));
        }
        match router.route(&vhost, exchange, routing_key, &mut headers) {
            Ok(t) => return Ok(t),
            Err(RouteError::NoExchange) if attempt == 0 => refresh_catalog(conn).await,
            Err(RouteError::NoExchange) => {}
        }
    }
    Err(no_exchange(conn, exchange))
}

/// Sends a routed message to its queues' owners; a mandatory message that reached no
/// queue comes back as basic.return. With `confirmable`, a confirm-mode channel numbers it.
pub fn send(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    targets: Vec<QueueRef>,
    msg: Message,
    mandatory: bool,
    confirmable: bool,
) -> Option<u64> {
    if targets.is_empty() && mandatory {
        let id = ch.borrow().id;
        let frame_max = conn.frame_max.get();
        conn.send_method(
            id,
            AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: reply::NO_ROUTE,
                reply_text: "NO_ROUTE".into(),
                exchange: codec::short(&String::from_utf8_lossy(&msg.exchange)),
                routing_key: codec::short(&String::from_utf8_lossy(&msg.routing_key)),
            })),
        );
        conn.write(|out| codec::put_content(out, id, &msg.properties, &msg.body, frame_max));
    }
    let (seq, id) = {
        let mut c = ch.borrow_mut();
        let track = confirmable && (c.confirm || c.tx.is_some());
        (track.then(|| c.track_publish(targets.len() as u32)), c.id)
    };
    let confirm = seq.map(|seq| ConfirmTo {
        shard: conn.shard.id,
        conn: conn.id,
        channel: id,
        seq,
    });
    for q in targets {
        let owner = q.owner;
        outbox::push(
            &conn.shard,
            owner,
            Op::Publish {
                queue: q,
                msg: msg.clone(),
                confirm,
            },
        );
    }
    if seq.is_some() && ch.borrow().confirm {
        // Unroutable publishes are confirmed at once (after any basic.return).
        ch.borrow_mut().emit_confirms(conn);
    }
    seq
}

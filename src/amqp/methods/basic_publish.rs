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
//!
//! `message` (the checks on properties), `route` and `enqueue` serve the HTTP API's
//! publish too. Counted in the shard's metrics: every publish (by exchange, the default
//! exchange as `amq.default`) with its body bytes, and in confirm mode the time from the
//! publish to its confirm.

use std::rc::Rc;
use std::time::Instant;

use amq_protocol::protocol::{basic, AMQPClass};
use bytes::{Bytes, BytesMut};

use super::{adopt_super_stream, allowed, no_exchange, refresh_catalog, Access, Actor};
use crate::amqp::channel::{ChannelRef, PendingPublish, TxPublish};
use crate::amqp::codec::{self, Frame};
use crate::amqp::connection::Connection;
use crate::amqp::direct_reply;
use crate::amqp::mesh::{ConfirmTo, QueueOp};
use crate::amqp::message::{
    decode_headers, has_headers, parse_expiration, scan_properties, without_header, Body, Message,
    MessageData, Parts,
};
use crate::amqp::routing::{QueueRef, RouteError, Targets};
use crate::amqp::{outbox, reply, AmqpError};
use crate::broker::Shard;
use crate::catalog::amqp::tables::str_value;
use crate::metrics::Protocol;
use amq_protocol::types::AMQPValue;

pub fn publish(
    _conn: &Rc<Connection>,
    ch: &ChannelRef,
    p: codec::PublishArgs<'_>,
) -> Result<(), AmqpError> {
    if p.immediate {
        // RabbitMQ dropped `immediate` in 3.0 and closes the connection, so do we.
        return Err(AmqpError::connection(
            reply::NOT_IMPLEMENTED,
            "NOT_IMPLEMENTED - immediate=true",
        ));
    }
    let mut c = ch.borrow_mut();
    // The clock is read only where a confirm will be timed.
    let received = c.confirm.then(Instant::now);
    c.publish = Some(PendingPublish {
        exchange: p.exchange.to_owned(),
        routing_key: p.routing_key.to_owned(),
        mandatory: p.mandatory,
        header: None,
        body: BytesMut::new(),
        single: None,
        received,
    });
    Ok(())
}

fn unexpected(what: &str) -> AmqpError {
    AmqpError::connection(
        reply::UNEXPECTED_FRAME,
        format!("UNEXPECTED_FRAME - {what}"),
    )
}

/// A content header or body frame for the channel's pending publish: the publish, once
/// its last frame is in (to `finish`). Not async, so the frames before the last (the
/// header, at least) do not build `finish`'s future.
pub fn content(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    frame: Frame,
) -> Result<Option<PendingPublish>, AmqpError> {
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
                return Err(unexpected("content header of a class other than basic"));
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
        return Ok(None);
    }
    Ok(ch.borrow_mut().publish.take())
}

/// Builds the message of a complete publish and routes it (or buffers it in a tx).
pub async fn finish(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    p: PendingPublish,
) -> Result<(), AmqpError> {
    let (_, properties) = p.header.unwrap_or((0, Bytes::from_static(&[0, 0])));
    // Copies (into one buffer with the names): a slice would keep the socket read buffer
    // it came from (64 KiB or more, shared with the frames around it) alive as long as the
    // message lives, so queued messages would cost up to several times what the memory
    // budget counts.
    let single = p.single;
    let body = match &single {
        Some(b) => Body::Copy(b),
        None => Body::Own(p.body.freeze()),
    };
    let msg = message(&p.exchange, &p.routing_key, &properties, body, conn.user())?;
    write_allowed(conn, ch, &p.exchange)?;
    // From now on the disk alarm blocks this connection; a publish completed while it is on
    // waits here, not routed, until free space returns (`connection::wait_for_disk`).
    crate::amqp::connection::mark_published(conn);
    crate::amqp::connection::wait_for_disk(conn).await;
    let msg = direct_reply::rewrite(conn, ch, msg)?;
    if ch.borrow().tx.is_some() {
        // Routing happens at commit; the exchange must exist now.
        let targets = route(&conn.actor(), &p.exchange, &p.routing_key, &msg).await?;
        crate::stream::acl::check_targets(&conn.shard, conn.user(), conn.peer.ip(), &targets)?;
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
    deliver(
        conn,
        ch,
        &p.exchange,
        &p.routing_key,
        msg,
        p.mandatory,
        p.received,
    )
    .await?;
    Ok(())
}

/// Routes a publish and sends it (at once, or at tx.commit): a direct reply to its
/// requester, anything else to its queues. Returns its confirm sequence number, if the
/// channel numbers publishes.
pub async fn deliver(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    exchange: &str,
    routing_key: &str,
    msg: Message,
    mandatory: bool,
    received: Option<Instant>,
) -> Result<Option<u64>, AmqpError> {
    if direct_reply::route(conn, exchange, routing_key, &msg) {
        // Confirmed at once, as an unroutable publish is.
        return Ok(send(conn, ch, Targets::new(), msg, false, true, received));
    }
    let targets = route(&conn.actor(), exchange, routing_key, &msg).await?;
    // Stream queues are Kafka topics: their WRITE ACL holds for AMQP publishers too.
    crate::stream::acl::check_targets(&conn.shard, conn.user(), conn.peer.ip(), &targets)?;
    Ok(send(
        conn,
        ch,
        targets,
        without_bcc(msg),
        mandatory,
        true,
        received,
    ))
}

/// A message from its parts: the properties must parse, a `user-id` must be the
/// authenticated user's (406 otherwise), an `expiration` a number of milliseconds (406).
pub fn message(
    exchange: &str,
    routing_key: &str,
    properties: &[u8],
    body: Body<'_>,
    user: &str,
) -> Result<Message, AmqpError> {
    let Some(view) = scan_properties(properties) else {
        return Err(AmqpError::connection(
            reply::FRAME_ERROR,
            "FRAME_ERROR - malformed content properties",
        ));
    };
    if let Some(uid) = &view.user_id {
        if uid[..] != *user.as_bytes() {
            return Err(AmqpError::channel(
                reply::PRECONDITION_FAILED,
                format!(
                    "PRECONDITION_FAILED - user_id property set to '{}' but authenticated user was '{user}'",
                    String::from_utf8_lossy(uid),
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
    Ok(Message::new(MessageData {
        parts: Parts::published(
            exchange.as_bytes(),
            routing_key.as_bytes(),
            properties,
            body,
        ),
        persistent: view.delivery_mode == Some(2),
        priority: view.priority.unwrap_or(0),
        expiration,
    }))
}

/// Write permission on the exchange, cached per channel for the last exchange used.
fn write_allowed(conn: &Rc<Connection>, ch: &ChannelRef, exchange: &str) -> Result<(), AmqpError> {
    let cached = match &ch.borrow().write_allowed {
        Some((e, ok)) if crate::util::same_name(e, exchange) => Some(*ok),
        _ => None,
    };
    let ok = match cached {
        Some(ok) => ok,
        None => {
            let ok = allowed(&conn.actor(), Access::Write, "exchange", exchange).is_ok();
            ch.borrow_mut().write_allowed = Some((exchange.to_owned(), ok));
            ok
        }
    };
    if ok {
        Ok(())
    } else {
        Err(super::access_refused(
            &conn.actor(),
            Access::Write,
            "exchange",
            exchange,
        ))
    }
}

/// The queues a message reaches (alternate exchanges included); 404 for a missing
/// exchange, 403 for an internal one. RabbitMQ's sender-selected distribution: the
/// routing keys in the `CC` and `BCC` headers (arrays of strings) route it too.
pub async fn route(
    actor: &Actor<'_>,
    exchange: &str,
    routing_key: &str,
    msg: &Message,
) -> Result<Targets, AmqpError> {
    let mut targets = route_key(actor, exchange, routing_key, msg).await?;
    for key in sender_selected(msg) {
        for q in route_key(actor, exchange, &key, msg).await? {
            if !targets.iter().any(|t| t.id == q.id) {
                targets.push(q);
            }
        }
    }
    Ok(targets)
}

/// The routing keys of the `CC` and `BCC` headers; none unless the raw header table
/// names one of them (so other messages are not decoded).
fn sender_selected(msg: &Message) -> Vec<String> {
    if !has_headers(msg.properties()) {
        return Vec::new();
    }
    let Some(raw) = scan_properties(msg.properties()).and_then(|v| v.headers) else {
        return Vec::new();
    };
    let names = |n: &[u8]| raw.windows(n.len()).any(|w| w == n);
    if !names(b"\x02CC") && !names(b"\x03BCC") {
        return Vec::new();
    }
    let headers = decode_headers(raw);
    let mut keys = Vec::new();
    for name in ["CC", "BCC"] {
        if let Some(AMQPValue::FieldArray(a)) = headers.inner().get(name) {
            keys.extend(a.as_slice().iter().filter_map(str_value));
        }
    }
    keys
}

/// The message without its `BCC` header (RabbitMQ removes it before delivery).
pub fn without_bcc(msg: Message) -> Message {
    if !has_headers(msg.properties()) {
        return msg;
    }
    let Some(raw) = scan_properties(msg.properties()).and_then(|v| v.headers) else {
        return msg;
    };
    if !raw.windows(4).any(|w| w == b"\x03BCC") {
        return msg;
    }
    without_header(&msg, "BCC")
}

async fn route_key(
    actor: &Actor<'_>,
    exchange: &str,
    routing_key: &str,
    msg: &Message,
) -> Result<Targets, AmqpError> {
    let vhost = actor.vhost;
    let mut headers = || {
        scan_properties(msg.properties())
            .and_then(|v| v.headers)
            .map(decode_headers)
            .unwrap_or_default()
    };
    for attempt in 0..2 {
        let router = actor.shard.amqp.router(actor.shard);
        match router.route(vhost, exchange, routing_key, &mut headers) {
            Ok(t) => return Ok(t),
            Err(RouteError::Internal) => {
                return Err(AmqpError::channel(
                    reply::ACCESS_REFUSED,
                    format!("ACCESS_REFUSED - cannot publish to internal exchange '{exchange}' in vhost '{vhost}'"),
                ))
            }
            Err(RouteError::NoExchange) if attempt == 0 => {
                // Rare, and boxed: inline, these two futures would make every publish's
                // future (hence every AMQP connection's task) 1.5 KiB larger.
                Box::pin(refresh_catalog(actor.shard)).await;
                // A Kafka topic of several partitions: its super stream's exchange.
                Box::pin(adopt_super_stream(actor, exchange)).await?;
            }
            Err(RouteError::NoExchange) => {}
        }
    }
    Err(no_exchange(actor, exchange))
}

/// The flow name an exchange is counted under in the metrics (`amq.default` for "").
pub fn exchange_label(exchange: &[u8]) -> &str {
    match std::str::from_utf8(exchange) {
        Ok("") | Err(_) => "amq.default",
        Ok(name) => name,
    }
}

/// Hands a routed message to each of its queues' owners (one op each, through the
/// outbox), with the confirm each owner sends once the queue has it.
pub fn enqueue(
    shard: &Rc<Shard>,
    mut targets: Targets,
    mut msg: Message,
    confirm: Option<ConfirmTo>,
) {
    let push = |queue: QueueRef, msg: Message| {
        outbox::push(
            shard,
            queue.owner,
            QueueOp::Publish {
                queue,
                msg,
                confirm,
            },
        )
    };
    // The last queue takes the message itself, the others a clone: one allocation, which
    // a shard counts once however many of its queues hold it (`queue::held`).
    if targets.len() > 1 {
        msg.routed_to_many();
    }
    let Some(last) = targets.pop() else {
        return;
    };
    for q in targets {
        push(q, msg.clone());
    }
    push(last, msg);
}

/// Publishes without a channel (the HTTP API): write permission on the exchange, the
/// same routing, then waits until every queue it reached has it — a persistent message on
/// a durable queue once fdatasync'ed — as a publisher confirm would. Returns the queues
/// reached and whether all of them accepted it (false: one refused it, a nack).
pub async fn publish_confirmed(
    actor: &Actor<'_>,
    exchange: &str,
    routing_key: &str,
    msg: Message,
) -> Result<(usize, bool), AmqpError> {
    allowed(actor, Access::Write, "exchange", exchange)?;
    let targets = route(actor, exchange, routing_key, &msg).await?;
    let msg = without_bcc(msg);
    let reached = targets.len();
    let wait = actor.shard.amqp.next_id();
    let confirmed = actor.shard.amqp.confirm_waits.wait(wait, reached);
    let confirm = ConfirmTo {
        shard: actor.shard.id,
        conn: wait,
        channel: 0,
        seq: 0,
    };
    enqueue(actor.shard, targets, msg, Some(confirm));
    let acked = confirmed.await.map_err(|_| {
        AmqpError::connection(
            reply::INTERNAL_ERROR,
            "INTERNAL_ERROR - the queues' confirms were lost",
        )
    })?;
    Ok((reached, acked))
}

/// Sends a routed message to its queues' owners; a mandatory message that reached no
/// queue comes back as basic.return. With `confirmable`, a confirm-mode channel numbers it.
#[allow(clippy::too_many_arguments)]
pub fn send(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    targets: Targets,
    msg: Message,
    mandatory: bool,
    confirmable: bool,
    received: Option<Instant>,
) -> Option<u64> {
    crate::metrics::with(|m| {
        m.produced(
            Protocol::Amqp,
            exchange_label(msg.exchange()),
            1,
            msg.body().len() as u64,
        )
    });
    if targets.is_empty() && mandatory {
        let id = ch.borrow().id;
        let frame_max = conn.frame_max.get();
        conn.send_method(
            id,
            AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: reply::NO_ROUTE,
                reply_text: "NO_ROUTE".into(),
                exchange: codec::short(&String::from_utf8_lossy(msg.exchange())),
                routing_key: codec::short(&String::from_utf8_lossy(msg.routing_key())),
            })),
        );
        conn.write(|out| codec::put_content(out, id, msg.properties(), msg.body(), frame_max));
    }
    let (seq, id) = {
        let mut c = ch.borrow_mut();
        let track = confirmable && (c.confirm || c.tx.is_some());
        (
            track.then(|| c.track_publish(targets.len() as u32, received)),
            c.id,
        )
    };
    // Where its publishes go is where the connection would rather be (`connection::moving`).
    conn.follow
        .saw(targets.iter().map(|q| q.owner), msg.body().len());
    let confirm = seq.map(|seq| ConfirmTo {
        shard: conn.shard.id,
        conn: conn.id,
        channel: id,
        seq,
    });
    enqueue(&conn.shard, targets, msg, confirm);
    if seq.is_some() && ch.borrow().confirm {
        // Unroutable publishes are confirmed at once (after any basic.return).
        ch.borrow_mut().emit_confirms(conn);
    }
    seq
}

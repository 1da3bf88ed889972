//! Direct reply-to, RabbitMQ's RPC extension: a client consumes (no-ack) from the pseudo
//! queue `amq.rabbitmq.reply-to` and publishes its requests with `reply-to` set to that
//! name; the broker rewrites the property to `amq.rabbitmq.reply-to.<token>`, and a reply
//! published to the default exchange with the token as routing key goes straight to that
//! consumer, without a queue.
//!
//! The token names the requester's shard, connection and channel and a random key of the
//! consumer, so a reply from any shard is one `ConnOp::DirectReply` to the requester's shard,
//! which writes it if that consumer is still there and drops it otherwise (as RabbitMQ
//! does when the requester has gone). Runs on the publishing connection's shard (rewrite,
//! route) and on the requester's shard (deliver).

use std::rc::Rc;

use super::channel::ChannelRef;
use super::connection::Connection;
use super::mesh::ConnOp;
use super::message::{encode_properties, has_reply_to, parse_props, Message};
use super::{outbox, reply, AmqpError};
use crate::metrics::Protocol;

/// The pseudo queue a requester consumes from and names in `reply-to`.
pub const PSEUDO_QUEUE: &str = "amq.rabbitmq.reply-to";
const PREFIX: &str = "amq.rabbitmq.reply-to.";

/// Where a reply goes: the requester's shard, connection, channel and consumer key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub shard: usize,
    pub conn: u64,
    pub channel: u16,
    pub key: u64,
}

impl Token {
    /// The routing key a reply is published with.
    pub fn routing_key(&self) -> String {
        format!(
            "{PREFIX}{}.{}.{}.{:016x}",
            self.shard, self.conn, self.channel, self.key
        )
    }

    /// Reads a reply routing key; `None` for anything that is not one of ours.
    pub fn parse(routing_key: &str) -> Option<Token> {
        let rest = routing_key.strip_prefix(PREFIX)?;
        let mut parts = rest.split('.');
        let shard = parts.next()?.parse().ok()?;
        let conn = parts.next()?.parse().ok()?;
        let channel = parts.next()?.parse().ok()?;
        let key = parts.next()?;
        if key.len() != 16 || parts.next().is_some() {
            return None;
        }
        let key = u64::from_str_radix(key, 16).ok()?;
        Some(Token {
            shard,
            conn,
            channel,
            key,
        })
    }
}

/// basic.consume on the pseudo queue: only with no-ack, one per channel.
pub fn consume(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    tag: &str,
    no_ack: bool,
) -> Result<(), AmqpError> {
    if !no_ack {
        return Err(AmqpError::channel(
            reply::PRECONDITION_FAILED,
            "PRECONDITION_FAILED - reply consumer cannot acknowledge",
        ));
    }
    let mut c = ch.borrow_mut();
    if c.direct_reply.is_some() {
        return Err(AmqpError::channel(
            reply::PRECONDITION_FAILED,
            "PRECONDITION_FAILED - reply consumer already set",
        ));
    }
    let id = crate::catalog::new_topic_id(tag);
    let key = u64::from_be_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]]);
    c.direct_reply = Some((tag.into(), key));
    log::debug!(
        "direct reply-to consumer {tag} on connection {} channel {}",
        conn.id,
        c.id
    );
    Ok(())
}

/// A publish on this channel naming the pseudo queue in `reply-to` gets the channel's
/// token there instead; 406 when the channel has no reply consumer.
pub fn rewrite(conn: &Connection, ch: &ChannelRef, msg: Message) -> Result<Message, AmqpError> {
    // Most publishes carry no reply-to: the flag says so without decoding the properties.
    if !has_reply_to(msg.properties()) {
        return Ok(msg);
    }
    let Some(mut props) = parse_props(msg.properties()) else {
        return Ok(msg);
    };
    if props.reply_to().as_ref().map(|r| r.as_str()) != Some(PSEUDO_QUEUE) {
        return Ok(msg);
    }
    let c = ch.borrow();
    let Some((_, key)) = c.direct_reply else {
        return Err(AmqpError::channel(
            reply::PRECONDITION_FAILED,
            "PRECONDITION_FAILED - fast reply consumer does not exist",
        ));
    };
    let token = Token {
        shard: conn.shard.id,
        conn: conn.id,
        channel: c.id,
        key,
    };
    props = props.with_reply_to(token.routing_key().into());
    let properties = encode_properties(&props).unwrap_or_else(|| msg.properties_bytes());
    let mut data = msg.into_data();
    data.set_properties(properties);
    Ok(Message::new(data))
}

/// A publish to the default exchange with a reply token as routing key is sent to the
/// requester's shard (true); anything else is routed as usual (false).
pub fn route(conn: &Connection, exchange: &str, routing_key: &str, msg: &Message) -> bool {
    if !exchange.is_empty() {
        return false;
    }
    let Some(token) = Token::parse(routing_key) else {
        return false;
    };
    if token.shard >= conn.shard.amqp.shards() {
        return false;
    }
    let msg = msg.clone();
    outbox::push(&conn.shard, token.shard, ConnOp::DirectReply { token, msg });
    true
}

/// On the requester's shard: writes the reply to its consumer, if it is still there.
pub fn deliver(conn: &Rc<Connection>, token: Token, msg: Message) {
    let Some(ch) = conn.channel(token.channel) else {
        return;
    };
    let mut c = ch.borrow_mut();
    let Some((tag, key)) = c.direct_reply.clone() else {
        return;
    };
    if key != token.key || c.closing {
        return;
    }
    c.write_direct_reply(conn, &tag, &msg);
    crate::metrics::with(|m| m.consumed(Protocol::Amqp, PSEUDO_QUEUE, 1, msg.body().len() as u64));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_foreign_keys() {
        let t = Token {
            shard: 1,
            conn: 42,
            channel: 7,
            key: 0xdead_beef_0000_0001,
        };
        let rk = t.routing_key();
        assert_eq!(rk, "amq.rabbitmq.reply-to.1.42.7.deadbeef00000001");
        assert_eq!(Token::parse(&rk), Some(t));
        for bad in [
            "amq.rabbitmq.reply-to",
            "amq.rabbitmq.reply-to.",
            "amq.rabbitmq.reply-to.1.42.7",
            "amq.rabbitmq.reply-to.1.42.7.deadbeef",
            "amq.rabbitmq.reply-to.1.42.7.deadbeef00000001.x",
            "amq.rabbitmq.reply-to.x.42.7.deadbeef00000001",
            "amq.rabbitmq.reply-to.1.42.70000.deadbeef00000001",
            "work",
        ] {
            assert_eq!(Token::parse(bad), None, "{bad}");
        }
    }
}

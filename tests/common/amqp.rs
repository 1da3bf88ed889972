//! lapin helpers for the AMQP tests: connect, declare, bind, publish (with or without
//! confirms), consume, get, and the reply code of a refused call.
#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};

pub async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("amqp connect")
}

pub async fn channel(conn: &Connection) -> Channel {
    conn.create_channel().await.expect("channel")
}

pub async fn declare(ch: &Channel, name: &str, args: FieldTable) {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), args)
        .await
        .expect("queue.declare");
}

/// queue.declare of a durable queue, default arguments.
pub async fn declare_durable(ch: &Channel, name: &str) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("durable queue");
}

pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("basic.publish");
}

/// queue.bind with `args`.
pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        args,
    )
    .await
    .expect("queue.bind");
}

/// Puts the channel in confirm mode.
pub async fn confirm_select(ch: &Channel) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
}

/// Publishes on a channel in confirm mode and waits for the broker's answer (ack or
/// nack); `Err` when the publish or its confirm failed (the channel was closed with a
/// reply code).
pub async fn publish_outcome(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<Confirmation, lapin::Error> {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await?;
    confirm.await
}

/// basic.get with manual ack of a message that must be there, then basic.ack.
pub async fn get_and_ack(ch: &Channel, queue: &str) -> lapin::message::BasicGetMessage {
    let m = ch
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
        .expect("a message");
    m.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("basic.ack");
    m
}

pub async fn consume(ch: &Channel, queue: &str, no_ack: bool) -> Consumer {
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("basic.consume")
}

/// The shard a consumer's connection lives on (server tags are `amq.ctag-s<shard>-…`).
pub fn shard_of(consumer: &Consumer) -> usize {
    shard_of_tag(consumer.tag().as_str())
}

/// The shard a server-made consumer tag names: the shard that answered the consume.
pub fn shard_of_tag(tag: &str) -> usize {
    tag.strip_prefix("amq.ctag-s")
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected consumer tag {tag}"))
}

/// Queue arguments choosing where a new queue goes (`x-queue-leader-locator`: `client-local`,
/// `balanced`).
pub fn locator(value: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-leader-locator".into(),
        AMQPValue::LongString(value.into()),
    );
    args
}

/// The shard serving `ch`'s connection now: a consumer's tag names the shard that answered
/// the consume, here on probe queue `probe`, declared on the connection's own shard (a queue
/// on another would draw a connection with no consumer there). The probe is deleted.
pub async fn connection_shard(ch: &Channel, probe: &str) -> usize {
    declare(ch, probe, locator("client-local")).await;
    let s = shard_of(&consume(ch, probe, true).await);
    ch.queue_delete(probe.into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    s
}

/// A connection (and a channel on it) on each of a two-shard broker's shards: connections
/// are opened until one lands on each.
pub async fn one_on_each_shard(url: &str) -> [(Connection, Channel); 2] {
    let mut by_shard: [Option<(Connection, Channel)>; 2] = [None, None];
    for i in 0..64 {
        let conn = connect(url).await;
        let ch = channel(&conn).await;
        let s = connection_shard(&ch, &format!("probe-{i}")).await;
        if by_shard[s].is_none() {
            by_shard[s] = Some((conn, ch));
        }
        if by_shard.iter().all(Option::is_some) {
            break;
        }
    }
    let [a, b] = by_shard;
    [
        a.expect("a connection on shard 0"),
        b.expect("a connection on shard 1"),
    ]
}

/// The next delivery, or None after `secs` seconds.
pub async fn next(consumer: &mut Consumer, secs: u64) -> Option<lapin::message::Delivery> {
    match tokio::time::timeout(Duration::from_secs(secs), consumer.next()).await {
        Ok(Some(Ok(d))) => Some(d),
        _ => None,
    }
}

/// Bodies of everything `queue` gives to basic.get (auto-ack), in order.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        out.push(m.delivery.data.clone());
    }
    out
}

/// Polls `basic.get` until `queue` gives a message or `secs` pass.
pub async fn get_within(
    ch: &Channel,
    queue: &str,
    secs: u64,
) -> Option<lapin::message::BasicGetMessage> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            return Some(m);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The AMQP reply code a failed lapin call carries, if any.
pub fn reply_code(e: &lapin::Error) -> Option<u16> {
    use lapin::ErrorKind;
    match e.kind() {
        ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

/// queue.declare with `passive`: whether the queue exists, as a client finds out.
pub async fn passive_queue(ch: &Channel, name: &str) -> Result<lapin::Queue, lapin::Error> {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// exchange.declare with `passive`: whether the exchange exists.
pub async fn passive_exchange(
    ch: &Channel,
    name: &str,
    kind: lapin::ExchangeKind,
) -> Result<(), lapin::Error> {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

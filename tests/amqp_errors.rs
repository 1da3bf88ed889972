//! Error paths a client depends on: channel errors close only their channel with the
//! right reply code, connection errors close the connection, logins are checked.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::amqp::*;
use common::{data_dir, Broker};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_errors_close_only_their_channel() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let conn = connect(&broker.amqp_url()).await;

    // Publish to a missing exchange: 404, channel closed.
    let ch = channel(&conn).await;
    confirm_select(&ch).await;
    let r = publish_outcome(&ch, "nope", "k", b"x", BasicProperties::default()).await;
    assert_eq!(r.err().as_ref().and_then(reply_code), Some(404));
    assert!(!ch.status().connected());

    // Passive declare of a missing queue: 404.
    let ch = channel(&conn).await;
    let e = ch
        .queue_declare(
            "missing".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("404");
    assert_eq!(reply_code(&e), Some(404));

    // Redeclare with other arguments or flags: 406.
    let ch = channel(&conn).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(10));
    declare(&ch, "q1", args).await;
    let e = ch
        .queue_declare(
            "q1".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("406");
    assert_eq!(reply_code(&e), Some(406));
    let ch = channel(&conn).await;
    let e = ch
        .queue_declare(
            "q1".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            {
                let mut a = FieldTable::default();
                a.insert("x-max-length".into(), AMQPValue::LongInt(10));
                a
            },
        )
        .await
        .expect_err("406");
    assert_eq!(reply_code(&e), Some(406));
    let ch = channel(&conn).await;
    ch.exchange_declare(
        "ex1".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let e = ch
        .exchange_declare(
            "ex1".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("406");
    assert_eq!(reply_code(&e), Some(406));

    // A bad argument: 406.
    let ch = channel(&conn).await;
    let mut bad = FieldTable::default();
    bad.insert("x-message-ttl".into(), AMQPValue::LongString("soon".into()));
    let e = ch
        .queue_declare("q2".into(), QueueDeclareOptions::default(), bad)
        .await
        .expect_err("406");
    assert_eq!(reply_code(&e), Some(406));

    // Reserved names and the default exchange: 403.
    let ch = channel(&conn).await;
    let e = ch
        .exchange_declare(
            "amq.mine".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("403");
    assert_eq!(reply_code(&e), Some(403));
    let ch = channel(&conn).await;
    let e = ch
        .exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default())
        .await
        .expect_err("403");
    assert_eq!(reply_code(&e), Some(403));

    // Unknown delivery tag: 406.
    let ch = channel(&conn).await;
    let e = ch.basic_ack(99, BasicAckOptions::default()).await;
    let e = match e {
        Err(e) => e,
        Ok(()) => ch
            .basic_qos(1, BasicQosOptions::default())
            .await
            .expect_err("channel closed"),
    };
    assert!(matches!(reply_code(&e), Some(406) | None), "{e:?}");

    // exchange.delete if-unused on a bound exchange: 406.
    let ch = channel(&conn).await;
    ch.queue_bind(
        "q1".into(),
        "ex1".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let e = ch
        .exchange_delete(
            "ex1".into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .expect_err("406");
    assert_eq!(reply_code(&e), Some(406));
    // queue.delete if-empty on a queue with messages: 406.
    let ch = channel(&conn).await;
    publish(&ch, "", "q1", b"m").await;
    let e = ch
        .queue_delete(
            "q1".into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .expect_err("406");
    assert_eq!(reply_code(&e), Some(406));

    // The connection survived all of it.
    let ch = channel(&conn).await;
    assert_eq!(
        ch.queue_delete("q1".into(), QueueDeleteOptions::default())
            .await
            .expect("delete"),
        1
    );
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queues_belong_to_their_connection() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let owner = connect(&broker.amqp_url()).await;
    let och = channel(&owner).await;
    let q = och
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let name = q.name().to_string();
    assert!(name.starts_with("amq.gen-"), "{name}");
    let other = connect(&broker.amqp_url()).await;
    for attempt in 0..3 {
        let ch = channel(&other).await;
        let e = match attempt {
            0 => ch
                .basic_consume(
                    name.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map(|_| ())
                .expect_err("405"),
            1 => ch
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map(|_| ())
                .expect_err("405"),
            _ => ch
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
                .map(|_| ())
                .expect_err("405"),
        };
        assert_eq!(reply_code(&e), Some(405), "attempt {attempt}");
    }
    // The owner closes: the queue is gone.
    owner.close(200, "bye".into()).await.expect("close");
    let ch = channel(&other).await;
    let mut gone = false;
    for _ in 0..50 {
        match ch
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
        {
            Err(e) => {
                assert_eq!(reply_code(&e), Some(404));
                gone = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(gone, "exclusive queue outlived its connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_vhost_are_refused() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let url = format!("amqp://guest:wrong@127.0.0.1:{}/%2f", broker.amqp_port);
    let e = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect_err("refused");
    assert_eq!(reply_code(&e), Some(403), "{e:?}");
    let url = format!("amqp://nobody:guest@127.0.0.1:{}/%2f", broker.amqp_port);
    let e = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect_err("refused");
    assert_eq!(reply_code(&e), Some(403), "{e:?}");
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{}/elsewhere",
        broker.amqp_port
    );
    let e = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect_err("refused");
    assert_eq!(reply_code(&e), Some(530), "{e:?}");
    // The right password works, and `amqp://host:port/` means the default vhost.
    let url = format!("amqp://guest:guest@127.0.0.1:{}/", broker.amqp_port);
    let c = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("connect");
    assert!(c.status().connected());
}

/// Reads until the peer closes (or 5 s pass).
fn read_all(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// The reply code of the first connection.close (10, 50) in `bytes`.
fn close_code(bytes: &[u8]) -> Option<u16> {
    let mut at = 0;
    while at + 7 <= bytes.len() {
        let size = u32::from_be_bytes([bytes[at + 3], bytes[at + 4], bytes[at + 5], bytes[at + 6]])
            as usize;
        let payload = bytes.get(at + 7..at + 7 + size)?;
        if bytes[at] == 1 && payload.len() >= 6 && payload[..4] == [0, 10, 0, 50] {
            return Some(u16::from_be_bytes([payload[4], payload[5]]));
        }
        at += 8 + size;
    }
    None
}

#[test]
fn bad_protocol_header_and_bad_frames() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let addr = ("127.0.0.1", broker.amqp_port);
    // A wrong header gets ours back, then the socket closes.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"AMQP\x00\x00\x08\x00").unwrap();
    assert_eq!(read_all(&mut s), b"AMQP\x00\x00\x09\x01");
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_all(&mut s), b"AMQP\x00\x00\x09\x01");

    // A frame of an unknown type: connection.close 501.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    s.write_all(&[9, 0, 0, 0, 0, 0, 0, 0xce]).unwrap();
    assert_eq!(close_code(&read_all(&mut s)), Some(501));
    // A bad frame-end octet: 501.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    s.write_all(&[1, 0, 0, 0, 0, 0, 4, 0, 10, 0, 11, 0x00])
        .unwrap();
    assert_eq!(close_code(&read_all(&mut s)), Some(501));
    // A content header where the handshake expects start-ok: 505.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    s.write_all(&[2, 0, 1, 0, 0, 0, 0, 0xce]).unwrap();
    assert_eq!(close_code(&read_all(&mut s)), Some(505));
}

//! The AMQP 0-9-1 close handshakes on a raw socket (frames encoded with amq-protocol), as
//! RabbitMQ 3.10 has them: crossing channel and connection closes, nothing sent after our
//! close but close-ok, the socket kept after close-ok until the client closes it (a repeated
//! close answered again), and the connection's other RabbitMQ behaviours clients' own suites
//! check (update-secret answered, `direct_reply_to` announced). Also, because only a raw
//! socket can leave a publish half-sent: a consume arriving behind one does not move the
//! connection to its queue's shard.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use amq_protocol::frame::{gen_frame, parse_frame, AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, channel as chan, connection as c, queue as qm, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::{data_dir, Broker};

/// A raw AMQP client: a socket and the bytes read but not yet parsed.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects and completes the handshake with the given heartbeat; returns the server
    /// properties of connection.start too.
    fn connect(port: u16, heartbeat: u16) -> (Raw, FieldTable) {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut raw = Raw { s, buf: Vec::new() };
        raw.s.write_all(b"AMQP\x00\x00\x09\x01").expect("header");
        let props = match raw.method_within(5) {
            Some((0, AMQPClass::Connection(c::AMQPMethod::Start(st)))) => st.server_properties,
            other => panic!("expected connection.start, got {other:?}"),
        };
        raw.send(&[method(
            0,
            AMQPClass::Connection(c::AMQPMethod::StartOk(c::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
        )]);
        assert!(matches!(
            raw.method_within(5),
            Some((0, AMQPClass::Connection(c::AMQPMethod::Tune(_))))
        ));
        raw.send(&[
            method(
                0,
                AMQPClass::Connection(c::AMQPMethod::TuneOk(c::TuneOk {
                    channel_max: 16,
                    frame_max: 131_072,
                    heartbeat,
                })),
            ),
            method(
                0,
                AMQPClass::Connection(c::AMQPMethod::Open(c::Open {
                    virtual_host: "/".into(),
                })),
            ),
        ]);
        assert!(matches!(
            raw.method_within(5),
            Some((0, AMQPClass::Connection(c::AMQPMethod::OpenOk(_))))
        ));
        (raw, props)
    }

    /// Writes the frames in one write (so the broker sees them together).
    fn send(&mut self, frames: &[AMQPFrame]) {
        let mut bytes = Vec::new();
        for f in frames {
            bytes.extend(encode(f));
        }
        self.s.write_all(&bytes).expect("write");
    }

    /// The next frame within `secs` (heartbeats skipped); None on EOF or timeout.
    fn frame_within(&mut self, secs: f64) -> Option<AMQPFrame> {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            if let Ok((rest, f)) = parse_frame(&self.buf[..]) {
                let used = self.buf.len() - rest.len();
                self.buf.drain(..used);
                if matches!(f, AMQPFrame::Heartbeat) {
                    continue;
                }
                return Some(f);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.s
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            let mut chunk = [0u8; 16384];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    /// The next method frame within `secs` (content frames skipped): (channel, method).
    fn method_within(&mut self, secs: u64) -> Option<(u16, AMQPClass)> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.frame_within(left.as_secs_f64())? {
                AMQPFrame::Method(ch, m) => return Some((ch, m)),
                _ => continue,
            }
        }
    }

    /// Reads frames until `want` accepts a method; panics with what came instead.
    fn expect(&mut self, what: &str, want: impl Fn(u16, &AMQPClass) -> bool) -> AMQPClass {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.frame_within(left.as_secs_f64()) {
                Some(AMQPFrame::Method(ch, m)) if want(ch, &m) => return m,
                Some(f) => seen.push(format!("{f:?}")),
                None => break,
            }
        }
        panic!("expected {what}; got {seen:?} then EOF or timeout");
    }

    /// True when the broker closes the socket within `secs`, skipping what it sends.
    fn closed_within(&mut self, secs: f64) -> bool {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            self.s
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            let mut chunk = [0u8; 16384];
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
    }
}

/// Frames in short: channel and method (or frame kind), without bodies.
fn describe(frames: &[AMQPFrame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match f {
            AMQPFrame::Method(ch, m) => {
                let m = format!("{m:?}");
                let end = m.find(" {").unwrap_or(m.len());
                format!("{ch}: {}", &m[..end])
            }
            AMQPFrame::Header(ch, _) => format!("{ch}: header"),
            AMQPFrame::Body(ch, b) => format!("{ch}: body of {}", b.len()),
            other => format!("{other:?}"),
        })
        .collect()
}

fn encode(f: &AMQPFrame) -> Vec<u8> {
    gen_frame(f)(Vec::new().into())
        .expect("encode")
        .into_inner()
        .0
}

fn method(channel: u16, m: AMQPClass) -> AMQPFrame {
    AMQPFrame::Method(channel, m)
}

fn channel_open(ch: u16) -> AMQPFrame {
    method(
        ch,
        AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {})),
    )
}

fn channel_close(ch: u16) -> AMQPFrame {
    method(
        ch,
        AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
}

fn channel_close_ok(ch: u16) -> AMQPFrame {
    method(
        ch,
        AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
    )
}

fn connection_close() -> AMQPFrame {
    method(
        0,
        AMQPClass::Connection(c::AMQPMethod::Close(c::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
}

fn connection_close_ok() -> AMQPFrame {
    method(
        0,
        AMQPClass::Connection(c::AMQPMethod::CloseOk(c::CloseOk {})),
    )
}

fn declare(ch: u16, queue: &str) -> AMQPFrame {
    method(
        ch,
        AMQPClass::Queue(qm::AMQPMethod::Declare(qm::Declare {
            queue: queue.into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
}

/// A passive queue.declare.
fn passive(ch: u16, queue: &str) -> AMQPFrame {
    let mut f = declare(ch, queue);
    if let AMQPFrame::Method(_, AMQPClass::Queue(qm::AMQPMethod::Declare(d))) = &mut f {
        d.passive = true;
    }
    f
}

/// queue.declare of a queue on the declaring connection's shard (`client-local`).
fn declare_local(ch: u16, queue: &str) -> AMQPFrame {
    let mut f = declare(ch, queue);
    if let AMQPFrame::Method(_, AMQPClass::Queue(qm::AMQPMethod::Declare(d))) = &mut f {
        d.arguments.insert(
            "x-queue-leader-locator".into(),
            AMQPValue::LongString("client-local".into()),
        );
    }
    f
}

/// basic.publish with its header and body.
fn publish(ch: u16, exchange: &str, key: &str, body: &[u8]) -> [AMQPFrame; 3] {
    [
        method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: key.into(),
                mandatory: false,
                immediate: false,
            })),
        ),
        AMQPFrame::Header(
            ch,
            AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: basic::AMQPProperties::default(),
            },
        ),
        AMQPFrame::Body(ch, body.to_vec()),
    ]
}

fn consume(ch: u16, queue: &str, no_ack: bool) -> AMQPFrame {
    method(
        ch,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue.into(),
            consumer_tag: "".into(),
            no_local: false,
            no_ack,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
}

fn is_channel_close(ch: u16, code: u16) -> impl Fn(u16, &AMQPClass) -> bool {
    move |c, m| {
        c == ch
            && matches!(m, AMQPClass::Channel(chan::AMQPMethod::Close(cl)) if cl.reply_code == code)
    }
}

fn is_channel_close_ok(ch: u16) -> impl Fn(u16, &AMQPClass) -> bool {
    move |c, m| c == ch && matches!(m, AMQPClass::Channel(chan::AMQPMethod::CloseOk(_)))
}

fn is_connection_close_ok(c: u16, m: &AMQPClass) -> bool {
    c == 0 && matches!(m, AMQPClass::Connection(c::AMQPMethod::CloseOk(_)))
}

/// Declares `queue` on channel `ch` and waits for declare-ok.
fn declare_ok(raw: &mut Raw, ch: u16, queue: &str) -> u32 {
    raw.send(&[declare(ch, queue)]);
    match raw.expect("queue.declare-ok", |c, m| {
        c == ch && matches!(m, AMQPClass::Queue(qm::AMQPMethod::DeclareOk(_)))
    }) {
        AMQPClass::Queue(qm::AMQPMethod::DeclareOk(ok)) => ok.message_count,
        _ => unreachable!(),
    }
}

/// Issue 16, item 1: the client closes its channel just as the broker closes it (publish to
/// a missing exchange, then channel.close at once). Each side answers the other's close;
/// the client's close-ok to the broker's close is not a 504 and the connection lives.
#[test]
fn crossing_channel_closes_leave_the_connection_open() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let (mut raw, _) = Raw::connect(broker.amqp_port, 0);
    raw.send(&[channel_open(1), channel_open(2)]);
    raw.expect("open-ok 1", |c, m| {
        c == 1 && matches!(m, AMQPClass::Channel(chan::AMQPMethod::OpenOk(_)))
    });
    raw.expect("open-ok 2", |c, m| {
        c == 2 && matches!(m, AMQPClass::Channel(chan::AMQPMethod::OpenOk(_)))
    });
    let mut frames = publish(1, "no-such-exchange", "k", b"x").to_vec();
    frames.push(channel_close(1));
    raw.send(&frames);
    // The broker's close (404) and its close-ok to ours, in that order.
    raw.expect("channel.close 404", is_channel_close(1, 404));
    raw.expect("channel.close-ok", is_channel_close_ok(1));
    // Our close-ok to its close completes the crossing.
    raw.send(&[channel_close_ok(1)]);
    // The connection and its other channel live; channel 1 can be opened again.
    assert_eq!(declare_ok(&mut raw, 2, "crossing-q"), 0);
    raw.send(&[channel_open(1)]);
    raw.expect("open-ok 1 again", |c, m| {
        c == 1 && matches!(m, AMQPClass::Channel(chan::AMQPMethod::OpenOk(_)))
    });
    assert_eq!(declare_ok(&mut raw, 1, "crossing-q"), 0);
}

/// Issue 16, item 1 for the connection: the client's connection.close crosses the broker's
/// (a connection error). The broker answers it with close-ok and still waits for the
/// client's close-ok to its own close before it closes the socket.
#[test]
fn crossing_connection_closes_complete_both_handshakes() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let (mut raw, _) = Raw::connect(broker.amqp_port, 0);
    // A second channel.open on channel 1 is a connection error (504), then our close.
    raw.send(&[channel_open(1), channel_open(1), connection_close()]);
    raw.expect("connection.close 504", |c, m| {
        c == 0
            && matches!(m, AMQPClass::Connection(c::AMQPMethod::Close(cl)) if cl.reply_code == 504)
    });
    raw.expect("connection.close-ok", is_connection_close_ok);
    assert!(
        !raw.closed_within(0.5),
        "the broker waits for our close-ok to its close"
    );
    raw.send(&[connection_close_ok()]);
    assert!(raw.closed_within(3.0), "our close-ok ends the connection");
}

/// Issue 16, item 2: connection.update-secret (OAuth token refresh, or a timer) is
/// answered with update-secret-ok for a password user, whatever the new secret, and the
/// connection carries on.
#[test]
fn update_secret_is_answered_and_the_connection_carries_on() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let (mut raw, _) = Raw::connect(broker.amqp_port, 0);
    for secret in ["a-fresh-oauth-token", "guest"] {
        raw.send(&[method(
            0,
            AMQPClass::Connection(c::AMQPMethod::UpdateSecret(c::UpdateSecret {
                new_secret: secret.into(),
                reason: "token refresh".into(),
            })),
        )]);
        raw.expect("update-secret-ok", |c, m| {
            c == 0 && matches!(m, AMQPClass::Connection(c::AMQPMethod::UpdateSecretOk(_)))
        });
    }
    raw.send(&[channel_open(1)]);
    raw.expect("open-ok", |c, m| {
        c == 1 && matches!(m, AMQPClass::Channel(chan::AMQPMethod::OpenOk(_)))
    });
    assert_eq!(declare_ok(&mut raw, 1, "after-update-secret"), 0);
}

/// Issue 16, item 3: after close-ok the socket is the client's to close. A second
/// connection.close (several threads closing at once) gets a second close-ok, not EOF;
/// a client that never closes is closed after the heartbeat interval (RabbitMQ's limit:
/// the heartbeat, at most 30 s).
#[test]
fn a_repeated_connection_close_gets_close_ok_again() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let (mut raw, _) = Raw::connect(broker.amqp_port, 0);
    raw.send(&[connection_close()]);
    raw.expect("first close-ok", is_connection_close_ok);
    assert!(!raw.closed_within(0.3), "the socket is kept after close-ok");
    raw.send(&[connection_close(), connection_close()]);
    raw.expect("second close-ok", is_connection_close_ok);
    raw.expect("third close-ok", is_connection_close_ok);
    // The client closes: the broker's side goes at once (a new connection still works).
    drop(raw);
    let (mut raw, _) = Raw::connect(broker.amqp_port, 0);
    raw.send(&[connection_close(), connection_close_ok()]);
    raw.expect("close-ok", is_connection_close_ok);
    assert!(raw.closed_within(3.0), "a close-ok from the client ends it");

    // With a 2 s heartbeat, a client that never closes loses the socket after ~2 s.
    let (mut raw, _) = Raw::connect(broker.amqp_port, 2);
    raw.send(&[connection_close()]);
    raw.expect("close-ok", is_connection_close_ok);
    let sent = Instant::now();
    assert!(
        raw.closed_within(6.0),
        "closed within the heartbeat interval"
    );
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "kept for the heartbeat interval, closed after {took:?}"
    );
}

/// Issue 16, item 4: `direct_reply_to` is among the announced capabilities, with
/// RabbitMQ's others.
#[test]
fn direct_reply_to_is_announced() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let (_raw, props) = Raw::connect(broker.amqp_port, 0);
    let Some(AMQPValue::FieldTable(caps)) = props.inner().get("capabilities") else {
        panic!("no capabilities in {props:?}");
    };
    for cap in [
        "direct_reply_to",
        "publisher_confirms",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
    ] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "{cap} in {caps:?}"
        );
    }
}

/// After the broker's channel.close, everything on that channel but close and close-ok is
/// ignored (methods and content alike, no connection error), and nothing but the close
/// comes from the broker on it; the client's close-ok frees the channel number.
#[test]
fn after_the_brokers_channel_close_only_close_ok_counts() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let (mut raw, _) = Raw::connect(broker.amqp_port, 0);
    raw.send(&[channel_open(1)]);
    raw.expect("open-ok", |c, m| {
        c == 1 && matches!(m, AMQPClass::Channel(chan::AMQPMethod::OpenOk(_)))
    });
    let mut frames = publish(1, "no-such-exchange", "k", b"x").to_vec();
    // What the client sent before it saw the close: more publishes (content included),
    // a declare, a stray body.
    frames.extend(publish(1, "", "ignored-q", b"y"));
    frames.push(declare(1, "ignored-q"));
    frames.push(AMQPFrame::Body(1, b"stray".to_vec()));
    raw.send(&frames);
    raw.expect("channel.close 404", is_channel_close(1, 404));
    // Nothing else on channel 1, and no connection.close.
    let mut after = Vec::new();
    while let Some(f) = raw.frame_within(0.5) {
        after.push(f);
    }
    assert!(
        after.is_empty(),
        "after channel.close: {:?}",
        describe(&after)
    );
    raw.send(&[channel_close_ok(1), channel_open(1)]);
    raw.expect("open-ok again", |c, m| {
        c == 1 && matches!(m, AMQPClass::Channel(chan::AMQPMethod::OpenOk(_)))
    });
    // The ignored declare and publish did not happen.
    raw.send(&[passive(1, "ignored-q")]);
    raw.expect("404 for the never-declared queue", is_channel_close(1, 404));
}

/// After the client's channel.close, the broker sends close-ok and nothing else on that
/// channel, even while deliveries to its consumer are on their way; the unacked ones go
/// back to the queue.
#[test]
fn after_the_clients_channel_close_only_close_ok_comes() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let (mut raw, _) = Raw::connect(broker.amqp_port, 0);
    raw.send(&[channel_open(1), channel_open(2)]);
    raw.expect("open-ok 2", |c, m| {
        c == 2 && matches!(m, AMQPClass::Channel(chan::AMQPMethod::OpenOk(_)))
    });
    declare_ok(&mut raw, 1, "busy");
    let body = vec![b'm'; 1024];
    let mut frames = Vec::new();
    for _ in 0..500 {
        frames.extend(publish(1, "", "busy", &body));
    }
    raw.send(&frames);
    // Consume on channel 2 and close it in the same write.
    raw.send(&[consume(2, "busy", false), channel_close(2)]);
    raw.expect("close-ok 2", is_channel_close_ok(2));
    let mut after = Vec::new();
    while let Some(f) = raw.frame_within(0.5) {
        if f.channel_id() == 2 {
            after.push(f);
        }
    }
    assert!(
        after.is_empty(),
        "on channel 2 after close-ok: {:?}",
        describe(&after)
    );
    // Every message is back in the queue (publishes are counted once routed).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = declare_ok(&mut raw, 1, "busy");
        if n == 500 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of 500 messages in the queue"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// After the broker's connection.close, nothing follows it but close-ok (to a crossing
/// close): messages published to its consumer's queue afterwards are not delivered to it
/// (its consumers are cancelled at once) and stay in the queue.
#[test]
fn after_the_brokers_connection_close_nothing_else_comes() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let (mut raw, _) = Raw::connect(broker.amqp_port, 0);
    raw.send(&[channel_open(1)]);
    declare_ok(&mut raw, 1, "flowing");
    raw.send(&[consume(1, "flowing", false)]);
    raw.expect("consume-ok", |c, m| {
        c == 1 && matches!(m, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))
    });
    // A connection error (a second channel.open): connection.close 504.
    raw.send(&[channel_open(1)]);
    raw.expect("connection.close 504", |c, m| {
        c == 0
            && matches!(m, AMQPClass::Connection(c::AMQPMethod::Close(cl)) if cl.reply_code == 504)
    });
    // Another client publishes to the queue meanwhile.
    let (mut other, _) = Raw::connect(broker.amqp_port, 0);
    other.send(&[channel_open(1)]);
    let body = vec![b'm'; 100];
    let mut frames = Vec::new();
    for _ in 0..20 {
        frames.extend(publish(1, "", "flowing", &body));
    }
    other.send(&frames);
    assert!(declare_ok(&mut other, 1, "flowing") <= 20);
    // A crossing close from the client: close-ok, and nothing else.
    raw.send(&[connection_close()]);
    let mut after = Vec::new();
    while let Some(f) = raw.frame_within(0.5) {
        after.push(f);
    }
    assert!(
        matches!(
            after.as_slice(),
            [AMQPFrame::Method(
                0,
                AMQPClass::Connection(c::AMQPMethod::CloseOk(_))
            )]
        ),
        "after connection.close: {:?}",
        describe(&after)
    );
    raw.send(&[connection_close_ok()]);
    assert!(raw.closed_within(3.0));
    // All 20 are in the queue.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = declare_ok(&mut other, 1, "flowing");
        if n == 20 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} of 20 messages in the queue");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// After the broker's channel.close, no publisher confirm follows on that channel: a
/// persistent publish waiting for its fsync when a channel error closes the channel is
/// never acked (as on RabbitMQ, whose channel is gone).
#[test]
fn no_confirm_follows_the_brokers_channel_close() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let (mut raw, _) = Raw::connect(broker.amqp_port, 0);
    raw.send(&[channel_open(1)]);
    raw.send(&[method(
        1,
        AMQPClass::Queue(qm::AMQPMethod::Declare(qm::Declare {
            queue: "durable-q".into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )]);
    raw.expect("declare-ok", |c, m| {
        c == 1 && matches!(m, AMQPClass::Queue(qm::AMQPMethod::DeclareOk(_)))
    });
    raw.send(&[method(
        1,
        AMQPClass::Confirm(amq_protocol::protocol::confirm::AMQPMethod::Select(
            amq_protocol::protocol::confirm::Select { nowait: false },
        )),
    )]);
    raw.expect("select-ok", |c, m| {
        c == 1
            && matches!(
                m,
                AMQPClass::Confirm(amq_protocol::protocol::confirm::AMQPMethod::SelectOk(_))
            )
    });
    // Persistent publishes (confirmed after their fsync), then one to a missing exchange.
    let body = vec![b'p'; 4096];
    let mut frames = Vec::new();
    for _ in 0..50 {
        let mut p = publish(1, "", "durable-q", &body);
        if let AMQPFrame::Header(_, h) = &mut p[1] {
            h.properties = basic::AMQPProperties::default().with_delivery_mode(2);
        }
        frames.extend(p);
    }
    frames.extend(publish(1, "no-such-exchange", "k", b"x"));
    raw.send(&frames);
    let mut before = Vec::new();
    loop {
        match raw.frame_within(5.0) {
            Some(AMQPFrame::Method(1, AMQPClass::Channel(chan::AMQPMethod::Close(cl)))) => {
                assert_eq!(cl.reply_code, 404);
                break;
            }
            Some(f) => before.push(f),
            None => panic!("no channel.close; got {:?}", describe(&before)),
        }
    }
    let mut after = Vec::new();
    while let Some(f) = raw.frame_within(0.5) {
        after.push(f);
    }
    assert!(
        after.is_empty(),
        "after channel.close: {:?}",
        describe(&after)
    );
    // The connection lives on.
    raw.send(&[
        channel_close_ok(1),
        channel_open(2),
        passive(2, "durable-q"),
    ]);
    raw.expect("declare-ok", |c, m| {
        c == 2 && matches!(m, AMQPClass::Queue(qm::AMQPMethod::DeclareOk(_)))
    });
}

/// A no-ack consume of `queue` on channel `ch`: its tag, and the shard the tag names (the
/// shard that answered: `amq.ctag-s<shard>-…`).
fn consume_ok(raw: &mut Raw, ch: u16, queue: &str) -> (String, usize) {
    raw.send(&[consume(ch, queue, true)]);
    let AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)) = raw.expect("consume-ok", |c, m| {
        c == ch && matches!(m, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))
    }) else {
        unreachable!()
    };
    let tag = ok.consumer_tag.to_string();
    let shard = common::amqp::shard_of_tag(&tag);
    (tag, shard)
}

fn cancel_ok(raw: &mut Raw, ch: u16, tag: &str) {
    raw.send(&[method(
        ch,
        AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: tag.into(),
            nowait: false,
        })),
    )]);
    raw.expect("cancel-ok", |c, m| {
        c == ch && matches!(m, AMQPClass::Basic(basic::AMQPMethod::CancelOk(_)))
    });
}

/// The shard serving `raw`'s connection: a consume of a probe queue on its own shard,
/// cancelled at once (a queue elsewhere would draw a connection with no consumer there).
fn shard_of_raw(raw: &mut Raw, ch: u16, probe: &str) -> usize {
    raw.send(&[declare_local(ch, probe)]);
    raw.expect("declare-ok", |c, m| {
        c == ch && matches!(m, AMQPClass::Queue(qm::AMQPMethod::DeclareOk(_)))
    });
    let (tag, shard) = consume_ok(raw, ch, probe);
    cancel_ok(raw, ch, &tag);
    shard
}

/// A connection with no consumer moves to its queue's shard before its first basic.consume,
/// but not while a publish is half-read on another of its channels: the move would wait for
/// content frames the read loop no longer reads, be refused, and hold the connection's
/// moves back for 10 s. The consume is answered where the connection is, the publish
/// completes and is delivered, and once the publish is whole the connection's next consume
/// moves it.
#[test]
fn a_consume_behind_a_half_read_publish_stays_and_leaves_moves_free() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let (mut raw, _) = Raw::connect(broker.amqp_port, 0);
    raw.send(&[channel_open(1), channel_open(2), channel_open(3)]);
    for ch in 1..=3 {
        raw.expect("open-ok", |c, m| {
            c == ch && matches!(m, AMQPClass::Channel(chan::AMQPMethod::OpenOk(_)))
        });
    }
    let here = shard_of_raw(&mut raw, 3, "probe");
    // A connection on the other shard declares the queue there.
    for i in 0..64 {
        let (mut other, _) = Raw::connect(broker.amqp_port, 0);
        other.send(&[channel_open(1)]);
        if shard_of_raw(&mut other, 1, &format!("probe-{i}")) != here {
            other.send(&[declare_local(1, "far")]);
            other.expect("declare-ok far", |c, m| {
                c == 1 && matches!(m, AMQPClass::Queue(qm::AMQPMethod::DeclareOk(_)))
            });
            break;
        }
        assert!(i < 63, "no connection landed on the other shard");
    }
    // Channel 1: a publish to `far` whose body has not been sent; then, on channel 2, a
    // consume of `far`.
    let [publish_method, header, body] = publish(1, "", "far", b"late");
    raw.send(&[publish_method, header]);
    let (tag, answered) = consume_ok(&mut raw, 2, "far");
    assert_eq!(
        answered, here,
        "the consume was answered where the connection is"
    );
    raw.send(&[body]);
    match raw.frame_within(5.0) {
        Some(AMQPFrame::Method(2, AMQPClass::Basic(basic::AMQPMethod::Deliver(_)))) => {}
        other => panic!("expected the publish's delivery, got {other:?}"),
    }
    let mut got = Vec::new();
    while got.len() < 4 {
        match raw.frame_within(5.0) {
            Some(AMQPFrame::Header(2, _)) => {}
            Some(AMQPFrame::Body(2, b)) => got.extend(b),
            other => panic!("expected the delivery's content, got {other:?}"),
        }
    }
    assert_eq!(got, b"late", "the half-read publish completed");
    cancel_ok(&mut raw, 2, &tag);
    // No refused move holds the connection back: its next consume moves it.
    let (_, answered) = consume_ok(&mut raw, 3, "far");
    assert_ne!(
        answered, here,
        "the next consume was answered on the queue's shard"
    );
    let moved = broker.metric_total("portask_connections_moved_total", &[("protocol", "amqp")]);
    assert_eq!(
        moved, 1.0,
        "the connection moved once, at its second consume"
    );
}

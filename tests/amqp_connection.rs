//! The connection lifecycle on a raw socket (frames encoded with amq-protocol): the
//! handshake, server heartbeats, closing a silent peer after two heartbeat intervals,
//! and connection.close 320 CONNECTION_FORCED when the broker is stopped.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame};
use amq_protocol::protocol::{connection as c, AMQPClass};
use common::{data_dir, Broker};

fn send(s: &mut TcpStream, f: AMQPFrame) {
    let bytes = gen_frame(&f)(Vec::new().into())
        .expect("encode")
        .into_inner()
        .0;
    s.write_all(&bytes).expect("write");
}

/// Reads frames until `want` accepts one (or the deadline / EOF); returns it.
fn read_until(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    secs: u64,
    want: impl Fn(&AMQPFrame) -> bool,
) -> Option<AMQPFrame> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    loop {
        while let Ok((rest, f)) = parse_frame(&buf[..]) {
            let used = buf.len() - rest.len();
            buf.drain(..used);
            if want(&f) {
                return Some(f);
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return None,
        }
    }
}

fn method(f: &AMQPFrame) -> Option<&AMQPClass> {
    match f {
        AMQPFrame::Method(_, m) => Some(m),
        _ => None,
    }
}

/// Connects and completes the handshake with the given heartbeat (frame_max 8192).
fn handshake(port: u16, heartbeat: u16) -> (TcpStream, Vec<u8>) {
    handshake_with(port, heartbeat, 8192)
}

fn handshake_with(port: u16, heartbeat: u16, frame_max: u32) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    let mut buf = Vec::new();
    let start = read_until(&mut s, &mut buf, 5, |f| {
        matches!(
            method(f),
            Some(AMQPClass::Connection(c::AMQPMethod::Start(_)))
        )
    })
    .expect("connection.start");
    if let Some(AMQPClass::Connection(c::AMQPMethod::Start(st))) = method(&start) {
        let caps = st.server_properties.inner().get("capabilities");
        assert!(
            format!("{caps:?}").contains("publisher_confirms"),
            "{caps:?}"
        );
        assert!(st.mechanisms.to_string().contains("AMQPLAIN"));
    }
    send(
        &mut s,
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(c::AMQPMethod::StartOk(c::StartOk {
                client_properties: Default::default(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
        ),
    );
    read_until(&mut s, &mut buf, 5, |f| {
        matches!(
            method(f),
            Some(AMQPClass::Connection(c::AMQPMethod::Tune(_)))
        )
    })
    .expect("tune");
    send(
        &mut s,
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(c::AMQPMethod::TuneOk(c::TuneOk {
                channel_max: 16,
                frame_max,
                heartbeat,
            })),
        ),
    );
    send(
        &mut s,
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(c::AMQPMethod::Open(c::Open {
                virtual_host: "/".into(),
            })),
        ),
    );
    read_until(&mut s, &mut buf, 5, |f| {
        matches!(
            method(f),
            Some(AMQPClass::Connection(c::AMQPMethod::OpenOk(_)))
        )
    })
    .expect("open-ok");
    (s, buf)
}

#[test]
fn heartbeats_are_sent_and_a_silent_peer_is_closed() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let (mut s, mut buf) = handshake(broker.amqp_port, 1);
    // The broker sends heartbeats while we say nothing...
    assert!(read_until(&mut s, &mut buf, 3, |f| matches!(f, AMQPFrame::Heartbeat)).is_some());
    // ...and closes the socket once we have been silent for two intervals.
    let started = Instant::now();
    let closed = loop {
        let mut chunk = [0u8; 256];
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break true,
        }
        if started.elapsed() > Duration::from_secs(10) {
            break false;
        }
    };
    assert!(closed, "a silent peer was not closed");

    // A peer that keeps sending heartbeats stays connected.
    let (mut s, mut buf) = handshake(broker.amqp_port, 1);
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        send(&mut s, AMQPFrame::Heartbeat);
        std::thread::sleep(Duration::from_millis(300));
    }
    send(
        &mut s,
        AMQPFrame::Method(
            1,
            AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Open(
                Default::default(),
            )),
        ),
    );
    assert!(
        read_until(&mut s, &mut buf, 5, |f| matches!(
            f,
            AMQPFrame::Method(1, _)
        ))
        .is_some(),
        "connection was closed"
    );
}

#[test]
fn stopping_the_broker_closes_connections_with_320() {
    let (_d, data) = data_dir();
    let mut broker = Broker::start(&data, &[]);
    let (mut s, mut buf) = handshake(broker.amqp_port, 0);
    // SIGTERM (and wait for the exit) on another thread; read the close meanwhile.
    std::thread::scope(|scope| {
        let stopper = scope.spawn(|| broker.terminate());
        let close = read_until(&mut s, &mut buf, 10, |f| {
            matches!(
                method(f),
                Some(AMQPClass::Connection(c::AMQPMethod::Close(_)))
            )
        })
        .expect("connection.close");
        match method(&close) {
            Some(AMQPClass::Connection(c::AMQPMethod::Close(cl))) => assert_eq!(cl.reply_code, 320),
            other => panic!("{other:?}"),
        }
        send(
            &mut s,
            AMQPFrame::Method(
                0,
                AMQPClass::Connection(c::AMQPMethod::CloseOk(c::CloseOk {})),
            ),
        );
        assert!(stopper.join().expect("stopper").success());
    });
}

/// Sends raw frame bytes after a handshake and returns the connection.close reply code.
fn close_code_after(port: u16, frames: &[Vec<u8>]) -> Option<u16> {
    close_code_with(port, 8192, frames)
}

/// `close_code_after` with another frame_max.
fn close_code_with(port: u16, frame_max: u32, frames: &[Vec<u8>]) -> Option<u16> {
    let (mut s, mut buf) = handshake_with(port, 0, frame_max);
    for f in frames {
        s.write_all(f).unwrap();
    }
    let close = read_until(&mut s, &mut buf, 5, |f| {
        matches!(
            method(f),
            Some(AMQPClass::Connection(c::AMQPMethod::Close(_)))
        )
    })?;
    match method(&close) {
        Some(AMQPClass::Connection(c::AMQPMethod::Close(cl))) => Some(cl.reply_code),
        _ => None,
    }
}

fn encode(f: AMQPFrame) -> Vec<u8> {
    gen_frame(&f)(Vec::new().into())
        .expect("encode")
        .into_inner()
        .0
}

/// A method frame with a raw payload.
fn raw_method(channel: u16, payload: &[u8]) -> Vec<u8> {
    raw_frame(1, channel, payload)
}

#[test]
fn connection_errors_carry_their_reply_codes() {
    use amq_protocol::protocol::{channel as chan, exchange as ex};
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let port = broker.amqp_port;
    let open = encode(AMQPFrame::Method(
        1,
        AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {})),
    ));
    // A method on a channel that was never opened: 504 CHANNEL_ERROR.
    let declare = |kind: &str| {
        encode(AMQPFrame::Method(
            1,
            AMQPClass::Exchange(ex::AMQPMethod::Declare(ex::Declare {
                exchange: "e".into(),
                kind: kind.into(),
                ..Default::default()
            })),
        ))
    };
    assert_eq!(close_code_after(port, &[declare("direct")]), Some(504));
    // An unknown exchange type: 503 COMMAND_INVALID.
    assert_eq!(
        close_code_after(port, &[open.clone(), declare("x-nonsense")]),
        Some(503)
    );
    // An unknown class: 540 NOT_IMPLEMENTED.
    assert_eq!(
        close_code_after(port, &[open.clone(), raw_method(1, &[0, 99, 0, 10])]),
        Some(540)
    );
    // A known method with truncated arguments: 502 SYNTAX_ERROR.
    assert_eq!(
        close_code_after(port, &[open.clone(), raw_method(1, &[0, 40, 0, 10, 0])]),
        Some(502)
    );
    // A content body with no publish before it: 505 UNEXPECTED_FRAME.
    let body = vec![3, 0, 1, 0, 0, 0, 1, b'x', 0xce];
    assert_eq!(close_code_after(port, &[open.clone(), body]), Some(505));
    // A frame larger than the negotiated frame_max (8192): 501 FRAME_ERROR.
    let mut big = vec![3, 0, 1];
    big.extend_from_slice(&(20_000u32).to_be_bytes());
    big.extend(std::iter::repeat_n(0u8, 20_000));
    big.push(0xce);
    assert_eq!(close_code_after(port, &[open.clone(), big]), Some(501));
    // Reusing a consumer tag on a channel: 530 NOT_ALLOWED.
    use amq_protocol::protocol::{basic, queue as qm};
    let q = encode(AMQPFrame::Method(
        1,
        AMQPClass::Queue(qm::AMQPMethod::Declare(qm::Declare {
            queue: "tagq".into(),
            ..Default::default()
        })),
    ));
    let consume = encode(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "tagq".into(),
            consumer_tag: "same".into(),
            ..Default::default()
        })),
    ));
    assert_eq!(
        close_code_after(port, &[open.clone(), q, consume.clone(), consume]),
        Some(530)
    );
    // basic.publish with immediate=true: 540, as RabbitMQ (which dropped it in 3.0).
    let immediate = encode(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            routing_key: "tagq".into(),
            immediate: true,
            ..Default::default()
        })),
    ));
    assert_eq!(
        close_code_after(port, &[open.clone(), immediate]),
        Some(540)
    );
    // connection.update-secret (RabbitMQ's credential refresh): answered with
    // update-secret-ok, whatever the secret, as RabbitMQ 3.10 does for password users
    // (issue 16; tests/amqp_close.rs has the rest).
    let update = |secret: &str| {
        encode(AMQPFrame::Method(
            0,
            AMQPClass::Connection(c::AMQPMethod::UpdateSecret(c::UpdateSecret {
                new_secret: secret.into(),
                reason: "refresh".into(),
            })),
        ))
    };
    for secret in ["guest", "not-the-password"] {
        let (mut s, mut buf) = handshake(port, 0);
        s.write_all(&update(secret)).unwrap();
        let ok = read_until(&mut s, &mut buf, 5, |f| {
            matches!(
                method(f),
                Some(AMQPClass::Connection(c::AMQPMethod::UpdateSecretOk(_)))
                    | Some(AMQPClass::Connection(c::AMQPMethod::Close(_)))
            )
        });
        assert!(
            matches!(
                ok.as_ref().and_then(method),
                Some(AMQPClass::Connection(c::AMQPMethod::UpdateSecretOk(_)))
            ),
            "update-secret answered with {ok:?}"
        );
    }
    // access.request (old clients ask for a ticket first) is answered, as RabbitMQ does.
    use amq_protocol::protocol::access;
    let (mut s, mut buf) = handshake(port, 0);
    s.write_all(&open).unwrap();
    s.write_all(&encode(AMQPFrame::Method(
        1,
        AMQPClass::Access(access::AMQPMethod::Request(access::Request {
            realm: "/data".into(),
            exclusive: false,
            passive: true,
            active: true,
            write: true,
            read: true,
        })),
    )))
    .unwrap();
    let ok = read_until(&mut s, &mut buf, 5, |f| {
        matches!(
            method(f),
            Some(AMQPClass::Access(access::AMQPMethod::RequestOk(_)))
                | Some(AMQPClass::Connection(c::AMQPMethod::Close(_)))
        )
    });
    assert!(
        matches!(
            ok.as_ref().and_then(method),
            Some(AMQPClass::Access(access::AMQPMethod::RequestOk(_)))
        ),
        "access.request answered with {ok:?}"
    );
}

/// A field table nested `depth` levels deep (with its length prefix).
fn nested_table(depth: usize) -> Vec<u8> {
    let mut inner: Vec<u8> = Vec::new();
    for _ in 1..depth {
        let mut level = vec![1, b'k', b'F'];
        level.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        level.extend_from_slice(&inner);
        inner = level;
    }
    let mut out = (inner.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&inner);
    out
}

/// A frame of any type with a raw payload.
fn raw_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(0xce);
    out
}

/// Tables nested thousands deep (which would overflow a recursive parser's stack and take
/// the whole broker down) are refused with the connection's error, before login too, and
/// odd frames get the spec's codes; the broker keeps serving a real client throughout.
#[test]
fn deep_tables_and_odd_frames_close_only_their_connection() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let port = broker.amqp_port;
    let deep = nested_table(10_000);

    // connection.start-ok whose client-properties nest 10 000 deep: 502, before login.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, 5, |f| {
        matches!(
            method(f),
            Some(AMQPClass::Connection(c::AMQPMethod::Start(_)))
        )
    })
    .expect("connection.start");
    let mut start_ok = vec![0, 10, 0, 11];
    start_ok.extend_from_slice(&deep);
    start_ok.extend_from_slice(b"\x05PLAIN\x00\x00\x00\x0c\x00guest\x00guest\x05en_US");
    s.write_all(&raw_frame(1, 0, &start_ok)).unwrap();
    let close = read_until(&mut s, &mut buf, 5, |f| {
        matches!(
            method(f),
            Some(AMQPClass::Connection(c::AMQPMethod::Close(_)))
        )
    });
    match close.as_ref().and_then(method) {
        Some(AMQPClass::Connection(c::AMQPMethod::Close(cl))) => assert_eq!(cl.reply_code, 502),
        other => panic!("start-ok with deep client-properties answered {other:?}"),
    }

    let open = raw_frame(1, 1, &[0, 20, 0, 10, 0]);
    // queue.declare whose arguments nest 10 000 deep: 502.
    let mut declare = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
    declare.extend_from_slice(&deep);
    assert_eq!(
        close_code_with(port, 131_072, &[open.clone(), raw_frame(1, 1, &declare)]),
        Some(502)
    );
    // A message whose headers nest 10 000 deep: 501, malformed properties.
    let publish = raw_frame(1, 1, &[0, 60, 0, 40, 0, 0, 0, 1, b'q', 0]);
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&1u64.to_be_bytes());
    header.extend_from_slice(&[0x20, 0x00]); // property flags: headers only
    header.extend_from_slice(&deep);
    assert_eq!(
        close_code_with(
            port,
            131_072,
            &[
                open.clone(),
                publish,
                raw_frame(2, 1, &header),
                raw_frame(3, 1, b"x")
            ]
        ),
        Some(501)
    );
    // Heartbeats belong on channel 0 with no payload: as RabbitMQ, 505 on another
    // channel, 501 with a payload.
    assert_eq!(close_code_after(port, &[raw_frame(8, 1, &[])]), Some(505));
    assert_eq!(
        close_code_after(port, &[raw_frame(8, 0, b"abcd")]),
        Some(501)
    );
    // A method frame too short to name its method: 501; an unknown method of a known
    // class: 540.
    assert_eq!(
        close_code_after(port, &[raw_frame(1, 0, &[0, 10])]),
        Some(501)
    );
    assert_eq!(
        close_code_after(port, &[raw_frame(1, 0, &[0, 10, 0, 12])]),
        Some(540)
    );

    // The broker is still there for everyone else.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use common::amqp::*;
        let conn = connect(&broker.amqp_url()).await;
        let ch = channel(&conn).await;
        declare(&ch, "alive", Default::default()).await;
        publish(&ch, "", "alive", b"ok").await;
        let m = get_within(&ch, "alive", 5).await.expect("served");
        assert_eq!(m.delivery.data, b"ok");
    });
}

/// A client that pipelines requests but never reads its socket: the broker stops handling
/// its requests once `limits.connection_inflight_bytes` of replies wait unwritten, so its
/// memory stays bounded, and it keeps serving everyone else.
#[test]
fn a_client_that_never_reads_does_not_grow_the_broker() {
    use amq_protocol::protocol::{basic, channel as chan, queue as qm};
    let (_d, data) = data_dir();
    let broker = Broker::start(
        &data,
        &[("PORTASK_LIMITS__CONNECTION_INFLIGHT_BYTES", "4194304")],
    );
    let port = broker.amqp_port;
    let (mut s, _buf) = handshake_with(port, 0, 131_072);
    let method = |m: AMQPClass| encode(AMQPFrame::Method(1, m));
    let mut setup = method(AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {})));
    setup.extend(method(AMQPClass::Queue(qm::AMQPMethod::Declare(
        qm::Declare {
            queue: "never-read".into(),
            ..Default::default()
        },
    ))));
    // One 512 KiB message, in body frames under frame_max.
    let size = 512 * 1024usize;
    setup.extend(method(AMQPClass::Basic(basic::AMQPMethod::Publish(
        basic::Publish {
            routing_key: "never-read".into(),
            ..Default::default()
        },
    ))));
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&(size as u64).to_be_bytes());
    header.extend_from_slice(&[0, 0]);
    setup.extend(raw_frame(2, 1, &header));
    for chunk in vec![7u8; size].chunks(100_000) {
        setup.extend(raw_frame(3, 1, chunk));
    }
    s.write_all(&setup).unwrap();
    let before = broker.rss_bytes();
    // 2 000 gets, each answered with the 512 KiB message, each rejected back: 1 GiB of
    // replies if the broker kept producing them.
    let mut requests = Vec::new();
    for tag in 1..=2000u64 {
        requests.extend(method(AMQPClass::Basic(basic::AMQPMethod::Get(
            basic::Get {
                queue: "never-read".into(),
                no_ack: false,
            },
        ))));
        requests.extend(method(AMQPClass::Basic(basic::AMQPMethod::Reject(
            basic::Reject {
                delivery_tag: tag,
                requeue: true,
            },
        ))));
    }
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(&requests);
    std::thread::sleep(Duration::from_secs(3));
    let grown = broker.rss_bytes().saturating_sub(before);
    assert!(
        grown < 256 << 20,
        "broker grew {} MiB for a client that does not read",
        grown >> 20
    );
    // Others are served meanwhile.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use common::amqp::*;
        let conn = connect(&broker.amqp_url()).await;
        let ch = channel(&conn).await;
        declare(&ch, "others", Default::default()).await;
        publish(&ch, "", "others", b"ok").await;
        let m = get_within(&ch, "others", 5).await.expect("served");
        assert_eq!(m.delivery.data, b"ok");
    });
    drop(s);
}

/// Idle connections are cheap: an open, logged-in connection that sends nothing keeps
/// small buffers (they grow only for a peer that sends or receives in bulk). Each used to
/// hold three 64 KiB buffers, ~155 KiB of resident memory.
#[test]
fn idle_connections_cost_little_memory() {
    let (_d, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let port = broker.amqp_port;
    // One connection first, so the shards' first-connection allocations are not counted.
    let warm = handshake(port, 0);
    std::thread::sleep(Duration::from_millis(200));
    let base = broker.rss_bytes();
    const N: u64 = 200;
    let conns: Vec<_> = (0..N).map(|_| handshake(port, 0)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let per_conn = broker.rss_bytes().saturating_sub(base) / N;
    assert!(
        per_conn < 80 << 10,
        "an idle AMQP connection costs {} KiB",
        per_conn >> 10
    );
    // They all still work.
    for (mut s, mut buf) in conns.into_iter().chain([warm]) {
        send(
            &mut s,
            AMQPFrame::Method(
                0,
                AMQPClass::Connection(c::AMQPMethod::Close(c::Close {
                    reply_code: 200,
                    reply_text: "bye".into(),
                    class_id: 0,
                    method_id: 0,
                })),
            ),
        );
        read_until(&mut s, &mut buf, 5, |f| {
            matches!(
                method(f),
                Some(AMQPClass::Connection(c::AMQPMethod::CloseOk(_)))
            )
        })
        .expect("close-ok");
    }
}

//! Idle connections by the thousand, over raw sockets speaking the real protocols (so the
//! client costs a socket and nothing else): an AMQP connection through the whole handshake
//! (PLAIN as guest, heartbeat off) with channel 1 open, a Kafka connection after ApiVersions
//! and Metadata; each from a chosen 127.0.0.x source address. Also the process's open-file
//! limit raised to its hard limit, and the broker's resident memory.
//!
//! `tests/connection_hygiene.rs` and `benches/conns.rs` share it (the bench with `#[path]`);
//! it depends on std, socket2 and libc only.
#![allow(dead_code)]

use std::io::{Error, ErrorKind, Read, Result, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Raises this process's soft open-file limit to its hard limit; returns the new limit.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
    }
    r.rlim_cur
}

/// The `i`-th of `n` loopback source addresses, 127.0.0.2 onwards.
pub fn source(i: usize, n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % n.clamp(1, 250)) as u8)
}

/// A TCP connection to 127.0.0.1:`port` from `from` (an ephemeral port on it).
pub fn connect_from(from: Ipv4Addr, port: u16) -> Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((from, 0)).into())?;
    s.connect(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())?;
    let s: TcpStream = s.into();
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// An AMQP frame: type, channel, payload, frame-end.
fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xce);
    f
}

fn method(channel: u16, class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut p = class.to_be_bytes().to_vec();
    p.extend_from_slice(&method.to_be_bytes());
    p.extend_from_slice(args);
    frame(1, channel, &p)
}

fn short(s: &str) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

fn long(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

/// Reads one AMQP frame: (type, channel, payload).
pub fn read_amqp_frame(s: &mut TcpStream) -> Result<(u8, u16, Vec<u8>)> {
    let mut head = [0u8; 7];
    s.read_exact(&mut head)?;
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    if size > 1 << 20 {
        return Err(Error::new(ErrorKind::InvalidData, "frame too large"));
    }
    let mut payload = vec![0u8; size + 1];
    s.read_exact(&mut payload)?;
    if payload.pop() != Some(0xce) {
        return Err(Error::new(ErrorKind::InvalidData, "bad frame end"));
    }
    Ok((head[0], u16::from_be_bytes([head[1], head[2]]), payload))
}

/// Reads frames until a method (class, method) arrives on `channel` (skipping heartbeats).
pub fn expect_method(s: &mut TcpStream, channel: u16, class: u16, id: u16) -> Result<Vec<u8>> {
    loop {
        let (kind, ch, payload) = read_amqp_frame(s)?;
        if kind == 8 {
            continue;
        }
        if kind == 1 && ch == channel && payload.len() >= 4 && payload[..4] == ids(class, id) {
            return Ok(payload);
        }
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!(
                "expected {class}.{id} on channel {channel}, got type {kind} on {ch}: {payload:?}"
            ),
        ));
    }
}

fn ids(class: u16, method: u16) -> [u8; 4] {
    let (c, m) = (class.to_be_bytes(), method.to_be_bytes());
    [c[0], c[1], m[0], m[1]]
}

/// channel.open on `channel`, answered with open-ok.
pub fn amqp_open_channel(s: &mut TcpStream, channel: u16) -> Result<()> {
    s.write_all(&method(channel, 20, 10, &short("")))?;
    expect_method(s, channel, 20, 11).map(|_| ())
}

/// An AMQP connection from `from` through connection.open-ok (guest/guest, heartbeat 0,
/// as an idle client that does not want heartbeats), with channel 1 open.
pub fn amqp_idle(from: Ipv4Addr, port: u16) -> Result<TcpStream> {
    let mut s = connect_from(from, port)?;
    s.write_all(b"AMQP\x00\x00\x09\x01")?;
    expect_method(&mut s, 0, 10, 10)?; // connection.start
    let mut start_ok = 0u32.to_be_bytes().to_vec(); // client properties: empty table
    start_ok.extend(short("PLAIN"));
    start_ok.extend(long(b"\0guest\0guest"));
    start_ok.extend(short("en_US"));
    s.write_all(&method(0, 10, 11, &start_ok))?;
    expect_method(&mut s, 0, 10, 30)?; // connection.tune
    let mut tune_ok = 2047u16.to_be_bytes().to_vec();
    tune_ok.extend_from_slice(&131_072u32.to_be_bytes());
    tune_ok.extend_from_slice(&0u16.to_be_bytes());
    let mut open = short("/");
    open.extend(short(""));
    open.push(0);
    let mut both = method(0, 10, 31, &tune_ok);
    both.extend(method(0, 10, 40, &open));
    s.write_all(&both)?;
    expect_method(&mut s, 0, 10, 41)?; // connection.open-ok
    amqp_open_channel(&mut s, 1)?;
    Ok(s)
}

/// A Kafka request frame: size, api key, version, correlation id, client id, `body`.
fn kafka_request(api: i16, version: i16, correlation: i32, body: &[u8]) -> Vec<u8> {
    let mut r = api.to_be_bytes().to_vec();
    r.extend_from_slice(&version.to_be_bytes());
    r.extend_from_slice(&correlation.to_be_bytes());
    r.extend_from_slice(&4i16.to_be_bytes());
    r.extend_from_slice(b"idle");
    r.extend_from_slice(body);
    let mut f = (r.len() as u32).to_be_bytes().to_vec();
    f.extend(r);
    f
}

/// Reads one Kafka response; returns its correlation id.
pub fn read_kafka_response(s: &mut TcpStream) -> Result<i32> {
    let mut size = [0u8; 4];
    s.read_exact(&mut size)?;
    let size = u32::from_be_bytes(size) as usize;
    if !(4..=16 << 20).contains(&size) {
        return Err(Error::new(ErrorKind::InvalidData, "bad response size"));
    }
    let mut body = vec![0u8; size];
    s.read_exact(&mut body)?;
    Ok(i32::from_be_bytes([body[0], body[1], body[2], body[3]]))
}

/// ApiVersions v0 and Metadata v1 for every topic, pipelined, both answered in order.
pub fn kafka_round_trip(s: &mut TcpStream) -> Result<()> {
    let mut both = kafka_request(18, 0, 1, &[]);
    both.extend(kafka_request(3, 1, 2, &(-1i32).to_be_bytes()));
    s.write_all(&both)?;
    for want in [1, 2] {
        let got = read_kafka_response(s)?;
        if got != want {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!("correlation {got}, expected {want}"),
            ));
        }
    }
    Ok(())
}

/// A Kafka connection from `from` that has had ApiVersions and Metadata answered.
pub fn kafka_idle(from: Ipv4Addr, port: u16) -> Result<TcpStream> {
    let mut s = connect_from(from, port)?;
    kafka_round_trip(&mut s)?;
    Ok(s)
}

/// Opens `n` connections with `open` from `sources` source addresses on `threads` threads
/// at once; the connections, or the first error.
pub fn open_many(
    n: usize,
    threads: usize,
    sources: usize,
    open: fn(Ipv4Addr, u16) -> Result<TcpStream>,
    port: u16,
) -> Result<Vec<TcpStream>> {
    let threads = threads.clamp(1, n.max(1));
    std::thread::scope(|scope| {
        let parts: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..n)
                        .step_by(threads)
                        .map(|i| open(source(i, sources), port))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for p in parts {
            all.extend(p.join().map_err(|_| Error::other("opener panicked"))??);
        }
        Ok(all)
    })
}

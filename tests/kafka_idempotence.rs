//! Idempotent producers through librdkafka: connections cut mid-request by a proxy force
//! retries of batches the broker already appended; the log must hold every message exactly
//! once and in order.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{data_dir, free_port, kafka, Broker};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Offset;

/// A TCP proxy that can drop a connection after forwarding a request to the broker but
/// before the broker's answer reaches the client.
struct Proxy {
    port: u16,
    /// Cut the next connection that forwards a large request (a produce) once armed.
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
}

impl Proxy {
    fn start_on(port: u16, upstream: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (a, c) = (armed.clone(), cuts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (a, c) = (a.clone(), c.clone());
                let (mut c_read, mut s_write) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let (mut s_read, mut c_write) = (server, client);
                let killer = (
                    c_read.try_clone().expect("clone"),
                    s_write.try_clone().expect("clone"),
                );
                // Set once a request is doomed: its response must not reach the client.
                let frozen = Arc::new(AtomicBool::new(false));
                let frozen_reader = frozen.clone();
                // client → broker, frame by frame; when armed, a whole Produce request is
                // forwarded and then both sides are cut before its response can return.
                std::thread::spawn(move || {
                    loop {
                        let mut len = [0u8; 4];
                        if c_read.read_exact(&mut len).is_err() {
                            break;
                        }
                        let mut frame = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
                        if c_read.read_exact(&mut frame).is_err() {
                            break;
                        }
                        let produce = frame.len() > 2 && frame[0] == 0 && frame[1] == 0;
                        let doomed = produce && a.swap(false, Ordering::SeqCst);
                        if doomed {
                            frozen.store(true, Ordering::SeqCst);
                        }
                        if s_write
                            .write_all(&len)
                            .and_then(|_| s_write.write_all(&frame))
                            .is_err()
                        {
                            break;
                        }
                        if doomed {
                            c.fetch_add(1, Ordering::SeqCst);
                            // Give the broker time to read and append it.
                            std::thread::sleep(Duration::from_millis(200));
                            let _ = killer.0.shutdown(Shutdown::Both);
                            let _ = killer.1.shutdown(Shutdown::Both);
                            break;
                        }
                    }
                    let _ = s_write.shutdown(Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match s_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if frozen_reader.load(Ordering::SeqCst) {
                            break;
                        }
                        if c_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_write.shutdown(Shutdown::Write);
                });
            }
        });
        Proxy { port, armed, cuts }
    }
}

#[test]
fn idempotent_producer_retries_after_cut_connections_without_duplicates() {
    let (_tmp, data) = data_dir();
    // Clients learn the proxy's address from Metadata, so every connection goes through it.
    let proxy_port = free_port();
    let proxy_port_s = proxy_port.to_string();
    let broker = Broker::start(
        &data,
        &[("PORTASK_KAFKA__ADVERTISED_PORT", proxy_port_s.as_str())],
    );
    let proxy = Proxy::start_on(proxy_port, broker.port);
    let bootstrap = format!("127.0.0.1:{}", proxy.port);
    kafka::create_topic(&bootstrap, "exactly", 3, &[]);

    let p: FutureProducer = kafka::client(
        &bootstrap,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "20"),
            ("retry.backoff.ms", "50"),
            ("message.timeout.ms", "60000"),
        ],
    );
    const N: usize = 6000;
    // Four rounds; in each the proxy cuts the connection carrying a produce request.
    for round in 0..4 {
        proxy.armed.store(true, Ordering::SeqCst);
        let mut pending = Vec::new();
        for i in round * 1500..(round + 1) * 1500 {
            let v = format!("{i:06}-{}", "p".repeat(300));
            let key = format!("k{}", i % 3);
            let record = FutureRecord::to("exactly")
                .key(key.as_str())
                .payload(v.as_str());
            pending.push(kafka::enqueue(&p, record));
        }
        // Every record is delivered despite the cuts.
        for f in pending {
            kafka::delivered(f);
        }
    }
    assert!(
        proxy.cuts.load(Ordering::SeqCst) >= 2,
        "the proxy cut connections mid-request"
    );

    // Read straight from the broker: each message exactly once, in send order per partition.
    let c = kafka::assigned(&broker, &[], "exactly", 3, Offset::Beginning);
    let mut count: HashMap<usize, usize> = HashMap::new();
    let mut last: HashMap<i32, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut total = 0;
    while total < N && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let v: usize = std::str::from_utf8(m.payload().unwrap_or_default())
                .ok()
                .and_then(|s| s.split('-').next()?.parse().ok())
                .expect("payload");
            *count.entry(v).or_default() += 1;
            if let Some(prev) = last.insert(m.partition(), v) {
                assert!(
                    prev < v,
                    "partition {} out of order: {prev} then {v}",
                    m.partition()
                );
            }
            total += 1;
        }
    }
    // Anything beyond N would be a duplicate: give it a moment to show up.
    let extra_deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < extra_deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            panic!(
                "unexpected extra message {:?}",
                m.payload().map(|p| String::from_utf8_lossy(p).into_owned())
            );
        }
    }
    assert_eq!(total, N);
    assert!(count.values().all(|n| *n == 1), "no duplicates");
    assert_eq!(count.len(), N);
}

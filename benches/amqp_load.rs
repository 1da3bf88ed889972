//! End-to-end AMQP load harness (lapin against the real release binary).
//!
//! `cargo bench --bench amqp_load` starts `portask` on a temp dir with free ports
//! (`PORTASK_BENCH_SHARDS` shards, default 2, unpinned) — or uses `AMQP_URL` if set — and
//! measures, for 16 B and 1 KiB bodies:
//! - transient messages, auto-ack consumer: publish and consume msg/s (flood), then
//!   end-to-end latency p50/p99 at a paced rate (`PORTASK_BENCH_RATE`, default 5000/s);
//! - persistent messages on a durable queue with publisher confirms (a window of
//!   outstanding confirms) and a manual-ack consumer: the same figures.
//!
//! Latency is publish-call-to-delivery on one host: the publisher writes its send time
//! into the body. `PORTASK_BENCH_MESSAGES` sets the flood size (default 100000).

use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(5672)
}

struct Broker {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker() -> (Option<Broker>, String) {
    if let Ok(url) = std::env::var("AMQP_URL") {
        return (None, url);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let shards = env_num("PORTASK_BENCH_SHARDS", 2);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_portask"))
        .args(["--data-dir", &dir.path().join("data").to_string_lossy()])
        .args(["--shards", &shards.to_string(), "--placement", "unpinned"])
        .args(["--kafka-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--amqp-addr", &format!("127.0.0.1:{port}")])
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn portask");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (
        Some(Broker { child, _dir: dir }),
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
    )
}

struct Figures {
    publish_rate: f64,
    consume_rate: f64,
    p50_us: u64,
    p99_us: u64,
}

fn body(size: usize, origin: Instant) -> Vec<u8> {
    let mut b = vec![0u8; size.max(8)];
    let ns = origin.elapsed().as_nanos() as u64;
    b[..8].copy_from_slice(&ns.to_be_bytes());
    b.truncate(size.max(8));
    b
}

fn latency_of(data: &[u8], origin: Instant) -> u64 {
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&data[..8]);
    let sent = u64::from_be_bytes(ts);
    (origin.elapsed().as_nanos() as u64).saturating_sub(sent) / 1000
}

async fn queue(ch: &Channel, name: &str, durable: bool) {
    let _ = ch
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await;
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
}

/// Floods `n` messages while a consumer drains them; returns rates (and flood latency).
async fn flood(url: &str, size: usize, n: u64, persistent: bool) -> (f64, f64) {
    let pconn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let cconn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let pch = pconn.create_channel().await.expect("channel");
    let cch = cconn.create_channel().await.expect("channel");
    let name = format!("bench-{size}-{persistent}");
    queue(&pch, &name, persistent).await;
    if persistent {
        pch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm");
        cch.basic_qos(1000, BasicQosOptions::default())
            .await
            .expect("qos");
    }
    let mut consumer = cch
        .basic_consume(
            name.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: !persistent,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let origin = Instant::now();
    let consume = tokio::spawn(async move {
        let mut first = None;
        let mut got = 0u64;
        while got < n {
            let Some(Ok(d)) = consumer.next().await else {
                break;
            };
            first.get_or_insert_with(Instant::now);
            got += 1;
            if persistent && got.is_multiple_of(100) {
                d.ack(BasicAckOptions { multiple: true })
                    .await
                    .expect("ack");
            }
        }
        (got, first.map(|f| f.elapsed()).unwrap_or_default())
    });
    let props = if persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let started = Instant::now();
    let mut window = std::collections::VecDeque::new();
    for _ in 0..n {
        let c = pch
            .basic_publish(
                "".into(),
                name.as_str().into(),
                BasicPublishOptions::default(),
                &body(size, origin),
                props.clone(),
            )
            .await
            .expect("publish");
        if persistent {
            window.push_back(c);
            if window.len() >= 2000 {
                if let Some(c) = window.pop_front() {
                    c.await.expect("confirm");
                }
            }
        }
    }
    for c in window {
        c.await.expect("confirm");
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let (got, consume_time) = consume.await.expect("consumer");
    assert_eq!(got, n, "consumer got {got} of {n}");
    let _ = pconn.close(200, "done".into()).await;
    let _ = cconn.close(200, "done".into()).await;
    (
        n as f64 / publish_secs,
        n as f64 / consume_time.as_secs_f64().max(1e-9),
    )
}

/// Publishes at a steady `rate` and records publish-to-delivery latency.
async fn paced(url: &str, size: usize, n: u64, rate: u64, persistent: bool) -> (u64, u64) {
    let pconn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let cconn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let pch = pconn.create_channel().await.expect("channel");
    let cch = cconn.create_channel().await.expect("channel");
    let name = format!("lat-{size}-{persistent}");
    queue(&pch, &name, persistent).await;
    if persistent {
        pch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm");
        cch.basic_qos(1000, BasicQosOptions::default())
            .await
            .expect("qos");
    }
    let mut consumer = cch
        .basic_consume(
            name.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: !persistent,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let origin = Instant::now();
    let consume = tokio::spawn(async move {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        let mut got = 0;
        while got < n {
            let Some(Ok(d)) = consumer.next().await else {
                break;
            };
            let _ = h.record(latency_of(&d.data, origin).max(1));
            got += 1;
            if persistent {
                d.ack(BasicAckOptions::default()).await.expect("ack");
            }
        }
        h
    });
    let props = if persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now();
    let mut pending = Vec::new();
    for i in 0..n {
        let due = start + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let c = pch
            .basic_publish(
                "".into(),
                name.as_str().into(),
                BasicPublishOptions::default(),
                &body(size, origin),
                props.clone(),
            )
            .await
            .expect("publish");
        if persistent {
            pending.push(c);
        }
    }
    for c in pending {
        c.await.expect("confirm");
    }
    let h = consume.await.expect("consumer");
    (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
}

fn main() {
    let (_broker, url) = start_broker();
    let n = env_num("PORTASK_BENCH_MESSAGES", 100_000);
    let rate = env_num("PORTASK_BENCH_RATE", 5000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("portask AMQP load (lapin), {n} messages per flood, latency at {rate} msg/s");
    println!(
        "{:<34} {:>12} {:>12} {:>9} {:>9}",
        "case", "publish/s", "consume/s", "p50 µs", "p99 µs"
    );
    for persistent in [false, true] {
        for size in [16usize, 1024] {
            let (publish_rate, consume_rate) = rt.block_on(flood(&url, size, n, persistent));
            let (p50_us, p99_us) =
                rt.block_on(paced(&url, size, (rate * 4).min(n), rate, persistent));
            let f = Figures {
                publish_rate,
                consume_rate,
                p50_us,
                p99_us,
            };
            let case = if persistent {
                format!("persistent+confirms, {size} B")
            } else {
                format!("transient auto-ack, {size} B")
            };
            println!(
                "{case:<34} {:>12.0} {:>12.0} {:>9} {:>9}",
                f.publish_rate, f.consume_rate, f.p50_us, f.p99_us
            );
        }
    }
}

//! HTTP figures against a running broker:
//! - REST produce: `--requests` POSTs of `--batch` 1 KiB records each (acks=all) on one
//!   keep-alive connection per `--clients` thread; records per second and request p50/p99;
//! - scrape: `GET /metrics`, `GET /api/v1/overview` and `GET /api/v1/queues` with
//!   `--partitions` partitions and `--streams` stream queues (one record each) in the
//!   catalog; median and p99 time per scrape.
//!
//! `cargo bench --bench http -- --url http://127.0.0.1:8080 [--user guest:guest]
//!  [--requests N] [--batch N] [--clients N] [--partitions N] [--streams N]`, or `--start-broker
//!  [--broker-shards N]` instead of `--url` for a Portask of its own.

use std::time::{Duration, Instant};

use base64::Engine;

#[derive(clap::Parser)]
#[command(
    name = "http",
    about = "REST produce rate and scrape times against a running broker"
)]
struct Args {
    /// The broker's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// `user:password` for basic auth.
    #[arg(long = "user", default_value = "guest:guest")]
    auth: String,
    /// POSTs in all, split across the clients.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// 1 KiB records per POST.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Client threads, one keep-alive connection each.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Partitions in the catalog while scraping.
    #[arg(long, default_value_t = 100)]
    partitions: usize,
    /// Stream queues (`x-queue-type: stream`, one record each) in the catalog while
    /// scraping: each is a row with its offsets in the overview and the queue list.
    #[arg(long, default_value_t = 0)]
    streams: usize,
    #[command(flatten)]
    start: launch::StartFlags,
}

#[path = "../tests/common/launch.rs"]
mod launch;

fn args() -> Args {
    use clap::Parser;
    // `cargo bench` appends `--bench`.
    Args::parse_from(std::env::args().filter(|a| a != "--bench"))
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let mut a = args();
    // Kept for the whole run; dropping it kills the broker.
    let broker = a.start.start();
    if let Some(b) = &broker {
        a.url = b.launch.http_url();
    }
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(&a.auth)
    );
    let agent = ureq::AgentBuilder::new().build();
    // Topic creation answers 201, or 409 when the topic is there from an earlier run.
    let post = |path: &str, body: &str| {
        let _ = agent
            .post(&format!("{}{path}", a.url))
            .set("Authorization", &auth)
            .set("Content-Type", "application/json")
            .send_string(body);
    };
    post("/api/v1/topics", r#"{"name":"http-bench","partitions":2}"#);
    let many = format!(
        r#"{{"name":"http-bench-many","partitions":{}}}"#,
        a.partitions
    );
    post("/api/v1/topics", &many);

    // REST produce.
    let value = "x".repeat(1024);
    let records: Vec<String> = (0..a.batch)
        .map(|i| format!(r#"{{"key":"k{i}","value":"{value}"}}"#))
        .collect();
    let body = format!(r#"{{"acks":"all","records":[{}]}}"#, records.join(","));
    let started = Instant::now();
    let per_client = a.requests / a.clients.max(1);
    let handles: Vec<_> = (0..a.clients.max(1))
        .map(|_| {
            let (url, auth, body) = (a.url.clone(), auth.clone(), body.clone());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().build();
                let mut times = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let t = Instant::now();
                    let r = agent
                        .post(&format!("{url}/api/v1/topics/http-bench/records"))
                        .set("Authorization", &auth)
                        .set("Content-Type", "application/json")
                        .send_string(&body);
                    if let Err(e) = r {
                        eprintln!("produce: {e}");
                        std::process::exit(1);
                    }
                    times.push(t.elapsed());
                }
                times
            })
        })
        .collect();
    let mut times: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    let elapsed = started.elapsed();
    times.sort();
    let n = times.len() * a.batch;
    println!(
        "REST produce: {n} records of 1 KiB in {} requests of {} ({} clients, acks=all): {:.0} records/s, request p50 {:.2} ms, p99 {:.2} ms",
        times.len(),
        a.batch,
        a.clients,
        n as f64 / elapsed.as_secs_f64(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
    );

    // Stream queues, declared and given a record each over REST.
    for i in 0..a.streams {
        let name = format!("http-bench-stream-{i}");
        let r = agent
            .put(&format!("{}/api/v1/queues/%2F/{name}", a.url))
            .set("Authorization", &auth)
            .set("Content-Type", "application/json")
            .send_string(r#"{"durable":true,"arguments":{"x-queue-type":"stream"}}"#);
        if let Err(e) = r {
            eprintln!("declare stream {name}: {e}");
            std::process::exit(1);
        }
        post(
            "/api/v1/exchanges/%2F/amq.default/publish",
            &format!(
                r#"{{"routing_key":"{name}","payload":"x","payload_encoding":"string","properties":{{}}}}"#
            ),
        );
    }

    // Scrapes.
    for path in ["/metrics", "/api/v1/overview", "/api/v1/queues"] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..50 {
            let t = Instant::now();
            let r = agent
                .get(&format!("{}{path}", a.url))
                .set("Authorization", &auth)
                .call();
            match r.map(|r| r.into_string()) {
                Ok(Ok(text)) => bytes = text.len(),
                Ok(Err(e)) => {
                    eprintln!("{path}: {e}");
                    std::process::exit(1);
                }
                Err(e) => {
                    eprintln!("{path}: {e}");
                    std::process::exit(1);
                }
            }
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "GET {path} with {} partitions, {} streams: {bytes} bytes, median {:.2} ms, p99 {:.2} ms",
            a.partitions + 2,
            a.streams,
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
        );
    }
}

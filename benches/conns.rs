//! Connection scale: what an idle connection costs the broker, and how fast it accepts them.
//!
//! `cargo bench --bench conns -- [--counts 1000,5000,10000,18000] [--protocols amqp,kafka]
//!  [--sources 8] [--threads 8] [--shards 2]`
//!
//! For each protocol, starts the release broker (through `tests/common/launch.rs`, like
//! the tests: temp dir, ephemeral ports, unpinned, `--shards`, and
//! `limits.max_connections_per_shard` raised to the largest count so one shard may hold
//! them all), opens and closes a few hundred connections first (one-time costs), then opens
//! idle connections up to each of `--counts` in turn, from `--sources` loopback addresses
//! (127.0.0.2 onwards) on `--threads` threads at once, over raw sockets speaking the real
//! protocol (`tests/common/idle.rs`): AMQP through connection.open-ok (PLAIN guest,
//! heartbeat 0) with channel 1 open; Kafka after ApiVersions and Metadata. After each step
//! it prints the broker's RSS (VmRSS), the growth per connection since the start and since
//! the previous step, the handshakes per second of that step (connect to channel open-ok,
//! or to the Metadata answer), and the broker's open descriptors per connection.
//!
//! The bench process raises its open-file limit to the hard limit (the broker inherits it);
//! every connection is one descriptor on each side, so the largest count is that limit less
//! some headroom. RSS counts what the broker touched, so it is an upper bound; the bench
//! process itself is not counted.

use std::time::{Duration, Instant};

#[path = "../tests/common/launch.rs"]
mod launch;

#[path = "../tests/common/idle.rs"]
mod idle;

#[derive(clap::Parser)]
#[command(
    name = "conns",
    about = "RSS per idle connection and handshakes per second"
)]
struct Args {
    /// Idle connections open after each step (cumulative).
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 5000, 10000, 18000])]
    counts: Vec<usize>,
    /// `amqp`, `kafka` or both.
    #[arg(long, value_delimiter = ',', default_values_t = ["amqp".to_string(), "kafka".to_string()])]
    protocols: Vec<String>,
    /// Loopback source addresses the connections come from (127.0.0.2 onwards).
    #[arg(long, default_value_t = 8)]
    sources: usize,
    /// Client threads opening connections at once.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Broker shards.
    #[arg(long, default_value_t = 2)]
    shards: usize,
}

fn args() -> Args {
    use clap::Parser;
    // `cargo bench` appends `--bench`.
    Args::parse_from(std::env::args().filter(|a| a != "--bench"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// RSS and descriptors once the broker has been quiet for a moment.
fn settled(pid: u32) -> (u64, usize) {
    std::thread::sleep(Duration::from_millis(2000));
    (launch::rss_bytes(pid), open_fds(pid))
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

fn run(protocol: &str, a: &Args, counts: &[usize]) {
    let max = counts.iter().copied().max().unwrap_or(0);
    let limit = max.to_string();
    let b = launch::Scratch::start(
        a.shards,
        &[("PORTASK_LIMITS__MAX_CONNECTIONS_PER_SHARD", limit.as_str())],
    );
    let pid = b.pid();
    let (open, port): (fn(_, _) -> _, u16) = match protocol {
        "amqp" => (idle::amqp_idle, b.launch.amqp_port),
        _ => (idle::kafka_idle, b.launch.kafka_port),
    };
    let warm = idle::open_many(300, a.threads, a.sources, open, port).expect("warm-up");
    drop(warm);
    let (base, base_fds) = settled(pid);
    println!(
        "### {protocol}: {} shards, broker RSS {} and {base_fds} descriptors before",
        a.shards,
        kib(base as f64)
    );
    println!();
    println!(
        "| idle connections | broker RSS | per connection (from the start) | per connection (this step) | handshakes/s (this step) | descriptors per connection |"
    );
    println!("|---|---|---|---|---|---|");
    let mut held = Vec::new();
    let mut last = (0usize, base);
    for &n in counts {
        let add = n.saturating_sub(held.len());
        let t = Instant::now();
        match idle::open_many(add, a.threads, a.sources, open, port) {
            Ok(more) => held.extend(more),
            Err(e) => {
                println!(
                    "| {n} | stopped: {e} after {} connections | | | | |",
                    held.len()
                );
                break;
            }
        }
        let took = t.elapsed();
        let (rss, fds) = settled(pid);
        println!(
            "| {n} | {} | {} | {} | {:.0} | {:.3} |",
            kib(rss as f64),
            kib((rss as f64 - base as f64) / n as f64),
            kib((rss as f64 - last.1 as f64) / (n - last.0) as f64),
            add as f64 / took.as_secs_f64(),
            (fds as f64 - base_fds as f64) / n as f64
        );
        last = (n, rss);
    }
    println!();
    // A sample of the idle connections still answers.
    let (mut asked, mut answered) = (0, 0);
    let every = held.len().div_ceil(20).max(1);
    for s in held.iter_mut().step_by(every) {
        asked += 1;
        let ok = match protocol {
            "amqp" => idle::amqp_open_channel(s, 2).is_ok(),
            _ => idle::kafka_round_trip(s).is_ok(),
        };
        answered += ok as usize;
    }
    println!("{answered} of {asked} sampled idle connections answered afterwards");
    println!();
}

fn main() {
    let a = args();
    let nofile = idle::raise_nofile();
    // Two descriptors a connection (ours and the broker's are in different processes, so
    // one each) plus headroom for the broker's own files.
    let cap = (nofile as usize).saturating_sub(200);
    let counts: Vec<usize> = a.counts.iter().map(|c| (*c).min(cap)).collect();
    println!(
        "# Portask connection scale: cargo bench --bench conns -- --counts {} --protocols {} --sources {} --threads {} --shards {}",
        a.counts
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
        a.protocols.join(","),
        a.sources,
        a.threads,
        a.shards
    );
    println!();
    println!(
        "broker {}, default configuration but limits.max_connections_per_shard, unpinned, \
         temp data directory; {} cores, kernel {}; open-file limit {nofile} (counts capped at {cap})",
        std::env::var("BROKER_UNDER_TEST").unwrap_or_else(|_| env!("CARGO_BIN_EXE_portask").to_owned()),
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!();
    for p in &a.protocols {
        run(p, &a, &counts);
    }
}

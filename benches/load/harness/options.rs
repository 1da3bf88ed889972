//! The load harness's command line: `kafka` and `amqp` runs (same workload flags, each
//! with its protocol's own), and `report`, which turns result files into the side-by-side
//! table and chart `scripts/compare.sh` prints.
//!
//! Parsed once on the main thread; the parsed values are plain data shared read-only with
//! the producer and consumer threads.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "load",
    about = "End-to-end load harness: real Kafka (librdkafka) and AMQP (lapin) clients \
             against any broker",
    after_help = "Run with `cargo bench --bench load -- <kafka|amqp|report> ...`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Produce and consume through the Kafka protocol (rdkafka; consumers use assign()).
    Kafka(KafkaArgs),
    /// Publish and consume through AMQP 0-9-1 (lapin).
    Amqp(AmqpArgs),
    /// Reads result files and prints the side-by-side table; optionally writes JSON and SVG.
    Report(ReportArgs),
}

/// The workload, the same for both protocols.
#[derive(Debug, Clone, Args)]
pub struct Workload {
    /// Producer connections, each on its own thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub producers: u32,
    /// Consumer connections (Kafka: partitions are split among them; AMQP: they share
    /// each queue).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub consumers: u32,
    /// Messages to send in total, split evenly across producers. Without it the run is
    /// bounded by --duration (and --messages defaults to 100000 when neither is given).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Bytes per message (at least 16: the header carries producer, sequence and send time).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(16..))]
    pub message_size: u32,
    /// Target total send rate in msg/s, open-loop: message i of a producer is due at a
    /// fixed time and carries that time, so a stalled broker shows up as latency instead
    /// of a slower sender. Without it producers send as fast as the client allows.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop sending after this long (e.g. `30s`, `500ms`, `2m`; a bare number is seconds).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// After the last send, how long consumption may stall before the missing messages
    /// count as lost.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Writes the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A label for the run, kept in the JSON (compare.sh uses it as the row name).
    #[arg(long, default_value = "")]
    pub scenario: String,
    /// Which broker this is, kept in the JSON (compare.sh: `portask` or `rabbitmq`).
    #[arg(long, default_value = "")]
    pub target: String,
    /// Start a Portask of its own for the run instead of using --brokers / --url: the
    /// binary `cargo bench` built, a temp data dir, ephemeral ports, unpinned shards (the
    /// launcher the integration tests use). Killed when the run ends.
    #[arg(long)]
    pub start_broker: bool,
    /// Read-back: producers publish everything first and consumers start only then, from
    /// the start of what was published (a stream or topic read from its log). The consume
    /// throughput and the broker CPU cover the read alone; latency then includes the wait.
    #[arg(long)]
    pub prefill: bool,
    /// The broker's process id: its CPU time (user + system, from /proc/PID/stat) over the
    /// run (with --prefill, over the read) is reported per message. --start-broker sets it.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Shards of the broker --start-broker starts.
    #[arg(long, default_value_t = 2, requires = "start_broker",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub broker_shards: u16,
    /// Test hook: the first consumer ignores the Nth message it receives (1-based), so the
    /// loss detection can be shown to work against a broker that loses nothing.
    #[arg(long, hide = true)]
    pub test_ignore_receipt: Option<u64>,
}

impl Workload {
    /// Total messages to send, or `None` for "until --duration".
    pub fn message_limit(&self) -> Option<u64> {
        match (self.messages, self.duration) {
            (Some(n), _) => Some(n),
            (None, Some(_)) => None,
            (None, None) => Some(100_000),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Acks {
    #[value(name = "0")]
    None,
    #[value(name = "1")]
    Leader,
    #[value(name = "all", alias = "-1")]
    All,
}

impl Acks {
    pub fn as_config(self) -> &'static str {
        match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    #[command(flatten)]
    pub workload: Workload,
    /// Bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Connect over TLS (librdkafka `security.protocol=ssl`) trusting this CA file (PEM).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// With --start-broker: give the broker an `SSL` listener with a certificate made for
    /// the run (and its CA as --tls-ca), and run over it.
    #[arg(long, requires = "start_broker")]
    pub tls: bool,
    /// Topic to use; created with --partitions if absent. Default: a fresh name per run.
    #[arg(long)]
    pub topic: Option<String>,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=10000))]
    pub partitions: i32,
    #[arg(long, value_enum, default_value = "1")]
    pub acks: Acks,
    /// Transactional producers: each has its own `transactional.id` and commits a
    /// transaction every N records (and the rest at the end); implies idempotence and
    /// acks=all. Consumers read with librdkafka's default `read_committed`, so a record
    /// arrives once its transaction is committed.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub transactional: Option<u64>,
    /// Extra librdkafka property for producers and consumers (`-X socket.nagle.disable=true`).
    #[arg(short = 'X', long = "property", value_parser = parse_key_value)]
    pub properties: Vec<(String, String)>,
    /// Extra librdkafka property for producers only (`-P linger.ms=0`).
    #[arg(short = 'P', long = "producer-property", value_parser = parse_key_value)]
    pub producer_properties: Vec<(String, String)>,
    /// Extra librdkafka property for consumers only (`-C fetch.wait.max.ms=10`).
    #[arg(short = 'C', long = "consumer-property", value_parser = parse_key_value)]
    pub consumer_properties: Vec<(String, String)>,
}

#[derive(Debug, Clone, Args)]
pub struct AmqpArgs {
    #[command(flatten)]
    pub workload: Workload,
    /// Broker URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub url: String,
    /// Queue name (fanout: the prefix of the queue names). Default: a fresh name per run.
    #[arg(long)]
    pub queue: Option<String>,
    /// Publisher confirms: a message counts as sent only once the broker acks it.
    #[arg(long)]
    pub confirm: bool,
    /// Unconfirmed messages a producer may have outstanding with --confirm.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_unconfirmed: u32,
    /// Persistent messages (delivery mode 2) on durable queues.
    #[arg(long)]
    pub persistent: bool,
    /// Consumer prefetch (basic.qos); 0 is unlimited. Consumers ack with `multiple` every
    /// half prefetch (every 100 messages when unlimited) unless --ack-every says otherwise.
    #[arg(long, default_value_t = 200)]
    pub prefetch: u16,
    /// Consumers ack with `multiple` every this many messages (1: each message on its own).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub ack_every: Option<u64>,
    /// No consumer acks (basic.consume no-ack).
    #[arg(long)]
    pub auto_ack: bool,
    /// Publishers open their channels on the first consumer's connection instead of
    /// connections of their own: one connection for both, as an application with one
    /// shared connection (Spring AMQP's default connection factory) has it.
    #[arg(long, conflicts_with = "prefill")]
    pub one_connection: bool,
    /// Declare the queue as a stream (`x-queue-type: stream`, durable) and consume it from
    /// `x-stream-offset: first` (needs a prefetch, as RabbitMQ's streams do).
    #[arg(long, conflicts_with = "fanout")]
    pub stream: bool,
    /// Publish to a fanout exchange bound to this many queues instead of straight to one
    /// queue; every queue gets --consumers consumers and every message must arrive at
    /// every queue.
    #[arg(long, default_value_t = 0)]
    pub fanout: u32,
}

impl AmqpArgs {
    /// How many deliveries a consumer takes before it acks them with `multiple`.
    pub fn ack_interval(&self) -> u64 {
        match (self.ack_every, self.prefetch) {
            (Some(n), _) => n,
            (None, 0) => 100,
            (None, p) => (u64::from(p) / 2).max(1),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Result JSON files (from --json) to put side by side.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// Writes every result, grouped by scenario, as one JSON document.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Writes a bar chart of throughput and p99 latency as SVG.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Writes the table as Markdown to this file (it is always printed).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Facts about the run kept in the JSON (`--meta kernel=6.1`); `title` names the chart.
    #[arg(long, value_parser = parse_key_value)]
    pub meta: Vec<(String, String)>,
}

/// `30s`, `250ms`, `2m`, `1.5` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 30s, 500ms, 2m)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("`{s}` is not a duration (try 30s, 500ms, 2m)"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not key=value"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

/// Parses the harness's arguments, dropping the `--bench` flag `cargo bench` appends.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(args.into_iter().filter(|a| a != "--bench"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn cargo_bench_flag_is_ignored_and_defaults_hold() {
        let cli = parse(
            ["load", "kafka", "--acks", "all", "--bench", "--rate", "500"]
                .map(String::from)
                .to_vec(),
        )
        .unwrap();
        let Command::Kafka(k) = cli.command else {
            panic!("not kafka")
        };
        assert_eq!(k.acks, Acks::All);
        assert_eq!(k.workload.rate, Some(500.0));
        assert_eq!(k.workload.message_limit(), Some(100_000));
        let cli = parse(
            ["load", "amqp", "--prefetch", "1000", "--start-broker"]
                .map(String::from)
                .to_vec(),
        )
        .unwrap();
        let Command::Amqp(a) = cli.command else {
            panic!("not amqp")
        };
        assert_eq!(a.ack_interval(), 500);
        assert!(a.workload.start_broker);
        assert_eq!(a.workload.broker_shards, 2);
        let cli = parse(
            ["load", "amqp", "--prefetch", "1000", "--ack-every", "100"]
                .map(String::from)
                .to_vec(),
        )
        .unwrap();
        let Command::Amqp(a) = cli.command else {
            panic!("not amqp")
        };
        assert_eq!(a.ack_interval(), 100);
        assert!(parse(
            ["load", "amqp", "--broker-shards", "1"]
                .map(String::from)
                .to_vec()
        )
        .is_err());
        assert!(parse(
            ["load", "amqp", "--message-size", "8"]
                .map(String::from)
                .to_vec()
        )
        .is_err());
        let cli = parse(
            ["load", "amqp", "--one-connection"]
                .map(String::from)
                .to_vec(),
        )
        .unwrap();
        let Command::Amqp(a) = cli.command else {
            panic!("not amqp")
        };
        assert!(a.one_connection);
        // A pre-filled read has no consumer connection while publishing.
        assert!(parse(
            ["load", "amqp", "--one-connection", "--prefill"]
                .map(String::from)
                .to_vec()
        )
        .is_err());
    }
}

//! The load harness: producers and consumers with real clients (rdkafka for Kafka, lapin
//! for AMQP) against any broker, every message stamped with its send time, and a verdict
//! on loss after the run.
//!
//! Included by the `load` bench (`benches/load/main.rs`, its command line) and by
//! `tests/load_harness.rs` (which runs it against an in-process Portask). Producers and
//! consumers each run on their own thread (Kafka) or task (AMQP) with their own
//! connection; they share only the `Progress` counters below and hand their ledgers and
//! histograms back when they finish.

pub mod amqp;
pub mod kafka;
pub mod ledger;
pub mod options;
pub mod payload;
pub mod report;
pub mod schedule;
pub mod stats;
pub mod summary;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledger::{Receipts, Sequences};
use payload::Clock;
use stats::Latency;

/// Why a run could not be carried out (as opposed to a run that found loss).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("amqp: {0}")]
    Amqp(String),
    #[error("{0}")]
    Setup(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters every producer and consumer updates while the run is going; the main thread
/// watches them to decide when consumption is complete.
pub struct Progress {
    pub clock: Clock,
    /// Set by the main thread when consumers should stop.
    pub stop: AtomicBool,
    /// Set before `stop` when every acknowledged message arrived.
    pub complete: AtomicBool,
    /// Messages the broker acknowledged, over all producers.
    pub acked: AtomicU64,
    /// Distinct messages received (per consumer), over all consumers.
    pub received: AtomicU64,
    pub last_ack_ns: AtomicU64,
    pub last_receive_ns: AtomicU64,
    /// With --prefill: when consumers started (the read's start); 0 otherwise.
    pub read_start_ns: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Progress {
    pub fn new(clock: Clock) -> Arc<Progress> {
        Arc::new(Progress {
            clock,
            stop: AtomicBool::new(false),
            complete: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            received: AtomicU64::new(0),
            last_ack_ns: AtomicU64::new(0),
            last_receive_ns: AtomicU64::new(0),
            read_start_ns: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A message the broker acknowledged (counted once, by its producer).
    pub fn acked(&self) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        self.last_ack_ns
            .fetch_max(self.clock.now_ns(), Ordering::Relaxed);
    }

    /// Counts an error by its message (the report lists the most frequent ones).
    pub fn error(&self, what: impl std::fmt::Display) {
        let key = what.to_string();
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(key).or_insert(0) += 1;
        }
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Waits, after the last send, until consumers have received `expected` messages or
    /// made no progress for `stall`. Returns whether everything arrived.
    pub fn drain(&self, expected: u64, stall: Duration) -> bool {
        let mut last = self.received.load(Ordering::Relaxed);
        let mut since = std::time::Instant::now();
        loop {
            let now = self.received.load(Ordering::Relaxed);
            if now >= expected {
                return true;
            }
            if now != last {
                last = now;
                since = std::time::Instant::now();
            } else if since.elapsed() >= stall {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// What one producer learnt from the broker's acknowledgements (Kafka delivery reports,
/// AMQP confirms, or without confirms the publish written to the socket).
#[derive(Default)]
pub struct Acknowledged {
    /// Sequences the broker acknowledged.
    pub sequences: Sequences,
    /// Ack latency: from the send call (rdkafka `send`, lapin `basic_publish`) to the
    /// acknowledgement, once per acknowledged sequence. Empty when nothing is timed
    /// (Kafka acks=0, AMQP without confirms: there the "ack" is only the client's).
    pub latency: Latency,
}

impl Acknowledged {
    /// Records the acknowledgement of `seq`, `waited_ns` after its send call (`None`: not
    /// timed). Counts it in `progress` once; false (and nothing recorded) for a repeat.
    pub fn record(&mut self, seq: u32, waited_ns: Option<u64>, progress: &Progress) -> bool {
        if !self.sequences.insert(seq) {
            return false;
        }
        if let Some(ns) = waited_ns {
            self.latency.record(ns);
        }
        progress.acked();
        true
    }
}

/// What one producer hands back.
pub struct Produced {
    pub producer: u16,
    pub acked: Acknowledged,
    /// Messages handed to the client (acknowledged or not).
    pub sent: u64,
    /// Sends the client or broker reported as failed.
    pub failed: u64,
}

/// The consuming side of one consumer: reads each message's header, records latency and
/// receipt. Shared by the Kafka and AMQP consumers so both count the same way.
pub struct Sink {
    copy: usize,
    progress: Arc<Progress>,
    pub receipts: Receipts,
    pub latency: Latency,
    /// Test hook: ignore the Nth message this sink sees (1-based).
    ignore_nth: Option<u64>,
    seen: u64,
}

impl Sink {
    pub fn new(copy: usize, progress: Arc<Progress>, ignore_nth: Option<u64>) -> Sink {
        Sink {
            copy,
            progress,
            receipts: Receipts::default(),
            latency: Latency::new(),
            ignore_nth,
            seen: 0,
        }
    }

    pub fn on_message(&mut self, body: &[u8]) {
        let now = self.progress.clock.now_ns();
        let Some(stamp) = payload::read(body) else {
            self.receipts.foreign += 1;
            return;
        };
        self.seen += 1;
        if self.ignore_nth == Some(self.seen) {
            return;
        }
        if self
            .receipts
            .record(self.copy, stamp.producer, stamp.sequence)
        {
            self.latency.record(now.saturating_sub(stamp.sent_ns));
            self.progress.received.fetch_add(1, Ordering::Relaxed);
            self.progress
                .last_receive_ns
                .fetch_max(now, Ordering::Relaxed);
        }
    }
}

/// Runs one `kafka` or `amqp` command and returns its report (`report` is handled by
/// the caller: it reads results instead of producing them).
pub fn run(command: &options::Command) -> Result<report::Report, HarnessError> {
    match command {
        options::Command::Kafka(args) => kafka::run(args),
        options::Command::Amqp(args) => amqp::run(args),
        options::Command::Report(_) => Err(HarnessError::Setup(
            "`report` summarises results; it does not run a load".into(),
        )),
    }
}

/// The broker's CPU time from a starting point (`--broker-pid`).
pub struct BrokerCpu {
    pid: u32,
    from: f64,
}

impl BrokerCpu {
    pub fn start(pid: Option<u32>) -> Option<BrokerCpu> {
        pid.map(|pid| BrokerCpu {
            pid,
            from: cpu_seconds(pid),
        })
    }

    /// CPU seconds (user + system) the broker used since `start`.
    pub fn used(&self) -> f64 {
        (cpu_seconds(self.pid) - self.from).max(0.0)
    }
}

/// CPU seconds (user + system) process `pid` has used so far; 0 when it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz.max(1.0)
}

/// A fresh resource name for a run: `portask-load-<pid>-<millis>`.
pub fn fresh_name() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("portask-load-{}-{}", std::process::id(), ms)
}

//! The result of one run: throughput, end-to-end and ack latency, the loss verdict and
//! errors, printed for a person and written as JSON for `compare.sh` and `load report`.
//!
//! Built on the main thread once producers and consumers have handed back their results.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ledger::{self, Receipts, Verdict};
use super::options::Workload;
use super::stats::{megabytes_per_second, per_second, Latency, LatencySummary};
use super::{Produced, Progress};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    pub messages: u64,
    pub seconds: f64,
    pub msg_per_s: f64,
    pub mb_per_s: f64,
}

/// Missing fields read as their defaults, so compare.sh can write a stub holding only
/// `scenario`, `target`, `protocol` and `unavailable`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub protocol: String,
    /// Where the broker was (URL without credentials, or bootstrap servers).
    pub broker: String,
    /// Every setting of the run, as given on the command line.
    pub settings: BTreeMap<String, String>,
    pub message_size: u32,
    /// Acknowledged by the broker, from the first send to the last acknowledgement.
    pub produce: Throughput,
    /// Distinct messages received, from the first send (with --prefill, from the start of
    /// the read) to the last receipt.
    pub consume: Throughput,
    /// The broker's CPU seconds (user + system) over the run (with --prefill, over the
    /// read), when its pid was known (`--broker-pid`, `--start-broker`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_cpu_s: Option<f64>,
    /// `broker_cpu_s` per message: per message received with --prefill, else per message
    /// sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_cpu_us_per_msg: Option<f64>,
    /// Sends the client or broker reported as failed.
    pub send_failures: u64,
    /// Messages handed to the client.
    pub sent: u64,
    /// End to end: from the send time a message carries to its receipt.
    pub latency: LatencySummary,
    /// Ack latency: from the send call to the broker's acknowledgement (Kafka delivery
    /// report, AMQP publisher confirm); absent when nothing was acknowledged by the broker
    /// (AMQP without confirms, Kafka acks=0) and in results written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_latency: Option<LatencySummary>,
    pub verdict: Verdict,
    /// Error messages and how often each occurred.
    pub errors: BTreeMap<String, u64>,
    /// Set instead of figures when the broker could not be tested (compare.sh stubs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// Nothing lost (the exit status of the run).
    pub passed: bool,
}

/// The parts a run hands to `Report::build`.
pub struct Outcome<'a> {
    pub protocol: &'a str,
    pub broker: String,
    pub workload: &'a Workload,
    pub settings: BTreeMap<String, String>,
    pub start_ns: u64,
    pub copies: usize,
    pub produced: Vec<Produced>,
    pub receipts: Receipts,
    pub latency: Latency,
    pub progress: &'a Progress,
}

impl Report {
    pub fn build(o: Outcome<'_>) -> Report {
        use std::sync::atomic::Ordering::Relaxed;
        let mut acked = vec![ledger::Sequences::default(); o.produced.len()];
        let mut ack_latency = Latency::new();
        for p in &o.produced {
            if let Some(slot) = acked.get_mut(p.producer as usize) {
                *slot = p.acked.sequences.clone();
            }
            ack_latency.merge(&p.acked.latency);
        }
        let verdict = ledger::verify(&acked, o.copies, &o.receipts);
        let size = o.workload.message_size;
        let acked_count: u64 = acked.iter().map(|s| s.len()).sum();
        let produce_ns = o
            .progress
            .last_ack_ns
            .load(Relaxed)
            .saturating_sub(o.start_ns);
        let read_start = o.progress.read_start_ns.load(Relaxed).max(o.start_ns);
        let consume_ns = o
            .progress
            .last_receive_ns
            .load(Relaxed)
            .saturating_sub(read_start);
        let mut settings = o.settings;
        settings.insert("producers".into(), o.workload.producers.to_string());
        settings.insert("consumers".into(), o.workload.consumers.to_string());
        settings.insert("message_size".into(), size.to_string());
        if let Some(n) = o.workload.message_limit() {
            settings.insert("messages".into(), n.to_string());
        }
        if let Some(r) = o.workload.rate {
            settings.insert("rate".into(), r.to_string());
        }
        if o.workload.prefill {
            settings.insert("prefill".into(), "true".into());
        }
        if let Some(d) = o.workload.duration {
            settings.insert("duration_s".into(), d.as_secs_f64().to_string());
        }
        let passed = verdict.lost == 0;
        Report {
            scenario: o.workload.scenario.clone(),
            target: o.workload.target.clone(),
            protocol: o.protocol.to_owned(),
            broker: o.broker,
            settings,
            message_size: size,
            produce: Throughput {
                messages: acked_count,
                seconds: produce_ns as f64 / 1e9,
                msg_per_s: per_second(acked_count, produce_ns),
                mb_per_s: megabytes_per_second(acked_count, size, produce_ns),
            },
            consume: Throughput {
                messages: verdict.received,
                seconds: consume_ns as f64 / 1e9,
                msg_per_s: per_second(verdict.received, consume_ns),
                mb_per_s: megabytes_per_second(verdict.received, size, consume_ns),
            },
            broker_cpu_s: None,
            broker_cpu_us_per_msg: None,
            send_failures: o.produced.iter().map(|p| p.failed).sum(),
            sent: o.produced.iter().map(|p| p.sent).sum(),
            latency: o.latency.summary(),
            ack_latency: (ack_latency.count() > 0).then(|| ack_latency.summary()),
            verdict,
            errors: o.progress.errors(),
            unavailable: None,
            passed,
        }
    }

    /// Records the broker's CPU seconds over the measured part of the run.
    pub fn set_broker_cpu(&mut self, seconds: f64, prefill: bool) {
        let per = if prefill {
            self.consume.messages
        } else {
            self.sent
        };
        self.broker_cpu_s = Some(seconds);
        self.broker_cpu_us_per_msg = Some(seconds * 1e6 / per.max(1) as f64);
    }

    /// A human-readable summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let v = &self.verdict;
        let label = if self.scenario.is_empty() {
            String::new()
        } else {
            format!(" [{}]", self.scenario)
        };
        s += &format!(
            "{}{label} against {} ({} B messages)\n",
            self.protocol, self.broker, self.message_size
        );
        s += &format!(
            "  produce  {:>10} msg  {:>8.2} s  {:>11.0} msg/s  {:>8.2} MB/s\n",
            self.produce.messages,
            self.produce.seconds,
            self.produce.msg_per_s,
            self.produce.mb_per_s
        );
        s += &format!(
            "  consume  {:>10} msg  {:>8.2} s  {:>11.0} msg/s  {:>8.2} MB/s\n",
            self.consume.messages,
            self.consume.seconds,
            self.consume.msg_per_s,
            self.consume.mb_per_s
        );
        s += &format!("  latency  {}\n", percentiles(&self.latency));
        if let Some(ack) = &self.ack_latency {
            s += &format!("  ack      {}\n", percentiles(ack));
        }
        s += &format!(
            "  verdict  expected {}  received {}  lost {}  duplicates {}  unacknowledged-received {}  foreign {}  send failures {}\n",
            v.expected, v.received, v.lost, v.duplicates, v.unacknowledged_received, v.foreign, self.send_failures
        );
        if !v.lost_examples.is_empty() {
            s += &format!(
                "  lost (copy/producer/seq): {}\n",
                v.lost_examples.join(", ")
            );
        }
        if let (Some(s_), Some(per)) = (self.broker_cpu_s, self.broker_cpu_us_per_msg) {
            let what = if self.settings.contains_key("prefill") {
                "received (the read)"
            } else {
                "sent"
            };
            s += &format!("  broker CPU  {s_:.2} s = {per:.2} µs per message {what}\n");
        }
        for (e, n) in &self.errors {
            s += &format!("  error ×{n}: {e}\n");
        }
        s += if self.passed {
            "  PASS: every acknowledged message was consumed\n"
        } else {
            "  FAIL: acknowledged messages were lost\n"
        };
        s
    }

    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }

    pub fn read_json(path: &Path) -> std::io::Result<Report> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
    }
}

/// One latency line's figures: `p50 … | p95 … | p99 … | p99.9 … | max …  (N samples)`.
fn percentiles(l: &LatencySummary) -> String {
    format!(
        "p50 {} | p95 {} | p99 {} | p99.9 {} | max {}  ({} samples)",
        fmt_us(l.p50_us),
        fmt_us(l.p95_us),
        fmt_us(l.p99_us),
        fmt_us(l.p999_us),
        fmt_us(l.max_us),
        l.count
    )
}

/// Microseconds shown with a unit that keeps 3–4 significant digits.
pub fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1_000_000.0)
    } else if us >= 1_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{us:.0} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_line_is_there_only_with_acks() {
        let mut r = Report {
            protocol: "amqp".into(),
            ..Report::default()
        };
        assert!(!r.render().contains("  ack "), "{}", r.render());
        r.ack_latency = Some(LatencySummary {
            count: 7,
            p50_us: 420.0,
            p99_us: 1_500.0,
            ..LatencySummary::default()
        });
        let text = r.render();
        let latency = text.find("  latency  p50").expect("latency line");
        let ack = text.find(
            "  ack      p50 420 µs | p95 0 µs | p99 1.50 ms | p99.9 0 µs | max 0 µs  (7 samples)\n",
        );
        assert!(ack.is_some_and(|a| a > latency), "{text}");
    }

    #[test]
    fn results_from_before_ack_latency_still_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("old.json");
        std::fs::write(
            &path,
            r#"{"scenario": "s", "latency": {"count": 3, "mean_us": 1.0, "p50_us": 1.0,
                "p95_us": 1.0, "p99_us": 1.0, "p999_us": 1.0, "max_us": 1.0}, "passed": true}"#,
        )
        .expect("write");
        let r = Report::read_json(&path).expect("an old result reads");
        assert_eq!((r.latency.count, &r.ack_latency), (3, &None));
        let back = serde_json::to_string(&r).expect("json");
        assert!(!back.contains("ack_latency"), "{back}");
    }

    #[test]
    fn latency_units() {
        assert_eq!(fmt_us(850.0), "850 µs");
        assert_eq!(fmt_us(12_340.0), "12.34 ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50 s");
    }
}

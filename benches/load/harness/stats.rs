//! The numbers a run reports: latency percentiles from an HDR histogram (end to end, and
//! send call to acknowledgement) and throughput from counts over elapsed time.
//!
//! Each consumer records end-to-end latencies into its own `Latency`, each producer its
//! ack latencies into another; the main thread merges them once the run is over, so
//! nothing is shared between threads while messages flow.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency kept exactly: one hour. Longer ones are clamped (and still counted).
const MAX_NS: u64 = 3_600 * 1_000_000_000;

/// Latencies in nanoseconds, 3 significant digits.
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        Latency {
            // The bounds are constants known to be valid (1 <= low, high >= 2·low, 3 digits).
            histogram: Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds"),
        }
    }

    /// Records one latency; zero (a clock tie) counts as 1 ns, over an hour as an hour.
    pub fn record(&mut self, ns: u64) {
        self.histogram.saturating_record(ns.max(1));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail; keep the call total anyway.
        if self.histogram.add(&other.histogram).is_err() {
            for v in other.histogram.iter_recorded() {
                self.histogram
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at `percentile` (0–100) in nanoseconds; 0 when nothing was recorded.
    pub fn percentile_ns(&self, percentile: f64) -> u64 {
        if self.histogram.is_empty() {
            return 0;
        }
        self.histogram
            .value_at_quantile((percentile / 100.0).clamp(0.0, 1.0))
    }

    pub fn summary(&self) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1_000.0;
        let empty = self.histogram.is_empty();
        LatencySummary {
            count: self.count(),
            mean_us: if empty {
                0.0
            } else {
                self.histogram.mean() / 1_000.0
            },
            p50_us: us(self.percentile_ns(50.0)),
            p95_us: us(self.percentile_ns(95.0)),
            p99_us: us(self.percentile_ns(99.0)),
            p999_us: us(self.percentile_ns(99.9)),
            max_us: if empty { 0.0 } else { us(self.histogram.max()) },
        }
    }
}

/// Latency percentiles in microseconds, as reported and written to JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Events per second over `elapsed_ns`; 0 for an empty interval.
pub fn per_second(count: u64, elapsed_ns: u64) -> f64 {
    if elapsed_ns == 0 {
        return 0.0;
    }
    count as f64 * 1e9 / elapsed_ns as f64
}

/// Megabytes (10^6 bytes) per second of message payload.
pub fn megabytes_per_second(count: u64, message_size: u32, elapsed_ns: u64) -> f64 {
    per_second(count, elapsed_ns) * message_size as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HDR keeps 3 significant digits: a reported value is within 0.1% of the exact one.
    fn close(actual: u64, exact: u64) -> bool {
        (actual as f64 - exact as f64).abs() <= exact as f64 * 0.001 + 1.0
    }

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut l = Latency::new();
        for us in 1..=10_000u64 {
            l.record(us * 1_000);
        }
        assert_eq!(l.count(), 10_000);
        for (p, exact_us) in [(50.0, 5_000), (95.0, 9_500), (99.0, 9_900), (99.9, 9_990)] {
            let got = l.percentile_ns(p);
            assert!(close(got, exact_us * 1_000), "p{p}: {got}");
        }
        assert!(close(l.percentile_ns(100.0), 10_000_000));
        let s = l.summary();
        assert!((s.mean_us - 5_000.5).abs() < 5.0, "{}", s.mean_us);
        assert!((s.max_us - 10_000.0).abs() < 10.0, "{}", s.max_us);
    }

    #[test]
    fn a_tail_shows_in_the_high_percentiles_only() {
        // 990 fast messages and 10 stalled ones: p99 is still fast, p99.9 and max see
        // the stall.
        let mut l = Latency::new();
        for _ in 0..990 {
            l.record(100_000);
        }
        for _ in 0..10 {
            l.record(2_000_000_000);
        }
        assert!(close(l.percentile_ns(50.0), 100_000));
        assert!(close(l.percentile_ns(99.0), 100_000));
        assert!(close(l.percentile_ns(99.9), 2_000_000_000));
        assert!(close(l.summary().max_us as u64, 2_000_000));
    }

    #[test]
    fn merge_equals_recording_in_one() {
        let (mut a, mut b, mut one) = (Latency::new(), Latency::new(), Latency::new());
        for v in 1..=500u64 {
            a.record(v * 7_919);
            one.record(v * 7_919);
        }
        for v in 1..=1_500u64 {
            b.record(v * 104_729);
            one.record(v * 104_729);
        }
        a.merge(&b);
        assert_eq!(a.summary(), one.summary());
    }

    #[test]
    fn empty_zero_and_huge_values() {
        let mut l = Latency::new();
        assert_eq!(l.summary(), LatencySummary::default());
        l.record(0);
        l.record(u64::MAX);
        assert_eq!(l.count(), 2);
        assert!(close(l.percentile_ns(100.0), MAX_NS));
    }

    #[test]
    fn throughput() {
        assert_eq!(per_second(1_000, 500_000_000), 2_000.0);
        assert_eq!(per_second(5, 0), 0.0);
        assert_eq!(megabytes_per_second(1_000, 1_000, 1_000_000_000), 1.0);
    }
}

//! When each producer sends: the open-loop rate schedule (`--rate`) or as fast as the
//! client allows, bounded by `--messages` and `--duration`.
//!
//! One `Schedule` per producer thread. With a rate, message i of producer k out of P is
//! due at `start + (i·P + k) / rate`: the producers interleave into one evenly spaced
//! stream, due times are computed from the index (never accumulated, so they do not
//! drift), and a producer that falls behind sends at once *with the due time as its
//! stamp*. Nothing is skipped and a stall is measured, not hidden (no coordinated
//! omission).

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Schedule {
    start_ns: u64,
    /// Nanoseconds between two messages of this producer; `None` = closed loop.
    interval_ns: Option<f64>,
    offset_ns: f64,
    /// Messages this producer sends (its share of --messages), `None` = until the deadline.
    count: Option<u64>,
    deadline_ns: Option<u64>,
}

/// What a producer does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send message `index` now, stamped `stamp_ns`.
    Send {
        index: u64,
        stamp_ns: u64,
    },
    /// Nothing is due before `until_ns`.
    Wait {
        until_ns: u64,
    },
    Done,
}

impl Schedule {
    /// The schedule of producer `k` out of `producers`, all starting at `start_ns`.
    pub fn new(
        start_ns: u64,
        producers: u32,
        k: u32,
        total_messages: Option<u64>,
        rate: Option<f64>,
        duration: Option<Duration>,
    ) -> Schedule {
        let p = producers.max(1) as u64;
        let k = k as u64 % p;
        let count = total_messages.map(|n| n / p + u64::from(k < n % p));
        let (interval_ns, offset_ns) = match rate {
            Some(r) if r > 0.0 => (Some(1e9 * p as f64 / r), 1e9 * k as f64 / r),
            _ => (None, 0.0),
        };
        Schedule {
            start_ns,
            interval_ns,
            offset_ns,
            count,
            deadline_ns: duration.map(|d| start_ns + d.as_nanos() as u64),
        }
    }

    /// Messages this producer will send at most (`None`: bounded by time only).
    pub fn count(&self) -> Option<u64> {
        self.count
    }

    /// When message `index` is due; `None` in closed loop.
    pub fn due_ns(&self, index: u64) -> Option<u64> {
        self.interval_ns
            .map(|iv| self.start_ns + (self.offset_ns + index as f64 * iv).round() as u64)
    }

    /// The next step for a producer that has sent `index` messages, at time `now_ns`.
    pub fn next(&self, index: u64, now_ns: u64) -> Next {
        if self.count.is_some_and(|c| index >= c) {
            return Next::Done;
        }
        match self.due_ns(index) {
            None => {
                if self.deadline_ns.is_some_and(|d| now_ns >= d) {
                    return Next::Done;
                }
                Next::Send {
                    index,
                    stamp_ns: now_ns,
                }
            }
            Some(due) => {
                // The deadline bounds the schedule, not the sender: a message due before it
                // is still sent when the producer is late.
                if self.deadline_ns.is_some_and(|d| due >= d) {
                    return Next::Done;
                }
                if due > now_ns {
                    Next::Wait { until_ns: due }
                } else {
                    Next::Send {
                        index,
                        stamp_ns: due,
                    }
                }
            }
        }
    }
}

/// Blocks the calling thread until `until_ns` on `now`'s clock: a thread sleep, with the
/// thread's timer slack cut from Linux's default 50 µs to 1 ns so the wake-up is not late by
/// it. It never spins: at 10 000 msg/s a spin for the last 100 µs before each send (as this
/// did before) kept one of the two vCPUs busy for the whole run, beside the broker under
/// test (`benches/results/2026-12-07-2vcpu-epyc/issue19-client-runtime/`). A wake-up
/// that comes late still stamps the message with its due time, so lateness is measured.
pub fn sleep_until(until_ns: u64, now: impl Fn() -> u64) {
    precise_sleeps();
    loop {
        let t = now();
        if t >= until_ns {
            return;
        }
        std::thread::sleep(Duration::from_nanos(until_ns - t));
    }
}

/// Sets the calling thread's timer slack to 1 ns, once per thread.
fn precise_sleeps() {
    thread_local! {
        static SET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !SET.get() {
        // Only an error where prctl is refused: the sleeps are then late by the default
        // slack, which the stamps measure.
        let _ = nix::sys::prctl::set_timerslack(1);
        SET.set(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due_all(s: &Schedule, n: u64) -> Vec<u64> {
        (0..n).map(|i| s.due_ns(i).unwrap()).collect()
    }

    #[test]
    fn producers_interleave_into_one_even_stream() {
        // 4 producers at 1000 msg/s in total: one message every millisecond overall.
        let mut all: Vec<u64> = (0..4)
            .flat_map(|k| due_all(&Schedule::new(0, 4, k, None, Some(1000.0), None), 250))
            .collect();
        all.sort_unstable();
        assert_eq!(all.len(), 1000);
        for (i, t) in all.iter().enumerate() {
            assert_eq!(*t, i as u64 * 1_000_000, "message {i}");
        }
    }

    #[test]
    fn due_times_do_not_drift() {
        // 3 msg/s has a non-terminating interval; the millionth message is still exact.
        let s = Schedule::new(5, 1, 0, None, Some(3.0), None);
        let due = s.due_ns(3_000_000).unwrap();
        assert_eq!(due, 5 + 1_000_000 * 1_000_000_000);
    }

    #[test]
    fn late_producer_sends_at_once_with_the_due_stamp() {
        let s = Schedule::new(1_000, 1, 0, None, Some(1000.0), None);
        // Early: wait for the due time.
        assert_eq!(
            s.next(2, 1_500),
            Next::Wait {
                until_ns: 2_001_000
            }
        );
        // Ten milliseconds late: send now, stamped with when it should have gone.
        assert_eq!(
            s.next(2, 12_000_000),
            Next::Send {
                index: 2,
                stamp_ns: 2_001_000
            }
        );
        // And the next one too: nothing is skipped.
        assert_eq!(
            s.next(3, 12_000_000),
            Next::Send {
                index: 3,
                stamp_ns: 3_001_000
            }
        );
    }

    #[test]
    fn messages_split_evenly_and_limits_end_the_run() {
        let counts: Vec<u64> = (0..3)
            .map(|k| {
                Schedule::new(0, 3, k, Some(10), None, None)
                    .count()
                    .unwrap()
            })
            .collect();
        assert_eq!(counts, vec![4, 3, 3]);
        let s = Schedule::new(0, 3, 2, Some(10), None, None);
        assert_eq!(s.next(3, 0), Next::Done);

        let timed = Schedule::new(0, 1, 0, None, None, Some(Duration::from_secs(1)));
        assert_eq!(
            timed.next(99, 5),
            Next::Send {
                index: 99,
                stamp_ns: 5
            }
        );
        assert_eq!(timed.next(100, 1_000_000_000), Next::Done);

        // 10 msg/s for 1 s: exactly ten messages are due, however late the sender is.
        let paced = Schedule::new(0, 1, 0, None, Some(10.0), Some(Duration::from_secs(1)));
        let sent = (0..).take_while(|i| paced.next(*i, u64::MAX / 2) != Next::Done);
        assert_eq!(sent.count(), 10);
    }

    #[test]
    fn sleep_until_reaches_the_time() {
        let start = std::time::Instant::now();
        let now = || start.elapsed().as_nanos() as u64;
        sleep_until(2_000_000, now);
        assert!(now() >= 2_000_000);
        // Its thread's wake-ups are not rounded up by Linux's default 50 µs slack.
        assert_eq!(nix::sys::prctl::get_timerslack(), Ok(1));
    }
}

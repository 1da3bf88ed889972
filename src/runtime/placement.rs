//! Where a connection is served: with the state it uses (a Kafka connection with its
//! partitions, an AMQP publisher with its queues). Protocol-free: each protocol says which
//! shards a request's work went to (`Follow::saw`) and moves its connection between two
//! requests (`runtime::listener::hand_over`).
//!
//! A connection starts on the shard whose socket accepted it (SO_REUSEPORT: the kernel's
//! choice). When its last `FOLLOW_AFTER` requests, over at least `FOLLOW_FOR`, all went to
//! one other shard, each of them crossed shards (there, and back with its answer): at
//! moderate rates a wake-up of each shard per request. The connection then moves to that
//! shard, where those requests cost no hop at all. A connection whose work lies on several
//! shards stays where it is.
//!
//! Two things keep a connection at full load where it is, where a request's work on one
//! shard and its partitions' or queues' work on the other use both cores and the hops are
//! shared by many records: large requests (`SMALL_REQUEST` on average over the run: a
//! producer batching its records), and a busy shard, which refuses it (`BUSY_LIMIT` of its
//! time running tasks, `offer`: over the last second, or since it when busier, so the
//! connection's own traffic of the last `FOLLOW_FOR` counts; `metrics::busy_lately`). A
//! refused or failed move is not tried again for `RETRY_AFTER`.
//!
//! `FOLLOW_FOR` is kept short: at a second, a publisher the kernel put apart from its queue
//! crossed shards for all of its first second (all of a 200 000-message run at full load),
//! at about a third more broker CPU per message
//! (`benches/results/2026-12-07-2vcpu-kvm/issue19-follow-sooner/`).
//!
//! A protocol may also ask for a move on its own grounds, before the request that would
//! start the crossing (an AMQP `basic.consume` on another shard's queue,
//! `amqp::connection::moving`); a refusal holds that back for `RETRY_AFTER` too
//! (`Follow::may_move`).
//!
//! `Follow` is one connection's record, kept on the connection's shard and touched only
//! there; the offer is one round trip to the other shard.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::core::Core;

/// Consecutive requests whose work all went to one other shard before a move.
pub const FOLLOW_AFTER: u32 = 32;
/// ...over at least this long.
pub const FOLLOW_FOR: Duration = Duration::from_millis(200);
/// ...whose payloads average less than this (bytes per request).
pub const SMALL_REQUEST: u64 = 64 * 1024;
/// A shard takes a connection only while it spent less than this share of its recent time
/// running tasks (`metrics::busy_lately`).
pub const BUSY_LIMIT: f64 = 0.5;
/// After a refused or failed move, the connection stays put this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Which shard one connection's recent requests sent their work to.
#[derive(Debug)]
pub struct Follow {
    /// The shard all of the last `run` requests went to, since `since`.
    shard: Cell<usize>,
    run: Cell<u32>,
    since: Cell<Instant>,
    /// The payload bytes of the run's requests.
    bytes: Cell<u64>,
    /// No move before this (a refused offer, a failed move).
    not_before: Cell<Option<Instant>>,
}

impl Follow {
    pub fn new(here: usize) -> Follow {
        Follow {
            shard: Cell::new(here),
            run: Cell::new(0),
            since: Cell::new(Instant::now()),
            bytes: Cell::new(0),
            not_before: Cell::new(None),
        }
    }

    /// Notes the shards one request's work went to (repeats allowed) and its payload's
    /// size: one shard continues or starts a run, several end it, none changes nothing.
    pub fn saw(&self, mut owners: impl Iterator<Item = usize>, bytes: usize) {
        let Some(first) = owners.next() else {
            return;
        };
        if owners.any(|o| o != first) {
            self.run.set(0);
        } else if first == self.shard.get() && self.run.get() > 0 {
            self.run.set(self.run.get().saturating_add(1));
            self.bytes
                .set(self.bytes.get().saturating_add(bytes as u64));
        } else {
            self.shard.set(first);
            self.run.set(1);
            self.since.set(Instant::now());
            self.bytes.set(bytes as u64);
        }
    }

    /// The shard to move to: the one the last `FOLLOW_AFTER` requests, over `FOLLOW_FOR`
    /// at least and `SMALL_REQUEST` at most on average, all went to, when it is not `here`
    /// and no refusal holds the connection back. Asked before every request: the clock is
    /// read only once a run is long enough.
    pub fn wanted(&self, here: usize) -> Option<usize> {
        self.candidate(here)
            .filter(|_| self.wanted_at(Instant::now()))
    }

    /// The run's shard, when it is not `here` and the run has `FOLLOW_AFTER` requests of
    /// `SMALL_REQUEST` on average (what needs no clock).
    fn candidate(&self, here: usize) -> Option<usize> {
        let (to, run) = (self.shard.get(), self.run.get());
        let small = self.bytes.get() / u64::from(run.max(1)) < SMALL_REQUEST;
        (to != here && run >= FOLLOW_AFTER && small).then_some(to)
    }

    /// The run has lasted `FOLLOW_FOR` at `now`, and no refusal holds the connection back.
    fn wanted_at(&self, now: Instant) -> bool {
        self.may_move(now) && now.saturating_duration_since(self.since.get()) >= FOLLOW_FOR
    }

    /// No refusal holds the connection back at `now` (for a move a protocol asks for on
    /// its own grounds, e.g. an AMQP consumer joining its queue's shard).
    pub fn may_move(&self, now: Instant) -> bool {
        self.not_before.get().is_none_or(|t| now >= t)
    }

    /// A move was refused or failed: not again for `RETRY_AFTER`, and only after a new run.
    pub fn refused(&self, now: Instant) {
        self.not_before.set(Some(now + RETRY_AFTER));
        self.run.set(0);
    }
}

/// Asks shard `to` whether it takes a connection now: it is not busy (`BUSY_LIMIT`) and
/// has room under `limits.max_connections_per_shard`. False when it cannot be reached.
pub async fn offer(core: &Rc<Core>, to: usize) -> bool {
    let taken = core
        .ask(to, |there: &Rc<Core>, reply| {
            let busy = crate::metrics::busy_lately();
            let room = there.clients.len() < there.config.limits.max_connections_per_shard;
            reply.send(busy < BUSY_LIMIT && room && !there.stopping.get());
        })
        .await;
    taken.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Follow::wanted` as it would answer at `now`.
    fn wanted(f: &Follow, here: usize, now: Instant) -> Option<usize> {
        f.candidate(here).filter(|_| f.wanted_at(now))
    }

    /// A moment at least `FOLLOW_FOR` after every run started so far.
    fn later() -> Instant {
        Instant::now() + FOLLOW_FOR
    }

    #[test]
    fn a_run_of_requests_to_one_other_shard_asks_for_a_move() {
        let f = Follow::new(0);
        for _ in 0..FOLLOW_AFTER - 1 {
            f.saw([1, 1].into_iter(), 100);
        }
        let now = later();
        assert_eq!(wanted(&f, 0, now), None, "one request short of a run");
        f.saw([1].into_iter(), 100);
        assert_eq!(wanted(&f, 0, now), Some(1));
        assert_eq!(
            wanted(&f, 0, now - FOLLOW_FOR / 2),
            None,
            "a run shorter than FOLLOW_FOR"
        );
        // Already there: nothing to do.
        assert_eq!(wanted(&f, 1, now), None);
    }

    #[test]
    fn partitions_on_several_shards_or_a_change_of_shard_restart_the_run() {
        let f = Follow::new(0);
        for _ in 0..FOLLOW_AFTER {
            f.saw([1].into_iter(), 100);
        }
        f.saw([1, 0].into_iter(), 100);
        assert_eq!(
            wanted(&f, 0, later()),
            None,
            "a request to two shards ends the run"
        );
        for _ in 0..FOLLOW_AFTER - 1 {
            f.saw([1].into_iter(), 100);
        }
        f.saw([2].into_iter(), 100);
        assert_eq!(wanted(&f, 0, later()), None, "a new shard starts a new run");
        // A request with no partition (all unknown topics) changes nothing.
        f.saw(std::iter::empty(), 100);
        for _ in 0..FOLLOW_AFTER - 1 {
            f.saw([2].into_iter(), 100);
        }
        assert_eq!(wanted(&f, 0, later()), Some(2));
    }

    #[test]
    fn large_requests_keep_a_connection_where_it_is() {
        let f = Follow::new(0);
        for _ in 0..FOLLOW_AFTER {
            f.saw([1].into_iter(), SMALL_REQUEST as usize);
        }
        assert_eq!(wanted(&f, 0, later()), None, "batches of 64 KiB on average");
        for _ in 0..FOLLOW_AFTER * 3 {
            f.saw([1].into_iter(), 0);
        }
        assert_eq!(wanted(&f, 0, later()), Some(1), "small on average, now");
    }

    #[test]
    fn a_refusal_holds_the_connection_back_then_needs_a_new_run() {
        let f = Follow::new(0);
        for _ in 0..FOLLOW_AFTER {
            f.saw([1].into_iter(), 100);
        }
        let now = later();
        f.refused(now);
        for _ in 0..FOLLOW_AFTER {
            f.saw([1].into_iter(), 100);
        }
        assert_eq!(wanted(&f, 0, now + RETRY_AFTER / 2), None);
        assert_eq!(wanted(&f, 0, now + RETRY_AFTER), Some(1));
    }
}

//! Offsets the server keeps for stream consumers, and single active consumer on streams
//! (issue 17; `docs/streams.md`, "Offsets the server keeps", "Single active consumer").
//!
//! - `x-consumer-group: G` on a stream consumer (`GroupArg`): its acks commit G's offset
//!   for the stream's topic and partition (a super stream's partition queue: its
//!   partition) in the Kafka group store (`kafka::groups`), as a
//!   commit from outside the group's membership (generation -1, no member id). The offset
//!   is Kafka's meaning: the next to read, i.e. the consumer's first unsettled delivery
//!   (`Ledger::prefix`). Commits are batched per (stream, group) by a `Cursor`: at most one
//!   in flight, sent `COMMIT_EVERY` after the first settle that moved the prefix, and at
//!   once when the consumer leaves (cancel, channel or connection close).
//! - A consumer of G without `x-stream-offset` starts at G's committed offset (`attach`,
//!   one hop to the group's coordinator shard), or at `next` when G has none. A group with
//!   live Kafka members refuses the consume (405 RESOURCE_LOCKED), as Kafka refuses a
//!   member-less commit on a group that is not Empty; a commit refused later (Kafka
//!   members joined) cancels the group's AMQP consumers of that stream.
//! - `x-single-active-consumer` streams (`Line`): among the consumers with the same group
//!   (and, separately, those with none) the first registered is active and the others wait
//!   (consume-ok, no deliveries). When the active one leaves, its acked prefix is committed
//!   and the next one starts there, so the old one's unacked deliveries come again, in
//!   order.
//!
//! Runs on the stream queue's AMQP owner shard, called by `stream::queue`; the one line
//! where work crosses to the group's coordinator shard is each `Shard::group` call.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use amq_protocol::types::AMQPValue;
use kafka_protocol::ResponseError;

use crate::amqp::mesh::Refusal;
use crate::amqp::reply;
use crate::broker::Shard;
use crate::catalog::amqp::tables::str_value;
use crate::kafka::groups::{CommitPart, Reply, Request};
use crate::util::notify::{Listener, Notify};

/// How long settles gather before a commit is sent (one commit per group and stream per
/// interval while acks arrive).
pub const COMMIT_EVERY: Duration = Duration::from_millis(20);

/// How many times in a row a refused commit (not for Kafka members) is tried again,
/// 100 ms apart.
const COMMIT_TRIES: u32 = 50;

/// A parsed `x-consumer-group` consumer argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupArg {
    pub group: String,
    /// No `x-stream-offset` was given: start at the group's committed offset.
    pub resume: bool,
}

/// Parses `x-consumer-group` (None when absent); `offset_given`: the consumer also has
/// `x-stream-offset`. The error is the 406 text.
pub fn parse(value: Option<&AMQPValue>, offset_given: bool) -> Result<Option<GroupArg>, String> {
    let Some(v) = value else {
        return Ok(None);
    };
    let group = match v {
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => str_value(v),
        _ => None,
    };
    match group {
        Some(group) if !group.is_empty() => Ok(Some(GroupArg {
            group,
            resume: !offset_given,
        })),
        _ => Err(format!(
            "PRECONDITION_FAILED - invalid x-consumer-group {v:?}: expected a non-empty string naming a Kafka consumer group"
        )),
    }
}

/// One consumer's deliveries in offset order, to find its acked prefix.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Delivered offsets (increasing) with whether each is settled; settled ones at the
    /// front are dropped.
    out: VecDeque<(i64, bool)>,
    /// The next offset the consumer reads; None until its start is resolved.
    position: Option<i64>,
}

impl Ledger {
    /// The reader is about to read from `offset` (its start, or past skipped records).
    pub fn read_from(&mut self, offset: i64) {
        self.position = Some(offset);
    }

    /// A record at `offset` was handed to the consumer.
    pub fn delivered(&mut self, offset: i64) {
        self.out.push_back((offset, false));
        self.position = Some(offset + 1);
    }

    /// The delivery of `offset` was acked (or nacked, rejected: a stream never gives it
    /// again to this consumer).
    pub fn settled(&mut self, offset: i64) {
        // Acks come mostly in delivery order: the first delivered is the one settled.
        if let Some(front) = self.out.front_mut().filter(|(o, _)| *o == offset) {
            front.1 = true;
        } else if let Ok(i) = self.out.binary_search_by_key(&offset, |(o, _)| *o) {
            self.out[i].1 = true;
        }
        while self.out.front().is_some_and(|(_, done)| *done) {
            self.out.pop_front();
        }
    }

    /// Kafka's committed offset for this consumer: its first unsettled delivery, or the
    /// next offset it reads when every delivery is settled. None before it started.
    pub fn prefix(&self) -> Option<i64> {
        self.out.front().map(|(o, _)| *o).or(self.position)
    }
}

/// A consumer's place among the consumers of its stream: its ledger and, under single
/// active consumer, whether it waits.
#[derive(Default)]
pub struct Seat {
    pub ledger: RefCell<Ledger>,
    /// Waiting its turn (single active consumer): no deliveries.
    pub standby: Cell<bool>,
    /// Made active after another consumer left: where that one stopped.
    pub takeover: Cell<Option<i64>>,
    /// Wakes the consumer's task when it is made active.
    pub turn: Notify,
}

/// The group's offset for one stream as this shard's consumers move it.
struct Cursor {
    group: String,
    topic: String,
    partition: i32,
    /// The offset to commit next (None: nothing new).
    wanted: Cell<Option<i64>>,
    last: Cell<Option<i64>>,
    urgent: Cell<bool>,
    running: Cell<bool>,
    idle: Notify,
}

/// The consumers of one stream with one group (or none), in registration order: the first
/// is active (single active consumer).
#[derive(Default)]
struct Line {
    seats: VecDeque<(u64, Rc<Seat>)>,
}

/// This shard's group cursors and single-active-consumer lines (in `stream::queue::Streams`).
#[derive(Default)]
pub struct Groups {
    /// Queue id → group → its cursor, while it has a commit to make.
    cursors: RefCell<HashMap<u64, HashMap<String, Rc<Cursor>>>>,
    lines: RefCell<HashMap<(u64, Option<String>), Line>>,
}

/// Puts a new consumer of a single-active-consumer stream in its line; it waits
/// (`standby`) unless it is first.
pub fn enlist(shard: &Shard, qid: u64, group: Option<&GroupArg>, cid: u64, seat: &Rc<Seat>) {
    let groups = &shard.amqp.streams.groups;
    let key = (qid, group.map(|g| g.group.clone()));
    let mut lines = groups.lines.borrow_mut();
    let line = lines.entry(key).or_default();
    seat.standby.set(!line.seats.is_empty());
    line.seats.push_back((cid, seat.clone()));
}

/// Consumer `cid` left (cancel, channel or connection close, stream deleted, refused):
/// with `commit`, its acked prefix is committed at once; under single active consumer the
/// next in line becomes active and starts there.
pub fn leave(
    shard: &Rc<Shard>,
    qid: u64,
    part: &(String, i32),
    group: Option<&GroupArg>,
    commit: bool,
    cid: u64,
    seat: &Seat,
) {
    let prefix = seat.ledger.borrow().prefix();
    if let (Some(g), Some(at), true) = (group, prefix, commit) {
        want(shard, qid, part, &g.group, at, true);
    }
    let groups = &shard.amqp.streams.groups;
    let key = (qid, group.map(|g| g.group.clone()));
    let mut lines = groups.lines.borrow_mut();
    let Some(line) = lines.get_mut(&key) else {
        return;
    };
    let was_active = line.seats.front().is_some_and(|(c, _)| *c == cid);
    line.seats.retain(|(c, _)| *c != cid);
    if was_active {
        if let Some((_, next)) = line.seats.front() {
            // A consumer that never started hands on nothing: the next resolves its own.
            next.takeover.set(prefix);
            next.standby.set(false);
            next.turn.notify();
        }
    }
    if line.seats.is_empty() {
        lines.remove(&key);
    }
}

/// The consumer's acked prefix moved: commit it soon (at once when `urgent`).
pub fn want(
    shard: &Rc<Shard>,
    qid: u64,
    part: &(String, i32),
    group: &str,
    offset: i64,
    urgent: bool,
) {
    let cursors = &shard.amqp.streams.groups.cursors;
    let found = cursors
        .borrow()
        .get(&qid)
        .and_then(|m| m.get(group))
        .cloned();
    let cursor = found.unwrap_or_else(|| {
        let c = Rc::new(Cursor {
            group: group.to_owned(),
            topic: part.0.clone(),
            partition: part.1,
            wanted: Cell::new(None),
            last: Cell::new(None),
            urgent: Cell::new(false),
            running: Cell::new(false),
            idle: Notify::new(),
        });
        cursors
            .borrow_mut()
            .entry(qid)
            .or_default()
            .insert(group.to_owned(), c.clone());
        c
    });
    if cursor.last.get() == Some(offset) && cursor.wanted.get().is_none() {
        return;
    }
    cursor.wanted.set(Some(offset));
    cursor.urgent.set(cursor.urgent.get() || urgent);
    if cursor.running.replace(true) {
        return;
    }
    let shard = shard.clone();
    glommio::spawn_local(async move {
        commit(&shard, qid, &cursor).await;
        cursor.running.set(false);
        cursor.idle.notify();
        let mut cursors = shard.amqp.streams.groups.cursors.borrow_mut();
        if let Some(m) = cursors.get_mut(&qid) {
            if m.get(&cursor.group).is_some_and(|c| Rc::ptr_eq(c, &cursor)) {
                m.remove(&cursor.group);
            }
            if m.is_empty() {
                cursors.remove(&qid);
            }
        }
    })
    .detach();
}

/// The cursor's commit loop: one commit in flight, the latest wanted offset each time.
async fn commit(shard: &Rc<Shard>, qid: u64, cursor: &Cursor) {
    let mut failures = 0;
    loop {
        if !cursor.urgent.replace(false) {
            glommio::timer::sleep(COMMIT_EVERY).await;
        }
        let Some(offset) = cursor.wanted.take() else {
            return;
        };
        if cursor.last.get() == Some(offset) {
            continue;
        }
        let req = Request::Commit {
            group: cursor.group.clone(),
            member_id: String::new(),
            instance_id: None,
            generation: -1,
            parts: vec![CommitPart {
                topic: cursor.topic.clone(),
                partition: cursor.partition,
                offset,
                leader_epoch: -1,
                metadata: None,
            }],
        };
        let code = match shard.group(&cursor.group, req).await {
            Reply::Commit(codes) => codes.first().copied().unwrap_or(0),
            Reply::Code(code) => code,
            _ => ResponseError::CoordinatorNotAvailable.code(),
        };
        if code == 0 {
            cursor.last.set(Some(offset));
            failures = 0;
            continue;
        }
        let locked = code == ResponseError::UnknownMemberId.code()
            || code == ResponseError::IllegalGeneration.code()
            || code == ResponseError::StaleMemberEpoch.code();
        if locked {
            log::warn!(
                "consumer group '{}' has Kafka members now: its AMQP consumers of stream '{}' are cancelled",
                cursor.group,
                cursor.topic
            );
            super::queue::cancel_group(shard, qid, &cursor.group);
            cursor.wanted.set(None);
            return;
        }
        // The store could not take it (disk, coordinator away): try again with the newest
        // offset, for a while (the next settle or leave starts again).
        failures += 1;
        log::warn!(
            "committing offset {offset} of group '{}' for stream '{}': Kafka error {code}",
            cursor.group,
            cursor.topic
        );
        if failures >= COMMIT_TRIES {
            return;
        }
        if cursor.wanted.get().is_none() {
            cursor.wanted.set(Some(offset));
        }
        glommio::timer::sleep(Duration::from_millis(100)).await;
    }
}

/// A consumer of `group` attaches to stream `qid` (partition `part`): once this shard's
/// pending commits of the group for the stream are done, the group's coordinator says
/// whether it has Kafka members (405) and gives the committed offset (None: none).
pub async fn attach(
    shard: &Rc<Shard>,
    qid: u64,
    part: &(String, i32),
    group: &str,
) -> Result<Option<i64>, Refusal> {
    loop {
        let cursor = shard
            .amqp
            .streams
            .groups
            .cursors
            .borrow()
            .get(&qid)
            .and_then(|m| m.get(group))
            .cloned();
        match cursor {
            Some(c) if c.running.get() => {
                let idle = Listener::new();
                idle.listen(&c.idle);
                if c.running.get() {
                    idle.await;
                }
            }
            _ => break,
        }
    }
    let req = Request::Position {
        group: group.to_owned(),
        topic: part.0.clone(),
        partition: part.1,
    };
    match shard.group(group, req).await {
        Reply::Fetch(0, offsets) => Ok(offsets
            .first()
            .map(|o| o.offset)
            .filter(|o| *o >= 0)),
        Reply::Fetch(code, _) | Reply::Code(code)
            if code == ResponseError::UnknownMemberId.code() =>
        {
            Err((
                reply::RESOURCE_LOCKED,
                format!(
                    "RESOURCE_LOCKED - consumer group '{group}' has active Kafka members: an AMQP consumer can commit its offsets only while it has none"
                ),
            ))
        }
        _ => Err((
            reply::INTERNAL_ERROR,
            format!("INTERNAL_ERROR - the coordinator of consumer group '{group}' did not answer"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_the_first_unsettled_delivery() {
        let mut l = Ledger::default();
        assert_eq!(l.prefix(), None);
        l.read_from(10);
        assert_eq!(l.prefix(), Some(10));
        for o in [10, 11, 13, 14] {
            l.delivered(o);
        }
        assert_eq!(l.prefix(), Some(10));
        l.settled(11);
        assert_eq!(l.prefix(), Some(10));
        l.settled(10);
        // 12 was never delivered (a control batch): the prefix jumps over it.
        assert_eq!(l.prefix(), Some(13));
        l.settled(14);
        l.settled(13);
        assert_eq!(l.prefix(), Some(15));
        l.read_from(20);
        assert_eq!(l.prefix(), Some(20));
        l.settled(99);
        assert_eq!(l.prefix(), Some(20));
    }

    #[test]
    fn group_argument_is_a_non_empty_string() {
        let s = |v: &str| AMQPValue::LongString(v.into());
        assert_eq!(parse(None, false), Ok(None));
        assert_eq!(
            parse(Some(&s("billing")), false),
            Ok(Some(GroupArg {
                group: "billing".into(),
                resume: true
            }))
        );
        assert_eq!(
            parse(Some(&AMQPValue::ShortString("g".into())), true),
            Ok(Some(GroupArg {
                group: "g".into(),
                resume: false
            }))
        );
        for bad in [s(""), AMQPValue::LongInt(3), AMQPValue::Boolean(true)] {
            let e = parse(Some(&bad), false).unwrap_err();
            assert!(e.starts_with("PRECONDITION_FAILED"), "{e}");
        }
    }
}

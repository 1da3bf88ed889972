//! A stream queue on its AMQP owner shard: the queue ops (`amqp::mesh::QueueOp`) for a
//! queue declared `x-queue-type: stream`, carried out on the Kafka topic of the same name
//! (partition 0; partition `k` of topic `NAME` for a super stream's partition queue
//! `NAME-k`, `superstream::locate`) instead of an AMQP ready list.
//!
//! - Publish: messages wait in the stream's `Appender` and leave as one record batch per
//!   turn (`record::record_of`, `storage::batch::encode_plain_batch`, the key as the
//!   queue's `x-stream-key` says), appended on the partition's owner shard with
//!   acks=all; each publisher is confirmed once the batch is durable (fdatasync), nacked
//!   when the disk refuses it (below `storage.min_free_bytes` the produce is refused at
//!   once: never a hang). Their bytes count in the shard's memory pressure until durable,
//!   so a flood is held back as for classic queues (`amqp::owner::relieve`).
//! - Consume: each consumer gets a `Reader` task that resolves its `x-stream-offset`,
//!   fetches from the partition's owner (`Shard::kafka`, the Fetch path) read-committed
//!   (below the last stable offset; the batches of aborted transactions dropped by
//!   `committed`), decodes the batches (`record::records_of`, any compression, control
//!   batches skipped) and hands
//!   the records to the consumer's connection shard (`ConnOp::DeliverRecords`), never
//!   more unacked than the consumer's prefetch. The connection frames each record from
//!   its stored bytes (`StoredRecord::parts`: a slice of an uncompressed fetch, no copy,
//!   no message built) and writes the `x-stream-offset` header every delivery carries
//!   into the content header (`record::put_stream_properties`). When caught up it
//!   waits on the owner's wait-for-data notification (`Request::WaitForData`), not on a
//!   timer.
//! - Settle (ack, nack, reject, with or without requeue) only returns credit: nothing is
//!   removed from the log. Stats: records in the log and consumers. Purge removes
//!   nothing (0). Delete deletes the topic, and the catalog drops the queue with it.
//!
//! Runs on the queue's AMQP owner shard (`amqp::queue_owner`), called from
//! `amqp::owner::apply_queue_op` before the classic-queue path; the one line where work
//! crosses to the partition's owner is each `Shard::kafka`/`kafka_dispatch` call.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use futures::future::select;
use kafka_protocol::records::Compression;
use kafka_protocol::ResponseError;

use super::delivered::{self, Delivered};
use super::group::{self, Seat};
use super::offset::StartAt;
use super::record::{self, KeyFrom, RecordError};
use crate::amqp::mesh::{ConfirmTo, ConnOp, ConsumerSpec, GetAnswer, QueueOp, RecordDelivery};
use crate::amqp::message::Message;
use crate::amqp::owner::delete_refused;
use crate::amqp::routing::QueueRef;
use crate::amqp::{outbox, reply};
use crate::broker::Shard;
use crate::catalog::amqp::Queue;
use crate::catalog::Change;
use crate::kafka::owner::{FetchPart, OffsetQuery, ProducePart, Reply, Request};
use crate::util::notify::{Listener, Notify};

/// The most a reader fetches at once.
const FETCH_BYTES: usize = 1 << 20;
/// The most message bytes the appender puts in one record batch (Kafka's default
/// `max.message.bytes` is 1 MiB; a larger single message goes alone and is refused by the
/// topic like a Kafka producer's, i.e. nacked).
const BATCH_BYTES: usize = 512 * 1024;
/// The most record bytes a reader inflates per fetch (at least one batch always).
const DECODE_BYTES: usize = 4 << 20;
/// How long one wait-for-data call lasts before the reader asks again (it also wakes at
/// once on credit, cancel or new data).
const WAIT: Duration = Duration::from_secs(10);

/// The stream queues' state on one shard (in `ShardAmqp::streams`).
#[derive(Default)]
pub struct Streams {
    readers: RefCell<HashMap<u64, Rc<Reader>>>,
    /// Delivery id → (consumer id, record offset), until settled (`stream::delivered`).
    delivered: RefCell<Delivered>,
    appenders: RefCell<HashMap<u64, Rc<Appender>>>,
    /// Ids of the stream queues this shard has seen ops for.
    known: RefCell<std::collections::HashSet<u64>>,
    /// Bytes of published messages not yet durable in a log (waiting in an appender, or
    /// appended and waiting for their write and fdatasync): counted in the shard's
    /// memory pressure (`amqp::owner::under_pressure`).
    waiting_bytes: Cell<usize>,
    /// Notified each time an appender's batch is durable or refused (its bytes freed).
    pub appended: Notify,
    /// `x-consumer-group` cursors and single-active-consumer lines.
    pub(super) groups: group::Groups,
}

impl Streams {
    /// Bytes of published messages not yet durable in a stream's log.
    pub fn waiting_bytes(&self) -> usize {
        self.waiting_bytes.get()
    }

    fn release(&self, bytes: usize) {
        self.waiting_bytes
            .set(self.waiting_bytes.get().saturating_sub(bytes));
        self.appended.notify();
    }
    /// Consumers of queue `qid` on this shard.
    pub fn consumers(&self, qid: u64) -> usize {
        self.readers
            .borrow()
            .values()
            .filter(|r| r.queue.id == qid)
            .count()
    }
}

/// One stream consumer.
struct Reader {
    queue: QueueRef,
    /// The Kafka topic and partition it reads.
    part: (String, i32),
    spec: ConsumerSpec,
    start: StartAt,
    unacked: Cell<u32>,
    prefetch: Cell<u32>,
    active: Cell<bool>,
    cancelled: Cell<bool>,
    wake: Notify,
    /// Its acked prefix and its turn (`stream::group`).
    seat: Rc<Seat>,
}

impl Reader {
    fn has_credit(&self) -> bool {
        self.active.get() && self.room() > 0
    }

    /// How many more deliveries its prefetch allows (`usize::MAX`: no limit).
    fn room(&self) -> usize {
        match self.prefetch.get() {
            0 => usize::MAX,
            p => p.saturating_sub(self.unacked.get()) as usize,
        }
    }
}

/// Messages published to one stream, waiting for the next batch.
#[derive(Default)]
struct Appender {
    waiting: RefCell<Vec<(Message, Option<ConfirmTo>)>>,
    running: Cell<bool>,
    /// What becomes the record key (the queue's `x-stream-key`).
    key_from: Cell<KeyFrom>,
}

/// The one vhost stream queues live in: a stream queue is the Kafka topic of its name,
/// and Kafka topics have no vhost. Declaring a stream elsewhere is refused (406).
pub const VHOST: &str = "/";

/// Whether `qref` names a stream queue (in this shard's catalog replica).
pub fn is_stream(shard: &Shard, qref: &QueueRef) -> bool {
    let state = shard.catalog.current();
    state
        .amqp
        .get(&*qref.vhost)
        .and_then(|t| t.queues.get(&*qref.name))
        .is_some_and(|d| d.id == qref.id && d.is_stream())
}

/// The Kafka topic and partition of a stream queue: partition 0 of the topic of its
/// name, or partition `k` of the super stream a partition queue belongs to
/// (`superstream::locate`).
pub fn topic_of(shard: &Shard, qref: &QueueRef) -> (String, i32) {
    super::superstream::locate(&shard.catalog.current(), &qref.vhost, &qref.name)
}

/// Carries out `op` if it is for a stream queue; otherwise hands it back.
pub fn apply(shard: &Rc<Shard>, op: QueueOp) -> Option<QueueOp> {
    let qref = match &op {
        QueueOp::Publish { queue, .. }
        | QueueOp::Consume { queue, .. }
        | QueueOp::Cancel { queue, .. }
        | QueueOp::Settle { queue, .. }
        | QueueOp::Credit { queue, .. }
        | QueueOp::Limits { queue, .. }
        | QueueOp::Get { queue, .. }
        | QueueOp::Stats { queue, .. }
        | QueueOp::Purge { queue, .. }
        | QueueOp::Delete { queue, .. } => queue,
        QueueOp::Barrier { .. } => return Some(op),
    };
    let known = shard.amqp.streams.known.borrow().contains(&qref.id);
    if !known {
        if shard.amqp.queue(qref.id).is_some() || !is_stream(shard, qref) {
            return Some(op);
        }
        shard.amqp.streams.known.borrow_mut().insert(qref.id);
    }
    let streams = &shard.amqp.streams;
    match op {
        QueueOp::Publish {
            queue,
            msg,
            confirm,
        } => publish(shard, queue, msg, confirm),
        QueueOp::Consume {
            queue,
            consumer,
            reply,
        } => {
            let r = Rc::new(Reader {
                part: topic_of(shard, &queue),
                start: consumer.stream_offset.unwrap_or(StartAt::Next),
                prefetch: Cell::new(consumer.prefetch_count),
                active: Cell::new(true),
                cancelled: Cell::new(false),
                unacked: Cell::new(0),
                wake: Notify::new(),
                seat: Rc::new(Seat::default()),
                queue,
                spec: consumer,
            });
            streams.readers.borrow_mut().insert(r.spec.cid, r.clone());
            streams.known.borrow_mut().insert(r.queue.id);
            if single_active(shard, &r.queue) {
                group::enlist(
                    shard,
                    r.queue.id,
                    r.spec.stream_group.as_ref(),
                    r.spec.cid,
                    &r.seat,
                );
            }
            // consume-ok once the start is fixed, so `next` misses nothing published after
            // (a waiting single active consumer: at once, its start is fixed on its turn).
            let shard = shard.clone();
            crate::amqp::spawn_later(async move {
                let mut committed = None;
                if let Some(g) = &r.spec.stream_group {
                    match group::attach(&shard, r.queue.id, &r.part, &g.group).await {
                        Ok(c) => committed = c.filter(|_| g.resume),
                        Err(refusal) => {
                            drop_reader(&shard, &r, false);
                            reply.send(Err(refusal));
                            return;
                        }
                    }
                }
                if r.seat.standby.get() {
                    reply.send(Ok(()));
                    while r.seat.standby.get() && !r.cancelled.get() {
                        let turn = Listener::new();
                        turn.listen(&r.seat.turn);
                        turn.listen(&r.wake);
                        if r.seat.standby.get() && !r.cancelled.get() {
                            turn.await;
                        }
                    }
                    if r.cancelled.get() {
                        return;
                    }
                    let at = r.seat.takeover.get().or(committed);
                    if let Some(offset) = resolve(&shard, &r, at).await {
                        read(shard, r, offset).await;
                    } else {
                        log::warn!("stream '{}': the log did not answer", r.queue.name);
                        drop_reader(&shard, &r, true);
                    }
                    return;
                }
                let at = r.seat.takeover.get().or(committed);
                let Some(offset) = resolve(&shard, &r, at).await else {
                    drop_reader(&shard, &r, false);
                    reply.send(Err((
                        reply::INTERNAL_ERROR,
                        format!(
                            "INTERNAL_ERROR - the log of stream '{}' did not answer",
                            r.queue.name
                        ),
                    )));
                    return;
                };
                reply.send(Ok(()));
                read(shard, r, offset).await;
            });
        }
        QueueOp::Cancel { cid, .. } => {
            let r = streams.readers.borrow().get(&cid).cloned();
            if let Some(r) = r {
                drop_reader(shard, &r, true);
            }
        }
        QueueOp::Settle { ids, how, .. } => {
            // A delivery that never reached the client (`Return`) stays unsettled: the
            // group's offset stops before it.
            let reached = how != crate::amqp::mesh::Settle::Return;
            // The readers whose deliveries were settled, in first-settled order: an ack
            // names one consumer's deliveries, so each id looks its reader up only when
            // the consumer changes, and each reader is woken once.
            let mut touched: Vec<Rc<Reader>> = Vec::new();
            {
                let mut delivered = streams.delivered.borrow_mut();
                let readers = streams.readers.borrow();
                let mut current: Option<(u64, Option<&Rc<Reader>>)> = None;
                for id in ids {
                    let Some((cid, offset)) = delivered.take(id) else {
                        continue;
                    };
                    if current.is_none_or(|(c, _)| c != cid) {
                        let r = readers.get(&cid);
                        if let Some(r) = r.filter(|_| !touched.iter().any(|t| t.spec.cid == cid)) {
                            touched.push(r.clone());
                        }
                        current = Some((cid, r));
                    }
                    let Some((_, Some(r))) = current else {
                        continue;
                    };
                    r.unacked.set(r.unacked.get().saturating_sub(1));
                    if reached {
                        r.seat.ledger.borrow_mut().settled(offset);
                    }
                }
            }
            for r in &touched {
                r.wake.notify();
            }
            let moved = touched
                .into_iter()
                .filter(|r| reached && r.spec.stream_group.is_some());
            for r in moved {
                let (Some(g), Some(at)) = (&r.spec.stream_group, r.seat.ledger.borrow().prefix())
                else {
                    continue;
                };
                group::want(shard, r.queue.id, &r.part, &g.group, at, false);
            }
        }
        // Connections send stream consumers no written-credit (`Channel::write_deliveries`);
        // only acks return credit.
        QueueOp::Credit { .. } => {}
        QueueOp::Limits {
            cid,
            prefetch_count,
            active,
            ..
        } => {
            if let Some(r) = streams.readers.borrow().get(&cid) {
                r.prefetch.set(prefetch_count);
                r.active.set(active);
                r.wake.notify();
            }
        }
        // basic.get is refused on the connection's shard; nothing to take here.
        QueueOp::Get { queue, reply, .. } => reply.send(GetAnswer { queue, got: None }),
        QueueOp::Stats { queue, reply } => {
            let shard = shard.clone();
            crate::amqp::spawn_later(async move {
                let consumers = shard.amqp.streams.consumers(queue.id) as u32;
                let records = bounds(&shard, &queue).await.map_or(0, |(start, end)| {
                    (end - start).clamp(0, u32::MAX as i64) as u32
                });
                reply.send(Some((records, consumers)));
            });
        }
        // A stream keeps its records: purge removes nothing.
        QueueOp::Purge { reply, .. } => reply.send(0),
        QueueOp::Delete {
            queue,
            if_unused,
            if_empty,
            reply,
        } => {
            let shard = shard.clone();
            crate::amqp::spawn_later(async move {
                let records = bounds(&shard, &queue).await.map_or(0, |(start, end)| {
                    (end - start).clamp(0, u32::MAX as i64) as u32
                });
                let in_use = if_unused && shard.amqp.streams.consumers(queue.id) > 0;
                if let Some(refused) = delete_refused(&queue, in_use, if_empty && records > 0) {
                    reply.send(Err(refused));
                    return;
                }
                let (topic, partition) = topic_of(&shard, &queue);
                if topic != *queue.name {
                    // One partition of a super stream: Kafka cannot delete a partition.
                    reply.send(Err((
                        reply::PRECONDITION_FAILED,
                        format!(
                            "PRECONDITION_FAILED - queue '{}' is partition {partition} of super stream '{topic}': delete the super stream (exchange.delete '{topic}', or the Kafka topic)",
                            queue.name
                        ),
                    )));
                    return;
                }
                // Deleting the topic deletes the queue with it (`CatalogState::apply`).
                let r = shard
                    .change_catalog(vec![Change::DeleteTopic(topic)], false)
                    .await;
                if let Some(Err(e)) = r.first() {
                    // e.g. `delete.topic.enable` off: the queue stays, and says why.
                    reply.send(Err((
                        reply::PRECONDITION_FAILED,
                        format!(
                            "PRECONDITION_FAILED - cannot delete stream '{}' (its Kafka topic): {e}",
                            queue.name
                        ),
                    )));
                    return;
                }
                reply.send(Ok((records, shard.catalog.current())));
            });
        }
        QueueOp::Barrier { .. } => {}
    }
    None
}

/// Called when a newer catalog is installed: readers of streams that are gone are told
/// their consumer was cancelled, and stop.
pub fn catalog_installed(shard: &Rc<Shard>) {
    // The topic is gone: nothing to commit.
    cancel_readers(shard, |r| !is_stream(shard, &r.queue));
    let streams = &shard.amqp.streams;
    if streams.known.borrow().is_empty() && streams.appenders.borrow().is_empty() {
        return;
    }
    let state = shard.catalog.current();
    let vhost = state.amqp.get(VHOST);
    let ids: std::collections::HashSet<u64> = vhost
        .map(|t| {
            t.queues
                .values()
                .filter(|q| q.is_stream())
                .map(|q| q.id)
                .collect()
        })
        .unwrap_or_default();
    streams.known.borrow_mut().retain(|qid| ids.contains(qid));
    streams
        .appenders
        .borrow_mut()
        .retain(|qid, a| a.running.get() || ids.contains(qid));
}

/// Whether stream `qref` was declared `x-single-active-consumer: true`.
fn single_active(shard: &Shard, qref: &QueueRef) -> bool {
    let state = shard.catalog.current();
    state
        .amqp
        .get(&*qref.vhost)
        .and_then(|t| t.queues.get(&*qref.name))
        .is_some_and(|d| d.id == qref.id && d.args.single_active_consumer)
}

/// A consumer leaves (cancel, channel or connection close, refused, stream gone): its
/// reader stops; with `commit`, its group's offset is committed at its acked prefix, and
/// the next consumer in its single-active line takes over (`group::leave`).
fn drop_reader(shard: &Rc<Shard>, r: &Rc<Reader>, commit: bool) {
    let streams = &shard.amqp.streams;
    if streams.readers.borrow_mut().remove(&r.spec.cid).is_none() {
        return;
    }
    r.cancelled.set(true);
    r.wake.notify();
    group::leave(
        shard,
        r.queue.id,
        &r.part,
        r.spec.stream_group.as_ref(),
        commit,
        r.spec.cid,
        &r.seat,
    );
}

/// The consumers of `group` on stream `qid` are cancelled by the broker (basic.cancel to
/// the client): the group has Kafka members now, so their acks can no longer commit.
pub fn cancel_group(shard: &Rc<Shard>, qid: u64, group: &str) {
    cancel_readers(shard, |r| {
        r.queue.id == qid
            && r.spec
                .stream_group
                .as_ref()
                .is_some_and(|g| g.group == group)
    });
}

/// The readers `which` picks stop without committing, and their consumers get
/// basic.cancel.
fn cancel_readers(shard: &Rc<Shard>, which: impl Fn(&Reader) -> bool) {
    let readers: Vec<Rc<Reader>> = shard
        .amqp
        .streams
        .readers
        .borrow()
        .values()
        .filter(|r| which(r))
        .cloned()
        .collect();
    for r in readers {
        drop_reader(shard, &r, false);
        outbox::push(
            shard,
            r.spec.shard,
            ConnOp::Cancelled {
                conn: r.spec.conn,
                channel: r.spec.channel,
                cid: r.spec.cid,
            },
        );
    }
}

/// (log start, high watermark) of the stream's partition.
async fn bounds(shard: &Rc<Shard>, queue: &QueueRef) -> Option<(i64, i64)> {
    let (topic, partition) = topic_of(shard, queue);
    partition_bounds(shard, &topic, partition).await
}

/// (log start, high watermark) of partition 0 of `topic`, from its owner shard (the
/// management API's figures for a stream queue).
pub async fn topic_bounds(shard: &Rc<Shard>, topic: &str) -> Option<(i64, i64)> {
    partition_bounds(shard, topic, 0).await
}

/// (log start, high watermark) of one partition, from its owner shard.
pub async fn partition_bounds(
    shard: &Rc<Shard>,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let r = fetch_topic(shard, topic.to_owned(), partition, i64::MAX).await?;
    Some((r.log_start_offset, r.high_watermark))
}

/// One consumer of a stream as the management API shows it (RabbitMQ's
/// `consumer_details`, with `active` and `activity_status`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerRow {
    pub consumer_tag: String,
    pub channel: u16,
    /// The shard of the consumer's connection.
    pub connection_shard: usize,
    pub prefetch_count: u32,
    pub unacked: u32,
    /// Gets deliveries: false while it waits its turn (single active consumer).
    pub active: bool,
    /// `up`, or under single active consumer `single_active` / `waiting`, as RabbitMQ.
    pub activity_status: &'static str,
    /// Its `x-consumer-group`.
    pub consumer_group: Option<String>,
    /// The offset its group would commit now: its first unsettled delivery.
    pub offset: Option<i64>,
}

/// `f` of the catalog's definition of queue `name` (vhost `/`), if there is one.
fn with_def<R>(shard: &Shard, name: &str, f: impl FnOnce(&Queue) -> R) -> Option<R> {
    let state = shard.catalog.current();
    state
        .amqp
        .get(VHOST)
        .and_then(|t| t.queues.get(name))
        .map(f)
}

/// The consumers of stream `name` (vhost `/`), asked of the queue's AMQP owner shard.
pub async fn consumer_rows(shard: &Rc<Shard>, name: &str) -> Vec<ConsumerRow> {
    let Some(id) = with_def(shard, name, |d| d.id) else {
        return Vec::new();
    };
    let owner = crate::amqp::queue_owner(id, shard.count);
    let name = name.to_owned();
    // The one hop to the queue's owner.
    shard
        .core
        .invoke_on::<Shard, _, _, _>(owner, move |s: &Rc<Shard>| {
            let rows = rows_here(s, &name);
            async move { rows }
        })
        .await
        .unwrap_or_default()
}

/// Every stream consumer on this shard (the AMQP owner of their queues), by queue name
/// (vhost `/`), in `consumer_rows`' form: the overview and management API gather them
/// with the shard's other figures (`http::stats::snapshot`).
pub fn consumers_here(shard: &Shard) -> Vec<(String, Vec<ConsumerRow>)> {
    let mut names: Vec<String> = (shard.amqp.streams.readers.borrow().values())
        .map(|r| r.queue.name.to_string())
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            let rows = rows_here(shard, &n);
            (n, rows)
        })
        .collect()
}

fn rows_here(shard: &Shard, name: &str) -> Vec<ConsumerRow> {
    let sac = with_def(shard, name, |d| d.args.single_active_consumer).unwrap_or(false);
    let mut rows: Vec<(u64, ConsumerRow)> = shard
        .amqp
        .streams
        .readers
        .borrow()
        .values()
        .filter(|r| &*r.queue.name == name)
        .map(|r| {
            let active = !r.seat.standby.get();
            let status = match (sac, active) {
                (false, _) => "up",
                (true, true) => "single_active",
                (true, false) => "waiting",
            };
            let row = ConsumerRow {
                consumer_tag: r.spec.tag.to_string(),
                channel: r.spec.channel,
                connection_shard: r.spec.shard,
                prefetch_count: r.prefetch.get(),
                unacked: r.unacked.get(),
                active,
                activity_status: status,
                consumer_group: r.spec.stream_group.as_ref().map(|g| g.group.clone()),
                offset: r.seat.ledger.borrow().prefix(),
            };
            (r.spec.cid, row)
        })
        .collect();
    rows.sort_by_key(|(cid, _)| *cid);
    rows.into_iter().map(|(_, r)| r).collect()
}

/// Per stream queue this shard owns: (qref, consumers, unacked deliveries).
pub fn figures(shard: &Shard) -> Vec<(QueueRef, u64, u64)> {
    let streams = &shard.amqp.streams;
    let mut out: HashMap<u64, (QueueRef, u64, u64)> = HashMap::new();
    for r in streams.readers.borrow().values() {
        let e = out
            .entry(r.queue.id)
            .or_insert_with(|| (r.queue.clone(), 0, 0));
        e.1 += 1;
        e.2 += r.unacked.get() as u64;
    }
    out.into_values().collect()
}

/// A read-committed fetch (READ_COMMITTED isolation: only below the last stable offset,
/// with the aborted transactions it overlaps) of the stream's partition at `offset`.
async fn fetch(
    shard: &Rc<Shard>,
    r: &Reader,
    offset: i64,
) -> Option<crate::kafka::owner::FetchResult> {
    fetch_topic(shard, r.part.0.clone(), r.part.1, offset).await
}

async fn fetch_topic(
    shard: &Rc<Shard>,
    topic: String,
    partition: i32,
    offset: i64,
) -> Option<crate::kafka::owner::FetchResult> {
    let owner = shard.owner_of(&topic, partition);
    let req = Request::Fetch {
        parts: vec![FetchPart {
            topic,
            partition,
            offset,
            max_bytes: FETCH_BYTES,
        }],
        read_committed: true,
    };
    match shard.kafka(owner, req).await {
        Reply::Fetch(mut rs) if !rs.is_empty() => Some(rs.remove(0)),
        _ => None,
    }
}

fn publish(shard: &Rc<Shard>, queue: QueueRef, msg: Message, confirm: Option<ConfirmTo>) {
    let appender = shard
        .amqp
        .streams
        .appenders
        .borrow_mut()
        .entry(queue.id)
        .or_insert_with(|| {
            let a = Appender::default();
            a.key_from.set(key_from(shard, &queue));
            Rc::new(a)
        })
        .clone();
    let streams = &shard.amqp.streams;
    streams
        .waiting_bytes
        .set(streams.waiting_bytes.get() + msg.size());
    appender.waiting.borrow_mut().push((msg, confirm));
    if !appender.running.replace(true) {
        crate::amqp::spawn_later(append(shard.clone(), queue, appender));
    }
}

/// The queue's `x-stream-key` (the default for a topic found as a stream, or when the
/// catalog no longer has the queue).
fn key_from(shard: &Shard, queue: &QueueRef) -> KeyFrom {
    let state = shard.catalog.current();
    state
        .amqp
        .get(&*queue.vhost)
        .and_then(|t| t.queues.get(&*queue.name))
        .filter(|d| d.id == queue.id)
        .and_then(|d| {
            super::args::key_from(&crate::catalog::amqp::tables::decode_table(&d.arguments)).ok()
        })
        .unwrap_or_default()
}

/// Drains one stream's waiting messages, a batch per turn, in publish order: each batch
/// is appended (the dispatch returns once it is in the log, so the next batch follows it)
/// and its publishers are confirmed once it is durable.
async fn append(shard: Rc<Shard>, queue: QueueRef, appender: Rc<Appender>) {
    let (topic, partition) = topic_of(&shard, &queue);
    loop {
        let batch = {
            // At most BATCH_BYTES of messages per batch (one message always), so a burst
            // stays under the topic's `max.message.bytes`.
            let mut waiting = appender.waiting.borrow_mut();
            let mut bytes = 0;
            let n = waiting
                .iter()
                .take_while(|(m, _)| {
                    let first = bytes == 0;
                    bytes += m.size().max(1);
                    first || bytes <= BATCH_BYTES
                })
                .count();
            waiting.drain(..n).collect::<Vec<_>>()
        };
        if batch.is_empty() {
            appender.running.set(false);
            return;
        }
        let waiting: usize = batch.iter().map(|(m, _)| m.size()).sum();
        let now = crate::util::now_ms();
        let confirms: Vec<ConfirmTo> = batch.iter().filter_map(|(_, c)| *c).collect();
        let n = batch.len() as u64;
        let encoded = crate::storage::batch::encode_plain_batch(
            batch
                .iter()
                .map(|(m, _)| record::record_of(m, appender.key_from.get(), now)),
            Compression::None,
        );
        let records = match encoded {
            Ok(b) => b,
            Err(e) => {
                log::error!("encoding a batch for stream '{}': {e}", queue.name);
                shard.amqp.streams.release(waiting);
                for c in confirms {
                    crate::amqp::owner::confirm_to(&shard, c, false);
                }
                continue;
            }
        };
        let bytes = records.len() as u64;
        let owner = shard.owner_of(&topic, partition);
        let done = shard
            .kafka_dispatch(
                owner,
                Request::Produce {
                    acks: -1,
                    parts: vec![ProducePart {
                        topic: topic.clone(),
                        partition,
                        records: Some(records),
                    }],
                },
            )
            .await;
        let shard2 = shard.clone();
        let name = queue.name.clone();
        let vhost = queue.vhost.clone();
        glommio::spawn_local(async move {
            let ok = match done.await {
                Reply::Produce(rs) => rs.first().is_some_and(|r| r.error == 0),
                _ => false,
            };
            // Durable (or refused): the batch's bytes, held until its write is done, no
            // longer count.
            shard2.amqp.streams.release(waiting);
            if ok {
                crate::metrics::with(|m| {
                    m.produced(crate::metrics::Protocol::Amqp, &name, n, bytes);
                    m.enqueued(&vhost, &name, n);
                });
            } else {
                log::warn!("appending to stream '{name}' failed: publishers nacked");
            }
            for c in confirms {
                crate::amqp::owner::confirm_to(&shard2, c, ok);
            }
        })
        .detach();
    }
}

/// The first offset the consumer reads: `at` (where its group or the consumer before it
/// stopped), clamped into the log, else what its `x-stream-offset` names.
async fn resolve(shard: &Rc<Shard>, r: &Reader, at: Option<i64>) -> Option<i64> {
    let ask = |timestamp: i64| {
        let (topic, partition) = r.part.clone();
        let owner = shard.owner_of(&topic, partition);
        shard.kafka(
            owner,
            Request::ListOffsets {
                parts: vec![OffsetQuery {
                    topic,
                    partition,
                    timestamp,
                    max_num_offsets: None,
                }],
                read_committed: false,
            },
        )
    };
    let answer = |reply: Reply| match reply {
        Reply::ListOffsets(mut a) if !a.is_empty() => Some(a.remove(0)),
        _ => None,
    };
    let ends = fetch(shard, r, i64::MAX).await?;
    let (start, end) = (ends.log_start_offset, ends.high_watermark);
    if let Some(at) = at {
        return Some(at.clamp(start, end));
    }
    Some(match r.start {
        StartAt::First => start,
        // As a read_committed Kafka consumer's "latest": the last stable offset, so the
        // records of a transaction open now arrive once it commits.
        StartAt::Next => ends.last_stable_offset.clamp(start, end),
        StartAt::Offset(n) => n.clamp(start, end),
        StartAt::Last => {
            if end <= start {
                end
            } else {
                // The fetch answers from the start of the batch holding the last record.
                let got = fetch(shard, r, end - 1).await?;
                let first = got.records.each().next().map(|(h, _)| h.base_offset);
                first.map_or(end - 1, |base| base.max(start))
            }
        }
        StartAt::Timestamp(ms) => {
            let a = answer(ask(ms).await)?;
            if a.error == 0 && a.offset >= 0 {
                a.offset
            } else {
                end
            }
        }
    })
}

/// One consumer's reading loop (see the module comment). Records decoded from a fetch
/// wait in `pending` until credit lets them go, so a fetch is decoded once however small
/// the prefetch (re-fetching from the first undelivered record re-read and re-decoded
/// the whole fetch each time credit came back); `offset` is where the next fetch starts,
/// past everything pending.
async fn read(shard: Rc<Shard>, r: Rc<Reader>, mut offset: i64) {
    let (topic, partition) = r.part.clone();
    let owner = shard.owner_of(&topic, partition);
    let mut pending: VecDeque<record::StoredRecord> = VecDeque::new();
    while !r.cancelled.get() {
        // The consumer's position: its first record not yet handed over.
        let position = pending.front().map_or(offset, |p| p.offset);
        r.seat.ledger.borrow_mut().read_from(position);
        let credit = Listener::new();
        credit.listen(&r.wake);
        if !r.has_credit() {
            credit.await;
            continue;
        }
        if !pending.is_empty() {
            deliver(&shard, &r, &mut pending, offset);
            // Let other tasks (acks, publishers) run between batches.
            glommio::yield_if_needed().await;
            continue;
        }
        let Some(got) = fetch(&shard, &r, offset).await else {
            glommio::timer::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if got.error == ResponseError::OffsetOutOfRange.code() {
            offset = if offset < got.log_start_offset {
                got.log_start_offset
            } else {
                got.high_watermark
            };
            continue;
        }
        if got.error == ResponseError::UnknownTopicOrPartition.code() {
            // The topic went away: the catalog hook cancels the consumer.
            credit.await;
            continue;
        }
        if got.error != 0 {
            log::warn!(
                "reading stream '{}': Kafka error {}",
                r.queue.name,
                got.error
            );
            glommio::timer::sleep(Duration::from_millis(100)).await;
            continue;
        }
        // Read committed: the records of aborted transactions are dropped here, those of
        // open ones were not fetched (the fetch stops at the last stable offset).
        let fetched = super::committed::committed(got.records.joined(), &got.aborted);
        let mut budget = DECODE_BYTES;
        // Nothing is pending here (a fetch follows only an empty `pending`): the records
        // are decoded into its buffer, whose capacity serves fetch after fetch.
        let mut records: Vec<_> = std::mem::take(&mut pending).into();
        let decoded = record::records_of(&fetched.batches, offset, &mut budget, &mut records);
        pending = records.into();
        let next = match decoded {
            Ok(next) => next,
            Err(e @ RecordError::Malformed { next_offset, .. }) => {
                // Skipped (logged), as a Kafka consumer cannot read it either.
                log::error!("stream '{}': {e}", r.queue.name);
                offset = next_offset.max(offset + 1);
                continue;
            }
        };
        if pending.is_empty() {
            let next = next.max(fetched.skipped_to);
            if next > offset {
                offset = next;
                continue;
            }
            // Caught up: the buffer is given back while the reader waits for the owner's
            // new-data notification (or credit/cancel).
            pending = VecDeque::new();
            let wait = shard.kafka(
                owner,
                Request::WaitForData {
                    parts: vec![(topic.clone(), partition, offset)],
                    max_wait: WAIT,
                    read_committed: true,
                },
            );
            let _ = select(Box::pin(wait), credit).await;
            continue;
        }
        offset = offset.max(next);
        deliver(&shard, &r, &mut pending, offset);
        // Let other tasks (acks, publishers) run between batches.
        glommio::yield_if_needed().await;
    }
}

/// Hands the consumer's connection shard as many of `pending` as its credit allows, in
/// offset order, in one `ConnOp::DeliverRecords` (one cross-shard hop for the lot);
/// records an `x-stream-filter` does not want are dropped without costing credit. `next`
/// is where the reader's next fetch starts: the consumer's position once nothing is
/// pending.
fn deliver(shard: &Rc<Shard>, r: &Reader, pending: &mut VecDeque<record::StoredRecord>, next: i64) {
    let mut items = Vec::with_capacity(pending.len().min(r.room()));
    let streams = &shard.amqp.streams;
    let mut batch = delivered::Batch::new(r.spec.cid);
    {
        let mut ledger = r.seat.ledger.borrow_mut();
        while !r.cancelled.get() && r.has_credit() {
            let Some(rec) = pending.pop_front() else {
                break;
            };
            // `x-stream-filter`: records it does not want cost no delivery or credit.
            if let Some(f) = &r.spec.stream_filter {
                if !f.matches(&rec) {
                    continue;
                }
            }
            let id = shard.amqp.next_id();
            let offset = rec.offset;
            if !batch.push(id, offset) {
                let full = std::mem::replace(&mut batch, delivered::Batch::new(r.spec.cid));
                streams.delivered.borrow_mut().add(full);
                batch.push(id, offset);
            }
            r.unacked.set(r.unacked.get() + 1);
            ledger.delivered(offset);
            items.push(RecordDelivery { id, record: rec });
        }
    }
    streams.delivered.borrow_mut().add(batch);
    let position = pending.front().map_or(next, |p| p.offset);
    r.seat.ledger.borrow_mut().read_from(position);
    if !items.is_empty() {
        let n = items.len() as u64;
        crate::metrics::with(|m| m.dequeued(&r.queue.vhost, &r.queue.name, n));
        outbox::push(
            shard,
            r.spec.shard,
            ConnOp::DeliverRecords {
                conn: r.spec.conn,
                channel: r.spec.channel,
                cid: r.spec.cid,
                queue: r.queue.clone(),
                records: items,
            },
        );
    }
}

//! Where AMQP envelopes arrive, and the glue between the shard and its queues: `serve`
//! applies a batch of `Op`s on this shard — `QueueOp`s on the queues it owns
//! (`apply_queue_op`), `ConnOp`s for the connections it holds (`apply_conn_op`).
//!
//! Queues are pure state machines (`queue::QueueState`); `with_queue` calls one with this
//! shard's `Env` (clock, config limits, memory held, the message store) and then carries out
//! the `Effects` it returns (`apply_effects`): ops into the outbox, dead-lettered messages
//! routed from the catalog replica, page-in reads, TTL and `x-expires` timers, memory
//! accounting and metrics. Every background task a queue needs is started here.
//!
//! Called synchronously by `Shard::amqp` (`amqp::ask`: on this shard, or on arrival here
//! from another shard) and from the outbox's flush task (ops for this shard), always in the
//! order they were queued. Answers leave through the ops' `ReplyTo`s, which never wait
//! (`runtime::reply`).
//!
//! Also where the owner follows its queues' store writes (`Stored`): the message store
//! hands back a durability future per append (`Effect::Stored`), and one task per shard
//! awaits them in order to send confirms, drop paged bodies and take back messages the
//! disk refused.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use super::mesh::{ConfirmTo, ConnOp, GetAnswer, Op, QueueOp, Request, Settle};
use super::message::Message;
use super::queue::dead_letter::DeadLetter;
use super::queue::{Effect, Effects, Env, Limits, QueueHandle, QueueState};
use super::routing::QueueRef;
use super::store::Location;
use super::{outbox, queue_owner, reply};
use crate::broker::Shard;
use crate::catalog::amqp::TopologyChange;
use crate::catalog::Change;
use crate::storage::journal::{Durable, Outcome};
use crate::util::now_ms;

/// Applies an envelope (of `bytes` of ops) from shard `from`'s outbox and gives credit
/// back when due (`outbox::received`): once relieved, while over the memory budget, so the
/// sender's publishers stay blocked meanwhile (its outbox counts the bytes until credited).
pub fn serve_credited(shard: &Rc<Shard>, from: usize, bytes: usize, req: Request) {
    serve(shard, req);
    let Some((n, bytes)) = outbox::received(shard, from, bytes) else {
        return;
    };
    let (shard, me) = (shard.clone(), shard.id);
    super::spawn_later(async move {
        relieve(&shard).await;
        let _ = shard
            .core
            .tell_on::<Shard>(from, move |sender| outbox::credit(sender, me, n, bytes))
            .await;
    });
}

/// Queued message bodies, with the records waiting to be written (a classic queue's or a
/// stream's), are over twice the shard's memory budget.
pub fn under_pressure(shard: &Shard) -> bool {
    shard.amqp.memory() + shard.amqp.store.pending_bytes() + shard.amqp.streams.waiting_bytes()
        > shard.config.amqp.memory_budget_bytes.saturating_mul(2)
}

/// Back-pressure for publishers: while the shard is over twice its budget and records
/// are waiting to be written (each round that writes them frees their bytes and pages
/// out the bodies they carry), waits for the store's rounds — so a flood is held to the
/// speed of the disk instead of piling up in memory. At most `RELIEVE_MAX_HOLD` in all,
/// and only one round when nothing is waiting (the memory is then unacked or unpageable
/// messages that only acks free, and acks travel in the envelopes this holds), so acks
/// and consumers are never blocked for long.
pub async fn relieve(shard: &Rc<Shard>) {
    let start = std::time::Instant::now();
    while under_pressure(shard) {
        let streams = &shard.amqp.streams;
        let paging = shard.amqp.store.pending_bytes() > 0 || streams.waiting_bytes() > 0;
        let l = crate::util::notify::Listener::new();
        l.listen(shard.amqp.store.round_done());
        l.listen(&streams.appended);
        let _ = glommio::timer::timeout(std::time::Duration::from_millis(200), async {
            l.await;
            Ok(())
        })
        .await;
        if !paging || start.elapsed() >= RELIEVE_MAX_HOLD {
            break;
        }
    }
}

/// The longest one envelope's reply is held for memory pressure.
const RELIEVE_MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(2);

pub fn serve(shard: &Rc<Shard>, req: Request) {
    match req {
        Request::Ops { catalog, ops } => {
            shard.install_catalog(catalog);
            let mut ops = ops.into_iter().peekable();
            while let Some(op) = ops.next() {
                match op {
                    Op::Queue(QueueOp::Publish {
                        queue,
                        msg,
                        confirm,
                    }) => match takes_together(shard, &queue) {
                        // This publish and the next ones to the same queue, taken in one
                        // call: the consumers are served once, after the last.
                        Some(q) => {
                            let more = std::iter::from_fn(|| {
                                match ops.next_if(|op| same_queue_publish(op, queue.id))? {
                                    Op::Queue(QueueOp::Publish { msg, confirm, .. }) => {
                                        Some((msg, confirm))
                                    }
                                    _ => None,
                                }
                            });
                            let msgs = std::iter::once((msg, confirm)).chain(more);
                            with_queue(shard, &q, |q, env, fx| q.publish_all(env, fx, msgs));
                        }
                        None => apply_queue_op(
                            shard,
                            QueueOp::Publish {
                                queue,
                                msg,
                                confirm,
                            },
                        ),
                    },
                    Op::Queue(op) => apply_queue_op(shard, op),
                    Op::Conn(op) => apply_conn_op(shard, op),
                }
            }
        }
    }
}

/// The classic queue `queue`, when it is here and takes the publishes of a run together
/// (`QueueState::takes_publishes_together`).
fn takes_together(shard: &Rc<Shard>, queue: &QueueRef) -> Option<QueueHandle> {
    let q = shard.amqp.queue(queue.id)?;
    let ok = {
        let state = q.borrow();
        !state.deleted && state.takes_publishes_together()
    };
    ok.then_some(q)
}

fn same_queue_publish(op: &Op, id: u64) -> bool {
    matches!(op, Op::Queue(QueueOp::Publish { queue, .. }) if queue.id == id)
}

/// The queue's state on its owner, created on first use when the catalog has it.
pub fn queue_for(shard: &Rc<Shard>, qref: &QueueRef) -> Option<QueueHandle> {
    if let Some(q) = shard.amqp.queue(qref.id) {
        let deleted = q.borrow().deleted;
        return (!deleted).then_some(q);
    }
    let state = shard.catalog.current();
    let def = state.amqp.get(&*qref.vhost)?.queues.get(&*qref.name)?;
    if def.id != qref.id || queue_owner(def.id, shard.count) != shard.id {
        return None;
    }
    let q = Rc::new(std::cell::RefCell::new(QueueState::new(
        qref.clone(),
        def.clone(),
        now_ms(),
    )));
    shard.amqp.insert_queue(qref.id, q.clone());
    if def.args.expires.is_some() {
        watch_expires(shard, qref.id);
    }
    Some(q)
}

fn not_found(q: &QueueRef) -> (u16, String) {
    (
        reply::NOT_FOUND,
        format!("NOT_FOUND - no queue '{}' in vhost '{}'", q.name, q.vhost),
    )
}

/// queue.delete's refusal as RabbitMQ words it (406), for a queue of any type: `in_use`
/// when `if-unused` was asked and it has consumers, `not_empty` when `if-empty` was asked
/// and it holds messages.
pub fn delete_refused(queue: &QueueRef, in_use: bool, not_empty: bool) -> Option<(u16, String)> {
    let why = if in_use {
        "in use"
    } else if not_empty {
        "is not empty"
    } else {
        return None;
    };
    Some((
        reply::PRECONDITION_FAILED,
        format!(
            "PRECONDITION_FAILED - queue '{}' in vhost '{}' {why}",
            queue.name, queue.vhost
        ),
    ))
}

/// Work for a queue this shard owns.
fn apply_queue_op(shard: &Rc<Shard>, op: QueueOp) {
    // A stream queue's ops go to its log instead.
    let Some(op) = crate::stream::queue::apply(shard, op) else {
        return;
    };
    match op {
        QueueOp::Publish {
            queue,
            msg,
            confirm,
        } => match queue_for(shard, &queue) {
            Some(q) => with_queue(shard, &q, |q, env, fx| q.publish(env, fx, msg, confirm)),
            // The queue went away meanwhile: like an unroutable message, confirmed.
            None => {
                if let Some(c) = confirm {
                    confirm_to(shard, c, true);
                }
            }
        },
        QueueOp::Consume {
            queue,
            consumer,
            reply,
        } => {
            let r = match queue_for(shard, &queue) {
                Some(q) => with_queue(shard, &q, |q, env, fx| q.consume(env, fx, consumer)),
                None => Err(not_found(&queue)),
            };
            reply.send(r);
        }
        QueueOp::Cancel { queue, cid } => {
            if let Some(q) = shard.amqp.queue(queue.id) {
                let auto_delete = with_queue(shard, &q, |q, env, fx| q.cancel(env, fx, cid));
                if auto_delete {
                    let shard = shard.clone();
                    super::spawn_later(async move {
                        delete_queue(&shard, &queue).await;
                    });
                }
            }
        }
        QueueOp::Settle { queue, ids, how } => {
            if let Some(q) = shard.amqp.queue(queue.id) {
                with_queue(shard, &q, |q, env, fx| q.settle(env, fx, ids, how));
            }
        }
        QueueOp::Credit {
            queue,
            cid,
            n,
            bytes,
        } => {
            if let Some(q) = shard.amqp.queue(queue.id) {
                with_queue(shard, &q, |q, env, fx| q.credit(env, fx, cid, n, bytes));
            }
        }
        QueueOp::Limits {
            queue,
            cid,
            prefetch_count,
            prefetch_bytes,
            active,
        } => {
            if let Some(q) = shard.amqp.queue(queue.id) {
                with_queue(shard, &q, |q, env, fx| {
                    q.set_limits(env, fx, cid, prefetch_count, prefetch_bytes, active)
                });
            }
        }
        QueueOp::Get {
            queue,
            no_ack,
            reply,
        } => {
            let Some(q) = queue_for(shard, &queue) else {
                reply.send(GetAnswer { queue, got: None });
                return;
            };
            if !q.borrow().head_paged() {
                let r = with_queue(shard, &q, |q, env, fx| q.get(env, fx, no_ack));
                reply.send(GetAnswer { queue, got: r });
                return;
            }
            // The head is on disk: read it back, then answer.
            let shard = shard.clone();
            super::spawn_later(async move {
                page_in_head(&shard, queue.id).await;
                let r = shard
                    .amqp
                    .queue(queue.id)
                    .and_then(|q| with_queue(&shard, &q, |q, env, fx| q.get(env, fx, no_ack)));
                reply.send(GetAnswer { queue, got: r });
            });
        }
        QueueOp::Stats { queue, reply } => {
            let r = queue_for(shard, &queue).map(|q| {
                let mut q = q.borrow_mut();
                q.touch(now_ms());
                q.stats()
            });
            reply.send(r);
        }
        QueueOp::Purge { queue, reply } => {
            let n = queue_for(shard, &queue)
                .map(|q| with_queue(shard, &q, |q, env, fx| q.purge(env, fx)))
                .unwrap_or(0);
            reply.send(n);
        }
        QueueOp::Delete {
            queue,
            if_unused,
            if_empty,
            reply,
        } => {
            let Some(q) = queue_for(shard, &queue) else {
                reply.send(Ok((0, shard.catalog.current())));
                return;
            };
            let (count, consumers) = {
                let q = q.borrow();
                (q.ready_len() as u32, q.has_consumers())
            };
            if let Some(refused) =
                delete_refused(&queue, if_unused && consumers, if_empty && count > 0)
            {
                reply.send(Err(refused));
                return;
            }
            let shard = shard.clone();
            super::spawn_later(async move {
                let state = delete_queue(&shard, &queue).await;
                reply.send(Ok((count, state)));
            });
        }
        QueueOp::Barrier { reply } => {
            reply.send(());
        }
    }
}

/// Deliveries that never reached the client (their consumer or connection was gone) go
/// back to their queue as they were.
pub fn give_back(shard: &Rc<Shard>, queue: QueueRef, ids: Vec<u64>) {
    let how = Settle::Return;
    outbox::push(shard, queue.owner, QueueOp::Settle { queue, ids, how });
}

/// Work for a connection this shard holds.
fn apply_conn_op(shard: &Rc<Shard>, op: ConnOp) {
    match op {
        ConnOp::Deliver {
            conn,
            channel,
            cid,
            queue,
            items,
        } => match shard.amqp.connection(conn) {
            Some(c) => c.deliver(channel, cid, queue, items),
            None => give_back(shard, queue, items.into_iter().map(|d| d.id).collect()),
        },
        ConnOp::DeliverRecords {
            conn,
            channel,
            cid,
            queue,
            records,
        } => match shard.amqp.connection(conn) {
            Some(c) => c.deliver_records(channel, cid, queue, records),
            None => give_back(shard, queue, records.into_iter().map(|d| d.id).collect()),
        },
        ConnOp::Confirm {
            conn,
            channel,
            seqs,
            ack,
        } => match shard.amqp.connection(conn) {
            Some(c) => c.confirmed(channel, seqs, ack),
            // Not a connection: a publish waiting without a channel (the HTTP API).
            None => shard.amqp.confirm_waits.confirmed(conn, seqs.len(), ack),
        },
        ConnOp::Cancelled { conn, channel, cid } => {
            if let Some(c) = shard.amqp.connection(conn) {
                c.consumer_cancelled(channel, cid);
            }
        }
        ConnOp::DirectReply { token, msg } => {
            if let Some(c) = shard.amqp.connection(token.conn) {
                super::direct_reply::deliver(&c, token, msg);
            }
        }
    }
}

/// The answer to a basic.get arrived on the asking shard after its asker left (the
/// channel closed, the HTTP client went away): the message goes back to its queue as it
/// was (a no-ack get's message is no longer in the queue's unacked map, so this is then a
/// no-op on the owner). Runs on the asking shard; the settle travels through the outbox.
pub fn unclaimed_get(shard: &Rc<Shard>, answer: GetAnswer) {
    if let Some((d, _)) = answer.got {
        let owner = answer.queue.owner;
        outbox::push(
            shard,
            owner,
            QueueOp::Settle {
                queue: answer.queue,
                ids: vec![d.id],
                how: Settle::Return,
            },
        );
    }
}

/// Deletes a queue through the catalog writer; the install hook then drops its state on
/// the owner. Returns the catalog state after the change.
pub async fn delete_queue(
    shard: &Rc<Shard>,
    qref: &QueueRef,
) -> std::sync::Arc<crate::catalog::CatalogState> {
    let change = Change::Amqp(TopologyChange::DeleteQueues {
        vhost: qref.vhost.to_string(),
        queues: vec![(qref.name.to_string(), qref.id)],
    });
    let r = shard.change_catalog(vec![change], false).await;
    if let Some(Err(e)) = r.first() {
        log::warn!("deleting queue '{}': {e}", qref.name);
    }
    shard.catalog.current()
}

/// Store writes this shard's queues wait for, in append order. As each one's `Durable`
/// resolves, its publisher is confirmed (ack; nack when the disk refused the write), a
/// paged-out body is dropped from memory once on disk, and a message whose write failed
/// leaves its queue (`QueueState::store_failed`), so nothing nacked is ever delivered
/// from disk or recovered later. One task drains it while anything waits.
#[derive(Default)]
pub struct Stored {
    waiting: RefCell<VecDeque<StoreWait>>,
    running: Cell<bool>,
}

struct StoreWait {
    qid: u64,
    seq: u64,
    confirm: Option<ConfirmTo>,
    /// The body leaves memory once written.
    page: bool,
    durable: Durable,
}

/// Follows a message the queue `qid` handed to `Store::append`.
pub fn await_stored(
    shard: &Rc<Shard>,
    qid: u64,
    seq: u64,
    durable: Durable,
    confirm: Option<ConfirmTo>,
    page: bool,
) {
    let stored = &shard.amqp.stored;
    stored.waiting.borrow_mut().push_back(StoreWait {
        qid,
        seq,
        confirm,
        page,
        durable,
    });
    if !stored.running.replace(true) {
        glommio::spawn_local(settle_stored(shard.clone())).detach();
    }
}

async fn settle_stored(shard: Rc<Shard>) {
    let stored = &shard.amqp.stored;
    loop {
        let front = stored.waiting.borrow().front().map(|w| w.durable.clone());
        let Some(front) = front else {
            stored.running.set(false);
            return;
        };
        front.wait().await;
        let mut done = Vec::new();
        {
            let mut waiting = stored.waiting.borrow_mut();
            while waiting
                .front()
                .is_some_and(|w| w.durable.outcome() != Outcome::Pending)
            {
                done.extend(waiting.pop_front());
            }
        }
        let mut paged: HashMap<u64, Vec<u64>> = HashMap::new();
        let mut failed: HashMap<u64, Vec<u64>> = HashMap::new();
        let mut confirms = Vec::new();
        for w in done {
            let ok = w.durable.outcome() == Outcome::Stored;
            if !ok {
                failed.entry(w.qid).or_default().push(w.seq);
            } else if w.page {
                paged.entry(w.qid).or_default().push(w.seq);
            }
            if let Some(c) = w.confirm {
                confirms.push((c, ok));
            }
        }
        for (qid, seqs) in paged {
            if let Some(q) = shard.amqp.queue(qid) {
                q.borrow_mut().drop_bodies(&shard, &seqs);
            }
        }
        for (c, ok) in confirms {
            confirm_to(&shard, c, ok);
        }
        for (qid, seqs) in failed {
            if let Some(q) = shard.amqp.queue(qid) {
                q.borrow_mut().store_failed(&shard, &seqs);
            }
        }
    }
}

/// The limits from this shard's config that its queues apply.
pub fn queue_limits(shard: &Shard) -> Limits {
    let a = &shard.config.amqp;
    Limits {
        consumer_window: a.consumer_window,
        consumer_window_bytes: a.consumer_window_bytes,
        memory_budget: a.memory_budget_bytes,
    }
}

/// The `Env` a queue call on this shard reads: now, the config limits, the memory its
/// queues hold, its message store.
fn env(shard: &Shard) -> Env<'_> {
    Env {
        now: now_ms(),
        limits: queue_limits(shard),
        memory: shard.amqp.memory(),
        store: &shard.amqp.store,
    }
}

/// Calls `f` on queue state `q` (borrowed by the caller) with this shard's `Env`, then
/// carries out the effects.
fn on_shard<R>(
    shard: &Rc<Shard>,
    q: &mut QueueState,
    f: impl FnOnce(&mut QueueState, &Env, &mut Effects) -> R,
) -> R {
    let mut fx = Effects::default();
    let r = f(q, &env(shard), &mut fx);
    apply_effects(shard, &q.qref, fx);
    r
}

/// Calls `f` on queue `q` with this shard's `Env`, then carries out the effects (with the
/// queue still borrowed, which `apply_effects` allows: no clone of its name per op).
pub fn with_queue<R>(
    shard: &Rc<Shard>,
    q: &QueueHandle,
    f: impl FnOnce(&mut QueueState, &Env, &mut Effects) -> R,
) -> R {
    on_shard(shard, &mut q.borrow_mut(), f)
}

/// Carries out what a call on queue `qref` asked for. Never borrows a queue synchronously
/// (every task it starts runs on a later turn), so it may run while the caller holds one.
pub fn apply_effects(shard: &Rc<Shard>, qref: &QueueRef, fx: Effects) {
    shard.amqp.add_memory(fx.memory);
    if fx.enqueued > 0 {
        crate::metrics::with(|m| m.enqueued(&qref.vhost, &qref.name, fx.enqueued));
    }
    if fx.dequeued > 0 {
        crate::metrics::with(|m| m.dequeued(&qref.vhost, &qref.name, fx.dequeued));
    }
    for e in fx.list {
        match e {
            Effect::Send { to, op } => outbox::push(shard, to, op),
            Effect::DeadLetter(dl) => match dl.paged {
                None => route_dead_letter(shard, qref, dl),
                Some((seq, loc)) => dead_letter_paged(shard, qref, dl, seq, loc),
            },
            Effect::PageIn(want) => page_in(shard, qref.clone(), want),
            Effect::WakeAt(at) => wake_at(shard, qref.id, at),
            Effect::WatchExpires => watch_expires(shard, qref.id),
            Effect::Stored(s) => await_stored(shard, qref.id, s.seq, s.durable, s.confirm, s.page),
        }
    }
}

/// Sends a confirm back to the publishing channel.
pub fn confirm_to(shard: &Rc<Shard>, c: ConfirmTo, ack: bool) {
    outbox::push(shard, c.shard, c.op(ack));
}

/// Routes a dead-lettered message from this shard's catalog replica and publishes it to
/// each matched queue's owner; a route that would cycle is dropped.
fn route_dead_letter(shard: &Rc<Shard>, qref: &QueueRef, mut dl: DeadLetter) {
    let router = shard.amqp.router(shard);
    let rk = String::from_utf8_lossy(dl.msg.routing_key()).into_owned();
    let mut headers = || {
        super::message::scan_properties(dl.msg.properties())
            .and_then(|v| v.headers)
            .map(super::message::decode_headers)
            .unwrap_or_default()
    };
    let Ok(targets) = router.route(&qref.vhost, &dl.exchange, &rk, &mut headers) else {
        log::debug!(
            "dead-letter exchange '{}' of queue '{}' does not exist: message dropped",
            dl.exchange,
            qref.name
        );
        return;
    };
    if targets.len() > 1 {
        dl.msg.routed_to_many();
    }
    for t in targets {
        if dl.cycles_to(&t.name) {
            log::debug!("dead-letter cycle to '{}': message dropped", t.name);
            continue;
        }
        outbox::push(
            shard,
            t.owner,
            QueueOp::Publish {
                queue: t,
                msg: dl.msg.clone(),
                confirm: None,
            },
        );
    }
}

/// Dead-letters a message whose body is on disk only: read back first, then routed, then
/// acked in the store.
fn dead_letter_paged(shard: &Rc<Shard>, qref: &QueueRef, dl: DeadLetter, seq: u64, loc: Location) {
    let (shard, qref) = (shard.clone(), qref.clone());
    super::spawn_later(async move {
        match shard.amqp.store.read(&qref, loc).await {
            Ok(body) => {
                let mut dl = dl;
                dl.msg.edit().set_body(body);
                route_dead_letter(&shard, &qref, dl);
            }
            Err(err) => log::error!("reading a paged message of '{}': {err}", qref.name),
        }
        shard.amqp.store.ack(&qref, seq);
    });
}

/// Reads paged-out messages back and hands them to their queue.
fn page_in(shard: &Rc<Shard>, qref: QueueRef, want: Vec<(u64, Location)>) {
    let shard = shard.clone();
    super::spawn_later(async move {
        // The first read opens the segment's read handle; the rest share it.
        let mut reads = Vec::with_capacity(want.len());
        if let Some((_, first)) = want.first() {
            reads.push(shard.amqp.store.read(&qref, *first).await);
        }
        let rest = want.iter().skip(1);
        reads.extend(
            futures::future::join_all(rest.map(|(_, loc)| shard.amqp.store.read(&qref, *loc)))
                .await,
        );
        let Some(q) = shard.amqp.queue(qref.id) else {
            return;
        };
        let reads = want.into_iter().map(|(seq, _)| seq).zip(reads).collect();
        with_queue(&shard, &q, |q, env, fx| q.paged_in(env, fx, reads));
    });
}

/// Reads the head of queue `qid` back from disk if it is paged out, and waits for it
/// (basic.get).
pub async fn page_in_head(shard: &Rc<Shard>, qid: u64) {
    for _ in 0..100 {
        let Some(q) = shard.amqp.queue(qid) else {
            return;
        };
        let paged = with_queue(shard, &q, |q, _, fx| {
            if !q.head_paged() {
                return false;
            }
            q.page_in(fx);
            true
        });
        if !paged {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// The TTL timer: wakes queue `qid` at `at`.
fn wake_at(shard: &Rc<Shard>, qid: u64, at: i64) {
    let shard = shard.clone();
    super::spawn_later(async move {
        let wait = (at - now_ms()).max(0) as u64;
        glommio::timer::sleep(Duration::from_millis(wait)).await;
        if let Some(q) = shard.amqp.queue(qid) {
            with_queue(&shard, &q, |q, env, fx| q.timer_fired(env, fx, at));
        }
    });
}

/// x-expires: deletes queue `qid` once it has had no consumers and no use for that long.
pub fn watch_expires(shard: &Rc<Shard>, qid: u64) {
    let shard = shard.clone();
    super::spawn_later(async move {
        loop {
            let due = match shard.amqp.queue(qid).and_then(|q| q.borrow().expires_at()) {
                Some(due) => due,
                None => return,
            };
            let now = now_ms();
            if now >= due {
                break;
            }
            glommio::timer::sleep(Duration::from_millis((due - now) as u64)).await;
        }
        let qref = match shard.amqp.queue(qid) {
            Some(q) => q.borrow().qref.clone(),
            None => return,
        };
        log::debug!("queue '{}' expired (x-expires)", qref.name);
        delete_queue(&shard, &qref).await;
    });
}

/// What the shard's message store and catalog hook call on a queue they hold borrowed
/// (`amqp::store`, `amqp::catalog_installed`): each runs the pure call with this shard's
/// `Env` and carries out its effects.
impl QueueState {
    /// The store wrote these messages: their bodies leave memory.
    pub fn drop_bodies(&mut self, shard: &Rc<Shard>, seqs: &[u64]) {
        on_shard(shard, self, |q, _, fx| q.bodies_written(fx, seqs));
    }

    /// The store could not write these messages (their publishers were nacked).
    pub fn store_failed(&mut self, shard: &Rc<Shard>, seqs: &[u64]) {
        on_shard(shard, self, |q, _, fx| q.refused_by_store(fx, seqs));
    }

    /// A message recovered from the store.
    pub fn restore(
        &mut self,
        shard: &Rc<Shard>,
        seq: u64,
        expires_at: Option<i64>,
        msg: Message,
        redelivered: bool,
        loc: Location,
    ) {
        on_shard(shard, self, |q, env, fx| {
            q.recovered(env, fx, seq, expires_at, msg, redelivered, loc)
        });
    }

    /// The queue is gone from the catalog.
    pub fn drop_all(&mut self, shard: &Rc<Shard>) {
        on_shard(shard, self, |q, _, fx| q.delete(fx));
    }
}

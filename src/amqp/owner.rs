//! Where AMQP envelopes arrive: `serve` applies a batch of `Op`s on this shard — queue
//! work on the queues it owns, deliveries and confirms for the connections it holds.
//!
//! Called synchronously by `Shard::amqp` (`amqp::ask`: on this shard, or on arrival here
//! from another shard) and from the outbox's flush task (ops for this shard), always in the
//! order they were queued. Answers leave
//! through the ops' `ReplyTo`s, which never wait (`runtime::reply`).
//!
//! Also where the owner follows its queues' store writes (`Stored`): the message store
//! hands back a durability future per append, and one task per shard awaits them in
//! order to send confirms, drop paged bodies and take back messages the disk refused.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use super::mesh::{ConfirmTo, GetAnswer, Op, Reply, Request, Settle};
use super::queue::{confirm_to, QueueHandle, QueueState};
use super::routing::QueueRef;
use super::topology::TopologyChange;
use super::{outbox, queue_owner, reply};
use crate::broker::Shard;
use crate::catalog::Change;
use crate::storage::journal::{Durable, Outcome};

/// An envelope from another shard: applied now; the reply (which lets the sender's
/// outbox send its next envelope) waits while this shard is under memory pressure.
pub fn serve_remote(shard: &Rc<Shard>, req: Request, reply: crate::runtime::reply::ReplyTo<Reply>) {
    let r = serve(shard, req);
    if !under_pressure(shard) {
        reply.send(r);
        return;
    }
    let shard = shard.clone();
    super::spawn_later(async move {
        relieve(&shard).await;
        reply.send(r);
    });
}

/// Queued message bodies, with the records waiting to be written, are over twice the
/// shard's memory budget.
pub fn under_pressure(shard: &Shard) -> bool {
    shard.amqp.memory() + shard.amqp.store.pending_bytes()
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
        let paging = shard.amqp.store.pending_bytes() > 0;
        let l = crate::util::notify::Listener::new();
        l.listen(shard.amqp.store.round_done());
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

pub fn serve(shard: &Rc<Shard>, req: Request) -> Reply {
    match req {
        Request::Ops { catalog, ops } => {
            shard.install_catalog(catalog);
            for op in ops {
                apply(shard, op);
            }
            Reply::Done
        }
    }
}

/// The queue's state on its owner, created on first use when the catalog has it.
pub fn queue_for(shard: &Rc<Shard>, qref: &QueueRef) -> Option<QueueHandle> {
    if let Some(q) = shard.amqp.queue(qref.id) {
        let deleted = q.borrow().deleted;
        return (!deleted).then_some(q);
    }
    let state = shard.catalog.current();
    let def = state.amqp.get(&*qref.vhost)?.queues.get(&*qref.name)?;
    if def.id != qref.id || queue_owner(&qref.vhost, &qref.name, shard.count) != shard.id {
        return None;
    }
    let q = Rc::new(std::cell::RefCell::new(QueueState::new(
        qref.clone(),
        def.clone(),
    )));
    shard.amqp.insert_queue(qref.id, q.clone());
    q.borrow().arm_expires(shard);
    Some(q)
}

fn not_found(q: &QueueRef) -> (u16, String) {
    (
        reply::NOT_FOUND,
        format!("NOT_FOUND - no queue '{}' in vhost '{}'", q.name, q.vhost),
    )
}

fn apply(shard: &Rc<Shard>, op: Op) {
    match op {
        Op::Publish {
            queue,
            msg,
            confirm,
        } => match queue_for(shard, &queue) {
            Some(q) => q.borrow_mut().publish(shard, msg, confirm),
            // The queue went away meanwhile: like an unroutable message, confirmed.
            None => {
                if let Some(c) = confirm {
                    confirm_to(shard, c, true);
                }
            }
        },
        Op::Consume {
            queue,
            consumer,
            reply,
        } => {
            let r = match queue_for(shard, &queue) {
                Some(q) => q.borrow_mut().consume(shard, consumer),
                None => Err(not_found(&queue)),
            };
            reply.send(r);
        }
        Op::Cancel { queue, cid } => {
            if let Some(q) = shard.amqp.queue(queue.id) {
                let auto_delete = q.borrow_mut().cancel(shard, cid);
                if auto_delete {
                    let shard = shard.clone();
                    super::spawn_later(async move {
                        delete_queue(&shard, &queue).await;
                    });
                }
            }
        }
        Op::Settle { queue, ids, how } => {
            if let Some(q) = shard.amqp.queue(queue.id) {
                q.borrow_mut().settle(shard, ids, how);
            }
        }
        Op::Credit {
            queue,
            cid,
            n,
            bytes,
        } => {
            if let Some(q) = shard.amqp.queue(queue.id) {
                q.borrow_mut().credit(shard, cid, n, bytes);
            }
        }
        Op::Limits {
            queue,
            cid,
            prefetch_count,
            prefetch_bytes,
            active,
        } => {
            if let Some(q) = shard.amqp.queue(queue.id) {
                q.borrow_mut()
                    .limits(shard, cid, prefetch_count, prefetch_bytes, active);
            }
        }
        Op::Get {
            queue,
            no_ack,
            reply,
        } => {
            let Some(q) = queue_for(shard, &queue) else {
                reply.send(GetAnswer { queue, got: None });
                return;
            };
            if !q.borrow().head_paged() {
                let r = q.borrow_mut().get(shard, no_ack);
                reply.send(GetAnswer { queue, got: r });
                return;
            }
            // The head is on disk: read it back, then answer.
            let shard = shard.clone();
            super::spawn_later(async move {
                QueueState::page_in_head(&shard, queue.id).await;
                let r = shard
                    .amqp
                    .queue(queue.id)
                    .and_then(|q| q.borrow_mut().get(&shard, no_ack));
                reply.send(GetAnswer { queue, got: r });
            });
        }
        Op::Stats { queue, reply } => {
            let r = queue_for(shard, &queue).map(|q| {
                let mut q = q.borrow_mut();
                q.touch();
                q.stats()
            });
            reply.send(r);
        }
        Op::Purge { queue, reply } => {
            let n = queue_for(shard, &queue)
                .map(|q| q.borrow_mut().purge(shard))
                .unwrap_or(0);
            reply.send(n);
        }
        Op::Delete {
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
            if if_unused && consumers {
                reply.send(Err((
                    reply::PRECONDITION_FAILED,
                    format!(
                        "PRECONDITION_FAILED - queue '{}' in vhost '{}' in use",
                        queue.name, queue.vhost
                    ),
                )));
                return;
            }
            if if_empty && count > 0 {
                reply.send(Err((
                    reply::PRECONDITION_FAILED,
                    format!(
                        "PRECONDITION_FAILED - queue '{}' in vhost '{}' is not empty",
                        queue.name, queue.vhost
                    ),
                )));
                return;
            }
            let shard = shard.clone();
            super::spawn_later(async move {
                let state = delete_queue(&shard, &queue).await;
                reply.send(Ok((count, state)));
            });
        }
        Op::Barrier { reply } => {
            reply.send(());
        }
        Op::Deliver {
            conn,
            channel,
            cid,
            queue,
            items,
        } => match shard.amqp.connection(conn) {
            Some(c) => c.deliver(channel, cid, queue, items),
            None => {
                let ids = items.into_iter().map(|d| d.id).collect();
                outbox::push(
                    shard,
                    queue.owner,
                    Op::Settle {
                        queue,
                        ids,
                        how: Settle::Return,
                    },
                );
            }
        },
        Op::Confirm {
            conn,
            channel,
            seqs,
            ack,
        } => match shard.amqp.connection(conn) {
            Some(c) => c.confirmed(channel, seqs, ack),
            // Not a connection: a publish waiting without a channel (the HTTP API).
            None => shard.amqp.confirm_waits.confirmed(conn, seqs.len(), ack),
        },
        Op::Cancelled { conn, channel, cid } => {
            if let Some(c) = shard.amqp.connection(conn) {
                c.consumer_cancelled(channel, cid);
            }
        }
        Op::DirectReply { token, msg } => {
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
            Op::Settle {
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

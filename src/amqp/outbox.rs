//! `Outbox`: the per-shard queue of AMQP ops waiting to go to each shard (this one
//! included), and the flush tasks that send them as one envelope per destination.
//!
//! Everything one shard's AMQP code sends anywhere goes through here, in order, so per
//! (sender, destination) the ops arrive in the order they were made: a channel's publish is
//! applied before its later basic.get, a delivery before the cancel that follows it. Ops
//! queued in one scheduler turn leave together; under load batches grow by themselves.
//!
//! Envelopes to another shard are not answered one by one: each wake-up of the other
//! shard's thread costs far more than the ops (an answer per envelope doubled the
//! cross-shard wake-ups of every message at moderate rates). Instead a sender may have
//! `WINDOW` envelopes unanswered per destination, and the destination gives them back as
//! credit, every `CREDIT_EVERY` envelopes or `credit_bytes` of ops (`owner::serve_credited`).
//! An envelope's bytes count in the sender's outbox until credited, so the outbox budget
//! (`limits.connection_inflight_bytes`, which blocks publishers) bounds what is queued and
//! in flight together; a destination over its memory budget holds the credit back until
//! relieved, which keeps the senders' publishers blocked, as an unanswered envelope did.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::mesh::{Op, QueueOp, Request};
use crate::broker::Shard;
use crate::util::notify::{Listener, Notify};

/// Envelopes a shard may have unanswered per destination.
pub const WINDOW: usize = 16;
/// A destination gives credit back after this many envelopes from one sender.
pub const CREDIT_EVERY: usize = WINDOW / 2;

pub struct Outbox {
    queued: RefCell<Vec<Vec<Op>>>,
    flushing: RefCell<Vec<bool>>,
    bytes: Cell<usize>,
    /// Fired whenever queued bytes go down.
    pub drained: Notify,
    /// Envelopes sent to each shard and not yet credited back.
    unanswered: RefCell<Vec<usize>>,
    /// Fired when credit comes back.
    credited: Notify,
    /// Envelopes (and their ops' bytes) received from each shard and not yet credited
    /// back to it.
    owed: RefCell<Vec<(usize, usize)>>,
}

impl Outbox {
    pub fn new(shards: usize) -> Outbox {
        Outbox {
            queued: RefCell::new((0..shards).map(|_| Vec::new()).collect()),
            flushing: RefCell::new(vec![false; shards]),
            bytes: Cell::new(0),
            drained: Notify::new(),
            unanswered: RefCell::new(vec![0; shards]),
            credited: Notify::new(),
            owed: RefCell::new(vec![(0, 0); shards]),
        }
    }

    /// Payload bytes queued, or sent to another shard and not yet credited back.
    pub fn bytes(&self) -> usize {
        self.bytes.get()
    }
}

/// Queues `op` for shard `to` and makes sure a flush is on its way.
pub fn push(shard: &Rc<Shard>, to: usize, op: impl Into<Op>) {
    let op: Op = op.into();
    let ob = &shard.amqp.outbox;
    ob.bytes.set(ob.bytes.get() + op.bytes());
    {
        let mut q = ob.queued.borrow_mut();
        let Some(list) = q.get_mut(to) else {
            return;
        };
        let rest = match list.last_mut() {
            Some(last) => last.merge(op),
            None => Some(op),
        };
        if let Some(op) = rest {
            list.push(op);
        }
    }
    let start = {
        let mut f = ob.flushing.borrow_mut();
        let start = !f[to];
        f[to] = true;
        start
    };
    if start {
        super::spawn_later(flush(shard.clone(), to));
    }
}

async fn flush(shard: Rc<Shard>, to: usize) {
    let ob = &shard.amqp.outbox;
    loop {
        if to != shard.id && !window_open(&shard, to).await {
            // Stopping: what is queued goes nowhere.
            ob.flushing.borrow_mut()[to] = false;
            return;
        }
        // The next batch starts with room for as many ops as this one: grown from
        // nothing, its pushes would reallocate and copy it several times.
        let ops = {
            let mut q = ob.queued.borrow_mut();
            let n = q[to].len();
            std::mem::replace(&mut q[to], Vec::with_capacity(n))
        };
        if ops.is_empty() {
            ob.flushing.borrow_mut()[to] = false;
            return;
        }
        let bytes: usize = ops.iter().map(Op::bytes).sum();
        // The one place AMQP work crosses to another shard (a local call for this one).
        let req = Request::Ops {
            catalog: shard.catalog.current(),
            ops,
        };
        if to == shard.id {
            handed_over(ob, bytes);
            super::owner::serve(&shard, req);
            super::owner::relieve(&shard).await;
        } else {
            ob.unanswered.borrow_mut()[to] += 1;
            let from = shard.id;
            let sent = shard
                .core
                .tell_on::<Shard>(to, move |dest| {
                    super::owner::serve_credited(dest, from, bytes, req)
                })
                .await;
            if sent.is_err() {
                // Never arrives, so never credited.
                ob.unanswered.borrow_mut()[to] -= 1;
                handed_over(ob, bytes);
            }
        }
        glommio::yield_if_needed().await;
    }
}

/// Waits while `WINDOW` envelopes to `to` are unanswered; false once the shard stops.
async fn window_open(shard: &Rc<Shard>, to: usize) -> bool {
    let ob = &shard.amqp.outbox;
    loop {
        if ob.unanswered.borrow()[to] < WINDOW {
            return true;
        }
        if shard.stopping.get() {
            return false;
        }
        let l = Listener::new();
        l.listen(&ob.credited);
        l.listen(&shard.stop);
        if ob.unanswered.borrow()[to] < WINDOW || shard.stopping.get() {
            continue;
        }
        l.await;
    }
}

/// `bytes` of ops left this shard's hands (applied here, or credited back).
fn handed_over(ob: &Outbox, bytes: usize) {
    ob.bytes.set(ob.bytes.get().saturating_sub(bytes));
    ob.drained.notify();
}

/// Owed bytes past which a destination gives credit back at once. What all destinations
/// may owe one sender together stays under a quarter of its outbox budget, so bytes
/// awaiting credit alone never block its publishers (which would send nothing more, and
/// so never earn the credit).
pub fn credit_bytes(shard: &Shard) -> usize {
    (shard.config.limits.connection_inflight_bytes / (4 * shard.count.max(1))).max(1)
}

/// On the destination, after applying an envelope of `bytes` from `from`: counts it, and
/// says what credit (envelopes, bytes) is due back now.
pub fn received(shard: &Shard, from: usize, bytes: usize) -> Option<(usize, usize)> {
    let credit_bytes = credit_bytes(shard);
    let mut owed = shard.amqp.outbox.owed.borrow_mut();
    let o = owed.get_mut(from)?;
    o.0 += 1;
    o.1 += bytes;
    (o.0 >= CREDIT_EVERY || o.1 >= credit_bytes).then(|| std::mem::take(o))
}

/// On the sender: `n` envelopes of `bytes` to `from` were applied there.
pub fn credit(shard: &Shard, from: usize, n: usize, bytes: usize) {
    let ob = &shard.amqp.outbox;
    if let Some(u) = ob.unanswered.borrow_mut().get_mut(from) {
        *u = u.saturating_sub(n);
    }
    handed_over(ob, bytes);
    ob.credited.notify();
}

/// Waits until every op queued so far for shard `to` has been applied there (settles
/// made visible before an answer that depends on them).
pub async fn barrier(shard: &Rc<Shard>, to: usize) {
    let (reply, answer) = shard.expect::<()>();
    push(shard, to, QueueOp::Barrier { reply });
    let _ = answer.await;
}

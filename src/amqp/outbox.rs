//! `Outbox`: the per-shard queue of AMQP ops waiting to go to each shard (this one
//! included), and the flush tasks that send them as one envelope per destination.
//!
//! Everything one shard's AMQP code sends anywhere goes through here, in order, so per
//! (sender, destination) the ops arrive in the order they were made: a channel's publish is
//! applied before its later basic.get, a delivery before the cancel that follows it. Ops
//! queued while an envelope is in flight wait for its reply and leave together with the
//! next one, so under load batches grow by themselves (one envelope in flight per
//! destination), and when idle an op leaves on the next scheduler turn.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::mesh::{Op, QueueOp, Request};
use crate::broker::Shard;
use crate::util::notify::Notify;

pub struct Outbox {
    queued: RefCell<Vec<Vec<Op>>>,
    flushing: RefCell<Vec<bool>>,
    bytes: Cell<usize>,
    /// Fired whenever queued bytes go down.
    pub drained: Notify,
}

impl Outbox {
    pub fn new(shards: usize) -> Outbox {
        Outbox {
            queued: RefCell::new((0..shards).map(|_| Vec::new()).collect()),
            flushing: RefCell::new(vec![false; shards]),
            bytes: Cell::new(0),
            drained: Notify::new(),
        }
    }

    /// Payload bytes queued and not yet handed over.
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
        let ops = std::mem::take(&mut ob.queued.borrow_mut()[to]);
        if ops.is_empty() {
            ob.flushing.borrow_mut()[to] = false;
            return;
        }
        let bytes: usize = ops.iter().map(Op::bytes).sum();
        ob.bytes.set(ob.bytes.get().saturating_sub(bytes));
        ob.drained.notify();
        // The one place AMQP work crosses to another shard (a local call for this one).
        let req = Request::Ops {
            catalog: shard.catalog.current(),
            ops,
        };
        let _ = shard.amqp(to, req).await;
        glommio::yield_if_needed().await;
    }
}

/// Waits until every op queued so far for shard `to` has been applied there (settles
/// made visible before an answer that depends on them).
pub async fn barrier(shard: &Rc<Shard>, to: usize) {
    let (reply, answer) = shard.expect::<()>();
    push(shard, to, QueueOp::Barrier { reply });
    let _ = answer.await;
}

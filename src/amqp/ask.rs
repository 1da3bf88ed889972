//! AMQP's "ask the owner" call: a batch of ops for one shard (queue work for the queues it
//! owns, deliveries and confirms for the connections it holds), applied there in arrival
//! order by `owner::serve_remote`, or here at once when this shard is the destination.
//! Called by the outbox's flush, one envelope per destination.
//!
//! Also registers, once per shard, what happens to an AMQP answer whose asker left: a
//! message a basic.get took goes back to its queue (`owner::unclaimed_get`).

use std::rc::Rc;

use super::mesh::{GetAnswer, Reply, Request};
use super::owner;
use crate::broker::Shard;

impl Shard {
    /// AMQP ops for `owner`, locally or on its shard.
    pub async fn amqp(self: &Rc<Self>, owner: usize, req: Request) -> Reply {
        if owner == self.id {
            let r = owner::serve(self, req);
            owner::relieve(self).await;
            return r;
        }
        self.core
            .ask_on::<Shard, Reply>(owner, move |shard, reply| {
                owner::serve_remote(shard, req, reply)
            })
            .await
            .unwrap_or(Reply::Unavailable)
    }
}

/// Hooks this shard's AMQP into its runtime (called once per shard at start).
pub fn register(shard: &Rc<Shard>) {
    let weak = Rc::downgrade(shard);
    shard.replies.on_unclaimed(Box::new(move |answer| {
        let got = match answer.downcast::<GetAnswer>() {
            Ok(got) => got,
            Err(other) => return Some(other),
        };
        if let Some(shard) = weak.upgrade() {
            owner::unclaimed_get(&shard, *got);
        }
        None
    }));
}

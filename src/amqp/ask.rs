//! Registers, once per shard, what happens to an AMQP answer whose asker left: a message a
//! basic.get took goes back to its queue (`owner::unclaimed_get`). (The ops themselves
//! travel in the outbox's envelopes, applied by `owner::serve` / `owner::serve_credited`.)

use std::rc::Rc;

use super::mesh::GetAnswer;
use super::owner;
use crate::broker::Shard;

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

//! Dead-lettering: what a message leaving its queue as `rejected`, `expired`, `maxlen` or
//! `delivery_limit` becomes when the queue has an `x-dead-letter-exchange` — the message
//! with RabbitMQ's `x-death` header and `x-first-death-*` / `x-last-death-*` headers
//! (`message::dead_lettered`), re-addressed to the exchange and to
//! `x-dead-letter-routing-key` or its own routing keys — and the cycle rule.
//!
//! Pure: the queue emits a `DeadLetter` effect; the owner's glue (`owner.rs`) routes it
//! from the shard's catalog replica and publishes it to each matched queue's owner.

use super::super::message::{dead_letter_cycle, dead_lettered, DeathReason, Message};
use super::super::routing::QueueRef;
use super::super::store::Location;
use super::super::topology::QueueArgs;

/// A message on its way to a dead-letter exchange.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub exchange: String,
    /// The message as republished (x-death written, exchange and routing key changed).
    pub msg: Message,
    pub reason: DeathReason,
    /// Its body is on disk only: read it back from here first, then ack `seq` in the store.
    pub paged: Option<(u64, Location)>,
}

/// The dead-lettered form of `msg` leaving queue `qref` for `reason` at `now_ms`, or
/// `None` when the queue has no dead-letter exchange (the message is dropped).
pub fn dead_letter(
    qref: &QueueRef,
    args: &QueueArgs,
    msg: &Message,
    reason: DeathReason,
    now_ms: i64,
) -> Option<DeadLetter> {
    let dlx = args.dead_letter_exchange.as_deref()?;
    let now_secs = (now_ms / 1000).max(0) as u64;
    let msg = dead_lettered(
        msg,
        reason,
        &qref.name,
        dlx,
        args.dead_letter_routing_key.as_deref(),
        now_secs,
    );
    Some(DeadLetter {
        exchange: dlx.to_string(),
        msg,
        reason,
        paged: None,
    })
}

impl DeadLetter {
    /// Whether the route to `queue` is dropped: a message goes back into a queue it
    /// already died in without a rejection on record (RabbitMQ's cycle rule).
    pub fn cycles_to(&self, queue: &str) -> bool {
        self.reason != DeathReason::Rejected && dead_letter_cycle(&self.msg, queue)
    }
}

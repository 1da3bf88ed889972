//! What a queue call asks of its shard: the `Effects` a `QueueState` method fills and the
//! owner's glue (`owner::apply_effects`) carries out after the call — ops for connections
//! (deliveries, confirms, server-side cancels), dead-lettered messages to route, page-ins
//! and timers to start, and the change in bytes held in memory.
//!
//! Nothing here does I/O, so a unit test reads a call's effects as its outcome.

use super::super::mesh::{ConfirmTo, ConnOp};
use super::super::store::Location;
use super::dead_letter::DeadLetter;
use crate::storage::journal::Durable;

#[derive(Debug)]
pub enum Effect {
    /// An op for the connection shard `to` (through the outbox, in this order).
    Send { to: usize, op: ConnOp },
    /// A message for the queue's dead-letter exchange.
    DeadLetter(DeadLetter),
    /// Read these paged-out messages (seq, where) back, then hand them to
    /// `QueueState::paged_in`.
    PageIn(Vec<(u64, Location)>),
    /// Call `QueueState::timer_fired` at this time (ms since the epoch): the head's TTL.
    WakeAt(i64),
    /// Watch `x-expires`: delete the queue once `QueueState::expires_at` has passed.
    WatchExpires,
    /// A message handed to the store: follow its durability future.
    Stored(Stored),
}

/// A message the store is writing, and what waits on it: its publisher's confirm (sent
/// once fdatasync'ed; a nack if the disk refused it) and, with `page`, its body leaving
/// memory once written. A refused write takes the message back out of the queue
/// (`QueueState::refused_by_store`).
#[derive(Debug)]
pub struct Stored {
    pub seq: u64,
    pub durable: Durable,
    pub confirm: Option<ConfirmTo>,
    pub page: bool,
}

/// The effects of one or more queue calls, in order.
#[derive(Debug, Default)]
pub struct Effects {
    pub list: Vec<Effect>,
    /// Change in message bytes held in memory by the shard's queues.
    pub memory: isize,
    /// Messages the queue accepted (published, dead-lettered into it).
    pub enqueued: u64,
    /// Messages handed out (deliveries and basic.get, redeliveries included).
    pub dequeued: u64,
}

impl Effects {
    pub fn push(&mut self, e: Effect) {
        self.list.push(e);
    }

    /// A publisher confirm for `c`.
    pub fn confirm(&mut self, c: ConfirmTo, ack: bool) {
        self.push(Effect::Send {
            to: c.shard,
            op: c.op(ack),
        });
    }
}

//! `StoreHandle`: the narrow view a queue has of its shard's message store — append a
//! message (getting back its durability future), record an ack or a delivery. Reads
//! (paging in) are asynchronous and happen in the owner's glue (`owner.rs`), never inside
//! the queue.
//!
//! The one place the queue state machine meets `amqp::store`. Unit tests give the queue a
//! recording fake.

use super::super::routing::QueueRef;
use super::super::store::{Location, Store};
use super::Entry;
use crate::storage::journal::Durable;

pub trait StoreHandle {
    /// Queues a message for writing: a persistent one or, with `transient`, one paged out
    /// of memory. Returns where it goes and its durability future: resolved once written,
    /// or with `synced` once fdatasync'ed (a confirm waits on it).
    fn append(&self, q: &QueueRef, e: &Entry, transient: bool, synced: bool)
        -> (Location, Durable);
    /// A stored message left the queue.
    fn ack(&self, q: &QueueRef, seq: u64);
    /// A stored message was delivered (it comes back redelivered after a restart).
    fn delivered(&self, q: &QueueRef, seq: u64);
}

impl StoreHandle for Store {
    fn append(
        &self,
        q: &QueueRef,
        e: &Entry,
        transient: bool,
        synced: bool,
    ) -> (Location, Durable) {
        Store::append(self, q, e, transient, synced)
    }

    fn ack(&self, q: &QueueRef, seq: u64) {
        Store::ack(self, q, seq)
    }

    fn delivered(&self, q: &QueueRef, seq: u64) {
        Store::delivered(self, q, seq)
    }
}

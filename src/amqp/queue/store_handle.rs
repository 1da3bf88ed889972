//! `StoreHandle`: the narrow view a queue has of its shard's message store — append a
//! message, page a body out once written, record an ack or a delivery. Reads (paging in)
//! are asynchronous and happen in the owner's glue (`owner.rs`), never inside the queue.
//!
//! The one place the queue state machine meets `amqp::store`, so a change of the store's
//! API (durability futures) lands here. Unit tests give the queue a recording fake.

use super::super::mesh::ConfirmTo;
use super::super::routing::QueueRef;
use super::super::store::{Location, Store};
use super::Entry;

pub trait StoreHandle {
    /// Queues a message for writing: a persistent one (its confirm `c` goes out
    /// after fdatasync) or, with `transient`, one paged out of memory. Returns where it
    /// goes.
    fn append(&self, q: &QueueRef, e: &Entry, c: Option<ConfirmTo>, transient: bool) -> Location;
    /// Once the message at `loc` is written, its queue drops the body from memory.
    fn page_out_when_written(&self, q: &QueueRef, seq: u64, loc: Location);
    /// A stored message left the queue.
    fn ack(&self, q: &QueueRef, seq: u64);
    /// A stored message was delivered (it comes back redelivered after a restart).
    fn delivered(&self, q: &QueueRef, seq: u64);
}

impl StoreHandle for Store {
    fn append(&self, q: &QueueRef, e: &Entry, c: Option<ConfirmTo>, transient: bool) -> Location {
        Store::append(self, q, e, c, transient)
    }

    fn page_out_when_written(&self, q: &QueueRef, seq: u64, loc: Location) {
        Store::page_out_when_written(self, q, seq, loc)
    }

    fn ack(&self, q: &QueueRef, seq: u64) {
        Store::ack(self, q, seq)
    }

    fn delivered(&self, q: &QueueRef, seq: u64) {
        Store::delivered(self, q, seq)
    }
}

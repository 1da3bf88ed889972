//! The channel's side of its consumers: `ConsumerInfo` (tag, queue, no_ack, the prefetch
//! it was created with, deliveries buffered until consume-ok is written) and the limits
//! each consumer's queue owner enforces: its own prefetch (basic.qos global=false) capped
//! by the channel-wide one (basic.qos global=true).
//!
//! Pure; owned by `Channel` on the connection's shard.

use std::sync::Arc;

use super::super::mesh::Delivery;
use super::super::routing::QueueRef;

pub struct ConsumerInfo {
    pub tag: Arc<str>,
    pub queue: QueueRef,
    pub no_ack: bool,
    /// The per-consumer prefetch in force when it was created.
    pub prefetch_count: u32,
    pub prefetch_bytes: u64,
    /// consume-ok sent: deliveries may be written.
    pub ready: bool,
    /// Deliveries that arrived before consume-ok was written.
    pub buffered: Vec<Delivery>,
    /// Limits last sent to the owner.
    pub sent_limits: (u32, u64),
}

impl ConsumerInfo {
    pub fn new(tag: Arc<str>, queue: QueueRef, no_ack: bool, prefetch: (u32, u64)) -> Self {
        ConsumerInfo {
            tag,
            queue,
            no_ack,
            prefetch_count: prefetch.0,
            prefetch_bytes: prefetch.1,
            ready: false,
            buffered: Vec::new(),
            sent_limits: (0, 0),
        }
    }

    /// The limits its queue's owner enforces: its own prefetch, capped by the
    /// channel-wide one `global` (0 = none).
    pub fn owner_limits(&self, global: (u32, u64)) -> (u32, u64) {
        let min0 = |a: u64, b: u64| match (a, b) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        (
            min0(self.prefetch_count as u64, global.0 as u64) as u32,
            min0(self.prefetch_bytes, global.1),
        )
    }
}

//! The Kafka wire protocol: the listener and connections (`server`), the one list of
//! served APIs (`apis`), request framing (`codec`), one handler per API (`handlers/`),
//! the partition work that runs on a partition's owner shard (`owner`), the default
//! partitioner for keyed records (`partitioner`), the consumer-group
//! and transaction coordinators (`groups`, `txn`), and each connection's SASL session
//! (`sasl`).
//!
//! A connection starts on the shard that accepted it and moves to the shard of its
//! partitions when they are all on one (`server`, `runtime::placement`); partition work
//! crosses to the owner shard through `Shard::kafka_dispatch` / `Shard::kafka`.

pub mod apis;
pub mod codec;
pub mod configs;
pub mod groups;
pub mod handlers;
pub mod legacy;
pub mod message_set;
pub mod offsets_topic;
pub mod owner;
pub mod partitioner;
pub mod produce_scan;
pub mod sasl;
pub mod server;
pub mod txn;

use std::cell::Cell;

use kafka_protocol::ResponseError;

use crate::catalog::CatalogError;
use crate::util::notify::Notify;

/// Kafka's per-shard state kept outside its handlers: the request bytes read and not yet
/// answered over all the shard's connections (the shard in-flight budget `server` charges
/// before reading a frame), and a wake-up for readers waiting for room.
#[derive(Default)]
pub struct InflightBudget {
    bytes: Cell<usize>,
    pub released: Notify,
}

impl InflightBudget {
    /// Bytes charged and not yet released.
    pub fn used(&self) -> usize {
        self.bytes.get()
    }

    pub fn charge(&self, n: usize) {
        self.bytes.set(self.bytes.get() + n);
    }

    /// Gives `n` bytes back and wakes readers waiting for room.
    pub fn release(&self, n: usize) {
        self.bytes.set(self.bytes.get().saturating_sub(n));
        self.released.notify();
    }
}

/// The Kafka error code a client expects for a catalog refusal.
pub fn catalog_error_code(e: &CatalogError) -> i16 {
    match e {
        CatalogError::TopicExists(_) => ResponseError::TopicAlreadyExists.code(),
        CatalogError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition.code(),
        CatalogError::InvalidTopic(..) => ResponseError::InvalidTopicException.code(),
        CatalogError::InvalidPartitions(_) => ResponseError::InvalidPartitions.code(),
        CatalogError::InvalidConfig(..) => ResponseError::InvalidConfig.code(),
        CatalogError::DeleteDisabled => ResponseError::TopicDeletionDisabled.code(),
        CatalogError::Storage(_) | CatalogError::NoSpace(_) => {
            ResponseError::KafkaStorageError.code()
        }
        CatalogError::Amqp { .. } => ResponseError::UnknownServerError.code(),
    }
}

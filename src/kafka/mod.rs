//! The Kafka wire protocol: the listener and connections (`server`), the one list of
//! served APIs (`apis`), request framing (`codec`), one handler per API (`handlers/`),
//! and the partition work that runs on a partition's owner shard (`owner`).
//!
//! Connections run on the shard that accepted them; partition work crosses to the owner
//! shard through `Shard::kafka_dispatch` / `Shard::kafka`.

pub mod apis;
pub mod codec;
pub mod configs;
pub mod groups;
pub mod handlers;
pub mod owner;
pub mod produce_scan;
pub mod server;

use kafka_protocol::ResponseError;

use crate::catalog::CatalogError;

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

//! What several Kafka handlers share (as Redpanda's `handlers/details/`): the fan-out of a
//! request's partitions to their owner shards (`partitions`), the preamble of the group
//! APIs (`coordinator`) and the ACL check every handler makes (`authorize`). Runs on the
//! connection's shard; the one line where each crosses to another shard is in its
//! function.

pub mod authorize;
pub mod coordinator;
pub mod partitions;

//! What several Kafka handlers share (as Redpanda's `handlers/details/`): the fan-out of a
//! request's partitions to their owner shards (`partitions`) and the preamble of the group
//! APIs (`coordinator`). Runs on the connection's shard; the one line where each crosses to
//! another shard is in its function.

pub mod coordinator;
pub mod partitions;

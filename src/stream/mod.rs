//! Stream queues: AMQP 0-9-1 queues that are Kafka topics, one log read and written over
//! both protocols (issue 17; `docs/streams.md`).
//!
//! - `record`: the lossless mapping between an AMQP message and a Kafka record (pure
//!   functions, run on whichever shard publishes or delivers).
//! - `acl`: Kafka's topic ACLs applied to AMQP readers and writers of a stream
//!   (connection's shard).
//! - `args`: a stream's declare arguments and the topic configs they become (pure).
//! - `committed`: read-committed for AMQP readers: the batches of aborted transactions
//!   dropped from a fetch (pure).
//! - `declare`: declaring a stream (its topic made or found) and finding a Kafka topic as
//!   a stream queue (connection's shard).
//! - `offset`: the `x-stream-offset` consumer argument (pure).
//! - `group`: `x-consumer-group` (acks commit a Kafka group's offset, resume from it) and
//!   single active consumer on streams (the stream's AMQP owner shard).
//! - `filter`: the `x-stream-filter` consumer arguments and matching records (pure).
//! - `queue`: a stream queue's ops on its AMQP owner shard: appending publishes, readers
//!   delivering to consumers.
//! - `superstream`: a topic of N partitions as a super stream (exchange, partition
//!   queues, murmur2 routing).

pub mod acl;
pub mod args;
pub mod committed;
pub mod declare;
pub mod delivered;
pub mod filter;
pub mod group;
pub mod offset;
pub mod queue;
pub mod record;
pub mod superstream;

//! Stream queues: AMQP 0-9-1 queues that are Kafka topics, one log read and written over
//! both protocols (issue 17).
//!
//! - `record`: the lossless mapping between an AMQP message and a Kafka record (pure
//!   functions, run on whichever shard publishes or delivers).

pub mod record;

//! Stream queues: an AMQP queue declared `x-queue-type: stream` is the Kafka topic of the
//! same name, read and written over both protocols (see `docs/streams.md`).

pub mod args;
pub mod declare;
pub mod offset;
pub mod queue;
pub mod stub;

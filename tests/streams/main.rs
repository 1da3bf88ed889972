//! Stream queues, one test binary (one link instead of one per file): an AMQP queue
//! declared `x-queue-type: stream` is the Kafka topic of its name, read and written over
//! both protocols with real clients (lapin, rdkafka). Each module is one aspect:
//! - `queues`: declare, publish, consume from every `x-stream-offset`, refusals, kill -9;
//! - `records`: the AMQP ⇄ Kafka record mapping on batches real producers wrote;
//! - `streamperf`: deliveries from large batches with a small prefetch, once each, in order.

#[path = "../common/mod.rs"]
mod common;

mod queues;
mod records;
mod streamperf;

//! Stream queues, one test binary (one link instead of one per file): an AMQP queue
//! declared `x-queue-type: stream` is the Kafka topic of its name, read and written over
//! both protocols with real clients (lapin, rdkafka). Each module is one aspect:
//! - `queues`: declare, publish, consume from every `x-stream-offset`, refusals, kill -9;
//! - `records`: the AMQP ⇄ Kafka record mapping on batches real producers wrote;
//! - `groups`: `x-consumer-group` offsets the server keeps, lag, single active consumer;
//! - `safety`: read-committed, Kafka ACLs, memory back-pressure, full disk, retention,
//!   the key setting.
//! - `superstream`: topics of N partitions as super streams (murmur2 routing, partition
//!   queues), and `x-stream-filter` consumers;
//! - `streamperf`: deliveries from large batches with a small prefetch, once each, in order;
//! - `http`: streams in the management API, the overview the dashboard renders, `/metrics`;
//! - `kit`: what the modules share.

#[path = "../common/mod.rs"]
mod common;

mod groups;
mod http;
mod kit;
mod queues;
mod records;
mod safety;
mod streamperf;
mod superstream;

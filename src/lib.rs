//! Portask: one broker binary that Kafka and AMQP 0-9-1 clients use unchanged, built
//! thread-per-core on glommio/io_uring.
//!
//! `runtime` starts one shard per core; `storage` holds each shard's partition logs;
//! `catalog` is the metadata (single writer on shard 0, replicas everywhere); `kafka` is
//! the Kafka wire protocol; `amqp` is AMQP 0-9-1. See `../shared/ARCHITECTURE.md` for the design.

pub mod amqp;
pub mod broker;
pub mod catalog;
pub mod config;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod runtime;
pub mod storage;
pub mod util;

//! Portask: one broker binary that Kafka and AMQP 0-9-1 clients use unchanged, built
//! thread-per-core on glommio/io_uring. The README says how to run it and test it;
//! `docs/ARCHITECTURE.md` is the design, `shards/README.md` the files it writes and
//! `tuning/README.md` every setting.
//!
//! Modules, from the bottom up: the first six use only modules listed before them; the
//! protocols (`kafka`, `amqp`) and `http` reach their shard's state through
//! `broker::Shard`, and `broker` wires all of them together.
//! - `util`: leaf helpers — `Notify` (a single-shard wake-up), stable hashing and the
//!   ownership hash, wall-clock milliseconds, process-unique ids.
//! - `config`: the configuration (embedded defaults, TOML profiles, command line).
//! - `metrics`: per-shard counters and latency histograms (a thread local per shard).
//! - `runtime`: one shard's protocol-free core — its end of the channel mesh, cross-shard
//!   calls (`Core::invoke_on`/`ask`/`submit_to`) and their answers, per-shard locals, the
//!   accept loop, the stop signal, the host checks before start. Names no protocol.
//! - `storage`: each shard's one storage engine — Kafka partition logs and the record
//!   journal AMQP durable queues are kept in (one framing, one DMA open, one group commit,
//!   recovery), retention, compaction, the free-space guard.
//! - `catalog`: topics, configs and AMQP topology; one writer on shard 0, a replica on
//!   every shard.
//! - `kafka`: the Kafka wire protocol — connections, one handler per API, partition work on
//!   the owner shard, consumer groups.
//! - `amqp`: AMQP 0-9-1 — connections, channels, exchanges and routing, queues on their
//!   owner shard, the durable queue store.
//! - `stream`: stream queues — AMQP queues that are Kafka topics, and the mapping between
//!   an AMQP message and a Kafka record.
//! - `http`: metrics, health, the REST API and the dashboard, and the per-shard stats
//!   snapshot they gather.
//! - `broker`: the composition root — process start-up (data-dir lock, ownership
//!   migration, catalog load), each shard's `Shard` (the runtime core plus every layer's
//!   per-shard state), recovery, listeners and every background task, and the clean stop.

pub mod amqp;
pub mod broker;
pub mod catalog;
pub mod config;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod runtime;
pub mod security;
pub mod storage;
pub mod stream;
pub mod util;

//! One shard's metrics and state as the HTTP side shows them (`ShardStats`), and their
//! gathering from every shard when `/metrics`, the overview or a REST listing is served
//! (`Shard::stats_all`: one cross-shard call per shard, this one's answered inline).
//!
//! Runs on the shard serving the request; `snapshot` runs on each shard for its own state.
//! This is where metrics reach into the protocols (partitions, queues, groups), so that
//! `metrics` itself names none.

use std::collections::HashMap;
use std::rc::Rc;

use crate::broker::Shard;
use crate::metrics::{
    with, ConnectionStats, Latency, PartitionStats, Protocol, ProtocolMetrics, QueueStats, Rates,
    PROTOCOLS,
};

impl Shard {
    /// Gathers every shard's metrics and state, this one's included (the hop of a scrape).
    pub async fn stats_all(self: &Rc<Self>) -> Vec<ShardStats> {
        self.core
            .gather::<Shard, _, _, _>(|shard: &Rc<Shard>| {
                let stats = Box::new(snapshot(shard));
                async move { stats }
            })
            .await
            .into_iter()
            .map(|b| *b)
            .collect()
    }
}

/// A copy of one shard's metrics and state, sent to the shard that serves a scrape.
pub struct ShardStats {
    pub shard: usize,
    pub protocols: Vec<(Protocol, ProtocolMetrics)>,
    pub fsync: Latency,
    pub publish_recent: Latency,
    pub fetch_recent: Latency,
    pub rates: Rates,
    pub flow_rates: HashMap<(Protocol, String), (f64, f64)>,
    pub queue_rates: HashMap<(String, String), (f64, f64)>,
    pub busy_ratio: f64,
    pub partitions: Vec<PartitionStats>,
    pub queues: Vec<QueueStats>,
    /// (group, topic, partition, committed offset) of the groups this shard coordinates.
    pub committed: Vec<(String, String, i32, i64)>,
    pub groups: Vec<crate::kafka::groups::GroupSummary>,
    pub connections: Vec<ConnectionStats>,
    /// Bytes of Kafka batches held in the shard's tail caches.
    pub tail_cache_bytes: u64,
    /// Bytes of AMQP messages held in memory by the shard's queues.
    pub amqp_memory_bytes: u64,
    /// The consumers of the stream queues this shard owns, by queue name (vhost `/`).
    pub stream_consumers: Vec<(String, Vec<crate::stream::queue::ConsumerRow>)>,
}

/// Copies this shard's metrics and state.
pub fn snapshot(shard: &Shard) -> ShardStats {
    let partitions = shard
        .storage
        .partitions()
        .iter()
        .map(|l| {
            let l = l.borrow();
            PartitionStats {
                topic: l.topic.clone(),
                partition: l.partition,
                log_start_offset: l.log_start_offset,
                high_watermark: l.high_watermark(),
                size_bytes: l.size_bytes(),
            }
        })
        .collect();
    let queues = crate::amqp::queue_stats(shard);
    let connections = shard.clients.list();
    let stream_consumers = crate::stream::queue::consumers_here(shard);
    with(|m| ShardStats {
        shard: shard.id,
        protocols: PROTOCOLS
            .into_iter()
            .map(|p| (p, m.protocols[p as usize].clone()))
            .collect(),
        fsync: m.fsync.clone(),
        publish_recent: m.publish_recent.clone(),
        fetch_recent: m.fetch_recent.clone(),
        rates: m.rates,
        flow_rates: m.flow_rates.clone(),
        queue_rates: m.queue_rates.clone(),
        busy_ratio: m.busy_ratio,
        partitions,
        queues,
        committed: shard.groups.committed(),
        groups: shard.groups.summary(),
        tail_cache_bytes: shard.storage.tail_cache_bytes() as u64,
        amqp_memory_bytes: shard.amqp.memory() as u64,
        connections,
        stream_consumers,
    })
}

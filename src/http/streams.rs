//! Stream queues as the HTTP side shows them (issue 17): for a queue declared
//! `x-queue-type: stream` (or a Kafka topic found as one), its Kafka topic and partition,
//! the super stream it belongs to, its offsets (log start, last, next = the high
//! watermark), records and bytes, the retention settings in force (the topic's effective
//! `retention.bytes`, `retention.ms`, `segment.bytes`), its consumers with their offsets
//! and lag, and the consumer groups with an offset committed on it (AMQP `x-consumer-group`
//! groups and Kafka groups alike) with their lag.
//!
//! Pure: built from the catalog and the figures every shard sent for the request
//! (`Shard::stats_all`: partitions from their owners, consumers from the queues' AMQP
//! owners, committed offsets from the groups' coordinators), on the shard serving the
//! request. The management API (`amqp::queues`) and the overview (`overview`) both show
//! this one view.

use std::collections::HashMap;

use serde::Serialize;

use crate::catalog::amqp::Queue;
use crate::catalog::CatalogState;
use crate::config::Config;
use crate::http::stats::ShardStats;
use crate::metrics::PartitionStats;
use crate::stream::queue::ConsumerRow;

/// One stream queue's offsets, retention, consumers and groups.
#[derive(Debug, Clone, Serialize)]
pub struct StreamView {
    /// The Kafka topic it is (a super stream's topic for a partition queue).
    pub topic: String,
    pub partition: i32,
    /// The super stream (topic of N > 1 partitions) a partition queue belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub super_stream: Option<String>,
    /// The log start offset (`x-stream-offset: first`).
    pub first_offset: i64,
    /// The offset of the last record (`next_offset - 1`; -1 before any).
    pub last_offset: i64,
    /// The high watermark: the offset the next record gets (`x-stream-offset: next`).
    pub next_offset: i64,
    /// Records in the log (next minus first).
    pub messages: i64,
    pub size_bytes: u64,
    /// The topic's effective `retention.bytes` (`x-max-length-bytes`), -1 for none.
    pub retention_bytes: i64,
    /// The topic's effective `retention.ms` (`x-max-age`), -1 for none.
    pub retention_ms: i64,
    /// The topic's effective `segment.bytes` (`x-stream-max-segment-size-bytes`).
    pub segment_bytes: i64,
    pub consumer_details: Vec<Consumer>,
    /// Every group with an offset committed on this partition.
    pub consumer_groups: Vec<GroupOffset>,
}

/// A stream consumer (`stream::queue::ConsumerRow`) with its lag.
#[derive(Debug, Clone, Serialize)]
pub struct Consumer {
    #[serde(flatten)]
    pub row: ConsumerRow,
    /// Records from its offset (its first unsettled delivery) to the high watermark.
    pub lag: Option<i64>,
}

/// A group's committed offset on a stream, and the records after it.
#[derive(Debug, Clone, Serialize)]
pub struct GroupOffset {
    pub group: String,
    pub committed_offset: i64,
    pub lag: i64,
}

/// The figures of one request's `stats_all`, indexed for the views.
pub struct Index<'a> {
    partitions: HashMap<(&'a str, i32), &'a PartitionStats>,
    committed: HashMap<(&'a str, i32), Vec<(&'a str, i64)>>,
    consumers: HashMap<&'a str, &'a [ConsumerRow]>,
}

impl<'a> Index<'a> {
    pub fn new(stats: &'a [ShardStats]) -> Index<'a> {
        let mut committed: HashMap<(&str, i32), Vec<(&str, i64)>> = HashMap::new();
        for s in stats {
            for (group, topic, partition, offset) in &s.committed {
                if *offset >= 0 {
                    committed
                        .entry((topic.as_str(), *partition))
                        .or_default()
                        .push((group.as_str(), *offset));
                }
            }
        }
        Index {
            partitions: stats
                .iter()
                .flat_map(|s| &s.partitions)
                .map(|p| ((p.topic.as_str(), p.partition), p))
                .collect(),
            committed,
            consumers: stats
                .iter()
                .flat_map(|s| &s.stream_consumers)
                .map(|(name, rows)| (name.as_str(), rows.as_slice()))
                .collect(),
        }
    }

    /// The view of queue `def` (in vhost `/`), if it is a stream queue.
    pub fn view(&self, config: &Config, state: &CatalogState, def: &Queue) -> Option<StreamView> {
        if !def.is_stream() {
            return None;
        }
        let (topic, partition) =
            crate::stream::superstream::locate(state, crate::stream::queue::VHOST, &def.name);
        let t = state.topic(&topic);
        let settings = t.map(|t| crate::catalog::log_settings(config, state, t));
        let (first, next, size_bytes) = self
            .partitions
            .get(&(topic.as_str(), partition))
            .map_or((0, 0, 0), |p| {
                (p.log_start_offset, p.high_watermark, p.size_bytes)
            });
        let lag_from = |offset: i64| (next - offset).max(0);
        let consumer_details = self
            .consumers
            .get(def.name.as_str())
            .map(|rows| {
                rows.iter()
                    .map(|r| Consumer {
                        lag: r.offset.map(lag_from),
                        row: r.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut consumer_groups: Vec<GroupOffset> = self
            .committed
            .get(&(topic.as_str(), partition))
            .map(|gs| {
                gs.iter()
                    .map(|(group, offset)| GroupOffset {
                        group: (*group).to_owned(),
                        committed_offset: *offset,
                        lag: lag_from(*offset),
                    })
                    .collect()
            })
            .unwrap_or_default();
        consumer_groups.sort_by(|a, b| a.group.cmp(&b.group));
        Some(StreamView {
            super_stream: t.is_some_and(|t| t.partitions > 1).then(|| topic.clone()),
            topic,
            partition,
            first_offset: first,
            last_offset: next - 1,
            next_offset: next,
            messages: (next - first).max(0),
            size_bytes,
            retention_bytes: settings.as_ref().map_or(-1, |s| s.retention_bytes),
            retention_ms: settings.as_ref().map_or(-1, |s| s.retention_ms),
            segment_bytes: settings.as_ref().map_or(-1, |s| s.segment_bytes),
            consumer_details,
            consumer_groups,
        })
    }
}

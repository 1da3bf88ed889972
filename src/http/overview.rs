//! `GET /api/v1/overview` (what the dashboard shows: rates over the last second, latency
//! percentiles, connections, memory and CPU, per-shard load, topics, queues, groups),
//! `GET /api/v1/stream` (the same as server-sent events, one a second) and
//! `GET /api/v1/shards`. Gathered from every shard through the mesh by the shard serving
//! the request. With Kafka ACLs on, topics the caller may not DESCRIBE are left out (and
//! the stream queues that are those topics). Stream queues carry their offsets, retention,
//! consumers and groups (`streams::StreamView`), with consumers or without.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use glommio::channels::local_channel;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

use super::acl::Caller;
use super::{ok_json, ApiResult, Body};
use crate::broker::Shard;
use crate::catalog::amqp::arguments::queue_type;
use crate::catalog::amqp::tables::decode_table;
use crate::http::stats::ShardStats;
use crate::http::streams::{Index, StreamView};
use crate::metrics::{self, Latency, Protocol, Rates};
use crate::security::acl::Operation;

#[derive(Serialize, Default)]
pub struct Totals {
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Serialize)]
pub struct LatencySummary {
    pub avg: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub count: u64,
}

impl From<&Latency> for LatencySummary {
    fn from(l: &Latency) -> Self {
        LatencySummary {
            avg: l.mean_ms(),
            p50: l.quantile_ms(0.5),
            p99: l.quantile_ms(0.99),
            p999: l.quantile_ms(0.999),
            count: l.count(),
        }
    }
}

#[derive(Serialize)]
pub struct LatencyPair {
    pub publish: LatencySummary,
    pub fetch: LatencySummary,
}

#[derive(Serialize, Default)]
pub struct Connections {
    pub kafka: u64,
    pub amqp: u64,
    pub http: u64,
}

#[derive(Serialize)]
pub struct ShardRow {
    pub id: usize,
    pub busy_ratio: f64,
    pub connections: u64,
    pub partitions: usize,
    pub queues: usize,
    pub messages_in_per_second: f64,
    pub messages_out_per_second: f64,
}

#[derive(Serialize)]
pub struct TopicRow {
    pub name: String,
    pub partitions: i32,
    pub messages_in_per_second: f64,
    pub messages_out_per_second: f64,
    pub messages: i64,
    pub size_bytes: u64,
}

#[derive(Serialize)]
pub struct QueueRow {
    pub vhost: String,
    pub name: String,
    pub messages_ready: u64,
    pub messages_unacknowledged: u64,
    pub consumers: u64,
    pub publish_per_second: f64,
    pub deliver_per_second: f64,
    /// `classic`, `quorum` or `stream`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A stream queue's topic, offsets, retention, consumers and groups (`streams`); for
    /// a stream `messages_ready` is the records in its log.
    #[serde(flatten)]
    pub stream: Option<StreamView>,
}

#[derive(Serialize)]
pub struct GroupRow {
    pub group: String,
    pub state: &'static str,
    pub members: usize,
    pub lag: i64,
}

#[derive(Serialize)]
pub struct Overview {
    pub version: &'static str,
    pub uptime_seconds: f64,
    pub rates: Rates,
    pub totals: Totals,
    pub latency_ms: LatencyPair,
    pub connections: Connections,
    pub memory_mb: f64,
    pub cpu_percent: f64,
    pub shards: Vec<ShardRow>,
    pub topics: Vec<TopicRow>,
    pub queues: Vec<QueueRow>,
    pub consumer_groups: Vec<GroupRow>,
}

/// The high watermark of every partition, from the shards that own them.
fn high_watermarks(stats: &[ShardStats]) -> BTreeMap<(String, i32), i64> {
    stats
        .iter()
        .flat_map(|s| &s.partitions)
        .map(|p| ((p.topic.clone(), p.partition), p.high_watermark))
        .collect()
}

/// Per group: lag summed over its committed partitions.
pub fn group_lag(stats: &[ShardStats]) -> BTreeMap<String, i64> {
    let high = high_watermarks(stats);
    let mut lag: BTreeMap<String, i64> = BTreeMap::new();
    for s in stats {
        for (group, topic, partition, committed) in &s.committed {
            let entry = lag.entry(group.clone()).or_default();
            if let Some(end) = high.get(&(topic.clone(), *partition)) {
                if *committed >= 0 {
                    *entry += (end - committed).max(0);
                }
            }
        }
    }
    lag
}

pub fn build(shard: &Shard, stats: &[ShardStats]) -> Overview {
    let process = metrics::process(&shard.config.data_dir);
    let mut rates = Rates::default();
    let mut totals = Totals::default();
    let mut publish = Latency::default();
    let mut fetch = Latency::default();
    let mut connections = Connections::default();
    let mut topic_rates: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut shards = Vec::new();
    for s in stats {
        rates.messages_in += s.rates.messages_in;
        rates.messages_out += s.rates.messages_out;
        rates.bytes_in += s.rates.bytes_in;
        rates.bytes_out += s.rates.bytes_out;
        publish.add(&s.publish_recent);
        fetch.add(&s.fetch_recent);
        let mut shard_connections = 0;
        for (p, m) in &s.protocols {
            totals.bytes_in += m.bytes_in;
            totals.bytes_out += m.bytes_out;
            for f in m.flows.values() {
                totals.messages_in += f.messages_in;
                totals.messages_out += f.messages_out;
            }
            shard_connections += m.connections_active;
            match p {
                Protocol::Kafka => connections.kafka += m.connections_active,
                Protocol::Amqp => connections.amqp += m.connections_active,
                Protocol::Http => connections.http += m.connections_active,
            }
        }
        for ((p, name), (i, o)) in &s.flow_rates {
            if *p == Protocol::Kafka {
                let r = topic_rates.entry(name.clone()).or_default();
                r.0 += i;
                r.1 += o;
            }
        }
        shards.push(ShardRow {
            id: s.shard,
            busy_ratio: s.busy_ratio,
            connections: shard_connections,
            partitions: s.partitions.len(),
            queues: s.queues.len(),
            messages_in_per_second: s.rates.messages_in,
            messages_out_per_second: s.rates.messages_out,
        });
    }
    let catalog = shard.catalog.current();
    let mut topics: Vec<TopicRow> = catalog
        .topics
        .iter()
        .map(|(name, t)| {
            let parts = stats
                .iter()
                .flat_map(|s| &s.partitions)
                .filter(|p| &p.topic == name);
            let (messages, size_bytes) = parts.fold((0i64, 0u64), |(m, b), p| {
                (
                    m + (p.high_watermark - p.log_start_offset).max(0),
                    b + p.size_bytes,
                )
            });
            let (i, o) = topic_rates.get(name).copied().unwrap_or_default();
            TopicRow {
                name: name.clone(),
                partitions: t.partitions,
                messages_in_per_second: i,
                messages_out_per_second: o,
                messages,
                size_bytes,
            }
        })
        .collect();
    topics.sort_by(|a, b| {
        b.messages_in_per_second
            .total_cmp(&a.messages_in_per_second)
            .then(b.messages.cmp(&a.messages))
            .then(a.name.cmp(&b.name))
    });
    let mut queue_rates: BTreeMap<(&str, &str), (f64, f64)> = BTreeMap::new();
    for s in stats {
        for ((v, name), (i, o)) in &s.queue_rates {
            let r = queue_rates.entry((v, name)).or_default();
            r.0 += i;
            r.1 += o;
        }
    }
    let rates_of = |v: &str, name: &str| queue_rates.get(&(v, name)).copied().unwrap_or_default();
    let mut queues: Vec<QueueRow> = stats
        .iter()
        .flat_map(|s| &s.queues)
        .map(|q| {
            let (i, o) = rates_of(&q.vhost, &q.name);
            QueueRow {
                vhost: q.vhost.clone(),
                name: q.name.clone(),
                messages_ready: q.messages_ready,
                messages_unacknowledged: q.messages_unacknowledged,
                consumers: q.consumers,
                publish_per_second: i,
                deliver_per_second: o,
                kind: "classic",
                stream: None,
            }
        })
        .collect();
    // Each queue's type from the catalog; every stream queue gets a row with its offsets,
    // with consumers or without (its records are in the log, not on an AMQP owner).
    let streams = Index::new(stats);
    let mut row_of: BTreeMap<(String, String), usize> = queues
        .iter()
        .enumerate()
        .map(|(i, q)| ((q.vhost.clone(), q.name.clone()), i))
        .collect();
    for (v, t) in &catalog.amqp {
        for (name, def) in &t.queues {
            let kind = queue_type(&decode_table(&def.arguments));
            let at = row_of.get(&(v.clone(), name.clone())).copied();
            let view = (kind.stream && v == crate::stream::queue::VHOST)
                .then(|| streams.view(&shard.config, &catalog, def))
                .flatten();
            let at = match (at, &view) {
                (Some(at), _) => at,
                (None, Some(view)) => {
                    let (i, o) = rates_of(v, name);
                    queues.push(QueueRow {
                        vhost: v.clone(),
                        name: name.clone(),
                        messages_ready: 0,
                        messages_unacknowledged: 0,
                        consumers: view.consumer_details.len() as u64,
                        publish_per_second: i,
                        deliver_per_second: o,
                        kind: "stream",
                        stream: None,
                    });
                    row_of.insert((v.clone(), name.clone()), queues.len() - 1);
                    queues.len() - 1
                }
                (None, None) => continue,
            };
            let row = &mut queues[at];
            row.kind = if kind.stream {
                "stream"
            } else if kind.quorum {
                "quorum"
            } else {
                "classic"
            };
            if let Some(view) = view {
                row.messages_ready = view.messages.max(0) as u64;
                row.stream = Some(view);
            }
        }
    }
    queues.sort_by(|a, b| {
        (b.messages_ready + b.messages_unacknowledged)
            .cmp(&(a.messages_ready + a.messages_unacknowledged))
            .then(b.publish_per_second.total_cmp(&a.publish_per_second))
            .then((&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)))
    });
    let lag = group_lag(stats);
    let mut consumer_groups: Vec<GroupRow> = stats
        .iter()
        .flat_map(|s| &s.groups)
        .map(|g| GroupRow {
            group: g.group.clone(),
            state: g.state,
            members: g.members,
            lag: lag.get(&g.group).copied().unwrap_or(0),
        })
        .collect();
    consumer_groups.sort_by(|a, b| b.lag.cmp(&a.lag).then(a.group.cmp(&b.group)));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    Overview {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: (now - process.start_time_seconds as f64).max(0.0),
        rates,
        totals,
        latency_ms: LatencyPair {
            publish: (&publish).into(),
            fetch: (&fetch).into(),
        },
        connections,
        memory_mb: process.memory_bytes as f64 / (1024.0 * 1024.0),
        cpu_percent: process.cpu_ratio * 100.0,
        shards,
        topics,
        queues,
        consumer_groups,
    }
}

/// The overview as `caller` may see it: topics it may not DESCRIBE (Kafka ACLs, when
/// enabled) are left out.
fn visible(shard: &Shard, caller: &Caller, mut o: Overview) -> Overview {
    o.topics
        .retain(|t| caller.may(shard, Operation::Describe, &t.name));
    // A stream queue is its topic: shown only to whom may describe the topic.
    o.queues.retain(|q| {
        q.stream
            .as_ref()
            .is_none_or(|s| caller.may(shard, Operation::Describe, &s.topic))
    });
    o
}

pub async fn overview(shard: &Rc<Shard>, caller: Caller) -> ApiResult {
    let stats = shard.stats_all().await;
    ok_json(&visible(shard, &caller, build(shard, &stats)))
}

pub async fn shards(shard: &Rc<Shard>) -> ApiResult {
    let stats = shard.stats_all().await;
    ok_json(&build(shard, &stats).shards)
}

/// Server-sent events: an `overview` event now and then every second, until the client
/// goes away or the shard stops.
pub fn stream(shard: &Rc<Shard>, caller: Caller) -> ApiResult {
    let (tx, rx) = local_channel::new_bounded::<Bytes>(2);
    let shard = shard.clone();
    glommio::spawn_local(async move {
        while !shard.stopping.get() {
            let stats = shard.stats_all().await;
            let overview = visible(&shard, &caller, build(&shard, &stats));
            let body = match serde_json::to_string(&overview) {
                Ok(b) => b,
                Err(e) => {
                    log::error!("encoding the overview: {e}");
                    break;
                }
            };
            let event = format!("event: overview\ndata: {body}\n\n");
            if tx.send(Bytes::from(event)).await.is_err() {
                break;
            }
            glommio::timer::sleep(Duration::from_secs(1)).await;
        }
    })
    .detach();
    let events = futures::stream::unfold(rx, |rx| async move {
        let event = rx.recv().await?;
        Some((event, rx))
    });
    let mut r = Response::new(Body::Stream(Box::pin(events)));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

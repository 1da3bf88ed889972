//! `GET /metrics`: every shard's counters, histograms and state, gathered through the mesh
//! when scraped (`Shard::stats_all`) and written in the Prometheus text format (0.0.4).
//! Runs on the shard that accepted the scrape; nothing on the hot path waits for it.
//!
//! For AMQP, `topic` in the message counters is the exchange a message was published to
//! (produced) or the queue it was delivered from (consumed).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::rc::Rc;

use bytes::Bytes;
use http::StatusCode;

use super::{with_type, ApiResult};
use crate::broker::Shard;
use crate::http::stats::ShardStats;
use crate::metrics::{self, Latency};

/// Latency bucket bounds in seconds.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

pub async fn scrape(shard: &Rc<Shard>) -> ApiResult {
    let stats = shard.stats_all().await;
    let mut process = metrics::process(&shard.config.data_dir);
    process.disk_alarm = shard.storage.disk.alarm();
    process.disk_min_free_bytes = shard.storage.disk.min_free();
    let text = render(&stats, &process);
    Ok(with_type(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(text),
    ))
}

/// One text exposition being written.
#[derive(Default)]
struct Exposition {
    out: String,
}

type Labels<'a> = Vec<(&'static str, String)>;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &Labels<'_>, value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
            let _ = writeln!(self.out, " {}", value as i64);
        } else {
            let _ = writeln!(self.out, " {value}");
        }
    }

    /// A family of counters or gauges summed over shards by label set.
    fn summed(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        rows: BTreeMap<Vec<(&'static str, String)>, f64>,
    ) {
        self.family(name, kind, help);
        for (labels, v) in rows {
            self.sample(name, &labels, v);
        }
    }

    fn histogram(&mut self, name: &str, labels: &Labels<'_>, h: &Latency) {
        for b in BUCKETS {
            let mut l = labels.clone();
            l.push(("le", format!("{b}")));
            self.sample(
                &format!("{name}_bucket"),
                &l,
                h.count_at_or_below(*b) as f64,
            );
        }
        let mut l = labels.clone();
        l.push(("le", "+Inf".into()));
        self.sample(&format!("{name}_bucket"), &l, h.count() as f64);
        self.sample(&format!("{name}_sum"), labels, h.sum_micros as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, h.count() as f64);
    }
}

fn add(rows: &mut BTreeMap<Vec<(&'static str, String)>, f64>, labels: Labels<'_>, v: f64) {
    *rows.entry(labels).or_default() += v;
}

pub fn render(stats: &[ShardStats], process: &metrics::Process) -> String {
    let mut e = Exposition::default();
    let mut produced = BTreeMap::new();
    let mut consumed = BTreeMap::new();
    let mut bytes_in = BTreeMap::new();
    let mut bytes_out = BTreeMap::new();
    let mut active = BTreeMap::new();
    let mut total = BTreeMap::new();
    let mut moved = BTreeMap::new();
    let mut requests = BTreeMap::new();
    let mut throttled = BTreeMap::new();
    let mut refused = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let mut tls_handshakes = BTreeMap::new();
    let mut tls_failures = BTreeMap::new();
    let mut auth_failures = BTreeMap::new();
    let mut acl_denials = BTreeMap::new();
    let mut publish: BTreeMap<&'static str, Latency> = BTreeMap::new();
    let mut fetch: BTreeMap<&'static str, Latency> = BTreeMap::new();
    for s in stats {
        for (p, m) in &s.protocols {
            let proto = p.name();
            for (flow, f) in &m.flows {
                let l = vec![("protocol", proto.to_owned()), ("topic", flow.clone())];
                if f.messages_in > 0 {
                    add(&mut produced, l.clone(), f.messages_in as f64);
                }
                if f.messages_out > 0 {
                    add(&mut consumed, l, f.messages_out as f64);
                }
            }
            add(
                &mut bytes_in,
                vec![("protocol", proto.to_owned())],
                m.bytes_in as f64,
            );
            add(
                &mut bytes_out,
                vec![("protocol", proto.to_owned())],
                m.bytes_out as f64,
            );
            let ps = vec![
                ("protocol", proto.to_owned()),
                ("shard", s.shard.to_string()),
            ];
            add(&mut active, ps.clone(), m.connections_active as f64);
            add(&mut total, ps.clone(), m.connections_total as f64);
            add(&mut moved, ps, m.connections_moved as f64);
            add(
                &mut throttled,
                vec![("protocol", proto.to_owned())],
                m.throttled as f64,
            );
            for (reason, n) in [
                ("per_shard", m.refused_per_shard),
                ("per_ip", m.refused_per_ip),
            ] {
                let l = vec![
                    ("protocol", proto.to_owned()),
                    ("reason", reason.to_owned()),
                ];
                add(&mut refused, l, n as f64);
            }
            for (api, n) in &m.requests {
                let l = vec![("protocol", proto.to_owned()), ("api", (*api).to_owned())];
                add(&mut requests, l, *n as f64);
            }
            for (code, n) in &m.errors {
                let l = vec![("protocol", proto.to_owned()), ("code", code.to_string())];
                add(&mut errors, l, *n as f64);
            }
            add(
                &mut tls_handshakes,
                vec![("protocol", proto.to_owned())],
                m.tls_handshakes as f64,
            );
            for (reason, n) in &m.tls_failures {
                let l = vec![
                    ("protocol", proto.to_owned()),
                    ("reason", (*reason).to_owned()),
                ];
                add(&mut tls_failures, l, *n as f64);
            }
            for (mechanism, n) in &m.auth_failures {
                let l = vec![
                    ("protocol", proto.to_owned()),
                    ("mechanism", (*mechanism).to_owned()),
                ];
                add(&mut auth_failures, l, *n as f64);
            }
            for ((operation, resource), n) in &m.acl_denials {
                let l = vec![
                    ("protocol", proto.to_owned()),
                    ("operation", (*operation).to_owned()),
                    ("resource_type", (*resource).to_owned()),
                ];
                add(&mut acl_denials, l, *n as f64);
            }
            publish.entry(proto).or_default().add(&m.publish);
            fetch.entry(proto).or_default().add(&m.fetch);
        }
    }
    e.summed(
        "portask_messages_produced_total",
        "counter",
        "Messages taken in: Kafka records appended, AMQP messages published (topic = exchange, amq.default for the default exchange).",
        produced,
    );
    e.summed(
        "portask_messages_consumed_total",
        "counter",
        "Messages handed out: Kafka records fetched, AMQP deliveries and gets (topic = queue).",
        consumed,
    );
    e.summed(
        "portask_bytes_in_total",
        "counter",
        "Message bytes taken in.",
        bytes_in,
    );
    e.summed(
        "portask_bytes_out_total",
        "counter",
        "Message bytes handed out.",
        bytes_out,
    );
    e.family(
        "portask_publish_duration_seconds",
        "histogram",
        "Produce / publish request to acknowledgement.",
    );
    for (proto, h) in &publish {
        e.histogram(
            "portask_publish_duration_seconds",
            &vec![("protocol", (*proto).to_owned())],
            h,
        );
    }
    e.family(
        "portask_fetch_duration_seconds",
        "histogram",
        "Fetch request to response (Kafka, including long-poll waits), HTTP request to response.",
    );
    for (proto, h) in &fetch {
        e.histogram(
            "portask_fetch_duration_seconds",
            &vec![("protocol", (*proto).to_owned())],
            h,
        );
    }
    e.summed(
        "portask_connections_active",
        "gauge",
        "Open client connections.",
        active,
    );
    e.summed(
        "portask_connections_total",
        "counter",
        "Client connections accepted.",
        total,
    );
    e.summed(
        "portask_connections_moved_total",
        "counter",
        "Client connections this shard took over from another shard (Kafka: to be with the partitions they use).",
        moved,
    );
    e.summed(
        "portask_connections_refused_total",
        "counter",
        "Client connections closed at accept: reason per_shard (limits.max_connections_per_shard) or per_ip (limits.max_connections_per_ip).",
        refused,
    );
    e.summed(
        "portask_tls_handshakes_total",
        "counter",
        "TLS handshakes completed on the TLS listeners.",
        tls_handshakes,
    );
    e.summed(
        "portask_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed, by reason (timeout, no_certificate, bad_certificate, protocol, io).",
        tls_failures,
    );
    e.summed(
        "portask_auth_failures_total",
        "counter",
        "Failed authentications by protocol and mechanism (Kafka SASL, AMQP, HTTP basic).",
        auth_failures,
    );
    e.summed(
        "portask_acl_denials_total",
        "counter",
        "Requests refused by an ACL, by operation and resource type.",
        acl_denials,
    );
    e.summed(
        "portask_backpressure_total",
        "counter",
        "Times a connection waited on its in-flight byte budget (Kafka: stopped reading; AMQP: blocked).",
        throttled,
    );
    e.summed(
        "portask_requests_total",
        "counter",
        "Requests by protocol and API (Kafka API, AMQP method class, HTTP endpoint).",
        requests,
    );
    e.summed(
        "portask_errors_total",
        "counter",
        "Errors returned to clients by protocol code (Kafka error code, AMQP reply code, HTTP status).",
        errors,
    );

    let mut queue_messages = BTreeMap::new();
    let mut queue_consumers = BTreeMap::new();
    let mut hwm = BTreeMap::new();
    let mut lso = BTreeMap::new();
    let mut size = BTreeMap::new();
    let mut high: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for s in stats {
        for q in &s.queues {
            let l = |state: &str| {
                vec![
                    ("vhost", q.vhost.clone()),
                    ("queue", q.name.clone()),
                    ("state", state.to_owned()),
                ]
            };
            add(&mut queue_messages, l("ready"), q.messages_ready as f64);
            add(
                &mut queue_messages,
                l("unacked"),
                q.messages_unacknowledged as f64,
            );
            let l = vec![("vhost", q.vhost.clone()), ("queue", q.name.clone())];
            add(&mut queue_consumers, l, q.consumers as f64);
        }
        for p in &s.partitions {
            let l = vec![
                ("topic", p.topic.clone()),
                ("partition", p.partition.to_string()),
            ];
            add(&mut hwm, l.clone(), p.high_watermark as f64);
            add(&mut lso, l.clone(), p.log_start_offset as f64);
            add(&mut size, l, p.size_bytes as f64);
            high.insert((p.topic.clone(), p.partition), p.high_watermark);
        }
    }
    e.summed(
        "portask_queue_messages",
        "gauge",
        "Messages in an AMQP queue by state (ready, unacked).",
        queue_messages,
    );
    e.summed(
        "portask_queue_consumers",
        "gauge",
        "Consumers of an AMQP queue.",
        queue_consumers,
    );
    e.summed(
        "portask_partition_high_watermark",
        "gauge",
        "Next offset of a partition.",
        hwm,
    );
    e.summed(
        "portask_partition_log_start_offset",
        "gauge",
        "First offset still in a partition.",
        lso,
    );
    e.summed(
        "portask_partition_size_bytes",
        "gauge",
        "Bytes of a partition's segments.",
        size,
    );

    // Kafka groups and AMQP `x-consumer-group` groups alike (they commit to one store).
    let mut lag = BTreeMap::new();
    let mut offset = BTreeMap::new();
    for s in stats {
        for (group, topic, partition, committed) in &s.committed {
            let Some(end) = high.get(&(topic.clone(), *partition)) else {
                continue;
            };
            if *committed < 0 {
                continue;
            }
            let l = vec![
                ("group", group.clone()),
                ("topic", topic.clone()),
                ("partition", partition.to_string()),
            ];
            add(&mut offset, l.clone(), *committed as f64);
            add(&mut lag, l, (end - committed).max(0) as f64);
        }
    }
    e.summed(
        "portask_consumer_group_lag",
        "gauge",
        "High watermark minus the group's committed offset.",
        lag,
    );
    e.summed(
        "portask_consumer_group_committed_offset",
        "gauge",
        "A group's committed offset of a partition (the next offset it reads).",
        offset,
    );

    e.family(
        "portask_shard_busy_ratio",
        "gauge",
        "Share of the last second a shard's executor spent running tasks.",
    );
    for s in stats {
        e.sample(
            "portask_shard_busy_ratio",
            &vec![("shard", s.shard.to_string())],
            s.busy_ratio,
        );
    }
    e.family(
        "portask_shard_memory_bytes",
        "gauge",
        "Message bytes a shard holds in memory: Kafka tail caches, AMQP queues.",
    );
    for s in stats {
        let shard = s.shard.to_string();
        let l = |kind: &str| vec![("shard", shard.clone()), ("kind", kind.to_owned())];
        e.sample(
            "portask_shard_memory_bytes",
            &l("tail_cache"),
            s.tail_cache_bytes as f64,
        );
        e.sample(
            "portask_shard_memory_bytes",
            &l("amqp_queues"),
            s.amqp_memory_bytes as f64,
        );
    }
    e.family(
        "portask_storage_fsync_duration_seconds",
        "histogram",
        "fdatasync of partition logs, or the O_DSYNC write that stands in for one.",
    );
    for s in stats {
        e.histogram(
            "portask_storage_fsync_duration_seconds",
            &vec![("shard", s.shard.to_string())],
            &s.fsync,
        );
    }
    e.family(
        "portask_memory_usage_bytes",
        "gauge",
        "Resident memory of the broker process.",
    );
    e.sample(
        "portask_memory_usage_bytes",
        &vec![],
        process.memory_bytes as f64,
    );
    e.family(
        "portask_cpu_usage_ratio",
        "gauge",
        "CPU used by the process since the previous reading, in cores.",
    );
    e.sample("portask_cpu_usage_ratio", &vec![], process.cpu_ratio);
    let path = vec![("path", process.data_dir.clone())];
    e.family(
        "portask_disk_free_bytes",
        "gauge",
        "Free bytes on the data directory's filesystem.",
    );
    e.sample(
        "portask_disk_free_bytes",
        &path,
        process.disk_free_bytes as f64,
    );
    e.family(
        "portask_disk_alarm",
        "gauge",
        "1 while free space is below storage.min_free_bytes: publishers blocked, produce refused.",
    );
    e.sample(
        "portask_disk_alarm",
        &path,
        if process.disk_alarm { 1.0 } else { 0.0 },
    );
    e.family(
        "portask_disk_min_free_bytes",
        "gauge",
        "The free-space watermark (storage.min_free_bytes); 0 when off.",
    );
    e.sample(
        "portask_disk_min_free_bytes",
        &path,
        process.disk_min_free_bytes as f64,
    );
    e.family(
        "portask_disk_total_bytes",
        "gauge",
        "Size of the data directory's filesystem.",
    );
    e.sample(
        "portask_disk_total_bytes",
        &path,
        process.disk_total_bytes as f64,
    );
    e.family(
        "portask_shards",
        "gauge",
        "Shards (executors) of the broker.",
    );
    e.sample("portask_shards", &vec![], stats.len() as f64);
    e.family(
        "portask_build_info",
        "gauge",
        "Always 1; the version in a label.",
    );
    e.sample(
        "portask_build_info",
        &vec![("version", env!("CARGO_PKG_VERSION").to_owned())],
        1.0,
    );
    e.family(
        "portask_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch.",
    );
    e.sample(
        "portask_start_time_seconds",
        &vec![],
        process.start_time_seconds as f64,
    );
    e.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::default();
        e.sample("m", &vec![("topic", "a\"b\\c\nd".into())], 1.5);
        assert_eq!(e.out, "m{topic=\"a\\\"b\\\\c\\nd\"} 1.5\n");
    }
}

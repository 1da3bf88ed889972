//! The catalog: topics, their partitions and configs, and the AMQP topology (vhosts'
//! exchanges, queues and bindings; see `amqp`).
//!
//! Single writer: shard 0 owns the `CatalogWriter`, which validates a change, persists it
//! (see `store.rs`), builds the next immutable `CatalogState` and broadcasts it to every
//! shard. Every shard keeps a read-only `Replica` of the latest state it has seen, so
//! routing and metadata reads never leave the shard. States are whole and versioned, so a
//! shard that receives them out of order keeps the newest.

pub mod amqp;
pub mod security;
pub mod store;
pub mod writer;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use rkyv::{Archive, Deserialize, Serialize};

use crate::config::Config;
use crate::storage::LogSettings;
use crate::util::notify::Notify;

/// Why a catalog change was refused; the Kafka layer maps each to an error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    #[error("invalid topic name '{0}': {1}")]
    InvalidTopic(String, &'static str),
    #[error("invalid partition count {0}")]
    InvalidPartitions(i32),
    #[error("invalid config {0}: {1}")]
    InvalidConfig(String, String),
    #[error("topic deletion is disabled")]
    DeleteDisabled,
    #[error("catalog storage error: {0}")]
    Storage(String),
    /// The disk is full (ENOSPC, EDQUOT): the change was not made.
    #[error("catalog storage error: the disk is full ({0})")]
    NoSpace(String),
    /// An AMQP topology refusal, with the reply code the client gets.
    #[error("{text}")]
    Amqp { code: u16, text: String },
}

#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct Topic {
    pub name: String,
    pub id: [u8; 16],
    pub partitions: i32,
    /// Topic-level overrides (`retention.ms`, …) as Kafka names them.
    pub configs: BTreeMap<String, String>,
}

/// One immutable version of the catalog.
#[derive(Debug, Clone, Default, PartialEq, Archive, Serialize, Deserialize)]
pub struct CatalogState {
    pub version: u64,
    pub topics: BTreeMap<String, Topic>,
    /// Cluster-wide defaults set at run time (AlterConfigs on the broker), by topic config
    /// name (`retention.ms`, …); they override the configuration file's defaults.
    pub broker_configs: BTreeMap<String, String>,
    /// AMQP topology by vhost name.
    pub amqp: BTreeMap<String, amqp::VhostTopology>,
    /// ACLs and SCRAM credentials. Not part of this record's archived layout (catalogs
    /// written before it existed must still load): the snapshot stores it as a record of
    /// its own after this one (`store.rs`).
    #[rkyv(with = rkyv::with::Skip)]
    pub security: security::SecurityState,
}

/// One persisted mutation.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub enum Change {
    CreateTopic(Topic),
    DeleteTopic(String),
    SetPartitions(String, i32),
    SetConfigs(String, BTreeMap<String, String>),
    SetBrokerConfigs(BTreeMap<String, String>),
    /// An AMQP topology change (`amqp`).
    Amqp(amqp::TopologyChange),
    /// An ACL or SCRAM credential change (`security`). Boxed, so the archived `Change`
    /// keeps the size it had before this variant and older log records still decode.
    Security(Box<security::SecurityChange>),
}

impl CatalogState {
    /// Applies a change that `CatalogWriter::check` has accepted.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::CreateTopic(t) => {
                self.topics.insert(t.name.clone(), t.clone());
            }
            Change::DeleteTopic(name) => {
                self.topics.remove(name);
                // The stream queue that is this topic goes with it (`crate::stream`).
                let stream = self
                    .amqp
                    .get(crate::stream::queue::VHOST)
                    .and_then(|t| t.queues.get(name))
                    .filter(|q| q.is_stream())
                    .map(|q| q.id);
                if let Some(id) = stream {
                    amqp::apply(
                        &mut self.amqp,
                        &amqp::TopologyChange::DeleteQueues {
                            vhost: crate::stream::queue::VHOST.to_owned(),
                            queues: vec![(name.clone(), id)],
                        },
                    );
                }
                // And a super stream's partition queues and exchange (`stream::superstream`).
                for c in crate::stream::superstream::deleted(self, name) {
                    amqp::apply(&mut self.amqp, &c);
                }
            }
            Change::SetPartitions(name, n) => {
                if let Some(t) = self.topics.get_mut(name) {
                    t.partitions = *n;
                }
                // A super stream AMQP shows gets its new partition queues at once.
                for c in crate::stream::superstream::grow(self, name) {
                    amqp::apply(&mut self.amqp, &c);
                }
            }
            Change::SetConfigs(name, configs) => {
                if let Some(t) = self.topics.get_mut(name) {
                    t.configs = configs.clone();
                }
            }
            Change::SetBrokerConfigs(configs) => {
                self.broker_configs = configs.clone();
            }
            Change::Amqp(c) => amqp::apply(&mut self.amqp, c),
            Change::Security(c) => security::apply(&mut self.security, c),
        }
        self.version += 1;
    }

    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &[u8; 16]) -> Option<&Topic> {
        self.topics.values().find(|t| &t.id == id)
    }
}

/// Kafka's group coordinator topic (`kafka::offsets_topic` writes it).
pub const CONSUMER_OFFSETS: &str = "__consumer_offsets";

/// Whether `name` is an internal topic: written only by the broker, never deleted or
/// repartitioned by a client (Kafka's `Topic.isInternal`).
pub fn is_internal_topic(name: &str) -> bool {
    name == CONSUMER_OFFSETS
}

/// Kafka's rules for topic names.
pub fn validate_topic_name(name: &str) -> Result<(), CatalogError> {
    let bad = |why| Err(CatalogError::InvalidTopic(name.to_owned(), why));
    if name.is_empty() {
        return bad("empty");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if name.len() > 249 {
        return bad("longer than 249 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
    {
        return bad("only ASCII alphanumerics, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Topic configs Portask understands, with their broker-level defaults.
pub const TOPIC_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "max.message.bytes",
    "message.timestamp.type",
    "flush.messages",
    "flush.ms",
    "index.interval.bytes",
    "delete.retention.ms",
    "min.insync.replicas",
    "compression.type",
];

/// Broker-level config names (as `kafka-configs --entity-type brokers` uses them) and the
/// topic config each one is the default of.
pub const BROKER_CONFIGS: &[(&str, &str)] = &[
    ("log.cleanup.policy", "cleanup.policy"),
    ("log.retention.ms", "retention.ms"),
    ("log.retention.bytes", "retention.bytes"),
    ("log.segment.bytes", "segment.bytes"),
    ("log.roll.ms", "segment.ms"),
    ("message.max.bytes", "max.message.bytes"),
    ("log.message.timestamp.type", "message.timestamp.type"),
    ("log.flush.interval.messages", "flush.messages"),
    ("log.flush.interval.ms", "flush.ms"),
    ("log.index.interval.bytes", "index.interval.bytes"),
    ("log.cleaner.delete.retention.ms", "delete.retention.ms"),
    ("min.insync.replicas", "min.insync.replicas"),
    ("compression.type", "compression.type"),
];

/// The topic config a broker-level name sets, if it is one.
pub fn topic_config_of_broker(name: &str) -> Option<&'static str> {
    BROKER_CONFIGS
        .iter()
        .find(|(b, _)| *b == name)
        .map(|(_, t)| *t)
}

/// The broker default of a topic config, as a string.
pub fn default_config(config: &Config, name: &str) -> Option<String> {
    let k = &config.kafka;
    Some(match name {
        "cleanup.policy" => "delete".into(),
        "retention.ms" => k.retention_ms.to_string(),
        "retention.bytes" => k.retention_bytes.to_string(),
        "segment.bytes" => k.segment_bytes.to_string(),
        "segment.ms" => k.segment_ms.to_string(),
        "max.message.bytes" => k.max_message_bytes.to_string(),
        "message.timestamp.type" => k.message_timestamp_type.clone(),
        "flush.messages" => k.flush_messages.to_string(),
        "flush.ms" => {
            if k.flush_ms < 0 {
                i64::MAX.to_string()
            } else {
                k.flush_ms.to_string()
            }
        }
        "index.interval.bytes" => k.index_interval_bytes.to_string(),
        "delete.retention.ms" => "86400000".into(),
        "min.insync.replicas" => "1".into(),
        "compression.type" => "producer".into(),
        _ => return None,
    })
}

/// Checks one topic config value.
pub fn validate_config(name: &str, value: &str) -> Result<(), CatalogError> {
    let bad = |why: &str| Err(CatalogError::InvalidConfig(name.to_owned(), why.to_owned()));
    let int = |min: i64| -> Result<(), CatalogError> {
        match value.parse::<i64>() {
            Ok(v) if v >= min => Ok(()),
            _ => Err(CatalogError::InvalidConfig(
                name.to_owned(),
                format!("'{value}' is not an integer >= {min}"),
            )),
        }
    };
    match name {
        "cleanup.policy" => {
            if value
                .split(',')
                .all(|p| matches!(p.trim(), "delete" | "compact"))
            {
                Ok(())
            } else {
                bad("must be delete, compact or both")
            }
        }
        "retention.ms" | "retention.bytes" => int(-1),
        "segment.bytes" => int(1024),
        "segment.ms" | "flush.messages" | "flush.ms" | "min.insync.replicas" => int(1),
        "max.message.bytes" => int(0),
        "index.interval.bytes" | "delete.retention.ms" => int(0),
        "message.timestamp.type" => match value {
            "CreateTime" | "LogAppendTime" => Ok(()),
            _ => bad("must be CreateTime or LogAppendTime"),
        },
        "compression.type" => match value {
            "producer" | "uncompressed" | "gzip" | "snappy" | "lz4" | "zstd" => Ok(()),
            _ => bad("unknown compression type"),
        },
        _ => bad("unknown config"),
    }
}

/// A topic config's effective value and where it comes from: the topic's own override,
/// a run-time broker default, or the configuration file.
pub fn effective_config(
    config: &Config,
    state: &CatalogState,
    topic: &Topic,
    name: &str,
) -> Option<(String, ConfigSource)> {
    if let Some(v) = topic.configs.get(name) {
        return Some((v.clone(), ConfigSource::Topic));
    }
    if let Some(v) = state.broker_configs.get(name) {
        return Some((v.clone(), ConfigSource::DynamicBrokerDefault));
    }
    default_config(config, name).map(|v| (v, ConfigSource::Default))
}

/// Kafka's config sources, with their wire values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    Topic = 1,
    DynamicBrokerDefault = 3,
    Default = 5,
}

/// The effective log settings of a topic.
pub fn log_settings(config: &Config, state: &CatalogState, topic: &Topic) -> LogSettings {
    let value = |name: &str| effective_config(config, state, topic, name).map(|(v, _)| v);
    let get = |name: &str| -> i64 { value(name).and_then(|v| v.parse().ok()).unwrap_or(-1) };
    let flush_ms = get("flush.ms");
    let policy: Vec<String> = value("cleanup.policy")
        .unwrap_or_default()
        .split(',')
        .map(|p| p.trim().to_owned())
        .collect();
    LogSettings {
        segment_bytes: get("segment.bytes"),
        segment_ms: get("segment.ms"),
        retention_ms: get("retention.ms"),
        retention_bytes: get("retention.bytes"),
        max_message_bytes: get("max.message.bytes"),
        log_append_time: value("message.timestamp.type").as_deref() == Some("LogAppendTime"),
        flush_messages: get("flush.messages").max(1),
        flush_ms: if flush_ms == i64::MAX { -1 } else { flush_ms },
        index_interval_bytes: get("index.interval.bytes").clamp(1, u32::MAX as i64) as u32,
        delete_policy: policy.iter().any(|p| p == "delete"),
        compact_policy: policy.iter().any(|p| p == "compact"),
        delete_retention_ms: get("delete.retention.ms"),
    }
}

/// A shard's read-only view of the catalog.
pub struct Replica {
    state: RefCell<Arc<CatalogState>>,
    /// Fired whenever a newer state is installed.
    pub changed: Notify,
}

impl Replica {
    pub fn new(state: Arc<CatalogState>) -> Self {
        Replica {
            state: RefCell::new(state),
            changed: Notify::new(),
        }
    }

    /// The current state; cheap (one reference count), never held across an await by
    /// callers that need the latest.
    pub fn current(&self) -> Arc<CatalogState> {
        self.state.borrow().clone()
    }

    pub fn version(&self) -> u64 {
        self.state.borrow().version
    }

    /// Installs `state` if it is newer; returns whether it was.
    pub fn install(&self, state: Arc<CatalogState>) -> bool {
        let newer = state.version > self.state.borrow().version;
        if newer {
            *self.state.borrow_mut() = state;
            self.changed.notify();
        }
        newer
    }
}

/// Generates a topic id: 16 random-enough bytes from the clock, the name and the process.
pub fn new_topic_id(name: &str) -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(name.as_bytes());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_be_bytes());
    }
    // A version-4 UUID layout, as Kafka's are.
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_x-2").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("bad name").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }

    #[test]
    fn configs_validate_and_apply() {
        assert!(validate_config("retention.ms", "-1").is_ok());
        assert!(validate_config("retention.ms", "soon").is_err());
        assert!(validate_config("no.such", "1").is_err());
        let config = Config::default();
        let mut t = Topic {
            name: "t".into(),
            id: new_topic_id("t"),
            partitions: 1,
            configs: BTreeMap::new(),
        };
        let mut state = CatalogState::default();
        assert_eq!(log_settings(&config, &state, &t).segment_bytes, 1 << 30);
        state
            .broker_configs
            .insert("segment.bytes".into(), "4096".into());
        assert_eq!(log_settings(&config, &state, &t).segment_bytes, 4096);
        t.configs.insert("segment.bytes".into(), "2048".into());
        t.configs
            .insert("message.timestamp.type".into(), "LogAppendTime".into());
        let s = log_settings(&config, &state, &t);
        assert_eq!(s.segment_bytes, 2048);
        assert!(s.log_append_time);
        assert_eq!(s.flush_ms, -1);
    }
}

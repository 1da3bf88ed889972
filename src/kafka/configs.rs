//! Config resources as DescribeConfigs / AlterConfigs / IncrementalAlterConfigs see them:
//! a topic (its overrides over the broker defaults) or the broker (run-time defaults over
//! the configuration file). Shared by those three handlers.
//!
//! Pure functions over a catalog state; runs on the connection's shard.

use std::collections::BTreeMap;

use crate::catalog::{self, CatalogError, CatalogState, Change, ConfigSource};
use crate::config::Config;

pub const TOPIC: i8 = 2;
pub const BROKER: i8 = 4;

/// One described config: name, value, source (wire value), read-only, type (wire value).
pub struct Described {
    pub name: String,
    pub value: Option<String>,
    pub source: i8,
    pub read_only: bool,
    pub config_type: i8,
}

/// Kafka's config types on the wire (DescribeConfigs v3+).
fn config_type(topic_name: &str) -> i8 {
    match topic_name {
        "cleanup.policy" => 7,                              // LIST
        "message.timestamp.type" | "compression.type" => 2, // STRING
        "segment.bytes" | "max.message.bytes" | "index.interval.bytes" | "min.insync.replicas" => 3, // INT
        _ => 5, // LONG
    }
}

/// Why a resource cannot be described or altered.
pub enum ResourceError {
    UnknownTopic,
    InvalidBroker,
    UnsupportedType,
    Catalog(CatalogError),
}

fn broker_matches(config: &Config, name: &str) -> bool {
    name.is_empty() || name == config.node_id.to_string()
}

/// Every config of a resource, filtered by `keys` when given.
pub fn describe(
    config: &Config,
    state: &CatalogState,
    resource_type: i8,
    name: &str,
    keys: Option<&[String]>,
) -> Result<Vec<Described>, ResourceError> {
    let wanted = |n: &str| keys.is_none_or(|k| k.iter().any(|x| x == n));
    match resource_type {
        TOPIC => {
            let topic = state.topic(name).ok_or(ResourceError::UnknownTopic)?;
            Ok(catalog::TOPIC_CONFIGS
                .iter()
                .filter(|n| wanted(n))
                .map(|n| {
                    let (value, source) = catalog::effective_config(config, state, topic, n)
                        .map(|(v, s)| (Some(v), s))
                        .unwrap_or((None, ConfigSource::Default));
                    Described {
                        name: (*n).to_owned(),
                        value,
                        source: source as i8,
                        read_only: false,
                        config_type: config_type(n),
                    }
                })
                .collect())
        }
        BROKER => {
            if !broker_matches(config, name) {
                return Err(ResourceError::InvalidBroker);
            }
            let mut out: Vec<Described> = catalog::BROKER_CONFIGS
                .iter()
                .filter(|(b, _)| wanted(b))
                .map(|(b, t)| {
                    let (value, source) = match state.broker_configs.get(*t) {
                        Some(v) => (Some(v.clone()), ConfigSource::DynamicBrokerDefault),
                        None => (catalog::default_config(config, t), ConfigSource::Default),
                    };
                    Described {
                        name: (*b).to_owned(),
                        value,
                        source: source as i8,
                        read_only: false,
                        config_type: config_type(t),
                    }
                })
                .collect();
            let fixed = [
                ("num.partitions", config.kafka.num_partitions.to_string(), 3),
                (
                    "auto.create.topics.enable",
                    config.kafka.auto_create_topics.to_string(),
                    1,
                ),
                (
                    "delete.topic.enable",
                    config.kafka.delete_topic_enable.to_string(),
                    1,
                ),
                ("broker.id", config.node_id.to_string(), 3),
            ];
            out.extend(
                fixed
                    .into_iter()
                    .filter(|(n, _, _)| wanted(n))
                    .map(|(n, v, t)| Described {
                        name: n.to_owned(),
                        value: Some(v),
                        source: 4, // STATIC_BROKER_CONFIG
                        read_only: true,
                        config_type: t,
                    }),
            );
            Ok(out)
        }
        _ => Err(ResourceError::UnsupportedType),
    }
}

/// An edit of one config: set a value, delete the override, or (lists) append/subtract.
pub enum Edit {
    Set(String),
    Delete,
    Append(String),
    Subtract(String),
}

/// Maps a client-facing config name to the stored one (None: unknown name).
type NameMap = fn(&str) -> Option<String>;

/// The catalog change that applies `edits` to a resource; `replace` drops every override
/// not edited (legacy AlterConfigs).
pub fn change(
    state: &CatalogState,
    config: &Config,
    resource_type: i8,
    name: &str,
    edits: Vec<(String, Edit)>,
    replace: bool,
) -> Result<Change, ResourceError> {
    let (mut current, map_name): (BTreeMap<String, String>, NameMap) = match resource_type {
        TOPIC => {
            let t = state.topic(name).ok_or(ResourceError::UnknownTopic)?;
            (t.configs.clone(), |n| {
                catalog::TOPIC_CONFIGS.contains(&n).then(|| n.to_owned())
            })
        }
        BROKER => {
            if !broker_matches(config, name) {
                return Err(ResourceError::InvalidBroker);
            }
            (state.broker_configs.clone(), |n| {
                catalog::topic_config_of_broker(n).map(str::to_owned)
            })
        }
        _ => return Err(ResourceError::UnsupportedType),
    };
    if replace {
        current.clear();
    }
    for (key, edit) in edits {
        let Some(k) = map_name(&key) else {
            return Err(ResourceError::Catalog(CatalogError::InvalidConfig(
                key,
                "unknown config".into(),
            )));
        };
        let list = |m: &BTreeMap<String, String>| -> Vec<String> {
            m.get(&k)
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        match edit {
            Edit::Set(v) => {
                current.insert(k, v);
            }
            Edit::Delete => {
                current.remove(&k);
            }
            Edit::Append(v) => {
                let mut items = list(&current);
                for x in v.split(',').map(str::trim).filter(|x| !x.is_empty()) {
                    if !items.iter().any(|i| i == x) {
                        items.push(x.to_owned());
                    }
                }
                current.insert(k, items.join(","));
            }
            Edit::Subtract(v) => {
                let drop: Vec<&str> = v.split(',').map(str::trim).collect();
                let items: Vec<String> = list(&current)
                    .into_iter()
                    .filter(|i| !drop.contains(&i.as_str()))
                    .collect();
                if items.is_empty() {
                    current.remove(&k);
                } else {
                    current.insert(k, items.join(","));
                }
            }
        }
    }
    Ok(match resource_type {
        TOPIC => Change::SetConfigs(name.to_owned(), current),
        _ => Change::SetBrokerConfigs(current),
    })
}

/// The client-visible code and message of a resource error.
/// Makes one resource's config change (`change`) and has the catalog apply it (or only
/// check it, with `validate_only`): AlterConfigs' and IncrementalAlterConfigs' shared step,
/// answered as the error code and message of the resource's result.
pub async fn apply(
    shard: &std::rc::Rc<crate::broker::Shard>,
    state: &CatalogState,
    resource_type: i8,
    name: &str,
    edits: Vec<(String, Edit)>,
    replace: bool,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    let change =
        change(state, &shard.config, resource_type, name, edits, replace).map_err(|e| error(&e))?;
    shard
        .change_catalog(vec![change], validate_only)
        .await
        .pop()
        .unwrap_or(Ok(()))
        .map_err(|e| error(&ResourceError::Catalog(e)))
}

pub fn error(e: &ResourceError) -> (i16, String) {
    use kafka_protocol::ResponseError as E;
    match e {
        ResourceError::UnknownTopic => (E::UnknownTopicOrPartition.code(), "unknown topic".into()),
        ResourceError::InvalidBroker => (E::InvalidRequest.code(), "no such broker".into()),
        ResourceError::UnsupportedType => {
            (E::InvalidRequest.code(), "unsupported resource type".into())
        }
        ResourceError::Catalog(c) => (super::catalog_error_code(c), c.to_string()),
    }
}

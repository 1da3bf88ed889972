//! Metadata (key 3), v0–v13: brokers (just this one), topics and their partitions, with
//! auto-creation when `auto.create.topics.enable` and the client allows it (never of a
//! `__` name); authorized operations when asked. ACLs: topics the principal may not
//! DESCRIBE are left out of "all topics" and answered TOPIC_AUTHORIZATION_FAILED when
//! named; auto-creation needs CREATE on the cluster or the topic (else
//! TOPIC_AUTHORIZATION_FAILED, nothing created).
//!
//! Runs on the connection's shard from its catalog replica; only auto-creation goes to
//! the catalog writer on shard 0.

use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::ResponseError;

use super::details::authorize::topic_denied;
use super::{deferred, frame, str_bytes, topic_name, uuid, Conn, Pending};
use crate::catalog::{new_topic_id, validate_topic_name, Change, Topic};
use crate::kafka::catalog_error_code;
use crate::security::acl::{Operation, ResourceType, CLUSTER_NAME};

/// Kafka's "authorized operations not requested" marker.
const OPS_OMITTED: i32 = i32::MIN;
/// The cluster's authorized operations as Kafka answers them (Metadata v8–v10,
/// DescribeCluster): the operations of the principal if it may DESCRIBE the cluster, else
/// none.
pub fn cluster_operations(conn: &Conn) -> i32 {
    if conn.may(Operation::Describe, ResourceType::Cluster, CLUSTER_NAME) {
        conn.authorized_operations(ResourceType::Cluster, CLUSTER_NAME)
    } else {
        0
    }
}

/// Whether auto-creation may make `name`: never a `__` name, which Kafka keeps for
/// internal topics (`__consumer_offsets`, `__transaction_state`): a client probing for one
/// must not get an ordinary empty topic of that name.
fn auto_creatable(name: &str) -> bool {
    !name.starts_with("__") && validate_topic_name(name).is_ok()
}

/// Host and port clients should use: the advertised host and port of the listener the
/// client came through, else the address this client reached.
pub fn advertised(conn: &Conn) -> (String, i32) {
    let host = &conn.listener.advertised_host;
    let host = if host.is_empty() {
        conn.local.ip().to_string()
    } else {
        host.clone()
    };
    let port = match conn.listener.advertised_port {
        0 => conn.local.port(),
        p => p,
    };
    (host, port as i32)
}

pub fn handle(conn: &Rc<Conn>, req: MetadataRequest, correlation_id: i32, version: i16) -> Pending {
    deferred(conn, |conn| async move {
        let shard = &conn.shard;
        // None: every topic. v0 sends an empty list for "all".
        let wanted: Option<Vec<(Option<String>, [u8; 16])>> = match req.topics {
            None => None,
            Some(t) if t.is_empty() && version == 0 => None,
            Some(t) => Some(
                t.into_iter()
                    .map(|t| (t.name.map(|n| n.to_string()), *t.topic_id.as_bytes()))
                    .collect(),
            ),
        };
        let auto =
            shard.config.kafka.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
        // Named topics refused by the ACLs: without DESCRIBE, or without CREATE (on the
        // cluster or the topic) where auto-creation would make them. Kafka tells neither
        // whether they exist.
        let mut refused: HashSet<String> = HashSet::new();
        let mut missing: Vec<Change> = Vec::new();
        if let Some(w) = &wanted {
            let state = shard.catalog.current();
            let may_create_any = conn.may(Operation::Create, ResourceType::Cluster, CLUSTER_NAME);
            for (n, id) in w {
                let name = match n {
                    Some(n) => n.clone(),
                    None => match state.topic_by_id(id) {
                        Some(t) => t.name.clone(),
                        None => continue,
                    },
                };
                if !conn.authorize(Operation::Describe, ResourceType::Topic, &name) {
                    refused.insert(name);
                    continue;
                }
                if !auto || n.is_none() || state.topic(&name).is_some() || !auto_creatable(&name) {
                    continue;
                }
                if !may_create_any && !conn.authorize(Operation::Create, ResourceType::Topic, &name)
                {
                    refused.insert(name);
                    continue;
                }
                missing.push(Change::CreateTopic(Topic {
                    id: new_topic_id(&name),
                    name,
                    partitions: shard.config.kafka.num_partitions,
                    configs: BTreeMap::new(),
                }));
            }
        }
        if !missing.is_empty() {
            for r in shard.change_catalog(missing, false).await {
                if let Err(e) = r {
                    if catalog_error_code(&e) != ResponseError::TopicAlreadyExists.code() {
                        log::warn!("auto-creating topic: {e}");
                    }
                }
            }
        }
        let state = shard.catalog.current();
        let node = shard.config.node_id;
        let describe = |t: &Topic| -> MetadataResponseTopic {
            let partitions = (0..t.partitions)
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(BrokerId(node))
                        .with_leader_epoch(0)
                        .with_replica_nodes(vec![BrokerId(node)])
                        .with_isr_nodes(vec![BrokerId(node)])
                })
                .collect();
            MetadataResponseTopic::default()
                .with_name(Some(topic_name(&t.name)))
                .with_topic_id(uuid(&t.id))
                .with_is_internal(crate::kafka::offsets_topic::is_internal(&t.name))
                .with_partitions(partitions)
                .with_topic_authorized_operations(if req.include_topic_authorized_operations {
                    conn.authorized_operations(ResourceType::Topic, &t.name)
                } else {
                    OPS_OMITTED
                })
        };
        let topics: Vec<MetadataResponseTopic> = match wanted {
            // All topics: those the principal may not describe are left out, silently.
            None => state
                .topics
                .values()
                .filter(|t| conn.may(Operation::Describe, ResourceType::Topic, &t.name))
                .map(describe)
                .collect(),
            Some(w) => w
                .into_iter()
                .map(|(name, id)| {
                    let found = match &name {
                        Some(n) => state.topic(n),
                        None => state.topic_by_id(&id),
                    };
                    let known = found.map(|t| t.name.as_str()).or(name.as_deref());
                    if let Some(n) = known.filter(|n| refused.contains(*n)) {
                        return MetadataResponseTopic::default()
                            .with_error_code(topic_denied())
                            .with_name(name.is_some().then(|| topic_name(n)))
                            .with_topic_id(uuid::Uuid::from_bytes(id));
                    }
                    match (found, name) {
                        (Some(t), _) => describe(t),
                        (None, Some(n)) => {
                            let code = if validate_topic_name(&n).is_err() {
                                ResponseError::InvalidTopicException.code()
                            } else {
                                ResponseError::UnknownTopicOrPartition.code()
                            };
                            MetadataResponseTopic::default()
                                .with_error_code(code)
                                .with_name(Some(topic_name(&n)))
                        }
                        (None, None) => MetadataResponseTopic::default()
                            .with_error_code(ResponseError::UnknownTopicId.code())
                            .with_topic_id(uuid::Uuid::from_bytes(id)),
                    }
                })
                .collect(),
        };
        let (host, port) = advertised(&conn);
        let resp = MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(BrokerId(node))
                .with_host(str_bytes(host))
                .with_port(port)])
            .with_cluster_id(Some(str_bytes(shard.config.kafka.cluster_id.clone())))
            .with_controller_id(BrokerId(node))
            .with_topics(topics)
            .with_cluster_authorized_operations(if req.include_cluster_authorized_operations {
                cluster_operations(&conn)
            } else {
                OPS_OMITTED
            });
        frame(correlation_id, version, &resp)
    })
}

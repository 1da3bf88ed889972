//! CreateTopics (key 19), v2–v7: new topics with partition counts and configs, or only a
//! check of them (`validate_only`). ACLs: CREATE on the cluster or on the topic, else
//! TOPIC_AUTHORIZATION_FAILED; the configs are answered to who may DESCRIBE_CONFIGS it.
//!
//! Runs on the connection's shard; the catalog change goes to shard 0's writer and the
//! response is sent once this shard has installed the new catalog version.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::ResponseError;

use super::details::authorize::topic_denied;
use super::{deferred, frame, str_bytes, uuid, Conn, Pending};
use crate::catalog::{self, new_topic_id, Change, Topic};
use crate::kafka::catalog_error_code;
use crate::security::acl::{Operation, ResourceType, CLUSTER_NAME};

pub fn handle(
    conn: &Rc<Conn>,
    req: CreateTopicsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let shard = conn.shard.clone();
        let node = shard.config.node_id;
        // Refusals found before the catalog is asked: (index, code, message).
        let mut early: Vec<Option<(i16, String)>> = Vec::new();
        let mut changes = Vec::new();
        let mut change_index = Vec::new();
        let names: Vec<String> = req.topics.iter().map(|t| t.name.to_string()).collect();
        let may_create_any = conn.may(Operation::Create, ResourceType::Cluster, CLUSTER_NAME);
        for (i, t) in req.topics.iter().enumerate() {
            let name = names[i].clone();
            let refuse = if !may_create_any
                && !conn.authorize(Operation::Create, ResourceType::Topic, &name)
            {
                Some((
                    topic_denied(),
                    "creating this topic needs CREATE on the cluster or on the topic".into(),
                ))
            } else if names.iter().filter(|n| **n == name).count() > 1 {
                Some((
                    ResponseError::InvalidRequest.code(),
                    "topic named twice in one request".into(),
                ))
            } else if t.replication_factor > 1
                || t.assignments
                    .iter()
                    .any(|a| a.broker_ids.iter().any(|b| b.0 != node))
            {
                Some((
                    ResponseError::InvalidReplicationFactor.code(),
                    "this broker is the only replica: replication factor must be 1".into(),
                ))
            } else if !t.assignments.is_empty() && t.num_partitions != -1 {
                Some((
                    ResponseError::InvalidRequest.code(),
                    "give either num_partitions or assignments".into(),
                ))
            } else {
                None
            };
            if refuse.is_some() {
                early.push(refuse);
                continue;
            }
            let partitions = if !t.assignments.is_empty() {
                t.assignments.len() as i32
            } else if t.num_partitions == -1 {
                shard.config.kafka.num_partitions
            } else {
                t.num_partitions
            };
            let configs: BTreeMap<String, String> = t
                .configs
                .iter()
                .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                .collect();
            early.push(None);
            change_index.push(i);
            changes.push(Change::CreateTopic(Topic {
                name: name.clone(),
                id: new_topic_id(&name),
                partitions,
                configs,
            }));
        }
        let created: Vec<Topic> = changes
            .iter()
            .filter_map(|c| match c {
                Change::CreateTopic(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        let outcomes = shard.change_catalog(changes, req.validate_only).await;
        let mut results: Vec<CreatableTopicResult> = names
            .iter()
            .zip(&early)
            .map(|(name, e)| {
                let mut r = CreatableTopicResult::default()
                    .with_name(super::topic_name(name))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1);
                if let Some((code, msg)) = e {
                    r = r
                        .with_error_code(*code)
                        .with_error_message(Some(str_bytes(msg.clone())));
                }
                r
            })
            .collect();
        for ((i, outcome), topic) in change_index.into_iter().zip(outcomes).zip(created) {
            let r = &mut results[i];
            match outcome {
                Ok(()) => {
                    r.error_code = 0;
                    r.topic_id = uuid(&topic.id);
                    r.num_partitions = topic.partitions;
                    r.replication_factor = 1;
                    let configs = catalog::TOPIC_CONFIGS
                        .iter()
                        .map(|k| {
                            let (value, source) = match topic.configs.get(*k) {
                                Some(v) => (Some(v.clone()), 1), // DYNAMIC_TOPIC_CONFIG
                                None => (catalog::default_config(&shard.config, k), 5), // DEFAULT_CONFIG
                            };
                            CreatableTopicConfigs::default()
                                .with_name(str_bytes(*k))
                                .with_value(value.map(str_bytes))
                                .with_config_source(source)
                        })
                        .collect();
                    // The configs are told only to who may DESCRIBE_CONFIGS the topic.
                    if conn.may(Operation::DescribeConfigs, ResourceType::Topic, &topic.name) {
                        r.configs = Some(configs);
                    } else if version >= 5 {
                        r.topic_config_error_code = topic_denied();
                    }
                }
                Err(e) => {
                    r.error_code = catalog_error_code(&e);
                    r.error_message = Some(str_bytes(e.to_string()));
                }
            }
        }
        frame(
            correlation_id,
            version,
            &CreateTopicsResponse::default().with_topics(results),
        )
    })
}

//! ConsumerGroupHeartbeat (key 68), v0–v1: a member of a consumer-protocol group (KIP-848)
//! joins (epoch 0), heartbeats with its epoch and the partitions it owns, or leaves (epoch
//! -1, or -2 for a static member coming back); the answer carries its member epoch, the
//! heartbeat interval and, when it changed, its assignment (by topic id). Errors as Kafka:
//! UNKNOWN_MEMBER_ID, FENCED_MEMBER_EPOCH, UNRELEASED_INSTANCE_ID, FENCED_INSTANCE_ID,
//! GROUP_MAX_SIZE_REACHED, UNSUPPORTED_ASSIGNOR, INVALID_REGULAR_EXPRESSION,
//! INVALID_REQUEST, GROUP_ID_NOT_FOUND (a classic group with members has this id).
//! ACLs: READ on the group (GROUP_AUTHORIZATION_FAILED) and DESCRIBE on every subscribed
//! topic name (TOPIC_AUTHORIZATION_FAILED, naming them).
//!
//! Runs on the connection's shard, which hands its catalog replica along; the state machine
//! (`groups::consumer`) runs on the group's coordinator shard.

use std::rc::Rc;

use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{
    ApiKey, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::details::authorize::topic_denied;
use super::details::coordinator;
use super::{deferred, frame, Conn, Pending};
use crate::kafka::groups::consumer::Heartbeat;
use crate::kafka::groups::{assignor, Reply, Request};
use crate::security::acl::{Operation, ResourceType};

fn fail(code: i16, message: Option<String>) -> ConsumerGroupHeartbeatResponse {
    ConsumerGroupHeartbeatResponse::default()
        .with_error_code(code)
        .with_error_message(message.map(StrBytes::from_string))
}

pub fn handle(
    conn: &Rc<Conn>,
    req: ConsumerGroupHeartbeatRequest,
    client_id: String,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let group = req.group_id.to_string();
        let respond = |r: &ConsumerGroupHeartbeatResponse| frame(correlation_id, version, r);
        if group.is_empty() {
            // Kafka checks the group id before anything else, with INVALID_REQUEST.
            if !conn.authorize(Operation::Read, ResourceType::Group, &group) {
                return respond(&fail(super::details::authorize::group_denied(), None));
            }
            let msg = Some("GroupId can't be empty.".to_owned());
            return respond(&fail(ResponseError::InvalidRequest.code(), msg));
        }
        if let Some(names) = &req.subscribed_topic_names {
            if conn.authorize(Operation::Read, ResourceType::Group, &group) {
                let denied: Vec<String> = names
                    .iter()
                    .map(|n| n.to_string())
                    .filter(|n| !conn.authorize(Operation::Describe, ResourceType::Topic, n))
                    .collect();
                if !denied.is_empty() {
                    let msg = format!("Topic authorization failed for topics {denied:?}");
                    return respond(&fail(topic_denied(), Some(msg)));
                }
            }
        }
        let owned = req.topic_partitions.as_ref().map(|tps| {
            let mut a = assignor::Assignment::new();
            for tp in tps {
                a.entry(*tp.topic_id.as_bytes())
                    .or_default()
                    .extend(tp.partitions.iter().copied());
            }
            a
        });
        let heartbeat = Heartbeat {
            member_id: req.member_id.to_string(),
            epoch: req.member_epoch,
            instance_id: req.instance_id.as_ref().map(|i| i.to_string()),
            rack_id: req.rack_id.as_ref().map(|r| r.to_string()),
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            subscribed_topic_names: req
                .subscribed_topic_names
                .as_ref()
                .map(|n| n.iter().map(|t| t.to_string()).collect()),
            subscribed_topic_regex: req.subscribed_topic_regex.as_ref().map(|r| r.to_string()),
            server_assignor: req.server_assignor.as_ref().map(|a| a.to_string()),
            owned,
            client_id,
            client_host: format!("/{}", conn.peer.ip()),
            version,
        };
        let request = Request::ConsumerHeartbeat {
            group: group.clone(),
            heartbeat,
            catalog: conn.shard.catalog.current(),
        };
        let answer = coordinator::ask(
            &conn,
            ApiKey::ConsumerGroupHeartbeat,
            &group,
            request,
            |r| match r {
                Reply::ConsumerHeartbeat(answer, interval) => Some((answer, interval)),
                _ => None,
            },
        )
        .await;
        let response = match answer {
            Err(code) => fail(code, None),
            Ok((Err(refusal), _)) => fail(refusal.code, refusal.message),
            Ok((Ok(a), interval)) => ConsumerGroupHeartbeatResponse::default()
                .with_member_id(Some(StrBytes::from_string(a.member_id)))
                .with_member_epoch(a.epoch)
                .with_heartbeat_interval_ms(interval)
                .with_assignment(a.assignment.map(|a| {
                    Assignment::default().with_topic_partitions(
                        a.into_iter()
                            .map(|(id, parts)| {
                                TopicPartitions::default()
                                    .with_topic_id(uuid::Uuid::from_bytes(id))
                                    .with_partitions(parts.into_iter().collect())
                            })
                            .collect(),
                    )
                })),
        };
        respond(&response)
    })
}

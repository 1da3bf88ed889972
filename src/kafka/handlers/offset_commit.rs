//! OffsetCommit (key 8), v2–v9: store a group's consumed positions. Checked against the
//! group's generation and member (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID,
//! REBALANCE_IN_PROGRESS, FENCED_INSTANCE_ID); a commit with generation -1 and no member id
//! is accepted for a group without members (simple consumers, admin tools). Answered once
//! the offsets are fsynced on the coordinator shard. ACLs: READ on the group
//! (GROUP_AUTHORIZATION_FAILED) and on each topic (TOPIC_AUTHORIZATION_FAILED).
//!
//! Runs on the connection's shard, which checks topics against its catalog replica.

use std::rc::Rc;

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ApiKey, OffsetCommitRequest, OffsetCommitResponse};
use kafka_protocol::ResponseError;

use super::details::authorize::{group_denied, topic_denied};
use super::details::coordinator;
use super::{deferred, frame, Conn, Pending};
use crate::kafka::groups::{CommitPart, Reply, Request};
use crate::security::acl::{Operation, ResourceType};

pub fn handle(
    conn: &Rc<Conn>,
    req: OffsetCommitRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let shard = &conn.shard;
        let state = shard.catalog.current();
        let group = req.group_id.to_string();
        let mut codes: Vec<Vec<i16>> = Vec::new();
        let mut parts = Vec::new();
        let mut slots = Vec::new();
        // READ on the group (else every partition gets GROUP_AUTHORIZATION_FAILED) and on
        // each topic (TOPIC_AUTHORIZATION_FAILED), as Kafka.
        let group_ok = conn.authorize(Operation::Read, ResourceType::Group, &group);
        for (ti, t) in req.topics.iter().enumerate() {
            let topic = t.name.to_string();
            let known = state.topic(&topic);
            let topic_ok = group_ok && conn.authorize(Operation::Read, ResourceType::Topic, &topic);
            codes.push(Vec::new());
            for (pi, p) in t.partitions.iter().enumerate() {
                let exists = known
                    .is_some_and(|k| p.partition_index >= 0 && p.partition_index < k.partitions);
                if !group_ok {
                    codes[ti].push(group_denied());
                } else if !topic_ok {
                    codes[ti].push(topic_denied());
                } else if exists {
                    codes[ti].push(0);
                    slots.push((ti, pi));
                    parts.push(CommitPart {
                        topic: topic.clone(),
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    });
                } else {
                    codes[ti].push(ResponseError::UnknownTopicOrPartition.code());
                }
            }
        }
        if !parts.is_empty() {
            let request = Request::Commit {
                group: group.clone(),
                member_id: req.member_id.to_string(),
                instance_id: req.group_instance_id.as_ref().map(|i| i.to_string()),
                generation: req.generation_id_or_member_epoch,
                parts,
            };
            let committed =
                coordinator::ask(&conn, ApiKey::OffsetCommit, &group, request, |r| match r {
                    Reply::Commit(c) => Some(c),
                    _ => None,
                });
            let results = committed
                .await
                .unwrap_or_else(|code| vec![code; slots.len()]);
            for ((ti, pi), code) in slots.into_iter().zip(results) {
                codes[ti][pi] = code;
            }
        }
        let topics = req
            .topics
            .into_iter()
            .zip(codes)
            .map(|(t, codes)| {
                OffsetCommitResponseTopic::default()
                    .with_name(t.name)
                    .with_partitions(
                        t.partitions
                            .iter()
                            .zip(codes)
                            .map(|(p, code)| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect();
        frame(
            correlation_id,
            version,
            &OffsetCommitResponse::default().with_topics(topics),
        )
    })
}

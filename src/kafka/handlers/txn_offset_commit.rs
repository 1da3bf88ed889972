//! TxnOffsetCommit (key 28), v0–v4: a transactional producer's consumed offsets for a
//! group (consume-transform-produce, `send_offsets_to_transaction`). Sent to the *group*
//! coordinator: the offsets wait, durable, until the transaction ends, and are then
//! committed (commit) or dropped (abort) (`groups::txn_offsets`).
//!
//! Checks, as Kafka: WRITE on the transactional id (TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
//! READ on the group (GROUP_AUTHORIZATION_FAILED), READ on each topic
//! (TOPIC_AUTHORIZATION_FAILED), unknown partitions UNKNOWN_TOPIC_OR_PARTITION; then the
//! group must be in the producer's ongoing transaction (AddOffsetsToTxn first; KIP-890
//! verification with the transaction coordinator: INVALID_TXN_STATE, or PRODUCER_FENCED
//! from v3 and INVALID_PRODUCER_EPOCH before for an older epoch); v3+ (KIP-447) the member
//! and generation as OffsetCommit checks them (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID,
//! FENCED_INSTANCE_ID). Answered once the pending offsets are fsynced.
//!
//! Runs on the connection's shard; `Shard::txn` (verification) and
//! `Shard::txn_offsets_commit` cross to the coordinator shards.

use std::rc::Rc;

use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};
use kafka_protocol::ResponseError;

use super::details::authorize::{group_denied, topic_denied, transactional_id_denied};
use super::{count_error, deferred, frame, Conn, Pending};
use crate::kafka::groups::txn_offsets::TxnCommit;
use crate::kafka::groups::CommitPart;
use crate::kafka::txn::{Reply, Request};
use crate::security::acl::{Operation, ResourceType};

/// PRODUCER_FENCED since this version; INVALID_PRODUCER_EPOCH before.
const FENCED_SINCE: i16 = 3;

pub fn handle(
    conn: &Rc<Conn>,
    req: TxnOffsetCommitRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, move |conn| async move {
        let state = conn.shard.catalog.current();
        let id = req.transactional_id.to_string();
        let group = req.group_id.to_string();
        // The request-wide refusal, if any.
        let mut refused = if !conn.authorize(Operation::Write, ResourceType::TransactionalId, &id) {
            Some(transactional_id_denied())
        } else if !conn.authorize(Operation::Read, ResourceType::Group, &group) {
            Some(group_denied())
        } else {
            None
        };
        let mut codes: Vec<Vec<i16>> = Vec::new();
        let mut parts = Vec::new();
        let mut slots = Vec::new();
        for (ti, t) in req.topics.iter().enumerate() {
            let topic = t.name.to_string();
            let topic_ok =
                refused.is_some() || conn.authorize(Operation::Read, ResourceType::Topic, &topic);
            let known = state.topic(&topic).map(|k| k.partitions);
            codes.push(Vec::new());
            for (pi, p) in t.partitions.iter().enumerate() {
                let code = if let Some(code) = refused {
                    code
                } else if !topic_ok {
                    topic_denied()
                } else if known.is_none_or(|n| p.partition_index < 0 || p.partition_index >= n) {
                    ResponseError::UnknownTopicOrPartition.code()
                } else {
                    slots.push((ti, pi));
                    parts.push(CommitPart {
                        topic: topic.clone(),
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    });
                    0
                };
                codes[ti].push(code);
            }
        }
        if !parts.is_empty() {
            let verify = Request::VerifyGroup {
                id: id.clone(),
                producer_id: req.producer_id.0,
                epoch: req.producer_epoch,
                group: group.clone(),
            };
            refused = match conn.shard.txn(&id, verify).await {
                Reply::Done(Ok(())) => None,
                Reply::Done(Err(e)) => Some(e.code(version, FENCED_SINCE)),
                _ => Some(ResponseError::CoordinatorNotAvailable.code()),
            };
            let results = match refused {
                Some(code) => vec![code; slots.len()],
                None => {
                    conn.shard
                        .txn_offsets_commit(TxnCommit {
                            group,
                            producer_id: req.producer_id.0,
                            member_id: req.member_id.to_string(),
                            instance_id: req.group_instance_id.as_ref().map(|i| i.to_string()),
                            generation: req.generation_id,
                            parts,
                        })
                        .await
                }
            };
            for ((ti, pi), code) in slots.into_iter().zip(results) {
                codes[ti][pi] = code;
            }
        }
        let topics = req
            .topics
            .into_iter()
            .zip(codes)
            .map(|(t, codes)| {
                TxnOffsetCommitResponseTopic::default()
                    .with_name(t.name)
                    .with_partitions(
                        t.partitions
                            .iter()
                            .zip(codes)
                            .map(|(p, code)| {
                                count_error(code);
                                TxnOffsetCommitResponsePartition::default()
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
            &TxnOffsetCommitResponse::default().with_topics(topics),
        )
    })
}

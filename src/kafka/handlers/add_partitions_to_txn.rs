//! AddPartitionsToTxn (key 24), v0–v5: adds partitions to a producer's transaction before
//! it writes to them. v0–v3 carry one transaction; v4+ (KIP-890) a batch of them, each
//! possibly `verify_only` (asks whether the partitions are already in the ongoing
//! transaction: 0 or INVALID_TXN_STATE per partition), sent by brokers, so v4+ needs
//! CLUSTER_ACTION on the cluster (else CLUSTER_AUTHORIZATION_FAILED at the top).
//!
//! Per transaction: WRITE on the transactional id (else every partition
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED); per topic WRITE (TOPIC_AUTHORIZATION_FAILED);
//! an unknown topic or partition UNKNOWN_TOPIC_OR_PARTITION; when any partition fails
//! these checks the others get OPERATION_NOT_ATTEMPTED and nothing is added, as Kafka.
//! Then the coordinator's answer for all of them: CONCURRENT_TRANSACTIONS while the
//! previous transaction completes (clients retry), PRODUCER_FENCED (v2+; before:
//! INVALID_PRODUCER_EPOCH) for an older epoch, INVALID_PRODUCER_ID_MAPPING for an unknown
//! id. Answered once the partitions are in the durable transaction log.
//!
//! Runs on the connection's shard; `Shard::txn` crosses to the id's coordinator shard.

use std::rc::Rc;

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, TransactionalId,
};
use kafka_protocol::ResponseError;

use super::details::authorize::{cluster_denied, topic_denied, transactional_id_denied};
use super::{count_error, deferred, frame, Conn, Pending};
use crate::kafka::txn::{Reply, Request};
use crate::security::acl::{Operation, ResourceType};

/// PRODUCER_FENCED since this version (KIP-588); INVALID_PRODUCER_EPOCH before.
const FENCED_SINCE: i16 = 2;

/// One transaction's partitions, with their codes.
async fn one(
    conn: &Rc<Conn>,
    id: &str,
    producer_id: i64,
    epoch: i16,
    topics: &[AddPartitionsToTxnTopic],
    verify_only: bool,
    version: i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let state = conn.shard.catalog.current();
    let id_ok = conn.authorize(Operation::Write, ResourceType::TransactionalId, id);
    // (topic, partition, code): 0 = passed the checks so far.
    let mut codes: Vec<(String, i32, i16)> = Vec::new();
    for t in topics {
        let name = t.name.to_string();
        let topic_ok = id_ok && conn.authorize(Operation::Write, ResourceType::Topic, &name);
        let known = state.topic(&name).map(|k| k.partitions);
        for &p in &t.partitions {
            let code = if !id_ok {
                transactional_id_denied()
            } else if !topic_ok {
                topic_denied()
            } else if known.is_none_or(|n| p < 0 || p >= n) {
                ResponseError::UnknownTopicOrPartition.code()
            } else {
                0
            };
            codes.push((name.clone(), p, code));
        }
    }
    if codes.iter().any(|(_, _, c)| *c != 0) {
        let skipped = ResponseError::OperationNotAttempted.code();
        for (_, _, c) in codes.iter_mut().filter(|(_, _, c)| *c == 0) {
            *c = skipped;
        }
    } else if !codes.is_empty() {
        let parts: Vec<(String, i32)> = codes.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        let request = if verify_only {
            Request::Verify {
                id: id.to_owned(),
                producer_id,
                epoch,
                parts,
            }
        } else {
            Request::AddPartitions {
                id: id.to_owned(),
                producer_id,
                epoch,
                parts,
            }
        };
        let unavailable = ResponseError::CoordinatorNotAvailable.code();
        let per_part: Vec<i16> = match conn.shard.txn(id, request).await {
            Reply::Done(Ok(())) => vec![0; codes.len()],
            Reply::Verified(Ok(inside)) => inside
                .into_iter()
                .map(|i| {
                    if i {
                        0
                    } else {
                        ResponseError::InvalidTxnState.code()
                    }
                })
                .collect(),
            Reply::Done(Err(e)) | Reply::Verified(Err(e)) => {
                vec![e.code(version, FENCED_SINCE); codes.len()]
            }
            _ => vec![unavailable; codes.len()],
        };
        for (c, code) in codes.iter_mut().zip(per_part) {
            c.2 = code;
        }
    }
    let mut out: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
    for (topic, partition, code) in codes {
        count_error(code);
        let result = AddPartitionsToTxnPartitionResult::default()
            .with_partition_index(partition)
            .with_partition_error_code(code);
        match out.last_mut() {
            Some(last) if *last.name == *topic => last.results_by_partition.push(result),
            _ => out.push(
                AddPartitionsToTxnTopicResult::default()
                    .with_name(super::topic_name(&topic))
                    .with_results_by_partition(vec![result]),
            ),
        }
    }
    out
}

pub fn handle(
    conn: &Rc<Conn>,
    req: AddPartitionsToTxnRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, move |conn| async move {
        let resp = if version <= 3 {
            let results = one(
                &conn,
                &req.v3_and_below_transactional_id,
                req.v3_and_below_producer_id.0,
                req.v3_and_below_producer_epoch,
                &req.v3_and_below_topics,
                false,
                version,
            )
            .await;
            AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
        } else if !conn.authorize_cluster(Operation::ClusterAction) {
            count_error(cluster_denied());
            AddPartitionsToTxnResponse::default().with_error_code(cluster_denied())
        } else {
            let mut results = Vec::new();
            for t in &req.transactions {
                let topics = one(
                    &conn,
                    &t.transactional_id,
                    t.producer_id.0,
                    t.producer_epoch,
                    &t.topics,
                    t.verify_only,
                    version,
                )
                .await;
                results.push(
                    AddPartitionsToTxnResult::default()
                        .with_transactional_id(TransactionalId(t.transactional_id.0.clone()))
                        .with_topic_results(topics),
                );
            }
            AddPartitionsToTxnResponse::default().with_results_by_transaction(results)
        };
        frame(correlation_id, version, &resp)
    })
}

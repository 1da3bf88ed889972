//! InitProducerId (key 22), v0–v5: a producer id and epoch for an idempotent or a
//! transactional producer.
//!
//! Idempotent (no transactional id): answered on the connection's shard with a new id
//! (`txn::producer_id`); re-initialising a known id (KIP-360, v3+) bumps its epoch. ACLs:
//! IDEMPOTENT_WRITE on the cluster or WRITE on some topic, else
//! CLUSTER_AUTHORIZATION_FAILED.
//!
//! Transactional: sent to the id's transaction coordinator (`Shard::txn`): a new producer
//! id, or the next epoch of the known one, which fences older instances; an ongoing
//! transaction of the old epoch is aborted first (CONCURRENT_TRANSACTIONS meanwhile, which
//! clients retry). `transaction_timeout_ms` above `kafka.transaction_max_timeout_ms` (or
//! not positive) is INVALID_TRANSACTION_TIMEOUT; an empty transactional id
//! INVALID_REQUEST; a stale producer id and epoch (v3+) PRODUCER_FENCED (v4+) or
//! INVALID_PRODUCER_EPOCH (older). ACLs: WRITE on the transactional id, else
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED.

use std::rc::Rc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use super::details::authorize::{cluster_denied, transactional_id_denied};
use super::{count_error, deferred, frame, ready, Conn, Pending};
use crate::kafka::txn::producer_id::allocate;
use crate::kafka::txn::{Reply, Request};
use crate::security::acl::{Operation, ResourceType, CLUSTER_NAME};

/// PRODUCER_FENCED since this version (KIP-588); INVALID_PRODUCER_EPOCH before.
const FENCED_SINCE: i16 = 4;

fn refused(code: i16) -> InitProducerIdResponse {
    count_error(code);
    InitProducerIdResponse::default()
        .with_error_code(code)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

/// The transactional form, on the id's coordinator shard.
fn transactional(
    conn: &Rc<Conn>,
    id: String,
    req: InitProducerIdRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, move |conn| async move {
        let resp = if id.is_empty() {
            refused(ResponseError::InvalidRequest.code())
        } else if !conn.authorize(Operation::Write, ResourceType::TransactionalId, &id) {
            refused(transactional_id_denied())
        } else {
            let expected = (version >= 3 && req.producer_id.0 >= 0)
                .then_some((req.producer_id.0, req.producer_epoch));
            let request = Request::Init {
                id: id.clone(),
                timeout_ms: req.transaction_timeout_ms,
                expected,
            };
            match conn.shard.txn(&id, request).await {
                Reply::Init(Ok((pid, epoch))) => InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(pid))
                    .with_producer_epoch(epoch),
                Reply::Init(Err(e)) => refused(e.code(version, FENCED_SINCE)),
                _ => refused(ResponseError::CoordinatorNotAvailable.code()),
            }
        };
        frame(correlation_id, version, &resp)
    })
}

/// An idempotent producer needs IDEMPOTENT_WRITE on the cluster or WRITE on some topic
/// (Kafka since KIP-679); a refusal is audited as IDEMPOTENT_WRITE on the cluster.
fn idempotent_allowed(conn: &Conn) -> bool {
    conn.may(
        Operation::IdempotentWrite,
        ResourceType::Cluster,
        CLUSTER_NAME,
    ) || conn.may_any(Operation::Write, ResourceType::Topic)
        || conn.authorize_cluster(Operation::IdempotentWrite)
}

pub fn handle(
    conn: &Rc<Conn>,
    req: InitProducerIdRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    if let Some(id) = req.transactional_id.as_ref().map(|t| t.to_string()) {
        return transactional(conn, id, req, correlation_id, version);
    }
    let resp = if !idempotent_allowed(conn) {
        InitProducerIdResponse::default()
            .with_error_code(cluster_denied())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    } else if req.producer_id.0 >= 0 && req.producer_epoch >= 0 {
        // KIP-360: the producer asks to bump its epoch after an error.
        let epoch = req.producer_epoch.checked_add(1);
        match epoch {
            Some(e) if e < i16::MAX => InitProducerIdResponse::default()
                .with_producer_id(req.producer_id)
                .with_producer_epoch(e),
            _ => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(allocate(conn.shard.id)))
                .with_producer_epoch(0),
        }
    } else {
        InitProducerIdResponse::default()
            .with_producer_id(ProducerId(allocate(conn.shard.id)))
            .with_producer_epoch(0)
    };
    ready(frame(correlation_id, version, &resp))
}

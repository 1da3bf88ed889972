//! InitProducerId (key 22), v0–v5: a producer id and epoch for an idempotent producer.
//! Re-initialising a known id (KIP-360, v3+) bumps its epoch. Transactional ids are refused
//! (TRANSACTIONAL_ID_AUTHORIZATION_FAILED): transactions are not supported. ACLs:
//! IDEMPOTENT_WRITE on the cluster or WRITE on some topic, else
//! CLUSTER_AUTHORIZATION_FAILED.
//!
//! Runs on the connection's shard. Ids are unique without coordination: the allocating
//! shard's clock in milliseconds, its id and a counter, never reused across restarts as
//! long as the clock does not go back.

use std::cell::Cell;
use std::rc::Rc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use super::details::authorize::cluster_denied;
use super::{frame, ready, Conn, Pending};
use crate::security::acl::{Operation, ResourceType, CLUSTER_NAME};

thread_local! {
    /// (last millisecond used, ids handed out in it) on this shard's thread.
    static CLOCK: Cell<(i64, i64)> = const { Cell::new((0, 0)) };
}

const PER_MS: i64 = 64;
const SHARDS: i64 = 64;

fn allocate(shard: usize) -> i64 {
    CLOCK.with(|c| {
        let (last, n) = c.get();
        let now = crate::storage::log::now_ms().max(last);
        let (ms, n) = if now > last {
            (now, 0)
        } else if n + 1 < PER_MS {
            (last, n + 1)
        } else {
            (last + 1, 0)
        };
        c.set((ms, n));
        (ms * SHARDS + shard as i64 % SHARDS) * PER_MS + n
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
    let resp = if req.transactional_id.is_some() {
        log::warn!(
            "{}: InitProducerId with a transactional id refused: transactions are not supported",
            conn.peer
        );
        InitProducerIdResponse::default()
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    } else if !idempotent_allowed(conn) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_increasing() {
        let ids: Vec<i64> = (0..1000).map(|_| allocate(1)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_ne!(allocate(0) % (SHARDS * PER_MS) / PER_MS, 1);
    }
}

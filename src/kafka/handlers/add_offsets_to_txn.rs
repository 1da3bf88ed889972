//! AddOffsetsToTxn (key 25), v0–v4: adds a consumer group to a producer's transaction, so
//! the offsets it then sends with TxnOffsetCommit are committed or dropped with the
//! transaction. ACLs: WRITE on the transactional id (TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
//! and READ on the group (GROUP_AUTHORIZATION_FAILED). The coordinator's refusals are
//! AddPartitionsToTxn's (PRODUCER_FENCED from v2, INVALID_PRODUCER_EPOCH before).
//!
//! Runs on the connection's shard; `Shard::txn` crosses to the id's coordinator shard.

use std::rc::Rc;

use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};

use super::details::authorize::{group_denied, transactional_id_denied};
use super::{count_error, deferred, frame, Conn, Pending};
use crate::kafka::txn::Request;
use crate::security::acl::{Operation, ResourceType};

/// PRODUCER_FENCED since this version (KIP-588); INVALID_PRODUCER_EPOCH before.
const FENCED_SINCE: i16 = 2;

pub fn handle(
    conn: &Rc<Conn>,
    req: AddOffsetsToTxnRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, move |conn| async move {
        let id = req.transactional_id.to_string();
        let group = req.group_id.to_string();
        let code = if !conn.authorize(Operation::Write, ResourceType::TransactionalId, &id) {
            transactional_id_denied()
        } else if !conn.authorize(Operation::Read, ResourceType::Group, &group) {
            group_denied()
        } else {
            let request = Request::AddGroup {
                id: id.clone(),
                producer_id: req.producer_id.0,
                epoch: req.producer_epoch,
                group,
            };
            conn.shard
                .txn_code(&id, request, version, FENCED_SINCE)
                .await
        };
        count_error(code);
        frame(
            correlation_id,
            version,
            &AddOffsetsToTxnResponse::default().with_error_code(code),
        )
    })
}

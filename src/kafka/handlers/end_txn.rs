//! EndTxn (key 26), v0–v4: commits or aborts a producer's transaction. Answered once
//! PrepareCommit/PrepareAbort is in the durable transaction log: from then on the outcome
//! holds across a crash; the markers and the groups' offsets follow in the background
//! (`txn::complete`), and the producer's next transactional request gets
//! CONCURRENT_TRANSACTIONS until they are done. A retry of an EndTxn that completed with
//! the same outcome succeeds; the other outcome is INVALID_TXN_STATE. ACLs: WRITE on the
//! transactional id (TRANSACTIONAL_ID_AUTHORIZATION_FAILED). An older epoch is
//! PRODUCER_FENCED (v2+; INVALID_PRODUCER_EPOCH before). v5 (KIP-890 part 2, an epoch
//! bump per transaction) is not served.
//!
//! Runs on the connection's shard; `Shard::txn` crosses to the id's coordinator shard.

use std::rc::Rc;

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse};

use super::details::authorize::transactional_id_denied;
use super::{count_error, deferred, frame, Conn, Pending};
use crate::kafka::txn::Request;
use crate::security::acl::{Operation, ResourceType};

/// PRODUCER_FENCED since this version (KIP-588); INVALID_PRODUCER_EPOCH before.
const FENCED_SINCE: i16 = 2;

pub fn handle(conn: &Rc<Conn>, req: EndTxnRequest, correlation_id: i32, version: i16) -> Pending {
    deferred(conn, move |conn| async move {
        let id = req.transactional_id.to_string();
        let code = if !conn.authorize(Operation::Write, ResourceType::TransactionalId, &id) {
            transactional_id_denied()
        } else {
            let request = Request::End {
                id: id.clone(),
                producer_id: req.producer_id.0,
                epoch: req.producer_epoch,
                commit: req.committed,
            };
            conn.shard
                .txn_code(&id, request, version, FENCED_SINCE)
                .await
        };
        count_error(code);
        frame(
            correlation_id,
            version,
            &EndTxnResponse::default().with_error_code(code),
        )
    })
}

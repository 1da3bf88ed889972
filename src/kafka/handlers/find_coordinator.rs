//! FindCoordinator (key 10), v0–v6, single key and the batched form (v4+): this broker is
//! the coordinator of every group (key type 0) and every transactional id (key type 1).
//! Which shard coordinates a key (`groups::group_owner`, `txn::txn_owner`) is an internal
//! matter, not visible to clients. Any other key type is INVALID_REQUEST. ACLs: DESCRIBE
//! on the group (GROUP_AUTHORIZATION_FAILED) or on the transactional id
//! (TRANSACTIONAL_ID_AUTHORIZATION_FAILED), per key.
//!
//! Runs on the connection's shard; touches no state.

use std::rc::Rc;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::details::authorize::{group_denied, transactional_id_denied};
use super::metadata::advertised;
use super::{frame, ready, str_bytes, Conn, Pending};
use crate::security::acl::{Operation, ResourceType};

const GROUP: i8 = 0;
const TRANSACTION: i8 = 1;

/// The refusal of one key: its error code and message (None: this broker coordinates it).
fn refusal(conn: &Conn, key_type: i8, key: &str) -> Option<(i16, &'static str)> {
    match key_type {
        GROUP if !conn.authorize(Operation::Describe, ResourceType::Group, key) => {
            Some((group_denied(), "DESCRIBE on the group refused by the ACLs"))
        }
        TRANSACTION if !conn.authorize(Operation::Describe, ResourceType::TransactionalId, key) => {
            Some((
                transactional_id_denied(),
                "DESCRIBE on the transactional id refused by the ACLs",
            ))
        }
        GROUP | TRANSACTION => None,
        _ => Some((
            ResponseError::InvalidRequest.code(),
            "unknown coordinator key type",
        )),
    }
}

pub fn handle(
    conn: &Rc<Conn>,
    req: FindCoordinatorRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    let (host, port) = advertised(conn);
    let node = BrokerId(conn.shard.config.node_id);
    let resp = if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key: StrBytes| match refusal(conn, req.key_type, &key) {
                Some((code, message)) => Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(-1))
                    .with_host(str_bytes(""))
                    .with_port(-1)
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(message))),
                None => Coordinator::default()
                    .with_key(key)
                    .with_node_id(node)
                    .with_host(str_bytes(host.clone()))
                    .with_port(port),
            })
            .collect();
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        match refusal(conn, req.key_type, &req.key) {
            Some((code, message)) => FindCoordinatorResponse::default()
                .with_error_code(code)
                .with_error_message(Some(str_bytes(message)))
                .with_node_id(BrokerId(-1))
                .with_host(str_bytes(""))
                .with_port(-1),
            None => FindCoordinatorResponse::default()
                .with_node_id(node)
                .with_host(str_bytes(host))
                .with_port(port),
        }
    };
    ready(frame(correlation_id, version, &resp))
}

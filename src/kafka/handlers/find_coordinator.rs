//! FindCoordinator (key 10), v0–v6, single key and the batched form (v4+): this broker is
//! the coordinator of every group. Transaction coordinators are not offered, since
//! transactions are not supported: a transactional id gets
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED with a message saying so, which clients treat as
//! fatal (librdkafka's `init_transactions()` fails at once) where COORDINATOR_NOT_AVAILABLE
//! would be retried for ever. Any other key type is INVALID_REQUEST. ACLs: DESCRIBE on the
//! group, else GROUP_AUTHORIZATION_FAILED.
//!
//! Runs on the connection's shard; touches no state. (Which shard coordinates a group is
//! an internal matter of the group layer, not visible to clients.)

use std::rc::Rc;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::details::authorize::group_denied;
use super::metadata::advertised;
use super::{frame, ready, str_bytes, Conn, Pending};
use crate::security::acl::{Operation, ResourceType};

const GROUP: i8 = 0;
const TRANSACTION: i8 = 1;

pub fn handle(
    conn: &Rc<Conn>,
    req: FindCoordinatorRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    let (host, port) = advertised(conn);
    let node = BrokerId(conn.shard.config.node_id);
    let supported = req.key_type == GROUP;
    let (error, message) = match req.key_type {
        GROUP => (0, None),
        TRANSACTION => (
            ResponseError::TransactionalIdAuthorizationFailed.code(),
            Some(str_bytes("transactions are not supported by this broker")),
        ),
        _ => (
            ResponseError::InvalidRequest.code(),
            Some(str_bytes("unknown coordinator key type")),
        ),
    };
    // DESCRIBE on the group, else GROUP_AUTHORIZATION_FAILED for that key (as Kafka).
    let denied = |key: &str| {
        (req.key_type == GROUP && !conn.authorize(Operation::Describe, ResourceType::Group, key))
            .then(|| Some(str_bytes("DESCRIBE on the group refused by the ACLs")))
    };
    let resp = if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key: StrBytes| {
                if let Some(message) = denied(&key) {
                    return Coordinator::default()
                        .with_key(key)
                        .with_node_id(BrokerId(-1))
                        .with_host(str_bytes(""))
                        .with_port(-1)
                        .with_error_code(group_denied())
                        .with_error_message(message);
                }
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(if supported { node } else { BrokerId(-1) })
                    .with_host(if supported {
                        str_bytes(host.clone())
                    } else {
                        str_bytes("")
                    })
                    .with_port(if supported { port } else { -1 })
                    .with_error_code(error)
                    .with_error_message(message.clone())
            })
            .collect();
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else if let Some(message) = denied(&req.key) {
        FindCoordinatorResponse::default()
            .with_error_code(group_denied())
            .with_error_message(message)
            .with_node_id(BrokerId(-1))
            .with_host(str_bytes(""))
            .with_port(-1)
    } else {
        FindCoordinatorResponse::default()
            .with_error_code(error)
            .with_error_message(message)
            .with_node_id(if supported { node } else { BrokerId(-1) })
            .with_host(if supported {
                str_bytes(host)
            } else {
                str_bytes("")
            })
            .with_port(if supported { port } else { -1 })
    };
    ready(frame(correlation_id, version, &resp))
}

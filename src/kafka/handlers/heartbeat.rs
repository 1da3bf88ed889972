//! Heartbeat (key 12), v0–v4: a member says it is alive; the answer tells it when to rejoin
//! (REBALANCE_IN_PROGRESS) or that it is out (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION,
//! FENCED_INSTANCE_ID).
//!
//! Runs on the connection's shard; the state machine runs on the group's coordinator shard.

use std::rc::Rc;

use kafka_protocol::messages::{ApiKey, HeartbeatRequest, HeartbeatResponse};

use super::details::coordinator;
use super::{deferred, frame, Conn, Pending};
use crate::kafka::groups::Request;

pub fn handle(
    conn: &Rc<Conn>,
    req: HeartbeatRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let group = req.group_id.to_string();
        let request = Request::Heartbeat {
            group: group.clone(),
            member_id: req.member_id.to_string(),
            instance_id: req.group_instance_id.map(|i| i.to_string()),
            generation: req.generation_id,
        };
        let code = coordinator::ask_code(&conn, ApiKey::Heartbeat, &group, request).await;
        frame(
            correlation_id,
            version,
            &HeartbeatResponse::default().with_error_code(code),
        )
    })
}

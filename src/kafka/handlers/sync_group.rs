//! SyncGroup (key 14), v0–v5: the leader hands out the assignment; every member gets its
//! share once the leader's has arrived.
//!
//! Runs on the connection's shard; the state machine runs on the group's coordinator shard.

use std::rc::Rc;

use kafka_protocol::messages::{ApiKey, SyncGroupRequest, SyncGroupResponse};

use super::details::coordinator;
use super::{deferred, frame, Conn, Pending};
use crate::kafka::groups::{Reply, Request};

pub fn handle(
    conn: &Rc<Conn>,
    req: SyncGroupRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let group = req.group_id.to_string();
        let request = Request::Sync {
            group: group.clone(),
            member_id: req.member_id.to_string(),
            instance_id: req.group_instance_id.map(|i| i.to_string()),
            generation: req.generation_id,
            protocol_type: req.protocol_type.map(|p| p.to_string()),
            protocol_name: req.protocol_name.map(|p| p.to_string()),
            assignments: req
                .assignments
                .into_iter()
                .map(|a| (a.member_id.to_string(), a.assignment))
                .collect(),
            version,
        };
        let synced = coordinator::ask(&conn, ApiKey::SyncGroup, &group, request, |r| match r {
            Reply::Sync(r) => Some(r),
            _ => None,
        });
        let resp = match synced.await {
            Ok(r) => r,
            Err(code) => SyncGroupResponse::default().with_error_code(code),
        };
        frame(correlation_id, version, &resp)
    })
}

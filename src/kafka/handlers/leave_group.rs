//! LeaveGroup (key 13), v0–v5: one member (v0–v2) or a batch of members by id or
//! `group.instance.id` (v3+) leave; the rest rebalance.
//!
//! Runs on the connection's shard; the state machine runs on the group's coordinator shard.

use std::rc::Rc;

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{ApiKey, LeaveGroupRequest, LeaveGroupResponse};

use super::details::coordinator;
use super::{deferred, frame, str_bytes, Conn, Pending};
use crate::kafka::groups::{Reply, Request};

pub fn handle(
    conn: &Rc<Conn>,
    req: LeaveGroupRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let group = req.group_id.to_string();
        let members: Vec<(String, Option<String>)> = if version >= 3 {
            req.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        m.group_instance_id.as_ref().map(|i| i.to_string()),
                    )
                })
                .collect()
        } else {
            vec![(req.member_id.to_string(), None)]
        };
        let request = Request::Leave {
            group: group.clone(),
            members: members.clone(),
        };
        let left = coordinator::ask(&conn, ApiKey::LeaveGroup, &group, request, |r| match r {
            Reply::Leave(_, codes) => Some(codes),
            _ => None,
        });
        let resp = match left.await {
            Ok(codes) if version >= 3 => LeaveGroupResponse::default().with_members(
                members
                    .into_iter()
                    .zip(codes)
                    .map(|((m, i), code)| {
                        MemberResponse::default()
                            .with_member_id(str_bytes(m))
                            .with_group_instance_id(i.map(str_bytes))
                            .with_error_code(code)
                    })
                    .collect(),
            ),
            Ok(codes) => {
                LeaveGroupResponse::default().with_error_code(codes.first().copied().unwrap_or(0))
            }
            Err(code) => LeaveGroupResponse::default().with_error_code(code),
        };
        frame(correlation_id, version, &resp)
    })
}

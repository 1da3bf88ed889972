//! JoinGroup (key 11), v0–v9: a member joins (or rejoins) a consumer group; answered when
//! the rebalance completes. v4+ members first get MEMBER_ID_REQUIRED with their id
//! (KIP-394); `group.instance.id` makes a static member (KIP-345).
//!
//! Runs on the connection's shard; the state machine runs on the group's coordinator
//! shard (`Shard::group`).

use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::{ApiKey, JoinGroupRequest, JoinGroupResponse};

use super::details::coordinator;
use super::{deferred, frame, str_bytes, Conn, Pending};
use crate::kafka::groups::group::JoinRequest;
use crate::kafka::groups::{Reply, Request};

pub fn handle(
    conn: &Rc<Conn>,
    req: JoinGroupRequest,
    client_id: String,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let group = req.group_id.to_string();
        // v0 has no rebalance timeout: it equals the session timeout.
        let rebalance = if version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        };
        let join = JoinRequest {
            member_id: req.member_id.to_string(),
            instance_id: req.group_instance_id.map(|i| i.to_string()),
            client_id,
            client_host: format!("/{}", conn.peer.ip()),
            session_timeout: Duration::from_millis(req.session_timeout_ms.max(0) as u64),
            rebalance_timeout: Duration::from_millis(rebalance.max(0) as u64),
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata))
                .collect(),
            version,
        };
        let request = Request::Join(join, group.clone(), conn.shard.catalog.current());
        let joined = coordinator::ask(&conn, ApiKey::JoinGroup, &group, request, |r| match r {
            Reply::Join(r) => Some(r),
            _ => None,
        });
        let resp = match joined.await {
            Ok(r) => r,
            Err(code) => JoinGroupResponse::default()
                .with_error_code(code)
                .with_generation_id(-1)
                .with_protocol_name(Some(str_bytes("")))
                .with_leader(str_bytes(""))
                .with_member_id(str_bytes("")),
        };
        frame(correlation_id, version, &resp)
    })
}

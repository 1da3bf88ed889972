//! DeleteGroups (key 42), v0–v2: remove groups without members and their committed
//! offsets (NON_EMPTY_GROUP while members remain, GROUP_ID_NOT_FOUND when unknown).
//!
//! Runs on the connection's shard; each group's coordinator shard answers for it.

use std::rc::Rc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{ApiKey, DeleteGroupsRequest, DeleteGroupsResponse};

use super::details::coordinator;
use super::{deferred, frame, Conn, Pending};
use crate::kafka::groups::Request;

pub fn handle(
    conn: &Rc<Conn>,
    req: DeleteGroupsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let mut results = Vec::new();
        for g in req.groups_names {
            let group = g.to_string();
            let request = Request::Delete(group.clone());
            let code = coordinator::ask_code(&conn, ApiKey::DeleteGroups, &group, request).await;
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(g)
                    .with_error_code(code),
            );
        }
        frame(
            correlation_id,
            version,
            &DeleteGroupsResponse::default().with_results(results),
        )
    })
}

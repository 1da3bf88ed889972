//! DeleteGroups (key 42), v0–v2: remove groups without members and their committed
//! offsets (NON_EMPTY_GROUP while members remain, GROUP_ID_NOT_FOUND when unknown).
//!
//! Runs on the connection's shard; each group's coordinator shard answers for it.

use std::rc::Rc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};
use kafka_protocol::ResponseError;

use super::{frame, Conn, Pending};
use crate::kafka::groups::{Reply, Request};

pub fn handle(
    conn: &Rc<Conn>,
    req: DeleteGroupsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    let conn = conn.clone();
    Box::pin(async move {
        let mut results = Vec::new();
        for g in req.groups_names {
            let group = g.to_string();
            let code = match conn
                .shard
                .group(&group, Request::Delete(group.clone()))
                .await
            {
                Reply::Code(code) => code,
                _ => ResponseError::CoordinatorNotAvailable.code(),
            };
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

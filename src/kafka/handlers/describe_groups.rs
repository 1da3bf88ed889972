//! DescribeGroups (key 15), v0–v6: state, protocol and members (with their metadata and
//! assignment) of each group. An unknown group is "Dead" (with GROUP_ID_NOT_FOUND in v6).
//! ACLs: DESCRIBE on each group (GROUP_AUTHORIZATION_FAILED); the authorized operations
//! (v3+, when asked) are the principal's.
//!
//! Runs on the connection's shard; each group's coordinator shard answers for it.

use std::rc::Rc;

use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::{ApiKey, DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::ResponseError;

use super::details::authorize::group_denied;
use super::details::coordinator;
use super::{deferred, frame, Conn, Pending};
use crate::kafka::groups::{Reply, Request};
use crate::security::acl::ResourceType;

pub fn handle(
    conn: &Rc<Conn>,
    req: DescribeGroupsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let mut out = Vec::new();
        for g in req.groups {
            let group = g.to_string();
            let request = Request::Describe(group.clone());
            let described =
                coordinator::ask(
                    &conn,
                    ApiKey::DescribeGroups,
                    &group,
                    request,
                    |r| match r {
                        Reply::Describe(d) => Some(d),
                        _ => None,
                    },
                );
            let mut d = match described.await {
                Ok(d) => d,
                Err(code) => DescribedGroup::default()
                    .with_group_id(g)
                    .with_error_code(code),
            };
            if version < 6 && d.error_code == ResponseError::GroupIdNotFound.code() {
                d.error_code = 0;
            }
            if version < 4 {
                for m in &mut d.members {
                    m.group_instance_id = None;
                }
            }
            if req.include_authorized_operations && version >= 3 && d.error_code != group_denied() {
                d.authorized_operations = conn.authorized_operations(ResourceType::Group, &group);
            }
            out.push(d);
        }
        frame(
            correlation_id,
            version,
            &DescribeGroupsResponse::default().with_groups(out),
        )
    })
}

//! ListGroups (key 16), v0–v5: every group any shard coordinates, with state (v4+ filter
//! by state, v5+ by type: all groups here are "classic"). ACLs: all of them with DESCRIBE
//! on the cluster, else those the principal may DESCRIBE.
//!
//! Runs on the connection's shard and asks every shard's coordinator (one envelope each).

use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::messages::{ListGroupsRequest, ListGroupsResponse};

use super::{deferred, frame, Conn, Pending};
use crate::kafka::groups::{Reply, Request};
use crate::security::acl::{Operation, ResourceType, CLUSTER_NAME};

pub fn handle(
    conn: &Rc<Conn>,
    req: ListGroupsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let shard = conn.shard.clone();
        let states: Vec<String> = req
            .states_filter
            .iter()
            .map(|s| s.to_string().to_lowercase())
            .collect();
        let types: Vec<String> = req
            .types_filter
            .iter()
            .map(|s| s.to_string().to_lowercase())
            .collect();
        let replies = join_all((0..shard.count).map(|i| shard.group_on(i, Request::List))).await;
        let mut groups = Vec::new();
        for r in replies {
            if let Reply::List(list) = r {
                groups.extend(list.into_iter().filter(|g| {
                    (states.is_empty()
                        || states.contains(&g.group_state.to_string().to_lowercase()))
                        && (types.is_empty()
                            || types.contains(&g.group_type.to_string().to_lowercase()))
                }));
            }
        }
        // DESCRIBE on the cluster lists every group; otherwise only the groups the
        // principal may describe, silently (as Kafka).
        if !conn.may(Operation::Describe, ResourceType::Cluster, CLUSTER_NAME) {
            groups.retain(|g| conn.may(Operation::Describe, ResourceType::Group, &g.group_id));
        }
        if version < 4 {
            for g in &mut groups {
                g.group_state = Default::default();
            }
        }
        if version < 5 {
            for g in &mut groups {
                g.group_type = Default::default();
            }
        }
        frame(
            correlation_id,
            version,
            &ListGroupsResponse::default().with_groups(groups),
        )
    })
}

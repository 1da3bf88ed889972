//! OffsetDelete (key 47), v0: remove a group's committed offsets for some partitions;
//! GROUP_SUBSCRIBED_TO_TOPIC while an active member subscribes to the topic. ACLs: DELETE
//! on the group (GROUP_AUTHORIZATION_FAILED), READ on each topic
//! (TOPIC_AUTHORIZATION_FAILED).
//!
//! Runs on the connection's shard; the group's coordinator shard answers.

use std::rc::Rc;

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{ApiKey, OffsetDeleteRequest, OffsetDeleteResponse};

use super::details::authorize::topic_denied;
use super::details::coordinator;
use super::{deferred, frame, Conn, Pending};
use crate::kafka::groups::{Reply, Request};
use crate::security::acl::{Operation, ResourceType};

pub fn handle(
    conn: &Rc<Conn>,
    req: OffsetDeleteRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let group = req.group_id.to_string();
        // DELETE on the group (checked by the coordinator preamble, first), then READ on
        // each topic: a refused topic's partitions get TOPIC_AUTHORIZATION_FAILED.
        let group_ok = conn.may(Operation::Delete, ResourceType::Group, &group);
        let allowed: Vec<bool> = req
            .topics
            .iter()
            .map(|t| !group_ok || conn.authorize(Operation::Read, ResourceType::Topic, &t.name))
            .collect();
        let parts: Vec<(String, i32)> = req
            .topics
            .iter()
            .zip(&allowed)
            .filter(|(_, a)| **a)
            .flat_map(|(t, _)| {
                let name = t.name.to_string();
                t.partitions
                    .iter()
                    .map(move |p| (name.clone(), p.partition_index))
            })
            .collect();
        let n = parts.len();
        let request = Request::OffsetDelete {
            group: group.clone(),
            parts,
        };
        let deleted = coordinator::ask(&conn, ApiKey::OffsetDelete, &group, request, |r| match r {
            Reply::OffsetDelete(code, codes) => Some((code, codes)),
            _ => None,
        });
        let (code, codes) = deleted.await.unwrap_or_else(|code| (code, vec![0; n]));
        let mut codes = codes.into_iter();
        let topics = req
            .topics
            .into_iter()
            .zip(allowed)
            .map(|(t, allowed)| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let code = if allowed {
                            codes.next().unwrap_or(0)
                        } else {
                            topic_denied()
                        };
                        OffsetDeleteResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(code)
                    })
                    .collect();
                OffsetDeleteResponseTopic::default()
                    .with_name(t.name)
                    .with_partitions(partitions)
            })
            .collect();
        let resp = OffsetDeleteResponse::default()
            .with_error_code(code)
            .with_topics(topics);
        frame(correlation_id, version, &resp)
    })
}

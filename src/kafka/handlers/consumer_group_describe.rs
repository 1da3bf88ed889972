//! ConsumerGroupDescribe (key 69), v0–v1: groups of the consumer protocol (KIP-848) with
//! their epochs, assignor and members (subscriptions, current and target assignments).
//! An id that is not a consumer group gets GROUP_ID_NOT_FOUND. ACLs: DESCRIBE on each
//! group (GROUP_AUTHORIZATION_FAILED) and on every topic of its members' assignments
//! (TOPIC_AUTHORIZATION_FAILED for the group, as Kafka); the authorized operations when
//! asked.
//!
//! Runs on the connection's shard; each group's coordinator shard answers for it.

use std::rc::Rc;

use kafka_protocol::messages::consumer_group_describe_response::DescribedGroup;
use kafka_protocol::messages::{
    ApiKey, ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse,
};

use super::details::authorize::{group_denied, topic_denied};
use super::details::coordinator;
use super::{deferred, frame, Conn, Pending};
use crate::kafka::groups::{Reply, Request};
use crate::security::acl::{Operation, ResourceType};

pub fn handle(
    conn: &Rc<Conn>,
    req: ConsumerGroupDescribeRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let mut out = Vec::new();
        for g in req.group_ids {
            let group = g.to_string();
            let request = Request::ConsumerDescribe(group.clone());
            let described = coordinator::ask(
                &conn,
                ApiKey::ConsumerGroupDescribe,
                &group,
                request,
                |r| match r {
                    Reply::ConsumerDescribe(d) => Some(d),
                    _ => None,
                },
            );
            let mut d = match described.await {
                Ok(d) => d,
                Err(code) => DescribedGroup::default()
                    .with_group_id(g)
                    .with_error_code(code),
            };
            let topics_ok = d.members.iter().all(|m| {
                m.assignment
                    .topic_partitions
                    .iter()
                    .chain(&m.target_assignment.topic_partitions)
                    .all(|tp| {
                        conn.authorize(Operation::Describe, ResourceType::Topic, &tp.topic_name)
                    })
            });
            if !topics_ok {
                d = DescribedGroup::default()
                    .with_group_id(d.group_id)
                    .with_error_code(topic_denied());
            }
            if req.include_authorized_operations && d.error_code != group_denied() {
                d.authorized_operations = conn.authorized_operations(ResourceType::Group, &group);
            } else {
                d.authorized_operations = i32::MIN;
            }
            out.push(d);
        }
        frame(
            correlation_id,
            version,
            &ConsumerGroupDescribeResponse::default().with_groups(out),
        )
    })
}

//! CreatePartitions (key 37), v0–v3: raise a topic's partition count (never lower it).
//! New partitions start empty on their owner shards. ACLs: ALTER on the topic, else
//! TOPIC_AUTHORIZATION_FAILED.
//!
//! Runs on the connection's shard; the change goes to shard 0's writer.

use std::rc::Rc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::ResponseError;

use super::details::authorize::topic_denied;
use super::{deferred, frame, str_bytes, Conn, Pending};
use crate::catalog::Change;
use crate::kafka::catalog_error_code;
use crate::security::acl::{Operation, ResourceType};

pub fn handle(
    conn: &Rc<Conn>,
    req: CreatePartitionsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let shard = conn.shard.clone();
        let node = shard.config.node_id;
        let mut early = Vec::new();
        let mut changes = Vec::new();
        for t in &req.topics {
            let bad_assignment = t
                .assignments
                .as_ref()
                .is_some_and(|a| a.iter().any(|a| a.broker_ids.iter().any(|b| b.0 != node)));
            if !conn.authorize(Operation::Alter, ResourceType::Topic, &t.name) {
                early.push(Some(topic_denied()));
            } else if bad_assignment {
                early.push(Some(ResponseError::InvalidReplicaAssignment.code()));
            } else {
                early.push(None);
                changes.push(Change::SetPartitions(t.name.to_string(), t.count));
            }
        }
        let mut outcomes = shard
            .change_catalog(changes, req.validate_only)
            .await
            .into_iter();
        let results = req
            .topics
            .into_iter()
            .zip(early)
            .map(|(t, e)| {
                let r = CreatePartitionsTopicResult::default().with_name(t.name);
                match e {
                    Some(code) => r.with_error_code(code),
                    None => match outcomes.next() {
                        Some(Ok(())) => r,
                        Some(Err(e)) => r
                            .with_error_code(catalog_error_code(&e))
                            .with_error_message(Some(str_bytes(e.to_string()))),
                        None => r.with_error_code(ResponseError::UnknownServerError.code()),
                    },
                }
            })
            .collect();
        frame(
            correlation_id,
            version,
            &CreatePartitionsResponse::default().with_results(results),
        )
    })
}

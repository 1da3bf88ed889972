//! DeleteTopics (key 20), v1–v6: remove topics by name (or by id from v6). Each owner
//! shard removes the partitions' files when it installs the catalog version without them.
//! ACLs: DELETE on each topic, else TOPIC_AUTHORIZATION_FAILED.
//!
//! Runs on the connection's shard; the change goes to shard 0's writer.

use std::rc::Rc;

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
use kafka_protocol::ResponseError;

use super::details::authorize::topic_denied;
use super::{deferred, frame, str_bytes, topic_name, Conn, Pending};
use crate::catalog::Change;
use crate::kafka::catalog_error_code;
use crate::security::acl::{Operation, ResourceType};

pub fn handle(
    conn: &Rc<Conn>,
    req: DeleteTopicsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let shard = conn.shard.clone();
        let state = shard.catalog.current();
        // (name if known, id as asked)
        let asked: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
            req.topics
                .into_iter()
                .map(|t| {
                    let name = match t.name {
                        Some(n) => Some(n.to_string()),
                        None => state
                            .topic_by_id(t.topic_id.as_bytes())
                            .map(|t| t.name.clone()),
                    };
                    (name, t.topic_id)
                })
                .collect()
        } else {
            req.topic_names
                .into_iter()
                .map(|n| (Some(n.to_string()), uuid::Uuid::nil()))
                .collect()
        };
        // DELETE on each topic, else TOPIC_AUTHORIZATION_FAILED (and it stays).
        let allowed: Vec<bool> = asked
            .iter()
            .map(|(n, _)| {
                n.as_ref()
                    .is_none_or(|n| conn.authorize(Operation::Delete, ResourceType::Topic, n))
            })
            .collect();
        let changes: Vec<Change> = asked
            .iter()
            .zip(&allowed)
            .filter(|(_, a)| **a)
            .filter_map(|((n, _), _)| n.clone().map(Change::DeleteTopic))
            .collect();
        let mut outcomes = shard.change_catalog(changes, false).await.into_iter();
        let results = asked
            .into_iter()
            .zip(allowed)
            .map(|((name, id), allowed)| {
                let r = DeletableTopicResult::default()
                    .with_name(name.as_deref().map(topic_name))
                    .with_topic_id(match &name {
                        Some(n) => state
                            .topic(n)
                            .map(|t| uuid::Uuid::from_bytes(t.id))
                            .unwrap_or(id),
                        None => id,
                    });
                match name {
                    None => r.with_error_code(ResponseError::UnknownTopicId.code()),
                    Some(_) if !allowed => r.with_error_code(topic_denied()),
                    Some(_) => match outcomes.next() {
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
            &DeleteTopicsResponse::default().with_responses(results),
        )
    })
}

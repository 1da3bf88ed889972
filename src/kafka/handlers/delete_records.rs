//! DeleteRecords (key 21), v0–v2: move partitions' log start offsets forward (offset -1:
//! to the high watermark). Records below become unreadable at once; whole segments below
//! are deleted by the next retention pass. The new start is fsynced before the answer.
//!
//! Runs on the connection's shard; each owner shard moves its partitions (one envelope
//! per owner).

use std::rc::Rc;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;

use super::details::authorize::{only_allowed, topic_denied};
use super::details::partitions;
use super::{deferred, frame, Conn, Pending};
use crate::kafka::owner::{Reply, Request};
use crate::security::acl::Operation;

pub fn handle(
    conn: &Rc<Conn>,
    req: DeleteRecordsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        // DELETE on each topic, else TOPIC_AUTHORIZATION_FAILED for its partitions; an
        // internal topic's records are never deleted by a client (Kafka's ReplicaManager:
        // INVALID_TOPIC_EXCEPTION).
        let authorized = conn.authorize_topics(
            Operation::Delete,
            req.topics.iter().map(|t| t.name.as_str()),
        );
        let refusals: Vec<Option<i16>> = req
            .topics
            .iter()
            .zip(authorized)
            .map(|(t, authorized)| match authorized {
                false => Some(topic_denied()),
                true if crate::kafka::offsets_topic::is_internal(&t.name) => {
                    Some(ResponseError::InvalidTopicException.code())
                }
                true => None,
            })
            .collect();
        let allowed: Vec<bool> = refusals.iter().map(Option::is_none).collect();
        let wanted = only_allowed(&req.topics, &allowed, |t| {
            let parts = t.partitions.iter().map(|p| (p.partition_index, p.offset));
            (t.name.to_string(), parts)
        });
        let items = partitions::items(wanted);
        let results = partitions::ask_owners(
            &conn.shard,
            items,
            (-1i64, ResponseError::UnknownTopicOrPartition.code()),
            |parts| Request::DeleteRecords { parts },
            |reply| match reply {
                Reply::DeleteRecords(rs) => Some(rs),
                _ => None,
            },
        )
        .await;
        let mut results = results.into_iter();
        let topics = req
            .topics
            .into_iter()
            .zip(refusals)
            .map(|(t, refusal)| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let (low, code) = match refusal {
                            None => results.next().unwrap_or((-1, 0)),
                            Some(code) => (-1, code),
                        };
                        DeleteRecordsPartitionResult::default()
                            .with_partition_index(p.partition_index)
                            .with_low_watermark(low)
                            .with_error_code(code)
                    })
                    .collect();
                DeleteRecordsTopicResult::default()
                    .with_name(t.name)
                    .with_partitions(partitions)
            })
            .collect();
        frame(
            correlation_id,
            version,
            &DeleteRecordsResponse::default().with_topics(topics),
        )
    })
}

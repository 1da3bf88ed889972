//! ListOffsets (key 2), v1–v10: earliest (-2), latest (-1), max timestamp (-3), or the
//! first offset at or after a timestamp; v0 (decoded by `legacy`): up to `max_num_offsets`
//! segment-granular offsets, as Kafka before 0.10.1 answered (`Log::old_style_offsets`).
//! ACLs: DESCRIBE on each topic, else TOPIC_AUTHORIZATION_FAILED. With `isolation_level`
//! 1 (READ_COMMITTED, v2+) LATEST is the last stable offset and nothing at or past it is
//! found, as Kafka answers.
//!
//! Runs on the connection's shard; each owner shard answers for its partitions (one
//! envelope per owner).

use std::rc::Rc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use super::details::authorize::topic_denied;
use super::details::partitions::ask_owners;
use super::{deferred, frame, Conn, Pending};
use crate::kafka::legacy;
use crate::kafka::owner::{OffsetAnswer, OffsetQuery, Reply, Request};
use crate::security::acl::{Operation, ResourceType};

pub fn handle(
    conn: &Rc<Conn>,
    req: ListOffsetsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let shard = conn.shard.clone();
        let read_committed = version >= 2 && req.isolation_level == 1;
        let mut layout = Vec::new();
        let mut items = Vec::new();
        let mut n = 0;
        // Per partition of the request: its item, or None when the ACLs refuse its topic
        // (DESCRIBE).
        let mut order: Vec<Option<usize>> = Vec::new();
        for t in req.topics {
            let mut parts = Vec::new();
            let allowed = conn.authorize(Operation::Describe, ResourceType::Topic, &t.name);
            for p in t.partitions {
                if allowed {
                    order.push(Some(n));
                    let max = legacy::max_num_offsets(&p);
                    items.push((n, t.name.to_string(), p.partition_index, (p.timestamp, max)));
                    n += 1;
                } else {
                    order.push(None);
                }
                parts.push(p.partition_index);
            }
            layout.push((t.name, parts));
        }
        let missing = OffsetAnswer {
            error: ResponseError::UnknownTopicOrPartition.code(),
            offset: -1,
            timestamp: -1,
            old_style: Vec::new(),
        };
        let answers = ask_owners(
            &shard,
            items,
            missing,
            |parts| Request::ListOffsets {
                parts: parts
                    .into_iter()
                    .map(
                        |(topic, partition, (timestamp, max_num_offsets))| OffsetQuery {
                            topic,
                            partition,
                            timestamp,
                            max_num_offsets,
                        },
                    )
                    .collect(),
                read_committed,
            },
            |reply| match reply {
                Reply::ListOffsets(rs) => Some(rs),
                _ => None,
            },
        )
        .await;
        let answers: Vec<OffsetAnswer> = order
            .into_iter()
            .map(|item| match item.and_then(|i| answers.get(i)) {
                Some(a) => a.clone(),
                None => OffsetAnswer {
                    error: topic_denied(),
                    offset: -1,
                    timestamp: -1,
                    old_style: Vec::new(),
                },
            })
            .collect();
        let mut answers = answers.into_iter();
        let topics = layout
            .into_iter()
            .map(|(name, parts)| {
                let partitions = parts
                    .into_iter()
                    .filter_map(|p| {
                        let a = answers.next()?;
                        let mut r = ListOffsetsPartitionResponse::default()
                            .with_partition_index(p)
                            .with_error_code(a.error)
                            .with_offset(a.offset)
                            .with_timestamp(a.timestamp);
                        // The leader epoch exists from v4 on.
                        if version >= 4 {
                            r.leader_epoch = 0;
                        }
                        if version == 0 && a.error == 0 {
                            r = legacy::with_old_style_offsets(r, &a.old_style);
                        }
                        Some(r)
                    })
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(name)
                    .with_partitions(partitions)
            })
            .collect();
        frame(
            correlation_id,
            version,
            &ListOffsetsResponse::default().with_topics(topics),
        )
    })
}

//! ListOffsets (key 2), v1–v10: earliest (-2), latest (-1), max timestamp (-3), or the
//! first offset at or after a timestamp.
//!
//! Runs on the connection's shard; each owner shard answers for its partitions (one
//! envelope per owner).

use std::rc::Rc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use super::details::partitions::ask_owners;
use super::{deferred, frame, Conn, Pending};
use crate::kafka::owner::{OffsetAnswer, OffsetQuery, Reply, Request};

pub fn handle(
    conn: &Rc<Conn>,
    req: ListOffsetsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let shard = conn.shard.clone();
        let mut layout = Vec::new();
        let mut items = Vec::new();
        let mut n = 0;
        for t in req.topics {
            let mut parts = Vec::new();
            for p in t.partitions {
                items.push((n, t.name.to_string(), p.partition_index, p.timestamp));
                parts.push(p.partition_index);
                n += 1;
            }
            layout.push((t.name, parts));
        }
        let missing = OffsetAnswer {
            error: ResponseError::UnknownTopicOrPartition.code(),
            offset: -1,
            timestamp: -1,
        };
        let answers = ask_owners(
            &shard,
            items,
            missing,
            |parts| Request::ListOffsets {
                parts: parts
                    .into_iter()
                    .map(|(topic, partition, timestamp)| OffsetQuery {
                        topic,
                        partition,
                        timestamp,
                    })
                    .collect(),
            },
            |reply| match reply {
                Reply::ListOffsets(rs) => Some(rs),
                _ => None,
            },
        )
        .await;
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

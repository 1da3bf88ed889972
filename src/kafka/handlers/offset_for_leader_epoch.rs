//! OffsetForLeaderEpoch (key 23), v2–v4: the end offset of a leader epoch, which clients use
//! to check their position after a leader change (KIP-320). This broker has always led every
//! partition in epoch 0, so epoch 0 or later ends at the log end offset; an unknown newer
//! current epoch gets UNKNOWN_LEADER_EPOCH.
//!
//! Runs on the connection's shard; owner shards report log end offsets.

use std::rc::Rc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;

use super::details::partitions::ask_owners;
use super::{frame, Conn, Pending};
use crate::kafka::owner::{Reply, Request};

pub fn handle(
    conn: &Rc<Conn>,
    req: OffsetForLeaderEpochRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    let conn = conn.clone();
    Box::pin(async move {
        let shard = conn.shard.clone();
        let mut items = Vec::new();
        for t in &req.topics {
            for p in &t.partitions {
                items.push((items.len(), t.topic.to_string(), p.partition, ()));
            }
        }
        let ends = ask_owners(
            &shard,
            items,
            (-1i64, ResponseError::UnknownTopicOrPartition.code()),
            |parts| Request::Describe {
                parts: Some(parts.into_iter().map(|(t, p, _)| (t, p)).collect()),
            },
            |reply| match reply {
                Reply::Describe(infos) => Some(
                    infos
                        .into_iter()
                        .map(|i| (i.log_end_offset, i.error))
                        .collect(),
                ),
                _ => None,
            },
        )
        .await;
        let mut ends = ends.into_iter();
        let topics = req
            .topics
            .into_iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let (end, code) = ends.next().unwrap_or((-1, 0));
                        let r = EpochEndOffset::default().with_partition(p.partition);
                        if code != 0 {
                            r.with_error_code(code)
                                .with_leader_epoch(-1)
                                .with_end_offset(-1)
                        } else if p.current_leader_epoch > 0 {
                            r.with_error_code(ResponseError::UnknownLeaderEpoch.code())
                                .with_leader_epoch(-1)
                                .with_end_offset(-1)
                        } else if p.leader_epoch < 0 {
                            r.with_leader_epoch(-1).with_end_offset(-1)
                        } else {
                            r.with_leader_epoch(0).with_end_offset(end)
                        }
                    })
                    .collect();
                OffsetForLeaderTopicResult::default()
                    .with_topic(t.topic)
                    .with_partitions(partitions)
            })
            .collect();
        frame(
            correlation_id,
            version,
            &OffsetForLeaderEpochResponse::default().with_topics(topics),
        )
    })
}

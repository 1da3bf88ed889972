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

use super::details::authorize::{only_allowed, topic_denied};
use super::details::partitions;
use super::{deferred, frame, Conn, Pending};
use crate::security::acl::Operation;

pub fn handle(
    conn: &Rc<Conn>,
    req: OffsetForLeaderEpochRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        // DESCRIBE on each topic, else TOPIC_AUTHORIZATION_FAILED for its partitions.
        let allowed = conn.authorize_topics(
            Operation::Describe,
            req.topics.iter().map(|t| t.topic.as_str()),
        );
        let wanted = only_allowed(&req.topics, &allowed, |t| {
            let parts = t.partitions.iter().map(|p| (p.partition, ()));
            (t.topic.to_string(), parts)
        });
        let infos = partitions::describe(&conn.shard, partitions::items(wanted)).await;
        // A partition no owner described has an error, so its end offset is never read.
        let mut ends = infos.into_iter().map(|i| (i.log_end_offset, i.error));
        let topics = req
            .topics
            .into_iter()
            .zip(allowed)
            .map(|(t, allowed)| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let r = EpochEndOffset::default().with_partition(p.partition);
                        if !allowed {
                            return r
                                .with_error_code(topic_denied())
                                .with_leader_epoch(-1)
                                .with_end_offset(-1);
                        }
                        let (end, code) = ends.next().unwrap_or((-1, 0));
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

//! DescribeProducers (key 61), v0: the idempotent producers each partition remembers (id,
//! epoch, last sequence, last timestamp).
//!
//! Runs on the connection's shard; owner shards answer for their partitions.

use std::rc::Rc;

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};
use kafka_protocol::ResponseError;

use super::details::partitions::ask_owners;
use super::{frame, Conn, Pending};
use crate::kafka::owner::{PartitionInfo, Reply, Request};

pub fn handle(
    conn: &Rc<Conn>,
    req: DescribeProducersRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    let conn = conn.clone();
    Box::pin(async move {
        let shard = conn.shard.clone();
        let mut items = Vec::new();
        for t in &req.topics {
            for p in &t.partition_indexes {
                items.push((items.len(), t.name.to_string(), *p, ()));
            }
        }
        let missing = PartitionInfo {
            error: ResponseError::UnknownTopicOrPartition.code(),
            ..Default::default()
        };
        let infos = ask_owners(
            &shard,
            items,
            missing,
            |parts| Request::Describe {
                parts: Some(parts.into_iter().map(|(t, p, _)| (t, p)).collect()),
            },
            |reply| match reply {
                Reply::Describe(rs) => Some(rs),
                _ => None,
            },
        )
        .await;
        let mut infos = infos.into_iter();
        let topics = req
            .topics
            .into_iter()
            .map(|t| {
                let partitions = t
                    .partition_indexes
                    .iter()
                    .map(|p| {
                        let info = infos.next().unwrap_or_default();
                        PartitionResponse::default()
                            .with_partition_index(*p)
                            .with_error_code(info.error)
                            .with_active_producers(
                                info.producers
                                    .into_iter()
                                    .map(|(id, epoch, seq, ts)| {
                                        ProducerState::default()
                                            .with_producer_id(ProducerId(id))
                                            .with_producer_epoch(epoch as i32)
                                            .with_last_sequence(seq)
                                            .with_last_timestamp(ts)
                                            .with_coordinator_epoch(-1)
                                            .with_current_txn_start_offset(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                TopicResponse::default()
                    .with_name(t.name)
                    .with_partitions(partitions)
            })
            .collect();
        frame(
            correlation_id,
            version,
            &DescribeProducersResponse::default().with_topics(topics),
        )
    })
}

//! DescribeProducers (key 61), v0: the idempotent producers each partition remembers (id,
//! epoch, last sequence, last timestamp), with the coordinator epoch of each one's last
//! transaction marker and the offset its ongoing transaction began at (-1: none).
//!
//! Runs on the connection's shard; owner shards answer for their partitions.

use std::rc::Rc;

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};

use super::details::authorize::{only_allowed, topic_denied};
use super::details::partitions;
use super::{deferred, frame, Conn, Pending};
use crate::security::acl::Operation;

pub fn handle(
    conn: &Rc<Conn>,
    req: DescribeProducersRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        // READ on each topic (as Kafka), else TOPIC_AUTHORIZATION_FAILED for its partitions.
        let allowed =
            conn.authorize_topics(Operation::Read, req.topics.iter().map(|t| t.name.as_str()));
        let wanted = only_allowed(&req.topics, &allowed, |t| {
            let parts = t.partition_indexes.iter().map(|p| (*p, ()));
            (t.name.to_string(), parts)
        });
        let infos = partitions::describe(&conn.shard, partitions::items(wanted)).await;
        let mut infos = infos.into_iter();
        let topics = req
            .topics
            .into_iter()
            .zip(allowed)
            .map(|(t, allowed)| {
                let partitions = t
                    .partition_indexes
                    .iter()
                    .map(|p| {
                        if !allowed {
                            return PartitionResponse::default()
                                .with_partition_index(*p)
                                .with_error_code(topic_denied());
                        }
                        let info = infos.next().unwrap_or_default();
                        let txns = info
                            .producer_txns
                            .into_iter()
                            .chain(std::iter::repeat((-1, -1)));
                        PartitionResponse::default()
                            .with_partition_index(*p)
                            .with_error_code(info.error)
                            .with_active_producers(
                                info.producers
                                    .into_iter()
                                    .zip(txns)
                                    .map(|((id, epoch, seq, ts), (coordinator_epoch, start))| {
                                        ProducerState::default()
                                            .with_producer_id(ProducerId(id))
                                            .with_producer_epoch(epoch as i32)
                                            .with_last_sequence(seq)
                                            .with_last_timestamp(ts)
                                            .with_coordinator_epoch(coordinator_epoch)
                                            .with_current_txn_start_offset(start)
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

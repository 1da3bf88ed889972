//! WriteTxnMarkers (key 27), v1: writes commit or abort markers to partitions, as a
//! transaction coordinator asks a partition leader to, and as Kafka's
//! `kafka-transactions.sh abort` does to end a hanging transaction (KIP-664). Each marker
//! goes through `Shard::write_txn_markers` (one envelope per owner shard) and is answered
//! once durable. ACLs: CLUSTER_ACTION on the cluster, else CLUSTER_AUTHORIZATION_FAILED
//! for every partition, as Kafka.
//!
//! Runs on the connection's shard.

use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};

use super::details::authorize::cluster_denied;
use super::{deferred, frame, Conn, Pending};
use crate::kafka::owner::TxnMarker;
use crate::security::acl::Operation;

pub fn handle(
    conn: &Rc<Conn>,
    req: WriteTxnMarkersRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let allowed = conn.authorize_cluster(Operation::ClusterAction);
        let shard = conn.shard.clone();
        let answers = join_all(req.markers.iter().map(|m| {
            let shard = shard.clone();
            let marker = TxnMarker {
                producer_id: m.producer_id.0,
                producer_epoch: m.producer_epoch,
                commit: m.transaction_result,
                coordinator_epoch: m.coordinator_epoch,
            };
            let parts: Vec<(String, i32)> = m
                .topics
                .iter()
                .flat_map(|t| {
                    let name = t.name.to_string();
                    t.partition_indexes.iter().map(move |p| (name.clone(), *p))
                })
                .collect();
            async move {
                if allowed {
                    shard.write_txn_markers(marker, parts).await
                } else {
                    vec![cluster_denied(); parts.len()]
                }
            }
        }))
        .await;
        let markers = req
            .markers
            .into_iter()
            .zip(answers)
            .map(|(m, codes)| {
                let mut codes = codes.into_iter();
                let topics = m
                    .topics
                    .into_iter()
                    .map(|t| {
                        let partitions = t
                            .partition_indexes
                            .iter()
                            .map(|p| {
                                WritableTxnMarkerPartitionResult::default()
                                    .with_partition_index(*p)
                                    .with_error_code(codes.next().unwrap_or(0))
                            })
                            .collect();
                        WritableTxnMarkerTopicResult::default()
                            .with_name(t.name)
                            .with_partitions(partitions)
                    })
                    .collect();
                WritableTxnMarkerResult::default()
                    .with_producer_id(m.producer_id)
                    .with_topics(topics)
            })
            .collect();
        frame(
            correlation_id,
            version,
            &WriteTxnMarkersResponse::default().with_markers(markers),
        )
    })
}

//! OffsetFetch (key 9), v1–v9: a group's committed offsets (-1 where none), for the
//! partitions asked or (v2+, topics null) all of them; v8+ asks several groups at once.
//!
//! Runs on the connection's shard; each group's coordinator shard answers for it.

use std::rc::Rc;

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse};
use kafka_protocol::ResponseError;

use super::{frame, str_bytes, topic_name, Conn, Pending};
use crate::broker::Shard;
use crate::kafka::groups::{FetchedOffset, Reply, Request};

/// One group's offsets, grouped by topic in first-seen order.
async fn fetch(
    shard: &Rc<Shard>,
    group: &str,
    parts: Option<Vec<(String, i32)>>,
) -> (i16, Vec<(String, Vec<FetchedOffset>)>) {
    let (code, offsets) = match shard
        .group(
            group,
            Request::Fetch {
                group: group.to_owned(),
                parts,
            },
        )
        .await
    {
        Reply::Fetch(code, offsets) => (code, offsets),
        Reply::Code(code) => (code, Vec::new()),
        _ => (ResponseError::CoordinatorNotAvailable.code(), Vec::new()),
    };
    let mut topics: Vec<(String, Vec<FetchedOffset>)> = Vec::new();
    for o in offsets {
        match topics.iter_mut().find(|(t, _)| *t == o.topic) {
            Some((_, v)) => v.push(o),
            None => topics.push((o.topic.clone(), vec![o])),
        }
    }
    (code, topics)
}

pub fn handle(
    conn: &Rc<Conn>,
    req: OffsetFetchRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    let conn = conn.clone();
    Box::pin(async move {
        let shard = &conn.shard;
        let resp = if version >= 8 {
            let mut groups = Vec::new();
            for g in req.groups {
                let group = g.group_id.to_string();
                let parts = g.topics.map(|ts| {
                    ts.into_iter()
                        .flat_map(|t| {
                            let name = t.name.to_string();
                            t.partition_indexes
                                .into_iter()
                                .map(move |p| (name.clone(), p))
                        })
                        .collect()
                });
                let (code, topics) = fetch(shard, &group, parts).await;
                groups.push(
                    OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id)
                        .with_error_code(code)
                        .with_topics(
                            topics
                                .into_iter()
                                .map(|(t, offsets)| {
                                    OffsetFetchResponseTopics::default()
                                        .with_name(topic_name(&t))
                                        .with_partitions(
                                            offsets
                                                .into_iter()
                                                .map(|o| {
                                                    OffsetFetchResponsePartitions::default()
                                                        .with_partition_index(o.partition)
                                                        .with_committed_offset(o.offset)
                                                        .with_committed_leader_epoch(o.leader_epoch)
                                                        .with_metadata(o.metadata.map(str_bytes))
                                                        .with_error_code(o.error)
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        ),
                );
            }
            OffsetFetchResponse::default().with_groups(groups)
        } else {
            let group = req.group_id.to_string();
            let parts = req.topics.map(|ts| {
                ts.into_iter()
                    .flat_map(|t| {
                        let name = t.name.to_string();
                        t.partition_indexes
                            .into_iter()
                            .map(move |p| (name.clone(), p))
                    })
                    .collect()
            });
            let (code, topics) = fetch(shard, &group, parts).await;
            let mut r = OffsetFetchResponse::default().with_topics(
                topics
                    .into_iter()
                    .map(|(t, offsets)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(topic_name(&t))
                            .with_partitions(
                                offsets
                                    .into_iter()
                                    .map(|o| {
                                        let mut p = OffsetFetchResponsePartition::default()
                                            .with_partition_index(o.partition)
                                            .with_committed_offset(o.offset)
                                            .with_metadata(o.metadata.map(str_bytes))
                                            .with_error_code(if version < 2 && code != 0 {
                                                code
                                            } else {
                                                o.error
                                            });
                                        if version >= 5 {
                                            p.committed_leader_epoch = o.leader_epoch;
                                        }
                                        p
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
            if version >= 2 {
                r.error_code = code;
            }
            r
        };
        frame(correlation_id, version, &resp)
    })
}

//! OffsetFetch (key 9), v1–v9: a group's committed offsets (-1 where none), for the
//! partitions asked or (v2+, topics null) all of them; v8+ asks several groups at once;
//! v9+ from a member of a consumer-protocol group (KIP-848) is checked against its member
//! id and epoch (UNKNOWN_MEMBER_ID, STALE_MEMBER_EPOCH).
//! With `require_stable` (v7+, KIP-447; librdkafka sets it for `read_committed`), a
//! partition with offsets pending in an open transaction (`groups::txn_offsets`) gets
//! UNSTABLE_OFFSET_COMMIT and offset -1, as Kafka answers, so the consumer retries instead
//! of starting from an offset the transaction is about to replace.
//!
//! Runs on the connection's shard; each group's coordinator shard answers for it.

use std::rc::Rc;

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{ApiKey, OffsetFetchRequest, OffsetFetchResponse};

use super::details::authorize::topic_denied;
use super::details::coordinator;
use super::{deferred, frame, str_bytes, topic_name, Conn, Pending};
use crate::kafka::groups::{FetchedOffset, Reply, Request};
use crate::security::acl::{Operation, ResourceType};

/// One group's offsets, grouped by topic in first-seen order. ACLs, as Kafka: DESCRIBE on
/// the group (GROUP_AUTHORIZATION_FAILED, in the coordinator preamble) and on each topic:
/// a named topic the principal may not describe gets TOPIC_AUTHORIZATION_FAILED for its
/// partitions; when all topics are asked for, such topics are left out.
async fn fetch(
    conn: &Conn,
    group: &str,
    parts: Option<Vec<(String, i32)>>,
    require_stable: bool,
) -> (i16, Vec<(String, Vec<FetchedOffset>)>) {
    let named = parts.is_some();
    let request = Request::Fetch {
        group: group.to_owned(),
        parts,
    };
    let fetched = coordinator::ask(conn, ApiKey::OffsetFetch, group, request, |r| match r {
        Reply::Fetch(code, offsets) => Some((code, offsets)),
        _ => None,
    });
    let (code, mut offsets) = fetched.await.unwrap_or_else(|code| (code, Vec::new()));
    if require_stable && code == 0 && !offsets.is_empty() {
        let pending = conn.shard.txn_offsets_pending(group).await;
        for o in offsets
            .iter_mut()
            .filter(|o| pending.contains(&(o.topic.clone(), o.partition)))
        {
            o.offset = -1;
            o.leader_epoch = -1;
            o.error = kafka_protocol::ResponseError::UnstableOffsetCommit.code();
        }
    }
    let mut topics: Vec<(String, Vec<FetchedOffset>)> = Vec::new();
    let mut allowed: Vec<(String, bool)> = Vec::new();
    for mut o in offsets {
        let ok = match allowed.iter().find(|(t, _)| *t == o.topic) {
            Some((_, ok)) => *ok,
            None => {
                let ok = if named {
                    conn.authorize(Operation::Describe, ResourceType::Topic, &o.topic)
                } else {
                    conn.may(Operation::Describe, ResourceType::Topic, &o.topic)
                };
                allowed.push((o.topic.clone(), ok));
                ok
            }
        };
        if !ok {
            if !named {
                continue;
            }
            o.offset = -1;
            o.leader_epoch = -1;
            o.metadata = None;
            o.error = topic_denied();
        }
        match topics.iter_mut().find(|(t, _)| *t == o.topic) {
            Some((_, v)) => v.push(o),
            None => topics.push((o.topic.clone(), vec![o])),
        }
    }
    (code, topics)
}

/// The (topic, partition) pairs a request asks for, in its order.
fn named(topics: impl Iterator<Item = (String, Vec<i32>)>) -> Vec<(String, i32)> {
    topics
        .flat_map(|(name, partitions)| partitions.into_iter().map(move |p| (name.clone(), p)))
        .collect()
}

pub fn handle(
    conn: &Rc<Conn>,
    req: OffsetFetchRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let resp = if version >= 8 {
            let mut groups = Vec::new();
            for g in req.groups {
                let group = g.group_id.to_string();
                let parts = g.topics.map(|ts| {
                    named(
                        ts.into_iter()
                            .map(|t| (t.name.to_string(), t.partition_indexes)),
                    )
                });
                // v9+: a consumer-protocol member gives its id and epoch (KIP-848).
                let member = g.member_id.as_ref().map(|m| m.to_string());
                if version >= 9 && (member.is_some() || g.member_epoch >= 0) {
                    let request = Request::ConsumerCheck {
                        group: group.clone(),
                        member_id: member.unwrap_or_default(),
                        epoch: g.member_epoch,
                    };
                    let code =
                        coordinator::ask_code(&conn, ApiKey::OffsetFetch, &group, request).await;
                    if code != 0 {
                        groups.push(
                            OffsetFetchResponseGroup::default()
                                .with_group_id(g.group_id)
                                .with_error_code(code),
                        );
                        continue;
                    }
                }
                let (code, topics) = fetch(&conn, &group, parts, req.require_stable).await;
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
                named(
                    ts.into_iter()
                        .map(|t| (t.name.to_string(), t.partition_indexes)),
                )
            });
            let stable = version >= 7 && req.require_stable;
            let (code, topics) = fetch(&conn, &group, parts, stable).await;
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

//! Fetch (key 1), v0–v18: read record batches from partitions, long-polling up to
//! `max_wait_ms` until `min_bytes` have arrived. v0–3 (decoded by `legacy`) get the old
//! message format, converted here from the fetch offset on (`message_set::from_batches`).
//!
//! Runs on the connection's shard: each round asks every owner shard for its partitions
//! (one envelope per owner), and when too little came back, asks the owners to wake it as
//! soon as any of those partitions grows (`WaitForData`), then reads again. Batches are
//! returned whole and verbatim, the answer within `max_bytes` and each partition within
//! its `partition_max_bytes`, except that the first batch of the first non-empty
//! partition is returned even if larger than the limits (KIP-74). Fetch sessions are not kept: the response's session id is 0, which
//! clients treat as "send full requests". As in Kafka (KIP-110), a Fetch below v10 of a
//! topic whose `compression.type` is `zstd` gets UNSUPPORTED_COMPRESSION_TYPE for it.
//! ACLs: READ on each topic, else TOPIC_AUTHORIZATION_FAILED for its partitions.
//!
//! Every partition answers its last stable offset. With `isolation_level` 1
//! (READ_COMMITTED) the owners return only batches below it, with the aborted
//! transactions those batches overlap (producer id, first offset: what clients use to drop
//! aborted records), and a long poll wakes when the LSO moves past the fetch offset.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::metrics::Protocol;

use futures::future::select_all;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId, TopicName};
use kafka_protocol::ResponseError;

use super::details::authorize::topic_denied;
use super::details::partitions::{ask_each_owner, by_owner};
use super::{deferred, frame_passing, Conn, Pending};
use crate::catalog::effective_config;
use crate::kafka::codec::Section;
use crate::kafka::message_set;
use crate::kafka::owner::{FetchPart, FetchResult, Reply, Request};
use crate::security::acl::{Operation, ResourceType};
use crate::storage::inflate::MAX_INFLATED_BYTES;

/// One partition of the request as the handler tracks it.
struct Wanted {
    /// None: not fetched (unknown topic, or `refused`).
    topic: Option<String>,
    /// The error this partition gets without being read.
    refused: Option<i16>,
    partition: i32,
    offset: i64,
    max_bytes: usize,
}

pub fn handle(conn: &Rc<Conn>, req: FetchRequest, correlation_id: i32, version: i16) -> Pending {
    deferred(conn, |conn| async move {
        let shard = conn.shard.clone();
        let state = shard.catalog.current();
        let mut layout: Vec<(TopicName, uuid::Uuid, usize)> = Vec::new();
        let mut wanted = Vec::new();
        let max_bytes = if req.max_bytes <= 0 {
            i32::MAX as usize
        } else {
            req.max_bytes as usize
        };
        for t in req.topics {
            let name = if version >= 13 {
                state
                    .topic_by_id(t.topic_id.as_bytes())
                    .map(|t| t.name.clone())
            } else {
                Some(t.topic.to_string())
            };
            layout.push((t.topic, t.topic_id, t.partitions.len()));
            let zstd_only = version < 10
                && name
                    .as_deref()
                    .and_then(|n| state.topic(n))
                    .and_then(|topic| {
                        effective_config(&shard.config, &state, topic, "compression.type")
                    })
                    .is_some_and(|(v, _)| v == "zstd");
            // READ on the topic (TOPIC_AUTHORIZATION_FAILED, before existence is told).
            let denied = name
                .as_deref()
                .is_some_and(|n| !conn.authorize(Operation::Read, ResourceType::Topic, n));
            let refused = if denied {
                Some(topic_denied())
            } else {
                zstd_only.then(|| ResponseError::UnsupportedCompressionType.code())
            };
            for p in t.partitions {
                wanted.push(Wanted {
                    topic: if refused.is_some() {
                        None
                    } else {
                        name.clone()
                    },
                    refused,
                    partition: p.partition,
                    offset: p.fetch_offset,
                    // No partition's read need exceed the whole answer's limit.
                    max_bytes: (p.partition_max_bytes.max(0) as usize).min(max_bytes),
                });
            }
        }
        let owners = wanted
            .iter()
            .filter_map(|w| Some((w.topic.as_deref()?, w.partition)));
        // A fetch request carries no payload: a consumer follows its partitions whatever
        // it reads.
        conn.follow
            .saw(owners.map(|(t, p)| shard.owner_of(t, p)), 0);
        let unknown = if version >= 13 {
            ResponseError::UnknownTopicId.code()
        } else {
            ResponseError::UnknownTopicOrPartition.code()
        };
        let read_committed = version >= 4 && req.isolation_level == 1;
        let min_bytes = req.min_bytes.max(0) as usize;
        let started = Instant::now();
        let deadline = started + Duration::from_millis(req.max_wait_ms.max(0) as u64);

        let results = loop {
            let results = fetch_round(&shard, &wanted, unknown, read_committed).await;
            let total: usize = results.iter().map(|r| r.records.len()).sum();
            let errors = results.iter().any(|r| r.error != 0);
            let now = Instant::now();
            if total >= min_bytes.max(1) || errors || now >= deadline || shard.stopping.get() {
                break results;
            }
            // Too little: wait for any owner to see new data, then read again.
            let mut waits = Vec::new();
            let items = wanted
                .iter()
                .enumerate()
                .filter_map(|(i, w)| Some((i, w.topic.clone()?, w.partition, w.offset)))
                .collect();
            for (owner, group) in by_owner(&shard, items) {
                let parts = group.into_iter().map(|(_, t, p, o)| (t, p, o)).collect();
                let shard = shard.clone();
                let max_wait = deadline - now;
                waits.push(Box::pin(async move {
                    shard
                        .kafka(
                            owner,
                            Request::WaitForData {
                                parts,
                                max_wait,
                                read_committed,
                            },
                        )
                        .await
                }));
            }
            if waits.is_empty() {
                break results;
            }
            let _ = glommio::timer::timeout(deadline - now, async {
                select_all(waits).await;
                Ok(())
            })
            .await;
            if Instant::now() >= deadline {
                // One last read so data that arrived at the deadline is not missed.
                break fetch_round(&shard, &wanted, unknown, read_committed).await;
            }
        };

        // Assemble in request order, within the response's max_bytes.
        let mut used = 0usize;
        let mut budget = MAX_INFLATED_BYTES;
        let mut sections = Vec::new();
        let mut results = results.into_iter();
        let mut wanted = wanted.into_iter();
        let responses = layout
            .into_iter()
            .map(|(name, id, n)| {
                let partitions = (0..n)
                    .filter_map(|_| {
                        let (w, r) = (wanted.next()?, results.next()?);
                        let limit = w.max_bytes.min(max_bytes.saturating_sub(used));
                        let records = r.records.within(limit, used == 0);
                        used += records.len();
                        super::count_error(r.error);
                        if let (Some(topic), false) = (&w.topic, records.is_empty()) {
                            let n = records.record_count();
                            crate::metrics::with(|m| {
                                m.consumed(Protocol::Kafka, topic, n, records.len() as u64)
                            });
                        }
                        // Fetch v0–3 reads the message format of before 0.11: converted
                        // here, where the fetch offset is known, leaving out the records
                        // before it as Kafka's down-conversion does.
                        let records = match version {
                            0..=3 => message_set::from_batches(
                                &records.joined(),
                                message_set::fetch_magic(version),
                                w.offset,
                                &mut budget,
                            ),
                            // Written as the log holds them (`Section`), or copied once.
                            _ => match Section::of(records.pieces()) {
                                Some(section) => {
                                    let field = section.field();
                                    sections.push(section);
                                    field
                                }
                                None => records.joined(),
                            },
                        };
                        Some(
                            PartitionData::default()
                                .with_partition_index(w.partition)
                                .with_error_code(r.error)
                                .with_high_watermark(r.high_watermark)
                                .with_last_stable_offset(r.last_stable_offset)
                                .with_log_start_offset(r.log_start_offset)
                                .with_aborted_transactions(Some(
                                    r.aborted
                                        .iter()
                                        .map(|(producer, first)| {
                                            AbortedTransaction::default()
                                                .with_producer_id(ProducerId(*producer))
                                                .with_first_offset(*first)
                                        })
                                        .collect(),
                                ))
                                .with_preferred_read_replica(BrokerId(-1))
                                .with_records(Some(records)),
                        )
                    })
                    .collect();
                FetchableTopicResponse::default()
                    .with_topic(name)
                    .with_topic_id(id)
                    .with_partitions(partitions)
            })
            .collect();
        crate::metrics::with(|m| m.fetch_latency(Protocol::Kafka, started.elapsed()));
        let response = FetchResponse::default().with_responses(responses);
        frame_passing(correlation_id, version, &response, &sections)
    })
}

/// Reads every wanted partition once, one envelope per owner shard.
async fn fetch_round(
    shard: &Rc<crate::broker::Shard>,
    wanted: &[Wanted],
    unknown: i16,
    read_committed: bool,
) -> Vec<FetchResult> {
    let mut results: Vec<FetchResult> = wanted
        .iter()
        .map(|w| FetchResult {
            error: w.refused.unwrap_or(unknown),
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            records: Default::default(),
            aborted: Vec::new(),
        })
        .collect();
    let items = wanted
        .iter()
        .enumerate()
        .filter_map(|(i, w)| Some((i, w.topic.clone()?, w.partition, (w.offset, w.max_bytes))))
        .collect();
    let request = |parts: Vec<(String, i32, (i64, usize))>| Request::Fetch {
        parts: parts
            .into_iter()
            .map(|(topic, partition, (offset, max_bytes))| FetchPart {
                topic,
                partition,
                offset,
                max_bytes,
            })
            .collect(),
        read_committed,
    };
    for (idx, reply) in ask_each_owner(shard, items, request).await {
        match reply {
            Reply::Fetch(rs) => {
                for (i, r) in idx.into_iter().zip(rs) {
                    results[i] = r;
                }
            }
            _ => {
                for i in idx {
                    results[i].error = ResponseError::NotLeaderOrFollower.code();
                }
            }
        }
    }
    results
}

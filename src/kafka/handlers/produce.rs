//! Produce (key 0), v3–v13: one record batch (magic 2) per partition, acks 0, 1 or -1;
//! zstd-compressed batches from v7 on. More than one batch for a partition is
//! INVALID_RECORD, as in Kafka (checked by the owner, with the batches' CRCs); so are
//! records without a key on a compacted topic, each named in `record_errors` (v8+).
//!
//! Stage one, awaited in request order on the connection's shard: group the partitions by
//! owner and hand each owner its share (`Shard::kafka_dispatch` — the line where work
//! crosses shards); the owner appends at once. Stage two, the returned `Pending`: wait
//! for every owner's answer (after fdatasync for acks=-1) and assemble the response in
//! request order. With acks=0 no response is sent, as Kafka does. An acks=-1 request is
//! answered within its `timeout_ms`: a partition whose owner has not answered by then gets
//! REQUEST_TIMED_OUT (as Kafka does when replication is late; its records may still be
//! written). A disk that refuses the write answers KAFKA_STORAGE_ERROR long before that.
//! ACLs: WRITE on each topic (TOPIC_AUTHORIZATION_FAILED) and, for a transactional
//! producer, on its transactional id (TRANSACTIONAL_ID_AUTHORIZATION_FAILED; transactional
//! batches in a request without a transactional id get it too), as Kafka since KIP-679 (an idempotent producer needs nothing more here: InitProducerId checks).
//! An internal topic (`__consumer_offsets`) gets INVALID_TOPIC_EXCEPTION once WRITE is
//! allowed, as Kafka answers a client.
//!
//! Transactional produce (KIP-890 part 1): before anything is appended, the transaction
//! coordinator is asked (`verify_transaction`, one `Shard::txn` per request) whether each
//! partition is in the producer's ongoing transaction; one that is not gets
//! INVALID_TXN_STATE ("Partition was not added to the transaction"), an older epoch
//! INVALID_PRODUCER_EPOCH, and a transaction still completing NOT_ENOUGH_REPLICAS (which
//! clients retry), as Kafka answers.

use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;

use super::details::authorize::{topic_denied, transactional_id_denied};
use super::details::partitions::by_owner;
use super::{count_error, frame, ready, str_bytes, Conn, Pending};
use crate::kafka::owner::{ProducePart, ProduceResult, Reply, Request};
use crate::metrics::Protocol;
use crate::security::acl::{Operation, ResourceType};
use crate::storage::batch;

/// Zstd compression (codec 4) needs Produce v7 (KIP-110): like Kafka, an older request
/// whose batch uses it gets UNSUPPORTED_COMPRESSION_TYPE for that partition.
fn zstd(records: Option<&bytes::Bytes>) -> bool {
    records
        .and_then(|r| batch::BatchHeader::parse(r))
        .is_some_and(|h| h.compression() == 4)
}

/// Whether a partition's records are a transactional batch.
fn transactional(records: Option<&bytes::Bytes>) -> bool {
    records
        .and_then(|r| batch::BatchHeader::parse(r))
        .is_some_and(|h| h.is_transactional())
}

/// The records refused within a partition's batch, as Produce v8+ reports them.
fn record_errors(errors: Vec<(i32, String)>) -> Vec<BatchIndexAndErrorMessage> {
    errors
        .into_iter()
        .map(|(i, m)| {
            BatchIndexAndErrorMessage::default()
                .with_batch_index(i)
                .with_batch_index_error_message(Some(str_bytes(m)))
        })
        .collect()
}

/// Records what was appended (and refused) in the shard's metrics.
fn count_produced(
    results: &[ProduceResult],
    counts: &[(usize, String, u64, u64)],
    started: std::time::Instant,
) {
    for r in results {
        count_error(r.error);
    }
    crate::metrics::with(|m| {
        for (i, topic, n, bytes) in counts {
            if results.get(*i).is_some_and(|r| r.error == 0) {
                m.produced(Protocol::Kafka, topic, *n, *bytes);
            }
        }
        m.publish_latency(Protocol::Kafka, started.elapsed());
    });
}

/// A produced partition: (result index, topic, partition, records).
type Work = (usize, String, i32, Option<bytes::Bytes>);

/// KIP-890 verification: keeps in `work` only the partitions of the producer's ongoing
/// transaction (the batch names the producer id and epoch); the others get their error in
/// `results`.
async fn verify_transaction(
    conn: &Rc<Conn>,
    id: &str,
    work: &mut Vec<Work>,
    results: &mut [ProduceResult],
) {
    let Some(h) = work
        .iter()
        .find_map(|(_, _, _, r)| r.as_ref().and_then(|r| batch::BatchHeader::parse(r)))
    else {
        return;
    };
    let parts = work.iter().map(|(_, t, p, _)| (t.clone(), *p)).collect();
    let request = crate::kafka::txn::Request::Verify {
        id: id.to_owned(),
        producer_id: h.producer_id,
        epoch: h.producer_epoch,
        parts,
    };
    let retry = ResponseError::NotEnoughReplicas.code();
    let verdicts: Vec<Result<(), i16>> = match conn.shard.txn(id, request).await {
        crate::kafka::txn::Reply::Verified(Ok(inside)) => inside
            .into_iter()
            .map(|i| i.then_some(()).ok_or(ResponseError::InvalidTxnState.code()))
            .collect(),
        crate::kafka::txn::Reply::Verified(Err(e)) => {
            use crate::kafka::txn::state::TxnError;
            let code = match e {
                TxnError::ProducerFenced => ResponseError::InvalidProducerEpoch.code(),
                TxnError::InvalidProducerIdMapping => {
                    ResponseError::InvalidProducerIdMapping.code()
                }
                TxnError::InvalidTxnState => ResponseError::InvalidTxnState.code(),
                _ => retry,
            };
            vec![Err(code); work.len()]
        }
        _ => vec![Err(retry); work.len()],
    };
    let mut verdicts = verdicts.into_iter();
    work.retain(|(i, _, _, _)| match verdicts.next().unwrap_or(Err(retry)) {
        Ok(()) => true,
        Err(code) => {
            results[*i].error = code;
            if code == ResponseError::InvalidTxnState.code() {
                results[*i].message = Some("Partition was not added to the transaction".into());
            }
            false
        }
    });
}

pub async fn handle(
    conn: &Rc<Conn>,
    req: ProduceRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    let shard = &conn.shard;
    let started = std::time::Instant::now();
    let acks = req.acks;
    // acks=all is answered within the request's timeout_ms whatever the disk does.
    let limit = (acks == -1 && req.timeout_ms > 0)
        .then(|| std::time::Duration::from_millis(req.timeout_ms as u64));
    let state = shard.catalog.current();
    // Every partition of the request, in order: (topic label, topic id, partition).
    let mut layout: Vec<(kafka_protocol::messages::TopicName, uuid::Uuid, Vec<i32>)> = Vec::new();
    let mut results: Vec<ProduceResult> = Vec::new();
    let mut work = Vec::new();
    // (result index, topic, records, bytes) for the metrics once the answers are in.
    let mut counts = Vec::new();
    let bad_acks = !(-1..=1).contains(&acks);
    // As Kafka: a transactional producer needs WRITE on its transactional id (and
    // transactional records without one are refused the same way), and every producer
    // WRITE on each topic (TOPIC_AUTHORIZATION_FAILED, before existence is told).
    let txn_denied = match req.transactional_id.as_ref() {
        Some(t) => !conn.authorize(Operation::Write, ResourceType::TransactionalId, t),
        None => req
            .topic_data
            .iter()
            .flat_map(|t| &t.partition_data)
            .any(|p| transactional(p.records.as_ref())),
    };
    for topic in req.topic_data {
        // v13 names topics by id.
        let name = if version >= 13 {
            state
                .topic_by_id(topic.topic_id.as_bytes())
                .map(|t| t.name.clone())
        } else {
            Some(topic.name.to_string())
        };
        let denied = name.as_ref().is_some_and(|n| {
            !txn_denied && !conn.authorize(Operation::Write, ResourceType::Topic, n)
        });
        let mut parts = Vec::new();
        for p in topic.partition_data {
            let i = results.len();
            parts.push(p.index);
            let mut r = ProduceResult {
                error: 0,
                base_offset: -1,
                log_append_time: -1,
                log_start_offset: -1,
                message: None,
                record_errors: Vec::new(),
            };
            match &name {
                _ if txn_denied => r.error = transactional_id_denied(),
                _ if bad_acks => r.error = ResponseError::InvalidRequiredAcks.code(),
                Some(_) if denied => r.error = topic_denied(),
                None => r.error = ResponseError::UnknownTopicId.code(),
                // Kafka's ReplicaManager: "Cannot append to internal topic".
                Some(n) if crate::kafka::offsets_topic::is_internal(n) => {
                    r.error = ResponseError::InvalidTopicException.code();
                    r.message = Some(format!("Cannot append to internal topic {n}"));
                }
                Some(_) if version < 7 && zstd(p.records.as_ref()) => {
                    r.error = ResponseError::UnsupportedCompressionType.code();
                    r.message = Some(format!(
                        "Produce requests with version {version} are not allowed to use ZStandard compression"
                    ));
                }
                Some(n) => {
                    let (count, bytes) = p
                        .records
                        .as_ref()
                        .map_or((0, 0), |r| (batch::record_count(r), r.len() as u64));
                    counts.push((i, n.clone(), count, bytes));
                    work.push((i, n.clone(), p.index, p.records))
                }
            }
            results.push(r);
        }
        layout.push((topic.name, topic.topic_id, parts));
    }
    if let (Some(id), false) = (req.transactional_id.as_deref(), txn_denied) {
        verify_transaction(conn, id, &mut work, &mut results).await;
    }
    // Stage one: one envelope per owner shard, sent in request order.
    let mut pending = Vec::new();
    let groups = by_owner(shard, work);
    let records = groups.iter().flat_map(|(_, g)| g);
    let bytes = records
        .map(|(_, _, _, r)| r.as_ref().map_or(0, |r| r.len()))
        .sum();
    conn.follow
        .saw(groups.iter().map(|(owner, _)| *owner), bytes);
    for (owner, group) in groups {
        let (idx, parts): (Vec<usize>, Vec<ProducePart>) = group
            .into_iter()
            .map(|(i, topic, partition, records)| {
                (
                    i,
                    ProducePart {
                        topic,
                        partition,
                        records,
                    },
                )
            })
            .unzip();
        let done = shard
            .kafka_dispatch(owner, Request::Produce { acks, parts })
            .await;
        pending.push((idx, done));
    }
    if acks == 0 {
        // No response; still let the appends finish in the background of the owners.
        for (_, done) in pending {
            glommio::spawn_local(done).detach();
        }
        count_produced(&results, &counts, started);
        return ready(None);
    }
    Box::pin(async move {
        let (idx, waits): (Vec<Vec<usize>>, Vec<_>) = pending.into_iter().unzip();
        let waits = waits.into_iter().map(|w| async move {
            match limit {
                Some(limit) => glommio::timer::timeout(limit, async { Ok(w.await) })
                    .await
                    .ok(),
                None => Some(w.await),
            }
        });
        for (idx, reply) in idx.into_iter().zip(join_all(waits).await) {
            match reply {
                None => {
                    for i in idx {
                        results[i].error = ResponseError::RequestTimedOut.code();
                        results[i].message =
                            Some("not durable within the request's timeout_ms".into());
                    }
                }
                Some(Reply::Produce(rs)) => {
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
        count_produced(&results, &counts, started);
        let mut results = results.into_iter();
        let responses = layout
            .into_iter()
            .map(|(name, id, parts)| {
                let partitions = parts
                    .into_iter()
                    .filter_map(|p| {
                        let r = results.next()?;
                        Some(
                            PartitionProduceResponse::default()
                                .with_index(p)
                                .with_error_code(r.error)
                                .with_base_offset(r.base_offset)
                                .with_log_append_time_ms(r.log_append_time)
                                .with_log_start_offset(r.log_start_offset)
                                .with_error_message(r.message.map(str_bytes))
                                .with_record_errors(record_errors(r.record_errors)),
                        )
                    })
                    .collect();
                TopicProduceResponse::default()
                    .with_name(name)
                    .with_topic_id(id)
                    .with_partition_responses(partitions)
            })
            .collect();
        frame(
            correlation_id,
            version,
            &ProduceResponse::default().with_responses(responses),
        )
    })
}

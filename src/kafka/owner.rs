//! Kafka partition work that runs on the partition's owner shard: append, read, offset
//! lookups and long-poll waits.
//!
//! Reached only through `Shard::kafka_dispatch` / `Shard::kafka`, Kafka's "ask the owner"
//! calls defined here (directly when the owner is the caller's shard, else as one
//! cross-shard call per owner per client request, `Core::dispatch_on`). `start`
//! does the synchronous part at once — appends happen in the order requests arrive — and
//! returns a future for the rest (waiting for fdatasync, disk reads).
//!
//! Transaction markers (`Shard::write_txn_markers`, called by the transaction
//! coordinator) are control batches appended here like produced batches, and answered
//! once fdatasync'ed. They pass the free-space watermark: a marker is a few dozen bytes
//! and it is what lets read_committed consumers move on.
//!
//! Produce below the free-space watermark (`storage.min_free_bytes`) is refused with
//! KAFKA_STORAGE_ERROR before anything is appended; a write the disk refuses later fails
//! its acks=all producers with the same code (see `storage`'s flusher).

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{join_all, LocalBoxFuture};
use kafka_protocol::ResponseError;

use crate::broker::Shard;
use crate::catalog;
use crate::kafka::handlers::details::partitions::ask_owners;
use crate::storage::batch::{self, BatchError, MarkerRecord};
use crate::storage::log::{self as plog, LogError};
use crate::storage::LogRef;
use crate::util::notify::Listener;

pub struct ProducePart {
    pub topic: String,
    pub partition: i32,
    pub records: Option<Bytes>,
}

#[derive(Debug, Clone, Default)]
pub struct ProduceResult {
    pub error: i16,
    pub base_offset: i64,
    pub log_append_time: i64,
    pub log_start_offset: i64,
    pub message: Option<String>,
    /// Produce v8+: the records refused, by index within the batch, and why.
    pub record_errors: Vec<(i32, String)>,
}

pub struct FetchPart {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub max_bytes: usize,
}

#[derive(Debug, Clone, Default)]
pub struct FetchResult {
    pub error: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub records: batch::Batches,
    /// read_committed: (producer id, first offset) of every aborted transaction that
    /// overlaps `records`.
    pub aborted: Vec<(i64, i64)>,
}

/// An end-transaction marker the transaction coordinator writes to every partition of a
/// transaction (Kafka's WriteTxnMarkers entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnMarker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// COMMIT rather than ABORT.
    pub commit: bool,
    pub coordinator_epoch: i32,
}

pub struct OffsetQuery {
    pub topic: String,
    pub partition: i32,
    pub timestamp: i64,
    /// ListOffsets v0: how many offsets to list (`OffsetAnswer::old_style`).
    pub max_num_offsets: Option<i32>,
}

#[derive(Debug, Clone, Default)]
pub struct OffsetAnswer {
    pub error: i16,
    pub offset: i64,
    pub timestamp: i64,
    /// ListOffsets v0's `old_style_offsets` (`Log::old_style_offsets`).
    pub old_style: Vec<i64>,
}

pub enum Request {
    Produce {
        acks: i16,
        parts: Vec<ProducePart>,
    },
    /// Reads each part; `read_committed` (READ_COMMITTED isolation) reads only below the
    /// last stable offset and lists the aborted transactions the records overlap.
    Fetch {
        parts: Vec<FetchPart>,
        read_committed: bool,
    },
    /// `read_committed`: LATEST is the last stable offset and lookups find nothing at or
    /// past it.
    ListOffsets {
        parts: Vec<OffsetQuery>,
        read_committed: bool,
    },
    /// Moves log start offsets forward (DeleteRecords); offset -1 means the high watermark.
    DeleteRecords {
        parts: Vec<(String, i32, i64)>,
    },
    /// Size, high watermark and producer state of each partition (None: every partition
    /// this shard owns).
    Describe {
        parts: Option<Vec<(String, i32)>>,
    },
    /// Appends `marker` to each partition and answers once each is durable.
    WriteTxnMarkers {
        marker: TxnMarker,
        parts: Vec<(String, i32)>,
    },
    /// Resolves when any partition has data at or past its offset (`read_committed`: below
    /// its last stable offset, so a marker that moves it wakes the wait), or after
    /// `max_wait`.
    WaitForData {
        parts: Vec<(String, i32, i64)>,
        max_wait: Duration,
        read_committed: bool,
    },
}

pub enum Reply {
    Produce(Vec<ProduceResult>),
    Fetch(Vec<FetchResult>),
    ListOffsets(Vec<OffsetAnswer>),
    DataArrived,
    /// (low watermark, error) per partition.
    DeleteRecords(Vec<(i64, i16)>),
    Describe(Vec<PartitionInfo>),
    /// The error code of each marker's partition, in request order.
    TxnMarkers(Vec<i16>),
    /// The owner shard could not be reached (stopping).
    Unavailable,
}

/// What DescribeLogDirs, OffsetForLeaderEpoch and DescribeProducers need of a partition.
#[derive(Debug, Clone, Default)]
pub struct PartitionInfo {
    pub topic: String,
    pub partition: i32,
    pub error: i16,
    pub size: u64,
    pub log_end_offset: i64,
    /// (producer id, epoch, last sequence, last timestamp)
    pub producers: Vec<(i64, i16, i32, i64)>,
    /// For each of `producers`: the coordinator epoch of its last marker (-1: none) and
    /// the offset its ongoing transaction began at (-1: none).
    pub producer_txns: Vec<(i32, i64)>,
}

/// Special ListOffsets timestamps.
pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;
pub const MAX_TIMESTAMP: i64 = -3;

/// The partition's log on this shard, if the catalog knows the partition.
fn log_for(shard: &Shard, topic: &str, partition: i32) -> Option<LogRef> {
    let state = shard.catalog.current();
    let t = state.topic(topic)?;
    if partition < 0 || partition >= t.partitions {
        return None;
    }
    if let Some(l) = shard.storage.get(topic, partition) {
        return Some(l);
    }
    let settings = catalog::log_settings(&shard.config, &state, t);
    Some(shard.storage.get_or_create(topic, partition, &settings))
}

fn unknown() -> i16 {
    ResponseError::UnknownTopicOrPartition.code()
}

fn log_error_code(e: &LogError) -> i16 {
    match e {
        LogError::MessageTooLarge { .. } => ResponseError::MessageTooLarge.code(),
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        LogError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber.code(),
        LogError::InvalidProducerEpoch(_) => ResponseError::InvalidProducerEpoch.code(),
        LogError::CoordinatorFenced(_) => ResponseError::TransactionCoordinatorFenced.code(),
        LogError::Io(_) => ResponseError::KafkaStorageError.code(),
    }
}

impl Shard {
    /// Asks partition work of `owner`, locally or on its shard.
    pub async fn kafka(self: &Rc<Self>, owner: usize, req: Request) -> Reply {
        self.kafka_dispatch(owner, req).await.await
    }

    /// Starts partition work on `owner` and returns its completion; the synchronous part
    /// (e.g. the append of a produce) has happened, in call order, when this resolves.
    pub async fn kafka_dispatch(
        self: &Rc<Self>,
        owner: usize,
        req: Request,
    ) -> LocalBoxFuture<'static, Reply> {
        if owner == self.id {
            return start(self, req);
        }
        let done = self
            .core
            .dispatch_on::<Shard, _, _, _>(owner, move |shard: &Rc<Shard>| start(shard, req))
            .await;
        Box::pin(async move { done.await.unwrap_or(Reply::Unavailable) })
    }

    /// Appends `marker` as a control batch to each partition through its owner shard (one
    /// cross-shard call per owner, as `kafka_dispatch` does) and waits until each is
    /// durable (fdatasync). Returns, in `parts` order, each partition's error code: 0,
    /// UNKNOWN_TOPIC_OR_PARTITION for a partition that no longer exists (the coordinator
    /// treats that as done), KAFKA_STORAGE_ERROR when the disk refuses,
    /// INVALID_PRODUCER_EPOCH / TRANSACTION_COORDINATOR_FENCED for a marker older than
    /// the partition's producer state, NOT_LEADER_OR_FOLLOWER when the owner shard is
    /// stopping (retriable).
    pub async fn write_txn_markers(
        self: &Rc<Self>,
        marker: TxnMarker,
        parts: Vec<(String, i32)>,
    ) -> Vec<i16> {
        let items = parts
            .into_iter()
            .enumerate()
            .map(|(i, (topic, partition))| (i, topic, partition, ()))
            .collect();
        ask_owners(
            self,
            items,
            ResponseError::NotLeaderOrFollower.code(),
            |parts| Request::WriteTxnMarkers {
                marker,
                parts: parts.into_iter().map(|(t, p, ())| (t, p)).collect(),
            },
            |reply| match reply {
                Reply::TxnMarkers(codes) => Some(codes),
                _ => None,
            },
        )
        .await
    }
}

/// Runs the synchronous part of `req` now and returns the rest.
pub fn start(shard: &Rc<Shard>, req: Request) -> LocalBoxFuture<'static, Reply> {
    match req {
        Request::Produce { acks, parts } => produce(shard, acks, parts),
        Request::Fetch {
            parts,
            read_committed,
        } => {
            let shard = shard.clone();
            Box::pin(async move { Reply::Fetch(fetch(&shard, parts, read_committed).await) })
        }
        Request::ListOffsets {
            parts,
            read_committed,
        } => {
            let shard = shard.clone();
            Box::pin(async move {
                Reply::ListOffsets(list_offsets(&shard, parts, read_committed).await)
            })
        }
        Request::DeleteRecords { parts } => {
            let shard = shard.clone();
            Box::pin(async move { Reply::DeleteRecords(delete_records(&shard, parts).await) })
        }
        Request::Describe { parts } => {
            let parts = parts.unwrap_or_else(|| {
                shard
                    .storage
                    .partitions()
                    .iter()
                    .map(|l| {
                        let l = l.borrow();
                        (l.topic.clone(), l.partition)
                    })
                    .collect()
            });
            let infos = parts
                .into_iter()
                .map(
                    |(topic, partition)| match log_for(shard, &topic, partition) {
                        Some(log) => {
                            let l = log.borrow();
                            let producers = l.producers.describe();
                            let producer_txns = producers
                                .iter()
                                .map(|(id, ..)| {
                                    (
                                        l.producers.coordinator_epoch(*id),
                                        l.producers.ongoing_txn(*id).unwrap_or(-1),
                                    )
                                })
                                .collect();
                            PartitionInfo {
                                topic,
                                partition,
                                error: 0,
                                size: l.size_bytes(),
                                log_end_offset: l.next_offset,
                                producers,
                                producer_txns,
                            }
                        }
                        None => PartitionInfo {
                            topic,
                            partition,
                            error: unknown(),
                            log_end_offset: -1,
                            ..Default::default()
                        },
                    },
                )
                .collect();
            Box::pin(async move { Reply::Describe(infos) })
        }
        Request::WriteTxnMarkers { marker, parts } => write_markers(shard, marker, parts),
        Request::WaitForData {
            parts,
            max_wait,
            read_committed,
        } => {
            let listener = Listener::new();
            let mut ready = false;
            for (topic, partition, offset) in &parts {
                if let Some(log) = log_for(shard, topic, *partition) {
                    let l = log.borrow();
                    let end = if read_committed {
                        l.last_stable_offset()
                    } else {
                        l.next_offset
                    };
                    ready |= end > *offset || *offset < l.log_start_offset;
                    listener.listen(&l.appended);
                }
            }
            if ready {
                return Box::pin(async { Reply::DataArrived });
            }
            Box::pin(async move {
                let _ = glommio::timer::timeout(max_wait, async {
                    listener.await;
                    Ok(())
                })
                .await;
                Reply::DataArrived
            })
        }
    }
}

/// A produce refused: error code, message, and the records at fault (index, why).
type Refusal = (i16, String, Vec<(i32, String)>);

/// A compacted topic refuses records without a key, as Kafka's LogValidator does: the
/// partition gets INVALID_RECORD, and every keyless record is named by its index in the
/// batch (what Produce v8+ returns as `record_errors`).
fn check_keys(
    log: &LogRef,
    topic: &str,
    partition: i32,
    batches: &[(batch::BatchHeader, Bytes)],
) -> Result<(), Refusal> {
    if !log.borrow().settings.compact_policy {
        return Ok(());
    }
    let mut errors = Vec::new();
    for (h, b) in batches {
        let keyless = batch::keyless_records(b, h)
            .map_err(|e| (ResponseError::CorruptMessage.code(), e, Vec::new()))?;
        errors.extend(keyless.into_iter().map(|i| {
            (
                i,
                format!(
                    "Compacted topic cannot accept message without key in topic partition {topic}-{partition}."
                ),
            )
        }));
    }
    if errors.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = errors
        .iter()
        .take(3)
        .map(|(i, m)| format!("RecordError(batchIndex={i}, message='{m}')"))
        .collect();
    let message = format!(
        "One or more records have been rejected due to {} record errors in total, and only showing the first three errors at most: [{}]",
        errors.len(),
        shown.join(", ")
    );
    Err((ResponseError::InvalidRecord.code(), message, errors))
}

/// Appends every part now; with acks=all the returned future waits for fdatasync.
fn produce(
    shard: &Rc<Shard>,
    acks: i16,
    parts: Vec<ProducePart>,
) -> LocalBoxFuture<'static, Reply> {
    let mut results = Vec::with_capacity(parts.len());
    let mut durable = Vec::new();
    for (i, part) in parts.into_iter().enumerate() {
        let Some(log) = log_for(shard, &part.topic, part.partition) else {
            results.push(ProduceResult {
                error: unknown(),
                base_offset: -1,
                log_append_time: -1,
                log_start_offset: -1,
                message: None,
                record_errors: Vec::new(),
            });
            continue;
        };
        let outcome = match part.records.as_ref().filter(|r| !r.is_empty()) {
            None => Err((
                ResponseError::CorruptMessage.code(),
                "produce request without records".to_owned(),
            )),
            Some(records) => batch::split(records)
                .map_err(|e| {
                    let code = match e {
                        BatchError::Magic(_) => ResponseError::UnsupportedForMessageFormat.code(),
                        BatchError::Count(..) => ResponseError::InvalidRecord.code(),
                        _ => ResponseError::CorruptMessage.code(),
                    };
                    (code, e.to_string())
                })
                .and_then(|batches| {
                    // Produce v3+ carries magic-2 batches, one per partition (Kafka's
                    // LogValidator refuses more with INVALID_RECORD).
                    if batches.len() > 1 {
                        Err((
                            ResponseError::InvalidRecord.code(),
                            "Compressed outer record has more than one batch".to_owned(),
                        ))
                    } else {
                        Ok(batches)
                    }
                }),
        };
        let mut record_errors = Vec::new();
        let outcome = outcome.and_then(|batches| {
            match check_keys(&log, &part.topic, part.partition, &batches) {
                Ok(()) => Ok(batches),
                Err((code, message, errors)) => {
                    record_errors = errors;
                    Err((code, message))
                }
            }
        });
        let result = match outcome {
            Err((code, message)) => {
                log::debug!(
                    "produce to {}-{} refused: {message}",
                    part.topic,
                    part.partition
                );
                ProduceResult {
                    error: code,
                    base_offset: -1,
                    log_append_time: -1,
                    log_start_offset: -1,
                    message: Some(message),
                    record_errors: std::mem::take(&mut record_errors),
                }
            }
            Ok(_) if shard.storage.disk.refuse("Kafka produce") => ProduceResult {
                error: ResponseError::KafkaStorageError.code(),
                base_offset: -1,
                log_append_time: -1,
                log_start_offset: -1,
                message: Some(format!(
                    "disk almost full: {} bytes free, below storage.min_free_bytes {}",
                    shard.storage.disk.free(),
                    shard.storage.disk.min_free()
                )),
                record_errors: Vec::new(),
            },
            Ok(batches) => {
                let appended = log.borrow_mut().append(&batches);
                match appended {
                    Ok(a) => {
                        if !a.duplicate {
                            shard.storage.mark_dirty(&log);
                        }
                        if acks == -1 {
                            durable.push((i, shard.storage.wait_durable(&log, a.last_offset + 1)));
                        }
                        ProduceResult {
                            error: 0,
                            base_offset: a.base_offset,
                            log_append_time: a.log_append_time,
                            log_start_offset: log.borrow().log_start_offset,
                            message: None,
                            record_errors: Vec::new(),
                        }
                    }
                    Err(e) => ProduceResult {
                        error: log_error_code(&e),
                        base_offset: -1,
                        log_append_time: -1,
                        log_start_offset: -1,
                        message: Some(e.to_string()),
                        record_errors: Vec::new(),
                    },
                }
            }
        };
        results.push(result);
    }
    if durable.is_empty() {
        return Box::pin(async move { Reply::Produce(results) });
    }
    Box::pin(async move {
        let (idx, waits): (Vec<usize>, Vec<_>) = durable.into_iter().unzip();
        for (i, r) in idx.into_iter().zip(join_all(waits).await) {
            if let Err(e) = r {
                results[i].error = ResponseError::KafkaStorageError.code();
                results[i].message = Some(e);
            }
        }
        Reply::Produce(results)
    })
}

/// Appends the marker to every part now; the returned future waits for fdatasync.
fn write_markers(
    shard: &Rc<Shard>,
    marker: TxnMarker,
    parts: Vec<(String, i32)>,
) -> LocalBoxFuture<'static, Reply> {
    let record = MarkerRecord {
        commit: marker.commit,
        coordinator_epoch: marker.coordinator_epoch,
    };
    let mut codes = Vec::with_capacity(parts.len());
    let mut durable = Vec::new();
    for (i, (topic, partition)) in parts.into_iter().enumerate() {
        let Some(log) = log_for(shard, &topic, partition) else {
            codes.push(unknown());
            continue;
        };
        let appended =
            log.borrow_mut()
                .append_marker(marker.producer_id, marker.producer_epoch, record);
        match appended {
            Ok(a) => {
                shard.storage.mark_dirty(&log);
                durable.push((i, shard.storage.wait_durable(&log, a.last_offset + 1)));
                codes.push(0);
            }
            Err(e) => {
                log::debug!(
                    "marker for producer {} on {topic}-{partition} refused: {e}",
                    marker.producer_id
                );
                codes.push(log_error_code(&e));
            }
        }
    }
    Box::pin(async move {
        let (idx, waits): (Vec<usize>, Vec<_>) = durable.into_iter().unzip();
        for (i, r) in idx.into_iter().zip(join_all(waits).await) {
            if let Err(e) = r {
                log::warn!("transaction marker not written: {e}");
                codes[i] = ResponseError::KafkaStorageError.code();
            }
        }
        Reply::TxnMarkers(codes)
    })
}

async fn fetch(shard: &Rc<Shard>, parts: Vec<FetchPart>, read_committed: bool) -> Vec<FetchResult> {
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        let Some(log) = log_for(shard, &part.topic, part.partition) else {
            out.push(FetchResult {
                error: unknown(),
                high_watermark: -1,
                last_stable_offset: -1,
                log_start_offset: -1,
                ..Default::default()
            });
            continue;
        };
        let read = plog::read(&log, part.offset, part.max_bytes).await;
        let l = log.borrow();
        let lso = l.last_stable_offset();
        let mut result = FetchResult {
            error: 0,
            high_watermark: l.high_watermark(),
            last_stable_offset: lso,
            log_start_offset: l.log_start_offset,
            ..Default::default()
        };
        match read {
            Ok(records) if read_committed => {
                // Only what is stable; the batches read may reach past the LSO.
                let (records, end) = records.before(lso);
                if end > part.offset {
                    result.aborted = l.aborted_txns(part.offset, end);
                }
                result.records = records;
            }
            Ok(records) => result.records = records,
            Err(e) => result.error = log_error_code(&e),
        }
        out.push(result);
    }
    out
}

async fn list_offsets(
    shard: &Rc<Shard>,
    parts: Vec<OffsetQuery>,
    read_committed: bool,
) -> Vec<OffsetAnswer> {
    let mut out = Vec::with_capacity(parts.len());
    for q in parts {
        let Some(log) = log_for(shard, &q.topic, q.partition) else {
            out.push(OffsetAnswer {
                error: unknown(),
                offset: -1,
                timestamp: -1,
                old_style: Vec::new(),
            });
            continue;
        };
        if let Some(max) = q.max_num_offsets {
            let old_style = log
                .borrow()
                .old_style_offsets(q.timestamp, max, crate::util::now_ms());
            out.push(OffsetAnswer {
                error: 0,
                offset: old_style.first().copied().unwrap_or(-1),
                timestamp: -1,
                old_style,
            });
            continue;
        }
        // As Kafka: a read_committed client sees offsets below the LSO only.
        let (start, end) = {
            let l = log.borrow();
            let end = if read_committed {
                l.last_stable_offset()
            } else {
                l.high_watermark()
            };
            (l.log_start_offset, end)
        };
        let visible = |(offset, ts): (i64, i64)| {
            if offset < end {
                (offset, ts)
            } else {
                (-1, -1)
            }
        };
        let answer = match q.timestamp {
            LATEST => Ok((end, -1)),
            EARLIEST => Ok((start, -1)),
            MAX_TIMESTAMP => plog::max_timestamp_offset(&log).await.map(visible),
            ts => plog::offset_for_timestamp(&log, ts)
                .await
                .map(|found| visible(found.unwrap_or((-1, -1)))),
        };
        out.push(match answer {
            Ok((offset, timestamp)) => OffsetAnswer {
                error: 0,
                offset,
                timestamp,
                old_style: Vec::new(),
            },
            Err(e) => OffsetAnswer {
                error: log_error_code(&e),
                offset: -1,
                timestamp: -1,
                old_style: Vec::new(),
            },
        });
    }
    out
}

async fn delete_records(shard: &Rc<Shard>, parts: Vec<(String, i32, i64)>) -> Vec<(i64, i16)> {
    let mut out = Vec::with_capacity(parts.len());
    for (topic, partition, offset) in parts {
        let Some(log) = log_for(shard, &topic, partition) else {
            out.push((-1, unknown()));
            continue;
        };
        let moved = log.borrow_mut().delete_records_before(offset);
        match moved {
            Ok(low) => {
                let (dir, start) = {
                    let l = log.borrow();
                    (l.dir().to_owned(), l.log_start_offset)
                };
                if let Err(e) = plog::save_log_start(&dir, start).await {
                    log::error!("saving log start offset of {topic}-{partition}: {e}");
                    out.push((low, ResponseError::KafkaStorageError.code()));
                } else {
                    out.push((low, 0));
                }
            }
            Err(e) => out.push((-1, log_error_code(&e))),
        }
    }
    out
}

//! `PartitionLog`: one Kafka partition's segmented log on its owner shard — append, read,
//! offsets, the tail cache, roll and retention, recovery, and the partition's side of
//! transactions: markers (`append_marker`), the last stable offset, the aborted
//! transactions a read_committed fetch needs (`aborted_txns`, from each segment's index).
//!
//! Only the owner shard holds a `PartitionLog` (`Rc<RefCell<…>>`); other shards reach it
//! through the mesh. No method keeps a borrow across an `.await`: async reads clone the
//! segment's file handle, drop the borrow, then read. Disk writes and syncs belong to the
//! shard's `Flusher` (see `flusher.rs`); appends only queue bytes and wake it.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};

use super::batch::{self, BatchHeader, MarkerRecord};
use super::producers::{MarkerRefusal, ProducerStates, Verdict};
use super::segment::Segment;
use super::txn_index::AbortedTxn;
use super::LogSettings;
use crate::util::notify::Notify;

/// Errors of a partition log, mapped by the Kafka layer to client error codes.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("batch of {size} bytes exceeds max.message.bytes {max}")]
    MessageTooLarge { size: usize, max: i64 },
    #[error("offset {offset} out of range [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    #[error("batch sequence {got} does not follow the producer's last sequence")]
    OutOfOrderSequence { got: i32 },
    #[error("producer epoch {0} is older than the current one")]
    InvalidProducerEpoch(i16),
    #[error("coordinator epoch {0} is older than that of the last marker")]
    CoordinatorFenced(i32),
    #[error("storage error: {0}")]
    Io(#[from] std::io::Error),
}

/// A recent batch kept in memory for tailing consumers.
struct CachedBatch {
    base_offset: i64,
    last_offset: i64,
    bytes: Bytes,
}

/// What `PartitionLog::rewind` undid, for the flusher to finish on disk.
pub struct Rewind {
    /// The log's end now: offsets from here on are handed out again.
    pub next_offset: i64,
    /// Records dropped (not written, or not synced).
    pub dropped_records: i64,
    /// Files to cut to their good length (whatever a failed write left past it goes).
    pub truncate: Vec<(Rc<glommio::io::DmaFile>, u64)>,
    /// Files of segments begun after the cut point: removed.
    pub remove: Vec<PathBuf>,
    /// The segment now last, when its partial block must be read back from the file.
    pub reload_partial: Option<i64>,
}

/// Offsets assigned to an append.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The broker's timestamp when the topic uses LogAppendTime, else -1.
    pub log_append_time: i64,
    /// A retried batch already in the log: nothing was appended.
    pub duplicate: bool,
}

pub struct PartitionLog {
    pub topic: String,
    pub partition: i32,
    dir: PathBuf,
    pub settings: LogSettings,
    segments: BTreeMap<i64, Segment>,
    pub log_start_offset: i64,
    pub next_offset: i64,
    /// Everything below this offset has been written to the segment files.
    pub written_offset: i64,
    /// Everything below this offset has been fdatasync'ed.
    pub durable_offset: i64,
    tail: VecDeque<CachedBatch>,
    tail_bytes: usize,
    tail_budget: usize,
    /// Messages appended since the last sync (for `flush.messages`).
    pub unsynced_messages: i64,
    pub last_sync_ms: i64,
    /// Fired on every append; fetch long polls listen here.
    pub appended: Rc<Notify>,
    pub deleted: bool,
    /// Idempotent producers' recent batches.
    pub producers: ProducerStates,
}

const LOG_START_FILE: &str = "log-start-offset";

/// The log start offset saved by DeleteRecords, if any.
fn load_log_start(dir: &Path) -> Option<i64> {
    std::fs::read_to_string(dir.join(LOG_START_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Persists a log start offset moved by DeleteRecords (temp file, fsync, rename).
pub async fn save_log_start(dir: &Path, offset: i64) -> std::io::Result<()> {
    let dir = dir.to_owned();
    glommio::executor()
        .spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join("log-start-offset.tmp");
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, format!("{offset}\n").as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(LOG_START_FILE))
        })
        .await
}

pub use crate::util::now_ms;

impl PartitionLog {
    /// A new, empty partition; its directory is created on the first write.
    pub fn create(
        dir: PathBuf,
        topic: &str,
        partition: i32,
        settings: LogSettings,
        tail_budget: usize,
    ) -> PartitionLog {
        let mut segments = BTreeMap::new();
        segments.insert(0, Segment::new(&dir, 0, now_ms()));
        PartitionLog {
            topic: topic.to_owned(),
            partition,
            dir,
            settings,
            segments,
            log_start_offset: 0,
            next_offset: 0,
            written_offset: 0,
            durable_offset: 0,
            tail: VecDeque::new(),
            tail_bytes: 0,
            tail_budget,
            unsynced_messages: 0,
            last_sync_ms: now_ms(),
            appended: Rc::new(Notify::new()),
            deleted: false,
            producers: ProducerStates::default(),
        }
    }

    /// Opens a partition directory, recovering its segments: each segment is scanned from
    /// its last index entry and a torn tail is truncated with a log line.
    pub async fn open(
        dir: PathBuf,
        topic: &str,
        partition: i32,
        settings: LogSettings,
        tail_budget: usize,
    ) -> Result<PartitionLog, LogError> {
        // A compaction interrupted by a stop leaves its unfinished copy: the original stands.
        for e in std::fs::read_dir(&dir)?.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".cleaned"))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let mut bases: Vec<i64> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse::<i64>().ok()
            })
            .collect();
        bases.sort_unstable();
        let mut log = PartitionLog::create(dir.clone(), topic, partition, settings, tail_budget);
        if bases.is_empty() {
            return Ok(log);
        }
        log.segments.clear();
        let now = now_ms();
        let interval = log.settings.index_interval_bytes as u64;
        // Producer and transaction state: the last snapshot (saved when a segment is
        // sealed and at a clean stop), then every batch after it, markers included.
        let (covered, producers) =
            ProducerStates::load(&dir).unwrap_or((0, ProducerStates::default()));
        log.producers = producers;
        for (i, base) in bases.iter().enumerate() {
            let mut seg = Segment::load(&dir, *base, now).await?;
            let had_index = seg.load_index_files();
            if !seg.load_txn_index() {
                log::warn!("{topic}-{partition}: damaged aborted-transaction index of segment {base}: rebuilding it");
                seg.aborted.clear();
                seg.index.clear();
            }
            // A segment that may hold batches past the snapshot is read from there on.
            let next_base = bases.get(i + 1).copied().unwrap_or(i64::MAX);
            let from = (next_base > covered).then_some(covered);
            let states = &mut log.producers;
            let mut aborted = Vec::new();
            let scan = seg
                .scan(interval, from, &mut |h, bytes| {
                    if h.base_offset < covered {
                        return;
                    }
                    states.record(h);
                    let Some(m) = batch::marker_of(bytes, h) else {
                        return;
                    };
                    let at = h.base_offset;
                    let ended =
                        states.end_txn(h.producer_id, h.producer_epoch, m.coordinator_epoch, at);
                    if let (Some(first), false) = (ended, m.commit) {
                        aborted.push(AbortedTxn {
                            producer_id: h.producer_id,
                            first_offset: first,
                            last_offset: at,
                            last_stable_offset: states
                                .first_unstable_offset()
                                .map_or(at + 1, |f| f.min(at + 1)),
                        });
                    }
                })
                .await?;
            // Markers below the snapshot are in the index file already; torn ones go.
            seg.aborted.retain(|a| a.last_offset < scan.next_offset);
            for a in aborted {
                if !seg.aborted.iter().any(|e| e.last_offset == a.last_offset) {
                    seg.aborted.push(a);
                }
            }
            seg.aborted.sort_by_key(|a| a.last_offset);
            if scan.torn_bytes > 0 {
                let is_last = i + 1 == bases.len();
                // Zero padding after the last block-aligned write is not damage.
                if let Some(file) = seg.file.clone() {
                    let tail = file
                        .read_at(scan.valid_size, scan.torn_bytes as usize)
                        .await
                        .map_err(std::io::Error::from)?;
                    if tail.iter().any(|b| *b != 0) {
                        log::warn!(
                            "{topic}-{partition}: truncating torn tail of segment {base} at byte {} ({} bytes dropped{})",
                            scan.valid_size,
                            scan.torn_bytes,
                            if is_last { "" } else { ", not the active segment" }
                        );
                        if had_index {
                            let _ = std::fs::remove_file(seg.paths()[1].clone());
                            let _ = std::fs::remove_file(seg.paths()[2].clone());
                        }
                        // The file must not name markers the cut removed.
                        if let Err(e) = seg.write_txn_index() {
                            log::warn!("{topic}-{partition}: rewriting the aborted-transaction index of segment {base}: {e}");
                        }
                    }
                    file.truncate(scan.valid_size)
                        .await
                        .map_err(std::io::Error::from)?;
                }
            }
            seg.load_partial().await?;
            log.next_offset = log.next_offset.max(scan.next_offset);
            seg.sealed = i + 1 < bases.len();
            seg.finalized = seg.sealed;
            log.segments.insert(*base, seg);
        }
        // DeleteRecords may have moved the start past the first segment's base.
        log.log_start_offset = bases[0]
            .max(load_log_start(&dir).unwrap_or(0))
            .min(log.next_offset);
        log.written_offset = log.next_offset;
        log.durable_offset = log.next_offset;
        // A snapshot may describe appends the disk never got (a kill -9 before they were
        // written): what lies past the log's end is forgotten.
        log.producers.forget_from(log.next_offset);
        log.producers.prune_ended(log.next_offset);
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn high_watermark(&self) -> i64 {
        self.next_offset
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    fn active(&mut self) -> &mut Segment {
        // A log always has at least one segment (created with it, never all deleted).
        let base = *self.segments.keys().next_back().unwrap_or(&0);
        self.segments
            .entry(base)
            .or_insert_with(|| Segment::new(&self.dir, base, now_ms()))
    }

    /// Rolls to a new segment when the active one is full or old.
    fn maybe_roll(&mut self, incoming: usize, now: i64) {
        let segment_bytes = self.settings.segment_bytes.max(1) as u64;
        let segment_ms = self.settings.segment_ms;
        let next = self.next_offset;
        let active = self.active();
        let full = active.size > 0 && active.size + incoming as u64 > segment_bytes;
        let old = active.size > 0 && segment_ms > 0 && now - active.created_ms >= segment_ms;
        if full || old {
            // The producer state as of the segment's end, saved once it is on disk.
            let snapshot = self.producers.clone();
            let active = self.active();
            active.sealed = true;
            active.roll_snapshot = Some(snapshot);
            let seg = Segment::new(&self.dir, next, now);
            self.segments.insert(next, seg);
        }
    }

    /// Appends validated batches, assigning offsets. Synchronous: the bytes are visible to
    /// readers at once and queued for the flusher.
    pub fn append(&mut self, batches: &[(BatchHeader, Bytes)]) -> Result<Appended, LogError> {
        for (h, _) in batches {
            if h.size as i64 > self.settings.max_message_bytes {
                return Err(LogError::MessageTooLarge {
                    size: h.size,
                    max: self.settings.max_message_bytes,
                });
            }
        }
        let now = now_ms();
        let lat = if self.settings.log_append_time {
            Some(now)
        } else {
            None
        };
        // Idempotence: a retried first batch is answered with its original offset.
        if let Some((h, _)) = batches.first() {
            match self.producers.check(h) {
                Verdict::Append => {}
                Verdict::Duplicate(base) => {
                    return Ok(Appended {
                        base_offset: base,
                        last_offset: base + h.last_offset_delta as i64,
                        log_append_time: -1,
                        duplicate: true,
                    })
                }
                Verdict::OutOfOrder => {
                    return Err(LogError::OutOfOrderSequence {
                        got: h.base_sequence,
                    })
                }
                Verdict::StaleEpoch => {
                    return Err(LogError::InvalidProducerEpoch(h.producer_epoch))
                }
            }
        }
        let first = self.next_offset;
        let interval = self.settings.index_interval_bytes as u64;
        for (h, bytes) in batches {
            self.maybe_roll(bytes.len(), now);
            let base = self.next_offset;
            // Like Kafka, maxTimestamp is the records' own (or the append time).
            let true_max = match lat {
                Some(_) => None,
                None => batch::create_time_max(bytes, h),
            };
            let stamped = batch::assign(bytes, base, lat, true_max);
            let mut header = *h;
            header.base_offset = base;
            if let Some(t) = lat.or(true_max) {
                header.max_timestamp = t;
            }
            self.producers.record(&header);
            self.active().push(&header, stamped.clone(), interval);
            self.next_offset = header.last_offset() + 1;
            self.unsynced_messages += h.records.max(1) as i64;
            self.tail_bytes += stamped.len();
            self.tail.push_back(CachedBatch {
                base_offset: base,
                last_offset: header.last_offset(),
                bytes: stamped,
            });
        }
        self.appended.notify();
        Ok(Appended {
            base_offset: first,
            last_offset: self.next_offset - 1,
            log_append_time: lat.unwrap_or(-1),
            duplicate: false,
        })
    }

    /// Appends a transaction marker of `producer_id` as a control batch: it ends the
    /// producer's ongoing transaction (an abort enters the aborted-transaction index of
    /// the segment it lands in) and raises the producer's epoch to `epoch`. No sequence
    /// check; a marker for a producer without an ongoing transaction is appended all the
    /// same (a coordinator retrying after a restart). Refused when `epoch` is older than
    /// the producer's (INVALID_PRODUCER_EPOCH) or the coordinator epoch older than the
    /// last marker's (TRANSACTION_COORDINATOR_FENCED), as Kafka refuses them.
    pub fn append_marker(
        &mut self,
        producer_id: i64,
        epoch: i16,
        marker: MarkerRecord,
    ) -> Result<Appended, LogError> {
        self.producers
            .check_marker(producer_id, epoch, marker.coordinator_epoch)
            .map_err(|r| match r {
                MarkerRefusal::StaleEpoch => LogError::InvalidProducerEpoch(epoch),
                MarkerRefusal::CoordinatorFenced => {
                    LogError::CoordinatorFenced(marker.coordinator_epoch)
                }
            })?;
        let bytes = batch::control_batch(producer_id, epoch, marker, now_ms())
            .map_err(|e| LogError::Io(std::io::Error::other(e)))?;
        let header = batch::validate(&bytes)
            .map_err(|e| LogError::Io(std::io::Error::other(e.to_string())))?;
        let appended = self.append(&[(header, bytes)])?;
        self.producers.prune_ended(self.durable_offset);
        let at = appended.base_offset;
        let ended = self
            .producers
            .end_txn(producer_id, epoch, marker.coordinator_epoch, at);
        if let (Some(first), false) = (ended, marker.commit) {
            let entry = AbortedTxn {
                producer_id,
                first_offset: first,
                last_offset: at,
                last_stable_offset: self.last_stable_offset(),
            };
            if let Some((_, seg)) = self.segments.range_mut(..=at).next_back() {
                seg.aborted.push(entry);
            }
        }
        Ok(appended)
    }

    /// The last stable offset: the first offset of the oldest ongoing transaction (not
    /// below the log start, as Kafka keeps it when DeleteRecords or retention pass it),
    /// else the high watermark. read_committed consumers read below it.
    pub fn last_stable_offset(&self) -> i64 {
        let hw = self.high_watermark();
        self.producers
            .first_unstable_offset()
            .map_or(hw, |first| first.max(self.log_start_offset).min(hw))
    }

    /// (producer id, first offset) of every aborted transaction that overlaps the offsets
    /// `[from, upto)`: its abort marker is at or after `from` and it began before `upto`
    /// (what a read_committed Fetch returns beside the records it reads).
    pub fn aborted_txns(&self, from: i64, upto: i64) -> Vec<(i64, i64)> {
        let start = self
            .segments
            .range(..=from)
            .next_back()
            .map_or(from, |(b, _)| *b);
        self.segments
            .range(start..)
            .flat_map(|(_, s)| s.aborted.iter())
            .filter(|a| a.last_offset >= from && a.first_offset < upto)
            .map(|a| (a.producer_id, a.first_offset))
            .collect()
    }

    /// Undoes every append past what is on disk (`to_durable`: past what is fdatasync'ed)
    /// after a write (or sync) failed: those records were never acknowledged as durable,
    /// their acks=all producers get an error, and they must not reach the file later. The
    /// next append reuses their offsets. Readers that saw them in the tail cache saw records
    /// that no longer exist (as with an unclean leader change in Kafka).
    pub fn rewind(&mut self, to_durable: bool) -> Rewind {
        let target = if to_durable {
            self.durable_offset
        } else {
            self.written_offset
        }
        .min(self.next_offset);
        let mut plan = Rewind {
            next_offset: target,
            dropped_records: self.next_offset - target,
            truncate: Vec::new(),
            remove: Vec::new(),
            reload_partial: None,
        };
        let Some(keep) = self.segments.range(..=target).next_back().map(|(b, _)| *b) else {
            return plan;
        };
        let later: Vec<i64> = self.segments.range(keep + 1..).map(|(b, _)| *b).collect();
        for base in later {
            if let Some(seg) = self.segments.remove(&base) {
                if seg.file.is_some() {
                    plan.remove.extend(seg.paths());
                }
            }
        }
        if let Some(seg) = self.segments.get_mut(&keep) {
            let bytes = if to_durable { seg.synced } else { seg.written };
            let reload = bytes != seg.written;
            seg.rewind(bytes, target);
            if let Some(f) = seg.file.clone() {
                plan.truncate.push((f, bytes));
                if reload {
                    plan.reload_partial = Some(keep);
                }
            }
        }
        self.next_offset = target;
        self.written_offset = self.written_offset.min(target);
        self.durable_offset = self.durable_offset.min(target);
        self.log_start_offset = self.log_start_offset.min(target);
        while self.tail.back().is_some_and(|b| b.last_offset >= target) {
            if let Some(b) = self.tail.pop_back() {
                self.tail_bytes -= b.bytes.len();
            }
        }
        self.producers.forget_from(target);
        self.appended.notify();
        plan
    }

    /// Drops cached batches beyond the budget, but never ones not yet on disk.
    pub fn trim_tail_cache(&mut self) {
        self.trim_tail_cache_to(self.tail_budget);
    }

    /// Bytes of batches in the tail cache.
    pub fn tail_cache_bytes(&self) -> usize {
        self.tail_bytes
    }

    /// Drops the oldest cached batches until at most `limit` bytes remain (never ones not
    /// yet on disk).
    pub fn trim_tail_cache_to(&mut self, limit: usize) {
        while self.tail_bytes > limit {
            match self.tail.front() {
                Some(front) if front.last_offset < self.written_offset => {
                    self.tail_bytes -= front.bytes.len();
                    self.tail.pop_front();
                }
                _ => break,
            }
        }
    }

    pub fn check_offset(&self, offset: i64) -> Result<(), LogError> {
        if offset < self.log_start_offset || offset > self.next_offset {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: self.log_start_offset,
                end: self.next_offset,
            });
        }
        Ok(())
    }

    /// Whole batches from the tail cache starting at `offset`, if the cache reaches back
    /// that far. At least one batch is returned even when larger than `max_bytes`.
    fn read_cached(&self, offset: i64, max_bytes: usize) -> Option<batch::Batches> {
        let front = self.tail.front()?;
        if front.base_offset > offset {
            return None;
        }
        let start = self.tail.partition_point(|b| b.last_offset < offset);
        let mut out = batch::Batches::default();
        let mut len = 0;
        for b in self.tail.iter().skip(start) {
            if len > 0 && len + b.bytes.len() > max_bytes {
                break;
            }
            len += b.bytes.len();
            out.push(b.bytes.clone());
        }
        Some(out)
    }

    /// Where on disk to read for `offset`: file, start position, and the segment's written
    /// end.
    fn disk_location(&self, offset: i64) -> Option<(Rc<glommio::io::DmaFile>, u64, u64)> {
        let (_, seg) = self.segments.range(..=offset).next_back()?;
        let seg = if offset >= seg.next_offset {
            // The offset lies past this segment (a gap): use the next one.
            self.segments.range(offset + 1..).next().map(|(_, s)| s)?
        } else {
            seg
        };
        let file = seg.file.clone()?;
        Some((file, seg.position_for(offset), seg.written))
    }

    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.values()
    }

    pub fn segments_mut(&mut self) -> impl Iterator<Item = &mut Segment> {
        self.segments.values_mut()
    }

    /// Removes segments wholly past retention (never the active one) and returns their
    /// files for deletion; moves the log start offset.
    pub fn apply_retention(&mut self, now: i64) -> Vec<PathBuf> {
        let mut doomed = Vec::new();
        let mut total: i64 = self.segments.values().map(|s| s.size as i64).sum();
        loop {
            if self.segments.len() <= 1 {
                break;
            }
            let Some((&base, seg)) = self.segments.iter().next() else {
                break;
            };
            if !seg.finalized {
                break;
            }
            let by_time = self.settings.delete_policy && self.settings.retention_ms >= 0 && {
                let newest = seg.retention_timestamp();
                newest >= 0 && now - newest > self.settings.retention_ms
            };
            let by_size = self.settings.delete_policy
                && self.settings.retention_bytes >= 0
                && total - seg.size as i64 >= self.settings.retention_bytes;
            let below_start = seg.next_offset <= self.log_start_offset;
            if !(by_time || by_size || below_start) {
                break;
            }
            total -= seg.size as i64;
            if let Some(seg) = self.segments.remove(&base) {
                doomed.extend(seg.paths());
            }
        }
        if let Some((&base, _)) = self.segments.iter().next() {
            if base > self.log_start_offset {
                self.log_start_offset = base;
                let start = base;
                while self.tail.front().is_some_and(|b| b.last_offset < start) {
                    if let Some(b) = self.tail.pop_front() {
                        self.tail_bytes -= b.bytes.len();
                    }
                }
            }
        }
        doomed
    }

    /// DeleteRecords: makes `offset` (-1: the high watermark) the new log start; returns it.
    /// Whole segments below it go at the next retention pass.
    /// ListOffsets v0's answer (Kafka's offsets "before" a time, from before 0.10.1): the
    /// points are each segment's base offset (at least the log start) with the time its file
    /// was last written, plus, when the active segment holds data, the high watermark at
    /// `now`. Latest (-1) starts from the last point, earliest (-2) from the first, a time
    /// from the last point written at or before it; then up to `max` offsets going back,
    /// highest first. Empty when no point qualifies.
    pub fn old_style_offsets(&self, timestamp: i64, max: i32, now: i64) -> Vec<i64> {
        let start = self.log_start_offset;
        let mut points: Vec<(i64, i64)> = self
            .segments
            .values()
            .map(|s| (s.base_offset.max(start), s.last_modified_ms()))
            .collect();
        if self
            .segments
            .values()
            .next_back()
            .is_some_and(|s| s.size > 0)
        {
            points.push((self.high_watermark(), now));
        }
        let from = match timestamp {
            -1 => points.len().checked_sub(1),
            -2 => (!points.is_empty()).then_some(0),
            t => points.iter().rposition(|&(_, modified)| modified <= t),
        };
        let Some(from) = from else {
            return Vec::new();
        };
        let take = usize::try_from(max).unwrap_or(0);
        points[..=from]
            .iter()
            .rev()
            .take(take)
            .map(|p| p.0)
            .collect()
    }

    pub fn delete_records_before(&mut self, offset: i64) -> Result<i64, LogError> {
        let target = if offset == -1 {
            self.next_offset
        } else {
            offset
        };
        if target < 0 || target > self.next_offset {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: self.log_start_offset,
                end: self.next_offset,
            });
        }
        if target > self.log_start_offset {
            self.log_start_offset = target;
            while self.tail.front().is_some_and(|b| b.last_offset < target) {
                if let Some(b) = self.tail.pop_front() {
                    self.tail_bytes -= b.bytes.len();
                }
            }
        }
        Ok(self.log_start_offset)
    }

    /// Rolls the active segment if it has outlived `segment.ms` without new appends;
    /// returns whether it did (the sealed segment then needs finalizing).
    pub fn roll_if_old(&mut self, now: i64) -> bool {
        let before = self.segments.len();
        self.maybe_roll(0, now);
        self.segments.len() > before
    }

    /// Forgets cached batches below `offset` (after the compactor rewrote them on disk).
    pub fn drop_cached_below(&mut self, offset: i64) {
        while self
            .tail
            .front()
            .is_some_and(|b| b.last_offset < offset && b.last_offset < self.written_offset)
        {
            if let Some(b) = self.tail.pop_front() {
                self.tail_bytes -= b.bytes.len();
            }
        }
    }

    pub fn segment(&self, base: i64) -> Option<&Segment> {
        self.segments.get(&base)
    }

    pub fn segment_mut(&mut self, base: i64) -> Option<&mut Segment> {
        self.segments.get_mut(&base)
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// Reads whole batches starting at the batch that holds `offset`, up to `max_bytes`
/// (at least one batch). Serves from the tail cache when it can, else from disk.
pub async fn read(
    log: &Rc<std::cell::RefCell<PartitionLog>>,
    offset: i64,
    max_bytes: usize,
) -> Result<batch::Batches, LogError> {
    let location = {
        let l = log.borrow();
        l.check_offset(offset)?;
        if offset == l.next_offset {
            return Ok(batch::Batches::default());
        }
        if let Some(b) = l.read_cached(offset, max_bytes) {
            return Ok(b);
        }
        l.disk_location(offset)
    };
    let Some((file, mut pos, end)) = location else {
        return Ok(batch::Batches::default());
    };
    // Sized once (growing by doubling copied what was read at each step), as the tail
    // cache's reads are.
    let mut out = BytesMut::with_capacity(
        max_bytes
            .min(usize::try_from(end.saturating_sub(pos)).unwrap_or(usize::MAX))
            .min(4 << 20),
    );
    while pos < end {
        let want = (max_bytes.max(batch::HEADER_LEN) as u64)
            .min(end - pos)
            .max(batch::HEADER_LEN as u64) as usize;
        let chunk = file
            .read_at(pos, want.min((end - pos) as usize))
            .await
            .map_err(std::io::Error::from)?;
        let mut at = 0usize;
        let mut progressed = false;
        while let Some(h) = BatchHeader::parse(&chunk[at..]) {
            if h.last_offset() < offset {
                at += h.size;
                progressed = true;
                if at >= chunk.len() {
                    break;
                }
                continue;
            }
            if !out.is_empty() && out.len() + h.size > max_bytes {
                return Ok(out.freeze().into());
            }
            if at + h.size <= chunk.len() {
                out.extend_from_slice(&chunk[at..at + h.size]);
            } else if out.is_empty() {
                // One batch bigger than the chunk: read it whole.
                let whole = file
                    .read_at(pos + at as u64, h.size)
                    .await
                    .map_err(std::io::Error::from)?;
                out.extend_from_slice(&whole[..]);
            } else {
                return Ok(out.freeze().into());
            }
            at += h.size;
            progressed = true;
            if at >= chunk.len() {
                break;
            }
        }
        if !progressed || out.len() >= max_bytes {
            break;
        }
        pos += at as u64;
    }
    if out.is_empty() {
        // The offset lies in a later segment (or the tail cache): try again from there.
        let next = {
            let l = log.borrow();
            l.segments
                .range(offset + 1..)
                .next()
                .map(|(b, _)| *b)
                .filter(|b| *b <= l.next_offset)
        };
        if let Some(next_base) = next {
            if next_base > offset {
                return Box::pin(read(log, next_base, max_bytes)).await;
            }
        }
    }
    Ok(out.freeze().into())
}

/// The first record whose timestamp is at or after `ts` (its offset and timestamp), or
/// `None` when there is none.
pub async fn offset_for_timestamp(
    log: &Rc<std::cell::RefCell<PartitionLog>>,
    ts: i64,
) -> Result<Option<(i64, i64)>, LogError> {
    let (start, candidates) = {
        let l = log.borrow();
        let c: Vec<i64> = l
            .segments
            .values()
            .filter(|s| s.max_timestamp >= ts)
            .map(|s| s.base_offset)
            .collect();
        (l.log_start_offset, c)
    };
    for base in candidates {
        let from = {
            let l = log.borrow();
            let Some(seg) = l.segments.get(&base) else {
                continue;
            };
            let pos = seg.position_for_timestamp(ts);
            seg.index
                .iter()
                .find(|e| e.position == pos)
                .map(|e| e.offset)
                .unwrap_or(base)
                .max(start)
        };
        let mut at = from;
        loop {
            let data = read(log, at, 1 << 20).await?;
            if data.is_empty() {
                break;
            }
            let mut last = at;
            for (h, one) in data.each() {
                if let Some((o, found)) = batch::offset_for_timestamp(&one, &h, ts) {
                    if o >= at || h.last_offset() >= at {
                        return Ok(Some((o.max(at), found)));
                    }
                }
                last = h.last_offset() + 1;
            }
            if last <= at {
                break;
            }
            at = last;
        }
    }
    Ok(None)
}

/// The offset and timestamp of the record with the largest timestamp (ListOffsets -3).
pub async fn max_timestamp_offset(
    log: &Rc<std::cell::RefCell<PartitionLog>>,
) -> Result<(i64, i64), LogError> {
    let max = log
        .borrow()
        .segments()
        .map(|s| s.max_timestamp)
        .max()
        .unwrap_or(-1);
    if max < 0 {
        return Ok((-1, -1));
    }
    Ok(offset_for_timestamp(log, max).await?.unwrap_or((-1, -1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::tests::{make_batch, txn_batch};

    fn settings() -> LogSettings {
        LogSettings {
            segment_bytes: 1 << 30,
            segment_ms: i64::MAX,
            retention_ms: -1,
            retention_bytes: -1,
            max_message_bytes: 1 << 20,
            log_append_time: false,
            flush_messages: i64::MAX,
            flush_ms: -1,
            index_interval_bytes: 4096,
            delete_policy: true,
            compact_policy: false,
            delete_retention_ms: 0,
        }
    }

    fn batches(n: i32) -> Vec<(BatchHeader, Bytes)> {
        batch::split(&make_batch(1_000, n, b"value")).unwrap()
    }

    #[test]
    fn a_rewind_undoes_what_was_not_written_and_reuses_its_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path().join("t-0"), "t", 0, settings(), 1 << 20);
        log.append(&batches(3)).unwrap();
        // The flusher writes the first batch only.
        let job = log.active().take_write(1).unwrap();
        assert_eq!(job.upto, 3);
        log.active().complete_write(&job, 512);
        log.written_offset = job.upto;
        let written = log.active().written;
        log.append(&batches(2)).unwrap();
        log.append(&batches(4)).unwrap();
        assert_eq!(log.next_offset, 9);

        let plan = log.rewind(false);
        assert_eq!((plan.next_offset, plan.dropped_records), (3, 6));
        assert_eq!(log.next_offset, 3);
        assert_eq!(log.tail_cache_bytes(), batches(3)[0].1.len());
        let seg = log.active();
        assert_eq!(
            (seg.size, seg.written, seg.next_offset),
            (written, written, 3)
        );
        assert!(seg.pending.is_empty());
        // The next append takes the undone offsets, right after what is on disk.
        let a = log.append(&batches(1)).unwrap();
        assert_eq!((a.base_offset, a.last_offset), (3, 3));
        assert_eq!(log.active().size, written + batches(1)[0].1.len() as u64);
    }

    fn txn(pid: i64, epoch: i16, seq: i32, n: i32) -> Vec<(BatchHeader, Bytes)> {
        batch::split(&txn_batch(pid, epoch, seq, n)).unwrap()
    }

    fn marker(commit: bool, coordinator_epoch: i32) -> MarkerRecord {
        MarkerRecord {
            commit,
            coordinator_epoch,
        }
    }

    /// Two producers' transactions interleaved with plain records: the LSO stays at the
    /// oldest ongoing transaction's first offset; an abort enters the index, a commit not.
    #[test]
    fn markers_end_transactions_and_move_the_last_stable_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path().join("t-0"), "t", 0, settings(), 1 << 20);
        log.append(&batches(3)).unwrap();
        assert_eq!(log.last_stable_offset(), 3);
        assert_eq!(log.append(&txn(7, 0, 0, 2)).unwrap().base_offset, 3);
        assert_eq!(log.append(&txn(8, 0, 0, 1)).unwrap().base_offset, 5);
        log.append(&txn(7, 0, 2, 1)).unwrap();
        log.append(&batches(1)).unwrap();
        assert_eq!((log.last_stable_offset(), log.high_watermark()), (3, 8));
        assert_eq!(log.producers.ongoing_txns(), vec![(7, 3), (8, 5)]);

        let abort = log.append_marker(7, 0, marker(false, 1)).unwrap();
        assert_eq!(abort.base_offset, 8);
        assert_eq!(log.last_stable_offset(), 5);
        assert_eq!(log.aborted_txns(0, 9), vec![(7, 3)]);
        // The marker is a control batch in the log, read like any other.
        let seg = log.segments().next().unwrap();
        assert_eq!(seg.aborted[0].last_stable_offset, 5);

        log.append_marker(8, 0, marker(true, 1)).unwrap();
        assert_eq!((log.last_stable_offset(), log.high_watermark()), (10, 10));
        assert!(log.producers.ongoing_txns().is_empty());
        // Overlap: the abort's marker (8) is at or after the fetch offset and the
        // transaction began before the end of the range.
        assert_eq!(log.aborted_txns(8, 10), vec![(7, 3)]);
        assert_eq!(log.aborted_txns(9, 10), vec![]);
        assert_eq!(log.aborted_txns(0, 3), vec![]);

        // A marker with no ongoing transaction is still appended (a coordinator's retry).
        let again = log.append_marker(8, 0, marker(true, 1)).unwrap();
        assert_eq!(again.base_offset, 10);
        assert_eq!(log.last_stable_offset(), 11);

        // DeleteRecords past an open transaction's start: the LSO is not below the log start.
        log.append(&txn(9, 0, 0, 2)).unwrap();
        log.append(&batches(1)).unwrap();
        assert_eq!(log.last_stable_offset(), 11);
        log.delete_records_before(12).unwrap();
        assert_eq!(log.last_stable_offset(), 12);
    }

    /// A marker with a newer epoch fences the producer's older instance; markers older
    /// than the producer's epoch or coordinator epoch are refused as Kafka refuses them.
    #[test]
    fn markers_fence_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path().join("t-0"), "t", 0, settings(), 1 << 20);
        log.append(&txn(7, 0, 0, 2)).unwrap();
        log.append_marker(7, 1, marker(false, 3)).unwrap();
        assert_eq!(log.aborted_txns(0, 3), vec![(7, 0)]);
        assert!(matches!(
            log.append(&txn(7, 0, 2, 1)),
            Err(LogError::InvalidProducerEpoch(0))
        ));
        assert!(matches!(
            log.append_marker(7, 0, marker(true, 3)),
            Err(LogError::InvalidProducerEpoch(0))
        ));
        assert!(matches!(
            log.append_marker(7, 1, marker(true, 2)),
            Err(LogError::CoordinatorFenced(2))
        ));
        // The new instance starts its sequences at 0 in a new transaction.
        assert_eq!(log.append(&txn(7, 1, 0, 1)).unwrap().base_offset, 3);
        assert_eq!(log.last_stable_offset(), 3);
        // A producer the partition never saw: its marker is appended, nothing is aborted.
        log.append_marker(99, 0, marker(false, 3)).unwrap();
        assert_eq!(log.aborted_txns(0, 10), vec![(7, 0)]);
    }

    /// A marker the disk refused is undone: its transaction is ongoing again, so the
    /// coordinator's retry ends it.
    #[test]
    fn a_rewound_marker_leaves_its_transaction_ongoing() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path().join("t-0"), "t", 0, settings(), 1 << 20);
        log.append(&txn(7, 0, 0, 2)).unwrap();
        let job = log.active().take_write(1 << 20).unwrap();
        log.active().complete_write(&job, 512);
        log.written_offset = job.upto;
        log.append_marker(7, 0, marker(false, 0)).unwrap();
        assert_eq!(log.last_stable_offset(), 3);
        log.rewind(false);
        assert_eq!((log.last_stable_offset(), log.high_watermark()), (0, 2));
        assert!(log.aborted_txns(0, 3).is_empty());
        log.append_marker(7, 0, marker(false, 0)).unwrap();
        assert_eq!(log.aborted_txns(0, 3), vec![(7, 0)]);
        assert_eq!(log.last_stable_offset(), 3);
    }
}

//! Per-shard storage: the one storage engine of the broker. It holds the Kafka partition
//! logs this shard owns and the record journals of the shard's AMQP queue store, and runs
//! the `flusher` task that writes both to disk and fdatasyncs them with group commit.
//!
//! One `Storage` per shard, created by the runtime and shared by `Rc` with the shard's
//! tasks. Only the owner shard of a partition or queue calls into it (other shards come
//! through the mesh). Layout on disk: `<data_dir>/<shard>/kafka/<topic>-<partition>/
//! <base>.log|.index|.timeindex|.txnindex` and `<data_dir>/<shard>/amqp/<vhost>/<queue>/<base>.log|
//! .marks`, documented in `shards/README.md`.
//!
//! The engine, bottom up:
//! - `dma`: the one way to open a data file (O_DIRECT through io_uring) and the one
//!   block-aligned write (the last partial block is rewritten with the next write).
//! - `frame`: the one checksummed framing of the broker's own records
//!   (`len | crc32 | payload`), with torn-tail detection.
//! - Segments named after their first entry, rolled by size: Kafka's (`segment`, `log`)
//!   hold record batches verbatim, since a batch carries its own length and CRC-32C and
//!   fetches send file bytes unchanged; the journal's (`journal`) hold framed records.
//!   Both recover by scanning each file and truncating a torn tail with a log line.
//! - Group commit: one flusher round writes what every dirty partition and record file
//!   held when it began, then fdatasyncs those someone waits on — one sync per file
//!   serves every waiter; a partition whose round is one write makes it O_DSYNC instead
//!   of syncing after it — and resolves their futures (`wait_durable` for acks=all
//!   producers, `journal::Durable` for AMQP confirms). Nothing here calls protocol code.
//! - Transactions: a partition's producer state (`producers`) tracks open transactions;
//!   markers are control batches; each segment keeps the transactions aborted in it
//!   (`txn_index`, `<base>.txnindex`). The producer state is saved when a segment is
//!   finalized, so recovery reads only the segments after it.
//!
//! A write or sync that fails (a full disk, ENOSPC) is an answer, not a retry: the
//! partition's appends past what is on disk are undone (`PartitionLog::rewind`), the file
//! is cut back to its good length, and the acks=all producers waiting on them get an
//! error (KAFKA_STORAGE_ERROR) at once. Nothing answered as failed is written later; the
//! next produce tries the disk again, so writes resume by themselves when space returns.
//! A record file does the same (`journal`). `disk::DiskGuard` refuses new data before
//! that point (`storage.min_free_bytes`).

pub mod batch;
pub mod compaction;
pub mod disk;
pub mod dma;
pub mod frame;
pub mod inflate;
pub mod journal;
pub mod log;
pub mod producers;
pub mod record_log;
pub mod segment;
pub mod txn_index;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::join_all;
use glommio::io::DmaFile;

use self::log::{now_ms, LogError, PartitionLog};
use crate::config::{Config, FsyncPolicy};
use crate::util::notify::{Listener, Notify};

/// The effective settings of one partition's log: broker defaults overlaid with the
/// topic's configs.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    pub segment_bytes: i64,
    pub segment_ms: i64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: i64,
    pub log_append_time: bool,
    pub flush_messages: i64,
    pub flush_ms: i64,
    pub index_interval_bytes: u32,
    /// `cleanup.policy` contains `delete`: retention removes old segments.
    pub delete_policy: bool,
    /// `cleanup.policy` contains `compact`: the compactor keeps the latest value per key.
    pub compact_policy: bool,
    /// `delete.retention.ms`: how long a tombstone outlives the values it deletes.
    pub delete_retention_ms: i64,
}

pub type LogRef = Rc<RefCell<PartitionLog>>;

/// A producer waiting for its batches to be fdatasync'ed.
struct SyncWaiter {
    log: LogRef,
    offset: i64,
    done: oneshot::Sender<Result<(), String>>,
}

const CLEAN_SHUTDOWN: &str = ".clean_shutdown";

pub struct Storage {
    root: PathBuf,
    tail_budget: usize,
    /// All the shard's tail caches together.
    shard_tail_budget: usize,
    fsync: FsyncPolicy,
    max_write_bytes: usize,
    partitions: RefCell<HashMap<(String, i32), LogRef>>,
    dirty: RefCell<Vec<LogRef>>,
    waiters: RefCell<Vec<SyncWaiter>>,
    wake: Notify,
    stopping: Cell<bool>,
    /// Some partition holds writes not yet fdatasync'ed after the last round (its flush
    /// policy is not due yet), so an idle flusher must look again soon.
    unsynced_left: Cell<bool>,
    /// Fired each time the flusher finishes a round.
    pub round_done: Notify,
    /// The free-space watermark of this shard's data directory.
    pub disk: Rc<disk::DiskGuard>,
    /// When the last failed write was logged (one line a second at most).
    last_failure_log_ms: Cell<i64>,
    /// Record journals written by this flusher besides the partitions (the AMQP queue
    /// store's), in the same rounds.
    journals: RefCell<Vec<Rc<journal::Journal>>>,
}

impl Storage {
    pub fn new(config: &Config, shard: usize) -> Storage {
        Storage {
            root: config.data_dir.join(shard.to_string()),
            tail_budget: config.storage.tail_cache_bytes,
            shard_tail_budget: config.storage.shard_tail_cache_bytes,
            fsync: config.storage.fsync,
            max_write_bytes: config.storage.max_write_bytes,
            partitions: RefCell::new(HashMap::new()),
            dirty: RefCell::new(Vec::new()),
            waiters: RefCell::new(Vec::new()),
            wake: Notify::new(),
            stopping: Cell::new(false),
            unsynced_left: Cell::new(false),
            round_done: Notify::new(),
            disk: Rc::new(disk::DiskGuard::new(
                config.data_dir.clone(),
                config.storage.min_free_bytes,
            )),
            last_failure_log_ms: Cell::new(i64::MIN / 2),
            journals: RefCell::new(Vec::new()),
        }
    }

    /// Has the flusher write (and group-commit) `journal` in its rounds from now on.
    pub fn adopt(&self, journal: Rc<journal::Journal>) {
        if !self
            .journals
            .borrow()
            .iter()
            .any(|j| Rc::ptr_eq(j, &journal))
        {
            self.journals.borrow_mut().push(journal);
            self.wake.notify();
        }
    }

    pub fn kafka_dir(&self) -> PathBuf {
        self.root.join("kafka")
    }

    pub fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.kafka_dir().join(format!("{topic}-{partition}"))
    }

    /// Parses a partition directory name back into (topic, partition).
    pub fn parse_dir_name(name: &str) -> Option<(String, i32)> {
        let (topic, p) = name.rsplit_once('-')?;
        Some((topic.to_owned(), p.parse().ok()?))
    }

    /// Opens every partition directory of this shard that `keep` accepts (the catalog
    /// knows it), recovering each; removes the others. Returns whether the last stop was
    /// clean.
    pub async fn recover(
        &self,
        mut keep: impl FnMut(&str, i32) -> Option<LogSettings>,
    ) -> Result<bool, LogError> {
        std::fs::create_dir_all(self.kafka_dir())?;
        self.settle_iopoll_probe().await?;
        let marker = self.root.join(CLEAN_SHUTDOWN);
        // A shard with no partitions yet has nothing that could be unclean.
        let fresh = std::fs::read_dir(self.kafka_dir())
            .map(|mut d| d.next().is_none())
            .unwrap_or(true);
        let clean = marker.exists() || fresh;
        if marker.exists() {
            std::fs::remove_file(&marker)?;
        }
        let mut dirs: Vec<_> = std::fs::read_dir(self.kafka_dir())?
            .filter_map(|e| e.ok())
            .collect();
        dirs.sort_by_key(|e| e.file_name());
        for entry in dirs {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some((topic, partition)) = Self::parse_dir_name(&name) else {
                continue;
            };
            match keep(&topic, partition) {
                Some(settings) => {
                    let log = PartitionLog::open(
                        entry.path(),
                        &topic,
                        partition,
                        settings,
                        self.tail_budget,
                    )
                    .await?;
                    ::log::debug!(
                        "recovered {topic}-{partition}: offsets [{}, {}), {} segments",
                        log.log_start_offset,
                        log.next_offset,
                        log.segment_count()
                    );
                    self.partitions
                        .borrow_mut()
                        .insert((topic, partition), Rc::new(RefCell::new(log)));
                }
                None => {
                    ::log::info!("removing {name}: its topic is no longer in the catalog");
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(clean)
    }

    /// See `probe_dma`: must run before any segment is opened. Never fails: recovery
    /// needs no free space.
    async fn settle_iopoll_probe(&self) -> std::io::Result<()> {
        probe_dma(&self.root).await;
        Ok(())
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<LogRef> {
        self.partitions
            .borrow()
            .get(&(topic.to_owned(), partition))
            .cloned()
    }

    /// The partition's log, created empty when this shard has none yet.
    pub fn get_or_create(&self, topic: &str, partition: i32, settings: &LogSettings) -> LogRef {
        if let Some(l) = self.get(topic, partition) {
            return l;
        }
        ::log::debug!(
            "creating log {topic}-{partition} (segment.bytes {}, retention.bytes {})",
            settings.segment_bytes,
            settings.retention_bytes
        );
        let log = PartitionLog::create(
            self.partition_dir(topic, partition),
            topic,
            partition,
            settings.clone(),
            self.tail_budget,
        );
        let log = Rc::new(RefCell::new(log));
        self.partitions
            .borrow_mut()
            .insert((topic.to_owned(), partition), log.clone());
        log
    }

    pub fn partitions(&self) -> Vec<LogRef> {
        self.partitions.borrow().values().cloned().collect()
    }

    /// Applies new settings to every partition of `topic` on this shard.
    pub fn update_settings(&self, topic: &str, settings: &LogSettings) {
        for ((t, _), log) in self.partitions.borrow().iter() {
            if t == topic {
                log.borrow_mut().settings = settings.clone();
            }
        }
    }

    /// Queues the partition for the flusher after an append.
    pub fn mark_dirty(&self, log: &LogRef) {
        self.dirty.borrow_mut().push(log.clone());
        self.wake.notify();
    }

    /// Resolves once everything below `offset` in `log` is fdatasync'ed (group commit:
    /// one sync covers every waiter of the round).
    pub fn wait_durable(
        &self,
        log: &LogRef,
        offset: i64,
    ) -> impl std::future::Future<Output = Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        if log.borrow().durable_offset >= offset {
            let _ = tx.send(Ok(()));
        } else {
            self.waiters.borrow_mut().push(SyncWaiter {
                log: log.clone(),
                offset,
                done: tx,
            });
            self.wake.notify();
        }
        async move {
            rx.await
                .unwrap_or_else(|_| Err("broker shutting down".into()))
        }
    }

    /// Deletes a partition's log and files.
    pub async fn delete(&self, topic: &str, partition: i32) {
        let removed = self
            .partitions
            .borrow_mut()
            .remove(&(topic.to_owned(), partition));
        let dir = match removed {
            Some(log) => {
                let mut l = log.borrow_mut();
                l.deleted = true;
                l.appended.notify();
                l.dir().to_owned()
            }
            None => self.partition_dir(topic, partition),
        };
        let r = glommio::executor()
            .spawn_blocking(move || std::fs::remove_dir_all(&dir))
            .await;
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::NotFound {
                ::log::warn!("removing files of {topic}-{partition}: {e}");
            }
        }
    }

    /// The flusher: writes every dirty partition, then fdatasyncs those someone waits on
    /// or whose flush policy is due, then wakes the waiters. Appends made while a round is
    /// in flight are taken by the next round, so one sync serves many producers.
    pub async fn run_flusher(self: Rc<Self>) {
        while !self.stopping.get() {
            let listener = Listener::new();
            listener.listen(&self.wake);
            let journals = self.journals.borrow().clone();
            for j in &journals {
                listener.listen(&j.wake);
            }
            let idle = self.dirty.borrow().is_empty()
                && self.waiters.borrow().is_empty()
                && journals.iter().all(|j| j.idle());
            if idle {
                // Wake at least every 100 ms while some log has unsynced writes, so flush.ms
                // applies to idle logs, and every second otherwise (segment.ms, tail
                // caches): an idle broker is not woken ten times a second per shard.
                let period = if self.unsynced_left.get() {
                    Duration::from_millis(100)
                } else {
                    Duration::from_secs(1)
                };
                let _ = glommio::timer::timeout(period, async {
                    listener.await;
                    Ok(())
                })
                .await;
            }
            self.round(false).await;
            self.round_done.notify();
        }
    }

    /// Asks the flusher to finish its current round and exit (await its task after).
    pub fn stop_flusher(&self) {
        self.stopping.set(true);
        self.wake.notify();
    }

    /// One flusher round; with `sync_all`, every partition and record file is synced
    /// (shutdown). The partitions and the journals are written side by side.
    pub async fn round(&self, sync_all: bool) {
        let journals = self.journals.borrow().clone();
        futures::join!(
            self.partitions_round(sync_all),
            join_all(journals.iter().map(|j| j.round(&self.disk, sync_all)))
        );
    }

    async fn partitions_round(&self, sync_all: bool) {
        let now = now_ms();
        let mut dirty: Vec<LogRef> = std::mem::take(&mut *self.dirty.borrow_mut());

        // Which partitions need an fdatasync this round.
        let waiting: Vec<LogRef> = self
            .waiters
            .borrow()
            .iter()
            .map(|w| w.log.clone())
            .collect();
        let mut to_sync: Vec<LogRef> = if sync_all {
            self.partitions()
        } else {
            self.partitions()
                .into_iter()
                .filter(|l| {
                    let l = l.borrow();
                    // Appended but not synced (the writes below come first).
                    let unsynced = l.durable_offset < l.next_offset;
                    unsynced
                        && (self.fsync == FsyncPolicy::Always
                            || l.unsynced_messages >= l.settings.flush_messages
                            || (l.settings.flush_ms >= 0
                                && now - l.last_sync_ms >= l.settings.flush_ms))
                })
                .collect()
        };
        to_sync.extend(waiting);
        to_sync.sort_by_key(|l| Rc::as_ptr(l) as usize);
        to_sync.dedup_by_key(|l| Rc::as_ptr(l) as usize);
        // Write what was appended before the round began, once: what arrives while the
        // writes are in flight waits for the next round, which starts as soon as this one
        // ends. (A round that chased new appends would write again and again, a batch or
        // two each time, before its sync, and every waiter would wait for all of it.)
        dirty.extend(to_sync.iter().cloned());
        dirty.sort_by_key(|l| Rc::as_ptr(l) as usize);
        dirty.dedup_by_key(|l| Rc::as_ptr(l) as usize);
        let targets: Vec<(i64, bool)> = dirty
            .iter()
            .map(|l| {
                // `to_sync` is sorted by address: one lookup, not a scan per partition.
                let durable = to_sync
                    .binary_search_by_key(&(Rc::as_ptr(l) as usize), |s| Rc::as_ptr(s) as usize)
                    .is_ok();
                (l.borrow().next_offset, durable)
            })
            .collect();
        join_all(
            dirty
                .iter()
                .zip(targets)
                .map(|(l, (upto, durable))| self.write_partition(l, upto, durable)),
        )
        .await;
        let synced = join_all(to_sync.iter().map(sync_partition)).await;
        for (log, r) in to_sync.iter().zip(synced) {
            if let Err(e) = r {
                let path = log.borrow().dir().to_owned();
                self.write_failed(log, &path, "fdatasync of", &e, true)
                    .await;
            }
        }

        // Wake the waiters whose offsets are now durable; keep the rest.
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        let mut keep = Vec::new();
        for w in waiters {
            let (durable, deleted) = {
                let l = w.log.borrow();
                (l.durable_offset, l.deleted)
            };
            if deleted {
                let _ = w.done.send(Err("partition deleted".into()));
            } else if durable >= w.offset {
                let _ = w.done.send(Ok(()));
            } else {
                keep.push(w);
            }
        }
        self.waiters.borrow_mut().extend(keep);

        let partitions = self.partitions();
        let mut cached = 0usize;
        let mut unsynced_left = false;
        for log in &partitions {
            let rolled = {
                let mut l = log.borrow_mut();
                unsynced_left |= l.durable_offset < l.written_offset;
                l.trim_tail_cache();
                cached += l.tail_cache_bytes();
                l.roll_if_old(now)
            };
            if rolled {
                // The next round finalizes the sealed segment.
                self.dirty.borrow_mut().push(log.clone());
            }
        }
        self.fit_tail_caches(&partitions, cached);
        self.unsynced_left.set(unsynced_left);
    }

    /// Keeps the shard's tail caches together within `storage.shard_tail_cache_bytes`:
    /// over it, every partition is cut to an equal share (the busiest lose most).
    fn fit_tail_caches(&self, partitions: &[LogRef], cached: usize) {
        let budget = self.shard_tail_budget;
        if cached <= budget || partitions.is_empty() {
            return;
        }
        let share = budget / partitions.len();
        for log in partitions {
            log.borrow_mut().trim_tail_cache_to(share);
        }
    }

    /// Bytes the shard's partitions hold in their tail caches.
    pub fn tail_cache_bytes(&self) -> usize {
        self.partitions()
            .iter()
            .map(|l| l.borrow().tail_cache_bytes())
            .sum()
    }

    /// Writes the pending bytes of one partition below offset `upto` (and whatever else is
    /// pending when a write is taken), segment by segment, and finalizes sealed segments
    /// (sync, truncate to size, index files).
    ///
    /// With `durable` (the round syncs this partition), a write that takes the partition
    /// to `upto` while everything before it is already durable goes through the segment's
    /// O_DSYNC handle: it is durable when it completes, and the round's fdatasync of the
    /// partition has nothing left to do (`sync_partition`). At a moderate rate that is the
    /// whole round, so an acks=all producer waits for one disk request, not two. A round
    /// that takes several writes (a roll, more than `storage.max_write_bytes`) writes them
    /// as before and syncs once after.
    async fn write_partition(&self, log: &LogRef, upto: i64, durable: bool) {
        let bases: Vec<i64> = log
            .borrow()
            .segments()
            .filter(|s| !s.pending.is_empty() || (s.sealed && !s.finalized))
            .map(|s| s.base_offset)
            .collect();
        for base in bases {
            loop {
                if log.borrow().deleted {
                    return;
                }
                let (job, file, path) = {
                    let mut l = log.borrow_mut();
                    let Some(seg) = l.segment_mut(base) else {
                        break;
                    };
                    let job = seg.take_write(self.max_write_bytes);
                    (job, seg.file.clone(), seg.log_path())
                };
                let file = match file {
                    Some(f) => f,
                    None => match dma::open(&path).await {
                        Ok(f) => {
                            let mut l = log.borrow_mut();
                            if let Some(seg) = l.segment_mut(base) {
                                seg.file = Some(f.clone());
                            }
                            f
                        }
                        Err(e) => {
                            drop(job);
                            self.write_failed(log, &path, "opening", &e, false).await;
                            return;
                        }
                    },
                };
                let Some(job) = job else {
                    // Nothing left to write: finalize a sealed segment once.
                    finalize_segment(log, base, &file).await;
                    break;
                };
                let align = file.alignment();
                let dsync = durable && job.upto >= upto && {
                    let l = log.borrow();
                    l.durable_offset >= l.written_offset
                };
                let (file, dsync) = if dsync {
                    match self.dsync_handle(log, base, &path).await {
                        Some(f) => (f, true),
                        None => (file, false),
                    }
                } else {
                    (file, false)
                };
                let started = std::time::Instant::now();
                let written = dma::write_aligned(&file, job.position, &job.parts()).await;
                if dsync {
                    // The disk's time to make the partition durable, as an fdatasync's is.
                    let took = started.elapsed();
                    crate::metrics::with(|m| m.fsync.record(took));
                }
                match written {
                    Ok(()) => {
                        let mut l = log.borrow_mut();
                        l.written_offset = l.written_offset.max(job.upto);
                        if dsync {
                            l.durable_offset = l.durable_offset.max(job.upto);
                            l.unsynced_messages = 0;
                            l.last_sync_ms = now_ms();
                        }
                        let Some(seg) = l.segment_mut(base) else {
                            break;
                        };
                        seg.complete_write(&job, align);
                        if dsync {
                            seg.synced = seg.written;
                        }
                        // The active segment takes appends while its write is in flight:
                        // they are the next round's. A sealed one takes none, and goes on
                        // to its finalizing.
                        if !seg.sealed && job.upto >= upto {
                            break;
                        }
                    }
                    Err(e) => {
                        drop(job);
                        self.write_failed(log, &path, "writing", &e, false).await;
                        return;
                    }
                }
            }
        }
    }

    /// The O_DSYNC handle on segment `base` of `log` (whose file exists), opened on first
    /// use; `None` when it cannot be opened, and the write goes through the plain handle
    /// and the round's fdatasync as before.
    async fn dsync_handle(&self, log: &LogRef, base: i64, path: &Path) -> Option<Rc<DmaFile>> {
        let open = log
            .borrow()
            .segment(base)
            .and_then(|s| s.dsync_file.clone());
        if open.is_some() {
            return open;
        }
        match dma::open_dsync(path).await {
            Ok(f) => {
                let mut l = log.borrow_mut();
                let seg = l.segment_mut(base)?;
                seg.dsync_file = Some(f.clone());
                Some(f)
            }
            Err(e) => {
                ::log::warn!("opening {} with O_DSYNC: {e}", path.display());
                None
            }
        }
    }

    /// A write (or, with `to_durable`, a sync) of `log` failed: undo its appends past what
    /// the disk holds, cut the files back, and fail the acks=all producers waiting on the
    /// undone records now. The next produce tries the disk again.
    async fn write_failed(
        &self,
        log: &LogRef,
        path: &Path,
        what: &str,
        e: &std::io::Error,
        to_durable: bool,
    ) {
        if disk::is_no_space(e) {
            self.disk.write_failed();
        }
        let plan = log.borrow_mut().rewind(to_durable);
        let now = now_ms();
        if now - self.last_failure_log_ms.get() >= 1000 {
            self.last_failure_log_ms.set(now);
            let l = log.borrow();
            ::log::error!(
                "{what} {}: {e}; {}-{}: {} records not written are dropped and their producers answered KAFKA_STORAGE_ERROR (log end back to {})",
                path.display(),
                l.topic,
                l.partition,
                plan.dropped_records,
                plan.next_offset
            );
        }
        // Producers of the undone records hear now; those below the cut keep waiting for
        // their sync.
        let reason = format!("{what} the partition's log failed: {e}");
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        let mut keep = Vec::with_capacity(waiters.len());
        for w in waiters {
            if Rc::ptr_eq(&w.log, log) && w.offset > plan.next_offset {
                let _ = w.done.send(Err(reason.clone()));
            } else {
                keep.push(w);
            }
        }
        self.waiters.borrow_mut().extend(keep);
        for (file, len) in plan.truncate {
            if let Err(e) = file.truncate(len).await {
                ::log::warn!("cutting {} back to {len} bytes: {e}", path.display());
            }
        }
        for p in plan.remove {
            let _ = std::fs::remove_file(p);
        }
        if let Some(base) = plan.reload_partial {
            reload_partial(log, base).await;
        }
    }

    /// Compaction: one pass over every partition with `cleanup.policy=compact`.
    pub async fn apply_compaction(&self) {
        for log in self.partitions() {
            if !log.borrow().settings.compact_policy || log.borrow().deleted {
                continue;
            }
            match compaction::compact(&log).await {
                Ok(pass) if pass.records_removed > 0 => {
                    let l = log.borrow();
                    ::log::info!(
                        "compacted {}-{}: {} superseded records removed from {} segments",
                        l.topic,
                        l.partition,
                        pass.records_removed,
                        pass.segments_rewritten
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    let l = log.borrow();
                    ::log::warn!("compacting {}-{}: {e}", l.topic, l.partition);
                }
            }
        }
    }

    /// Retention: deletes whole old segments of every partition.
    pub async fn apply_retention(&self) {
        let now = now_ms();
        for log in self.partitions() {
            let doomed = log.borrow_mut().apply_retention(now);
            for path in doomed {
                if let Err(e) = glommio::io::remove(&path).await {
                    let e = std::io::Error::from(e);
                    if e.kind() != std::io::ErrorKind::NotFound {
                        ::log::warn!("retention: removing {}: {e}", path.display());
                    }
                } else {
                    ::log::info!("retention: deleted {}", path.display());
                }
            }
        }
    }

    /// Clean stop: write and sync everything, truncate active segments to their logical
    /// size, write index files, then the clean-shutdown marker.
    /// Call only after the flusher task has exited (`stop_flusher`).
    pub async fn shutdown(&self) {
        self.round(true).await;
        for log in self.partitions() {
            let segs: Vec<(i64, Option<Rc<DmaFile>>, u64, bool)> = log
                .borrow()
                .segments()
                .map(|s| (s.base_offset, s.file.clone(), s.size, s.finalized))
                .collect();
            for (base, file, size, finalized) in segs {
                if finalized {
                    continue;
                }
                // A segment never written has no file (a partition only read, say): it
                // has nothing to truncate and no index to write.
                let Some(f) = file else {
                    continue;
                };
                if let Err(e) = f.truncate(size).await {
                    ::log::warn!("truncating segment {base}: {e}");
                }
                let _ = f.fdatasync().await;
                write_index_files(&log, base);
            }
            let l = log.borrow();
            if !l.dir().exists() {
                // Never written: no directory, no producer state to keep.
                continue;
            }
            if let Err(e) = l.producers.save(l.dir(), l.next_offset) {
                ::log::warn!("saving producer state of {}-{}: {e}", l.topic, l.partition);
            }
        }
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            let _ = w.done.send(Err("broker shutting down".into()));
        }
        if let Err(e) = std::fs::create_dir_all(&self.root)
            .and_then(|_| std::fs::write(self.root.join(CLEAN_SHUTDOWN), b"clean\n"))
        {
            ::log::warn!("writing clean-shutdown marker: {e}");
        }
    }
}

/// glommio decides once per block device and thread whether DMA reads and writes go to
/// the polled (IOPOLL) ring, by reading one block of the first file opened with DMA. When
/// that file is empty the read stops at end-of-file and succeeds even on a device that
/// cannot poll (virtio-blk, for one); every later disk read on this shard then fails with
/// EOPNOTSUPP, and fetches behind the tail cache get KAFKA_STORAGE_ERROR for ever. So the
/// first DMA open of a shard's thread is of a file that holds a block of data: a probe file
/// written for it, or — when the disk is full and the probe cannot be written — an
/// existing file of the shard's data (read only; recovery must not need free space).
pub async fn probe_dma(dir: &Path) {
    let path = dir.join(".dma_probe");
    let written = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, [0x5au8; 4096]));
    let target = match written {
        Ok(()) => Some(path.clone()),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            let found = file_with_data(dir, 4);
            ::log::info!(
                "{}: cannot write the DMA probe file ({e}); probing {}",
                dir.display(),
                found
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "nothing (no file with data yet)".into())
            );
            found
        }
    };
    if let Some(target) = target {
        if let Ok(f) = glommio::io::OpenOptions::new()
            .read(true)
            .dma_open(&target)
            .await
        {
            let _ = f.close().await;
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// A file of at least one 4 KiB block under `dir`, `depth` levels deep at most.
fn file_with_data(dir: &Path, depth: usize) -> Option<PathBuf> {
    let mut subdirs = Vec::new();
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(meta) = e.metadata() else {
            continue;
        };
        if meta.is_file() && meta.len() >= 4096 {
            return Some(e.path());
        }
        if meta.is_dir() {
            subdirs.push(e.path());
        }
    }
    if depth == 0 {
        return None;
    }
    subdirs
        .into_iter()
        .find_map(|d| file_with_data(&d, depth - 1))
}

/// Reads the last partial block of segment `base` back from its file after a rewind cut
/// the segment below what had been written.
async fn reload_partial(log: &LogRef, base: i64) {
    let (file, written) = {
        let l = log.borrow();
        match l.segment(base) {
            Some(s) => (s.file.clone(), s.written),
            None => return,
        }
    };
    let Some(file) = file else {
        return;
    };
    let partial = match dma::read_partial_block(&file, written).await {
        Ok(p) => p,
        Err(e) => {
            ::log::error!("reading back segment {base} after a failed sync: {e}");
            return;
        }
    };
    let mut l = log.borrow_mut();
    if let Some(seg) = l.segment_mut(base) {
        if seg.written == written {
            seg.partial = partial;
        }
    }
}

/// fdatasyncs the partition's unfinalized segment files; on success everything written
/// before the call is durable.
async fn sync_partition(log: &LogRef) -> std::io::Result<()> {
    let (files, upto, sizes) = {
        let l = log.borrow();
        if l.durable_offset >= l.written_offset {
            // Everything written is durable already (its write was O_DSYNC).
            return Ok(());
        }
        let files: Vec<_> = l
            .segments()
            .filter(|s| !s.finalized)
            .filter_map(|s| s.file.clone())
            .collect();
        let sizes: Vec<(i64, u64)> = l.segments().map(|s| (s.base_offset, s.written)).collect();
        (files, l.written_offset, sizes)
    };
    for f in files {
        let started = std::time::Instant::now();
        let r = f.fdatasync().await;
        let took = started.elapsed();
        crate::metrics::with(|m| m.fsync.record(took));
        r.map_err(std::io::Error::from)?;
    }
    let mut l = log.borrow_mut();
    l.durable_offset = l.durable_offset.max(upto);
    l.unsynced_messages = 0;
    l.last_sync_ms = now_ms();
    for (base, written) in sizes {
        if let Some(seg) = l.segment_mut(base) {
            seg.synced = seg.synced.max(written.min(seg.written));
        }
    }
    Ok(())
}

async fn finalize_segment(log: &LogRef, base: i64, file: &Rc<DmaFile>) {
    let size = {
        let l = log.borrow();
        match l.segment(base) {
            Some(s) if s.sealed && !s.finalized && s.pending.is_empty() => s.size,
            _ => return,
        }
    };
    if let Err(e) = file.fdatasync().await {
        ::log::error!("fdatasync of sealed segment {base}: {e}");
        return;
    }
    if let Err(e) = file.truncate(size).await {
        ::log::warn!("truncating sealed segment {base}: {e}");
    }
    write_index_files(log, base);
    let mut l = log.borrow_mut();
    // The index files first, then the producer state as of the segment's end: a recovery
    // that finds this snapshot finds the segment's aborted transactions in its index.
    let snapshot = l.segment_mut(base).and_then(|s| {
        s.finalized = true;
        s.dsync_file = None;
        let end = s.next_offset;
        s.roll_snapshot.take().map(|p| (end, p))
    });
    if let Some((end, producers)) = snapshot {
        if let Err(e) = producers.save(l.dir(), end) {
            ::log::warn!("saving producer state of {}-{}: {e}", l.topic, l.partition);
        }
    }
}

fn write_index_files(log: &LogRef, base: i64) {
    let l = log.borrow();
    let Some(seg) = l.segment(base) else {
        return;
    };
    let (ip, idx, tp, tidx) = seg.index_files();
    if let Err(e) = std::fs::write(&ip, idx)
        .and_then(|_| std::fs::write(&tp, tidx))
        .and_then(|_| seg.write_txn_index())
    {
        ::log::warn!("writing index files of segment {base}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::batch::tests::{make_batch, txn_batch};
    use super::batch::{self, MarkerRecord};
    use super::*;

    fn run<F, Fut>(f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(f)
            .expect("executor")
            .join()
            .expect("join");
    }

    fn settings() -> LogSettings {
        LogSettings {
            // A few batches per segment: transactions span segments.
            segment_bytes: 250,
            segment_ms: i64::MAX,
            retention_ms: -1,
            retention_bytes: -1,
            max_message_bytes: 1 << 20,
            log_append_time: false,
            flush_messages: i64::MAX,
            flush_ms: -1,
            index_interval_bytes: 1,
            delete_policy: true,
            compact_policy: false,
            delete_retention_ms: 0,
        }
    }

    fn txn(log: &LogRef, pid: i64, seq: i32, n: i32) -> i64 {
        let b = batch::split(&txn_batch(pid, 0, seq, n)).unwrap();
        log.borrow_mut().append(&b).unwrap().base_offset
    }

    fn plain(log: &LogRef, n: i32) {
        let b = batch::split(&make_batch(1_000, n, b"plain")).unwrap();
        log.borrow_mut().append(&b).unwrap();
    }

    fn end(log: &LogRef, pid: i64, commit: bool) -> i64 {
        let m = MarkerRecord {
            commit,
            coordinator_epoch: 0,
        };
        log.borrow_mut()
            .append_marker(pid, 0, m)
            .unwrap()
            .base_offset
    }

    /// (producer id, offset) pairs.
    type Txns = Vec<(i64, i64)>;

    /// LSO, aborted transactions from offset 0, and ongoing transactions of a log.
    fn txn_view(log: &LogRef) -> (i64, Txns, Txns) {
        let l = log.borrow();
        (
            l.last_stable_offset(),
            l.aborted_txns(0, l.next_offset),
            l.producers.ongoing_txns(),
        )
    }

    /// The default configuration with its data directory in a new temp dir (removed when
    /// the `TempDir` drops).
    fn temp_config() -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        (dir, config)
    }

    async fn open(config: &Config) -> (Storage, LogRef) {
        let storage = Storage::new(config, 0);
        storage.recover(|_, _| Some(settings())).await.unwrap();
        let log = storage.get_or_create("t", 0, &settings());
        (storage, log)
    }

    fn dsync_open(log: &LogRef) -> bool {
        let l = log.borrow();
        l.segments().last().is_some_and(|s| s.dsync_file.is_some())
    }

    /// A waited round of one write is made durable by that write (the O_DSYNC handle);
    /// one with an unsynced write before it, or several writes, is synced after. Every
    /// waiter is answered, and all of it is there after a kill -9.
    #[test]
    fn a_round_of_one_write_is_durable_through_the_dsync_handle() {
        let (_dir, config) = temp_config();
        run(move || async move {
            let (storage, log) = open(&config).await;
            let big = |log: &LogRef| log.borrow_mut().settings.segment_bytes = 1 << 20;
            big(&log);
            // Written without a waiter first: not durable, so the waited round after it
            // must fdatasync rather than trust its own O_DSYNC write.
            plain(&log, 1);
            storage.mark_dirty(&log);
            storage.round(false).await;
            assert!(log.borrow().durable_offset < log.borrow().written_offset);
            plain(&log, 1);
            let end = log.borrow().next_offset;
            let wait = storage.wait_durable(&log, end);
            storage.round(false).await;
            wait.await.unwrap();
            assert!(!dsync_open(&log), "an unsynced write before: fdatasync");
            assert_eq!(log.borrow().durable_offset, end);
            // Everything before is durable: the next waited round is one O_DSYNC write.
            plain(&log, 2);
            let end = log.borrow().next_offset;
            let wait = storage.wait_durable(&log, end);
            storage.round(false).await;
            wait.await.unwrap();
            assert!(dsync_open(&log), "one write, all before durable: O_DSYNC");
            assert_eq!(log.borrow().durable_offset, end);
            // A round that rolls segments takes several writes and is synced after.
            log.borrow_mut().settings.segment_bytes = 250;
            for _ in 0..6 {
                plain(&log, 1);
            }
            let end = log.borrow().next_offset;
            assert!(log.borrow().segment_count() >= 2);
            let wait = storage.wait_durable(&log, end);
            storage.round(false).await;
            storage.round(false).await;
            wait.await.unwrap();
            assert_eq!(log.borrow().durable_offset, end);
            drop(log);
            drop(storage); // kill -9: no shutdown

            let (_storage, log) = open(&config).await;
            assert_eq!(log.borrow().next_offset, end);
            // Every batch is there, in order, none missing.
            let mut at = 0;
            while at < end {
                let read = log::read(&log, at, 1 << 20).await.unwrap();
                assert!(!read.is_empty(), "nothing at {at}");
                for (h, _) in read.each() {
                    assert_eq!(h.base_offset, at);
                    at = h.last_offset() + 1;
                }
            }
            assert_eq!(at, end);
        });
    }

    /// Interleaved transactions over several segments; the last stable offset and the
    /// aborted-transaction index come back the same after a kill -9 (the directory opened
    /// again without a clean stop) and after a clean stop; retention takes index entries
    /// with their segments.
    #[test]
    fn transactions_survive_a_crash_and_retention_takes_their_index() {
        let (_dir, config) = temp_config();
        run(move || async move {
            let (storage, log) = open(&config).await;
            assert_eq!(txn(&log, 1, 0, 2), 0);
            plain(&log, 3);
            assert_eq!(txn(&log, 2, 0, 1), 5);
            txn(&log, 1, 2, 1);
            assert_eq!(end(&log, 1, false), 7);
            plain(&log, 1);
            assert_eq!(txn(&log, 3, 0, 1), 9);
            end(&log, 2, true);
            assert_eq!(txn(&log, 4, 0, 2), 11);
            for _ in 0..4 {
                plain(&log, 1);
            }
            end(&log, 4, false);
            plain(&log, 1);
            let before = txn_view(&log);
            assert_eq!(before, (9, vec![(1, 0), (4, 11)], vec![(3, 9)]));
            assert!(log.borrow().segment_count() >= 4);
            storage.mark_dirty(&log);
            storage.round(false).await;
            storage.round(false).await;
            // Sealed segments left a snapshot behind: a restart reads only what follows.
            let (covered, _) = producers::ProducerStates::load(log.borrow().dir()).unwrap();
            assert!(covered > 9, "snapshot at {covered}");
            let dir = log.borrow().dir().to_owned();
            drop(log);
            drop(storage); // kill -9: no shutdown, no clean marker

            let (storage, log) = open(&config).await;
            assert_eq!(txn_view(&log), before);
            // The transaction that began before the crash ends normally.
            end(&log, 3, false);
            let (lso, aborted, ongoing) = txn_view(&log);
            assert_eq!(lso, log.borrow().high_watermark());
            assert_eq!(aborted, vec![(1, 0), (4, 11), (3, 9)]);
            assert!(ongoing.is_empty());
            storage.mark_dirty(&log);
            storage.round(true).await;
            storage.shutdown().await;
            drop(log);
            drop(storage);

            let (storage, log) = open(&config).await;
            assert_eq!(txn_view(&log), (lso, aborted, vec![]));
            // Retention removes old segments, their index entries and files.
            log.borrow_mut().settings.retention_bytes = 1;
            storage.apply_retention().await;
            let start = log.borrow().log_start_offset;
            assert!(start > 12, "log start {start}");
            let left = log.borrow().aborted_txns(0, i64::MAX);
            assert!(left.iter().all(|(p, _)| *p == 3), "{left:?}");
            let txn_files = std::fs::read_dir(&dir)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".txnindex"))
                })
                .count();
            assert!(txn_files <= 1, "{txn_files} .txnindex files left");
            storage.shutdown().await;
        });
    }

    /// A keyed plain batch (CreateTime) of `(key, value)` records.
    fn keyed(log: &LogRef, records: &[(&str, &str)]) -> i64 {
        let b = batch::encode_plain_batch(
            records.iter().map(|(k, v)| batch::PlainRecord {
                timestamp: 1_000,
                key: Some(bytes::Bytes::from(k.to_string())),
                value: Some(bytes::Bytes::from(v.to_string())),
                headers: Default::default(),
            }),
            kafka_protocol::records::Compression::None,
        )
        .unwrap();
        let b = batch::split(&b).unwrap();
        log.borrow_mut().append(&b).unwrap().base_offset
    }

    /// (offset, value) of every data record of the log, and the offsets of its markers.
    async fn contents(log: &LogRef) -> (Vec<(i64, String)>, Vec<i64>) {
        use kafka_protocol::records::RecordBatchDecoder;
        let mut records = Vec::new();
        let mut markers = Vec::new();
        let mut at = log.borrow().log_start_offset;
        while at < log.borrow().next_offset {
            let data = log::read(log, at, 1 << 20).await.unwrap();
            if data.is_empty() {
                break;
            }
            for (h, mut one) in data.each() {
                at = h.last_offset() + 1;
                if h.is_control() {
                    markers.push(h.base_offset);
                    continue;
                }
                for r in RecordBatchDecoder::decode(&mut one).unwrap().records {
                    let v = String::from_utf8_lossy(&r.value.unwrap_or_default()).into_owned();
                    records.push((r.offset, v));
                }
            }
        }
        (records, markers)
    }

    /// Compaction keeps transactions right: an aborted record never supersedes a committed
    /// one (and is dropped), a record of an open transaction neither, the marker stays.
    #[test]
    fn compaction_never_lets_aborted_or_open_transactions_supersede_committed_values() {
        let (_dir, config) = temp_config();
        run(move || async move {
            let (storage, log) = open(&config).await;
            log.borrow_mut().settings.compact_policy = true;
            assert_eq!(keyed(&log, &[("k0", "committed-0")]), 0);
            // txn_batch writes keys k0, k1 with value "v".
            assert_eq!(txn(&log, 9, 0, 2), 1);
            assert_eq!(end(&log, 9, false), 3);
            assert_eq!(keyed(&log, &[("k1", "committed-1")]), 4);
            for i in 0..6 {
                keyed(&log, &[("filler", &format!("f{i}"))]);
            }
            // Open transaction writing k1 again: above the LSO.
            let open_at = txn(&log, 10, 0, 2);
            for i in 6..12 {
                keyed(&log, &[("filler", &format!("f{i}"))]);
            }
            storage.mark_dirty(&log);
            storage.round(false).await;
            storage.round(false).await;
            let pass = compaction::compact(&log).await.unwrap();
            assert!(pass.records_removed > 0);
            let (records, markers) = contents(&log).await;
            assert!(records.contains(&(0, "committed-0".into())), "{records:?}");
            assert!(records.contains(&(4, "committed-1".into())), "{records:?}");
            assert!(
                !records.iter().any(|(o, _)| *o == 1 || *o == 2),
                "aborted records are dropped: {records:?}"
            );
            assert!(records.contains(&(open_at + 1, "v".into())), "{records:?}");
            assert_eq!(markers, vec![3]);
            assert_eq!(log.borrow().aborted_txns(0, 20), vec![(9, 1)]);
            storage.shutdown().await;
        });
    }
}

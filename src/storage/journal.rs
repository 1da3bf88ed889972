//! `Journal`: the group-committed writer of one shard's record files — append-only files
//! of opaque `storage::frame` records, written block-aligned with DMA (`storage::dma`) —
//! and the `Durable` futures that tell an appender when its record is on disk.
//!
//! The AMQP queue store keeps its segments in record files (`amqp::store`); Kafka
//! partitions keep batches verbatim in their own segments (`storage::segment`). Both are
//! written by the shard's one flusher task (`Storage::run_flusher`): each round writes
//! every dirty file, fdatasyncs the files someone waits on (one sync covers every waiter
//! of the round: group commit), then resolves the round's `Durable`s. Nothing here calls
//! back into protocol code: an appender gets a `Durable` and awaits or polls it.
//!
//! Appends are synchronous (they frame the record into the file's pending buffer and
//! wake the flusher); the record's position is known at once, so it can be read back
//! (`read`) once its `Durable` resolves. The last partial block of each file is kept in
//! memory and rewritten with the next write.
//!
//! A write or sync the disk refuses (ENOSPC) is not retried: the file is cut back to
//! where it was before the round, and the round's records and every record appended to
//! that file since resolve `Outcome::Failed`; later appends start again at the cut
//! (a record's position stays true). Owner shard only: `Rc`/`RefCell`, no locks.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};

use futures::future::join_all;
use glommio::io::DmaFile;

use super::disk::DiskGuard;
use super::{dma, frame};
use crate::util::notify::{Listener, Notify};

/// What an appender waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The record is written to the file (not necessarily fdatasync'ed).
    Written,
    /// The record is fdatasync'ed.
    Synced,
}

/// How an append ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    /// Written (and synced when that was asked), or no longer needed because its file
    /// was removed (nothing in it is read again).
    Stored,
    /// The disk refused the write or the sync: the record is not in the file.
    Failed,
}

struct Ticket {
    outcome: Cell<Outcome>,
    done: Notify,
}

/// A future outcome of an append, shared by every record of one file and round that
/// waits for the same thing (one allocation per round, not per record).
#[derive(Clone)]
pub struct Durable(Rc<Ticket>);

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Durable({:?})", self.outcome())
    }
}

impl Durable {
    /// An outcome already known (for appends that need no write, and test fakes).
    pub fn settled(outcome: Outcome) -> Durable {
        let d = Durable::new();
        d.resolve(outcome);
        d
    }

    fn new() -> Durable {
        Durable(Rc::new(Ticket {
            outcome: Cell::new(Outcome::Pending),
            done: Notify::new(),
        }))
    }

    fn resolve(&self, outcome: Outcome) {
        if self.0.outcome.get() == Outcome::Pending {
            self.0.outcome.set(outcome);
            self.0.done.notify();
        }
    }

    /// The outcome so far.
    pub fn outcome(&self) -> Outcome {
        self.0.outcome.get()
    }

    /// Waits for the outcome; true when stored.
    pub async fn wait(&self) -> bool {
        loop {
            let l = Listener::new();
            l.listen(&self.0.done);
            match self.outcome() {
                Outcome::Pending => l.await,
                o => return o == Outcome::Stored,
            }
        }
    }
}

pub type FileRef = Rc<RefCell<RecordFile>>;

/// One append-only file of framed records.
pub struct RecordFile {
    path: PathBuf,
    file: Option<Rc<DmaFile>>,
    /// Logical bytes appended: where the next record goes.
    size: u64,
    /// Logical bytes written to the file.
    written: u64,
    /// Framed records appended and not yet handed to a write.
    pending: Vec<u8>,
    /// The last partial block already on disk.
    partial: Vec<u8>,
    /// Recovered and not written since: `partial` is read back from the file before the
    /// first write.
    partial_unread: bool,
    unsynced: bool,
    /// Outcomes of the records in `pending`.
    on_written: Option<Durable>,
    on_synced: Option<Durable>,
    /// A round is writing it.
    busy: bool,
    removed: bool,
    /// Listed in the journal's dirty list.
    queued: bool,
    /// Listed in the journal's unsynced list.
    listed_unsynced: bool,
}

impl RecordFile {
    fn new(path: PathBuf) -> RecordFile {
        RecordFile {
            path,
            file: None,
            size: 0,
            written: 0,
            pending: Vec::new(),
            partial: Vec::new(),
            partial_unread: false,
            unsynced: false,
            on_written: None,
            on_synced: None,
            busy: false,
            removed: false,
            queued: false,
            listed_unsynced: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logical bytes appended.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fails (`failed`) or settles the outcomes of what is pending and forgets it.
    fn drop_pending(&mut self, outcome: Outcome) -> usize {
        let n = self.pending.len();
        self.pending = Vec::new();
        self.size = self.written;
        for d in [self.on_written.take(), self.on_synced.take()]
            .into_iter()
            .flatten()
        {
            d.resolve(outcome);
        }
        n
    }
}

/// A file opened by `recover`: its intact records are `data[..valid]`.
pub struct Recovered {
    pub file: FileRef,
    pub data: Vec<u8>,
    pub valid: usize,
}

/// One round's work on one file.
struct Job {
    file: FileRef,
    bytes: Vec<u8>,
    /// Where the file was before the round (length and last partial block), to cut back.
    before: (u64, Vec<u8>),
    on_written: Option<Durable>,
    on_synced: Option<Durable>,
    ok: bool,
}

/// The record files of one shard and their flusher state.
pub struct Journal {
    dirty: RefCell<Vec<FileRef>>,
    /// Files written since their last fdatasync (synced at shutdown).
    unsynced: RefCell<Vec<Weak<RefCell<RecordFile>>>>,
    /// Woken by appends; the shard's flusher listens.
    pub wake: Notify,
    /// Fired after every round.
    pub round_done: Notify,
    /// Bytes appended and not yet written.
    pending: Cell<usize>,
}

impl Default for Journal {
    fn default() -> Self {
        Self::new()
    }
}

impl Journal {
    pub fn new() -> Journal {
        Journal {
            dirty: RefCell::new(Vec::new()),
            unsynced: RefCell::new(Vec::new()),
            wake: Notify::new(),
            round_done: Notify::new(),
            pending: Cell::new(0),
        }
    }

    /// A new, empty record file at `path` (created on its first write).
    pub fn create(&self, path: PathBuf) -> FileRef {
        Rc::new(RefCell::new(RecordFile::new(path)))
    }

    /// Opens an existing record file: reads it, truncates a torn tail (logged when it is
    /// more than zero padding) and returns its intact content. Startup only (blocking
    /// reads, before the shard serves anything).
    pub fn recover(&self, path: PathBuf) -> std::io::Result<Recovered> {
        let data = std::fs::read(&path)?;
        let valid = {
            let mut it = frame::records(&data);
            it.by_ref().for_each(drop);
            it.valid()
        };
        let torn = data.len() - valid;
        if torn > 0 {
            if data[valid..].iter().any(|b| *b != 0) {
                log::warn!(
                    "{}: truncating torn tail of {torn} bytes at byte {valid}",
                    path.display()
                );
            }
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(valid as u64))?;
        }
        let mut f = RecordFile::new(path);
        f.size = valid as u64;
        f.written = valid as u64;
        f.partial_unread = true;
        Ok(Recovered {
            file: Rc::new(RefCell::new(f)),
            data,
            valid,
        })
    }

    /// Bytes of records appended and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.pending.get()
    }

    /// Appends one record that someone waits for; returns its frame's position and
    /// length in the file, and its outcome.
    pub fn append(&self, f: &FileRef, payload: &[u8], wait: Wait) -> (u64, u32, Durable) {
        let (at, len) = self.push(f, payload);
        let mut file = f.borrow_mut();
        if file.removed {
            // Nothing reads a removed file again: nothing to wait for.
            return (at, len, Durable::settled(Outcome::Stored));
        }
        let slot = match wait {
            Wait::Written => &mut file.on_written,
            Wait::Synced => &mut file.on_synced,
        };
        (at, len, slot.get_or_insert_with(Durable::new).clone())
    }

    /// Appends one record nobody waits for: written by the next round, synced with the
    /// next sync of its file (marks).
    pub fn append_unwaited(&self, f: &FileRef, payload: &[u8]) -> (u64, u32) {
        self.push(f, payload)
    }

    fn push(&self, f: &FileRef, payload: &[u8]) -> (u64, u32) {
        let (at, len, first) = {
            let mut file = f.borrow_mut();
            let at = file.size;
            if file.removed {
                return (at, 0);
            }
            let before = file.pending.len();
            frame::put(payload, &mut file.pending);
            let len = file.pending.len() - before;
            file.size += len as u64;
            let first = !file.queued;
            file.queued = true;
            (at, len as u32, first)
        };
        self.pending.set(self.pending.get() + len as usize);
        if first {
            self.dirty.borrow_mut().push(f.clone());
        }
        self.wake.notify();
        (at, len)
    }

    /// The file is no longer needed: its pending records are dropped (their outcomes
    /// settle as stored: nothing will read them) and it is deleted from disk, after the
    /// write in flight if there is one.
    pub fn remove(&self, f: &FileRef) {
        let (dropped, now) = {
            let mut file = f.borrow_mut();
            if file.removed {
                return;
            }
            file.removed = true;
            let n = file.drop_pending(Outcome::Stored);
            (n, !file.busy)
        };
        self.pending.set(self.pending.get().saturating_sub(dropped));
        if now {
            unlink(f.borrow().path.clone());
        }
    }

    /// Reads `len` bytes of framed record at `at` back and returns its payload.
    pub async fn read(&self, f: &FileRef, at: u64, len: u32) -> std::io::Result<Vec<u8>> {
        let (file, path) = {
            let file = f.borrow();
            if file.removed {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "segment is gone",
                ));
            }
            (file.file.clone(), file.path.clone())
        };
        let file = match file {
            Some(h) => h,
            None => {
                let h = dma::open_existing(&path).await?;
                let mut file = f.borrow_mut();
                file.file.get_or_insert(h).clone()
            }
        };
        let data = file
            .read_at(at, len as usize)
            .await
            .map_err(std::io::Error::from)?;
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "corrupt record");
        let (_, payload) = frame::records(&data).next().ok_or_else(bad)?;
        Ok(payload.to_vec())
    }

    /// Whether a round has work (for the flusher's idle wait).
    pub fn idle(&self) -> bool {
        self.dirty.borrow().is_empty()
    }

    /// One round: writes every dirty file, fdatasyncs those with a `Synced` waiter (all
    /// written ones with `sync_all`, at shutdown), then resolves the outcomes.
    pub async fn round(&self, disk: &DiskGuard, sync_all: bool) {
        let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        let mut jobs: Vec<Job> = Vec::with_capacity(dirty.len());
        for f in dirty {
            let job = {
                let mut file = f.borrow_mut();
                file.queued = false;
                if file.removed {
                    continue;
                }
                file.busy = true;
                Job {
                    bytes: std::mem::take(&mut file.pending),
                    before: (file.written, file.partial.clone()),
                    on_written: file.on_written.take(),
                    on_synced: file.on_synced.take(),
                    ok: true,
                    file: f.clone(),
                }
            };
            jobs.push(job);
        }
        join_all(jobs.iter_mut().map(write)).await;
        let mut to_sync: Vec<(usize, Rc<DmaFile>)> = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            if job.ok && (job.on_synced.is_some() || sync_all) {
                if let Some(h) = job.file.borrow().file.clone() {
                    to_sync.push((i, h));
                }
            }
        }
        let synced = join_all(to_sync.iter().map(|(_, h)| h.fdatasync())).await;
        for ((i, _), r) in to_sync.iter().zip(synced) {
            match r {
                Ok(()) => jobs[*i].file.borrow_mut().unsynced = false,
                Err(e) => {
                    log::error!(
                        "fdatasync {}: {}",
                        jobs[*i].file.borrow().path.display(),
                        std::io::Error::from(e)
                    );
                    jobs[*i].ok = false;
                }
            }
        }
        if sync_all {
            let rest: Vec<FileRef> = std::mem::take(&mut *self.unsynced.borrow_mut())
                .iter()
                .filter_map(Weak::upgrade)
                .collect();
            for f in rest {
                let h = {
                    let mut file = f.borrow_mut();
                    file.listed_unsynced = false;
                    if !file.unsynced || file.removed {
                        continue;
                    }
                    file.file.clone()
                };
                if let Some(h) = h {
                    if h.fdatasync().await.is_ok() {
                        f.borrow_mut().unsynced = false;
                    }
                }
            }
        }
        for job in jobs {
            self.finish(disk, job).await;
        }
        self.round_done.notify();
    }

    /// Settles one file's round: outcomes, cut-back on failure, deferred removal.
    async fn finish(&self, disk: &DiskGuard, job: Job) {
        self.pending
            .set(self.pending.get().saturating_sub(job.bytes.len()));
        if !job.ok {
            disk.write_failed();
            let (handle, path, len) = {
                let mut file = job.file.borrow_mut();
                file.written = job.before.0;
                file.partial = job.before.1.clone();
                file.unsynced = true;
                // Records appended since the round began sit past the cut: they go too.
                let n = file.drop_pending(Outcome::Failed);
                self.pending.set(self.pending.get().saturating_sub(n));
                (file.file.clone(), file.path.clone(), file.written)
            };
            if let Some(h) = handle {
                if let Err(e) = h.truncate(len).await {
                    log::error!("cutting {} back to {len} bytes: {e}", path.display());
                }
            }
        } else if !job.bytes.is_empty() {
            let mut file = job.file.borrow_mut();
            if file.unsynced && !file.listed_unsynced {
                file.listed_unsynced = true;
                let mut list = self.unsynced.borrow_mut();
                if list.len() >= 64 && list.len().is_power_of_two() {
                    list.retain(|w| w.strong_count() > 0);
                }
                list.push(Rc::downgrade(&job.file));
            }
        }
        let outcome = if job.ok {
            Outcome::Stored
        } else {
            Outcome::Failed
        };
        for d in [job.on_written, job.on_synced].into_iter().flatten() {
            d.resolve(outcome);
        }
        let remove = {
            let mut file = job.file.borrow_mut();
            file.busy = false;
            file.removed
        };
        if remove {
            unlink(job.file.borrow().path.clone());
        }
    }
}

/// Writes a job's bytes after the file's partial block.
async fn write(job: &mut Job) {
    if job.bytes.is_empty() {
        return;
    }
    let (handle, path) = {
        let file = job.file.borrow();
        (file.file.clone(), file.path.clone())
    };
    let handle = match handle {
        Some(h) => h,
        None => match dma::open(&path).await {
            Ok(h) => {
                job.file.borrow_mut().file = Some(h.clone());
                h
            }
            Err(e) => {
                log::error!("opening {}: {e}", path.display());
                job.ok = false;
                return;
            }
        },
    };
    if job.file.borrow().partial_unread {
        // The first write after recovery rewrites the file's last partial block.
        let written = job.file.borrow().written;
        match dma::read_partial_block(&handle, written).await {
            Ok(partial) => {
                let mut file = job.file.borrow_mut();
                file.partial = partial;
                file.partial_unread = false;
                job.before.1 = file.partial.clone();
            }
            Err(e) => {
                log::error!("reading back the last block of {}: {e}", path.display());
                job.ok = false;
                return;
            }
        }
    }
    let (position, partial) = {
        let file = job.file.borrow();
        (
            file.written - file.partial.len() as u64,
            file.partial.clone(),
        )
    };
    let parts = [&partial[..], &job.bytes[..]];
    match dma::write_aligned(&handle, position, &parts).await {
        Ok(()) => {
            let mut file = job.file.borrow_mut();
            file.written += job.bytes.len() as u64;
            file.partial = dma::partial_block(&parts, file.written, handle.alignment());
            file.unsynced = true;
        }
        Err(e) => {
            log::error!("writing {}: {e}", path.display());
            job.ok = false;
        }
    }
}

fn unlink(path: PathBuf) {
    glommio::spawn_local(async move {
        if let Err(e) = glommio::io::remove(&path).await {
            let e = std::io::Error::from(e);
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("removing {}: {e}", path.display());
            }
        }
    })
    .detach();
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn rounds_resolve_futures_and_recovery_reads_back_and_cuts_torn_tails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("q").join("00000000000000000000.log");
        let root = dir.path().to_owned();
        run(move || async move {
            // As on a shard: the thread's first DMA open is of a file with data.
            crate::storage::probe_dma(&root).await;
            let disk = DiskGuard::new(root, 0);
            let j = Journal::new();
            let f = j.create(path.clone());
            let (at0, len0, synced) = j.append(&f, b"first", Wait::Synced);
            let (at1, _, written) = j.append(&f, b"second", Wait::Written);
            let (_, _, same) = j.append(&f, b"third", Wait::Synced);
            assert_eq!((at0, len0, at1), (0, 13, 13));
            assert_eq!(synced.outcome(), Outcome::Pending);
            assert!(j.pending_bytes() > 0);
            j.round(&disk, false).await;
            assert!(synced.wait().await && written.wait().await && same.wait().await);
            assert_eq!(j.pending_bytes(), 0);
            assert_eq!(j.read(&f, at1, 14).await.unwrap(), b"second");
            // A later round rewrites the partial block and appends after it.
            let (at3, _, more) = j.append(&f, b"fourth", Wait::Written);
            j.round(&disk, true).await;
            assert!(more.wait().await);
            assert_eq!(j.read(&f, at3, 14).await.unwrap(), b"fourth");
            drop(f);

            // A torn record after the intact ones is cut off; appends resume there.
            let mut data = std::fs::read(&path).unwrap();
            let end = frame::records(&data)
                .map(|(at, p)| at + 8 + p.len())
                .last()
                .unwrap();
            data.truncate(end);
            data.extend_from_slice(&[0, 0, 0, 40, 1, 2, 3]);
            std::fs::write(&path, &data).unwrap();
            let r = j.recover(path.clone()).unwrap();
            let payloads: Vec<&[u8]> = frame::split(&r.data[..r.valid]).0;
            assert_eq!(
                payloads,
                vec![&b"first"[..], b"second", b"third", b"fourth"]
            );
            assert_eq!(std::fs::metadata(&path).unwrap().len(), end as u64);
            let (at4, _, fifth) = j.append(&r.file, b"fifth", Wait::Synced);
            assert_eq!(at4, end as u64);
            j.round(&disk, false).await;
            assert!(fifth.wait().await);
            let again = j.recover(path.clone()).unwrap();
            assert_eq!(frame::split(&again.data[..again.valid]).0.len(), 5);

            // A removed file settles what was pending and leaves the disk.
            let (_, _, dropped) = j.append(&r.file, b"sixth", Wait::Synced);
            j.remove(&r.file);
            assert!(dropped.wait().await);
            assert_eq!(j.pending_bytes(), 0);
            glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
            assert!(!path.exists());
        });
    }
}

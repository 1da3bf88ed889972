//! The message store of one shard's durable queues: persistent messages (and transient
//! ones paged out of memory), acks and delivery marks, kept in segments of record files
//! written by the shard's storage engine (`storage::journal`: DMA appends, one framing,
//! group commit by the shard's one flusher, torn-tail recovery).
//!
//! Layout (see `shards/README.md`): `<data>/<shard>/amqp/<vhost>/<queue>/` holds
//! `queue.meta` (id, vhost, name) and segments named, like Kafka's, by the first entry
//! they hold — here the queue sequence number of their first message: `<base>.log`
//! (message records) and `<base>.marks` (ack and delivered marks for the messages of
//! that segment). A segment rolls at `amqp.segment_bytes`; a segment whose messages are
//! all acked is deleted, so an old unacked message never holds newer files on disk.
//!
//! Why segments have two files: acks of a segment's messages arrive long after newer
//! segments began. Kept beside the messages they mark, they go with them; in one log they
//! would pin every segment holding an ack of a still-live message.
//!
//! Only the queue's owner shard touches its files. Appends are synchronous and hand back
//! a `Durable` (the record written; fdatasync'ed when a confirm waits): the queue side
//! (`amqp::owner::Stored`) awaits it to send confirms, drop paged bodies, or take back
//! messages whose write failed. This store never calls queue code. Acks and delivered
//! marks are batched per segment and appended to the journal before the next message
//! append or on the next turn of the executor, so a round that syncs a confirmed message
//! carries the marks made before it.
//!
//! Recovery and the upgrade of older queue directories are in `recovery.rs`; record
//! payloads in `record.rs`.

mod record;
mod recovery;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;

use self::record::{encode_marks, encode_message, FLAG_TRANSIENT, REC_ACK, REC_DELIVERED};
pub use self::recovery::{migrate, recover};
use super::queue::Entry;
use super::routing::QueueRef;
use crate::broker::Shard;
use crate::config::Config;
use crate::storage::journal::{Durable, FileRef, Journal, Wait};
use crate::util::notify::Notify;

const META: &str = "queue.meta";

/// Where a message record is: the base of its segment, byte offset of its frame, frame
/// length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

struct Segment {
    msgs: FileRef,
    marks: FileRef,
    /// Messages of this segment not yet acked.
    live: u64,
    acks_pending: Vec<u64>,
    delivered_pending: Vec<u64>,
}

impl Segment {
    fn new(journal: &Journal, dir: &std::path::Path, base: u64) -> Segment {
        Segment {
            msgs: journal.create(log_path(dir, base)),
            marks: journal.create(marks_path(dir, base)),
            live: 0,
            acks_pending: Vec::new(),
            delivered_pending: Vec::new(),
        }
    }
}

fn log_path(dir: &std::path::Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn marks_path(dir: &std::path::Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.marks"))
}

/// One durable queue's segments.
struct QueueLog {
    dir: PathBuf,
    /// By base (the sequence number of the segment's first message).
    segments: BTreeMap<u64, Segment>,
    active: u64,
    /// Listed in `Marks::queued`.
    marked: bool,
    /// Bases of the segments with marks in `acks_pending`/`delivered_pending`.
    marked_segments: Vec<u64>,
}

impl QueueLog {
    fn segment_of(&self, seq: u64) -> Option<u64> {
        self.segments.range(..=seq).next_back().map(|(no, _)| *no)
    }
}

type LogRef = Rc<RefCell<QueueLog>>;

pub struct Store {
    root: PathBuf,
    segment_bytes: u64,
    logs: RefCell<HashMap<u64, LogRef>>,
    /// The shard's record journal; the storage flusher writes it (`Storage::adopt`, at
    /// recovery).
    journal: Rc<Journal>,
    marks: Rc<Marks>,
}

/// Queues with ack or delivered marks not yet appended to the journal.
#[derive(Default)]
struct Marks {
    queued: RefCell<Vec<LogRef>>,
    /// A deferred `flush` is spawned.
    scheduled: Cell<bool>,
}

impl Marks {
    /// Appends every listed queue's pending marks to the journal, one record per kind
    /// and segment.
    fn flush(&self, journal: &Journal) {
        let queued = std::mem::take(&mut *self.queued.borrow_mut());
        for l in queued {
            let mut log = l.borrow_mut();
            let log = &mut *log;
            log.marked = false;
            for base in std::mem::take(&mut log.marked_segments) {
                // Gone meanwhile: all its messages were acked, its marks go with it.
                let Some(seg) = log.segments.get_mut(&base) else {
                    continue;
                };
                for (kind, seqs) in [
                    (REC_ACK, std::mem::take(&mut seg.acks_pending)),
                    (REC_DELIVERED, std::mem::take(&mut seg.delivered_pending)),
                ] {
                    if !seqs.is_empty() {
                        journal.append_unwaited(&seg.marks, &encode_marks(kind, &seqs));
                    }
                }
            }
        }
    }
}

/// A path component for a vhost or queue name: bytes outside `[A-Za-z0-9._-]` are
/// percent-encoded; very long names are cut and suffixed with their hash (the real
/// names are in `queue.meta`).
pub fn dir_name(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    if out.len() > 180 {
        let h = crate::util::stable_hash(name.as_bytes());
        out.truncate(160);
        while !out.is_char_boundary(out.len()) {
            out.pop();
        }
        out.push_str(&format!("~{h:016x}"));
    }
    out
}

impl Store {
    pub fn new(config: &Config, shard: usize) -> Store {
        Store {
            root: config.data_dir.join(shard.to_string()).join("amqp"),
            segment_bytes: config.amqp.segment_bytes,
            logs: RefCell::new(HashMap::new()),
            journal: Rc::new(Journal::new()),
            marks: Rc::new(Marks::default()),
        }
    }

    /// Bytes of records queued for writing and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.journal.pending_bytes()
    }

    /// Fired after every round of the flusher that writes this store.
    pub fn round_done(&self) -> &Notify {
        &self.journal.round_done
    }

    fn queue_dir(&self, q: &QueueRef) -> PathBuf {
        self.root.join(dir_name(&q.vhost)).join(dir_name(&q.name))
    }

    fn log(&self, q: &QueueRef) -> LogRef {
        if let Some(l) = self.logs.borrow().get(&q.id) {
            return l.clone();
        }
        let dir = self.queue_dir(q);
        // A directory left by an older queue of the same name is stale.
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| {
            std::fs::write(
                dir.join(META),
                format!("{}\n{}\n{}\n", q.id, q.vhost, q.name),
            )
        }) {
            log::error!("creating {}: {e}", dir.display());
        }
        let mut segments = BTreeMap::new();
        segments.insert(0, Segment::new(&self.journal, &dir, 0));
        let l = Rc::new(RefCell::new(QueueLog {
            dir,
            segments,
            active: 0,
            marked: false,
            marked_segments: Vec::new(),
        }));
        self.logs.borrow_mut().insert(q.id, l.clone());
        l
    }

    /// Queues a message for writing: a persistent one or, with `transient`, one paged
    /// out of memory. Returns where it goes and its outcome: written, or with `synced`
    /// fdatasync'ed (a publisher confirm waits on it).
    pub fn append(
        &self,
        q: &QueueRef,
        e: &Entry,
        transient: bool,
        synced: bool,
    ) -> (Location, Durable) {
        // Marks made before this message go to the journal before it.
        self.flush_marks();
        let l = self.log(q);
        let mut log = l.borrow_mut();
        let flags = if transient { FLAG_TRANSIENT } else { 0 };
        let payload = encode_message(e.seq, e.expires_at, &e.msg, flags);
        let active = log.active;
        let roll = log
            .segments
            .get(&active)
            .map(|s| {
                let size = s.msgs.borrow().size();
                size > 0 && size + payload.len() as u64 > self.segment_bytes
            })
            .unwrap_or(true);
        if roll {
            let base = e.seq.max(active + 1);
            let seg = Segment::new(&self.journal, &log.dir, base);
            log.segments.insert(base, seg);
            log.active = base;
            // The old active segment may already be fully acked.
            if log.segments.get(&active).is_some_and(|s| s.live == 0) {
                if let Some(old) = log.segments.remove(&active) {
                    self.delete_segment(old);
                }
            }
        }
        let base = log.active;
        let wait = if synced { Wait::Synced } else { Wait::Written };
        let log = &mut *log;
        // The active segment is always in the map; `or_insert_with` only keeps this total.
        let seg = log
            .segments
            .entry(base)
            .or_insert_with(|| Segment::new(&self.journal, &log.dir, base));
        let (offset, len, durable) = self.journal.append(&seg.msgs, &payload, wait);
        seg.live += 1;
        (
            Location {
                segment: base,
                offset,
                len,
            },
            durable,
        )
    }

    /// Reads a message body back from disk (paging in).
    pub async fn read(&self, q: &QueueRef, loc: Location) -> std::io::Result<Bytes> {
        let gone = || std::io::Error::new(std::io::ErrorKind::NotFound, "segment is gone");
        let l = self.logs.borrow().get(&q.id).cloned().ok_or_else(gone)?;
        let file = {
            let log = l.borrow();
            log.segments
                .get(&loc.segment)
                .ok_or_else(gone)?
                .msgs
                .clone()
        };
        let payload = self.journal.read(&file, loc.offset, loc.len).await?;
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "corrupt message record");
        let r = record::decode_message(&payload).ok_or_else(bad)?;
        Ok(r.msg.body_bytes())
    }

    /// A persistent message left the queue.
    pub fn ack(&self, q: &QueueRef, seq: u64) {
        let Some(l) = self.logs.borrow().get(&q.id).cloned() else {
            return;
        };
        let mut log = l.borrow_mut();
        let Some(no) = log.segment_of(seq) else {
            return;
        };
        let active = log.active;
        let empty = match log.segments.get_mut(&no) {
            Some(seg) => {
                let first = seg.acks_pending.is_empty() && seg.delivered_pending.is_empty();
                seg.acks_pending.push(seq);
                seg.live = seg.live.saturating_sub(1);
                if first {
                    log.marked_segments.push(no);
                }
                log.segments.get(&no).is_some_and(|s| s.live == 0) && no != active
            }
            None => false,
        };
        if empty {
            if let Some(seg) = log.segments.remove(&no) {
                self.delete_segment(seg);
            }
        }
        self.marked(&l, &mut log);
    }

    /// A persistent message was delivered and requeued: it comes back redelivered after a
    /// restart.
    pub fn delivered(&self, q: &QueueRef, seq: u64) {
        let Some(l) = self.logs.borrow().get(&q.id).cloned() else {
            return;
        };
        let mut log = l.borrow_mut();
        if let Some(no) = log.segment_of(seq) {
            if let Some(seg) = log.segments.get_mut(&no) {
                let first = seg.acks_pending.is_empty() && seg.delivered_pending.is_empty();
                seg.delivered_pending.push(seq);
                if first {
                    log.marked_segments.push(no);
                }
            }
        }
        self.marked(&l, &mut log);
    }

    /// Lists a queue with new marks; they reach the journal before the next message
    /// append or on the executor's next turn.
    fn marked(&self, l: &LogRef, log: &mut QueueLog) {
        if !log.marked {
            log.marked = true;
            self.marks.queued.borrow_mut().push(l.clone());
        }
        if !self.marks.scheduled.replace(true) {
            let (marks, journal) = (self.marks.clone(), self.journal.clone());
            super::spawn_later(async move {
                marks.scheduled.set(false);
                marks.flush(&journal);
            });
        }
    }

    fn flush_marks(&self) {
        self.marks.flush(&self.journal);
    }

    fn delete_segment(&self, seg: Segment) {
        self.journal.remove(&seg.msgs);
        self.journal.remove(&seg.marks);
    }

    /// The queue was deleted: its files go.
    pub fn remove_queue(&self, _shard: &Rc<Shard>, q: &QueueRef) {
        let Some(l) = self.logs.borrow_mut().remove(&q.id) else {
            return;
        };
        let dir = {
            let log = l.borrow();
            for seg in log.segments.values() {
                self.journal.remove(&seg.msgs);
                self.journal.remove(&seg.marks);
            }
            log.dir.clone()
        };
        super::spawn_later(async move {
            let r = glommio::executor()
                .spawn_blocking(move || std::fs::remove_dir_all(&dir))
                .await;
            if let Err(e) = r {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("removing queue files: {e}");
                }
            }
        });
    }

    /// Clean stop: writes and syncs everything (after the storage flusher stopped).
    pub async fn shutdown(&self, shard: &Rc<Shard>) {
        self.flush_marks();
        self.journal.round(&shard.storage.disk, true).await;
    }
}

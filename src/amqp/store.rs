//! The message store of one shard's durable queues: persistent messages, acks and
//! delivery marks, written with glommio DMA files (O_DIRECT through io_uring) by one
//! flusher task per shard, fdatasync'ed with group commit before publisher confirms.
//!
//! Layout (see `shards/README.md`): `<data>/<shard>/amqp/<vhost>/<queue>/` holds
//! `queue.meta` (id, vhost, name) and numbered segments, each a `.msgs` file (message
//! records) and a `.acks` file (ack and delivered marks for the messages of that
//! segment). A segment whose messages are all acked is deleted. Records are framed
//! `len u32 BE | crc32 u32 BE | payload`; recovery stops a file at the first short,
//! zero-length or corrupt record and truncates it there.
//!
//! Only the queue's owner shard touches its files. Appends are synchronous (they queue
//! bytes and wake the flusher); the flusher writes block-aligned (the last partial block
//! is kept in memory and rewritten with the next write), syncs the files that publishers
//! wait on, then sends their confirms through the outbox.
//!
//! A write or sync the disk refuses (ENOSPC) is not retried: the round's message files are
//! cut back to where they were, every publisher waiting on them (and on messages appended
//! since) gets `basic.nack`, and those persistent messages leave their queue
//! (`QueueState::store_failed`), so nothing nacked is ever delivered from disk or
//! recovered later.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use futures::future::join_all;
use glommio::io::{DmaFile, OpenOptions};

use super::mesh::ConfirmTo;
use super::message::Message;
use super::queue::{confirm_to, Entry};
use super::routing::QueueRef;
use super::{owner, queue_owner};
use crate::broker::Shard;
use crate::config::Config;
use crate::util::notify::{Listener, Notify};

const META: &str = "queue.meta";
const REC_MESSAGE: u8 = 1;
const REC_ACK: u8 = 2;
const REC_DELIVERED: u8 = 3;
/// Flag of a message record written only to page a transient message out of memory:
/// recovery skips it.
const FLAG_TRANSIENT: u8 = 1;

/// Where a message record is: segment number, byte offset of its frame, frame length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// Appends to one file with block-aligned O_DIRECT writes.
struct Appender {
    path: PathBuf,
    file: Option<Rc<DmaFile>>,
    /// Logical bytes on disk.
    written: u64,
    /// The last partial block's bytes (already on disk), rewritten with the next write.
    partial: Vec<u8>,
    /// After recovery: the file's last bytes, from which `partial` is cut once the
    /// file's alignment is known.
    tail: Option<Vec<u8>>,
    unsynced: bool,
}

impl Appender {
    fn new(path: PathBuf) -> Appender {
        Appender {
            path,
            file: None,
            written: 0,
            partial: Vec::new(),
            tail: None,
            unsynced: false,
        }
    }

    async fn open(&mut self) -> std::io::Result<Rc<DmaFile>> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(&self.path)
            .await
            .map_err(std::io::Error::from)?;
        let f = Rc::new(f);
        if let Some(tail) = self.tail.take() {
            let keep = (self.written % f.alignment()) as usize;
            self.partial = tail[tail.len().saturating_sub(keep)..].to_vec();
        }
        self.file = Some(f.clone());
        Ok(f)
    }

    async fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let file = self.open().await?;
        let align = file.alignment() as usize;
        let start = self.written - self.partial.len() as u64;
        let total = self.partial.len() + data.len();
        let len = total.div_ceil(align) * align;
        let mut buf = file.alloc_dma_buffer(len);
        let bytes = buf.as_bytes_mut();
        bytes[..self.partial.len()].copy_from_slice(&self.partial);
        bytes[self.partial.len()..total].copy_from_slice(data);
        bytes[total..].fill(0);
        // `start` is block-aligned, so the new partial block is the last `total % align`
        // bytes written.
        let partial = bytes[total - total % align..total].to_vec();
        let n = file
            .write_at(buf, start)
            .await
            .map_err(std::io::Error::from)?;
        if n < len {
            // O_DIRECT on a filling disk writes the blocks it could allocate and stops.
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.written += data.len() as u64;
        self.partial = partial;
        self.unsynced = true;
        Ok(())
    }

    async fn sync(&mut self) -> std::io::Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        if let Some(f) = &self.file {
            f.fdatasync().await.map_err(std::io::Error::from)?;
        }
        self.unsynced = false;
        Ok(())
    }
}

struct Segment {
    msgs_pending: Pending,
    /// Sequence numbers of the messages in `msgs_pending`.
    pending_seqs: Vec<u64>,
    acks_pending: Vec<u64>,
    delivered_pending: Vec<u64>,
    /// Taken out while the flusher writes.
    msgs: Option<Appender>,
    acks: Option<Appender>,
    size: u64,
    /// Messages of this segment not yet acked.
    live: u64,
    /// Logical bytes of `.msgs` on disk (records below it can be read back).
    written: u64,
    /// A read handle for paging messages back in.
    reader: Option<Rc<DmaFile>>,
}

impl Segment {
    fn new(dir: &Path, no: u64, pending: &Rc<Cell<usize>>) -> Segment {
        Segment {
            msgs_pending: Pending::new(pending),
            pending_seqs: Vec::new(),
            acks_pending: Vec::new(),
            delivered_pending: Vec::new(),
            msgs: Some(Appender::new(dir.join(format!("{no:020}.msgs")))),
            acks: Some(Appender::new(dir.join(format!("{no:020}.acks")))),
            size: 0,
            live: 0,
            written: 0,
            reader: None,
        }
    }
}

/// One durable queue's files.
struct QueueLog {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    active: u64,
    /// First sequence number of each segment, to find a message's segment.
    first_seq: BTreeMap<u64, u64>,
    /// Confirms waiting for the bytes now pending.
    waiters: Vec<ConfirmTo>,
    /// Messages to drop from memory once written: (seq, where).
    page_out: Vec<(u64, Location)>,
    qid: u64,
    deleted: bool,
}

impl QueueLog {
    fn segment_of(&self, seq: u64) -> Option<u64> {
        self.first_seq.range(..=seq).next_back().map(|(_, no)| *no)
    }
}

type LogRef = Rc<RefCell<QueueLog>>;

pub struct Store {
    root: PathBuf,
    segment_bytes: u64,
    logs: RefCell<HashMap<u64, LogRef>>,
    dirty: RefCell<Vec<LogRef>>,
    wake: Notify,
    stopping: Cell<bool>,
    /// Fired after every flusher round.
    pub round_done: Notify,
    /// Bytes of message records appended and not yet written (`Pending` buffers).
    pending: Rc<Cell<usize>>,
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

/// Framed message records waiting for the flusher. Their bytes are counted in the
/// store's `pending` from the append until the buffer is dropped (after its write, or
/// with its segment): memory the shard's budget must see as well as the queued bodies.
struct Pending {
    buf: Vec<u8>,
    count: Rc<Cell<usize>>,
}

impl Pending {
    fn new(count: &Rc<Cell<usize>>) -> Pending {
        Pending {
            buf: Vec::new(),
            count: count.clone(),
        }
    }

    fn push_frame(&mut self, payload: &[u8]) {
        let before = self.buf.len();
        frame(payload, &mut self.buf);
        self.count.set(self.count.get() + (self.buf.len() - before));
    }

    /// The records so far, for the flusher; this one starts empty again.
    fn take(&mut self) -> Pending {
        Pending {
            buf: std::mem::take(&mut self.buf),
            count: self.count.clone(),
        }
    }
}

impl std::ops::Deref for Pending {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.count
            .set(self.count.get().saturating_sub(self.buf.len()));
    }
}

fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Splits framed records; returns them and the length of the valid prefix.
fn unframe(data: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while data.len() - at >= 8 {
        let len = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let crc = u32::from_be_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        if len == 0 {
            break;
        }
        let Some(payload) = data.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        out.push(payload);
        at += 8 + len;
    }
    (out, at)
}

fn encode_message(seq: u64, expires_at: Option<i64>, m: &Message, flags: u8) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + m.size());
    p.put_u8(REC_MESSAGE);
    p.put_u8(flags);
    p.put_u64(seq);
    p.put_u8(m.priority);
    p.put_i64(expires_at.unwrap_or(-1));
    p.put_i64(m.expiration.map(|e| e as i64).unwrap_or(-1));
    p.put_u16(m.exchange.len() as u16);
    p.extend_from_slice(&m.exchange);
    p.put_u16(m.routing_key.len() as u16);
    p.extend_from_slice(&m.routing_key);
    p.put_u32(m.properties.len() as u32);
    p.extend_from_slice(&m.properties);
    p.put_u32(m.body.len() as u32);
    p.extend_from_slice(&m.body);
    p
}

/// A recovered message: (flags, seq, expires_at, message).
fn decode_message(mut p: &[u8]) -> Option<(u8, u64, Option<i64>, Message)> {
    fn take(p: &mut &[u8], n: usize) -> Option<Bytes> {
        if p.len() < n {
            return None;
        }
        let b = Bytes::copy_from_slice(&p[..n]);
        p.advance(n);
        Some(b)
    }
    if p.len() < 2 + 8 + 1 + 8 + 8 || p[0] != REC_MESSAGE {
        return None;
    }
    p.advance(1);
    let flags = p.get_u8();
    let seq = p.get_u64();
    let priority = p.get_u8();
    let expires_at = p.get_i64();
    let expiration = p.get_i64();
    if p.len() < 2 {
        return None;
    }
    let n = p.get_u16() as usize;
    let exchange = take(&mut p, n)?;
    if p.len() < 2 {
        return None;
    }
    let n = p.get_u16() as usize;
    let routing_key = take(&mut p, n)?;
    if p.len() < 4 {
        return None;
    }
    let n = p.get_u32() as usize;
    let properties = take(&mut p, n)?;
    if p.len() < 4 {
        return None;
    }
    let n = p.get_u32() as usize;
    let body = take(&mut p, n)?;
    Some((
        flags,
        seq,
        (expires_at >= 0).then_some(expires_at),
        Message {
            exchange,
            routing_key,
            properties,
            body,
            persistent: true,
            priority,
            expiration: (expiration >= 0).then_some(expiration as u64),
        },
    ))
}

fn encode_marks(kind: u8, seqs: &[u64], out: &mut Vec<u8>) {
    if seqs.is_empty() {
        return;
    }
    let mut p = Vec::with_capacity(5 + seqs.len() * 8);
    p.put_u8(kind);
    p.put_u32(seqs.len() as u32);
    for s in seqs {
        p.put_u64(*s);
    }
    frame(&p, out);
}

impl Store {
    pub fn new(config: &Config, shard: usize) -> Store {
        Store {
            root: config.data_dir.join(shard.to_string()).join("amqp"),
            segment_bytes: config.amqp.segment_bytes,
            logs: RefCell::new(HashMap::new()),
            dirty: RefCell::new(Vec::new()),
            wake: Notify::new(),
            stopping: Cell::new(false),
            round_done: Notify::new(),
            pending: Rc::new(Cell::new(0)),
        }
    }

    /// Bytes of message records queued for writing and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.pending.get()
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
        segments.insert(0, Segment::new(&dir, 0, &self.pending));
        let mut first_seq = BTreeMap::new();
        first_seq.insert(0, 0);
        let l = Rc::new(RefCell::new(QueueLog {
            dir,
            segments,
            active: 0,
            first_seq,
            waiters: Vec::new(),
            page_out: Vec::new(),
            qid: q.id,
            deleted: false,
        }));
        self.logs.borrow_mut().insert(q.id, l.clone());
        l
    }

    fn mark_dirty(&self, l: &LogRef) {
        self.dirty.borrow_mut().push(l.clone());
        self.wake.notify();
    }

    /// Queues a message for writing: a persistent one (its confirm goes out after
    /// fdatasync) or, with `transient`, one paged out of memory. Returns where it goes.
    pub fn append(
        &self,
        q: &QueueRef,
        e: &Entry,
        confirm: Option<ConfirmTo>,
        transient: bool,
    ) -> Location {
        let l = self.log(q);
        let loc;
        {
            let mut log = l.borrow_mut();
            let flags = if transient { FLAG_TRANSIENT } else { 0 };
            let payload = encode_message(e.seq, e.expires_at, &e.msg, flags);
            let active = log.active;
            let roll = log
                .segments
                .get(&active)
                .map(|s| s.size > 0 && s.size + payload.len() as u64 > self.segment_bytes)
                .unwrap_or(true);
            if roll {
                let no = active + 1;
                let seg = Segment::new(&log.dir, no, &self.pending);
                log.segments.insert(no, seg);
                log.first_seq.insert(e.seq, no);
                log.active = no;
                // The old active segment may already be fully acked.
                if log
                    .segments
                    .get(&active)
                    .map(|s| s.live == 0)
                    .unwrap_or(false)
                {
                    if let Some(old) = log.segments.remove(&active) {
                        delete_segment(old);
                    }
                    log.first_seq.retain(|_, n| *n != active);
                }
            }
            let no = log.active;
            let mut at = Location::default();
            if let Some(seg) = log.segments.get_mut(&no) {
                at = Location {
                    segment: no,
                    offset: seg.size,
                    len: payload.len() as u32 + 8,
                };
                seg.msgs_pending.push_frame(&payload);
                seg.pending_seqs.push(e.seq);
                seg.size += payload.len() as u64 + 8;
                seg.live += 1;
            }
            loc = at;
            if let Some(c) = confirm {
                log.waiters.push(c);
            }
        }
        self.mark_dirty(&l);
        loc
    }

    /// Once the message at `loc` is written, its queue drops the body from memory.
    pub fn page_out_when_written(&self, q: &QueueRef, seq: u64, loc: Location) {
        if let Some(l) = self.logs.borrow().get(&q.id) {
            l.borrow_mut().page_out.push((seq, loc));
        }
    }

    /// Reads a message body back from disk (paging in).
    pub async fn read(&self, q: &QueueRef, loc: Location) -> std::io::Result<Bytes> {
        let gone = || std::io::Error::new(std::io::ErrorKind::NotFound, "segment is gone");
        let l = self.logs.borrow().get(&q.id).cloned().ok_or_else(gone)?;
        let (reader, path) = {
            let log = l.borrow();
            let seg = log.segments.get(&loc.segment).ok_or_else(gone)?;
            let path = log.dir.join(format!("{:020}.msgs", loc.segment));
            (seg.reader.clone(), path)
        };
        let reader = match reader {
            Some(r) => r,
            None => {
                let f = Rc::new(
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .dma_open(&path)
                        .await
                        .map_err(std::io::Error::from)?,
                );
                if let Some(seg) = l.borrow_mut().segments.get_mut(&loc.segment) {
                    seg.reader = Some(f.clone());
                }
                f
            }
        };
        let data = reader
            .read_at(loc.offset, loc.len as usize)
            .await
            .map_err(std::io::Error::from)?;
        let (records, _) = unframe(&data);
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "corrupt message record");
        let rec = records.first().ok_or_else(bad)?;
        let (_, _, _, m) = decode_message(rec).ok_or_else(bad)?;
        Ok(m.body)
    }

    /// A persistent message left the queue.
    pub fn ack(&self, q: &QueueRef, seq: u64) {
        let Some(l) = self.logs.borrow().get(&q.id).cloned() else {
            return;
        };
        {
            let mut log = l.borrow_mut();
            let Some(no) = log.segment_of(seq) else {
                return;
            };
            let active = log.active;
            let empty = match log.segments.get_mut(&no) {
                Some(seg) => {
                    seg.acks_pending.push(seq);
                    seg.live = seg.live.saturating_sub(1);
                    seg.live == 0 && no != active
                }
                None => false,
            };
            if empty {
                if let Some(seg) = log.segments.remove(&no) {
                    delete_segment(seg);
                }
                log.first_seq.retain(|_, n| *n != no);
            }
        }
        self.mark_dirty(&l);
    }

    /// A persistent message was delivered and requeued: it comes back redelivered after a
    /// restart.
    pub fn delivered(&self, q: &QueueRef, seq: u64) {
        let Some(l) = self.logs.borrow().get(&q.id).cloned() else {
            return;
        };
        {
            let mut log = l.borrow_mut();
            if let Some(no) = log.segment_of(seq) {
                if let Some(seg) = log.segments.get_mut(&no) {
                    seg.delivered_pending.push(seq);
                }
            }
        }
        self.mark_dirty(&l);
    }

    /// The queue was deleted: its files go.
    pub fn remove_queue(&self, _shard: &Rc<Shard>, q: &QueueRef) {
        let removed = self.logs.borrow_mut().remove(&q.id);
        let dir = match removed {
            Some(l) => {
                let mut log = l.borrow_mut();
                log.deleted = true;
                log.dir.clone()
            }
            None => return,
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

    /// The flusher task of this shard's store; ends after `shutdown`.
    pub async fn run_flusher(shard: Rc<Shard>) {
        let store = &shard.amqp.store;
        loop {
            let l = Listener::new();
            l.listen(&store.wake);
            if store.dirty.borrow().is_empty() {
                if store.stopping.get() {
                    break;
                }
                let _ = glommio::timer::timeout(Duration::from_millis(200), async {
                    l.await;
                    Ok(())
                })
                .await;
            }
            store.round(&shard, false).await;
        }
    }

    async fn round(&self, shard: &Rc<Shard>, sync_all: bool) {
        let mut dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        dirty.sort_by_key(|l| Rc::as_ptr(l) as usize);
        dirty.dedup_by_key(|l| Rc::as_ptr(l) as usize);
        if sync_all {
            dirty = self.logs.borrow().values().cloned().collect();
        }
        join_all(dirty.iter().map(|l| flush_log(shard, l, sync_all))).await;
        self.round_done.notify();
    }

    /// Clean stop: writes and syncs everything; the flusher exits after.
    pub async fn shutdown(&self, shard: &Rc<Shard>) {
        self.stopping.set(true);
        self.wake.notify();
        self.round(shard, true).await;
    }
}

/// Moves queue directories to their owner shard when the shard count changed (ownership
/// is a hash onto the shard count). Runs before any shard starts.
pub fn migrate(data_dir: &Path, shards: usize) -> std::io::Result<()> {
    for (from, dir) in crate::broker::shard_dirs(data_dir) {
        let root = dir.join("amqp");
        let Ok(vdirs) = std::fs::read_dir(&root) else {
            continue;
        };
        for vdir in vdirs.filter_map(|e| e.ok()) {
            let Ok(qdirs) = std::fs::read_dir(vdir.path()) else {
                continue;
            };
            for qdir in qdirs.filter_map(|e| e.ok()) {
                let meta = std::fs::read_to_string(qdir.path().join(META)).unwrap_or_default();
                let mut lines = meta.lines().skip(1);
                let (Some(vhost), Some(name)) = (lines.next(), lines.next()) else {
                    continue;
                };
                let to = queue_owner(vhost, name, shards);
                if to != from {
                    let dest = data_dir
                        .join(to.to_string())
                        .join("amqp")
                        .join(vdir.file_name());
                    std::fs::create_dir_all(&dest)?;
                    let target = dest.join(qdir.file_name());
                    let _ = std::fs::remove_dir_all(&target);
                    log::info!("moving queue '{name}' from shard {from} to shard {to}");
                    std::fs::rename(qdir.path(), target)?;
                }
            }
        }
    }
    Ok(())
}

fn delete_segment(seg: Segment) {
    for a in [seg.msgs, seg.acks].into_iter().flatten() {
        let path = a.path.clone();
        super::spawn_later(async move {
            if let Err(e) = glommio::io::remove(&path).await {
                let e = std::io::Error::from(e);
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("removing {}: {e}", path.display());
                }
            }
        });
    }
}

/// Writes what one queue has pending, syncs when confirms wait (or `sync_all`), then
/// sends the confirms.
async fn flush_log(shard: &Rc<Shard>, l: &LogRef, sync_all: bool) {
    // Take the pending bytes and the writers out of the log (no borrow across awaits).
    let (jobs, waiters) = {
        let mut log = l.borrow_mut();
        if log.deleted {
            return;
        }
        let waiters = std::mem::take(&mut log.waiters);
        let mut jobs = Vec::new();
        for (no, seg) in log.segments.iter_mut() {
            let msgs = seg.msgs_pending.take();
            let seqs = std::mem::take(&mut seg.pending_seqs);
            let mut marks = Vec::new();
            encode_marks(REC_ACK, &std::mem::take(&mut seg.acks_pending), &mut marks);
            encode_marks(
                REC_DELIVERED,
                &std::mem::take(&mut seg.delivered_pending),
                &mut marks,
            );
            let want_sync = sync_all || !waiters.is_empty();
            if msgs.is_empty() && marks.is_empty() && !want_sync {
                continue;
            }
            jobs.push((*no, seg.msgs.take(), msgs, seqs, seg.acks.take(), marks));
        }
        (jobs, waiters)
    };
    let need_sync = sync_all || !waiters.is_empty();
    let mut ok = true;
    let mut back = Vec::new();
    let mut written: Vec<(u64, u64)> = Vec::new();
    // Message files written this round, with their length and last block before it: a
    // failure takes them all back, so a nacked message is never in a file.
    let mut undo: Vec<(u64, u64, Vec<u8>)> = Vec::new();
    let mut round_seqs: Vec<(u64, Vec<u64>)> = Vec::new();
    for (no, mut mw, msgs, seqs, mut aw, marks) in jobs {
        if let Some(w) = mw.as_mut() {
            if ok {
                let before = (w.written, w.partial.clone());
                match w.append(&msgs).await {
                    Ok(()) => written.push((no, w.written)),
                    Err(e) => {
                        log::error!("writing {}: {e}", w.path.display());
                        ok = false;
                    }
                }
                if !msgs.is_empty() {
                    undo.push((no, before.0, before.1));
                }
                if need_sync && ok {
                    if let Err(e) = w.sync().await {
                        log::error!("fdatasync {}: {e}", w.path.display());
                        ok = false;
                    }
                }
                if !ok {
                    // Read the free space now: the watermark may have to block publishers.
                    shard.storage.disk.write_failed();
                }
            }
        }
        if let Some(w) = aw.as_mut() {
            if let Err(e) = w.append(&marks).await {
                log::error!("writing {}: {e}", w.path.display());
            }
            if sync_all {
                let _ = w.sync().await;
            }
        }
        round_seqs.push((no, seqs));
        back.push((no, mw, aw));
    }
    if !ok {
        // Cut every message file of the round back to where it was.
        written.clear();
        for (no, len, partial) in &undo {
            let Some(w) = back
                .iter_mut()
                .find(|(n, _, _)| n == no)
                .and_then(|(_, mw, _)| mw.as_mut())
            else {
                continue;
            };
            if let Some(f) = &w.file {
                if let Err(e) = f.truncate(*len).await {
                    log::error!("cutting {} back to {len} bytes: {e}", w.path.display());
                }
            }
            w.written = *len;
            w.partial = partial.clone();
            w.unsynced = true;
        }
    }
    let (qid, paged) = {
        let mut log = l.borrow_mut();
        for (no, upto) in &written {
            if let Some(seg) = log.segments.get_mut(no) {
                seg.written = *upto;
            }
        }
        let requests = std::mem::take(&mut log.page_out);
        let (done, rest): (Vec<_>, Vec<_>) = requests.into_iter().partition(|(_, loc)| {
            log.segments
                .get(&loc.segment)
                .map(|s| s.written >= loc.offset + loc.len as u64)
                .unwrap_or(false)
        });
        log.page_out = rest;
        for (no, mw, aw) in back {
            match log.segments.get_mut(&no) {
                Some(seg) => {
                    seg.msgs = mw;
                    seg.acks = aw;
                }
                // Deleted meanwhile (all acked): its files go now.
                None => {
                    delete_segment(Segment {
                        msgs_pending: Pending::new(&shard.amqp.store.pending),
                        pending_seqs: Vec::new(),
                        acks_pending: Vec::new(),
                        delivered_pending: Vec::new(),
                        msgs: mw,
                        acks: aw,
                        size: 0,
                        live: 0,
                        written: 0,
                        reader: None,
                    });
                }
            }
        }
        let paged: Vec<u64> = done.into_iter().map(|(seq, _)| seq).collect();
        (log.qid, paged)
    };
    if !paged.is_empty() {
        if let Some(q) = shard.amqp.queue(qid) {
            q.borrow_mut().drop_bodies(shard, &paged);
        }
    }
    for c in waiters {
        confirm_to(shard, c, ok);
    }
    if !ok {
        fail_round(shard, l, qid, round_seqs);
    }
}

/// A round's message write failed and its files were cut back: the round's messages and
/// those appended since are not stored. Their publishers are nacked (the round's waiters by
/// the caller, later ones here), persistent ones leave the queue, and every segment's size
/// is back to what its file holds, so later messages land where their `Location` says.
fn fail_round(shard: &Rc<Shard>, l: &LogRef, qid: u64, round_seqs: Vec<(u64, Vec<u64>)>) {
    let (failed, late) = {
        let mut log = l.borrow_mut();
        let mut failed: Vec<u64> = Vec::new();
        for (no, seqs) in round_seqs {
            if let Some(seg) = log.segments.get_mut(&no) {
                seg.live = seg.live.saturating_sub(seqs.len() as u64);
            }
            failed.extend(seqs);
        }
        for seg in log.segments.values_mut() {
            let seqs = std::mem::take(&mut seg.pending_seqs);
            drop(seg.msgs_pending.take());
            seg.live = seg.live.saturating_sub(seqs.len() as u64);
            failed.extend(seqs);
            if let Some(w) = seg.msgs.as_ref() {
                seg.size = w.written;
                seg.written = w.written;
            }
        }
        let gone: std::collections::HashSet<u64> = failed.iter().copied().collect();
        log.page_out.retain(|(seq, _)| !gone.contains(seq));
        (failed, std::mem::take(&mut log.waiters))
    };
    for c in late {
        confirm_to(shard, c, false);
    }
    if let Some(q) = shard.amqp.queue(qid) {
        q.borrow_mut().store_failed(shard, &failed);
    }
}

/// Opens a small non-empty file with O_DIRECT before any other DMA file on this shard
/// (see `storage::probe_dma`: glommio decides iopoll support on the first DMA open of each
/// thread). Needs no free space.
pub async fn probe_dma(dir: &Path) {
    crate::storage::probe_dma(dir).await;
}

/// Recovers this shard's durable queues from disk into their owner state; removes the
/// files of queues the catalog no longer has (or no longer places here). Returns how
/// many queues were recovered.
pub async fn recover(shard: &Rc<Shard>) -> std::io::Result<usize> {
    let store = &shard.amqp.store;
    std::fs::create_dir_all(&store.root)?;
    super::spawn_later(Store::run_flusher(shard.clone()));
    let state = shard.catalog.current();
    let router = shard.amqp.router(shard);
    let mut recovered = 0;
    for vdir in std::fs::read_dir(&store.root)?.filter_map(|e| e.ok()) {
        let Ok(qdirs) = std::fs::read_dir(vdir.path()) else {
            continue;
        };
        for qdir in qdirs.filter_map(|e| e.ok()) {
            let dir = qdir.path();
            let meta = std::fs::read_to_string(dir.join(META)).unwrap_or_default();
            let mut lines = meta.lines();
            let id: Option<u64> = lines.next().and_then(|l| l.parse().ok());
            let vhost = lines.next().unwrap_or_default().to_owned();
            let name = lines.next().unwrap_or_default().to_owned();
            let def = state.amqp.get(&vhost).and_then(|t| t.queues.get(&name));
            let keep = match (id, def) {
                (Some(id), Some(d)) => {
                    d.id == id
                        && d.durable
                        && d.exclusive_owner.is_none()
                        && queue_owner(&vhost, &name, shard.count) == shard.id
                }
                _ => false,
            };
            let qref = router.queue(&vhost, &name).cloned();
            match (keep, qref) {
                (true, Some(qref)) => {
                    let n = load_queue(shard, &qref, &dir)?;
                    log::info!("recovered queue '{name}' in vhost '{vhost}': {n} messages");
                    recovered += 1;
                }
                _ => {
                    log::info!(
                        "removing {}: its queue is no longer in the catalog",
                        dir.display()
                    );
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
    }
    Ok(recovered)
}

/// Reads one queue's segments back: messages not acked return to the queue, redelivered
/// when they had been delivered before the restart.
fn load_queue(shard: &Rc<Shard>, qref: &QueueRef, dir: &Path) -> std::io::Result<usize> {
    let mut nos: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            n.strip_suffix(".msgs")?.parse().ok()
        })
        .collect();
    nos.sort_unstable();
    let mut segments = BTreeMap::new();
    let mut first_seq = BTreeMap::new();
    let mut restored: Vec<(u64, Option<i64>, Message, bool, Location)> = Vec::new();
    for no in &nos {
        let mut seg = Segment::new(dir, *no, &shard.amqp.store.pending);
        let mut messages = Vec::new();
        for (is_msgs, path) in [
            (true, dir.join(format!("{no:020}.msgs"))),
            (false, dir.join(format!("{no:020}.acks"))),
        ] {
            let data = std::fs::read(&path).unwrap_or_default();
            let (records, valid) = unframe(&data);
            let torn = data.len() - valid;
            if torn > 0 && data[valid..].iter().any(|b| *b != 0) {
                log::warn!(
                    "{}: truncating torn tail of {torn} bytes at byte {valid}",
                    path.display()
                );
            }
            if torn > 0 {
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) {
                    let _ = f.set_len(valid as u64);
                }
            }
            let w = if is_msgs {
                seg.msgs.as_mut()
            } else {
                seg.acks.as_mut()
            };
            if let Some(w) = w {
                w.written = valid as u64;
                w.tail = Some(data[valid.saturating_sub(65536)..valid].to_vec());
            }
            if is_msgs {
                seg.size = valid as u64;
                seg.written = valid as u64;
                let mut offset = 0u64;
                for r in records {
                    let loc = Location {
                        segment: *no,
                        offset,
                        len: r.len() as u32 + 8,
                    };
                    offset += r.len() as u64 + 8;
                    match decode_message(r) {
                        Some((flags, seq, exp, m)) if flags & FLAG_TRANSIENT == 0 => {
                            messages.push((seq, exp, m, loc));
                        }
                        _ => {}
                    }
                }
            } else {
                let mut acked = std::collections::HashSet::new();
                let mut delivered = std::collections::HashSet::new();
                for mut r in records {
                    if r.len() < 5 {
                        continue;
                    }
                    let kind = r.get_u8();
                    let n = r.get_u32() as usize;
                    for _ in 0..n.min(r.len() / 8) {
                        let s = r.get_u64();
                        if kind == REC_ACK {
                            acked.insert(s);
                        } else if kind == REC_DELIVERED {
                            delivered.insert(s);
                        }
                    }
                }
                if let Some(first) = messages.first() {
                    first_seq.insert(first.0, *no);
                }
                for (seq, exp, m, loc) in messages.drain(..) {
                    if !acked.contains(&seq) {
                        seg.live += 1;
                        restored.push((seq, exp, m, delivered.contains(&seq), loc));
                    }
                }
            }
        }
        if seg.live == 0 {
            // Everything in it was acked.
            for p in [
                dir.join(format!("{no:020}.msgs")),
                dir.join(format!("{no:020}.acks")),
            ] {
                let _ = std::fs::remove_file(p);
            }
            continue;
        }
        segments.insert(*no, seg);
    }
    // New messages go to a fresh segment.
    let active = nos.last().map(|n| n + 1).unwrap_or(0);
    segments.insert(active, Segment::new(dir, active, &shard.amqp.store.pending));
    let next_seq = restored.iter().map(|r| r.0 + 1).max().unwrap_or(0);
    first_seq.insert(next_seq, active);
    let log = Rc::new(RefCell::new(QueueLog {
        dir: dir.to_owned(),
        segments,
        active,
        first_seq,
        waiters: Vec::new(),
        page_out: Vec::new(),
        qid: qref.id,
        deleted: false,
    }));
    shard.amqp.store.logs.borrow_mut().insert(qref.id, log);
    let n = restored.len();
    if let Some(q) = owner::queue_for(shard, qref) {
        let mut q = q.borrow_mut();
        restored.sort_by_key(|r| r.0);
        for (seq, exp, m, delivered, loc) in restored {
            q.restore(shard, seq, exp, m, delivered, loc);
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_stop_at_damage() {
        let m = Message {
            exchange: Bytes::from_static(b"ex"),
            routing_key: Bytes::from_static(b"rk"),
            properties: Bytes::from_static(&[0, 0]),
            body: Bytes::from_static(b"hello"),
            persistent: true,
            priority: 3,
            expiration: Some(5),
        };
        let mut file = Vec::new();
        frame(&encode_message(7, Some(99), &m, 0), &mut file);
        frame(&encode_message(8, None, &m, FLAG_TRANSIENT), &mut file);
        let good = file.len();
        file.extend_from_slice(&[0, 0, 0, 9, 1, 2, 3, 4, 5]);
        let (records, valid) = unframe(&file);
        assert_eq!(valid, good);
        assert_eq!(records.len(), 2);
        let (flags, seq, exp, back) = decode_message(records[0]).unwrap();
        assert_eq!((flags, seq, exp), (0, 7, Some(99)));
        assert_eq!(back.body, m.body);
        assert_eq!(back.priority, 3);
        assert_eq!(back.expiration, Some(5));
        assert_eq!(decode_message(records[1]).unwrap().2, None);
        assert_eq!(decode_message(records[1]).unwrap().0, FLAG_TRANSIENT);
        // Zero padding ends the file.
        let mut padded = file[..good].to_vec();
        padded.extend_from_slice(&[0; 512]);
        assert_eq!(unframe(&padded).1, good);
    }

    #[test]
    fn dir_names_are_safe() {
        assert_eq!(dir_name("/"), "%2F");
        assert_eq!(dir_name("orders.v1"), "orders.v1");
        assert_eq!(dir_name("a b"), "a%20b");
        assert!(dir_name(&"é".repeat(200)).len() <= 180);
    }
}

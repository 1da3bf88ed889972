//! One log segment: `<base>.log` (record batches verbatim), `<base>.index` (relative offset
//! → file position, every `index_interval_bytes`) and `<base>.timeindex` (max timestamp →
//! relative offset at the same points).
//!
//! Owned by the partition's owner shard. The in-memory index is authoritative while the
//! broker runs; the index files are written when the segment is sealed and at clean shutdown,
//! and rebuilt by scanning after a crash. Disk writes go through glommio DMA files: the last
//! partial block is kept in memory and rewritten with the next write, so writes are always
//! block-aligned and the file may carry zero padding past the logical end (recovery stops at
//! the first zero length or bad CRC).
//!
//! `<base>.txnindex` (`txn_index`) lists the transactions aborted by markers in the
//! segment; it is written with the other index files and goes with the segment.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use glommio::io::DmaFile;

use super::batch::{self, BatchHeader, HEADER_LEN};
use super::producers::ProducerStates;
use super::txn_index::{self, AbortedTxn};

/// A sparse index point: the batch with base `offset` starts at `position`; `max_timestamp`
/// is the largest batch timestamp in the segment up to and including that batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: i64,
    pub position: u64,
    pub max_timestamp: i64,
}

pub struct Segment {
    pub base_offset: i64,
    stem: PathBuf,
    pub file: Option<Rc<DmaFile>>,
    /// A second handle on the file, opened O_DSYNC when a write must be durable by itself
    /// (`Storage::write_partition`); dropped once the segment is finalized.
    pub dsync_file: Option<Rc<DmaFile>>,
    /// Logical bytes appended.
    pub size: u64,
    /// Logical bytes on disk (written, not necessarily synced).
    pub written: u64,
    /// Logical bytes fdatasync'ed as of the partition's last `durable_offset` move (the
    /// position of `durable_offset` in the segment that holds it), where a failed sync
    /// cuts back to.
    pub synced: u64,
    /// Bytes handed to a write that has not completed yet.
    pub in_flight: u64,
    /// Appended batches not yet handed to a write, each with the offset after it.
    pub pending: Vec<(Bytes, i64)>,
    /// The bytes of the last, partially filled block already on disk.
    pub partial: Vec<u8>,
    pub index: Vec<IndexEntry>,
    bytes_since_index: u64,
    pub max_timestamp: i64,
    pub created_ms: i64,
    /// Next offset after the last batch of this segment.
    pub next_offset: i64,
    pub sealed: bool,
    /// Sealed, written, synced, truncated and its index files written.
    pub finalized: bool,
    /// The transactions aborted by markers in this segment, in marker order.
    pub aborted: Vec<AbortedTxn>,
    /// The partition's producer state as of this segment's end, taken when it was sealed
    /// and saved (`producers.snapshot`) once the segment is finalized, so a recovery
    /// scans only the segments after it.
    pub roll_snapshot: Option<ProducerStates>,
}

pub fn stem(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}"))
}

fn with_ext(stem: &Path, ext: &str) -> PathBuf {
    let mut p = stem.as_os_str().to_owned();
    p.push(".");
    p.push(ext);
    PathBuf::from(p)
}

/// One block-aligned write the flusher submits: `bytes` (the previous partial block, then
/// new batches) go at `position`; `logical` new bytes covering offsets below `upto`.
pub struct WriteJob {
    /// Where the write starts: the block the last partial block began.
    pub position: u64,
    /// The segment's last partial block, written again before the batches.
    pub partial: Vec<u8>,
    pub batches: Vec<Bytes>,
    /// Bytes of the batches (the file grows by this much).
    pub logical: u64,
    pub upto: i64,
}

impl WriteJob {
    /// What the write puts on disk from `position`, in order.
    pub fn parts(&self) -> Vec<&[u8]> {
        std::iter::once(&self.partial[..])
            .chain(self.batches.iter().map(|b| &b[..]))
            .collect()
    }
}

/// What a recovery scan found in a segment file.
pub struct Scan {
    pub valid_size: u64,
    pub torn_bytes: u64,
    pub next_offset: i64,
}

impl Segment {
    pub fn new(dir: &Path, base_offset: i64, now_ms: i64) -> Segment {
        Segment {
            base_offset,
            stem: stem(dir, base_offset),
            file: None,
            dsync_file: None,
            size: 0,
            written: 0,
            synced: 0,
            in_flight: 0,
            pending: Vec::new(),
            partial: Vec::new(),
            index: Vec::new(),
            bytes_since_index: u64::MAX,
            max_timestamp: -1,
            created_ms: now_ms,
            next_offset: base_offset,
            sealed: false,
            finalized: false,
            aborted: Vec::new(),
            roll_snapshot: None,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        with_ext(&self.stem, "log")
    }

    /// The time retention judges the segment by, as Kafka's `largestTimestamp`: its largest
    /// batch timestamp, or, when no batch carries one (messages of format v0 have none),
    /// the time its file was last written; -1 when neither is known.
    pub fn retention_timestamp(&self) -> i64 {
        if self.max_timestamp >= 0 {
            return self.max_timestamp;
        }
        self.last_modified_ms()
    }

    /// When the segment's `.log` file was last written, in ms since the epoch; -1 when the
    /// file system cannot say.
    pub fn last_modified_ms(&self) -> i64 {
        std::fs::metadata(self.log_path())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// Records one appended batch (already carrying its final offsets).
    pub fn push(&mut self, header: &BatchHeader, bytes: Bytes, index_interval: u64) {
        let position = self.size;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        if self.bytes_since_index >= index_interval {
            self.index.push(IndexEntry {
                offset: header.base_offset,
                position,
                max_timestamp: self.max_timestamp,
            });
            self.bytes_since_index = 0;
        }
        self.bytes_since_index = self.bytes_since_index.saturating_add(bytes.len() as u64);
        self.size += bytes.len() as u64;
        self.next_offset = header.last_offset() + 1;
        self.pending.push((bytes, self.next_offset));
    }

    /// The file position from which to scan for `offset`.
    pub fn position_for(&self, offset: i64) -> u64 {
        let i = self.index.partition_point(|e| e.offset <= offset);
        if i == 0 {
            0
        } else {
            self.index[i - 1].position
        }
    }

    /// The file position from which to scan for the first batch with a timestamp >= `ts`.
    pub fn position_for_timestamp(&self, ts: i64) -> u64 {
        let i = self.index.partition_point(|e| e.max_timestamp < ts);
        if i == 0 {
            0
        } else {
            self.index[i - 1].position
        }
    }

    pub async fn open_file(&mut self) -> std::io::Result<Rc<DmaFile>> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        let file = super::dma::open(&self.log_path()).await?;
        self.file = Some(file.clone());
        Ok(file)
    }

    /// Opens an existing segment file for recovery.
    pub async fn load(dir: &Path, base_offset: i64, now_ms: i64) -> std::io::Result<Segment> {
        let mut seg = Segment::new(dir, base_offset, now_ms);
        seg.open_file().await?;
        if let Ok(meta) = std::fs::metadata(seg.log_path()) {
            if let Ok(modified) = meta.modified() {
                if let Ok(d) = modified.duration_since(std::time::UNIX_EPOCH) {
                    seg.created_ms = d.as_millis() as i64;
                }
            }
        }
        Ok(seg)
    }

    /// Scans the file from its last index entry (index files from a seal or a clean
    /// shutdown; at or before offset `from` when given, else from the start), validating
    /// every batch, rebuilding the index past that point; stops at the first batch that is
    /// torn (short, zero length, bad CRC, or out of sequence). `on_batch` sees each batch
    /// read, with its bytes.
    pub async fn scan(
        &mut self,
        index_interval: u64,
        from: Option<i64>,
        on_batch: &mut dyn FnMut(&BatchHeader, &Bytes),
    ) -> std::io::Result<Scan> {
        let file = self.open_file().await?;
        let file_size = file.file_size().await.map_err(std::io::Error::from)?;
        const CHUNK: usize = 1 << 20;
        let resume = self
            .index
            .iter()
            .rposition(|e| e.position < file_size && from.is_none_or(|o| e.offset <= o));
        let (mut pos, mut expected) = match resume {
            Some(i) => {
                let e = self.index[i];
                self.index.truncate(i);
                (e.position, e.offset)
            }
            None => {
                self.index.clear();
                (0, self.base_offset)
            }
        };
        self.max_timestamp = self.index.last().map(|e| e.max_timestamp).unwrap_or(-1);
        self.bytes_since_index = u64::MAX;
        self.size = pos;
        'outer: while pos < file_size {
            let want = CHUNK.min((file_size - pos) as usize);
            let chunk = file
                .read_at(pos, want)
                .await
                .map_err(std::io::Error::from)?;
            let mut at = 0usize;
            while at < chunk.len() {
                let Some(h) = BatchHeader::parse(&chunk[at..]) else {
                    if chunk.len() - at < HEADER_LEN && pos + (chunk.len() as u64) < file_size {
                        break; // header straddles the chunk: read on from here
                    }
                    break 'outer;
                };
                let bytes = if at + h.size <= chunk.len() {
                    Bytes::copy_from_slice(&chunk[at..at + h.size])
                } else if pos + (at + h.size) as u64 <= file_size {
                    let whole = file
                        .read_at(pos + at as u64, h.size)
                        .await
                        .map_err(std::io::Error::from)?;
                    Bytes::copy_from_slice(&whole[..])
                } else {
                    break 'outer;
                };
                match batch::validate(&bytes) {
                    Ok(v) if v.base_offset >= expected => {
                        expected = v.last_offset() + 1;
                        on_batch(&v, &bytes);
                        self.push(&v, bytes, index_interval);
                        at += v.size;
                    }
                    _ => break 'outer,
                }
            }
            if at == 0 {
                break;
            }
            pos += at as u64;
        }
        // Everything scanned is on disk already.
        self.pending.clear();
        self.written = self.size;
        self.synced = self.size;
        self.next_offset = expected;
        let torn = file_size.saturating_sub(self.size);
        let valid_size = self.size;
        Ok(Scan {
            valid_size,
            torn_bytes: torn,
            next_offset: expected,
        })
    }

    /// Reads back the bytes of the last partial block so the next write can rewrite it.
    pub async fn load_partial(&mut self) -> std::io::Result<()> {
        let file = self.open_file().await?;
        self.partial = super::dma::read_partial_block(&file, self.written).await?;
        Ok(())
    }

    /// Takes up to `max` bytes of pending batches for one write (the batches themselves,
    /// not a copy: the write copies them once, into its DMA buffer).
    pub fn take_write(&mut self, max: usize) -> Option<WriteJob> {
        if self.pending.is_empty() {
            return None;
        }
        let mut batches = Vec::new();
        let mut taken = 0usize;
        let mut upto = self.base_offset;
        for (b, next) in &self.pending {
            if taken > 0 && taken + b.len() > max {
                break;
            }
            batches.push(b.clone());
            taken += b.len();
            upto = *next;
        }
        self.pending.drain(..batches.len());
        self.in_flight = taken as u64;
        Some(WriteJob {
            position: self.written - self.partial.len() as u64,
            partial: self.partial.clone(),
            batches,
            logical: taken as u64,
            upto,
        })
    }

    /// Marks a write from `take_write` done.
    pub fn complete_write(&mut self, job: &WriteJob, align: u64) {
        self.written += job.logical;
        self.in_flight = 0;
        self.partial = super::dma::partial_block(&job.parts(), self.written, align);
    }

    /// Undoes the appends past `bytes` (where the file's good data ends), which end at
    /// offset `next_offset`: pending batches and index points past it go. `partial` stays
    /// right only when `bytes` is `written`; otherwise the caller reloads it.
    pub fn rewind(&mut self, bytes: u64, next_offset: i64) {
        self.size = bytes;
        self.written = self.written.min(bytes);
        self.synced = self.synced.min(bytes);
        self.pending.clear();
        self.in_flight = 0;
        self.index.retain(|e| e.position < bytes);
        // The next batch gets an index point: the sparse spacing restarts here.
        self.bytes_since_index = u64::MAX;
        self.next_offset = next_offset;
        self.sealed = false;
        self.finalized = false;
        self.aborted.retain(|a| a.last_offset < next_offset);
        self.roll_snapshot = None;
    }

    /// Index files in Kafka's layout: `.index` = (relative offset u32, position u32),
    /// `.timeindex` = (timestamp i64, relative offset u32).
    pub fn index_files(&self) -> (PathBuf, Vec<u8>, PathBuf, Vec<u8>) {
        let mut idx = Vec::with_capacity(self.index.len() * 8);
        let mut tidx = Vec::with_capacity(self.index.len() * 12);
        for e in &self.index {
            let rel = (e.offset - self.base_offset) as u32;
            idx.extend_from_slice(&rel.to_be_bytes());
            idx.extend_from_slice(&(e.position as u32).to_be_bytes());
            tidx.extend_from_slice(&e.max_timestamp.to_be_bytes());
            tidx.extend_from_slice(&rel.to_be_bytes());
        }
        (
            with_ext(&self.stem, "index"),
            idx,
            with_ext(&self.stem, "timeindex"),
            tidx,
        )
    }

    /// Loads the index files written when this segment was sealed; false when they are
    /// missing or do not agree in length.
    pub fn load_index_files(&mut self) -> bool {
        let (ip, _, tp, _) = self.index_files();
        let (Ok(idx), Ok(tidx)) = (std::fs::read(ip), std::fs::read(tp)) else {
            return false;
        };
        if idx.len() % 8 != 0 || tidx.len() % 12 != 0 || idx.len() / 8 != tidx.len() / 12 {
            return false;
        }
        self.index = idx
            .chunks_exact(8)
            .zip(tidx.chunks_exact(12))
            .map(|(i, t)| {
                let rel = u32::from_be_bytes([i[0], i[1], i[2], i[3]]) as i64;
                let pos = u32::from_be_bytes([i[4], i[5], i[6], i[7]]) as u64;
                let mut ts = [0u8; 8];
                ts.copy_from_slice(&t[0..8]);
                IndexEntry {
                    offset: self.base_offset + rel,
                    position: pos,
                    max_timestamp: i64::from_be_bytes(ts),
                }
            })
            .collect();
        if let Some(last) = self.index.last() {
            self.max_timestamp = last.max_timestamp;
        }
        true
    }

    /// Adopts a rewritten (compacted) file whose contents are `data`: size, index and
    /// timestamps are rebuilt; `next_offset` stays, so offsets are never renumbered.
    pub fn adopt(&mut self, file: Rc<DmaFile>, data: &[u8], index_interval: u64) {
        let next = self.next_offset;
        self.file = Some(file);
        self.dsync_file = None;
        self.index.clear();
        self.bytes_since_index = u64::MAX;
        self.max_timestamp = -1;
        let mut at = 0usize;
        while let Some(h) = BatchHeader::parse(&data[at..]) {
            if at + h.size > data.len() {
                break;
            }
            self.max_timestamp = self.max_timestamp.max(h.max_timestamp);
            if self.bytes_since_index >= index_interval {
                self.index.push(IndexEntry {
                    offset: h.base_offset,
                    position: at as u64,
                    max_timestamp: self.max_timestamp,
                });
                self.bytes_since_index = 0;
            }
            self.bytes_since_index = self.bytes_since_index.saturating_add(h.size as u64);
            at += h.size;
        }
        self.size = at as u64;
        self.written = at as u64;
        self.synced = at as u64;
        self.partial.clear();
        self.next_offset = next;
    }

    /// Where the compactor writes a segment's new contents before renaming it into place.
    pub fn cleaned_path(&self) -> PathBuf {
        with_ext(&self.stem, "log.cleaned")
    }

    pub fn txn_index_path(&self) -> PathBuf {
        with_ext(&self.stem, "txnindex")
    }

    /// Writes `<base>.txnindex` with the segment's aborted transactions (removes it when
    /// there are none).
    pub fn write_txn_index(&self) -> std::io::Result<()> {
        let path = self.txn_index_path();
        if self.aborted.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        std::fs::write(path, txn_index::encode(&self.aborted))
    }

    /// Loads `<base>.txnindex` if there is one; false when it is damaged (the caller then
    /// rescans the segment to rebuild it).
    pub fn load_txn_index(&mut self) -> bool {
        match std::fs::read(self.txn_index_path()) {
            Ok(data) => match txn_index::decode(&data) {
                Some(entries) => {
                    self.aborted = entries;
                    true
                }
                None => false,
            },
            Err(_) => true,
        }
    }

    /// Every file of the segment.
    pub fn paths(&self) -> [PathBuf; 4] {
        [
            with_ext(&self.stem, "log"),
            with_ext(&self.stem, "index"),
            with_ext(&self.stem, "timeindex"),
            self.txn_index_path(),
        ]
    }
}

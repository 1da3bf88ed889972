//! Log compaction (`cleanup.policy=compact`): keeps the latest record of every key, removes
//! tombstones (null values) once `delete.retention.ms` has passed, never renumbers offsets.
//!
//! Runs as a background task on each shard over the partitions it owns; it only rewrites
//! sealed segments (never the active one), reads through the same paths as fetch, writes
//! the new segment beside the old one (`<base>.log.cleaned`, fsynced) and renames it into
//! place, so produce and fetch are never blocked and a crash leaves either the old or the
//! new file. Batches keep their base offset, last offset delta and base timestamp, so each
//! kept record's bytes are copied unchanged; a compressed batch is inflated and re-compressed
//! with its own codec.
//!
//! The log's final batch is kept as it is, tombstones and all, like the active segment Kafka
//! never cleans: a segment here is rolled on `segment.ms` even while no one writes, and
//! without that batch nothing would be left at the end of an idle log, so a consumer (a
//! Kafka Streams restore, Connect reading its config topic to the end) could never reach
//! the high watermark: fetches at its position would answer nothing, for ever.
//!
//! Transactions stay correct: only what lies below the last stable offset is compacted
//! (an ongoing transaction may still abort), records of aborted transactions are dropped
//! and never supersede a committed value, and markers are always kept (the aborted-
//! transaction index keeps covering what remains).

use std::collections::HashMap;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};

use super::batch::{self, varint, BatchHeader, HEADER_LEN};
use super::log::{self as plog, now_ms};
use super::LogRef;

/// One record inside a batch, as the compactor needs it.
struct RawRecord {
    offset_delta: i64,
    key: Option<Bytes>,
    tombstone: bool,
    /// The whole record, length prefix included.
    bytes: Bytes,
}

/// Splits an (uncompressed) record section into records.
fn split_records(section: &Bytes, count: i32) -> Option<Vec<RawRecord>> {
    // The count comes from the batch: reserve no more than the section could hold.
    let mut out = Vec::with_capacity((count.max(0) as usize).min(section.len()));
    let mut at = 0usize;
    for _ in 0..count.max(0) {
        let start = at;
        let len = usize::try_from(varint(section, &mut at)?).ok()?;
        let body = at;
        let end = body.checked_add(len)?;
        if end > section.len() {
            return None;
        }
        at += 1; // attributes
        varint(section, &mut at)?; // timestamp delta
        let offset_delta = varint(section, &mut at)?;
        let key_len = varint(section, &mut at)?;
        let key = if key_len < 0 {
            None
        } else {
            let k = section.get(at..at + key_len as usize)?;
            at += key_len as usize;
            Some(Bytes::copy_from_slice(k))
        };
        let value_len = varint(section, &mut at)?;
        out.push(RawRecord {
            offset_delta,
            key,
            tombstone: value_len < 0,
            bytes: section.slice(start..end),
        });
        at = end;
    }
    Some(out)
}

fn codec_error(e: impl std::fmt::Display) -> String {
    format!("record batch codec: {e}")
}

/// The records of a batch (inflating it if compressed).
fn records_of(batch: &Bytes, h: &BatchHeader) -> Result<Vec<RawRecord>, String> {
    let section = batch::inflate(batch, h)?;
    split_records(&section, h.records).ok_or_else(|| "malformed records".to_owned())
}

/// Rebuilds a batch holding only `kept` (same base offset, base timestamp, last offset
/// delta, producer fields and codec); `None` when nothing is kept.
fn rebuild(batch: &Bytes, h: &BatchHeader, kept: &[&RawRecord]) -> Result<Option<Bytes>, String> {
    if kept.is_empty() {
        return Ok(None);
    }
    let mut raw = BytesMut::new();
    for r in kept {
        raw.extend_from_slice(&r.bytes);
    }
    let section: Bytes = match h.compression() {
        0 => raw.freeze(),
        c => {
            let mut out = BytesMut::new();
            let put = |b: &mut BytesMut| -> anyhow::Result<()> {
                b.extend_from_slice(&raw);
                Ok(())
            };
            match c {
                1 => Gzip::compress(&mut out, put),
                2 => Snappy::compress(&mut out, put),
                3 => Lz4::compress(&mut out, put),
                4 => Zstd::compress(&mut out, put),
                _ => return Err(format!("unknown compression {c}")),
            }
            .map_err(codec_error)?;
            out.freeze()
        }
    };
    let mut b = BytesMut::with_capacity(HEADER_LEN + section.len());
    b.extend_from_slice(&batch[..HEADER_LEN]);
    b.extend_from_slice(&section);
    let length = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&length.to_be_bytes());
    b[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(Some(b.freeze()))
}

/// Every batch of `log` from its start, in order (through the fetch path).
async fn each_batch(log: &LogRef, mut f: impl FnMut(&Bytes, &BatchHeader)) -> Result<(), String> {
    let (mut at, end) = {
        let l = log.borrow();
        (l.log_start_offset, l.next_offset)
    };
    while at < end {
        let data = plog::read(log, at, 1 << 20)
            .await
            .map_err(|e| e.to_string())?;
        if data.is_empty() {
            break;
        }
        let mut next = at;
        for (h, one) in data.each() {
            f(&one, &h);
            next = next.max(h.last_offset() + 1);
        }
        if next <= at {
            break;
        }
        at = next;
    }
    Ok(())
}

/// What one pass did to a partition.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub segments_rewritten: usize,
    pub records_removed: usize,
}

/// The aborted transactions of a log: for each producer, the offset ranges
/// (first, marker) of its aborted transactions.
struct Aborted(HashMap<i64, Vec<(i64, i64)>>);

impl Aborted {
    fn of(log: &LogRef) -> Aborted {
        let mut map: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for seg in log.borrow().segments() {
            for a in &seg.aborted {
                map.entry(a.producer_id)
                    .or_default()
                    .push((a.first_offset, a.last_offset));
            }
        }
        Aborted(map)
    }

    /// Whether the (data) batch belongs to an aborted transaction.
    fn holds(&self, h: &BatchHeader) -> bool {
        h.is_transactional()
            && !h.is_control()
            && self.0.get(&h.producer_id).is_some_and(|ranges| {
                ranges
                    .iter()
                    .any(|(first, last)| *first <= h.base_offset && h.base_offset <= *last)
            })
    }
}

/// One compaction pass over a partition's sealed segments.
pub async fn compact(log: &LogRef) -> Result<Pass, String> {
    let stable = log.borrow().last_stable_offset();
    let aborted = Aborted::of(log);
    // 1. The latest offset of every key below the last stable offset, aborted records
    // left out.
    let mut latest: HashMap<Bytes, i64> = HashMap::new();
    let mut bad = None;
    each_batch(log, |batch, h| {
        if h.is_control() || h.last_offset() >= stable || aborted.holds(h) {
            return;
        }
        match records_of(batch, h) {
            Ok(records) => {
                for r in records {
                    if let Some(k) = r.key {
                        latest.insert(k, h.base_offset + r.offset_delta);
                    }
                }
            }
            Err(e) => bad = Some(e),
        }
    })
    .await?;
    if let Some(e) = bad {
        return Err(e);
    }
    // 2. Rewrite each sealed, finalized segment that holds superseded records.
    let (segments, interval, delete_retention, log_end) = {
        let l = log.borrow();
        let segs: Vec<(i64, u64, Option<Rc<glommio::io::DmaFile>>)> = l
            .segments()
            .filter(|s| s.finalized && s.next_offset <= stable)
            .map(|s| (s.base_offset, s.size, s.file.clone()))
            .collect();
        (
            segs,
            l.settings.index_interval_bytes as u64,
            l.settings.delete_retention_ms,
            l.next_offset,
        )
    };
    let now = now_ms();
    let mut pass = Pass::default();
    for (base, size, file) in segments {
        let Some(file) = file else { continue };
        if size == 0 {
            continue;
        }
        let data = file
            .read_at(0, size as usize)
            .await
            .map_err(|e| e.to_string())?;
        let data = Bytes::copy_from_slice(&data[..]);
        let mut out = BytesMut::with_capacity(data.len());
        let mut removed = 0;
        let mut at = 0;
        while let Some(h) = BatchHeader::parse(&data[at..]) {
            if at + h.size > data.len() {
                break;
            }
            let batch = data.slice(at..at + h.size);
            at += h.size;
            // Markers stay; so does the log's final batch (the module's comment says why).
            if h.is_control() || h.last_offset() + 1 >= log_end {
                out.extend_from_slice(&batch);
                continue;
            }
            if aborted.holds(&h) {
                removed += h.records.max(0) as usize;
                continue;
            }
            let records = records_of(&batch, &h)?;
            let kept: Vec<&RawRecord> = records
                .iter()
                .filter(|r| {
                    let offset = h.base_offset + r.offset_delta;
                    match &r.key {
                        // Records without a key cannot be superseded: keep them.
                        None => true,
                        Some(k) => {
                            latest.get(k) == Some(&offset)
                                && !(r.tombstone
                                    && delete_retention >= 0
                                    && now - h.max_timestamp > delete_retention)
                        }
                    }
                })
                .collect();
            removed += records.len() - kept.len();
            if kept.len() == records.len() {
                out.extend_from_slice(&batch);
            } else if let Some(b) = rebuild(&batch, &h, &kept)? {
                out.extend_from_slice(&b);
            }
        }
        if removed == 0 {
            continue;
        }
        let cleaned = match log.borrow().segment(base) {
            Some(s) => s.cleaned_path(),
            None => continue,
        };
        let bytes = out.freeze();
        let to_write = bytes.clone();
        let path = cleaned.clone();
        glommio::executor()
            .spawn_blocking(move || -> std::io::Result<()> {
                let written = std::fs::File::create(&path).and_then(|mut f| {
                    std::io::Write::write_all(&mut f, &to_write)?;
                    f.sync_all()
                });
                if written.is_err() {
                    // A full disk: the partial copy must not hold on to the space left.
                    let _ = std::fs::remove_file(&path);
                }
                written
            })
            .await
            .map_err(|e| e.to_string())?;
        let new_file = super::dma::open_existing(&cleaned)
            .await
            .map_err(|e| e.to_string())?;
        // Swap in without an await between the check and the rename: retention may have
        // removed the segment meanwhile, and then the cleaned copy is dropped instead.
        let mut l = log.borrow_mut();
        let Some(seg) = l.segment_mut(base) else {
            let _ = std::fs::remove_file(&cleaned);
            continue;
        };
        std::fs::rename(&cleaned, seg.log_path()).map_err(|e| e.to_string())?;
        seg.adopt(new_file, &bytes, interval);
        let (idx_path, idx, tidx_path, tidx) = seg.index_files();
        let next = seg.next_offset;
        let _ = std::fs::write(idx_path, idx).and_then(|_| std::fs::write(tidx_path, tidx));
        l.drop_cached_below(next);
        pass.segments_rewritten += 1;
        pass.records_removed += removed;
    }
    if let Some(dir) = log.borrow().dir().to_str() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_split_and_rebuild_keep_offsets() {
        // Three records: key a (offset 0), key b (1), key a again (2).
        let mut section = Vec::new();
        for (i, k) in ["a", "b", "a"].iter().enumerate() {
            let mut rec = vec![0u8];
            rec.push((i as u8) << 1); // timestamp delta
            rec.push((i as u8) << 1); // offset delta
            rec.push(2); // key length 1
            rec.extend_from_slice(k.as_bytes());
            rec.push(2); // value length 1
            rec.push(b'v');
            rec.push(0); // headers
            section.push((rec.len() as u8) << 1);
            section.extend(rec);
        }
        let section = Bytes::from(section);
        let records = split_records(&section, 3).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].offset_delta, 2);
        assert_eq!(records[1].key.as_deref(), Some(&b"b"[..]));
        assert!(split_records(&section.slice(..5), 3).is_none());
    }
}

//! The message format of Kafka before 0.11 (magic 0 and 1, a "MessageSet"), which Produce
//! v0–2 carry and Fetch v0–3 answer with. Storage keeps one format, record batches (magic
//! 2): `to_batch` converts a produced message set on the way in, `from_batches`
//! down-converts stored batches for an old Fetch.
//!
//! A message: `offset i64 | size i32 | crc u32 | magic i8 | attributes i8 | [timestamp i64
//! from magic 1] | key bytes | value bytes`, the CRC-32 (IEEE) over magic..end. A compressed
//! message (attributes' low three bits: gzip, snappy, lz4) is a wrapper whose value is the
//! compressed message set of the real messages.
//!
//! Bounded and checked like every decoder: lengths against the bytes left, inflation
//! against a budget the caller gives; any input is an error or a result, never a panic.
//! Pure functions, run on the connection's shard (by `legacy` through the codec).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::records::Compression;

use crate::storage::batch::{self, BatchHeader};
use crate::storage::inflate::{self, Codec};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageSetError {
    #[error("message truncated")]
    Truncated,
    #[error("message CRC mismatch")]
    Crc,
    #[error("message magic {0} (0 or 1 expected)")]
    Magic(i8),
    #[error("compression codec {0} in a v0/v1 message")]
    Codec(i8),
    #[error("a compressed message inside a compressed message")]
    Nested,
    #[error("{0}")]
    Inflate(String),
    #[error("no messages")]
    Empty,
    #[error("encoding the record batch: {0}")]
    Encode(String),
}

/// One message of a set, as read.
struct Message {
    magic: i8,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
}

/// Converts a produced message set into one record batch (magic 2, base offset 0, the
/// broker assigns offsets), compressed with the codec of its wrapper messages if any. A
/// message set must hold only whole messages. `budget` is what inflating wrappers may still
/// take (bytes), shared by every partition of a request; it shrinks by what was inflated.
pub fn to_batch(set: &Bytes, budget: &mut usize) -> Result<Bytes, MessageSetError> {
    let mut messages = Vec::new();
    let mut compression = Compression::None;
    for m in read_set(set, true)? {
        let (attributes, raw) = m?;
        let codec = attributes & 0x07;
        if codec == 0 {
            messages.push(raw);
            continue;
        }
        compression = match codec {
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            c => return Err(MessageSetError::Codec(c)),
        };
        let codec =
            Codec::from_id(codec as i16).map_err(|e| MessageSetError::Inflate(e.to_string()))?;
        let mut value = raw.value.unwrap_or_default();
        if raw.magic == 0 && codec == Codec::Lz4 {
            value = lz4_frame_checksum_fixed(value);
        }
        let inner = inflate::inflate(value, codec, *budget)
            .map_err(|e| MessageSetError::Inflate(e.to_string()))?;
        *budget = budget.saturating_sub(inner.len());
        for m in read_set(&inner, true)? {
            let (attributes, mut inner) = m?;
            if attributes & 0x07 != 0 {
                return Err(MessageSetError::Nested);
            }
            // A magic-1 wrapper's inner messages keep no timestamp of their own under
            // LogAppendTime; under CreateTime they carry the producer's.
            if inner.magic == 0 {
                inner.timestamp = -1;
            }
            messages.push(inner);
        }
    }
    if messages.is_empty() {
        return Err(MessageSetError::Empty);
    }
    let plain = messages.into_iter().map(|m| batch::PlainRecord {
        timestamp: if m.magic == 0 { -1 } else { m.timestamp },
        key: m.key,
        value: m.value,
        headers: Default::default(),
    });
    batch::encode_plain_batch(plain, compression).map_err(MessageSetError::Encode)
}

/// An LZ4 frame with its header checksum recomputed: Kafka before 0.10 (and clients of
/// the magic-0 format) computed it over the frame's magic number as well (KAFKA-1493), so
/// liblz4 refuses their frames. The checksum is the second byte of XXH32 (seed 0) over the
/// frame descriptor, the bytes from the flags up to the checksum.
fn lz4_frame_checksum_fixed(frame: Bytes) -> Bytes {
    let Some(&flags) = frame.get(4) else {
        return frame;
    };
    let mut end = 6; // flags, block descriptor
    if flags & 0x08 != 0 {
        end += 8; // content size
    }
    if flags & 0x01 != 0 {
        end += 4; // dictionary id
    }
    if frame.len() <= end {
        return frame;
    }
    let checksum = (xxh32_short(&frame[4..end]) >> 8) as u8;
    let mut fixed = BytesMut::from(&frame[..]);
    fixed[end] = checksum;
    fixed.freeze()
}

/// XXH32 with seed 0 of fewer than 16 bytes (an LZ4 frame descriptor is at most 14).
fn xxh32_short(data: &[u8]) -> u32 {
    const P1: u32 = 2_654_435_761;
    const P2: u32 = 2_246_822_519;
    const P3: u32 = 3_266_489_917;
    const P4: u32 = 668_265_263;
    const P5: u32 = 374_761_393;
    debug_assert!(data.len() < 16);
    let mut h = P5.wrapping_add(data.len() as u32);
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        h = h
            .wrapping_add(v.wrapping_mul(P3))
            .rotate_left(17)
            .wrapping_mul(P4);
    }
    for &b in words.remainder() {
        h = h
            .wrapping_add((b as u32).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
    }
    h ^= h >> 15;
    h = h.wrapping_mul(P2);
    h ^= h >> 13;
    h = h.wrapping_mul(P3);
    h ^ (h >> 16)
}

/// The messages of a set: `(attributes, message)` each. `whole`: a partial message at the
/// end is an error (a produced set); otherwise it ends the set (a fetched one).
fn read_set(
    set: &Bytes,
    whole: bool,
) -> Result<impl Iterator<Item = Result<(i8, Message), MessageSetError>>, MessageSetError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < set.len() {
        let Some(head) = set.get(at..at + 12) else {
            if whole {
                return Err(MessageSetError::Truncated);
            }
            break;
        };
        let size = i32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        let Ok(size) = usize::try_from(size) else {
            return Err(MessageSetError::Truncated);
        };
        let Some(end) = (at + 12).checked_add(size).filter(|&e| e <= set.len()) else {
            if whole {
                return Err(MessageSetError::Truncated);
            }
            break;
        };
        out.push(read_message(set.slice(at + 12..end)));
        at = end;
    }
    Ok(out.into_iter())
}

/// One message after its offset and size.
fn read_message(m: Bytes) -> Result<(i8, Message), MessageSetError> {
    let body = m.get(4..).ok_or(MessageSetError::Truncated)?;
    let crc = u32::from_be_bytes([m[0], m[1], m[2], m[3]]);
    if crc32fast::hash(body) != crc {
        return Err(MessageSetError::Crc);
    }
    let mut at = 4;
    let magic = *m.get(at).ok_or(MessageSetError::Truncated)? as i8;
    if !(0..=1).contains(&magic) {
        return Err(MessageSetError::Magic(magic));
    }
    let attributes = *m.get(at + 1).ok_or(MessageSetError::Truncated)? as i8;
    at += 2;
    let timestamp = if magic >= 1 {
        let t = m.get(at..at + 8).ok_or(MessageSetError::Truncated)?;
        at += 8;
        i64::from_be_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]])
    } else {
        -1
    };
    let key = bytes_at(&m, &mut at)?;
    let value = bytes_at(&m, &mut at)?;
    Ok((
        attributes,
        Message {
            magic,
            timestamp,
            key,
            value,
        },
    ))
}

/// A length-prefixed (i32, -1 for null) byte string at `at`.
fn bytes_at(m: &Bytes, at: &mut usize) -> Result<Option<Bytes>, MessageSetError> {
    let l = m.get(*at..*at + 4).ok_or(MessageSetError::Truncated)?;
    let len = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
    *at += 4;
    if len < 0 {
        return Ok(None);
    }
    let end = at
        .checked_add(len as usize)
        .filter(|&e| e <= m.len())
        .ok_or(MessageSetError::Truncated)?;
    let b = m.slice(*at..end);
    *at = end;
    Ok(Some(b))
}

/// Writes one uncompressed message at `magic` (0 or 1).
fn put_message(
    out: &mut BytesMut,
    offset: i64,
    magic: i8,
    timestamp: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) {
    out.put_i64(offset);
    let size_at = out.len();
    out.put_i32(0);
    let crc_at = out.len();
    out.put_u32(0);
    out.put_i8(magic);
    out.put_i8(0);
    if magic >= 1 {
        out.put_i64(timestamp);
    }
    for b in [key, value] {
        match b {
            None => out.put_i32(-1),
            Some(b) => {
                out.put_i32(b.len() as i32);
                out.put_slice(b);
            }
        }
    }
    let crc = crc32fast::hash(&out[crc_at + 4..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
    let size = (out.len() - crc_at) as i32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
}

/// The message format a Fetch of `version` reads: magic 0 for v0–1, 1 for v2–3 (v4 and
/// later read record batches).
pub fn fetch_magic(version: i16) -> i8 {
    if version >= 2 {
        1
    } else {
        0
    }
}

/// Down-converts stored record batches to messages of `magic` (0 for Fetch v0–1, 1 for
/// v2–3), uncompressed, one message per record with its absolute offset. Control batches
/// (transaction markers) and record headers have no v0/v1 form and are left out; a partial
/// batch at the end (a fetch cut at its size limit) ends the set, as does a batch that
/// cannot be read or inflated past `budget` bytes. Records before `from` are left out.
pub fn from_batches(records: &Bytes, magic: i8, from: i64, budget: &mut usize) -> Bytes {
    let mut out = BytesMut::new();
    let mut at = 0;
    while let Some(h) = records.get(at..).and_then(BatchHeader::parse) {
        if h.size > records.len() - at {
            break;
        }
        let batch = records.slice(at..at + h.size);
        at += h.size;
        if h.is_control() || h.last_offset() < from {
            continue;
        }
        let Ok(section) = batch::inflate(&batch, &h) else {
            break;
        };
        if section.len() > *budget {
            break;
        }
        *budget -= section.len();
        let log_append = h.attributes & 0x08 != 0;
        if down_convert_records(&section, &h, magic, from, log_append, &mut out).is_none() {
            break;
        }
    }
    out.freeze()
}

/// The records of one batch's (inflated) records section, as messages; `None` when the
/// section does not parse (what was written so far stays).
fn down_convert_records(
    section: &[u8],
    h: &BatchHeader,
    magic: i8,
    from: i64,
    log_append: bool,
    out: &mut BytesMut,
) -> Option<()> {
    let mut at = 0usize;
    for _ in 0..h.records.max(0) {
        let len = batch::varint(section, &mut at)?;
        let start = at;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        let rec = section.get(start..end)?;
        let mut p = 1usize; // attributes
        let ts_delta = batch::varint(rec, &mut p)?;
        let offset_delta = batch::varint(rec, &mut p)?;
        let key = varbytes(rec, &mut p)?;
        let value = varbytes(rec, &mut p)?;
        at = end;
        let offset = h.base_offset.checked_add(offset_delta)?;
        if offset < from {
            continue;
        }
        let timestamp = if log_append {
            h.max_timestamp
        } else {
            h.base_timestamp.saturating_add(ts_delta)
        };
        put_message(out, offset, magic, timestamp, key, value);
    }
    Some(())
}

/// A varint-length byte string of a v2 record (-1 for null).
fn varbytes<'a>(rec: &'a [u8], at: &mut usize) -> Option<Option<&'a [u8]>> {
    let len = batch::varint(rec, at)?;
    if len < 0 {
        return Some(None);
    }
    let end = at.checked_add(usize::try_from(len).ok()?)?;
    let b = rec.get(*at..end)?;
    *at = end;
    Some(Some(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(magic: i8, values: &[&str]) -> Bytes {
        let mut out = BytesMut::new();
        for (i, v) in values.iter().enumerate() {
            put_message(
                &mut out,
                i as i64,
                magic,
                1_000 + i as i64,
                Some(b"k"),
                Some(v.as_bytes()),
            );
        }
        out.freeze()
    }

    #[test]
    fn messages_convert_to_a_batch_and_back() {
        for magic in [0, 1] {
            let mut budget = usize::MAX;
            let b = to_batch(&set(magic, &["a", "bb", "ccc"]), &mut budget).unwrap();
            let h = batch::validate(&b).unwrap();
            assert_eq!(h.records, 3);
            let back = from_batches(&b, magic, 0, &mut budget);
            assert_eq!(back, set(magic, &["a", "bb", "ccc"]));
            let later = from_batches(&b, magic, 2, &mut budget);
            assert_eq!(read_set(&later, true).unwrap().count(), 1);
        }
    }

    #[test]
    fn a_gzip_wrapper_is_inflated_into_the_batch() {
        use std::io::Write;
        let inner = set(1, &["x", "y"]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&inner).unwrap();
        let compressed = gz.finish().unwrap();
        let mut wrapper = BytesMut::new();
        put_message(&mut wrapper, 1, 1, 5, None, Some(&compressed));
        // Set the codec bit and recompute the CRC.
        wrapper[8 + 4 + 4 + 1] = 1;
        let crc = crc32fast::hash(&wrapper[16..]);
        wrapper[12..16].copy_from_slice(&crc.to_be_bytes());
        let mut budget = 1 << 20;
        let b = to_batch(&wrapper.freeze(), &mut budget).unwrap();
        let h = batch::validate(&b).unwrap();
        assert_eq!((h.records, h.compression()), (2, 1));
        let back = from_batches(&b, 1, 0, &mut budget);
        assert_eq!(back, set(1, &["x", "y"]));
    }

    /// XXH32 of known inputs (the reference implementation's), and an LZ4 frame header of
    /// a plain frame: flags 0x60, block descriptor 0x40, checksum 0x82.
    #[test]
    fn lz4_frame_checksums_are_xxh32() {
        assert_eq!(xxh32_short(b""), 0x02cc_5d05);
        assert_eq!(xxh32_short(&[0x60, 0x40]) >> 8 & 0xff, 0x82);
        let broken = Bytes::from_static(&[0x04, 0x22, 0x4d, 0x18, 0x60, 0x40, 0x00, 0, 0, 0, 0]);
        assert_eq!(lz4_frame_checksum_fixed(broken)[6], 0x82);
    }

    #[test]
    fn bad_sets_are_errors() {
        let good = set(1, &["a"]);
        let mut budget = 1 << 20;
        for cut in 0..good.len() {
            assert!(
                to_batch(&good.slice(..cut), &mut budget).is_err(),
                "cut {cut}"
            );
        }
        let mut bad = BytesMut::from(&good[..]);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            to_batch(&bad.freeze(), &mut budget),
            Err(MessageSetError::Crc)
        );
        let mut huge = BytesMut::new();
        huge.put_i64(0);
        huge.put_i32(i32::MAX);
        assert!(to_batch(&huge.freeze(), &mut budget).is_err());
        let _ = from_batches(&Bytes::from_static(&[0xff; 70]), 0, 0, &mut budget);
    }
}

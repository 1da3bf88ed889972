//! Kafka record batches (magic v2) as raw bytes: header parsing, CRC-32C validation and the
//! two patches the broker is allowed to make (baseOffset, and the timestamps under
//! LogAppendTime).
//!
//! Pure functions, used by the owner shard of a partition on produce and by recovery.
//!
//! Header layout (61 bytes): baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 |
//! magic i8 | crc u32 | attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 |
//! maxTimestamp i64 | producerId i64 | producerEpoch i16 | baseSequence i32 | records i32.
//! The CRC covers everything from `attributes` to the end of the batch.

use bytes::{Bytes, BytesMut};

pub const HEADER_LEN: usize = 61;
/// baseOffset + batchLength: the part of a batch not counted by batchLength.
pub const LOG_OVERHEAD: usize = 12;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
const BASE_TIMESTAMP_OFFSET: usize = 27;
const MAX_TIMESTAMP_OFFSET: usize = 35;
const PRODUCER_ID_OFFSET: usize = 43;
const PRODUCER_EPOCH_OFFSET: usize = 51;
const BASE_SEQUENCE_OFFSET: usize = 53;
const RECORDS_COUNT_OFFSET: usize = 57;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const COMPRESSION_MASK: i16 = 0x07;

/// Why a produced batch was refused; mapped to CORRUPT_MESSAGE or INVALID_RECORD.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch truncated: {0} bytes")]
    Truncated(usize),
    #[error("unsupported record batch magic {0}")]
    Magic(i8),
    #[error("record batch CRC mismatch")]
    Crc,
    #[error("record batch length {0} is invalid")]
    Length(i32),
    #[error("record batch declares {0} records with last offset delta {1}")]
    Count(i32, i32),
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// The fields of a batch header the broker reads. Only built from a slice already known to
/// hold at least `HEADER_LEN` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Total bytes of the batch including the 12-byte log overhead.
    pub size: usize,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub attributes: i16,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records: i32,
}

impl BatchHeader {
    /// Parses the header at the start of `b`; `None` when fewer than `HEADER_LEN` bytes or the
    /// length field cannot describe a batch.
    pub fn parse(b: &[u8]) -> Option<BatchHeader> {
        if b.len() < HEADER_LEN {
            return None;
        }
        let length = i32_at(b, 8);
        if length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return None;
        }
        Some(BatchHeader {
            base_offset: i64_at(b, 0),
            size: length as usize + LOG_OVERHEAD,
            last_offset_delta: i32_at(b, LAST_OFFSET_DELTA_OFFSET),
            base_timestamp: i64_at(b, BASE_TIMESTAMP_OFFSET),
            max_timestamp: i64_at(b, MAX_TIMESTAMP_OFFSET),
            attributes: i16_at(b, ATTRIBUTES_OFFSET),
            producer_id: i64_at(b, PRODUCER_ID_OFFSET),
            producer_epoch: i16_at(b, PRODUCER_EPOCH_OFFSET),
            base_sequence: i32_at(b, BASE_SEQUENCE_OFFSET),
            records: i32_at(b, RECORDS_COUNT_OFFSET),
        })
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    pub fn compression(&self) -> i16 {
        self.attributes & COMPRESSION_MASK
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

/// Records in the complete batches of `records` (a produce's or a fetch's record set).
pub fn record_count(mut records: &[u8]) -> u64 {
    let mut n = 0u64;
    while let Some(h) = BatchHeader::parse(records) {
        if h.size > records.len() {
            break;
        }
        n += h.records.max(0) as u64;
        records = &records[h.size..];
    }
    n
}

/// Checks magic, length and CRC of the one batch that starts `b` and returns its header.
pub fn validate(b: &[u8]) -> Result<BatchHeader, BatchError> {
    if b.len() < HEADER_LEN {
        return Err(BatchError::Truncated(b.len()));
    }
    let magic = b[MAGIC_OFFSET] as i8;
    if magic != 2 {
        return Err(BatchError::Magic(magic));
    }
    let header = BatchHeader::parse(b).ok_or(BatchError::Length(i32_at(b, 8)))?;
    if header.size > b.len() {
        return Err(BatchError::Truncated(b.len()));
    }
    let stored = u32::from_be_bytes([
        b[CRC_OFFSET],
        b[CRC_OFFSET + 1],
        b[CRC_OFFSET + 2],
        b[CRC_OFFSET + 3],
    ]);
    if crc32c::crc32c(&b[ATTRIBUTES_OFFSET..header.size]) != stored {
        return Err(BatchError::Crc);
    }
    if header.records < 0
        || header.last_offset_delta < 0
        || (header.records > 0 && header.last_offset_delta < header.records - 1)
    {
        return Err(BatchError::Count(header.records, header.last_offset_delta));
    }
    Ok(header)
}

/// Splits the `records` field of a produce request into validated batches.
pub fn split(records: &Bytes) -> Result<Vec<(BatchHeader, Bytes)>, BatchError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let header = validate(&records[at..])?;
        out.push((header, records.slice(at..at + header.size)));
        at += header.size;
    }
    Ok(out)
}

/// Returns a copy of `batch` with baseOffset set; under LogAppendTime also sets the
/// timestamp type bit and maxTimestamp, and recomputes the CRC (the only bytes changed).
pub fn assign(batch: &Bytes, base_offset: i64, log_append_time: Option<i64>) -> Bytes {
    let mut b = BytesMut::from(&batch[..]);
    b[0..8].copy_from_slice(&base_offset.to_be_bytes());
    if let Some(now) = log_append_time {
        let attributes = i16_at(&b, ATTRIBUTES_OFFSET) | TIMESTAMP_TYPE_BIT;
        b[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
        b[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&now.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    }
    b.freeze()
}

/// Reads a zig-zag varint (Kafka's record encoding); `None` on a short buffer.
fn varint(b: &[u8], at: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = *b.get(*at)?;
        *at += 1;
        value |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    Some(((value >> 1) as i64) ^ -((value & 1) as i64))
}

/// The offset of the first record at or after `target` timestamp in an uncompressed batch;
/// for a compressed batch (whose records cannot be read without inflating) the batch's base
/// offset. `None` when no record qualifies.
pub fn offset_for_timestamp(batch: &[u8], header: &BatchHeader, target: i64) -> Option<i64> {
    if header.max_timestamp < target {
        return None;
    }
    if header.compression() != 0 || header.attributes & TIMESTAMP_TYPE_BIT != 0 {
        return Some(header.base_offset);
    }
    let mut at = HEADER_LEN;
    for _ in 0..header.records {
        let start = at;
        let len = varint(batch, &mut at)?;
        let body = at;
        at += 1; // attributes
        let ts_delta = varint(batch, &mut at)?;
        let offset_delta = varint(batch, &mut at)?;
        if header.base_timestamp + ts_delta >= target {
            return Some(header.base_offset + offset_delta);
        }
        at = body.checked_add(usize::try_from(len).ok()?)?;
        if at <= start {
            return None;
        }
    }
    Some(header.base_offset)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a valid uncompressed batch of `n` records with the given timestamps.
    pub fn make_batch(base_ts: i64, n: i32, value: &[u8]) -> Bytes {
        let mut records = Vec::new();
        for i in 0..n {
            let mut rec = Vec::new();
            rec.push(0u8); // attributes
            put_varint(&mut rec, i as i64); // timestamp delta
            put_varint(&mut rec, i as i64); // offset delta
            put_varint(&mut rec, -1); // key length
            put_varint(&mut rec, value.len() as i64);
            rec.extend_from_slice(value);
            put_varint(&mut rec, 0); // headers
            put_varint(&mut records, rec.len() as i64);
            records.extend_from_slice(&rec);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&((HEADER_LEN - LOG_OVERHEAD + records.len()) as i32).to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        b.push(2);
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(n - 1).to_be_bytes());
        b.extend_from_slice(&base_ts.to_be_bytes());
        b.extend_from_slice(&(base_ts + n as i64 - 1).to_be_bytes());
        b.extend_from_slice(&(-1i64).to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&records);
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(b)
    }

    fn put_varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            if z < 0x80 {
                out.push(z as u8);
                break;
            }
            out.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
    }

    #[test]
    fn validates_and_detects_corruption() {
        let b = make_batch(1000, 3, b"hello");
        let h = validate(&b).unwrap();
        assert_eq!(h.records, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.size, b.len());
        let mut bad = BytesMut::from(&b[..]);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert_eq!(validate(&bad), Err(BatchError::Crc));
        assert!(matches!(validate(&b[..30]), Err(BatchError::Truncated(30))));
    }

    #[test]
    fn assign_patches_offset_and_log_append_time() {
        let b = make_batch(1000, 2, b"x");
        let p = assign(&b, 42, None);
        assert_eq!(validate(&p).unwrap().base_offset, 42);
        assert_eq!(&p[8..], &b[8..]);
        let p = assign(&b, 7, Some(99_999));
        let h = validate(&p).unwrap();
        assert_eq!(h.max_timestamp, 99_999);
        assert_ne!(h.attributes & TIMESTAMP_TYPE_BIT, 0);
    }

    #[test]
    fn timestamp_lookup_inside_batch() {
        let b = assign(&make_batch(1000, 5, b"v"), 10, None);
        let h = validate(&b).unwrap();
        assert_eq!(offset_for_timestamp(&b, &h, 1002), Some(12));
        assert_eq!(offset_for_timestamp(&b, &h, 0), Some(10));
        assert_eq!(offset_for_timestamp(&b, &h, 2000), None);
    }

    #[test]
    fn split_concatenated_batches() {
        let a = make_batch(1, 2, b"a");
        let b = make_batch(2, 1, b"b");
        let mut all = BytesMut::new();
        all.extend_from_slice(&a);
        all.extend_from_slice(&b);
        let parts = split(&all.freeze()).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].1, b);
    }
}

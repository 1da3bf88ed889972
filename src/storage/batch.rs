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

use super::inflate::{Codec, MAX_INFLATED_BYTES};

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
/// Attributes bit 4: the batch belongs to a transaction.
pub const TRANSACTIONAL_BIT: i16 = 0x10;
/// Attributes bit 5: the batch holds a control record (a transaction marker).
pub const CONTROL_BIT: i16 = 0x20;

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
        self.attributes & CONTROL_BIT != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }
}

/// What a transaction marker (the one control record of a control batch) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkerRecord {
    /// COMMIT (type 1) rather than ABORT (type 0).
    pub commit: bool,
    pub coordinator_epoch: i32,
}

/// A control batch as Kafka writes an end-transaction marker: magic 2, the transactional
/// and control attribute bits, no compression, CreateTime `timestamp`, the producer's id
/// and epoch, base sequence -1, and one record whose key is (version i16 0, type i16: 0
/// abort, 1 commit) and whose value is (version i16 0, coordinator epoch i32). Offset 0;
/// the log assigns the real one.
pub fn control_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: MarkerRecord,
    timestamp: i64,
) -> Result<Bytes, String> {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let mut key = BytesMut::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&i16::from(marker.commit).to_be_bytes());
    let mut value = BytesMut::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&marker.coordinator_epoch.to_be_bytes());
    let record = Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp,
        key: Some(key.freeze()),
        value: Some(value.freeze()),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        std::iter::once(&record),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

/// The marker a control batch carries; `None` when `h` is not a control batch or its
/// record is not an end-transaction marker Kafka knows (or is malformed).
pub fn marker_of(batch: &Bytes, h: &BatchHeader) -> Option<MarkerRecord> {
    if !h.is_control() || h.records < 1 {
        return None;
    }
    let records = inflate(batch, h).ok()?;
    let mut at = 0;
    varint(&records, &mut at)?; // record length
    at += 1; // attributes
    varint(&records, &mut at)?; // timestamp delta
    varint(&records, &mut at)?; // offset delta
    let key_len = usize::try_from(varint(&records, &mut at)?).ok()?;
    let key = records.get(at..at.checked_add(key_len)?)?;
    at += key_len;
    if key.len() < 4 {
        return None;
    }
    let commit = match i16_at(key, 2) {
        0 => false,
        1 => true,
        _ => return None,
    };
    let value_len = usize::try_from(varint(&records, &mut at)?).ok()?;
    let value = records.get(at..at.checked_add(value_len)?)?;
    let coordinator_epoch = if value.len() >= 6 {
        i32_at(value, 2)
    } else {
        -1
    };
    Some(MarkerRecord {
        commit,
        coordinator_epoch,
    })
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

/// The leading whole batches of `records` that fit in `limit` bytes (KIP-74): when none
/// fits and `first_may_exceed` (nothing has been put in the answer yet), the first batch
/// alone, so a consumer always progresses past a batch larger than its limits. A partial
/// batch at the end is left out.
fn within(records: Bytes, limit: usize, first_may_exceed: bool) -> Bytes {
    let mut end = 0;
    while let Some(h) = BatchHeader::parse(&records[end..]) {
        if h.size == 0 || end + h.size > records.len() {
            break;
        }
        if end + h.size > limit {
            if end == 0 && first_may_exceed {
                end = h.size;
            }
            break;
        }
        end += h.size;
    }
    records.slice(..end)
}

/// The leading whole batches of `records` that end below offset `end` (a read_committed
/// read stops at the last stable offset), and the offset after the last one kept (the
/// first batch's base when none is kept, 0 when there is none).
fn before(records: Bytes, end: i64) -> (Bytes, i64) {
    let mut at = 0;
    let mut next = BatchHeader::parse(&records).map_or(0, |h| h.base_offset);
    while let Some(h) = BatchHeader::parse(&records[at..]) {
        if h.size == 0 || at + h.size > records.len() || h.last_offset() >= end {
            break;
        }
        at += h.size;
        next = h.last_offset() + 1;
    }
    (records.slice(..at), next)
}

/// Whole record batches read from a log, in offset order, in one or more pieces: each piece
/// is one or more whole batches as the log holds them (a read from the tail cache gives a
/// piece per batch, never joined; a read from disk gives one). Sent to the reader's shard
/// as it is, and written to a socket piece by piece (`kafka::codec::Section`).
#[derive(Debug, Clone, Default)]
pub struct Batches {
    pieces: smallvec::SmallVec<[Bytes; 4]>,
}

impl Batches {
    /// Bytes in all the pieces.
    pub fn len(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.iter().all(Bytes::is_empty)
    }

    pub fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }

    /// Adds a piece of whole batches after the others.
    pub fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.pieces.push(piece);
        }
    }

    /// The batches as one buffer: the piece itself when there is one, else a copy.
    pub fn joined(&self) -> Bytes {
        match &self.pieces[..] {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut out = BytesMut::with_capacity(self.len());
                for piece in many {
                    out.extend_from_slice(piece);
                }
                out.freeze()
            }
        }
    }

    /// Each whole batch with its header, in order (a partial batch ends its piece).
    pub fn each(&self) -> impl Iterator<Item = (BatchHeader, Bytes)> + '_ {
        self.pieces.iter().flat_map(|piece| {
            let mut at = 0;
            std::iter::from_fn(move || {
                let h = BatchHeader::parse(&piece[at..]).filter(|h| h.size > 0)?;
                let end = Some(at + h.size).filter(|end| *end <= piece.len())?;
                let one = piece.slice(at..end);
                at = end;
                Some((h, one))
            })
        })
    }

    /// Records in the complete batches.
    pub fn record_count(&self) -> u64 {
        self.pieces.iter().map(|p| record_count(p)).sum()
    }

    /// `within` over the pieces: the leading whole batches that fit in `limit` bytes (the
    /// first alone when none fits and `first_may_exceed`).
    pub fn within(self, limit: usize, first_may_exceed: bool) -> Batches {
        let mut out = Batches::default();
        let mut used = 0;
        for piece in self.pieces {
            let whole = piece.len();
            let kept = within(
                piece,
                limit - used.min(limit),
                first_may_exceed && used == 0,
            );
            used += kept.len();
            let cut = kept.len() < whole;
            out.push(kept);
            if cut {
                break;
            }
        }
        out
    }

    /// `before` over the pieces: the leading whole batches that end below offset `end`,
    /// and the offset after the last one kept (the first batch's base when none is kept, 0
    /// when there is none).
    pub fn before(self, end: i64) -> (Batches, i64) {
        let mut out = Batches::default();
        let mut next = self
            .pieces
            .first()
            .and_then(|p| BatchHeader::parse(p))
            .map_or(0, |h| h.base_offset);
        for piece in self.pieces {
            let whole = piece.len();
            let (kept, after) = before(piece, end);
            let cut = kept.len() < whole;
            if !kept.is_empty() {
                next = after;
            }
            out.push(kept);
            if cut {
                break;
            }
        }
        (out, next)
    }
}

impl From<Bytes> for Batches {
    fn from(piece: Bytes) -> Batches {
        let mut out = Batches::default();
        out.push(piece);
        out
    }
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
/// timestamp type bit and maxTimestamp; with `create_time_max` (see `create_time_max`)
/// sets maxTimestamp to it. Either recomputes the CRC (the only bytes changed).
pub fn assign(
    batch: &Bytes,
    base_offset: i64,
    log_append_time: Option<i64>,
    create_time_max: Option<i64>,
) -> Bytes {
    let mut b = BytesMut::from(&batch[..]);
    b[0..8].copy_from_slice(&base_offset.to_be_bytes());
    let max = match (log_append_time, create_time_max) {
        (Some(now), _) => {
            let attributes = i16_at(&b, ATTRIBUTES_OFFSET) | TIMESTAMP_TYPE_BIT;
            b[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
            Some(now)
        }
        (None, max) => max,
    };
    if let Some(max) = max {
        b[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&max.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    }
    b.freeze()
}

/// The true largest record timestamp of a CreateTime batch whose maxTimestamp field is
/// wrong, or `None` when the field is right (or cannot be checked). Kafka's broker always
/// rewrites maxTimestamp from the records (its LogValidator); some producers leave it unset
/// (Sarama before 1.23 writes -1), which would hide their batches from ListOffsets by time
/// and from time-based retention. An uncompressed batch is walked record by record (a
/// varint scan, no copy); a compressed one is inflated only when its maxTimestamp is below
/// its baseTimestamp, which no correctly built batch has.
pub fn create_time_max(batch: &Bytes, h: &BatchHeader) -> Option<i64> {
    if h.attributes & TIMESTAMP_TYPE_BIT != 0 || h.records <= 0 {
        return None;
    }
    if h.compression() != 0 && h.max_timestamp >= h.base_timestamp {
        return None;
    }
    let records = inflate(batch, h).ok()?;
    let mut max = i64::MIN;
    each_record(&records, h.records, |ts_delta, _| {
        max = max.max(h.base_timestamp.saturating_add(ts_delta));
        true
    })?;
    (max != i64::MIN && max != h.max_timestamp).then_some(max)
}

/// Calls `f(timestamp delta, offset delta)` for each of the `count` records of an
/// (inflated) records section until it returns false. `None` when the section is
/// malformed.
fn each_record(records: &[u8], count: i32, mut f: impl FnMut(i64, i64) -> bool) -> Option<()> {
    let mut at = 0;
    for _ in 0..count {
        let start = at;
        let len = varint(records, &mut at)?;
        let body = at;
        at += 1; // attributes
        let ts_delta = varint(records, &mut at)?;
        let offset_delta = varint(records, &mut at)?;
        if !f(ts_delta, offset_delta) {
            return Some(());
        }
        at = body.checked_add(usize::try_from(len).ok()?)?;
        if at <= start {
            return None;
        }
    }
    Some(())
}

/// The indexes (within the batch) of its records that have no key: what a compacted topic
/// refuses (Kafka's LogValidator). A control batch has none. `Err` when the records
/// section cannot be inflated or walked.
pub fn keyless_records(batch: &Bytes, h: &BatchHeader) -> Result<Vec<i32>, String> {
    if h.is_control() || h.records <= 0 {
        return Ok(Vec::new());
    }
    let records = inflate(batch, h)?;
    let mut keyless = Vec::new();
    let mut at = 0;
    for i in 0..h.records {
        let start = at;
        let malformed = || format!("record {i} of the batch is malformed");
        let len = varint(&records, &mut at).ok_or_else(malformed)?;
        let body = at;
        at += 1; // attributes
        varint(&records, &mut at).ok_or_else(malformed)?; // timestamp delta
        varint(&records, &mut at).ok_or_else(malformed)?; // offset delta
        let key_len = varint(&records, &mut at).ok_or_else(malformed)?;
        if key_len < 0 {
            keyless.push(i);
        }
        at = usize::try_from(len)
            .ok()
            .and_then(|l| body.checked_add(l))
            .filter(|&end| end > start && end <= records.len())
            .ok_or_else(malformed)?;
    }
    Ok(keyless)
}

/// Appends `v` as a zig-zag varint (Kafka's record encoding).
pub fn put_varint(out: &mut impl bytes::BufMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.put_u8(z as u8);
            break;
        }
        out.put_u8((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

/// Reads a zig-zag varint (Kafka's record encoding); `None` on a short buffer. The one
/// varint reader of the crate (the compactor splits records with it too). A one-byte
/// varint (any value from -64 to 63: most of a record's lengths and deltas) is read inline.
#[inline]
pub fn varint(b: &[u8], at: &mut usize) -> Option<i64> {
    let first = *b.get(*at)?;
    if first & 0x80 == 0 {
        *at += 1;
        return Some(((first >> 1) as i64) ^ -((first & 1) as i64));
    }
    long_varint(b, at)
}

/// `varint` of two bytes or more.
fn long_varint(b: &[u8], at: &mut usize) -> Option<i64> {
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

/// The records section of a batch (what follows its header), inflated when the batch is
/// compressed, to at most `inflate::MAX_INFLATED_BYTES`.
pub fn inflate(batch: &Bytes, h: &BatchHeader) -> Result<Bytes, String> {
    let section = batch.slice(HEADER_LEN.min(batch.len())..h.size.min(batch.len()));
    Codec::from_id(h.compression())
        .and_then(|codec| super::inflate::inflate(section, codec, MAX_INFLATED_BYTES))
        .map_err(|e| format!("record batch codec: {e}"))
}

/// The first record of `batch` whose timestamp is at or after `target`: its offset and
/// timestamp, as ListOffsets answers them. A compressed batch is inflated to find the exact
/// record, as Kafka does; under LogAppendTime every record carries the batch's
/// maxTimestamp. `None` when no record qualifies.
pub fn offset_for_timestamp(
    batch: &Bytes,
    header: &BatchHeader,
    target: i64,
) -> Option<(i64, i64)> {
    if header.max_timestamp < target {
        return None;
    }
    let whole_batch = Some((header.base_offset, header.max_timestamp));
    if header.attributes & TIMESTAMP_TYPE_BIT != 0 {
        return whole_batch;
    }
    let Ok(records) = inflate(batch, header) else {
        return whole_batch;
    };
    let mut found = None;
    each_record(&records, header.records, |ts_delta, offset_delta| {
        let ts = header.base_timestamp.saturating_add(ts_delta);
        if ts >= target {
            found = Some((header.base_offset + offset_delta, ts));
        }
        found.is_none()
    });
    found.or(whole_batch)
}

/// The headers of one record, as kafka-protocol keeps them.
pub type Headers =
    kafka_protocol::indexmap::IndexMap<kafka_protocol::protocol::StrBytes, Option<Bytes>>;

/// One record as a plain producer sends it: a timestamp (CreateTime; -1 for none), key,
/// value and headers.
pub struct PlainRecord {
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Headers,
}

/// One v2 batch of `records` as a producer without idempotence or transactions writes it
/// (no producer id, base sequence -1, CreateTime), offsets 0.. in order, compressed with
/// `compression`. Used where the broker builds batches itself: the REST publish and old
/// message sets converted on the way in.
pub fn encode_plain_batch(
    records: impl Iterator<Item = PlainRecord>,
    compression: kafka_protocol::records::Compression,
) -> Result<Bytes, String> {
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let records: Vec<Record> = records
        .enumerate()
        .map(|(i, r)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder keeps records in one batch while offset - sequence stays the
            // same and takes the batch's base sequence from the first record: -1, as a
            // batch of a non-idempotent producer has.
            sequence: i as i32 - 1,
            timestamp: r.timestamp,
            key: r.key,
            value: r.value,
            headers: r.headers,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(buf.freeze())
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

    /// A batch of `n` records (keys `k<i>`) of a transactional (idempotent) producer.
    pub fn txn_batch(producer_id: i64, epoch: i16, base_sequence: i32, n: i32) -> Bytes {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: true,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id,
                producer_epoch: epoch,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: base_sequence + i,
                timestamp: 1_000 + i as i64,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from_static(b"v")),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        buf.freeze()
    }

    /// Every value reads back as written, one-byte varints (-64..=63) and longer ones
    /// alike, with the position past it; a short buffer or an over-long varint is `None`.
    #[test]
    fn varints_read_back_what_put_varint_wrote() {
        let values = [0, 1, -1, 63, -64, 64, -65, 300, -300, i64::MAX, i64::MIN];
        for v in values.into_iter().chain((-200..200).map(|v| v * 37)) {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len() == 1, (-64..=63).contains(&v), "{v}");
            b.push(0xff);
            let mut at = 0;
            assert_eq!(varint(&b, &mut at), Some(v));
            assert_eq!(at, b.len() - 1, "{v}");
            let short = &b[..b.len() - 2];
            assert_eq!(varint(short, &mut 0), None, "{v} cut short");
        }
        assert_eq!(varint(&[0x80; 11], &mut 0), None, "more than ten bytes");
        assert_eq!(varint(&[], &mut 0), None);
    }

    /// The control batch is what Kafka writes, and reads back as the marker it carries.
    #[test]
    fn control_batches_carry_their_marker() {
        for commit in [false, true] {
            let marker = MarkerRecord {
                commit,
                coordinator_epoch: 7,
            };
            let b = control_batch(42, 3, marker, 5_000).unwrap();
            let h = validate(&b).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(h.compression(), 0);
            assert_eq!((h.producer_id, h.producer_epoch), (42, 3));
            assert_eq!(
                (h.base_sequence, h.records, h.last_offset_delta),
                (-1, 1, 0)
            );
            assert_eq!((h.base_timestamp, h.max_timestamp), (5_000, 5_000));
            assert_eq!(marker_of(&b, &h), Some(marker));
            // Key (version 0, type) and value (version 0, coordinator epoch), as Kafka.
            let section = &b[HEADER_LEN..];
            let key = [0, 0, 0, u8::from(commit)];
            assert!(section.windows(4).any(|w| w == key));
            assert!(section.windows(6).any(|w| w == [0, 0, 0, 0, 0, 7]));
        }
        let data = txn_batch(42, 3, 0, 2);
        let h = validate(&data).unwrap();
        assert!(h.is_transactional() && !h.is_control());
        assert_eq!(marker_of(&data, &h), None);
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
        let p = assign(&b, 42, None, None);
        assert_eq!(validate(&p).unwrap().base_offset, 42);
        assert_eq!(&p[8..], &b[8..]);
        let p = assign(&b, 7, Some(99_999), None);
        let h = validate(&p).unwrap();
        assert_eq!(h.max_timestamp, 99_999);
        assert_ne!(h.attributes & TIMESTAMP_TYPE_BIT, 0);
    }

    #[test]
    fn timestamp_lookup_inside_batch() {
        let b = assign(&make_batch(1000, 5, b"v"), 10, None, None);
        let h = validate(&b).unwrap();
        assert_eq!(offset_for_timestamp(&b, &h, 1002), Some((12, 1002)));
        assert_eq!(offset_for_timestamp(&b, &h, 0), Some((10, 1000)));
        assert_eq!(offset_for_timestamp(&b, &h, 2000), None);
    }

    /// `batch` with its records section gzip-compressed (attributes, length and CRC fixed).
    fn gzipped(batch: &Bytes) -> Bytes {
        use kafka_protocol::compression::{Compressor, Gzip};
        let mut section = BytesMut::new();
        Gzip::compress(&mut section, |out: &mut BytesMut| -> anyhow::Result<()> {
            out.extend_from_slice(&batch[HEADER_LEN..]);
            Ok(())
        })
        .unwrap();
        let mut b = BytesMut::from(&batch[..HEADER_LEN]);
        b.extend_from_slice(&section);
        let length = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&length.to_be_bytes());
        let attributes = i16_at(&b, ATTRIBUTES_OFFSET) | 1;
        b[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        b.freeze()
    }

    /// `batch` with its maxTimestamp field set to `max` (CRC fixed).
    fn with_max_timestamp(batch: &Bytes, max: i64) -> Bytes {
        let mut b = BytesMut::from(&batch[..]);
        b[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&max.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        b.freeze()
    }

    /// Sarama before 1.23 sends maxTimestamp -1; the broker puts the records' own maximum
    /// there, as Kafka's does, and leaves right batches alone.
    #[test]
    fn wrong_max_timestamp_is_recomputed() {
        let good = make_batch(1000, 4, b"v");
        assert_eq!(create_time_max(&good, &validate(&good).unwrap()), None);
        let unset = with_max_timestamp(&good, -1);
        let h = validate(&unset).unwrap();
        assert_eq!(create_time_max(&unset, &h), Some(1003));
        let fixed = assign(&unset, 5, None, Some(1003));
        let h = validate(&fixed).unwrap();
        assert_eq!((h.base_offset, h.max_timestamp), (5, 1003));
        assert_eq!(offset_for_timestamp(&fixed, &h, 1001), Some((6, 1001)));
        let zipped = gzipped(&unset);
        assert_eq!(
            create_time_max(&zipped, &validate(&zipped).unwrap()),
            Some(1003)
        );
        // A compressed batch with a plausible maxTimestamp is not inflated.
        let zipped = gzipped(&good);
        assert_eq!(create_time_max(&zipped, &validate(&zipped).unwrap()), None);
    }

    /// Kafka finds the exact record inside a compressed batch and answers its timestamp,
    /// not the batch's base offset or the timestamp asked for.
    #[test]
    fn timestamp_lookup_inside_compressed_batch() {
        let b = gzipped(&assign(&make_batch(1000, 5, b"v"), 10, None, None));
        let h = validate(&b).unwrap();
        assert_eq!(h.compression(), 1);
        assert_eq!(offset_for_timestamp(&b, &h, 1003), Some((13, 1003)));
        assert_eq!(offset_for_timestamp(&b, &h, 1), Some((10, 1000)));
        assert_eq!(offset_for_timestamp(&b, &h, 1005), None);
        // Under LogAppendTime every record has the batch's maxTimestamp.
        let lat = assign(&b, 10, Some(5000), None);
        let h = validate(&lat).unwrap();
        assert_eq!(offset_for_timestamp(&lat, &h, 4000), Some((10, 5000)));
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

    /// KIP-74 trimming: whole batches within the limit; the first batch alone only when
    /// it may exceed it; a truncated tail is never returned.
    #[test]
    fn within_keeps_whole_batches_under_the_limit() {
        let one = make_batch(0, 3, b"abc");
        let n = one.len();
        let mut three = BytesMut::new();
        for _ in 0..3 {
            three.extend_from_slice(&one);
        }
        let three = three.freeze();
        assert_eq!(within(three.clone(), 3 * n, false).len(), 3 * n);
        assert_eq!(within(three.clone(), 2 * n + 1, false).len(), 2 * n);
        assert_eq!(within(three.clone(), n - 1, true).len(), n);
        assert!(within(three.clone(), n - 1, false).is_empty());
        assert_eq!(
            within(three.slice(..2 * n + 5), 3 * n - 1, false).len(),
            2 * n
        );
    }

    /// Batches in pieces (as the tail cache gives them, a piece per batch, and as a disk read
    /// does, several in one) answer `within`, `before`, `each` and `record_count` exactly as
    /// the same batches joined in one buffer do.
    #[test]
    fn batches_in_pieces_read_as_the_joined_bytes() {
        let at = |base: i64, n: i32| assign(&make_batch(0, n, b"abc"), base, None, None);
        let (b0, b1, b2, b3) = (at(0, 2), at(2, 3), at(5, 1), at(6, 4));
        let mut batches = Batches::default();
        batches.push(b0.clone());
        batches.push(Bytes::new());
        batches.push(Bytes::from([&b1[..], &b2[..]].concat()));
        batches.push(b3.clone());
        let joined = Bytes::from([&b0[..], &b1[..], &b2[..], &b3[..]].concat());
        assert_eq!(batches.pieces().len(), 3, "an empty piece is not kept");
        assert_eq!(batches.joined(), joined);
        assert_eq!(batches.len(), joined.len());
        assert_eq!(batches.record_count(), 10);
        let bases: Vec<i64> = batches.each().map(|(h, _)| h.base_offset).collect();
        assert_eq!(bases, [0, 2, 5, 6]);
        for limit in 0..=joined.len() + 1 {
            for first in [false, true] {
                let pieces = batches.clone().within(limit, first);
                assert_eq!(
                    pieces.joined(),
                    within(joined.clone(), limit, first),
                    "{limit}"
                );
            }
        }
        for end in 0..12 {
            let (pieces, next) = batches.clone().before(end);
            let (plain, plain_next) = before(joined.clone(), end);
            assert_eq!((pieces.joined(), next), (plain, plain_next), "{end}");
        }
        assert!(Batches::default().before(3).0.is_empty());
    }

    /// make_batch's records have no key: every index is reported; a malformed section is
    /// an error, not a panic.
    #[test]
    fn keyless_records_are_named_by_index() {
        let b = make_batch(0, 3, b"v");
        let h = BatchHeader::parse(&b).expect("header");
        assert_eq!(keyless_records(&b, &h), Ok(vec![0, 1, 2]));
        let mut lying = h;
        lying.records = 5;
        assert!(keyless_records(&b, &lying).is_err());
    }
}

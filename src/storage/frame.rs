//! The one checksummed record framing of the broker's own files: `len u32 BE |
//! crc32 u32 BE (crc32fast over the payload) | payload`.
//!
//! Used by every file the broker frames itself: AMQP queue segments and their marks
//! (`storage::journal`), the catalog's log (`catalog::store`) and the group offset log
//! (`kafka::groups::store`). Kafka segments hold record batches verbatim instead, since a
//! batch carries its own length and CRC-32C and fetches send the file bytes unchanged.
//! Pure functions, any shard.
//!
//! Reading stops at the first record that is short, has a zero length, or fails its
//! CRC: DMA files end in zero padding up to the block, and a torn write leaves a short
//! or corrupt record. Everything from there on is the torn tail a recovery truncates.
//! No writer emits an empty record, so a zero length is always padding.

/// Bytes of the header before each payload.
pub const HEADER: usize = 8;

/// Appends one framed record to `out`.
pub fn put(payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
}

/// One framed record as a new buffer.
pub fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    put(payload, &mut out);
    out
}

/// The intact records at the start of `data`, each with the position of its frame.
pub fn records(data: &[u8]) -> Records<'_> {
    Records { data, at: 0 }
}

/// Splits framed records; returns their payloads and the length of the intact prefix.
pub fn split(data: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut it = records(data);
    let out = it.by_ref().map(|(_, p)| p).collect();
    (out, it.valid())
}

/// Iterator over `(frame position, payload)` of the intact prefix of a buffer.
pub struct Records<'a> {
    data: &'a [u8],
    at: usize,
}

impl Records<'_> {
    /// Length of the intact prefix read so far (all of it once the iterator is done).
    pub fn valid(&self) -> usize {
        self.at
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<(usize, &'a [u8])> {
        let head = self.data.get(self.at..self.at + HEADER)?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 {
            return None;
        }
        let start = self.at + HEADER;
        let payload = self.data.get(start..start.checked_add(len)?)?;
        if crc32fast::hash(payload) != crc {
            return None;
        }
        let at = self.at;
        self.at = start + len;
        Some((at, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_stop_at_damage() {
        let mut file = Vec::new();
        put(b"one", &mut file);
        put(b"second", &mut file);
        let good = file.len();
        assert_eq!(split(&file), (vec![&b"one"[..], &b"second"[..]], good));
        let positions: Vec<usize> = records(&file).map(|(at, _)| at).collect();
        assert_eq!(positions, vec![0, HEADER + 3]);
        // Zero padding, a short record and a bad checksum each end the intact prefix.
        let mut padded = file.clone();
        padded.extend_from_slice(&[0; 512]);
        assert_eq!(split(&padded).1, good);
        let mut short = file.clone();
        short.extend_from_slice(&[0, 0, 0, 9, 1, 2, 3, 4, 5]);
        assert_eq!(split(&short).1, good);
        let mut bad = file.clone();
        put(b"third", &mut bad);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(split(&bad), (vec![&b"one"[..], &b"second"[..]], good));
        // A length past the end of the buffer (or of the address space) is a torn tail.
        let mut huge = file.clone();
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(split(&huge).1, good);
        assert_eq!(framed(b"one"), file[..HEADER + 3].to_vec());
    }
}

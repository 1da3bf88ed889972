//! Bounded decompression of a record batch's records section (gzip, snappy, lz4, zstd as
//! Kafka producers write them).
//!
//! Pure functions, called on the shard that holds the batch: the partition owner when it
//! checks a produced batch's timestamps or compacts a segment, the HTTP connection's shard
//! when REST reads records. The output never grows past `MAX_INFLATED_BYTES`: a batch
//! that would inflate further (a compression bomb, or garbage that a codec takes for a
//! huge length) is an error, found before the memory is taken. kafka-protocol's own
//! decompressors grow their output without a limit, which is why this module exists.

use std::io::Read;

use bytes::Bytes;

/// The most a records section may inflate to. A batch is at most `max.message.bytes`
/// (1 MiB by default) compressed; 128 MiB leaves room for a 128:1 ratio on the default,
/// which real payloads do not reach, while bounding what one request can make a shard
/// allocate. Every caller degrades without losing data when a batch goes over: produce
/// keeps the batch as sent, ListOffsets answers for the whole batch, compaction keeps
/// the batch, a REST read reports the batch as unreadable.
pub const MAX_INFLATED_BYTES: usize = 128 << 20;

/// Kafka's compression codec ids (the low three bits of a batch's attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    pub fn from_id(id: i16) -> Result<Codec, InflateError> {
        Ok(match id {
            0 => Codec::None,
            1 => Codec::Gzip,
            2 => Codec::Snappy,
            3 => Codec::Lz4,
            4 => Codec::Zstd,
            c => return Err(InflateError::UnknownCodec(c)),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    #[error("unknown compression codec {0}")]
    UnknownCodec(i16),
    #[error("records inflate past {0} bytes")]
    TooLarge(usize),
    #[error("{0} records section is malformed: {1}")]
    Malformed(&'static str, String),
}

/// Inflates `section` (the bytes after a batch header) with `codec`, to at most `limit`
/// bytes. Uncompressed sections come back as they are, without a copy.
pub fn inflate(section: Bytes, codec: Codec, limit: usize) -> Result<Bytes, InflateError> {
    let out = match codec {
        Codec::None => return Ok(section),
        Codec::Gzip => read_bounded(
            "gzip",
            flate2::read::MultiGzDecoder::new(&section[..]),
            limit,
        )?,
        Codec::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(&section[..])
                .map_err(|e| InflateError::Malformed("zstd", e.to_string()))?;
            read_bounded("zstd", decoder, limit)?
        }
        Codec::Lz4 => {
            // liblz4's reader ends quietly on input that is no frame at all.
            if !section.starts_with(&LZ4_FRAME_MAGIC) {
                return Err(InflateError::Malformed("lz4", "no LZ4 frame magic".into()));
            }
            let decoder = lz4::Decoder::new(&section[..])
                .map_err(|e| InflateError::Malformed("lz4", e.to_string()))?;
            read_bounded("lz4", decoder, limit)?
        }
        Codec::Snappy => snappy(&section, limit)?,
    };
    Ok(Bytes::from(out))
}

/// The first bytes of an LZ4 frame (Kafka uses the frame format, KIP-57).
const LZ4_FRAME_MAGIC: [u8; 4] = 0x184D2204u32.to_le_bytes();

/// Reads `reader` to its end, refusing to go past `limit` bytes of output.
fn read_bounded(
    what: &'static str,
    reader: impl Read,
    limit: usize,
) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| InflateError::Malformed(what, e.to_string()))?;
    if out.len() > limit {
        return Err(InflateError::TooLarge(limit));
    }
    Ok(out)
}

/// The framing snappy-java (the Java producer) writes: a 16-byte magic header, then blocks
/// of `u32 compressed length | raw snappy block`. Anything without the header is one raw
/// snappy block, as Kafka's reader accepts.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;

fn snappy(section: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::new();
    if section.len() < XERIAL_HEADER_LEN || !section.starts_with(XERIAL_MAGIC) {
        snappy_block(section, &mut out, limit)?;
        return Ok(out);
    }
    let mut rest = &section[XERIAL_HEADER_LEN..];
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(InflateError::Malformed(
                "snappy",
                "truncated block length".into(),
            ));
        };
        let len = u32::from_be_bytes(*len) as usize;
        let Some(block) = tail.get(..len) else {
            return Err(InflateError::Malformed("snappy", "truncated block".into()));
        };
        snappy_block(block, &mut out, limit)?;
        rest = &tail[len..];
    }
    Ok(out)
}

/// Appends one raw snappy block to `out`; its stated length is checked against what may
/// still be added before any memory is taken for it.
fn snappy_block(block: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
    let len = snap::raw::decompress_len(block)
        .map_err(|e| InflateError::Malformed("snappy", e.to_string()))?;
    if len > limit.saturating_sub(out.len()) {
        return Err(InflateError::TooLarge(limit));
    }
    let start = out.len();
    out.resize(start + len, 0);
    let n = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| InflateError::Malformed("snappy", e.to_string()))?;
    out.truncate(start + n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("gzip into a Vec");
        Bytes::from(e.finish().expect("gzip into a Vec"))
    }

    #[test]
    fn every_codec_inflates_what_it_deflated() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_be_bytes())
            .collect();
        let zstd = zstd::bulk::compress(&data, 3).expect("zstd");
        let mut lz4 = lz4::EncoderBuilder::new()
            .build(Vec::new())
            .expect("lz4 encoder");
        lz4.write_all(&data).expect("lz4");
        let (lz4, done) = lz4.finish();
        done.expect("lz4 finish");
        let raw_snappy = snap::raw::Encoder::new()
            .compress_vec(&data)
            .expect("snappy");
        let mut xerial = Vec::from(&b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01"[..]);
        for chunk in data.chunks(32 * 1024) {
            let block = snap::raw::Encoder::new()
                .compress_vec(chunk)
                .expect("snappy");
            xerial.extend_from_slice(&(block.len() as u32).to_be_bytes());
            xerial.extend_from_slice(&block);
        }
        for (codec, section) in [
            (Codec::Gzip, gzip(&data)),
            (Codec::Zstd, Bytes::from(zstd)),
            (Codec::Lz4, Bytes::from(lz4)),
            (Codec::Snappy, Bytes::from(raw_snappy)),
            (Codec::Snappy, Bytes::from(xerial)),
            (Codec::None, Bytes::from(data.clone())),
        ] {
            let out = inflate(section, codec, MAX_INFLATED_BYTES).expect("inflates");
            assert_eq!(out, data, "{codec:?}");
        }
    }

    /// A compression bomb stops at the limit instead of taking the memory it asks for.
    #[test]
    fn output_past_the_limit_is_refused() {
        let zeros = vec![0u8; 4 << 20];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 64 * 1024);
        assert_eq!(
            inflate(bomb.clone(), Codec::Gzip, 1 << 20),
            Err(InflateError::TooLarge(1 << 20))
        );
        assert_eq!(
            inflate(bomb, Codec::Gzip, 4 << 20).map(|b| b.len()),
            Ok(4 << 20)
        );
        let zstd = Bytes::from(zstd::bulk::compress(&zeros, 3).expect("zstd"));
        assert_eq!(
            inflate(zstd, Codec::Zstd, 1 << 20),
            Err(InflateError::TooLarge(1 << 20))
        );
        // A raw snappy block whose varint header claims 4 GiB is refused from the header.
        let claims_4g = Bytes::from_static(b"\xff\xff\xff\xff\x0f\x00");
        assert_eq!(
            inflate(claims_4g, Codec::Snappy, MAX_INFLATED_BYTES),
            Err(InflateError::TooLarge(MAX_INFLATED_BYTES))
        );
    }

    #[test]
    fn garbage_is_an_error() {
        for codec in [Codec::Gzip, Codec::Zstd, Codec::Lz4, Codec::Snappy] {
            for input in [
                &b"\x05\x00"[..],
                b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01\xff",
            ] {
                let r = inflate(Bytes::copy_from_slice(input), codec, 1 << 20);
                assert!(
                    matches!(r, Err(InflateError::Malformed(..))),
                    "{codec:?} {input:?}: {r:?}"
                );
            }
        }
        assert_eq!(Codec::from_id(5), Err(InflateError::UnknownCodec(5)));
    }
}

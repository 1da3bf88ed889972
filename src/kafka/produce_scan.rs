//! A count of a Produce request's topic and partition entries, read from its body without
//! decoding it: what the decoded request will hold, known before the memory is taken.
//!
//! Pure functions, run by the connection's shard on each Produce frame before
//! `codec::decode_request`. A Produce made of nothing but empty entries decodes to ~33x its
//! frame (a 3-byte flexible topic entry is a 96-byte struct), so one of
//! `kafka.max_request_bytes` could hold gigabytes; the server refuses a frame whose entries
//! would hold more than its shard's whole in-flight budget. Records are skipped, not read.
//! Anything the scan cannot follow is `None`, and the decoder gives the client its error.

use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};

/// The topic and partition entries of a Produce body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entries {
    pub topics: usize,
    pub partitions: usize,
}

impl Entries {
    /// The bytes these entries take decoded (the records stay slices of the frame).
    pub fn held(&self) -> usize {
        self.topics
            .saturating_mul(std::mem::size_of::<TopicProduceData>())
            .saturating_add(
                self.partitions
                    .saturating_mul(std::mem::size_of::<PartitionProduceData>()),
            )
    }
}

/// Counts the entries of a Produce body (the frame after its request header) at `version`
/// (0..=13; 3 adds the transactional id; 9 and later are flexible; 13 names topics by id).
pub fn entries(body: &[u8], version: i16) -> Option<Entries> {
    let flexible = version >= 9;
    let mut c = Cursor { b: body, at: 0 };
    if version >= 3 {
        c.string(flexible)?; // transactional_id
    }
    c.skip(2 + 4)?; // acks, timeout_ms
    let mut out = Entries {
        topics: c.array_len(flexible)?,
        partitions: 0,
    };
    for _ in 0..out.topics {
        if version >= 13 {
            c.skip(16)?; // topic_id
        } else {
            c.string(flexible)?;
        }
        let partitions = c.array_len(flexible)?;
        for _ in 0..partitions {
            c.skip(4)?; // index
            c.bytes(flexible)?; // records
            c.tagged(flexible)?;
        }
        out.partitions = out.partitions.saturating_add(partitions);
        c.tagged(flexible)?;
    }
    Some(out)
}

/// A read position in a body; every step checks the bytes are there.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn skip(&mut self, n: usize) -> Option<()> {
        let end = self.at.checked_add(n)?;
        (end <= self.b.len()).then(|| self.at = end)
    }

    fn fixed<const N: usize>(&mut self) -> Option<[u8; N]> {
        let bytes = self.b.get(self.at..self.at.checked_add(N)?)?;
        self.at += N;
        bytes.try_into().ok()
    }

    fn uvarint(&mut self) -> Option<u32> {
        let mut value = 0u32;
        for shift in (0..35).step_by(7) {
            let [byte] = self.fixed::<1>()?;
            value |= u32::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// A length or count: a compact one (stored + 1, 0 for null) in flexible versions,
    /// else an i16 (`short`) or i32, -1 for null. Null counts as 0; other negatives are
    /// malformed.
    fn length(&mut self, flexible: bool, short: bool) -> Option<usize> {
        if flexible {
            return Some((self.uvarint()? as usize).saturating_sub(1));
        }
        let n = if short {
            i32::from(i16::from_be_bytes(self.fixed()?))
        } else {
            i32::from_be_bytes(self.fixed()?)
        };
        if n == -1 {
            return Some(0);
        }
        usize::try_from(n).ok()
    }

    /// A (nullable) string, skipped.
    fn string(&mut self, flexible: bool) -> Option<()> {
        let len = self.length(flexible, true)?;
        self.skip(len)
    }

    /// Nullable bytes, skipped.
    fn bytes(&mut self, flexible: bool) -> Option<()> {
        let len = self.length(flexible, false)?;
        self.skip(len)
    }

    /// An array's element count, refused when it is more than the bytes left (each element
    /// takes at least one).
    fn array_len(&mut self, flexible: bool) -> Option<usize> {
        let n = self.length(flexible, false)?;
        (n <= self.b.len() - self.at).then_some(n)
    }

    /// A flexible version's tagged fields, skipped.
    fn tagged(&mut self, flexible: bool) -> Option<()> {
        if !flexible {
            return Some(());
        }
        for _ in 0..self.uvarint()? {
            self.uvarint()?; // tag
            let size = self.uvarint()? as usize;
            self.skip(size)?;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn request(topics: usize, partitions: usize) -> ProduceRequest {
        let topic = |t: usize| {
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(format!("topic-{t}"))))
                .with_partition_data(
                    (0..partitions)
                        .map(|p| {
                            PartitionProduceData::default()
                                .with_index(p as i32)
                                .with_records(Some(Bytes::from_static(b"not really records")))
                        })
                        .collect(),
                )
        };
        ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data((0..topics).map(topic).collect())
    }

    /// The scan counts what the decoder would build, at every version: old, flexible, and
    /// topics by id (v13).
    #[test]
    fn counts_match_the_encoded_request_at_every_version() {
        for version in 3..=13 {
            for (topics, partitions) in [(0, 0), (1, 1), (3, 5), (40, 2)] {
                let mut buf = BytesMut::new();
                request(topics, partitions)
                    .encode(&mut buf, version)
                    .expect("encode");
                assert_eq!(
                    entries(&buf, version),
                    Some(Entries {
                        topics,
                        partitions: topics * partitions
                    }),
                    "v{version}"
                );
            }
        }
    }

    #[test]
    fn a_body_that_ends_early_or_lies_is_none() {
        let mut buf = BytesMut::new();
        request(3, 2).encode(&mut buf, 7).expect("encode");
        for cut in 0..buf.len() {
            assert_eq!(entries(&buf[..cut], 7), None, "cut at {cut}");
        }
        // Four topics claimed, none there.
        assert_eq!(
            entries(b"\xff\xff\x00\x01\x00\x00\x13\x88\x00\x00\x00\x04", 7),
            None
        );
    }

    #[test]
    fn empty_entries_are_counted_at_their_decoded_size() {
        // v9: null transactional id, acks, timeout, 1000 topics of an empty name, no
        // partitions, no tags.
        let mut body = vec![0u8, 0xff, 0xff, 0, 0, 0x13, 0x88];
        body.extend_from_slice(&[0xe9, 0x07]); // 1000 + 1
        for _ in 0..1000 {
            body.extend_from_slice(&[1, 1, 0]);
        }
        body.push(0);
        let e = entries(&body, 9).expect("scans");
        assert_eq!(e.topics, 1000);
        assert_eq!(e.held(), 1000 * std::mem::size_of::<TopicProduceData>());
    }
}

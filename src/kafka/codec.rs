//! Kafka request framing: a 4-byte big-endian size, then the request header and body.
//! Decodes the header with the version its API key and version call for, and encodes
//! responses with the matching response header.
//!
//! The APIs and versions it knows are the rows of `apis::kafka_apis`; versions older than
//! kafka-protocol's codecs (Kafka 0.11–3.x's, removed by Kafka 4) go through `legacy`.
//!
//! Pure functions, used by each connection on its own shard and by the fuzz target. Any
//! input — truncated, oversize, unknown API, bad version — gives a `CodecError`, never a
//! panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, VersionRange};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("frame of {0} bytes is outside the accepted range (8..={1})")]
    FrameSize(i64, usize),
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    #[error("{api:?} version {version} is not supported")]
    UnsupportedVersion { api: ApiKey, version: i16 },
    #[error("malformed {0}: {1}")]
    Malformed(&'static str, String),
}

/// Checks a frame's size prefix against the broker's limit.
pub fn frame_len(prefix: [u8; 4], max: usize) -> Result<usize, CodecError> {
    let len = i32::from_be_bytes(prefix) as i64;
    if len < 8 || len as u64 > max as u64 {
        return Err(CodecError::FrameSize(len, max));
    }
    Ok(len as usize)
}

use super::apis::kafka_apis;
use super::legacy;

macro_rules! served {
    ($( ($key:ident, $req:ident, $resp:ident, $min:literal ..= $max:literal, $module:ident, $call:ident), )*) => {
        /// The versions of `api` the broker accepts and advertises in ApiVersions: its row
        /// in `apis::kafka_apis`. APIs the broker does not serve keep kafka-protocol's
        /// table of the versions a Kafka broker accepts (`decode_request` refuses them).
        pub fn versions(api: ApiKey) -> VersionRange {
            match api {
                $( ApiKey::$key => VersionRange { min: $min, max: $max }, )*
                api => api.valid_versions(),
            }
        }

        /// The decoded body of a request to any API the broker serves.
        pub enum Request {
            $( $key(kafka_protocol::messages::$req), )*
        }

        /// Decodes the body of a `api` request at `version` (as `decode_frame` left it):
        /// the decoder `handlers::dispatch` uses, without a shard, so the fuzz tests drive
        /// the same path as the network. An API the broker does not serve is
        /// `UnsupportedVersion`, as `decode_frame` already refuses versions out of range.
        pub fn decode_request(api: ApiKey, body: Bytes, version: i16) -> Result<Request, CodecError> {
            if let Some(newer) = legacy::request_as(api, version) {
                return decode_request(api, body, newer);
            }
            if let Some(old) = legacy::decode_request(api, body.clone(), version) {
                return old.map(Request::from);
            }
            match api {
                $(
                    ApiKey::$key => decode_body(stringify!($key), body, version)
                        .map(Request::$key),
                )*
                api => Err(CodecError::UnsupportedVersion { api, version }),
            }
        }

        impl Request {
            /// The API this request is for.
            pub fn api(&self) -> ApiKey {
                match self {
                    $( Request::$key(_) => ApiKey::$key, )*
                }
            }

            /// Encodes the body at `version` (the fuzz corpus capture re-encodes captured
            /// requests at every version the broker accepts).
            pub fn encode(&self, buf: &mut BytesMut, version: i16) -> Result<(), CodecError> {
                if let Some(newer) = legacy::request_as(self.api(), version) {
                    return self.encode(buf, newer);
                }
                let old = match self {
                    Request::OffsetCommit(r) if version < 2 => Some(legacy::OldRequest::OffsetCommit(r.clone())),
                    Request::ListOffsets(r) if version < 1 => Some(legacy::OldRequest::ListOffsets(r.clone())),
                    Request::CreateTopics(r) if version < 1 => Some(legacy::OldRequest::CreateTopics(r.clone())),
                    Request::Produce(r) if version < 3 => Some(legacy::OldRequest::Produce(r.clone())),
                    Request::Fetch(r) if version < 4 => Some(legacy::OldRequest::Fetch(r.clone())),
                    Request::DescribeConfigs(r) if version < 1 => Some(legacy::OldRequest::DescribeConfigs(r.clone())),
                    Request::OffsetForLeaderEpoch(r) if version < 2 => Some(legacy::OldRequest::OffsetForLeaderEpoch(r.clone())),
                    Request::CreateAcls(r) if version < 1 => Some(legacy::OldRequest::CreateAcls(r.clone())),
                    Request::DescribeAcls(r) if version < 1 => Some(legacy::OldRequest::DescribeAcls(r.clone())),
                    Request::DeleteAcls(r) if version < 1 => Some(legacy::OldRequest::DeleteAcls(r.clone())),
                    _ => None,
                };
                if let Some(old) = old {
                    return legacy::encode_request(&old, version, buf);
                }
                match self {
                    $(
                        Request::$key(r) => r
                            .encode(buf, version)
                            .map_err(|e| CodecError::Malformed(stringify!($key), e.to_string())),
                    )*
                }
            }
        }
    };
}
kafka_apis!(served);

impl From<legacy::OldRequest> for Request {
    fn from(old: legacy::OldRequest) -> Self {
        match old {
            legacy::OldRequest::OffsetCommit(r) => Request::OffsetCommit(r),
            legacy::OldRequest::ListOffsets(r) => Request::ListOffsets(r),
            legacy::OldRequest::CreateTopics(r) => Request::CreateTopics(r),
            legacy::OldRequest::Produce(r) => Request::Produce(r),
            legacy::OldRequest::Fetch(r) => Request::Fetch(r),
            legacy::OldRequest::DescribeConfigs(r) => Request::DescribeConfigs(r),
            legacy::OldRequest::OffsetForLeaderEpoch(r) => Request::OffsetForLeaderEpoch(r),
            legacy::OldRequest::CreateAcls(r) => Request::CreateAcls(r),
            legacy::OldRequest::DescribeAcls(r) => Request::DescribeAcls(r),
            legacy::OldRequest::DeleteAcls(r) => Request::DeleteAcls(r),
        }
    }
}

/// The most a request other than Produce was seen to hold, decoded, per byte of its frame:
/// the fuzz target's counting allocator measured up to 157 (requests of many tiny
/// elements: each one- or two-byte array element becomes a struct of ~120 bytes), and
/// honest requests hold far less. Budgets charge such requests this much.
pub const NONPRODUCE_HELD_PER_BYTE: usize = 160;

/// The memory a decoded request keeps beyond its frame's bytes while it is handled, as the
/// in-flight budgets count it. A Produce request's records stay slices of the frame, so it
/// holds its topic and partition entries; any other request is charged the measured worst
/// case per byte of its body (`NONPRODUCE_HELD_PER_BYTE`). The records of a Produce v0–2
/// were converted to record batches (`legacy`), new memory, and count in full.
pub fn held_beyond_frame(request: &Request, body_len: usize, version: i16) -> usize {
    match request {
        Request::Produce(r) => {
            let entries = super::produce_scan::Entries {
                topics: r.topic_data.len(),
                partitions: r.topic_data.iter().map(|t| t.partition_data.len()).sum(),
            }
            .held();
            let converted: usize = if version < 3 {
                r.topic_data
                    .iter()
                    .flat_map(|t| &t.partition_data)
                    .map(|p| p.records.as_ref().map_or(0, |b| b.len()))
                    .sum()
            } else {
                0
            };
            entries.saturating_add(converted)
        }
        _ => body_len.saturating_mul(NONPRODUCE_HELD_PER_BYTE),
    }
}

/// The fewest wire bytes a topic or partition entry of a Produce request takes (a flexible
/// version's topic: an empty compact name, an empty compact array, no tagged fields).
const MIN_PRODUCE_ENTRY_BYTES: usize = 3;

/// What the in-flight budgets must have room for before a frame of `frame_len` bytes for
/// API `api_key` is read: the frame, and the most its decoded form can hold beyond it
/// (`held_beyond_frame` at its worst). Once decoded, the charge becomes what the request
/// really holds; so only frames being read are charged at their worst.
pub fn admission_charge(api_key: i16, frame_len: usize) -> usize {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let worst = if api_key == ApiKey::Produce as i16 {
        let entry = std::mem::size_of::<TopicProduceData>()
            .max(std::mem::size_of::<PartitionProduceData>());
        (frame_len / MIN_PRODUCE_ENTRY_BYTES).saturating_mul(entry)
    } else {
        frame_len.saturating_mul(NONPRODUCE_HELD_PER_BYTE)
    };
    frame_len.saturating_add(worst)
}

/// A decoded request header with the rest of the frame left for the API's decoder.
pub struct Frame {
    pub api: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: Bytes,
}

/// The correlation id of a frame, readable even when the rest cannot be decoded.
pub fn correlation_id(frame: &[u8]) -> Option<i32> {
    let b = frame.get(4..8)?;
    Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Splits one frame (without its size prefix) into header and body.
pub fn decode_frame(mut frame: Bytes) -> Result<Frame, CodecError> {
    if frame.len() < 8 {
        return Err(CodecError::Malformed("request header", "too short".into()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api = ApiKey::try_from(key).map_err(|_| CodecError::UnknownApi(key))?;
    let range = versions(api);
    if version < range.min || version > range.max {
        return Err(CodecError::UnsupportedVersion { api, version });
    }
    let header_version = api.request_header_version(version);
    let header = RequestHeader::decode(&mut frame, header_version)
        .map_err(|e| CodecError::Malformed("request header", e.to_string()))?;
    Ok(Frame {
        api,
        version,
        header,
        body: frame,
    })
}

/// Decodes a request body of type `R` at `version`. Trailing bytes are tolerated, as the
/// Java broker does: some clients (librdkafka's Metadata in a few versions) send fields a
/// version does not define.
pub fn decode_body<R: Decodable>(
    what: &'static str,
    mut body: Bytes,
    version: i16,
) -> Result<R, CodecError> {
    let r =
        R::decode(&mut body, version).map_err(|e| CodecError::Malformed(what, e.to_string()))?;
    if body.has_remaining() {
        log::debug!(
            "{what} v{version}: ignoring {} trailing bytes",
            body.remaining()
        );
    }
    Ok(r)
}

/// A response frame as the connection writes it, in order: one buffer, or (a fetch
/// response) the encoded fields around its large record sections and those sections
/// themselves, passed through from the log without a copy (`encode_passing`).
#[derive(Debug, Default)]
pub struct Answer {
    pub chunks: smallvec::SmallVec<[Bytes; 1]>,
}

impl Answer {
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.iter().all(Bytes::is_empty)
    }
}

impl From<Bytes> for Answer {
    fn from(b: Bytes) -> Answer {
        Answer {
            chunks: smallvec::smallvec![b],
        }
    }
}

/// The version `response` is encoded at on the wire for a client that asked for `version`:
/// itself, a newer twin of the same layout (`legacy::response_as`), or `None` when only
/// `legacy` has its encoder.
fn wire_version<R: Message + 'static>(response: &R, version: i16) -> Option<i16> {
    if version < R::VERSIONS.min {
        legacy::response_as(response, version)
    } else {
        Some(version)
    }
}

/// Encodes a full response frame: size, response header, body. A version older than
/// kafka-protocol's codecs is encoded by `legacy`, from the same response type.
pub fn encode_response<R: Encodable + HeaderVersion + Message + 'static>(
    correlation_id: i32,
    version: i16,
    response: &R,
) -> Result<Bytes, CodecError> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = R::header_version(version);
    let at = wire_version(response, version);
    // Sized once up front: a fetch response grew by doubling, copying its record batches
    // again at each step.
    let body = at
        .and_then(|at| response.compute_size(at).ok())
        .unwrap_or(0);
    let mut buf = BytesMut::with_capacity(64 + body);
    buf.put_i32(0);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| CodecError::Malformed("response header", e.to_string()))?;
    match at {
        Some(at) => response
            .encode(&mut buf, at)
            .map_err(|e| CodecError::Malformed("response", e.to_string()))?,
        None => legacy::encode_response(response, version, &mut buf).unwrap_or_else(|| {
            Err(CodecError::Malformed(
                "response",
                format!("no encoder at v{version}"),
            ))
        })?,
    }
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Record sections at least this large go to the socket as they are (a write of their
/// own) rather than copied into the response frame: past it, the copy costs more than the
/// extra write.
pub const PASS_MIN_BYTES: usize = 32 * 1024;

/// Zeros standing in, inside a response, for a record section given in pieces (`Section`):
/// the encoder sizes and places the field by it, and `Passing` writes the pieces where the
/// encoder would copy it. Never read (a `static` of zeros takes no memory until touched).
static STAND_IN: [u8; STAND_IN_BYTES] = [0; STAND_IN_BYTES];
/// The largest section given in pieces; a larger one is joined into one buffer first.
pub const STAND_IN_BYTES: usize = 16 << 20;

/// A record section of a response and the pieces it is written as. `field` is what the
/// response itself holds: the one piece, or for several a stand-in of the same length.
#[derive(Debug, Clone)]
pub struct Section {
    field: Bytes,
    pieces: smallvec::SmallVec<[Bytes; 4]>,
}

impl Section {
    /// The section of `pieces` (whole batches, in order), or `None` when it is better
    /// copied as one buffer: one piece under `PASS_MIN_BYTES`, or more than a stand-in
    /// covers.
    pub fn of(pieces: &[Bytes]) -> Option<Section> {
        let len: usize = pieces.iter().map(Bytes::len).sum();
        let field = match pieces {
            [one] if one.len() >= PASS_MIN_BYTES => one.clone(),
            [_, _, ..] if len <= STAND_IN_BYTES => Bytes::from_static(&STAND_IN[..len]),
            _ => return None,
        };
        Some(Section {
            field,
            pieces: pieces.iter().cloned().collect(),
        })
    }

    /// What the response holds in place of the section.
    pub fn field(&self) -> Bytes {
        self.field.clone()
    }
}

/// `encode_response`, except that each byte field of `response` that is the next of
/// `sections`' fields (the same memory, taken in the order the encoder writes them) is
/// written as that section's pieces: a piece of at least `PASS_MIN_BYTES` becomes a chunk
/// of its own (the log's batches, passed through without a copy), smaller ones are copied
/// into the frame. The bytes on the wire are those of the joined section.
pub fn encode_passing<R: Encodable + HeaderVersion + Message + 'static>(
    correlation_id: i32,
    version: i16,
    response: &R,
    sections: &[Section],
) -> Result<Answer, CodecError> {
    let at = wire_version(response, version);
    let Some(at) = at.filter(|_| !sections.is_empty()) else {
        if sections.iter().any(|s| s.pieces.len() > 1) {
            // The legacy encoder would write a stand-in as it is.
            return Err(CodecError::Malformed(
                "response",
                format!("record sections in pieces at v{version}"),
            ));
        }
        return encode_response(correlation_id, version, response).map(Answer::from);
    };
    let malformed = |what, e: anyhow::Error| CodecError::Malformed(what, e.to_string());
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = R::header_version(version);
    // The size goes first, so it is computed rather than patched in afterwards.
    let size = header
        .compute_size(header_version)
        .map_err(|e| malformed("response header", e))?
        + response
            .compute_size(at)
            .map_err(|e| malformed("response", e))?;
    let prefix = i32::try_from(size)
        .map_err(|_| CodecError::Malformed("response", format!("{size} bytes")))?;
    let passed: usize = sections
        .iter()
        .flat_map(|s| &s.pieces)
        .map(Bytes::len)
        .filter(|n| *n >= PASS_MIN_BYTES)
        .sum();
    let mut out = Passing {
        current: BytesMut::with_capacity((4 + size).saturating_sub(passed)),
        answer: Answer::default(),
        done: 0,
        sections,
        next: 0,
    };
    out.put_i32(prefix);
    header
        .encode(&mut out, header_version)
        .map_err(|e| malformed("response header", e))?;
    response
        .encode(&mut out, at)
        .map_err(|e| malformed("response", e))?;
    if out.next < sections.len() {
        // A stand-in was not met where it was expected: it must not go out as zeros.
        return Err(CodecError::Malformed(
            "response",
            format!("{} record sections not met", sections.len() - out.next),
        ));
    }
    Ok(out.finish())
}

/// The output of `encode_passing`: what is encoded goes into `current`, except a
/// `put_slice` of the next section's field, which writes that section's pieces.
struct Passing<'a> {
    current: BytesMut,
    answer: Answer,
    /// Bytes in `answer`'s chunks.
    done: usize,
    sections: &'a [Section],
    /// The next section to meet.
    next: usize,
}

impl Passing<'_> {
    fn close(&mut self) {
        if !self.current.is_empty() {
            let c = self.current.split().freeze();
            self.done += c.len();
            self.answer.chunks.push(c);
        }
    }

    fn finish(mut self) -> Answer {
        self.close();
        self.answer
    }
}

// SAFETY: `Passing` owns `current` (a `BytesMut`) outright; it lives only inside one
// `encode_passing` call on the connection's shard thread and never crosses threads.
// `remaining_mut`, `advance_mut` and `chunk_mut` all forward to that one `BytesMut`, whose
// own implementation upholds `BufMut`'s contract: the three describe the same buffer, and
// nothing else touches it between a `chunk_mut` and the `advance_mut` that follows.
// `put_slice` writes only through `BytesMut`'s safe methods or moves whole `Bytes` (shared,
// immutable) into `answer`, never into `current`'s uninitialised tail.
unsafe impl BufMut for Passing<'_> {
    fn remaining_mut(&self) -> usize {
        self.current.remaining_mut()
    }

    // SAFETY (of the signature): the trait's own; callers must have initialised the `cnt`
    // bytes of `chunk_mut()` they advance over, which is what `current` requires.
    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: our caller guarantees, as `BufMut` requires, that the next `cnt` bytes
        // of `chunk_mut()` (which is `current`'s, owned by this `Passing` on this thread)
        // are initialised, so forwarding the same count to `current` is sound.
        unsafe { self.current.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        self.current.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        let section = self.sections.get(self.next).filter(|s| {
            !s.field.is_empty() && s.field.as_ptr() == src.as_ptr() && s.field.len() == src.len()
        });
        let Some(section) = section else {
            return self.current.extend_from_slice(src);
        };
        self.next += 1;
        for piece in &section.pieces {
            if piece.len() >= PASS_MIN_BYTES {
                self.close();
                self.done += piece.len();
                self.answer.chunks.push(piece.clone());
            } else {
                self.current.extend_from_slice(piece);
            }
        }
    }
}

// Only record-batch building seeks back into what it wrote (to fill in lengths and CRCs);
// a response's encoder writes front to back. Seeks into `current` work; nothing before it
// is reachable once it has been passed on.
impl kafka_protocol::protocol::buf::ByteBufMut for Passing<'_> {
    fn offset(&self) -> usize {
        self.done + self.current.len()
    }

    fn seek(&mut self, offset: usize) {
        let within = offset.saturating_sub(self.done);
        self.current.resize(within, 0);
    }

    fn range(&mut self, r: std::ops::Range<usize>) -> &mut [u8] {
        let end = r.end.saturating_sub(self.done).min(self.current.len());
        let start = r.start.saturating_sub(self.done).min(end);
        &mut self.current[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::Message;

    #[test]
    fn frame_sizes_are_bounded() {
        assert!(frame_len(8i32.to_be_bytes(), 100).is_ok());
        assert!(frame_len((-1i32).to_be_bytes(), 100).is_err());
        assert!(frame_len(i32::MAX.to_be_bytes(), 100).is_err());
        assert!(frame_len(3i32.to_be_bytes(), 100).is_err());
    }

    /// Every version the broker lists can be decoded (request) and encoded (response), and
    /// lies within kafka-protocol's table of what a Kafka broker accepts: kafka-protocol
    /// 0.18's table lists OffsetCommit v10 while its codec stops at v9, and a client
    /// negotiating v10 had each commit close its connection.
    #[test]
    fn every_listed_version_has_codecs() {
        macro_rules! roundtrip {
            ($( ($key:ident, $req:ident, $resp:ident, $min:literal ..= $max:literal, $module:ident, $call:ident), )*) => {
                $(
                    use kafka_protocol::messages::{$req, $resp};
                    let range = versions(ApiKey::$key);
                    let table = ApiKey::$key.valid_versions();
                    let codecs = (<$req as Message>::VERSIONS, <$resp as Message>::VERSIONS);
                    assert!(range.min <= range.max, "{:?}: empty range", ApiKey::$key);
                    // Below kafka-protocol's codecs, `legacy` serves what Kafka 0.11–3.x
                    // accepted.
                    let floor = table.min.max(codecs.0.min).max(codecs.1.min);
                    let oldest = legacy::oldest(ApiKey::$key).unwrap_or(floor);
                    assert!(
                        range.min >= oldest.min(floor)
                            && range.max <= table.max.min(codecs.0.max).min(codecs.1.max),
                        "{:?}: {range:?} is outside kafka-protocol's {table:?} or its codecs",
                        ApiKey::$key
                    );
                    for v in range.min..=range.max {
                        let mut buf = BytesMut::new();
                        Request::$key(<$req>::default())
                            .encode(&mut buf, v)
                            .unwrap_or_else(|e| panic!("{:?} v{v} request: {e}", ApiKey::$key));
                        let framed = decode_request(ApiKey::$key, buf.freeze(), v);
                        assert!(
                            framed.as_ref().is_ok_and(|r| r.api() == ApiKey::$key),
                            "{:?} v{v}: decode_request",
                            ApiKey::$key
                        );
                        encode_response(1, v, &<$resp>::default())
                            .unwrap_or_else(|e| panic!("{:?} v{v} response: {e}", ApiKey::$key));
                    }
                )*
            };
        }
        kafka_apis!(roundtrip);
        assert_eq!(versions(ApiKey::OffsetCommit).max, 9);
        assert_eq!(versions(ApiKey::OffsetCommit).min, 0);
        assert_eq!(versions(ApiKey::Produce).min, 0);
    }

    /// `Request::encode` writes what `decode_request` reads back.
    #[test]
    fn requests_reencode_at_other_versions() {
        let metadata =
            kafka_protocol::messages::MetadataRequest::default().with_topics(Some(vec![
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(kafka_protocol::messages::TopicName(
                        kafka_protocol::protocol::StrBytes::from_static_str("t"),
                    ))),
            ]));
        let mut buf = BytesMut::new();
        Request::Metadata(metadata).encode(&mut buf, 4).unwrap();
        let Ok(Request::Metadata(back)) = decode_request(ApiKey::Metadata, buf.freeze(), 4) else {
            panic!("not a Metadata request");
        };
        let topics = back.topics.unwrap_or_default();
        assert_eq!(topics.len(), 1);
        assert_eq!(topics[0].name.as_ref().map(|n| n.0.as_str()), Some("t"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [
            &b"\x7f\x7f\0\0\0\0\0\0"[..],
            &b"\0\0\0\0\0\0\0\0\x7f"[..],
            &b"\0\x03\0\x05\0\0\0\x01\xff\xff"[..],
        ] {
            let _ = decode_frame(Bytes::copy_from_slice(input));
        }
        assert_eq!(
            decode_frame(Bytes::from_static(b"\x7f\x7f\0\0\0\0\0\0")).err(),
            Some(CodecError::UnknownApi(0x7f7f))
        );
    }

    /// A fetch response written with its record sections in pieces (`Section`) is exactly
    /// the frame `encode_response` gives for the same sections joined, at every Fetch
    /// version the sections' encoder serves; the large pieces are the log's own memory, not
    /// copies, and a section in pieces is refused where only the legacy encoder serves.
    #[test]
    fn sections_give_the_same_frame_as_joined_records_at_every_version() {
        use kafka_protocol::messages::fetch_response::{
            FetchResponse, FetchableTopicResponse, PartitionData,
        };
        use kafka_protocol::messages::TopicName;
        let large = |fill: u8, n: usize| Bytes::from(vec![fill; n]);
        // Per partition, the pieces its records come in.
        let records: Vec<Vec<Bytes>> = vec![
            vec![large(1, 70_000)],
            vec![Bytes::from_static(b"small")],
            vec![
                large(2, 40_000),
                Bytes::from_static(b"between"),
                large(3, 33_000),
            ],
            vec![],
            vec![
                Bytes::from_static(b"two "),
                Bytes::from_static(b"small pieces"),
            ],
        ];
        let response = |with: &dyn Fn(&[Bytes]) -> Bytes| {
            let partitions = records
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    PartitionData::default()
                        .with_partition_index(i as i32)
                        .with_high_watermark(100 + i as i64)
                        .with_records(Some(with(r)))
                })
                .collect();
            let topic = FetchableTopicResponse::default()
                .with_topic(TopicName(
                    kafka_protocol::protocol::StrBytes::from_static_str("t"),
                ))
                .with_partitions(partitions);
            FetchResponse::default().with_responses(vec![topic])
        };
        let joined = response(&|r: &[Bytes]| Bytes::from(r.concat()));
        let sections = std::cell::RefCell::new(Vec::new());
        let in_pieces = response(&|r: &[Bytes]| match Section::of(r) {
            Some(s) => {
                let field = s.field();
                sections.borrow_mut().push(s);
                field
            }
            None => Bytes::from(r.concat()),
        });
        let sections = sections.into_inner();
        assert_eq!(
            sections.len(),
            3,
            "the large piece and the two sections in pieces"
        );
        let range = versions(ApiKey::Fetch);
        for version in range.min..=range.max {
            let plain = encode_response(7, version, &joined).unwrap();
            if wire_version(&in_pieces, version).is_none() {
                assert!(encode_passing(7, version, &in_pieces, &sections).is_err());
                continue;
            }
            let passed = encode_passing(7, version, &in_pieces, &sections).unwrap();
            let wire: Vec<u8> = passed.chunks.iter().flat_map(|c| c.to_vec()).collect();
            assert_eq!(wire, plain.to_vec(), "v{version}");
            assert_eq!(passed.len(), plain.len());
            for piece in records
                .iter()
                .flatten()
                .filter(|p| p.len() >= PASS_MIN_BYTES)
            {
                assert!(
                    passed.chunks.iter().any(|c| c.as_ptr() == piece.as_ptr()),
                    "v{version}: a large piece was copied"
                );
            }
        }
    }
}
#[cfg(test)]
mod admission_tests {
    use super::*;

    /// A Produce frame is charged its worst decoded form only while it is read: about 30x
    /// its bytes (one topic entry of ~100 bytes per 3 wire bytes); other APIs 161x.
    #[test]
    fn admission_charges_the_worst_decoded_form() {
        let produce = admission_charge(ApiKey::Produce as i16, 1 << 20);
        assert!(
            produce > (1 << 20) * 10 && produce < (1 << 20) * 60,
            "{produce}"
        );
        assert_eq!(
            admission_charge(ApiKey::Metadata as i16, 1000),
            1000 * (1 + NONPRODUCE_HELD_PER_BYTE)
        );
    }
}

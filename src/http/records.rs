//! REST messaging on Kafka topics, with Produce's and Fetch's semantics:
//!
//! - `POST /api/v1/topics/{topic}/records`: a JSON body
//!   `{"acks": -1|0|1|"all", "records": [{"key": .., "value": .., "partition": n,
//!   "headers": {..}, "timestamp": ms}]}` (a JSON string value is stored as its text,
//!   any other JSON value as its JSON encoding; `key_base64` / `value_base64` carry binary),
//!   or any other content type: the body is one record's value, with `key`, `partition`
//!   and `acks` in the query. Records without a partition go by the Java client's default
//!   partitioner (murmur2 of the key), unkeyed ones round-robin. The answer lists each
//!   record's partition and offset. `acks` defaults to `all` (-1), as Kafka clients do.
//!   A write the disk cannot take (below `storage.min_free_bytes`, or refused by the disk
//!   with acks -1) is answered 507 Insufficient Storage.
//! - `GET /api/v1/topics/{topic}/partitions/{p}/records?offset=&max_records=&max_bytes=`:
//!   records from an offset (default: the log start), decompressed, keys and values as
//!   UTF-8 text when they are (else `key_base64` / `value_base64`, or always base64 with
//!   `encoding=base64`).
//!
//! Runs on the shard serving the request; the records are one batch per partition, handed
//! to the partition's owner through the mesh (`Shard::kafka`), exactly as a Produce is.
//! With `acl.enabled`, producing needs WRITE and reading READ on the topic, as over Kafka
//! (`http::acl`; 403 otherwise).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use http::{header, Method, StatusCode};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};

use super::{json, ApiError, ApiResult, Req};
use crate::broker::Shard;
use crate::kafka::owner::{FetchPart, ProducePart, Reply, Request};
use crate::metrics::Protocol;
use crate::security::acl::Operation;
use crate::storage::batch;

pub async fn route(shard: &Rc<Shard>, req: &Req, rest: &[&str]) -> ApiResult {
    match rest {
        ["topics", topic, "records"] => {
            super::only(&req.method, &[Method::POST])?;
            super::acl::authorize(shard, req, Operation::Write, topic)?;
            produce(shard, req, topic).await
        }
        ["topics", topic, "partitions", p, "records"] => {
            super::only(&req.method, &[Method::GET])?;
            let p: i32 = p
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("'{p}' is not a partition number")))?;
            super::acl::authorize(shard, req, Operation::Read, topic)?;
            read(shard, req, topic, p).await
        }
        _ => Err(ApiError::NotFound("no such endpoint".into())),
    }
}

thread_local! {
    static NEXT_PARTITION: Cell<u32> = const { Cell::new(0) };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProduceBody {
    #[serde(default)]
    acks: Option<serde_json::Value>,
    records: Vec<RecordIn>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RecordIn {
    #[serde(default)]
    key: Option<serde_json::Value>,
    #[serde(default)]
    key_base64: Option<String>,
    #[serde(default)]
    value: Option<serde_json::Value>,
    #[serde(default)]
    value_base64: Option<String>,
    #[serde(default)]
    partition: Option<i32>,
    #[serde(default)]
    headers: BTreeMap<String, Option<String>>,
    #[serde(default)]
    timestamp: Option<i64>,
}

/// A JSON value as record bytes: a string is its text, anything else its JSON encoding.
fn json_bytes(v: serde_json::Value) -> Option<Bytes> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(Bytes::from(s)),
        other => Some(Bytes::from(other.to_string())),
    }
}

fn base64_bytes(field: &str, s: &str) -> Result<Bytes, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(Bytes::from)
        .map_err(|e| ApiError::BadRequest(format!("{field} is not valid base64: {e}")))
}

fn parse_acks(v: Option<&str>) -> Result<i16, ApiError> {
    match v {
        None | Some("all") | Some("-1") => Ok(-1),
        Some("0") => Ok(0),
        Some("1") => Ok(1),
        Some(other) => Err(ApiError::BadRequest(format!(
            "acks must be 0, 1, -1 or all, not '{other}'"
        ))),
    }
}

/// A record ready to be batched.
struct Outgoing {
    partition: i32,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: IndexMap<StrBytes, Option<Bytes>>,
    timestamp: i64,
}

#[derive(Serialize)]
struct Offset {
    partition: i32,
    offset: Option<i64>,
    error_code: i16,
    error: Option<String>,
}

async fn produce(shard: &Rc<Shard>, req: &Req, topic: &str) -> ApiResult {
    let started = Instant::now();
    let state = shard.catalog.current();
    let partitions = state
        .topic(topic)
        .map(|t| t.partitions)
        .ok_or_else(|| ApiError::NotFound(format!("topic '{topic}' does not exist")))?;
    let is_json = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let now = crate::storage::log::now_ms();
    let (acks, records) = if is_json {
        let body: ProduceBody = req.json()?;
        let acks = match body.acks {
            None => -1,
            Some(serde_json::Value::String(s)) => parse_acks(Some(&s))?,
            Some(v) => parse_acks(Some(&v.to_string()))?,
        };
        let mut out = Vec::with_capacity(body.records.len());
        for r in body.records {
            let key = match (r.key_base64, r.key) {
                (Some(b), _) => Some(base64_bytes("key_base64", &b)?),
                (None, Some(k)) => json_bytes(k),
                (None, None) => None,
            };
            let value = match (r.value_base64, r.value) {
                (Some(b), _) => Some(base64_bytes("value_base64", &b)?),
                (None, Some(v)) => json_bytes(v),
                (None, None) => None,
            };
            let headers = r
                .headers
                .into_iter()
                .map(|(k, v)| (StrBytes::from_string(k), v.map(Bytes::from)))
                .collect();
            out.push((r.partition, key, value, headers, r.timestamp.unwrap_or(now)));
        }
        (acks, out)
    } else {
        let acks = parse_acks(req.query.get("acks").map(String::as_str))?;
        let partition = req.query_parse::<i32>("partition")?;
        let key = req.query.get("key").map(|k| Bytes::from(k.clone()));
        (
            acks,
            vec![(partition, key, Some(req.body.clone()), IndexMap::new(), now)],
        )
    };
    if records.is_empty() {
        return Err(ApiError::BadRequest("no records to produce".into()));
    }
    // Below the free-space watermark nothing is taken, whatever the acks.
    if shard.storage.disk.refuse("REST produce") {
        let why = format!(
            "disk almost full: {} bytes free, below storage.min_free_bytes {}",
            shard.storage.disk.free(),
            shard.storage.disk.min_free()
        );
        return Ok(json(
            StatusCode::INSUFFICIENT_STORAGE,
            &serde_json::json!({
                "error": why,
                "error_code": ResponseError::KafkaStorageError.code(),
            }),
        ));
    }
    let mut outgoing = Vec::with_capacity(records.len());
    for (partition, key, value, headers, timestamp) in records {
        let partition = match (partition, &key) {
            (Some(p), _) => p,
            (None, Some(k)) => crate::kafka::partitioner::partition_for(k, partitions),
            (None, None) => NEXT_PARTITION.with(|n| {
                let p = n.get();
                n.set(p.wrapping_add(1));
                (p % partitions.max(1) as u32) as i32
            }),
        };
        if partition < 0 || partition >= partitions {
            return Err(ApiError::NotFound(format!(
                "topic '{topic}' has no partition {partition} (it has {partitions})"
            )));
        }
        outgoing.push(Outgoing {
            partition,
            key,
            value,
            headers,
            timestamp,
        });
    }
    // One batch per partition, records in request order within it.
    let mut by_partition: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (i, r) in outgoing.iter().enumerate() {
        by_partition.entry(r.partition).or_default().push(i);
    }
    let mut answers: Vec<Offset> = outgoing
        .iter()
        .map(|r| Offset {
            partition: r.partition,
            offset: None,
            error_code: 0,
            error: None,
        })
        .collect();
    let mut waits = Vec::new();
    for (partition, idx) in &by_partition {
        let batch = encode_batch(idx.iter().map(|i| &outgoing[*i]))?;
        let bytes = batch.len() as u64;
        let owner = shard.owner_of(topic, *partition);
        let part = ProducePart {
            topic: topic.to_owned(),
            partition: *partition,
            records: Some(batch),
        };
        let done = shard
            .kafka_dispatch(
                owner,
                Request::Produce {
                    acks: if acks == 0 { 1 } else { acks },
                    parts: vec![part],
                },
            )
            .await;
        waits.push((idx.clone(), bytes, done));
    }
    if acks == 0 {
        for (idx, bytes, done) in waits {
            glommio::spawn_local(done).detach();
            crate::metrics::with(|m| m.produced(Protocol::Http, topic, idx.len() as u64, bytes));
        }
        return Ok(json(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "offsets": answers }),
        ));
    }
    let mut first_error: Option<i16> = None;
    for (idx, bytes, done) in waits {
        let result = match done.await {
            Reply::Produce(mut rs) if !rs.is_empty() => rs.remove(0),
            _ => crate::kafka::owner::ProduceResult {
                error: ResponseError::NotLeaderOrFollower.code(),
                message: Some("the partition's shard did not answer".into()),
                ..Default::default()
            },
        };
        if result.error == 0 {
            crate::metrics::with(|m| m.produced(Protocol::Http, topic, idx.len() as u64, bytes));
        } else {
            first_error.get_or_insert(result.error);
            crate::metrics::with(|m| m.error(Protocol::Kafka, result.error as i32));
        }
        for (n, i) in idx.iter().enumerate() {
            let a = &mut answers[*i];
            if result.error == 0 {
                a.offset = Some(result.base_offset + n as i64);
            } else {
                a.error_code = result.error;
                a.error = Some(result.message.clone().unwrap_or_else(|| {
                    ResponseError::try_from_code(result.error)
                        .map(|e| format!("{e:?}"))
                        .unwrap_or_else(|| format!("Kafka error {}", result.error))
                }));
            }
        }
    }
    crate::metrics::with(|m| m.publish_latency(Protocol::Http, started.elapsed()));
    let status = match first_error.and_then(ResponseError::try_from_code) {
        None => StatusCode::OK,
        Some(ResponseError::MessageTooLarge | ResponseError::RecordListTooLarge) => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        Some(ResponseError::UnknownTopicOrPartition) => StatusCode::NOT_FOUND,
        Some(ResponseError::KafkaStorageError) => StatusCode::INSUFFICIENT_STORAGE,
        Some(ResponseError::InvalidRecord | ResponseError::CorruptMessage) => {
            StatusCode::BAD_REQUEST
        }
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    Ok(json(status, &serde_json::json!({ "offsets": answers })))
}

/// One v2 record batch (uncompressed, CreateTime) of `records`.
fn encode_batch<'a>(records: impl Iterator<Item = &'a Outgoing>) -> Result<Bytes, ApiError> {
    let plain = records.map(|r| batch::PlainRecord {
        timestamp: r.timestamp,
        key: r.key.clone(),
        value: r.value.clone(),
        headers: r.headers.clone(),
    });
    batch::encode_plain_batch(plain, Compression::None)
        .map_err(|e| ApiError::BadRequest(format!("these records cannot be encoded: {e}")))
}

#[derive(Serialize)]
struct RecordOut {
    partition: i32,
    offset: i64,
    timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    headers: BTreeMap<String, Option<String>>,
}

/// Bytes as text when they are UTF-8 and base64 is not asked for, else as base64.
fn text_or_base64(b: &Option<Bytes>, force_base64: bool) -> (Option<String>, Option<String>) {
    let Some(b) = b else {
        return (None, None);
    };
    if !force_base64 {
        // Text is UTF-8 without control characters other than whitespace.
        if let Ok(s) = std::str::from_utf8(b) {
            if !s.chars().any(|c| c.is_control() && !c.is_whitespace()) {
                return (Some(s.to_owned()), None);
            }
        }
    }
    (
        None,
        Some(base64::engine::general_purpose::STANDARD.encode(b)),
    )
}

async fn read(shard: &Rc<Shard>, req: &Req, topic: &str, partition: i32) -> ApiResult {
    let started = Instant::now();
    let state = shard.catalog.current();
    let t = state
        .topic(topic)
        .ok_or_else(|| ApiError::NotFound(format!("topic '{topic}' does not exist")))?;
    if partition < 0 || partition >= t.partitions {
        return Err(ApiError::NotFound(format!(
            "topic '{topic}' has no partition {partition}"
        )));
    }
    let max_records = req
        .query_parse::<usize>("max_records")?
        .unwrap_or(100)
        .max(1);
    let max_bytes = req
        .query_parse::<usize>("max_bytes")?
        .unwrap_or(1024 * 1024)
        .max(1);
    let base64 = req.query.get("encoding").is_some_and(|e| e == "base64");
    let owner = shard.owner_of(topic, partition);
    let fetch = |offset: i64| {
        shard.kafka(
            owner,
            Request::Fetch {
                parts: vec![FetchPart {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    max_bytes,
                }],
                read_committed: false,
            },
        )
    };
    let one = |reply: Reply| match reply {
        Reply::Fetch(mut rs) if !rs.is_empty() => Ok(rs.remove(0)),
        _ => Err(ApiError::Unavailable(
            "the partition's shard did not answer".into(),
        )),
    };
    let mut offset = req.query_parse::<i64>("offset")?.unwrap_or(-1);
    let mut result = one(fetch(offset.max(0)).await)?;
    if offset < 0 {
        // No offset given: from the log start.
        offset = result.log_start_offset.max(0);
        result = one(fetch(offset).await)?;
    }
    if result.error == ResponseError::OffsetOutOfRange.code() {
        return Err(ApiError::BadRequest(format!(
            "offset {offset} is out of range: partition {partition} of '{topic}' holds offsets {} to {}",
            result.log_start_offset,
            result.high_watermark - 1
        )));
    }
    if result.error != 0 {
        return Err(ApiError::Unavailable(format!(
            "reading partition {partition} of '{topic}': Kafka error {}",
            result.error
        )));
    }
    let mut records = Vec::new();
    let mut buf = result.records.joined();
    let mut next = offset;
    let mut bytes_out = 0u64;
    'batches: while buf.len() >= crate::storage::batch::HEADER_LEN {
        let Some(h) = crate::storage::batch::BatchHeader::parse(&buf) else {
            break;
        };
        if h.size > buf.len() {
            break;
        }
        let mut one = buf.split_to(h.size);
        if h.is_control() {
            next = next.max(h.last_offset() + 1);
            continue;
        }
        let set = RecordBatchDecoder::decode_with_custom_compression(
            &mut one,
            Some(|section: &mut Bytes, codec: Compression| {
                let codec = crate::storage::inflate::Codec::from_id(codec as i16)?;
                Ok(crate::storage::inflate::inflate(
                    section.split_off(0),
                    codec,
                    crate::storage::inflate::MAX_INFLATED_BYTES,
                )?)
            }),
        )
        .map_err(|e| ApiError::Internal(format!("decoding a stored batch of '{topic}': {e}")))?;
        for r in set.records {
            if r.offset < offset {
                continue;
            }
            if records.len() >= max_records {
                break 'batches;
            }
            let (key, key_base64) = text_or_base64(&r.key, base64);
            let (value, value_base64) = text_or_base64(&r.value, base64);
            bytes_out += r.value.as_ref().map_or(0, |v| v.len() as u64);
            records.push(RecordOut {
                partition,
                offset: r.offset,
                timestamp: r.timestamp,
                key,
                key_base64,
                value,
                value_base64,
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                        )
                    })
                    .collect(),
            });
            next = r.offset + 1;
        }
        next = next.max(h.last_offset() + 1);
    }
    crate::metrics::with(|m| {
        m.consumed(Protocol::Http, topic, records.len() as u64, bytes_out);
        m.fetch_latency(Protocol::Http, started.elapsed());
    });
    super::ok_json(&serde_json::json!({
        "topic": topic,
        "partition": partition,
        "records": records,
        "next_offset": next,
        "high_watermark": result.high_watermark,
        "log_start_offset": result.log_start_offset,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_one_partition_go_in_one_batch() {
        let out: Vec<Outgoing> = (0..3)
            .map(|i| Outgoing {
                partition: 0,
                key: None,
                value: Some(Bytes::from(format!("v{i}"))),
                headers: IndexMap::new(),
                timestamp: 1000 + i,
            })
            .collect();
        let batch = encode_batch(out.iter()).unwrap();
        let h = crate::storage::batch::validate(&batch).unwrap();
        assert_eq!(h.size, batch.len());
        assert_eq!(h.records, 3);
        assert_eq!(h.base_sequence, -1);
    }
}

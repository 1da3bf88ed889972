//! TEMPORARY stand-in for `stream::record` (streammap's mapping), removed at the merge.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::Bytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};

use crate::amqp::message::{encode_properties, parse_props, Message};
use crate::storage::batch::{BatchHeader, Headers, PlainRecord, HEADER_LEN};

pub struct Decoded {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Headers,
}

pub fn record_of(msg: &Message, now_ms: i64) -> PlainRecord {
    let mut headers = Headers::default();
    headers.insert("x-amqp-properties".into(), Some(msg.properties.clone()));
    headers.insert("x-amqp-exchange".into(), Some(msg.exchange.clone()));
    PlainRecord {
        timestamp: now_ms,
        key: Some(msg.routing_key.clone()),
        value: Some(msg.body.clone()),
        headers,
    }
}

pub fn records_of(mut buf: Bytes, from: i64) -> Result<(Vec<Decoded>, i64), String> {
    let mut out = Vec::new();
    let mut next = from;
    while buf.len() >= HEADER_LEN {
        let Some(h) = BatchHeader::parse(&buf) else {
            break;
        };
        if h.size > buf.len() {
            break;
        }
        let mut one = buf.split_to(h.size);
        if !h.is_control() {
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
            .map_err(|e| e.to_string())?;
            for r in set.records {
                if r.offset >= from {
                    out.push(Decoded {
                        offset: r.offset,
                        timestamp: r.timestamp,
                        key: r.key,
                        value: r.value,
                        headers: r.headers,
                    });
                }
            }
        }
        next = next.max(h.last_offset() + 1);
    }
    Ok((out, next))
}

pub fn delivery_of(r: &Decoded) -> Message {
    let get = |k: &str| {
        r.headers
            .iter()
            .find(|(n, _)| n.as_str() == k)
            .and_then(|(_, v)| v.clone())
    };
    let raw = get("x-amqp-properties");
    let exchange = get("x-amqp-exchange").unwrap_or_default();
    let properties = raw.filter(|p| parse_props(p).is_some()).unwrap_or_else(|| {
        let mut t = FieldTable::default();
        for (k, v) in &r.headers {
            if let Some(v) = v {
                t.insert(
                    k.to_string().into(),
                    AMQPValue::LongString(LongString::from(v.to_vec())),
                );
            }
        }
        let mut p = AMQPProperties::default().with_headers(t);
        if r.timestamp >= 0 {
            p = p.with_timestamp((r.timestamp / 1000) as u64);
        }
        encode_properties(&p).unwrap_or_default()
    });
    Message {
        exchange,
        routing_key: r.key.clone().unwrap_or_default(),
        properties,
        body: r.value.clone().unwrap_or_default(),
        persistent: true,
        priority: 0,
        expiration: None,
    }
}

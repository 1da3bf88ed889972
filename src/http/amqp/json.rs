//! JSON forms of AMQP values: field tables (declare arguments, headers) both ways, and a
//! message's basic properties (parsed from a publish, shown for a get). Pure functions.

use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::catalog::amqp::tables::decode_table;
use crate::http::ApiError;

/// A JSON object as an AMQP field table: strings are long strings, integers signed 64-bit,
/// other numbers doubles, `null` void, arrays and objects nested.
pub(super) fn json_table(what: &str, map: &Map<String, Value>) -> Result<FieldTable, ApiError> {
    let mut t = FieldTable::default();
    for (k, v) in map {
        let key = ShortString::try_new(k.as_str()).map_err(|_| {
            ApiError::BadRequest(format!("{what}: key '{k}' is longer than 255 bytes"))
        })?;
        t.insert(key, json_value(what, v)?);
    }
    Ok(t)
}

fn json_value(what: &str, v: &Value) -> Result<AMQPValue, ApiError> {
    Ok(match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => {
                return Err(ApiError::BadRequest(format!(
                    "{what}: the number {n} has no AMQP form"
                )))
            }
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(a) => AMQPValue::FieldArray(
            a.iter()
                .map(|x| json_value(what, x))
                .collect::<Result<Vec<_>, _>>()?
                .into(),
        ),
        Value::Object(m) => AMQPValue::FieldTable(json_table(what, m)?),
    })
}

/// An AMQP field table as JSON (byte arrays and long strings as text, lossy).
pub(super) fn table_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &AMQPValue) -> Value {
    let float = |f: f64| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number);
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(x) => json!(x),
        AMQPValue::ShortShortUInt(x) => json!(x),
        AMQPValue::ShortInt(x) => json!(x),
        AMQPValue::ShortUInt(x) => json!(x),
        AMQPValue::LongInt(x) => json!(x),
        AMQPValue::LongUInt(x) => json!(x),
        AMQPValue::LongLongInt(x) => json!(x),
        AMQPValue::Timestamp(x) => json!(x),
        AMQPValue::Float(f) => float(*f as f64),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => float(d.value as f64 / 10f64.powi(d.scale as i32)),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::Void => Value::Null,
    }
}

/// Stored (encoded) arguments as JSON.
pub(super) fn arguments_json(encoded: &[u8]) -> Value {
    table_json(&decode_table(encoded))
}

pub(super) fn arguments_table(map: &Map<String, Value>) -> Result<FieldTable, ApiError> {
    json_table("arguments", map)
}

/// The basic properties RabbitMQ's publish takes.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct PropertiesIn {
    content_type: Option<String>,
    content_encoding: Option<String>,
    headers: Option<Map<String, Value>>,
    delivery_mode: Option<u8>,
    priority: Option<u8>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    /// Milliseconds, as a string (a number is taken too).
    expiration: Option<Value>,
    message_id: Option<String>,
    /// Seconds since the epoch.
    timestamp: Option<u64>,
    #[serde(rename = "type")]
    kind: Option<String>,
    user_id: Option<String>,
    app_id: Option<String>,
    cluster_id: Option<String>,
}

/// The properties in their wire encoding (what the message carries, as from a client).
pub(super) fn encode_properties(p: PropertiesIn) -> Result<Bytes, ApiError> {
    let short = |field: &str, v: String| {
        ShortString::try_new(v).map_err(|_| {
            ApiError::BadRequest(format!("properties.{field} is longer than 255 bytes"))
        })
    };
    let expiration = match p.expiration {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "properties.expiration must be a string of milliseconds".into(),
            ))
        }
    };
    type Setter = fn(AMQPProperties, ShortString) -> AMQPProperties;
    let texts: [(&str, Option<String>, Setter); 10] = [
        (
            "content_type",
            p.content_type,
            AMQPProperties::with_content_type,
        ),
        (
            "content_encoding",
            p.content_encoding,
            AMQPProperties::with_content_encoding,
        ),
        (
            "correlation_id",
            p.correlation_id,
            AMQPProperties::with_correlation_id,
        ),
        ("reply_to", p.reply_to, AMQPProperties::with_reply_to),
        ("expiration", expiration, AMQPProperties::with_expiration),
        ("message_id", p.message_id, AMQPProperties::with_message_id),
        ("type", p.kind, AMQPProperties::with_type),
        ("user_id", p.user_id, AMQPProperties::with_user_id),
        ("app_id", p.app_id, AMQPProperties::with_app_id),
        ("cluster_id", p.cluster_id, AMQPProperties::with_cluster_id),
    ];
    let mut out = AMQPProperties::default();
    for (field, value, set) in texts {
        if let Some(v) = value {
            out = set(out, short(field, v)?);
        }
    }
    if let Some(h) = p.headers {
        out = out.with_headers(json_table("properties.headers", &h)?);
    }
    if let Some(v) = p.delivery_mode {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        out = out.with_priority(v);
    }
    if let Some(v) = p.timestamp {
        out = out.with_timestamp(v);
    }
    let encoded = gen_properties(&out)(Vec::new().into())
        .map(|ctx| Bytes::from(ctx.into_inner().0))
        .map_err(|e| ApiError::BadRequest(format!("the properties cannot be encoded: {e}")));
    encoded
}

/// A message's properties as JSON, the fields it has.
pub(super) fn properties_json(raw: &[u8]) -> Value {
    let Some(p) = crate::amqp::message::parse_props(&bytes::Bytes::copy_from_slice(raw)) else {
        return json!({});
    };
    let mut out = Map::new();
    let mut text = |k: &str, v: &Option<ShortString>| {
        if let Some(v) = v {
            out.insert(k.to_owned(), Value::String(v.as_str().to_owned()));
        }
    };
    text("content_type", p.content_type());
    text("content_encoding", p.content_encoding());
    text("correlation_id", p.correlation_id());
    text("reply_to", p.reply_to());
    text("expiration", p.expiration());
    text("message_id", p.message_id());
    text("type", p.kind());
    text("user_id", p.user_id());
    text("app_id", p.app_id());
    text("cluster_id", p.cluster_id());
    if let Some(h) = p.headers() {
        out.insert("headers".into(), table_json(h));
    }
    if let Some(v) = p.delivery_mode() {
        out.insert("delivery_mode".into(), json!(v));
    }
    if let Some(v) = p.priority() {
        out.insert("priority".into(), json!(v));
    }
    if let Some(v) = p.timestamp() {
        out.insert("timestamp".into(), json!(v));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_field_tables_round_trip() {
        let v = json!({"s": "x", "i": -3, "f": 1.5, "b": true, "n": null,
                        "a": [1, "two"], "o": {"k": "v"}});
        let Value::Object(m) = &v else { unreachable!() };
        let t = json_table("headers", m).unwrap();
        assert_eq!(table_json(&t), v);
        let long = "k".repeat(256);
        let mut bad = Map::new();
        bad.insert(long, json!(1));
        assert!(json_table("headers", &bad).is_err());
    }

    #[test]
    fn properties_encode_and_decode() {
        let p: PropertiesIn = serde_json::from_value(json!({
            "content_type": "text/plain", "delivery_mode": 2, "priority": 3,
            "headers": {"h": "v"}, "type": "t", "timestamp": 7, "expiration": 1000
        }))
        .unwrap();
        let raw = encode_properties(p).unwrap();
        let out = properties_json(&raw);
        assert_eq!(out["content_type"], "text/plain");
        assert_eq!(out["delivery_mode"], 2);
        assert_eq!(out["headers"]["h"], "v");
        assert_eq!(out["type"], "t");
        assert_eq!(out["expiration"], "1000");
        let too_long: PropertiesIn =
            serde_json::from_value(json!({"message_id": "m".repeat(300)})).unwrap();
        assert!(encode_properties(too_long).is_err());
    }
}

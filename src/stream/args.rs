//! What a stream queue's declare arguments mean: which `x-…` arguments a stream takes
//! (`x-max-length-bytes`, `x-max-age`, `x-stream-max-segment-size-bytes`), which RabbitMQ
//! accepts for streams but mean nothing on one node (accepted and ignored), which streams
//! refuse (406, with RabbitMQ's text), and the Kafka topic configs the kept ones become
//! (`retention.bytes`, `retention.ms`, `segment.bytes`); and Portask's own `x-stream-key`
//! (`routing-key` or `none`: what becomes the record key, `record::KeyFrom`).
//!
//! Pure; called on the declaring connection's shard.

use std::collections::BTreeMap;

use amq_protocol::types::FieldTable;

use super::record::KeyFrom;
use crate::catalog::amqp::tables::{int_value, str_value};

/// Portask's queue argument choosing the record key (`routing-key`, the default, or
/// `none`: a null key, the routing key in the `amqp-routing-key` header).
pub const KEY_ARG: &str = "x-stream-key";

/// The record key a stream's publishes get, from its declare arguments, or the 406 text's
/// reason when `x-stream-key` is not `routing-key` or `none`.
pub fn key_from(table: &FieldTable) -> Result<KeyFrom, String> {
    match table.inner().get(KEY_ARG) {
        None => Ok(KeyFrom::default()),
        Some(v) => str_value(v)
            .as_deref()
            .and_then(|s| match s {
                "routing-key" => Some(KeyFrom::RoutingKey),
                "none" => Some(KeyFrom::None),
                _ => None,
            })
            .ok_or_else(|| "must be 'routing-key' or 'none'".to_owned()),
    }
}

/// Arguments a stream refuses, as RabbitMQ's stream queue type does.
const REFUSED: &[&str] = &[
    "x-max-length",
    "x-message-ttl",
    "x-expires",
    "x-overflow",
    "x-max-priority",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-delivery-limit",
    "x-queue-mode",
    "x-queue-master-locator",
];

/// Parses RabbitMQ's `x-max-age` form: a positive number and one unit of `Y` (365 days),
/// `M` (30 days), `D`, `h`, `m`, `s`. Returns milliseconds.
pub fn parse_max_age(s: &str) -> Option<u64> {
    let unit = s.chars().last()?;
    let digits = &s[..s.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let secs: u64 = match unit {
        'Y' => 365 * 24 * 3600,
        'M' => 30 * 24 * 3600,
        'D' => 24 * 3600,
        'h' => 3600,
        'm' => 60,
        's' => 1,
        _ => return None,
    };
    n.checked_mul(secs)?.checked_mul(1000)
}

/// The Kafka topic configs a stream declare sets, or the 406 text.
pub fn topic_configs(
    queue: &str,
    vhost: &str,
    table: &FieldTable,
) -> Result<BTreeMap<String, String>, String> {
    let bad = |k: &str, why: &str| {
        format!(
            "PRECONDITION_FAILED - invalid arg '{k}' for queue '{queue}' in vhost '{vhost}': {why}"
        )
    };
    let mut configs = BTreeMap::new();
    for (k, v) in table.inner() {
        let k = k.as_str();
        if REFUSED.contains(&k) {
            return Err(format!(
                "PRECONDITION_FAILED - invalid arg '{k}' for queue '{queue}' in vhost '{vhost}' of queue type rabbit_stream_queue"
            ));
        }
        let positive = || match int_value(v) {
            Some(x) if x > 0 => Ok(x),
            Some(x) => Err(bad(k, &format!("{x} is out of range"))),
            None => Err(bad(k, "not an integer")),
        };
        match k {
            "x-max-length-bytes" => {
                configs.insert("retention.bytes".to_owned(), positive()?.to_string());
            }
            "x-stream-max-segment-size-bytes" => {
                configs.insert("segment.bytes".to_owned(), positive()?.to_string());
            }
            KEY_ARG => {
                key_from(table).map_err(|why| bad(k, &why))?;
            }
            "x-max-age" => {
                let ms = str_value(v)
                    .as_deref()
                    .and_then(parse_max_age)
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        bad(
                            k,
                            "must be a number and a unit of Y, M, D, h, m or s, e.g. 7D",
                        )
                    })?;
                configs.insert("retention.ms".to_owned(), ms.to_string());
            }
            // Accepted for streams and meaningless on one node (or not done yet).
            _ => {}
        }
    }
    Ok(configs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::AMQPValue;

    #[test]
    fn max_age_units_as_rabbitmq() {
        assert_eq!(parse_max_age("10s"), Some(10_000));
        assert_eq!(parse_max_age("30m"), Some(1_800_000));
        assert_eq!(parse_max_age("12h"), Some(43_200_000));
        assert_eq!(parse_max_age("7D"), Some(604_800_000));
        assert_eq!(parse_max_age("1M"), Some(2_592_000_000));
        assert_eq!(parse_max_age("1Y"), Some(31_536_000_000));
        for bad in ["", "D", "7", "7d", "-1h", "1.5h", "7 D", "1é"] {
            assert_eq!(parse_max_age(bad), None, "{bad}");
        }
    }

    #[test]
    fn stream_arguments_become_topic_configs() {
        let mut t = FieldTable::default();
        t.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        t.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(1 << 30));
        t.insert("x-max-age".into(), AMQPValue::LongString("12h".into()));
        t.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongInt(1 << 20),
        );
        t.insert("x-initial-cluster-size".into(), AMQPValue::LongInt(3));
        let c = topic_configs("s", "/", &t).unwrap();
        assert_eq!(c["retention.bytes"], (1u64 << 30).to_string());
        assert_eq!(c["retention.ms"], "43200000");
        assert_eq!(c["segment.bytes"], (1u64 << 20).to_string());
        assert_eq!(c.len(), 3);
        t.insert("x-max-age".into(), AMQPValue::LongString("soon".into()));
        assert!(topic_configs("s", "/", &t).is_err());
        let mut t = FieldTable::default();
        t.insert("x-max-length".into(), AMQPValue::LongInt(10));
        let e = topic_configs("s", "/", &t).unwrap_err();
        assert!(e.contains("rabbit_stream_queue"), "{e}");
    }

    #[test]
    fn the_key_argument_takes_routing_key_or_none() {
        let mut t = FieldTable::default();
        assert_eq!(key_from(&t), Ok(KeyFrom::RoutingKey));
        t.insert(KEY_ARG.into(), AMQPValue::LongString("none".into()));
        assert_eq!(key_from(&t), Ok(KeyFrom::None));
        assert!(topic_configs("s", "/", &t).unwrap().is_empty());
        t.insert(KEY_ARG.into(), AMQPValue::LongString("routing-key".into()));
        assert_eq!(key_from(&t), Ok(KeyFrom::RoutingKey));
        t.insert(KEY_ARG.into(), AMQPValue::LongString("body".into()));
        let e = topic_configs("s", "/", &t).unwrap_err();
        assert!(e.contains("invalid arg 'x-stream-key'"), "{e}");
        t.insert(KEY_ARG.into(), AMQPValue::LongInt(1));
        assert!(key_from(&t).is_err());
    }
}

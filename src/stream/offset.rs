//! The `x-stream-offset` consumer argument: where a stream consumer starts reading.
//!
//! RabbitMQ's forms: `first` (the log start), `last` (the start of the last chunk — here,
//! the first offset of the last record batch, the unit a producer appends at once), `next`
//! (the default: only records appended after the consumer attached), a numeric offset
//! (clamped into the log as RabbitMQ does), an AMQP timestamp (seconds since the epoch:
//! the first record at or after it), or an interval string (`1h`, `30m`, `7D`…: that long
//! before now). Anything else is a 406.
//!
//! Pure; parsed on the consumer's connection shard, resolved against the log by
//! `stream::queue` on the stream's owner.

use amq_protocol::types::AMQPValue;

use crate::catalog::amqp::tables::{int_value, str_value};

/// A parsed `x-stream-offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    First,
    Last,
    Next,
    Offset(i64),
    /// Milliseconds since the epoch.
    Timestamp(i64),
}

/// Parses the argument; `now_ms` turns an interval into a timestamp. The error is the 406
/// text.
pub fn parse(value: Option<&AMQPValue>, now_ms: i64) -> Result<StartAt, String> {
    let Some(v) = value else {
        return Ok(StartAt::Next);
    };
    let bad = || {
        format!(
            "PRECONDITION_FAILED - invalid x-stream-offset {v:?}: expected first, last, next, an offset, a timestamp or an interval such as 1h"
        )
    };
    match v {
        AMQPValue::Timestamp(secs) => {
            let ms = (*secs as i64).checked_mul(1000).ok_or_else(bad)?;
            return Ok(StartAt::Timestamp(ms));
        }
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => {
            let s = str_value(v).ok_or_else(bad)?;
            return match s.as_str() {
                "first" => Ok(StartAt::First),
                "last" => Ok(StartAt::Last),
                "next" => Ok(StartAt::Next),
                other => match super::args::parse_max_age(other) {
                    Some(ms) => Ok(StartAt::Timestamp(now_ms.saturating_sub(ms as i64))),
                    None => Err(bad()),
                },
            };
        }
        _ => {}
    }
    match int_value(v) {
        Some(n) if n >= 0 => Ok(StartAt::Offset(n)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(v.into())
    }

    #[test]
    fn every_rabbitmq_form() {
        let now = 10_000_000;
        assert_eq!(parse(None, now), Ok(StartAt::Next));
        assert_eq!(parse(Some(&s("first")), now), Ok(StartAt::First));
        assert_eq!(parse(Some(&s("last")), now), Ok(StartAt::Last));
        assert_eq!(parse(Some(&s("next")), now), Ok(StartAt::Next));
        assert_eq!(
            parse(Some(&AMQPValue::LongLongInt(42)), now),
            Ok(StartAt::Offset(42))
        );
        assert_eq!(
            parse(Some(&AMQPValue::ShortShortUInt(7)), now),
            Ok(StartAt::Offset(7))
        );
        assert_eq!(
            parse(Some(&AMQPValue::Timestamp(1_700_000_000)), now),
            Ok(StartAt::Timestamp(1_700_000_000_000))
        );
        assert_eq!(
            parse(Some(&s("1h")), now),
            Ok(StartAt::Timestamp(now - 3_600_000))
        );
        for bad in [s("middle"), s(""), s("1x"), AMQPValue::LongLongInt(-1)] {
            let e = parse(Some(&bad), now).unwrap_err();
            assert!(e.starts_with("PRECONDITION_FAILED"), "{e}");
        }
        assert!(parse(Some(&AMQPValue::Boolean(true)), now).is_err());
    }
}

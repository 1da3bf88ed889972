//! The `x-…` arguments of a queue declare that Portask acts on: validated once at
//! declare (`parse_queue_args`, whose error is the PRECONDITION_FAILED text the client
//! gets) and kept parsed in the catalog (`QueueArgs`); what `x-queue-type` makes of a
//! queue (`queue_type`).
//!
//! Pure functions, called on the declaring connection's shard and by the queue's owner.

use amq_protocol::types::{AMQPValue, FieldTable};
use rkyv::{Archive, Deserialize, Serialize};

use super::tables::{int_value, str_value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Overflow {
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

/// The `x-…` queue arguments Portask acts on, validated at declare.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct QueueArgs {
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
}

impl Default for QueueArgs {
    fn default() -> Self {
        QueueArgs {
            message_ttl: None,
            expires: None,
            max_length: None,
            max_length_bytes: None,
            overflow: Overflow::DropHead,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            max_priority: None,
            single_active_consumer: false,
        }
    }
}

/// What `x-queue-type` makes of a queue. Portask keeps every queue on its owner shard
/// (one node); a `quorum` queue is a durable queue that also keeps RabbitMQ's quorum-queue
/// rules a client may count on: it must be durable, not exclusive, not auto-delete; every
/// message is written (whatever its delivery mode); a message requeued more than
/// `x-delivery-limit` times (20 by default, as RabbitMQ 4; negative = no limit) is
/// dead-lettered with reason `delivery_limit` (or dropped), and redeliveries carry an
/// `x-delivery-count` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueType {
    pub quorum: bool,
    /// A stream queue (`crate::stream`): its arguments are checked by `stream::args`.
    pub stream: bool,
    pub delivery_limit: Option<u64>,
}

/// RabbitMQ 4's default `x-delivery-limit` of quorum queues.
pub const QUORUM_DELIVERY_LIMIT: u64 = 20;

/// The queue type its (validated) arguments give.
pub fn queue_type(table: &FieldTable) -> QueueType {
    let args = table.inner();
    let kind = args.get("x-queue-type").and_then(str_value);
    let quorum = kind.as_deref() == Some("quorum");
    if !quorum {
        return QueueType {
            stream: kind.as_deref() == Some("stream"),
            ..QueueType::default()
        };
    }
    let delivery_limit = match args.get("x-delivery-limit").and_then(int_value) {
        Some(n) if n < 0 => None,
        Some(n) => Some(n as u64),
        None => Some(QUORUM_DELIVERY_LIMIT),
    };
    QueueType {
        quorum,
        stream: false,
        delivery_limit,
    }
}

/// Where a queue declare asks its queue to go: RabbitMQ's `x-queue-leader-locator`
/// (`client-local`, `balanced`) and the older `x-queue-master-locator` (`client-local`,
/// `min-masters`, `random`). `amqp::placement` turns it into a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locator {
    /// `client-local`: the declaring connection's shard.
    ClientLocal,
    /// `balanced` (`min-masters`), and no locator argument: the shard owning the fewest
    /// queues, the declaring connection's when it is one of them.
    Balanced,
    /// `random` (`x-queue-master-locator` only).
    Random,
}

/// The locator one of the two locator arguments names, or why RabbitMQ would refuse it.
fn parse_locator(key: &str, value: &AMQPValue) -> Result<Locator, &'static str> {
    let leader = key == "x-queue-leader-locator";
    match (leader, str_value(value).as_deref()) {
        (_, Some("client-local")) => Ok(Locator::ClientLocal),
        (true, Some("balanced")) | (false, Some("min-masters")) => Ok(Locator::Balanced),
        (false, Some("random")) => Ok(Locator::Random),
        (true, _) => Err("must be 'client-local' or 'balanced'"),
        (false, _) => Err("must be 'client-local', 'min-masters' or 'random'"),
    }
}

/// The locator of a declare's (validated) arguments: `x-queue-leader-locator` before
/// `x-queue-master-locator`, as RabbitMQ; `Balanced` without either.
pub fn locator(table: &FieldTable) -> Locator {
    ["x-queue-leader-locator", "x-queue-master-locator"]
        .iter()
        .find_map(|k| parse_locator(k, table.inner().get(*k)?).ok())
        .unwrap_or(Locator::Balanced)
}

/// Parses and validates the queue arguments; the error is the 406 reply text.
pub fn parse_queue_args(queue: &str, vhost: &str, table: &FieldTable) -> Result<QueueArgs, String> {
    let mut a = QueueArgs::default();
    let bad = |k: &str, why: &str| {
        format!(
            "PRECONDITION_FAILED - invalid arg '{k}' for queue '{queue}' in vhost '{vhost}': {why}"
        )
    };
    for (k, v) in table.inner() {
        let k = k.as_str();
        let uint = |min: i64| -> Result<u64, String> {
            match int_value(v) {
                Some(x) if x >= min => Ok(x as u64),
                Some(x) => Err(bad(k, &format!("{x} is out of range"))),
                None => Err(bad(k, "not an integer")),
            }
        };
        match k {
            "x-message-ttl" => a.message_ttl = Some(uint(0)?),
            "x-expires" => a.expires = Some(uint(1)?),
            "x-max-length" => a.max_length = Some(uint(0)?),
            "x-max-length-bytes" => a.max_length_bytes = Some(uint(0)?),
            "x-max-priority" => {
                let p = uint(0)?;
                if p > 255 {
                    return Err(bad(k, "must be between 0 and 255"));
                }
                a.max_priority = Some(p as u8);
            }
            "x-overflow" => {
                a.overflow = match str_value(v).as_deref() {
                    Some("drop-head") => Overflow::DropHead,
                    Some("reject-publish") => Overflow::RejectPublish,
                    Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                    _ => {
                        return Err(bad(
                            k,
                            "must be drop-head, reject-publish or reject-publish-dlx",
                        ))
                    }
                }
            }
            "x-dead-letter-exchange" => {
                a.dead_letter_exchange = Some(str_value(v).ok_or_else(|| bad(k, "not a string"))?)
            }
            "x-dead-letter-routing-key" => {
                a.dead_letter_routing_key =
                    Some(str_value(v).ok_or_else(|| bad(k, "not a string"))?)
            }
            "x-single-active-consumer" => match v {
                AMQPValue::Boolean(b) => a.single_active_consumer = *b,
                _ => return Err(bad(k, "not a boolean")),
            },
            "x-queue-type" => match str_value(v).as_deref() {
                Some("classic") | Some("quorum") | Some("stream") => {}
                _ => return Err(bad(k, "must be 'classic', 'quorum' or 'stream'")),
            },
            "x-delivery-limit" => {
                int_value(v).ok_or_else(|| bad(k, "not an integer"))?;
            }
            "x-queue-leader-locator" | "x-queue-master-locator" => {
                parse_locator(k, v).map_err(|why| bad(k, why))?;
            }
            _ => {}
        }
    }
    if a.dead_letter_routing_key.is_some() && a.dead_letter_exchange.is_none() {
        return Err(format!(
            "PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue '{queue}' in vhost '{vhost}': x-dead-letter-exchange is not set"
        ));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_args_validate() {
        let mut t = FieldTable::default();
        t.insert("x-max-length".into(), AMQPValue::LongInt(10));
        t.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        let a = parse_queue_args("q", "/", &t).unwrap();
        assert_eq!(a.max_length, Some(10));
        assert_eq!(a.overflow, Overflow::RejectPublish);
        t.insert("x-message-ttl".into(), AMQPValue::LongString("soon".into()));
        assert!(parse_queue_args("q", "/", &t).is_err());
    }

    #[test]
    fn locator_arguments_as_rabbitmq() {
        let s = |v: &str| AMQPValue::LongString(v.into());
        let mut t = FieldTable::default();
        assert_eq!(locator(&t), Locator::Balanced);
        t.insert("x-queue-master-locator".into(), s("random"));
        assert_eq!(locator(&t), Locator::Random);
        t.insert("x-queue-master-locator".into(), s("min-masters"));
        assert_eq!(locator(&t), Locator::Balanced);
        t.insert("x-queue-leader-locator".into(), s("client-local"));
        assert_eq!(locator(&t), Locator::ClientLocal);
        assert!(parse_queue_args("q", "/", &t).is_ok());
        // Each argument takes its own values only, as RabbitMQ checks them.
        for (k, v) in [
            ("x-queue-leader-locator", s("min-masters")),
            ("x-queue-leader-locator", s("nearest")),
            ("x-queue-master-locator", s("balanced")),
            ("x-queue-master-locator", AMQPValue::LongInt(1)),
        ] {
            let mut t = FieldTable::default();
            t.insert(k.into(), v);
            let err = parse_queue_args("q", "/", &t).expect_err(k);
            assert!(
                err.starts_with("PRECONDITION_FAILED - invalid arg"),
                "{err}"
            );
        }
    }
}

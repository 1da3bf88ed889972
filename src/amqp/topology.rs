//! The AMQP part of the catalog: per-vhost exchanges, queues and bindings, the changes that
//! mutate them and the checks the catalog writer runs before accepting a change.
//!
//! These types live inside `CatalogState` (field `amqp`) and `Change::Amqp`; the single
//! writer on shard 0 calls `check` and `CatalogState::apply` calls `apply`. Every shard
//! reads its replica to route and to answer passive declares. Durable exchanges, durable
//! queues and bindings whose both ends are durable are persisted with the catalog;
//! everything else is replicated but never written (`persisted`), and `after_restart`
//! drops whatever transient entities an old snapshot still holds.

use std::collections::BTreeMap;

use amq_protocol::types::{AMQPValue, FieldTable};
use rkyv::{Archive, Deserialize, Serialize};

use super::reply;
use crate::catalog::CatalogError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(s: &str) -> Option<ExchangeKind> {
        Some(match s {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" | "match" => ExchangeKind::Headers,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    /// The declare arguments, AMQP field-table encoded.
    pub arguments: Vec<u8>,
    /// `alternate-exchange`, extracted from the arguments.
    pub alternate: Option<String>,
}

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

#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct Queue {
    pub name: String,
    /// Incarnation id: a queue deleted and declared again gets a new one, so its old
    /// messages and files are never mistaken for the new queue's.
    pub id: u64,
    pub durable: bool,
    /// The connection that declared an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: Vec<u8>,
    pub args: QueueArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum DestKind {
    Queue,
    Exchange,
}

#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct Binding {
    pub source: String,
    pub destination: String,
    pub dest_kind: DestKind,
    pub routing_key: String,
    pub arguments: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Archive, Serialize, Deserialize)]
pub struct VhostTopology {
    pub exchanges: BTreeMap<String, Exchange>,
    pub queues: BTreeMap<String, Queue>,
    pub bindings: Vec<Binding>,
}

/// One AMQP catalog mutation.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub enum TopologyChange {
    DeclareExchange {
        vhost: String,
        exchange: Exchange,
    },
    DeleteExchange {
        vhost: String,
        name: String,
        if_unused: bool,
    },
    DeclareQueue {
        vhost: String,
        queue: Queue,
    },
    /// Deletes queues by (name, incarnation id); a queue already gone or re-created is
    /// left alone.
    DeleteQueues {
        vhost: String,
        queues: Vec<(String, u64)>,
    },
    Bind {
        vhost: String,
        binding: Binding,
    },
    Unbind {
        vhost: String,
        binding: Binding,
    },
}

/// The exchanges every vhost has without declaring them.
pub const BUILTIN_EXCHANGES: &[(&str, ExchangeKind)] = &[
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

pub fn builtin_exchange(name: &str) -> Option<Exchange> {
    BUILTIN_EXCHANGES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, kind)| Exchange {
            name: (*n).to_owned(),
            kind: *kind,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: encode_table(&FieldTable::default()),
            alternate: None,
        })
}

fn err(code: u16, text: String) -> CatalogError {
    CatalogError::Amqp { code, text }
}

fn not_found(what: &str, name: &str, vhost: &str) -> CatalogError {
    err(
        reply::NOT_FOUND,
        format!("NOT_FOUND - no {what} '{name}' in vhost '{vhost}'"),
    )
}

impl VhostTopology {
    pub fn exchange(&self, name: &str) -> Option<Exchange> {
        self.exchanges
            .get(name)
            .cloned()
            .or_else(|| builtin_exchange(name))
    }

    pub fn has_exchange(&self, name: &str) -> bool {
        self.exchanges.contains_key(name) || builtin_exchange(name).is_some()
    }

    fn exchange_durable(&self, name: &str) -> bool {
        self.exchange(name).map(|e| e.durable).unwrap_or(false)
    }

    fn dest_durable(&self, b: &Binding) -> bool {
        match b.dest_kind {
            DestKind::Queue => self
                .queues
                .get(&b.destination)
                .map(|q| q.durable && q.exclusive_owner.is_none())
                .unwrap_or(false),
            DestKind::Exchange => self.exchange_durable(&b.destination),
        }
    }

    fn binding_durable(&self, b: &Binding) -> bool {
        self.exchange_durable(&b.source) && self.dest_durable(b)
    }

    /// Removes bindings matching `pred`, then auto-delete exchanges that lost their last
    /// binding as a source (RabbitMQ's rule), repeatedly.
    fn remove_bindings(&mut self, mut pred: impl FnMut(&Binding) -> bool) {
        let mut lost: Vec<String> = Vec::new();
        self.bindings.retain(|b| {
            if pred(b) {
                lost.push(b.source.clone());
                false
            } else {
                true
            }
        });
        while let Some(source) = lost.pop() {
            let auto = self
                .exchanges
                .get(&source)
                .map(|e| e.auto_delete)
                .unwrap_or(false);
            if auto && !self.bindings.iter().any(|b| b.source == source) {
                self.exchanges.remove(&source);
                let name = source.clone();
                self.bindings.retain(|b| {
                    let gone = b.dest_kind == DestKind::Exchange && b.destination == name;
                    if gone {
                        lost.push(b.source.clone());
                    }
                    !gone
                });
            }
        }
    }
}

/// Whether the catalog writer persists `change` (decided against the state before it).
pub fn persisted(topology: &BTreeMap<String, VhostTopology>, change: &TopologyChange) -> bool {
    let empty = VhostTopology::default();
    let vt = |v: &str| topology.get(v).unwrap_or(&empty);
    match change {
        TopologyChange::DeclareExchange { exchange, .. } => exchange.durable,
        TopologyChange::DeleteExchange { vhost, name, .. } => vt(vhost).exchange_durable(name),
        TopologyChange::DeclareQueue { queue, .. } => {
            queue.durable && queue.exclusive_owner.is_none()
        }
        TopologyChange::DeleteQueues { vhost, queues } => queues.iter().any(|(n, _)| {
            vt(vhost)
                .queues
                .get(n)
                .map(|q| q.durable && q.exclusive_owner.is_none())
                .unwrap_or(false)
        }),
        TopologyChange::Bind { vhost, binding } | TopologyChange::Unbind { vhost, binding } => {
            vt(vhost).binding_durable(binding)
        }
    }
}

fn same_exchange(a: &Exchange, b: &Exchange) -> Result<(), String> {
    if a.kind != b.kind {
        return Err(format!(
            "inequivalent arg 'type' for exchange '{}': received '{}' but current is '{}'",
            a.name,
            b.kind.as_str(),
            a.kind.as_str()
        ));
    }
    for (what, x, y) in [
        ("durable", a.durable, b.durable),
        ("auto_delete", a.auto_delete, b.auto_delete),
        ("internal", a.internal, b.internal),
    ] {
        if x != y {
            return Err(format!(
                "inequivalent arg '{what}' for exchange '{}': received '{y}' but current is '{x}'",
                a.name
            ));
        }
    }
    if a.alternate != b.alternate {
        return Err(format!(
            "inequivalent arg 'alternate-exchange' for exchange '{}'",
            a.name
        ));
    }
    Ok(())
}

fn same_queue(a: &Queue, b: &Queue) -> Result<(), String> {
    for (what, x, y) in [
        ("durable", a.durable, b.durable),
        (
            "exclusive",
            a.exclusive_owner.is_some(),
            b.exclusive_owner.is_some(),
        ),
        ("auto_delete", a.auto_delete, b.auto_delete),
    ] {
        if x != y {
            return Err(format!(
                "inequivalent arg '{what}' for queue '{}': received '{y}' but current is '{x}'",
                a.name
            ));
        }
    }
    if a.args != b.args {
        return Err(format!(
            "inequivalent arguments for queue '{}' (x-arguments differ from the existing declaration)",
            a.name
        ));
    }
    Ok(())
}

/// Checks one change against the current topology (the writer's `check`).
pub fn check(
    topology: &BTreeMap<String, VhostTopology>,
    change: &TopologyChange,
) -> Result<(), CatalogError> {
    let empty = VhostTopology::default();
    let vt = |v: &str| topology.get(v).unwrap_or(&empty);
    match change {
        TopologyChange::DeclareExchange { vhost, exchange } => {
            let t = vt(vhost);
            if let Some(current) = t.exchange(&exchange.name) {
                return same_exchange(&current, exchange).map_err(|e| {
                    err(
                        reply::PRECONDITION_FAILED,
                        format!("PRECONDITION_FAILED - {e} in vhost '{vhost}'"),
                    )
                });
            }
            if exchange.name.starts_with("amq.") {
                return Err(err(
                    reply::ACCESS_REFUSED,
                    format!(
                        "ACCESS_REFUSED - exchange name '{}' contains reserved prefix 'amq.*'",
                        exchange.name
                    ),
                ));
            }
            Ok(())
        }
        TopologyChange::DeleteExchange {
            vhost,
            name,
            if_unused,
        } => {
            let t = vt(vhost);
            if builtin_exchange(name).is_some() {
                return Err(err(
                    reply::ACCESS_REFUSED,
                    format!("ACCESS_REFUSED - operation not permitted on the default or amq.* exchange '{name}'"),
                ));
            }
            if *if_unused && t.bindings.iter().any(|b| &b.source == name) {
                return Err(err(
                    reply::PRECONDITION_FAILED,
                    format!("PRECONDITION_FAILED - exchange '{name}' in vhost '{vhost}' in use"),
                ));
            }
            Ok(())
        }
        TopologyChange::DeclareQueue { vhost, queue } => {
            let t = vt(vhost);
            if let Some(current) = t.queues.get(&queue.name) {
                if let Some(owner) = current.exclusive_owner {
                    if Some(owner) != queue.exclusive_owner {
                        return Err(err(
                            reply::RESOURCE_LOCKED,
                            format!(
                                "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{}' in vhost '{vhost}'",
                                queue.name
                            ),
                        ));
                    }
                }
                return same_queue(current, queue).map_err(|e| {
                    err(
                        reply::PRECONDITION_FAILED,
                        format!("PRECONDITION_FAILED - {e} in vhost '{vhost}'"),
                    )
                });
            }
            if queue.name.starts_with("amq.") && !queue.name.starts_with("amq.gen-") {
                return Err(err(
                    reply::ACCESS_REFUSED,
                    format!(
                        "ACCESS_REFUSED - queue name '{}' contains reserved prefix 'amq.*'",
                        queue.name
                    ),
                ));
            }
            Ok(())
        }
        TopologyChange::DeleteQueues { .. } => Ok(()),
        TopologyChange::Bind { vhost, binding } => {
            let t = vt(vhost);
            if !t.has_exchange(&binding.source) {
                return Err(not_found("exchange", &binding.source, vhost));
            }
            if binding.source.is_empty() {
                return Err(err(
                    reply::ACCESS_REFUSED,
                    "ACCESS_REFUSED - operation not permitted on the default exchange".to_owned(),
                ));
            }
            match binding.dest_kind {
                DestKind::Queue if !t.queues.contains_key(&binding.destination) => {
                    Err(not_found("queue", &binding.destination, vhost))
                }
                DestKind::Exchange if !t.has_exchange(&binding.destination) => {
                    Err(not_found("exchange", &binding.destination, vhost))
                }
                DestKind::Exchange if binding.destination.is_empty() => Err(err(
                    reply::ACCESS_REFUSED,
                    "ACCESS_REFUSED - operation not permitted on the default exchange".into(),
                )),
                _ => Ok(()),
            }
        }
        TopologyChange::Unbind { vhost, binding } => {
            let t = vt(vhost);
            if !t.has_exchange(&binding.source) {
                return Err(not_found("exchange", &binding.source, vhost));
            }
            match binding.dest_kind {
                DestKind::Queue if !t.queues.contains_key(&binding.destination) => {
                    Err(not_found("queue", &binding.destination, vhost))
                }
                DestKind::Exchange if !t.has_exchange(&binding.destination) => {
                    Err(not_found("exchange", &binding.destination, vhost))
                }
                _ => Ok(()),
            }
        }
    }
}

/// Applies a change `check` accepted (and replays persisted ones at load).
pub fn apply(topology: &mut BTreeMap<String, VhostTopology>, change: &TopologyChange) {
    match change {
        TopologyChange::DeclareExchange { vhost, exchange } => {
            if builtin_exchange(&exchange.name).is_none() {
                topology
                    .entry(vhost.clone())
                    .or_default()
                    .exchanges
                    .entry(exchange.name.clone())
                    .or_insert_with(|| exchange.clone());
            }
        }
        TopologyChange::DeleteExchange { vhost, name, .. } => {
            if let Some(t) = topology.get_mut(vhost) {
                if t.exchanges.remove(name).is_some() {
                    let n = name.clone();
                    t.remove_bindings(|b| {
                        b.source == n || (b.dest_kind == DestKind::Exchange && b.destination == n)
                    });
                }
            }
        }
        TopologyChange::DeclareQueue { vhost, queue } => {
            topology
                .entry(vhost.clone())
                .or_default()
                .queues
                .entry(queue.name.clone())
                .or_insert_with(|| queue.clone());
        }
        TopologyChange::DeleteQueues { vhost, queues } => {
            if let Some(t) = topology.get_mut(vhost) {
                for (name, id) in queues {
                    if t.queues.get(name).map(|q| q.id) == Some(*id) {
                        t.queues.remove(name);
                        let n = name.clone();
                        t.remove_bindings(|b| b.dest_kind == DestKind::Queue && b.destination == n);
                    }
                }
            }
        }
        TopologyChange::Bind { vhost, binding } => {
            let t = topology.entry(vhost.clone()).or_default();
            if !t.bindings.iter().any(|b| same_binding(b, binding)) {
                t.bindings.push(binding.clone());
            }
        }
        TopologyChange::Unbind { vhost, binding } => {
            if let Some(t) = topology.get_mut(vhost) {
                t.remove_bindings(|b| same_binding(b, binding));
            }
        }
    }
}

/// Bindings are equal when source, destination, key and arguments are.
pub fn same_binding(a: &Binding, b: &Binding) -> bool {
    a.source == b.source
        && a.destination == b.destination
        && a.dest_kind == b.dest_kind
        && a.routing_key == b.routing_key
        && (a.arguments == b.arguments || decode_table(&a.arguments) == decode_table(&b.arguments))
}

/// After a restart: only durable, non-exclusive queues, durable exchanges and bindings
/// between durable ends survive.
pub fn after_restart(topology: &mut BTreeMap<String, VhostTopology>) {
    for t in topology.values_mut() {
        t.exchanges.retain(|_, e| e.durable);
        t.queues
            .retain(|_, q| q.durable && q.exclusive_owner.is_none());
        let snapshot = t.clone();
        t.bindings.retain(|b| snapshot.binding_durable(b));
    }
}

/// Encodes a field table the way it travels on the wire (with its length prefix).
pub fn encode_table(table: &FieldTable) -> Vec<u8> {
    use amq_protocol::types::generation::gen_field_table;
    match gen_field_table(table)(Vec::new().into()) {
        Ok(ctx) => ctx.into_inner().0,
        Err(_) => vec![0, 0, 0, 0],
    }
}

/// Decodes `encode_table`'s output; bytes that do not parse (or nest deeper than
/// `nesting::MAX_DEPTH`) give an empty table.
pub fn decode_table(bytes: &[u8]) -> FieldTable {
    if !super::nesting::table_ok(bytes) {
        return FieldTable::default();
    }
    amq_protocol::types::parsing::parse_field_table(bytes)
        .map(|(_, t)| t)
        .unwrap_or_default()
}

/// An integer argument of any AMQP integer width.
pub fn int_value(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(x) => *x as i64,
        AMQPValue::ShortShortUInt(x) => *x as i64,
        AMQPValue::ShortInt(x) => *x as i64,
        AMQPValue::ShortUInt(x) => *x as i64,
        AMQPValue::LongInt(x) => *x as i64,
        AMQPValue::LongUInt(x) => *x as i64,
        AMQPValue::LongLongInt(x) => *x,
        AMQPValue::Timestamp(x) => i64::try_from(*x).ok()?,
        _ => return None,
    })
}

pub fn str_value(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
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
    pub delivery_limit: Option<u64>,
}

/// RabbitMQ 4's default `x-delivery-limit` of quorum queues.
pub const QUORUM_DELIVERY_LIMIT: u64 = 20;

/// The queue type its (validated) arguments give.
pub fn queue_type(table: &FieldTable) -> QueueType {
    let args = table.inner();
    let quorum = args
        .get("x-queue-type")
        .and_then(str_value)
        .map(|t| t == "quorum")
        .unwrap_or(false);
    if !quorum {
        return QueueType::default();
    }
    let delivery_limit = match args.get("x-delivery-limit").and_then(int_value) {
        Some(n) if n < 0 => None,
        Some(n) => Some(n as u64),
        None => Some(QUORUM_DELIVERY_LIMIT),
    };
    QueueType {
        quorum,
        delivery_limit,
    }
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
                Some("classic") | Some("quorum") => {}
                Some("stream") => return Err(bad(
                    k,
                    "stream queues are not supported (use a Kafka topic, or 'classic' or 'quorum')",
                )),
                _ => return Err(bad(k, "must be 'classic' or 'quorum'")),
            },
            "x-delivery-limit" => {
                int_value(v).ok_or_else(|| bad(k, "not an integer"))?;
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

    fn q(name: &str, durable: bool) -> Queue {
        Queue {
            name: name.into(),
            id: 1,
            durable,
            exclusive_owner: None,
            auto_delete: false,
            arguments: encode_table(&FieldTable::default()),
            args: QueueArgs::default(),
        }
    }

    #[test]
    fn declare_bind_delete_cascades() {
        let mut t = BTreeMap::new();
        let v = "/".to_string();
        apply(
            &mut t,
            &TopologyChange::DeclareQueue {
                vhost: v.clone(),
                queue: q("a", true),
            },
        );
        let b = Binding {
            source: "amq.direct".into(),
            destination: "a".into(),
            dest_kind: DestKind::Queue,
            routing_key: "k".into(),
            arguments: encode_table(&FieldTable::default()),
        };
        let bind = TopologyChange::Bind {
            vhost: v.clone(),
            binding: b.clone(),
        };
        assert!(check(&t, &bind).is_ok());
        assert!(persisted(&t, &bind));
        apply(&mut t, &bind);
        apply(&mut t, &bind);
        assert_eq!(t["/"].bindings.len(), 1);
        apply(
            &mut t,
            &TopologyChange::DeleteQueues {
                vhost: v.clone(),
                queues: vec![("a".into(), 1)],
            },
        );
        assert!(t["/"].bindings.is_empty());
        let mut other = q("a", false);
        other.id = 2;
        apply(
            &mut t,
            &TopologyChange::DeclareQueue {
                vhost: v.clone(),
                queue: q("a", true),
            },
        );
        let e = check(
            &t,
            &TopologyChange::DeclareQueue {
                vhost: v,
                queue: other,
            },
        )
        .unwrap_err();
        assert!(matches!(e, CatalogError::Amqp { code: 406, .. }), "{e:?}");
    }

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
}

//! The AMQP part of the catalog: per-vhost exchanges, queues and bindings, the changes that
//! mutate them and the checks the catalog writer runs before accepting a change; field
//! tables as the catalog stores them (`tables`) and the queue arguments it validates
//! (`arguments`).
//!
//! These types live inside `CatalogState` (field `amqp`) and `Change::Amqp`; the single
//! writer on shard 0 calls `check` and `CatalogState::apply` calls `apply`. Every shard
//! reads its replica to route and to answer passive declares. Durable exchanges, durable
//! queues and bindings whose both ends are durable are persisted with the catalog;
//! everything else is replicated but never written (`persisted`), and `after_restart`
//! (called at startup, before the shards start) drops whatever transient entities an old
//! snapshot still holds. A refusal is a `CatalogError::Amqp` with the AMQP reply code the
//! client gets. Pure data and functions: no shard, no I/O, nothing from `crate::amqp`.

pub mod arguments;
pub mod tables;

use std::collections::BTreeMap;

use amq_protocol::protocol::AMQPSoftError;
use amq_protocol::types::FieldTable;
use rkyv::{Archive, Deserialize, Serialize};

use self::arguments::QueueArgs;
use self::tables::{decode_table, encode_table};
use super::CatalogError;

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

impl Queue {
    /// Declared `x-queue-type: stream`: the queue is the Kafka topic of its name
    /// (`crate::stream`).
    pub fn is_stream(&self) -> bool {
        arguments::queue_type(&tables::decode_table(&self.arguments)).stream
    }
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

/// A refusal with the AMQP reply code the client gets (the channel or connection closes
/// with it); the codes are amq-protocol's soft errors, the same numbers as `amqp::reply`.
fn err(code: AMQPSoftError, text: String) -> CatalogError {
    CatalogError::Amqp {
        code: code.get_id(),
        text,
    }
}

fn not_found(what: &str, name: &str, vhost: &str) -> CatalogError {
    err(
        AMQPSoftError::NOTFOUND,
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
                        AMQPSoftError::PRECONDITIONFAILED,
                        format!("PRECONDITION_FAILED - {e} in vhost '{vhost}'"),
                    )
                });
            }
            if exchange.name.starts_with("amq.") {
                return Err(err(
                    AMQPSoftError::ACCESSREFUSED,
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
                    AMQPSoftError::ACCESSREFUSED,
                    format!("ACCESS_REFUSED - operation not permitted on the default or amq.* exchange '{name}'"),
                ));
            }
            if *if_unused && t.bindings.iter().any(|b| &b.source == name) {
                return Err(err(
                    AMQPSoftError::PRECONDITIONFAILED,
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
                            AMQPSoftError::RESOURCELOCKED,
                            format!(
                                "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{}' in vhost '{vhost}'",
                                queue.name
                            ),
                        ));
                    }
                }
                return same_queue(current, queue).map_err(|e| {
                    err(
                        AMQPSoftError::PRECONDITIONFAILED,
                        format!("PRECONDITION_FAILED - {e} in vhost '{vhost}'"),
                    )
                });
            }
            if queue.name.starts_with("amq.") && !queue.name.starts_with("amq.gen-") {
                return Err(err(
                    AMQPSoftError::ACCESSREFUSED,
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
                    AMQPSoftError::ACCESSREFUSED,
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
                    AMQPSoftError::ACCESSREFUSED,
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
}

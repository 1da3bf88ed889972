//! Super streams: a Kafka topic of N partitions seen over AMQP 0-9-1 as RabbitMQ shows a
//! super stream: a direct exchange `NAME` (argument `x-super-stream: true`) bound to N
//! stream queues `NAME-0` … `NAME-(N-1)` (binding key `k`, binding argument
//! `x-stream-partition-order: k`), queue `NAME-k` being partition `k` of the topic.
//!
//! Publishing to the exchange routes by the routing key with the Kafka Java client's
//! default partitioner for a non-null key (`Utils.murmur2`, `toPositive`, modulo N), so an
//! AMQP publish with routing key K lands on the partition a Kafka producer with key K
//! uses (`kafka::partitioner`; an empty routing key is the empty key, never "null").
//!
//! Like one-partition topics, a super stream appears when AMQP first names it (a passive
//! declare, a consume, a publish, a bind) through `adopt`: the exchange, the partition
//! queues and their bindings are made in one catalog call. Growing the topic
//! (CreatePartitions) adds the new partition queues in the same catalog change
//! (`CatalogState::apply` calls `grow`); deleting the topic deletes them all.
//!
//! Pure (catalog state in, catalog changes out); called on the connection's shard, and
//! by `CatalogState::apply` on every shard's replica.

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::catalog::amqp::tables::{decode_table, encode_table, int_value, str_value};
use crate::catalog::amqp::{Binding, DestKind, Exchange, ExchangeKind, Queue, TopologyChange};
use crate::catalog::{CatalogState, Change};

/// Exchange argument marking a super stream (RabbitMQ's).
pub const SUPER_STREAM: &str = "x-super-stream";
/// Binding argument giving a partition's index (RabbitMQ's).
pub const PARTITION_ORDER: &str = "x-stream-partition-order";
/// Queue argument naming the topic a partition queue belongs to (Portask's: the
/// partition index is `PARTITION_ORDER` on the queue too).
pub const PARTITION_OF: &str = "x-super-stream-topic";

/// The name of partition `k`'s queue.
pub fn partition_queue(topic: &str, k: i32) -> String {
    format!("{topic}-{k}")
}

/// Whether an exchange's arguments mark it a super stream.
pub fn is_super_exchange(arguments: &[u8]) -> bool {
    match decode_table(arguments).inner().get(SUPER_STREAM) {
        Some(AMQPValue::Boolean(b)) => *b,
        Some(v) => str_value(v).is_some_and(|s| s == "true"),
        None => false,
    }
}

/// (topic, partition) of a partition queue, from its declare arguments; None for any
/// other queue.
pub fn partition_of_queue(q: &Queue) -> Option<(String, i32)> {
    let t = decode_table(&q.arguments);
    let topic = t.inner().get(PARTITION_OF).and_then(str_value)?;
    let k = t.inner().get(PARTITION_ORDER).and_then(int_value)?;
    Some((topic, i32::try_from(k).ok()?))
}

/// The Kafka topic and partition a stream queue named `name` in vhost `vhost` reads and
/// writes: partition `k` of the super stream for a partition queue, else partition 0 of
/// the topic of its name.
pub fn locate(state: &CatalogState, vhost: &str, name: &str) -> (String, i32) {
    state
        .amqp
        .get(vhost)
        .and_then(|t| t.queues.get(name))
        .and_then(partition_of_queue)
        .unwrap_or_else(|| (name.to_owned(), 0))
}

/// The super stream (topic, partition) a queue name `base-k` would be, by its name alone:
/// topic `base` has more than one partition and more than `k`, and no topic is named
/// `name` (a topic of that name wins).
pub fn member_by_name(state: &CatalogState, name: &str) -> Option<(String, i32)> {
    if state.topic(name).is_some() {
        return None;
    }
    let (base, k) = name.rsplit_once('-')?;
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) || (k.len() > 1 && k.starts_with('0'))
    {
        return None;
    }
    let k: i32 = k.parse().ok()?;
    let t = state.topic(base)?;
    (t.partitions > 1 && k < t.partitions).then(|| (base.to_owned(), k))
}

/// Why topic `topic` cannot be shown as a super stream: a partition queue's name is
/// already another queue, or another Kafka topic (the topic of that name wins).
fn clash(state: &CatalogState, vhost: &str, topic: &str, partitions: i32) -> Option<String> {
    let queues = state.amqp.get(vhost).map(|t| &t.queues);
    for k in 0..partitions {
        let name = partition_queue(topic, k);
        let ours = queues
            .and_then(|q| q.get(&name))
            .map(|q| partition_of_queue(q) == Some((topic.to_owned(), k)));
        if ours == Some(false) || (ours.is_none() && state.topic(&name).is_some()) {
            return Some(format!(
                "PRECONDITION_FAILED - Kafka topic '{topic}' has {partitions} partitions but its partition queue name '{name}' is already a queue or a Kafka topic of its own: super stream '{topic}' is not available over AMQP"
            ));
        }
    }
    None
}

/// The catalog changes that show topic `topic` as a super stream in `vhost`: the
/// exchange if missing, then each missing partition queue and its binding. Empty when
/// there is nothing to add (or the topic has one partition); Err(406 text) on a clash.
/// Each partition queue is owned by its partition's shard of `shards` (`declare::id`);
/// with `None` (the catalog's own apply, which knows no shard count) by any shard.
pub fn adopt(
    state: &CatalogState,
    vhost: &str,
    topic: &str,
    shards: Option<usize>,
) -> Result<Vec<Change>, String> {
    if vhost != super::queue::VHOST || crate::catalog::is_internal_topic(topic) {
        return Ok(Vec::new());
    }
    let Some(t) = state.topic(topic) else {
        return Ok(Vec::new());
    };
    if t.partitions <= 1 {
        return Ok(Vec::new());
    }
    if let Some(why) = clash(state, vhost, topic, t.partitions) {
        return Err(why);
    }
    let v = state.amqp.get(vhost);
    let mut out = Vec::new();
    let amqp = |c| Change::Amqp(c);
    match v.and_then(|v| v.exchanges.get(topic)) {
        Some(e) if is_super_exchange(&e.arguments) => {}
        Some(_) => {
            return Err(format!(
                "PRECONDITION_FAILED - Kafka topic '{topic}' has {} partitions but exchange '{topic}' in vhost '{vhost}' is not its super stream",
                t.partitions
            ))
        }
        None => {
            let mut args = FieldTable::default();
            args.insert(SUPER_STREAM.into(), AMQPValue::Boolean(true));
            out.push(amqp(TopologyChange::DeclareExchange {
                vhost: vhost.to_owned(),
                exchange: Exchange {
                    name: topic.to_owned(),
                    kind: ExchangeKind::Direct,
                    durable: true,
                    auto_delete: false,
                    internal: false,
                    arguments: encode_table(&args),
                    alternate: None,
                },
            }));
        }
    }
    for k in 0..t.partitions {
        let name = partition_queue(topic, k);
        if v.is_some_and(|v| v.queues.contains_key(&name)) {
            continue;
        }
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        args.insert(PARTITION_OF.into(), AMQPValue::LongString(topic.into()));
        args.insert(PARTITION_ORDER.into(), AMQPValue::LongInt(k));
        let id = match shards {
            Some(shards) => super::declare::id(&name, topic, k, shards),
            None => u64::from_be_bytes(
                crate::catalog::new_topic_id(&name)[..8]
                    .try_into()
                    .unwrap_or([1; 8]),
            ),
        };
        out.push(amqp(TopologyChange::DeclareQueue {
            vhost: vhost.to_owned(),
            queue: Queue {
                name: name.clone(),
                id,
                durable: true,
                exclusive_owner: None,
                auto_delete: false,
                arguments: encode_table(&args),
                args: Default::default(),
            },
        }));
        let mut bargs = FieldTable::default();
        bargs.insert(PARTITION_ORDER.into(), AMQPValue::LongInt(k));
        out.push(amqp(TopologyChange::Bind {
            vhost: vhost.to_owned(),
            binding: Binding {
                source: topic.to_owned(),
                destination: name,
                dest_kind: DestKind::Queue,
                routing_key: k.to_string(),
                arguments: encode_table(&bargs),
            },
        }));
    }
    Ok(out)
}

/// Exchange argument giving the partition count of a super stream declared over AMQP
/// (Portask's: RabbitMQ makes the partitions with its CLI or stream protocol).
pub const PARTITIONS: &str = "x-super-stream-partitions";

/// The catalog changes an `exchange.declare` of `exchange` with `x-super-stream: true`
/// makes: the Kafka topic of `x-super-stream-partitions` partitions (with the stream
/// arguments `x-max-length-bytes`, `x-max-age`, … as its configs) and its super stream;
/// for a topic that exists, its super stream. None when the declare is not a super
/// stream's; Err(406 text) when it cannot be one.
pub fn declare(
    state: &CatalogState,
    vhost: &str,
    exchange: &Exchange,
    shards: usize,
) -> Option<Result<Vec<Change>, String>> {
    if !is_super_exchange(&exchange.arguments) {
        return None;
    }
    let name = exchange.name.as_str();
    Some((|| {
        let refused = |why: &str| format!("PRECONDITION_FAILED - super stream '{name}': {why}");
        if vhost != super::queue::VHOST {
            return Err(refused(&format!(
                "super streams live in vhost '{}' only (it is a Kafka topic)",
                super::queue::VHOST
            )));
        }
        if exchange.kind != ExchangeKind::Direct || !exchange.durable || exchange.auto_delete {
            return Err(refused(
                "the exchange must be durable, of type direct, not auto-delete",
            ));
        }
        if let Some(t) = state.topic(name) {
            if t.partitions <= 1 {
                return Err(refused(
                    "Kafka topic of this name has one partition (it is a stream queue)",
                ));
            }
            return adopt(state, vhost, name, Some(shards));
        }
        let table = decode_table(&exchange.arguments);
        let partitions = match table.inner().get(PARTITIONS).map(int_value) {
            Some(Some(n)) if (2..=100_000).contains(&n) => n as i32,
            Some(_) => {
                return Err(refused(&format!(
                    "'{PARTITIONS}' must be an integer from 2 to 100000"
                )))
            }
            None => {
                return Err(refused(&format!(
                    "declare it with '{PARTITIONS}' (the partition count), or create Kafka topic '{name}' with several partitions"
                )))
            }
        };
        if crate::catalog::is_internal_topic(name) {
            return Err(refused("an internal Kafka topic"));
        }
        crate::catalog::validate_topic_name(name)
            .map_err(|e| refused(&format!("cannot be a Kafka topic: {e}")))?;
        let mut stream_args = FieldTable::default();
        for (k, v) in table.inner() {
            if k.as_str() != SUPER_STREAM && k.as_str() != PARTITIONS {
                stream_args.insert(k.clone(), v.clone());
            }
        }
        let configs = super::args::topic_configs(name, vhost, &stream_args)?;
        let create = Change::CreateTopic(crate::catalog::Topic {
            name: name.to_owned(),
            id: crate::catalog::new_topic_id(name),
            partitions,
            configs,
        });
        let mut after = state.clone();
        after.apply(&create);
        let mut out = vec![create];
        out.extend(adopt(&after, vhost, name, Some(shards))?);
        Ok(out)
    })())
}

/// The AMQP changes that follow a topic's growth to more partitions, when AMQP already
/// shows it as a super stream (its exchange exists): the new partition queues and their
/// bindings. Applied by `CatalogState::apply` with `Change::SetPartitions`.
pub fn grow(state: &CatalogState, topic: &str) -> Vec<TopologyChange> {
    let vhost = super::queue::VHOST;
    let shown = state
        .amqp
        .get(vhost)
        .and_then(|v| v.exchanges.get(topic))
        .is_some_and(|e| is_super_exchange(&e.arguments));
    if !shown {
        return Vec::new();
    }
    adopt(state, vhost, topic, None)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| match c {
            Change::Amqp(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// The AMQP changes that follow deleting topic `topic`: its partition queues and its
/// super stream exchange go with it.
pub fn deleted(state: &CatalogState, topic: &str) -> Vec<TopologyChange> {
    let vhost = super::queue::VHOST;
    let Some(v) = state.amqp.get(vhost) else {
        return Vec::new();
    };
    let queues: Vec<(String, u64)> = v
        .queues
        .values()
        .filter(|q| partition_of_queue(q).is_some_and(|(t, _)| t == topic))
        .map(|q| (q.name.clone(), q.id))
        .collect();
    let mut out = Vec::new();
    if !queues.is_empty() {
        out.push(TopologyChange::DeleteQueues {
            vhost: vhost.to_owned(),
            queues,
        });
    }
    if v.exchanges
        .get(topic)
        .is_some_and(|e| is_super_exchange(&e.arguments))
    {
        out.push(TopologyChange::DeleteExchange {
            vhost: vhost.to_owned(),
            name: topic.to_owned(),
            if_unused: false,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Topic;

    fn state_with(topics: &[(&str, i32)]) -> CatalogState {
        let mut s = CatalogState::default();
        for (name, partitions) in topics {
            s.apply(&Change::CreateTopic(Topic {
                name: (*name).into(),
                id: crate::catalog::new_topic_id(name),
                partitions: *partitions,
                configs: Default::default(),
            }));
        }
        s
    }

    #[test]
    fn adopt_grow_delete() {
        let mut s = state_with(&[("orders", 3), ("one", 1)]);
        assert!(adopt(&s, "/", "one", Some(2)).unwrap().is_empty());
        assert!(adopt(&s, "v", "orders", Some(2)).unwrap().is_empty());
        let cs = adopt(&s, "/", "orders", Some(2)).unwrap();
        assert_eq!(cs.len(), 7);
        for c in &cs {
            s.apply(c);
        }
        assert!(adopt(&s, "/", "orders", Some(2)).unwrap().is_empty());
        assert_eq!(locate(&s, "/", "orders-2"), ("orders".into(), 2));
        assert_eq!(locate(&s, "/", "one"), ("one".into(), 0));
        assert_eq!(member_by_name(&s, "orders-2"), Some(("orders".into(), 2)));
        assert_eq!(member_by_name(&s, "orders-3"), None);
        assert_eq!(member_by_name(&s, "orders-02"), None);
        let v = &s.amqp["/"];
        assert!(is_super_exchange(&v.exchanges["orders"].arguments));
        assert_eq!(v.bindings.len(), 3);
        s.apply(&Change::SetPartitions("orders".into(), 5));
        assert_eq!(locate(&s, "/", "orders-4"), ("orders".into(), 4));
        assert_eq!(s.amqp["/"].bindings.len(), 5);
        let mut d = Exchange {
            name: "orders".into(),
            kind: ExchangeKind::Direct,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: s.amqp["/"].exchanges["orders"].arguments.clone(),
            alternate: None,
        };
        assert!(declare(&s, "/", &d, 2).unwrap().unwrap().is_empty());
        d.name = "new".into();
        assert!(declare(&s, "/", &d, 2)
            .unwrap()
            .unwrap_err()
            .contains(PARTITIONS));
        let mut args = FieldTable::default();
        args.insert(SUPER_STREAM.into(), AMQPValue::Boolean(true));
        args.insert(PARTITIONS.into(), AMQPValue::LongInt(2));
        d.arguments = encode_table(&args);
        let cs = declare(&s, "/", &d, 2).unwrap().unwrap();
        assert!(matches!(&cs[0], Change::CreateTopic(t) if t.partitions == 2));
        assert_eq!(cs.len(), 6);
        d.arguments = encode_table(&FieldTable::default());
        assert!(declare(&s, "/", &d, 2).is_none());
        s.apply(&Change::DeleteTopic("orders".into()));
        let v = &s.amqp["/"];
        assert!(v.queues.is_empty() && v.bindings.is_empty() && v.exchanges.is_empty());
    }

    #[test]
    fn each_partition_queue_is_owned_by_its_partitions_shard() {
        let s = state_with(&[("orders", 5)]);
        for shards in [1, 2, 3, 8] {
            let mut owners = Vec::new();
            for c in adopt(&s, "/", "orders", Some(shards)).unwrap() {
                if let Change::Amqp(TopologyChange::DeclareQueue { queue, .. }) = c {
                    let (topic, k) = partition_of_queue(&queue).unwrap();
                    let owner = crate::amqp::placement::queue_owner(queue.id, shards);
                    assert_eq!(owner, crate::util::partition_owner(&topic, k, shards));
                    owners.push(owner);
                }
            }
            assert_eq!(owners.len(), 5);
        }
    }

    #[test]
    fn a_topic_named_like_a_partition_wins() {
        let s = state_with(&[("clash", 2), ("clash-1", 1)]);
        let e = adopt(&s, "/", "clash", Some(2)).unwrap_err();
        assert!(e.contains("'clash-1'"), "{e}");
        assert_eq!(locate(&s, "/", "clash-1"), ("clash-1".into(), 0));
        assert_eq!(member_by_name(&s, "clash-1"), None);
    }
}

//! Declaring a stream queue, and finding a Kafka topic as one.
//!
//! A stream queue `orders` (vhost `/` only: a topic has no vhost) is the Kafka topic
//! `orders` with one partition. Declaring it creates the topic through the catalog with
//! the arguments as topic configs (`stream::args`), or binds to the topic Kafka already
//! made; a passive declare, a consume or any other queue method naming a topic that has
//! no queue yet finds it as a stream queue (`adopt`). A topic of more than one partition
//! is a super stream (`superstream`): the queue of its name is refused (406), its
//! partition queues `NAME-k` are found instead.
//!
//! A stream queue is owned by the shard that owns its partition (`id`), whatever the
//! declare's `x-queue-leader-locator` says: its readers fetch from the partition's log,
//! and a reader on another shard paid a cross-shard round trip (a wake-up of both
//! shards) per fetch. A queue declared before this rule, or a broker restarted with
//! another shard count, keeps its id and so its owner: its readers then fetch across.
//!
//! Runs on the connection's shard; catalog changes go through shard 0's writer.

use amq_protocol::types::{AMQPValue, FieldTable};

use super::queue::VHOST;
use crate::amqp::{reply, AmqpError};
use crate::catalog::amqp::tables::encode_table;
use crate::catalog::amqp::{arguments::QueueArgs, Queue};
use crate::catalog::{CatalogState, Change, Topic};

/// The incarnation id of the stream queue `name` reading partition `partition` of topic
/// `topic`: owned (`amqp::placement::queue_owner`) by the partition's owner shard.
pub fn id(name: &str, topic: &str, partition: i32, shards: usize) -> u64 {
    let owner = crate::util::partition_owner(topic, partition, shards);
    crate::amqp::placement::queue_id(owner, shards, crate::catalog::new_topic_id(name))
}

/// The shard that will own the stream queue `name` once AMQP finds it (`adoptable`, or a
/// super stream's partition queue, `superstream::member_by_name`): its partition's owner of
/// `shards`. None when `name` is no Kafka topic (or partition of one) AMQP shows in `vhost`.
pub fn adopted_owner(
    state: &CatalogState,
    vhost: &str,
    name: &str,
    shards: usize,
) -> Option<usize> {
    if vhost != VHOST || crate::catalog::is_internal_topic(name) {
        return None;
    }
    let (topic, k) = match state.topic(name) {
        Some(t) if t.partitions == 1 => (name.to_owned(), 0),
        Some(_) => return None,
        None => super::superstream::member_by_name(state, name)?,
    };
    Some(crate::util::partition_owner(&topic, k, shards))
}

fn refused(text: String) -> AmqpError {
    AmqpError::channel(reply::PRECONDITION_FAILED, text)
}

fn partitions_refused(name: &str, partitions: i32) -> AmqpError {
    refused(format!(
        "PRECONDITION_FAILED - Kafka topic '{name}' has {partitions} partitions: it is super stream '{name}' (exchange '{name}', partition queues '{name}-0' to '{name}-{}')",
        partitions - 1
    ))
}

/// The change that creates the topic of stream `name` (None when the topic exists), or
/// the 406 a stream declare gets.
pub fn topic_change(
    state: &CatalogState,
    vhost: &str,
    name: &str,
    arguments: &FieldTable,
) -> Result<Option<Change>, AmqpError> {
    if vhost != VHOST {
        return Err(refused(format!(
            "PRECONDITION_FAILED - stream queues live in vhost '{VHOST}' only (a stream queue is the Kafka topic of its name): cannot declare stream '{name}' in vhost '{vhost}'"
        )));
    }
    let configs = super::args::topic_configs(name, vhost, arguments).map_err(refused)?;
    if let Some(t) = state.topic(name) {
        if t.partitions != 1 {
            return Err(partitions_refused(name, t.partitions));
        }
        return Ok(None);
    }
    // A classic or quorum queue of that name: the declare itself is refused (406).
    let existing = state.amqp.get(vhost).and_then(|t| t.queues.get(name));
    if existing.is_some_and(|q| !q.is_stream()) {
        return Ok(None);
    }
    if crate::catalog::is_internal_topic(name) {
        return Err(refused(format!(
            "PRECONDITION_FAILED - '{name}' is an internal Kafka topic"
        )));
    }
    crate::catalog::validate_topic_name(name).map_err(|e| {
        refused(format!(
            "PRECONDITION_FAILED - stream '{name}' cannot be a Kafka topic: {e}"
        ))
    })?;
    Ok(Some(Change::CreateTopic(Topic {
        name: name.to_owned(),
        id: crate::catalog::new_topic_id(name),
        partitions: 1,
        configs,
    })))
}

/// The queue a Kafka topic `name` becomes when AMQP names it first: durable, with
/// `x-queue-type: stream`. `None` when there is no such topic (or not in vhost `/`); 406
/// for a topic of several partitions. `id` is the queue's incarnation id (its placement,
/// `amqp::placement`).
pub fn adoptable(
    state: &CatalogState,
    vhost: &str,
    name: &str,
    id: u64,
) -> Result<Option<Queue>, AmqpError> {
    if vhost != VHOST || crate::catalog::is_internal_topic(name) {
        return Ok(None);
    }
    let Some(t) = state.topic(name) else {
        return Ok(None);
    };
    if t.partitions != 1 {
        return Err(partitions_refused(name, t.partitions));
    }
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    Ok(Some(Queue {
        name: name.to_owned(),
        id,
        durable: true,
        exclusive_owner: None,
        auto_delete: false,
        arguments: encode_table(&args),
        args: QueueArgs::default(),
    }))
}

#[cfg(test)]
mod tests {
    use crate::catalog::{CatalogState, Change, Topic};

    #[test]
    fn a_stream_queue_is_owned_by_its_partitions_shard() {
        for shards in [1, 2, 3, 7] {
            for (name, topic, k) in [("orders", "orders", 0), ("events-3", "events", 3)] {
                let id = super::id(name, topic, k, shards);
                let owner = crate::amqp::placement::queue_owner(id, shards);
                assert_eq!(owner, crate::util::partition_owner(topic, k, shards));
                // A new incarnation each time, as any queue's.
                assert_ne!(id, super::id(name, topic, k, shards));
            }
        }
    }

    #[test]
    fn a_topic_not_yet_shown_over_amqp_names_its_future_owner() {
        let mut s = CatalogState::default();
        for (name, partitions) in [("events", 1), ("orders", 3)] {
            s.apply(&Change::CreateTopic(Topic {
                name: name.into(),
                id: crate::catalog::new_topic_id(name),
                partitions,
                configs: Default::default(),
            }));
        }
        let owner = |vhost, name| super::adopted_owner(&s, vhost, name, 2);
        assert_eq!(
            owner("/", "events"),
            Some(crate::util::partition_owner("events", 0, 2))
        );
        assert_eq!(
            owner("/", "orders-2"),
            Some(crate::util::partition_owner("orders", 2, 2))
        );
        // A super stream's own name, a partition past its count, another vhost, no topic.
        for (vhost, name) in [
            ("/", "orders"),
            ("/", "orders-3"),
            ("v", "events"),
            ("/", "x"),
        ] {
            assert_eq!(owner(vhost, name), None, "{vhost} {name}");
        }
    }
}

//! The topic/partition fan-out: a request's partitions grouped by owner shard, one
//! envelope per owner (never one per partition), sent concurrently, and the answers put
//! back in request order.
//!
//! Runs on the connection's shard; `Shard::kafka` is where the work crosses to the owner.

use std::rc::Rc;

use crate::broker::Shard;
use kafka_protocol::ResponseError;

use crate::kafka::owner::{PartitionInfo, Reply, Request};

/// One partition item of a request: (index in the request, topic, partition, payload).
pub type Item<T> = (usize, String, i32, T);

/// Groups items by owner shard, keeping each item's index in the request.
pub fn by_owner<T>(shard: &Shard, items: Vec<Item<T>>) -> Vec<(usize, Vec<Item<T>>)> {
    let mut groups: Vec<(usize, Vec<Item<T>>)> = Vec::new();
    for item in items {
        let owner = shard.owner_of(&item.1, item.2);
        match groups.iter_mut().find(|(o, _)| *o == owner) {
            Some((_, g)) => g.push(item),
            None => groups.push((owner, vec![item])),
        }
    }
    groups
}

/// Sends every owner shard its share of `items` as one request (`request`, given the
/// owner's (topic, partition, payload) triples in request order), concurrently. Gives each
/// owner's reply with the request indices of its items, in the same order.
pub async fn ask_each_owner<T>(
    shard: &Rc<Shard>,
    items: Vec<Item<T>>,
    request: impl Fn(Vec<(String, i32, T)>) -> Request,
) -> Vec<(Vec<usize>, Reply)> {
    let calls = by_owner(shard, items).into_iter().map(|(owner, group)| {
        let (idx, parts): (Vec<usize>, Vec<(String, i32, T)>) =
            group.into_iter().map(|(i, t, p, x)| (i, (t, p, x))).unzip();
        let req = request(parts);
        let shard = shard.clone();
        async move { (idx, shard.kafka(owner, req).await) }
    });
    futures::future::join_all(calls).await
}

/// `ask_each_owner`, with each answer (`answers` picks them from a reply) placed at its
/// item's index; items whose owner gave no usable answer keep `default`.
pub async fn ask_owners<T, R: Clone>(
    shard: &Rc<Shard>,
    items: Vec<Item<T>>,
    default: R,
    request: impl Fn(Vec<(String, i32, T)>) -> Request,
    answers: impl Fn(Reply) -> Option<Vec<R>>,
) -> Vec<R> {
    let mut out = vec![default; items.len()];
    for (idx, reply) in ask_each_owner(shard, items, request).await {
        if let Some(rs) = answers(reply) {
            for (i, r) in idx.into_iter().zip(rs) {
                out[i] = r;
            }
        }
    }
    out
}

/// A request's partitions as items numbered in request order: `topics` gives each topic's
/// name and its partitions, each with its payload.
pub fn items<T, P: IntoIterator<Item = (i32, T)>>(
    topics: impl IntoIterator<Item = (String, P)>,
) -> Vec<Item<T>> {
    let mut items = Vec::new();
    for (topic, partitions) in topics {
        for (partition, payload) in partitions {
            items.push((items.len(), topic.clone(), partition, payload));
        }
    }
    items
}

/// What each item's owner knows of its partition (`Request::Describe`), in request order;
/// UNKNOWN_TOPIC_OR_PARTITION for a partition no owner described.
pub async fn describe(shard: &Rc<Shard>, items: Vec<Item<()>>) -> Vec<PartitionInfo> {
    let missing = PartitionInfo {
        error: ResponseError::UnknownTopicOrPartition.code(),
        ..Default::default()
    };
    ask_owners(
        shard,
        items,
        missing,
        |parts| Request::Describe {
            parts: Some(parts.into_iter().map(|(t, p, _)| (t, p)).collect()),
        },
        |reply| match reply {
            Reply::Describe(infos) => Some(infos),
            _ => None,
        },
    )
    .await
}

//! The internal topic `__consumer_offsets`, laid out as Kafka lays it out, so lag monitors
//! (Burrow, older tooling) that read committed offsets and group metadata from it work.
//!
//! The group coordinator's offset store (`kafka::groups::store`) stays the source of truth:
//! OffsetFetch, rebalances and restarts read it, never this topic. The topic is a *view*:
//! every change the coordinator applies (a commit, an OffsetDelete, a group deletion, a
//! completed rebalance) is queued on the coordinator (`Coordinator::take_topic_records`)
//! and appended here **after** the change has been made durable in the store and answered.
//! One writer task per shard (`run`, started by `start` at the end of startup) drains that
//! queue in order, encodes the records with Kafka's schemas (below), and appends them
//! through the owner shard of each `__consumer_offsets` partition (`Shard::kafka_dispatch`,
//! the one line where the work crosses shards), as a real partition log of the storage
//! engine: Fetch, ListOffsets, compaction (`cleanup.policy=compact`) and restarts work as
//! for any topic. The append is acks=1 (no fdatasync wait). A crash between the answer and
//! the append, or an append the owner refuses (disk full: logged), loses that view record
//! only; the next commit of the partition writes it again. Until the topic exists in the
//! catalog (shard 0 creates it at startup) the records wait in the queue.
//!
//! Layout (Kafka's `GroupMetadataManager`): a group's records go to partition
//! `partition_for(group, partitions)`. Keys and values start with an int16 schema version;
//! strings are int16 length + UTF-8, bytes int32 length + data, all big-endian.
//! - offset commit: key v1 `OffsetCommitKey` (group, topic, partition int32); value v3
//!   `OffsetCommitValue` (offset int64, leader epoch int32, metadata, commit timestamp
//!   int64); a deleted offset is a tombstone (null value).
//! - group metadata: key v2 `GroupMetadataKey` (group); value v3 `GroupMetadataValue`
//!   (protocol type, generation int32, protocol (nullable), leader (nullable), current
//!   state timestamp int64, members: int32 count, then per member id, group instance id
//!   (nullable), client id, client host, rebalance timeout int32, session timeout int32,
//!   subscription bytes, assignment bytes); a deleted group is a tombstone.
//!
//! Old data dirs: the first start with this feature writes every committed offset of the
//! shard's groups once, then leaves `groups/offsets-topic.written` so it is not repeated.
//!
//! Clients may read the topic (READ/DESCRIBE on it, as in Kafka) but not produce to it
//! (INVALID_TOPIC_EXCEPTION, `kafka::handlers::produce`), delete it or add partitions.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::join_all;

use super::groups::group::Group;
use super::groups::store::Committed;
use super::owner::{ProducePart, Reply, Request};
use crate::broker::Shard;
use crate::catalog::{new_topic_id, Change, Topic};
use crate::storage::batch::{encode_plain_batch, PlainRecord};

/// The topic's name.
pub const TOPIC: &str = crate::catalog::CONSUMER_OFFSETS;

/// Whether `topic` is one of Kafka's internal topics (not writable by clients).
pub fn is_internal(topic: &str) -> bool {
    crate::catalog::is_internal_topic(topic)
}

/// Java's `String.hashCode` over UTF-16 code units, as Kafka computes it for a group id.
pub fn java_string_hashcode(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32))
}

/// Kafka's `GroupMetadataManager.partitionFor`: `Utils.abs(hashCode) % partitions`, where
/// `Utils.abs` masks the sign bit (so `Integer.MIN_VALUE` maps to 0, not to itself).
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    (java_string_hashcode(group) & 0x7fff_ffff) % partitions.max(1)
}

/// One change of the view.
#[derive(Debug, Clone, PartialEq)]
pub enum TopicRecord {
    /// `None`: the offset was deleted (a tombstone).
    Offset {
        group: String,
        topic: String,
        partition: i32,
        value: Option<Committed>,
    },
    /// `None`: the group was deleted (a tombstone).
    Group {
        group: String,
        value: Option<GroupSnapshot>,
    },
}

impl TopicRecord {
    fn group(&self) -> &str {
        match self {
            TopicRecord::Offset { group, .. } | TopicRecord::Group { group, .. } => group,
        }
    }
}

/// A group as `GroupMetadataValue` records it after a rebalance.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSnapshot {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_ms: i64,
    pub members: Vec<MemberSnapshot>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemberSnapshot {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

impl GroupSnapshot {
    pub fn of(g: &Group, now_ms: i64) -> GroupSnapshot {
        let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
        GroupSnapshot {
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            generation: g.generation,
            protocol: g.protocol.clone(),
            leader: g.leader.clone(),
            state_ms: now_ms,
            members: g
                .members
                .values()
                .map(|m| MemberSnapshot {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: ms(m.rebalance_timeout),
                    session_timeout_ms: ms(m.session_timeout),
                    subscription: g.member_metadata(m),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }
}

fn put_str(buf: &mut BytesMut, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(i16::MAX as usize);
    buf.put_i16(n as i16);
    buf.put_slice(&b[..n]);
}

fn put_nullable_str(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(buf, s),
        None => buf.put_i16(-1),
    }
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_i32(b.len() as i32);
    buf.put_slice(b);
}

/// The record's key and value (None for a tombstone), in Kafka's schemas.
pub fn encode(record: &TopicRecord) -> (Bytes, Option<Bytes>) {
    let mut key = BytesMut::new();
    match record {
        TopicRecord::Offset {
            group,
            topic,
            partition,
            value,
        } => {
            key.put_i16(1);
            put_str(&mut key, group);
            put_str(&mut key, topic);
            key.put_i32(*partition);
            let value = value.as_ref().map(|c| {
                let mut v = BytesMut::new();
                v.put_i16(3);
                v.put_i64(c.offset);
                v.put_i32(c.leader_epoch);
                put_str(&mut v, &c.metadata);
                v.put_i64(c.commit_ms);
                v.freeze()
            });
            (key.freeze(), value)
        }
        TopicRecord::Group { group, value } => {
            key.put_i16(2);
            put_str(&mut key, group);
            let value = value.as_ref().map(|g| {
                let mut v = BytesMut::new();
                v.put_i16(3);
                put_str(&mut v, &g.protocol_type);
                v.put_i32(g.generation);
                put_nullable_str(&mut v, g.protocol.as_deref());
                put_nullable_str(&mut v, g.leader.as_deref());
                v.put_i64(g.state_ms);
                v.put_i32(g.members.len() as i32);
                for m in &g.members {
                    put_str(&mut v, &m.id);
                    put_nullable_str(&mut v, m.instance_id.as_deref());
                    put_str(&mut v, &m.client_id);
                    put_str(&mut v, &m.client_host);
                    v.put_i32(m.rebalance_timeout_ms);
                    v.put_i32(m.session_timeout_ms);
                    put_bytes(&mut v, &m.subscription);
                    put_bytes(&mut v, &m.assignment);
                }
                v.freeze()
            });
            (key.freeze(), value)
        }
    }
}

/// The topic as it is created: `offsets.topic.num.partitions` partitions, compacted.
fn topic(partitions: i32) -> Topic {
    let mut configs = BTreeMap::new();
    configs.insert("cleanup.policy".to_owned(), "compact".to_owned());
    Topic {
        name: TOPIC.to_owned(),
        id: new_topic_id(TOPIC),
        partitions,
        configs,
    }
}

/// End of startup, on every shard: shard 0 creates the topic if the catalog lacks it (so
/// it is listed before the first client connects); every shard starts its writer task.
pub async fn start(shard: &Rc<Shard>) {
    if shard.id == 0 && shard.catalog.current().topic(TOPIC).is_none() {
        let partitions = shard.config.kafka.offsets_topic_num_partitions;
        for r in shard
            .change_catalog(vec![Change::CreateTopic(topic(partitions))], false)
            .await
        {
            if let Err(e) = r {
                log::warn!("creating {TOPIC}: {e}");
            }
        }
    }
    glommio::spawn_local(run(shard.clone())).detach();
}

/// This shard's writer: appends the coordinator's queued records in order, for ever.
async fn run(shard: Rc<Shard>) {
    let marker = shard
        .config
        .data_dir
        .join(shard.id.to_string())
        .join("groups")
        .join("offsets-topic.written");
    let mut backfill_pending = !marker.exists();
    if backfill_pending {
        shard.groups.queue_backfill();
    }
    loop {
        let records = shard.groups.take_topic_records().await;
        let Some(partitions) = shard.catalog.current().topic(TOPIC).map(|t| t.partitions) else {
            // Not created (yet, or refused): keep the records for the next round.
            shard.groups.requeue_topic_records(records);
            glommio::timer::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if append(&shard, partitions, records).await && backfill_pending {
            if let Err(e) = std::fs::write(&marker, b"") {
                log::warn!("{}: {e}", marker.display());
            }
            backfill_pending = false;
        }
    }
}

/// Appends `records` (one batch per partition, one request per owner shard); true when
/// every partition took its batch.
async fn append(shard: &Rc<Shard>, partitions: i32, records: Vec<TopicRecord>) -> bool {
    let now = crate::storage::log::now_ms();
    let mut by_partition: BTreeMap<i32, Vec<PlainRecord>> = BTreeMap::new();
    for r in &records {
        let (key, value) = encode(r);
        let timestamp = match r {
            TopicRecord::Offset { value: Some(c), .. } => c.commit_ms,
            _ => now,
        };
        by_partition
            .entry(partition_for(r.group(), partitions))
            .or_default()
            .push(PlainRecord {
                timestamp,
                key: Some(key),
                value,
                headers: Default::default(),
            });
    }
    let mut by_owner: HashMap<usize, Vec<ProducePart>> = HashMap::new();
    for (partition, recs) in by_partition {
        let batch = match encode_plain_batch(
            recs.into_iter(),
            kafka_protocol::records::Compression::None,
        ) {
            Ok(b) => b,
            Err(e) => {
                log::warn!("encoding {TOPIC}-{partition}: {e}");
                return false;
            }
        };
        by_owner
            .entry(shard.owner_of(TOPIC, partition))
            .or_default()
            .push(ProducePart {
                topic: TOPIC.to_owned(),
                partition,
                records: Some(batch),
            });
    }
    let mut pending = Vec::new();
    for (owner, parts) in by_owner {
        // The cross-shard hop: the owner appends now, in the order of these calls.
        pending.push(
            shard
                .kafka_dispatch(owner, Request::Produce { acks: 1, parts })
                .await,
        );
    }
    let mut ok = true;
    for reply in join_all(pending).await {
        match reply {
            Reply::Produce(results) => {
                for r in results.iter().filter(|r| r.error != 0) {
                    ok = false;
                    log::warn!(
                        "appending to {TOPIC}: error {} {}",
                        r.error,
                        r.message.as_deref().unwrap_or("")
                    );
                }
            }
            _ => {
                ok = false;
                log::warn!("appending to {TOPIC}: owner shard unavailable");
            }
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashcode_matches_java() {
        // Values of "".hashCode(), "a".hashCode(), "hello".hashCode() in Java.
        assert_eq!(java_string_hashcode(""), 0);
        assert_eq!(java_string_hashcode("a"), 97);
        assert_eq!(java_string_hashcode("hello"), 99_162_322);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE: Utils.abs gives 0.
        assert_eq!(java_string_hashcode("polygenelubricants"), i32::MIN);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        // Negative hash codes are masked, not negated: "zzzzzzzz".hashCode() < 0.
        let h = java_string_hashcode("zzzzzzzz");
        assert!(h < 0);
        assert_eq!(partition_for("zzzzzzzz", 50), (h & 0x7fff_ffff) % 50);
    }

    #[test]
    fn offset_commit_schema() {
        let (key, value) = encode(&TopicRecord::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 7,
            value: Some(Committed {
                offset: 42,
                leader_epoch: -1,
                metadata: "m".into(),
                commit_ms: 1000,
            }),
        });
        assert_eq!(&key[..], &[0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 7]);
        let mut want = vec![0, 3];
        want.extend_from_slice(&42i64.to_be_bytes());
        want.extend_from_slice(&(-1i32).to_be_bytes());
        want.extend_from_slice(&[0, 1, b'm']);
        want.extend_from_slice(&1000i64.to_be_bytes());
        assert_eq!(value.as_deref(), Some(&want[..]));
    }

    #[test]
    fn group_tombstone_has_key_v2_and_no_value() {
        let (key, value) = encode(&TopicRecord::Group {
            group: "g".into(),
            value: None,
        });
        assert_eq!(&key[..], &[0, 2, 0, 1, b'g']);
        assert!(value.is_none());
    }
}

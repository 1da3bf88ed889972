//! Request and response versions older than kafka-protocol's codecs: the versions Kafka
//! 0.11–3.x accepted and Kafka 4 removed (KIP-896), which old clients still send (sarama
//! 1.22's OffsetCommit v1, kafka-go 0.2's CreateTopics v0, Burrow's ListOffsets v0).
//!
//! An old request is decoded into the request type of the oldest version kafka-protocol
//! knows, so handlers serve one shape; the response is encoded from that version's response
//! type, dropping what the old version does not carry. Where an old version's wire format
//! equals a newer one's, this only names the newer version (`request_as`, `response_as`).
//!
//! Every count and length is checked against the bytes left before anything is allocated;
//! any input gives a `CodecError`, never a panic. Pure functions, run on the connection's
//! shard and by the fuzz target, through `codec`.

mod acls;

use std::any::Any;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::list_offsets_response::ListOffsetsPartitionResponse;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsResponse,
    DescribeLogDirsResponse, GroupId, ListOffsetsRequest, ListOffsetsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::messages::{
    DescribeConfigsRequest, DescribeConfigsResponse, FetchRequest, FetchResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ProduceRequest, ProduceResponse,
};

use super::codec::CodecError;
use super::message_set;
use crate::storage::inflate::MAX_INFLATED_BYTES;

/// The oldest version of each API that this module serves: below kafka-protocol's codecs,
/// down to what Kafka 0.11 accepted (and Metadata v0, which kafka-protocol decodes).
pub fn oldest(api: ApiKey) -> Option<i16> {
    match api {
        ApiKey::OffsetCommit
        | ApiKey::OffsetFetch
        | ApiKey::ListOffsets
        | ApiKey::CreateTopics
        | ApiKey::DeleteTopics
        | ApiKey::DescribeLogDirs
        | ApiKey::Produce
        | ApiKey::Fetch
        | ApiKey::DescribeConfigs
        | ApiKey::OffsetForLeaderEpoch
        | ApiKey::CreateAcls
        | ApiKey::DescribeAcls
        | ApiKey::DeleteAcls => Some(0),
        _ => None,
    }
}

/// A version whose request has the same wire format as a newer one kafka-protocol decodes.
pub fn request_as(api: ApiKey, version: i16) -> Option<i16> {
    match (api, version) {
        // OffsetFetch v0 read ZooKeeper offsets in old Kafka; its format is v1's, and this
        // broker has one store.
        (ApiKey::OffsetFetch, 0) => Some(1),
        (ApiKey::CreateTopics, 1) => Some(2),
        (ApiKey::DeleteTopics, 0) => Some(1),
        (ApiKey::DescribeLogDirs, 0) => Some(1),
        _ => None,
    }
}

/// A version whose response has the same wire format as a newer one kafka-protocol
/// encodes, for the response type of `response`.
pub fn response_as(response: &dyn Any, version: i16) -> Option<i16> {
    let is = |t: bool, upto: i16, newer: i16| (t && version <= upto).then_some(newer);
    is(response.is::<OffsetCommitResponse>(), 1, 2)
        .or_else(|| is(response.is::<OffsetFetchResponse>(), 0, 1))
        .or_else(|| is(response.is::<DescribeLogDirsResponse>(), 0, 1))
        .or_else(|| is(response.is::<CreateAclsResponse>(), 0, 1))
        .or_else(|| (response.is::<ProduceResponse>() && version == 2).then_some(3))
}

/// Decodes an old-version request body that has no newer twin (`request_as`). `None` when
/// this module does not serve `api` at `version`.
pub fn decode_request(
    api: ApiKey,
    body: Bytes,
    version: i16,
) -> Option<Result<OldRequest, CodecError>> {
    let mut r = Reader {
        buf: body,
        what: "request",
    };
    let decoded = match (api, version) {
        (ApiKey::OffsetCommit, 0 | 1) => {
            offset_commit(&mut r, version).map(OldRequest::OffsetCommit)
        }
        (ApiKey::ListOffsets, 0) => list_offsets_v0(&mut r).map(OldRequest::ListOffsets),
        (ApiKey::CreateTopics, 0) => create_topics_v0(&mut r).map(OldRequest::CreateTopics),
        (ApiKey::Produce, 0..=2) => produce_v0_2(&mut r).map(OldRequest::Produce),
        (ApiKey::Fetch, 0..=3) => fetch_v0_3(&mut r, version).map(OldRequest::Fetch),
        (ApiKey::DescribeConfigs, 0) => {
            describe_configs_v0(&mut r).map(OldRequest::DescribeConfigs)
        }
        (ApiKey::OffsetForLeaderEpoch, 0 | 1) => {
            offset_for_leader_epoch_v0_1(&mut r).map(OldRequest::OffsetForLeaderEpoch)
        }
        (ApiKey::CreateAcls, 0) => acls::create_acls_v0(&mut r).map(OldRequest::CreateAcls),
        (ApiKey::DescribeAcls, 0) => acls::describe_acls_v0(&mut r).map(OldRequest::DescribeAcls),
        (ApiKey::DeleteAcls, 0) => acls::delete_acls_v0(&mut r).map(OldRequest::DeleteAcls),
        _ => return None,
    };
    Some(decoded)
}

/// An old request decoded into its newer type (the codec wraps it in `codec::Request`).
pub enum OldRequest {
    OffsetCommit(OffsetCommitRequest),
    ListOffsets(ListOffsetsRequest),
    CreateTopics(CreateTopicsRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    DescribeConfigs(DescribeConfigsRequest),
    OffsetForLeaderEpoch(OffsetForLeaderEpochRequest),
    CreateAcls(CreateAclsRequest),
    DescribeAcls(DescribeAclsRequest),
    DeleteAcls(DeleteAclsRequest),
}

/// Encodes `response` at an old `version` that has no newer twin (`response_as`). `None`
/// when this module does not encode that response type at that version.
pub fn encode_response(
    response: &dyn Any,
    version: i16,
    buf: &mut BytesMut,
) -> Option<Result<(), CodecError>> {
    if let Some(r) = response.downcast_ref::<ListOffsetsResponse>() {
        return (version == 0).then(|| list_offsets_response_v0(r, buf));
    }
    if let Some(r) = response.downcast_ref::<CreateTopicsResponse>() {
        return (version <= 1).then(|| create_topics_response_v0_1(r, version, buf));
    }
    if let Some(r) = response.downcast_ref::<DeleteTopicsResponse>() {
        return (version == 0).then(|| delete_topics_response_v0(r, buf));
    }
    if let Some(r) = response.downcast_ref::<ProduceResponse>() {
        return (version <= 1).then(|| produce_response_v0_1(r, version, buf));
    }
    if let Some(r) = response.downcast_ref::<DescribeConfigsResponse>() {
        return (version == 0).then(|| describe_configs_response_v0(r, buf));
    }
    if let Some(r) = response.downcast_ref::<OffsetForLeaderEpochResponse>() {
        return (version <= 1).then(|| offset_for_leader_epoch_response_v0_1(r, version, buf));
    }
    if let Some(r) = response.downcast_ref::<FetchResponse>() {
        return (version <= 3).then(|| fetch_response_v0_3(r, version, buf));
    }
    if let Some(r) = response.downcast_ref::<DescribeAclsResponse>() {
        return (version == 0).then(|| acls::describe_acls_response_v0(r, buf));
    }
    if let Some(r) = response.downcast_ref::<DeleteAclsResponse>() {
        return (version == 0).then(|| acls::delete_acls_response_v0(r, buf));
    }
    None
}

/// Encodes an old-version request of one of the types `decode_request` produces (tests and
/// the fuzz corpus capture).
pub fn encode_request(
    request: &OldRequest,
    version: i16,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    match request {
        OldRequest::OffsetCommit(r) if version <= 1 => {
            put_str(buf, &r.group_id.0)?;
            if version == 1 {
                buf.put_i32(r.generation_id_or_member_epoch);
                put_str(buf, &r.member_id)?;
            }
            put_len(buf, r.topics.len())?;
            for t in &r.topics {
                put_str(buf, &t.name.0)?;
                put_len(buf, t.partitions.len())?;
                for p in &t.partitions {
                    buf.put_i32(p.partition_index);
                    buf.put_i64(p.committed_offset);
                    if version == 1 {
                        buf.put_i64(-1);
                    }
                    put_nullable_str(buf, p.committed_metadata.as_deref())?;
                }
            }
            Ok(())
        }
        OldRequest::ListOffsets(r) if version == 0 => {
            buf.put_i32(r.replica_id.0);
            put_len(buf, r.topics.len())?;
            for t in &r.topics {
                put_str(buf, &t.name.0)?;
                put_len(buf, t.partitions.len())?;
                for p in &t.partitions {
                    buf.put_i32(p.partition_index);
                    buf.put_i64(p.timestamp);
                    buf.put_i32(max_num_offsets(p).unwrap_or(1));
                }
            }
            Ok(())
        }
        OldRequest::CreateTopics(r) if version == 0 => {
            put_len(buf, r.topics.len())?;
            for t in &r.topics {
                put_str(buf, &t.name.0)?;
                buf.put_i32(t.num_partitions);
                buf.put_i16(t.replication_factor);
                put_len(buf, t.assignments.len())?;
                for a in &t.assignments {
                    buf.put_i32(a.partition_index);
                    put_len(buf, a.broker_ids.len())?;
                    for b in &a.broker_ids {
                        buf.put_i32(b.0);
                    }
                }
                put_len(buf, t.configs.len())?;
                for c in &t.configs {
                    put_str(buf, &c.name)?;
                    put_nullable_str(buf, c.value.as_deref())?;
                }
            }
            buf.put_i32(r.timeout_ms);
            Ok(())
        }
        OldRequest::Produce(r) if version <= 2 => {
            let magic = if version == 2 { 1 } else { 0 };
            let mut budget = MAX_INFLATED_BYTES;
            buf.put_i16(r.acks);
            buf.put_i32(r.timeout_ms);
            put_len(buf, r.topic_data.len())?;
            for t in &r.topic_data {
                put_str(buf, &t.name.0)?;
                put_len(buf, t.partition_data.len())?;
                for p in &t.partition_data {
                    buf.put_i32(p.index);
                    match &p.records {
                        None => buf.put_i32(-1),
                        Some(records) => {
                            let set = message_set::from_batches(records, magic, 0, &mut budget);
                            put_len(buf, set.len())?;
                            buf.put_slice(&set);
                        }
                    }
                }
            }
            Ok(())
        }
        OldRequest::Fetch(r) if version <= 3 => {
            buf.put_i32(r.replica_id.0);
            buf.put_i32(r.max_wait_ms);
            buf.put_i32(r.min_bytes);
            if version == 3 {
                buf.put_i32(r.max_bytes);
            }
            put_len(buf, r.topics.len())?;
            for t in &r.topics {
                put_str(buf, &t.topic.0)?;
                put_len(buf, t.partitions.len())?;
                for p in &t.partitions {
                    buf.put_i32(p.partition);
                    buf.put_i64(p.fetch_offset);
                    buf.put_i32(p.partition_max_bytes);
                }
            }
            Ok(())
        }
        OldRequest::DescribeConfigs(r) if version == 0 => {
            put_len(buf, r.resources.len())?;
            for res in &r.resources {
                buf.put_i8(res.resource_type);
                put_str(buf, &res.resource_name)?;
                match &res.configuration_keys {
                    None => buf.put_i32(-1),
                    Some(keys) => {
                        put_len(buf, keys.len())?;
                        for k in keys {
                            put_str(buf, k)?;
                        }
                    }
                }
            }
            Ok(())
        }
        OldRequest::OffsetForLeaderEpoch(r) if version <= 1 => {
            put_len(buf, r.topics.len())?;
            for t in &r.topics {
                put_str(buf, &t.topic.0)?;
                put_len(buf, t.partitions.len())?;
                for p in &t.partitions {
                    buf.put_i32(p.partition);
                    buf.put_i32(p.leader_epoch);
                }
            }
            Ok(())
        }
        OldRequest::CreateAcls(r) if version == 0 => acls::encode_create_acls_v0(r, buf),
        OldRequest::DescribeAcls(r) if version == 0 => acls::encode_describe_acls_v0(r, buf),
        OldRequest::DeleteAcls(r) if version == 0 => acls::encode_delete_acls_v0(r, buf),
        _ => Err(CodecError::Malformed(
            "legacy request",
            format!("no encoder at v{version}"),
        )),
    }
}

/// OffsetCommit v0 (group, topics) and v1 (with generation, member and a commit timestamp
/// per partition). Both commit to the one offset store, as v2 does; v1's timestamp only set
/// when an offset expired in old Kafka and is read and dropped. Retention is the broker's.
fn offset_commit(r: &mut Reader, version: i16) -> Result<OffsetCommitRequest, CodecError> {
    let group_id = GroupId(r.string()?);
    let (generation, member_id) = if version >= 1 {
        (r.i32()?, r.string()?)
    } else {
        (-1, StrBytes::default())
    };
    // Each topic takes at least a name length and a partition count.
    let topics = r.array(2 + 4, |r| {
        let name = TopicName(r.string()?);
        let min = if version >= 1 {
            4 + 8 + 8 + 2
        } else {
            4 + 8 + 2
        };
        let partitions = r.array(min, |r| {
            let partition_index = r.i32()?;
            let committed_offset = r.i64()?;
            if version >= 1 {
                let _commit_timestamp = r.i64()?;
            }
            let committed_metadata = r.nullable_string()?;
            Ok(OffsetCommitRequestPartition::default()
                .with_partition_index(partition_index)
                .with_committed_offset(committed_offset)
                .with_committed_leader_epoch(-1)
                .with_committed_metadata(committed_metadata))
        })?;
        Ok(OffsetCommitRequestTopic::default()
            .with_name(name)
            .with_partitions(partitions))
    })?;
    Ok(OffsetCommitRequest::default()
        .with_group_id(group_id)
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(member_id)
        .with_retention_time_ms(-1)
        .with_topics(topics))
}

/// ListOffsets v0's fields that the newer request and response types lack ride in their
/// unknown tagged fields, under tags no Kafka version defines (these types are never
/// written in a flexible version on their way between this module and the handler):
/// a request partition's `max_num_offsets` (i32) and an answer's `old_style_offsets`
/// (i64s).
const MAX_NUM_OFFSETS_TAG: i32 = 0x7fff_0000;
const OLD_STYLE_OFFSETS_TAG: i32 = 0x7fff_0001;

/// A ListOffsets v0 partition's `max_num_offsets`; `None` for newer versions.
pub fn max_num_offsets(p: &ListOffsetsPartition) -> Option<i32> {
    let b = p.unknown_tagged_fields.get(&MAX_NUM_OFFSETS_TAG)?;
    Some(i32::from_be_bytes(b.as_ref().try_into().ok()?))
}

/// A ListOffsets answer carrying v0's `old_style_offsets`.
pub fn with_old_style_offsets(
    r: ListOffsetsPartitionResponse,
    offsets: &[i64],
) -> ListOffsetsPartitionResponse {
    let mut b = BytesMut::with_capacity(offsets.len() * 8);
    offsets.iter().for_each(|o| b.put_i64(*o));
    let mut r = r;
    r.unknown_tagged_fields
        .insert(OLD_STYLE_OFFSETS_TAG, b.freeze());
    r
}

/// ListOffsets v0: like v1 with `max_num_offsets` per partition (kept for the handler,
/// `max_num_offsets`).
fn list_offsets_v0(r: &mut Reader) -> Result<ListOffsetsRequest, CodecError> {
    let replica_id = BrokerId(r.i32()?);
    let topics = r.array(2 + 4, |r| {
        let name = TopicName(r.string()?);
        let partitions = r.array(4 + 8 + 4, |r| {
            let partition_index = r.i32()?;
            let timestamp = r.i64()?;
            let max_num_offsets = r.i32()?;
            let mut p = ListOffsetsPartition::default()
                .with_partition_index(partition_index)
                .with_current_leader_epoch(-1)
                .with_timestamp(timestamp);
            p.unknown_tagged_fields.insert(
                MAX_NUM_OFFSETS_TAG,
                Bytes::copy_from_slice(&max_num_offsets.to_be_bytes()),
            );
            Ok(p)
        })?;
        Ok(ListOffsetsTopic::default()
            .with_name(name)
            .with_partitions(partitions))
    })?;
    Ok(ListOffsetsRequest::default()
        .with_replica_id(replica_id)
        .with_topics(topics))
}

/// ListOffsets v0's answer: `old_style_offsets` as the handler listed them
/// (`with_old_style_offsets`), else the one offset v1 would give, or none when there is
/// none (-1).
fn list_offsets_response_v0(r: &ListOffsetsResponse, buf: &mut BytesMut) -> Result<(), CodecError> {
    put_len(buf, r.topics.len())?;
    for t in &r.topics {
        put_str(buf, &t.name.0)?;
        put_len(buf, t.partitions.len())?;
        for p in &t.partitions {
            buf.put_i32(p.partition_index);
            buf.put_i16(p.error_code);
            match p.unknown_tagged_fields.get(&OLD_STYLE_OFFSETS_TAG) {
                Some(offsets) => {
                    put_len(buf, offsets.len() / 8)?;
                    buf.put_slice(&offsets[..offsets.len() / 8 * 8]);
                }
                None if p.error_code == 0 && p.offset >= 0 => {
                    buf.put_i32(1);
                    buf.put_i64(p.offset);
                }
                None => buf.put_i32(0),
            }
        }
    }
    Ok(())
}

/// CreateTopics v0: v1 without `validate_only`.
fn create_topics_v0(r: &mut Reader) -> Result<CreateTopicsRequest, CodecError> {
    let topics = r.array(2 + 4 + 2 + 4 + 4, |r| {
        let name = TopicName(r.string()?);
        let num_partitions = r.i32()?;
        let replication_factor = r.i16()?;
        let assignments = r.array(4 + 4, |r| {
            let partition_index = r.i32()?;
            let broker_ids = r.array(4, |r| Ok(BrokerId(r.i32()?)))?;
            Ok(CreatableReplicaAssignment::default()
                .with_partition_index(partition_index)
                .with_broker_ids(broker_ids))
        })?;
        let configs = r.array(2 + 2, |r| {
            let name = r.string()?;
            let value = r.nullable_string()?;
            Ok(CreatableTopicConfig::default()
                .with_name(name)
                .with_value(value))
        })?;
        Ok(CreatableTopic::default()
            .with_name(name)
            .with_num_partitions(num_partitions)
            .with_replication_factor(replication_factor)
            .with_assignments(assignments)
            .with_configs(configs))
    })?;
    let timeout_ms = r.i32()?;
    Ok(CreateTopicsRequest::default()
        .with_topics(topics)
        .with_timeout_ms(timeout_ms)
        .with_validate_only(false))
}

/// CreateTopics v0 (name, error code) and v1 (with the error message); no throttle time.
fn create_topics_response_v0_1(
    r: &CreateTopicsResponse,
    version: i16,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    put_len(buf, r.topics.len())?;
    for t in &r.topics {
        put_str(buf, &t.name.0)?;
        buf.put_i16(t.error_code);
        if version >= 1 {
            put_nullable_str(buf, t.error_message.as_deref())?;
        }
    }
    Ok(())
}

/// DeleteTopics v0: v1 without the throttle time.
fn delete_topics_response_v0(
    r: &DeleteTopicsResponse,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    put_len(buf, r.responses.len())?;
    for t in &r.responses {
        put_str(buf, t.name.as_ref().map(|n| n.0.as_str()).unwrap_or(""))?;
        buf.put_i16(t.error_code);
    }
    Ok(())
}

/// Produce v0–2: v3 without the transactional id, each partition's records a message set
/// of format v0/v1, converted here to one record batch (magic 2), so storage keeps one
/// format. A set that cannot be converted (bad CRC, truncated, unknown codec) is passed on
/// as it is, for the produce path to answer CORRUPT_MESSAGE for that partition as Kafka
/// does. Wrappers inflate to at most `converted_budget` in all, per request.
fn produce_v0_2(r: &mut Reader) -> Result<ProduceRequest, CodecError> {
    let mut budget = converted_budget(r.buf.len());
    let acks = r.i16()?;
    let timeout_ms = r.i32()?;
    let topic_data = r.array(2 + 4, |r| {
        let name = TopicName(r.string()?);
        let partition_data = r.array(4 + 4, |r| {
            let index = r.i32()?;
            let records = r.nullable_bytes()?.map(|set| {
                message_set::to_batch(&set, &mut budget).unwrap_or_else(|e| {
                    log::debug!("produce v0-2: message set not converted: {e}");
                    set
                })
            });
            Ok(PartitionProduceData::default()
                .with_index(index)
                .with_records(records))
        })?;
        Ok(TopicProduceData::default()
            .with_name(name)
            .with_partition_data(partition_data))
    })?;
    Ok(ProduceRequest::default()
        .with_transactional_id(None)
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(topic_data))
}

/// What the compressed messages of a Produce v0–2 body of `body_len` bytes may inflate to,
/// in all: 32 bytes per body byte (about what the in-flight admission charges a Produce
/// frame, `codec::admission_charge`) plus 1 MiB for small requests, at most
/// `MAX_INFLATED_BYTES`. Converted batches are new memory, not slices of the frame
/// (`codec::held_beyond_frame` charges them).
pub fn converted_budget(body_len: usize) -> usize {
    body_len
        .saturating_mul(32)
        .saturating_add(1 << 20)
        .min(MAX_INFLATED_BYTES)
}

/// Produce v0 (per partition: index, error, base offset) and v1 (with the throttle time
/// after the topics); v2 is v3's format.
fn produce_response_v0_1(
    r: &ProduceResponse,
    version: i16,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    put_len(buf, r.responses.len())?;
    for t in &r.responses {
        put_str(buf, &t.name.0)?;
        put_len(buf, t.partition_responses.len())?;
        for p in &t.partition_responses {
            buf.put_i32(p.index);
            buf.put_i16(p.error_code);
            buf.put_i64(p.base_offset);
        }
    }
    if version >= 1 {
        buf.put_i32(r.throttle_time_ms);
    }
    Ok(())
}

/// Fetch v0–3: v4 without the isolation level (read uncommitted) and, before v3, without
/// a response size limit (Kafka takes the largest).
fn fetch_v0_3(r: &mut Reader, version: i16) -> Result<FetchRequest, CodecError> {
    let replica_id = BrokerId(r.i32()?);
    let max_wait_ms = r.i32()?;
    let min_bytes = r.i32()?;
    let max_bytes = if version >= 3 { r.i32()? } else { i32::MAX };
    let topics = r.array(2 + 4, |r| {
        let topic = TopicName(r.string()?);
        let partitions = r.array(4 + 8 + 4, |r| {
            let partition = r.i32()?;
            let fetch_offset = r.i64()?;
            let partition_max_bytes = r.i32()?;
            Ok(FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(fetch_offset)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(partition_max_bytes))
        })?;
        Ok(FetchTopic::default()
            .with_topic(topic)
            .with_partitions(partitions))
    })?;
    Ok(FetchRequest::default()
        .with_replica_id(replica_id)
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(max_bytes)
        .with_isolation_level(0)
        .with_topics(topics))
}

/// Fetch v0 (per partition: index, error, high watermark, records) and v1–3 (with the
/// throttle time first). The records are already in the message format the version reads
/// (the Fetch handler down-converts them from the fetch offset on, which only it knows).
fn fetch_response_v0_3(
    r: &FetchResponse,
    version: i16,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    if version >= 1 {
        buf.put_i32(r.throttle_time_ms);
    }
    put_len(buf, r.responses.len())?;
    for t in &r.responses {
        put_str(buf, &t.topic.0)?;
        put_len(buf, t.partitions.len())?;
        for p in &t.partitions {
            buf.put_i32(p.partition_index);
            buf.put_i16(p.error_code);
            buf.put_i64(p.high_watermark);
            let set = p.records.as_deref().unwrap_or_default();
            put_len(buf, set.len())?;
            buf.put_slice(set);
        }
    }
    Ok(())
}

/// DescribeConfigs v0: v1 without `include_synonyms`.
fn describe_configs_v0(r: &mut Reader) -> Result<DescribeConfigsRequest, CodecError> {
    let resources = r.array(1 + 2 + 4, |r| {
        let resource_type = r.i8()?;
        let resource_name = r.string()?;
        let count = r.i32()?;
        let configuration_keys = if count < 0 {
            None
        } else {
            Some(r.counted(count, 2, |r| r.string())?)
        };
        Ok(DescribeConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(resource_name)
            .with_configuration_keys(configuration_keys))
    })?;
    Ok(DescribeConfigsRequest::default()
        .with_resources(resources)
        .with_include_synonyms(false))
}

/// DescribeConfigs v0: per config `is_default` where later versions give the source
/// (default is `DEFAULT_CONFIG`, 5), and no synonyms.
fn describe_configs_response_v0(
    r: &DescribeConfigsResponse,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    buf.put_i32(r.throttle_time_ms);
    put_len(buf, r.results.len())?;
    for res in &r.results {
        buf.put_i16(res.error_code);
        put_nullable_str(buf, res.error_message.as_deref())?;
        buf.put_i8(res.resource_type);
        put_str(buf, &res.resource_name)?;
        put_len(buf, res.configs.len())?;
        for c in &res.configs {
            put_str(buf, &c.name)?;
            put_nullable_str(buf, c.value.as_deref())?;
            buf.put_i8(c.read_only as i8);
            buf.put_i8((c.config_source == 5) as i8);
            buf.put_i8(c.is_sensitive as i8);
        }
    }
    Ok(())
}

/// OffsetForLeaderEpoch v0 and v1 (same request): v2 without the current leader epoch.
fn offset_for_leader_epoch_v0_1(r: &mut Reader) -> Result<OffsetForLeaderEpochRequest, CodecError> {
    let topics = r.array(2 + 4, |r| {
        let topic = TopicName(r.string()?);
        let partitions = r.array(4 + 4, |r| {
            let partition = r.i32()?;
            let leader_epoch = r.i32()?;
            Ok(OffsetForLeaderPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(-1)
                .with_leader_epoch(leader_epoch))
        })?;
        Ok(OffsetForLeaderTopic::default()
            .with_topic(topic)
            .with_partitions(partitions))
    })?;
    Ok(OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(-2))
        .with_topics(topics))
}

/// OffsetForLeaderEpoch v0 (error, partition, end offset) and v1 (with the leader epoch);
/// no throttle time before v2.
fn offset_for_leader_epoch_response_v0_1(
    r: &OffsetForLeaderEpochResponse,
    version: i16,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    put_len(buf, r.topics.len())?;
    for t in &r.topics {
        put_str(buf, &t.topic.0)?;
        put_len(buf, t.partitions.len())?;
        for p in &t.partitions {
            buf.put_i16(p.error_code);
            buf.put_i32(p.partition);
            if version >= 1 {
                buf.put_i32(p.leader_epoch);
            }
            buf.put_i64(p.end_offset);
        }
    }
    Ok(())
}

/// A bounded reader of the classic (non-flexible) encoding.
pub(crate) struct Reader {
    pub buf: Bytes,
    pub what: &'static str,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), CodecError> {
        if self.buf.remaining() < n {
            return Err(CodecError::Malformed(
                self.what,
                format!("{n} bytes needed, {} left", self.buf.remaining()),
            ));
        }
        Ok(())
    }

    pub fn i8(&mut self) -> Result<i8, CodecError> {
        self.need(1)?;
        Ok(self.buf.get_i8())
    }

    pub fn i16(&mut self) -> Result<i16, CodecError> {
        self.need(2)?;
        Ok(self.buf.get_i16())
    }

    pub fn i32(&mut self) -> Result<i32, CodecError> {
        self.need(4)?;
        Ok(self.buf.get_i32())
    }

    pub fn i64(&mut self) -> Result<i64, CodecError> {
        self.need(8)?;
        Ok(self.buf.get_i64())
    }

    /// A string of i16 length; -1 (null) is `None`.
    pub fn nullable_string(&mut self) -> Result<Option<StrBytes>, CodecError> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        let len = len as usize;
        self.need(len)?;
        let raw = self.buf.split_to(len);
        StrBytes::from_utf8(raw)
            .map(Some)
            .map_err(|e| CodecError::Malformed(self.what, format!("string: {e}")))
    }

    pub fn string(&mut self) -> Result<StrBytes, CodecError> {
        self.nullable_string()?
            .ok_or_else(|| CodecError::Malformed(self.what, "null string".into()))
    }

    /// Bytes of i32 length; -1 (null) is `None`.
    pub fn nullable_bytes(&mut self) -> Result<Option<Bytes>, CodecError> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(None);
        }
        let len = len as usize;
        self.need(len)?;
        Ok(Some(self.buf.split_to(len)))
    }

    /// An array of i32 count whose elements take at least `min` bytes each: a count the
    /// bytes left cannot hold is refused before anything is allocated. Null is empty.
    pub fn array<T>(
        &mut self,
        min: usize,
        each: impl FnMut(&mut Self) -> Result<T, CodecError>,
    ) -> Result<Vec<T>, CodecError> {
        let count = self.i32()?;
        self.counted(count, min, each)
    }

    /// The elements of an array whose count was read already (as `array`).
    pub fn counted<T>(
        &mut self,
        count: i32,
        min: usize,
        mut each: impl FnMut(&mut Self) -> Result<T, CodecError>,
    ) -> Result<Vec<T>, CodecError> {
        if count <= 0 {
            return Ok(Vec::new());
        }
        let count = count as usize;
        if count.saturating_mul(min.max(1)) > self.buf.remaining() {
            return Err(CodecError::Malformed(
                self.what,
                format!("{count} elements in {} bytes", self.buf.remaining()),
            ));
        }
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            out.push(each(self)?);
        }
        Ok(out)
    }
}

pub(crate) fn put_len(buf: &mut BytesMut, n: usize) -> Result<(), CodecError> {
    let n = i32::try_from(n)
        .map_err(|_| CodecError::Malformed("legacy response", "array too long".into()))?;
    buf.put_i32(n);
    Ok(())
}

pub(crate) fn put_str(buf: &mut BytesMut, s: &str) -> Result<(), CodecError> {
    put_nullable_str(buf, Some(s))
}

pub(crate) fn put_nullable_str(buf: &mut BytesMut, s: Option<&str>) -> Result<(), CodecError> {
    match s {
        None => buf.put_i16(-1),
        Some(s) => {
            let n = i16::try_from(s.len())
                .map_err(|_| CodecError::Malformed("legacy response", "string too long".into()))?;
            buf.put_i16(n);
            buf.put_slice(s.as_bytes());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_commit_v1_decodes_with_its_commit_timestamp() {
        let mut b = BytesMut::new();
        put_str(&mut b, "g").unwrap();
        b.put_i32(3);
        put_str(&mut b, "m").unwrap();
        b.put_i32(1);
        put_str(&mut b, "t").unwrap();
        b.put_i32(1);
        b.put_i32(0);
        b.put_i64(42);
        b.put_i64(1_700_000_000_000);
        put_nullable_str(&mut b, None).unwrap();
        let Some(Ok(OldRequest::OffsetCommit(r))) =
            decode_request(ApiKey::OffsetCommit, b.freeze(), 1)
        else {
            panic!("not decoded");
        };
        assert_eq!(r.generation_id_or_member_epoch, 3);
        assert_eq!(r.member_id.as_str(), "m");
        assert_eq!(r.topics[0].partitions[0].committed_offset, 42);
    }

    #[test]
    fn old_requests_reencode() {
        let req = OldRequest::ListOffsets(
            ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partitions(vec![
                        ListOffsetsPartition::default().with_timestamp(-1)
                    ])]),
        );
        let mut b = BytesMut::new();
        encode_request(&req, 0, &mut b).unwrap();
        let Some(Ok(OldRequest::ListOffsets(back))) =
            decode_request(ApiKey::ListOffsets, b.freeze(), 0)
        else {
            panic!("not decoded");
        };
        assert_eq!(back.topics[0].partitions[0].timestamp, -1);
    }

    #[test]
    fn huge_counts_and_truncation_are_errors() {
        let mut b = BytesMut::new();
        b.put_i32(0x7fff_ffff);
        assert!(matches!(
            decode_request(ApiKey::CreateTopics, b.freeze(), 0),
            Some(Err(_))
        ));
        for cut in 0..20 {
            let mut b = BytesMut::new();
            put_str(&mut b, "group").unwrap();
            b.put_i32(1);
            put_str(&mut b, "topic").unwrap();
            let b = b.freeze();
            let cut = cut.min(b.len());
            let _ = decode_request(ApiKey::OffsetCommit, b.slice(..cut), 0);
        }
    }
}

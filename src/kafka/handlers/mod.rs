//! One file per Kafka API. Each decodes its request, acts, and returns a `Pending`: the
//! future of its encoded response frame (or `None` when the protocol sends none, as for
//! produce with acks=0).
//!
//! `dispatch` runs on the connection's shard. It is awaited in request order, so whatever a
//! handler does before returning its `Pending` (the appends of a produce) happens in the
//! order the client sent the requests; the connection then writes the responses in that
//! same order.

pub mod alter_configs;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sync_group;

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use kafka_protocol::messages::{ApiKey, TopicName};
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};

use super::codec::{self, decode_body, CodecError, Frame};
use crate::metrics::Protocol;
use crate::runtime::shard::Shard;

/// What a handler knows of its connection.
pub struct Conn {
    pub shard: Rc<Shard>,
    /// The address the client connected to (advertised back in Metadata by default).
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

pub type Pending = LocalBoxFuture<'static, Option<Bytes>>;

/// The APIs this broker serves, with the versions it accepts.
pub const SUPPORTED: &[ApiKey] = &[
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::Metadata,
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::SyncGroup,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::ListGroups,
    ApiKey::DescribeGroups,
    ApiKey::DeleteGroups,
    ApiKey::OffsetDelete,
    ApiKey::InitProducerId,
    ApiKey::DescribeConfigs,
    ApiKey::AlterConfigs,
    ApiKey::IncrementalAlterConfigs,
    ApiKey::DescribeCluster,
    ApiKey::DescribeLogDirs,
    ApiKey::DeleteRecords,
    ApiKey::OffsetForLeaderEpoch,
    ApiKey::DescribeProducers,
    ApiKey::ApiVersions,
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
    ApiKey::CreatePartitions,
];

/// Encodes a response frame. An encoding failure is our bug: it is logged and answered
/// with an empty frame, on which the connection closes (the client reconnects rather
/// than waiting for an answer that never comes).
pub fn frame<R: Encodable + HeaderVersion>(
    correlation_id: i32,
    version: i16,
    response: &R,
) -> Option<Bytes> {
    match codec::encode_response(correlation_id, version, response) {
        Ok(b) => Some(b),
        Err(e) => {
            log::error!("encoding response (correlation {correlation_id}, v{version}): {e}");
            Some(Bytes::new())
        }
    }
}

pub fn ready(frame: Option<Bytes>) -> Pending {
    Box::pin(async move { frame })
}

pub fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

pub fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

pub fn uuid(id: &[u8; 16]) -> uuid::Uuid {
    uuid::Uuid::from_bytes(*id)
}

thread_local! {
    static API_NAMES: std::cell::RefCell<std::collections::HashMap<i16, &'static str>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The API's name for metric labels (`Produce`, `Fetch`, …). Each name is made once per
/// shard and kept for the life of the process (there are fewer than 100 API keys).
fn api_name(api: ApiKey) -> &'static str {
    API_NAMES.with(|names| {
        *names
            .borrow_mut()
            .entry(api as i16)
            .or_insert_with(|| Box::leak(format!("{api:?}").into_boxed_str()))
    })
}

/// Counts a Kafka error code returned to a client (`portask_errors_total`).
pub fn count_error(code: i16) {
    if code != 0 {
        crate::metrics::with(|m| m.error(Protocol::Kafka, code as i32));
    }
}

/// Decodes the request body for `frame.api` and runs its handler.
pub async fn dispatch(conn: &Rc<Conn>, frame: Frame) -> Result<Pending, CodecError> {
    let c = frame.header.correlation_id;
    let client_id = frame
        .header
        .client_id
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default();
    let v = frame.version;
    let body = frame.body;
    crate::metrics::with(|m| m.request(Protocol::Kafka, api_name(frame.api)));
    Ok(match frame.api {
        ApiKey::ApiVersions => api_versions::handle(decode_body("ApiVersions", body, v)?, c, v),
        ApiKey::Metadata => metadata::handle(conn, decode_body("Metadata", body, v)?, c, v),
        ApiKey::Produce => produce::handle(conn, decode_body("Produce", body, v)?, c, v).await,
        ApiKey::Fetch => fetch::handle(conn, decode_body("Fetch", body, v)?, c, v),
        ApiKey::ListOffsets => {
            list_offsets::handle(conn, decode_body("ListOffsets", body, v)?, c, v)
        }
        ApiKey::CreateTopics => {
            create_topics::handle(conn, decode_body("CreateTopics", body, v)?, c, v)
        }
        ApiKey::DeleteTopics => {
            delete_topics::handle(conn, decode_body("DeleteTopics", body, v)?, c, v)
        }
        ApiKey::FindCoordinator => {
            find_coordinator::handle(conn, decode_body("FindCoordinator", body, v)?, c, v)
        }
        ApiKey::JoinGroup => {
            join_group::handle(conn, decode_body("JoinGroup", body, v)?, client_id, c, v)
        }
        ApiKey::SyncGroup => sync_group::handle(conn, decode_body("SyncGroup", body, v)?, c, v),
        ApiKey::Heartbeat => heartbeat::handle(conn, decode_body("Heartbeat", body, v)?, c, v),
        ApiKey::LeaveGroup => leave_group::handle(conn, decode_body("LeaveGroup", body, v)?, c, v),
        ApiKey::OffsetCommit => {
            offset_commit::handle(conn, decode_body("OffsetCommit", body, v)?, c, v)
        }
        ApiKey::OffsetFetch => {
            offset_fetch::handle(conn, decode_body("OffsetFetch", body, v)?, c, v)
        }
        ApiKey::ListGroups => list_groups::handle(conn, decode_body("ListGroups", body, v)?, c, v),
        ApiKey::DescribeGroups => {
            describe_groups::handle(conn, decode_body("DescribeGroups", body, v)?, c, v)
        }
        ApiKey::DeleteGroups => {
            delete_groups::handle(conn, decode_body("DeleteGroups", body, v)?, c, v)
        }
        ApiKey::OffsetDelete => {
            offset_delete::handle(conn, decode_body("OffsetDelete", body, v)?, c, v)
        }
        ApiKey::InitProducerId => {
            init_producer_id::handle(conn, decode_body("InitProducerId", body, v)?, c, v)
        }
        ApiKey::DescribeConfigs => {
            describe_configs::handle(conn, decode_body("DescribeConfigs", body, v)?, c, v)
        }
        ApiKey::AlterConfigs => {
            alter_configs::handle(conn, decode_body("AlterConfigs", body, v)?, c, v)
        }
        ApiKey::IncrementalAlterConfigs => incremental_alter_configs::handle(
            conn,
            decode_body("IncrementalAlterConfigs", body, v)?,
            c,
            v,
        ),
        ApiKey::DescribeCluster => {
            describe_cluster::handle(conn, decode_body("DescribeCluster", body, v)?, c, v)
        }
        ApiKey::DescribeLogDirs => {
            describe_log_dirs::handle(conn, decode_body("DescribeLogDirs", body, v)?, c, v)
        }
        ApiKey::DeleteRecords => {
            delete_records::handle(conn, decode_body("DeleteRecords", body, v)?, c, v)
        }
        ApiKey::OffsetForLeaderEpoch => offset_for_leader_epoch::handle(
            conn,
            decode_body("OffsetForLeaderEpoch", body, v)?,
            c,
            v,
        ),
        ApiKey::DescribeProducers => {
            describe_producers::handle(conn, decode_body("DescribeProducers", body, v)?, c, v)
        }
        ApiKey::CreatePartitions => {
            create_partitions::handle(conn, decode_body("CreatePartitions", body, v)?, c, v)
        }
        api => return Err(CodecError::UnsupportedVersion { api, version: v }),
    })
}

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

/// Sends every owner shard its share of `items` as one request (`request`), concurrently,
/// and places each answer (`answers`) at its item's index; items whose owner gave no
/// usable answer keep `default`.
pub async fn ask_owners<T, R: Clone>(
    shard: &Rc<Shard>,
    items: Vec<Item<T>>,
    default: R,
    request: impl Fn(Vec<(String, i32, T)>) -> crate::kafka::owner::Request,
    answers: impl Fn(crate::kafka::owner::Reply) -> Option<Vec<R>>,
) -> Vec<R> {
    let mut out = vec![default; items.len()];
    let calls = by_owner(shard, items).into_iter().map(|(owner, group)| {
        let (idx, parts): (Vec<usize>, Vec<(String, i32, T)>) =
            group.into_iter().map(|(i, t, p, x)| (i, (t, p, x))).unzip();
        let req = request(parts);
        let shard = shard.clone();
        async move { (idx, shard.kafka(owner, req).await) }
    });
    for (idx, reply) in futures::future::join_all(calls).await {
        if let Some(rs) = answers(reply) {
            for (i, r) in idx.into_iter().zip(rs) {
                out[i] = r;
            }
        }
    }
    out
}

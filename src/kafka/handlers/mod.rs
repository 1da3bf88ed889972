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

use super::codec::{self, CodecError, Frame, Request};
use crate::broker::Shard;
use crate::metrics::Protocol;

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

/// Decodes the request body for `frame.api` (`codec::decode_request`, the pure decoder the
/// fuzz tests drive) and runs its handler; also gives what the decoded request holds beyond
/// its frame (`codec::held_beyond_frame`), for the connection's in-flight budgets.
pub async fn dispatch(conn: &Rc<Conn>, frame: Frame) -> Result<(Pending, usize), CodecError> {
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
    let body_len = body.len();
    let request = codec::decode_request(frame.api, body, v)?;
    let held = codec::held_beyond_frame(&request, body_len);
    let pending = match request {
        Request::ApiVersions(r) => api_versions::handle(r, c, v),
        Request::Metadata(r) => metadata::handle(conn, r, c, v),
        Request::Produce(r) => produce::handle(conn, r, c, v).await,
        Request::Fetch(r) => fetch::handle(conn, r, c, v),
        Request::ListOffsets(r) => list_offsets::handle(conn, r, c, v),
        Request::CreateTopics(r) => create_topics::handle(conn, r, c, v),
        Request::DeleteTopics(r) => delete_topics::handle(conn, r, c, v),
        Request::FindCoordinator(r) => find_coordinator::handle(conn, r, c, v),
        Request::JoinGroup(r) => join_group::handle(conn, r, client_id, c, v),
        Request::SyncGroup(r) => sync_group::handle(conn, r, c, v),
        Request::Heartbeat(r) => heartbeat::handle(conn, r, c, v),
        Request::LeaveGroup(r) => leave_group::handle(conn, r, c, v),
        Request::OffsetCommit(r) => offset_commit::handle(conn, r, c, v),
        Request::OffsetFetch(r) => offset_fetch::handle(conn, r, c, v),
        Request::ListGroups(r) => list_groups::handle(conn, r, c, v),
        Request::DescribeGroups(r) => describe_groups::handle(conn, r, c, v),
        Request::DeleteGroups(r) => delete_groups::handle(conn, r, c, v),
        Request::OffsetDelete(r) => offset_delete::handle(conn, r, c, v),
        Request::InitProducerId(r) => init_producer_id::handle(conn, r, c, v),
        Request::DescribeConfigs(r) => describe_configs::handle(conn, r, c, v),
        Request::AlterConfigs(r) => alter_configs::handle(conn, r, c, v),
        Request::IncrementalAlterConfigs(r) => incremental_alter_configs::handle(conn, r, c, v),
        Request::DescribeCluster(r) => describe_cluster::handle(conn, r, c, v),
        Request::DescribeLogDirs(r) => describe_log_dirs::handle(conn, r, c, v),
        Request::DeleteRecords(r) => delete_records::handle(conn, r, c, v),
        Request::OffsetForLeaderEpoch(r) => offset_for_leader_epoch::handle(conn, r, c, v),
        Request::DescribeProducers(r) => describe_producers::handle(conn, r, c, v),
        Request::CreatePartitions(r) => create_partitions::handle(conn, r, c, v),
    };
    Ok((pending, held))
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

//! `/api/v1/consumer-groups`: list (state, type — `classic` or `consumer`, KIP-848 —,
//! members, lag), describe one (members with their assigned partitions, committed offsets
//! with lag; a consumer-protocol group through ConsumerGroupDescribe's view of it), delete
//! an empty one. Runs on the
//! shard serving the request; each group's coordinator shard answers through the mesh
//! (`Shard::group`), partition high watermarks come from their owners. With Kafka ACLs on,
//! the group ACLs apply as over Kafka (`http::acl`).

use std::rc::Rc;

use bytes::Bytes;
use http::Method;
use kafka_protocol::ResponseError;
use serde::Serialize;

use super::acl::{self, Caller};
use super::{no_content, ok_json, ApiError, ApiResult, Req};
use crate::broker::Shard;
use crate::kafka::groups::{Reply, Request};
use crate::security::acl::{Operation, ResourceType, CLUSTER_NAME};

pub async fn route(shard: &Rc<Shard>, req: &Req, rest: &[&str]) -> ApiResult {
    let caller = Caller::of(req);
    match (rest, &req.method) {
        ([], &Method::GET) => list(shard, &caller).await,
        ([group], &Method::GET) => {
            acl::authorize_on(shard, req, Operation::Describe, ResourceType::Group, group)?;
            describe(shard, &caller, group).await
        }
        ([group], &Method::DELETE) => {
            acl::authorize_on(shard, req, Operation::Delete, ResourceType::Group, group)?;
            delete(shard, group).await
        }
        ([] | [_], _) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound("no such endpoint".into())),
    }
}

async fn list(shard: &Rc<Shard>, caller: &Caller) -> ApiResult {
    let stats = shard.stats_all().await;
    let lag = super::overview::group_lag(&stats);
    let every = caller.may_on(
        shard,
        Operation::Describe,
        ResourceType::Cluster,
        CLUSTER_NAME,
    );
    let rows: Vec<serde_json::Value> = stats
        .iter()
        .flat_map(|s| &s.groups)
        .filter(|g| {
            every || caller.may_on(shard, Operation::Describe, ResourceType::Group, &g.group)
        })
        .map(|g| {
            serde_json::json!({
                "group": g.group,
                "state": g.state,
                "protocol_type": g.protocol_type,
                "group_type": g.group_type,
                "members": g.members,
                "lag": lag.get(&g.group).copied().unwrap_or(0),
            })
        })
        .collect();
    ok_json(&rows)
}

#[derive(Serialize)]
struct Assigned {
    topic: String,
    partitions: Vec<i32>,
}

#[derive(Serialize)]
struct MemberRow {
    member_id: String,
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    assignment: Vec<Assigned>,
}

#[derive(Serialize)]
struct OffsetRow {
    topic: String,
    partition: i32,
    committed_offset: i64,
    high_watermark: Option<i64>,
    lag: Option<i64>,
    metadata: Option<String>,
}

/// A consumer-protocol assignment's partitions (`groups::migration::decode_assignment`);
/// other protocols' assignments are opaque and shown as none.
fn decode_assignment(bytes: &Bytes) -> Vec<Assigned> {
    crate::kafka::groups::migration::decode_assignment(bytes)
        .unwrap_or_default()
        .into_iter()
        .map(|(topic, partitions)| Assigned { topic, partitions })
        .collect()
}

async fn describe(shard: &Rc<Shard>, caller: &Caller, group: &str) -> ApiResult {
    let described = match shard
        .group(group, Request::Describe(group.to_owned()))
        .await
    {
        Reply::Describe(d) => d,
        _ => {
            return Err(ApiError::Unavailable(
                "the group coordinator did not answer".into(),
            ))
        }
    };
    let offsets = match shard
        .group(
            group,
            Request::Fetch {
                group: group.to_owned(),
                parts: None,
            },
        )
        .await
    {
        Reply::Fetch(_, offsets) => offsets,
        _ => Vec::new(),
    };
    let mut dead = described.group_state.as_str() == "Dead";
    // A group of the consumer protocol (KIP-848): DescribeGroups does not describe it.
    let mut group_type = "classic";
    let mut state = described.group_state.to_string();
    let mut members: Vec<MemberRow> = described
        .members
        .iter()
        .map(|m| MemberRow {
            member_id: m.member_id.to_string(),
            group_instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id: m.client_id.to_string(),
            client_host: m.client_host.to_string(),
            assignment: decode_assignment(&m.member_assignment),
        })
        .collect();
    if dead {
        if let Reply::ConsumerDescribe(d) = shard
            .group(group, Request::ConsumerDescribe(group.to_owned()))
            .await
        {
            if d.error_code == 0 {
                dead = false;
                group_type = "consumer";
                state = d.group_state.to_string();
                members = d
                    .members
                    .iter()
                    .map(|m| MemberRow {
                        member_id: m.member_id.to_string(),
                        group_instance_id: m.instance_id.as_ref().map(|s| s.to_string()),
                        client_id: m.client_id.to_string(),
                        client_host: m.client_host.to_string(),
                        assignment: m
                            .assignment
                            .topic_partitions
                            .iter()
                            .map(|tp| Assigned {
                                topic: tp.topic_name.to_string(),
                                partitions: tp.partitions.clone(),
                            })
                            .collect(),
                    })
                    .collect();
            }
        }
    }
    if dead && offsets.is_empty() {
        return Err(ApiError::NotFound(format!(
            "consumer group '{group}' does not exist"
        )));
    }
    let stats = shard.stats_all().await;
    let high = |topic: &str, p: i32| {
        stats
            .iter()
            .flat_map(|s| &s.partitions)
            .find(|x| x.topic == topic && x.partition == p)
            .map(|x| x.high_watermark)
    };
    // Offsets of topics the caller may not describe are left out, as OffsetFetch does.
    let offsets: Vec<OffsetRow> = offsets
        .into_iter()
        .filter(|o| o.offset >= 0 && caller.may(shard, Operation::Describe, &o.topic))
        .map(|o| {
            let hw = high(&o.topic, o.partition);
            OffsetRow {
                lag: hw.map(|h| (h - o.offset).max(0)),
                high_watermark: hw,
                committed_offset: o.offset,
                metadata: o.metadata,
                partition: o.partition,
                topic: o.topic,
            }
        })
        .collect();
    let lag: i64 = offsets.iter().filter_map(|o| o.lag).sum();
    ok_json(&serde_json::json!({
        "group": group,
        "state": if dead { "Empty" } else { state.as_str() },
        "group_type": group_type,
        "protocol_type": if group_type == "consumer" {
            "consumer".to_owned()
        } else {
            described.protocol_type.to_string()
        },
        "protocol": described.protocol_data.to_string(),
        "members": members,
        "offsets": offsets,
        "lag": lag,
    }))
}

async fn delete(shard: &Rc<Shard>, group: &str) -> ApiResult {
    match shard.group(group, Request::Delete(group.to_owned())).await {
        Reply::Code(0) => no_content(),
        Reply::Code(c) if c == ResponseError::GroupIdNotFound.code() => Err(ApiError::NotFound(
            format!("consumer group '{group}' does not exist"),
        )),
        Reply::Code(c) if c == ResponseError::NonEmptyGroup.code() => Err(ApiError::Conflict(
            format!("consumer group '{group}' has active members"),
        )),
        Reply::Code(c) => Err(ApiError::Internal(format!(
            "deleting consumer group '{group}': Kafka error {c}"
        ))),
        _ => Err(ApiError::Unavailable(
            "the group coordinator did not answer".into(),
        )),
    }
}

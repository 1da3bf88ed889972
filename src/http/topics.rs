//! `/api/v1/topics`: list, describe (partitions with offsets and sizes, effective
//! configs), create, delete, alter config and add partitions. Runs on the shard serving the
//! request; topic changes go to shard 0's catalog writer (`Shard::change_catalog`), the
//! same path as Kafka's CreateTopics / DeleteTopics / IncrementalAlterConfigs, and
//! partition figures come from their owners through the mesh. With `acl.enabled`, Kafka's
//! topic ACLs apply to the HTTP user (`http::acl`): the list leaves out topics it may not
//! describe, everything else answers 403 when refused.

use std::collections::BTreeMap;
use std::rc::Rc;

use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::{acl, json, no_content, ok_json, only, ApiError, ApiResult, Req};
use crate::broker::Shard;
use crate::catalog::{self, new_topic_id, CatalogError, Change, Topic};
use crate::security::acl::Operation;

pub async fn route(shard: &Rc<Shard>, req: &Req, rest: &[&str]) -> ApiResult {
    let m = &req.method;
    match rest {
        [] if m == Method::GET => list(shard, req).await,
        [] if m == Method::POST => create(shard, req).await,
        [] => Err(ApiError::MethodNotAllowed),
        [name] if m == Method::GET => {
            acl::authorize(shard, req, Operation::Describe, name)?;
            describe(shard, name).await
        }
        [name] if m == Method::DELETE => {
            acl::authorize(shard, req, Operation::Delete, name)?;
            delete(shard, name).await
        }
        [_] => Err(ApiError::MethodNotAllowed),
        [name, "config"] if m == Method::GET => {
            acl::authorize(shard, req, Operation::DescribeConfigs, name)?;
            let state = shard.catalog.current();
            let topic = known(&state, name)?;
            ok_json(&effective(shard, &state, topic))
        }
        [name, "config"] => {
            only(m, &[Method::PUT, Method::PATCH])?;
            acl::authorize(shard, req, Operation::AlterConfigs, name)?;
            alter(shard, req, name).await
        }
        [name, "partitions"] => {
            only(m, &[Method::POST])?;
            acl::authorize(shard, req, Operation::Alter, name)?;
            add_partitions(shard, req, name).await
        }
        _ => Err(ApiError::NotFound(format!(
            "no such endpoint: /api/v1/topics/{}",
            rest.join("/")
        ))),
    }
}

/// The HTTP form of a catalog refusal.
pub fn catalog_error(e: CatalogError) -> ApiError {
    match e {
        CatalogError::TopicExists(_) => ApiError::Conflict(e.to_string()),
        CatalogError::UnknownTopic(_) => ApiError::NotFound(e.to_string()),
        CatalogError::InvalidTopic(..)
        | CatalogError::InvalidPartitions(_)
        | CatalogError::InvalidConfig(..) => ApiError::BadRequest(e.to_string()),
        CatalogError::DeleteDisabled => ApiError::Forbidden(e.to_string()),
        CatalogError::Storage(_) => ApiError::Unavailable(e.to_string()),
        CatalogError::NoSpace(_) => ApiError::InsufficientStorage(e.to_string()),
        CatalogError::Amqp { code, text } => super::amqp::refusal(code, text),
    }
}

fn known<'a>(state: &'a catalog::CatalogState, name: &str) -> Result<&'a Topic, ApiError> {
    state
        .topic(name)
        .ok_or_else(|| ApiError::NotFound(format!("topic '{name}' does not exist")))
}

/// Applies one catalog change; its refusal as an HTTP error.
async fn change(shard: &Rc<Shard>, c: Change) -> Result<(), ApiError> {
    shard
        .change_catalog(vec![c], false)
        .await
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(CatalogError::Storage("no answer from the catalog".into())))
        .map_err(catalog_error)
}

#[derive(Serialize)]
struct PartitionRow {
    partition: i32,
    shard: usize,
    log_start_offset: i64,
    high_watermark: i64,
    size_bytes: u64,
}

#[derive(Serialize)]
struct TopicSummary {
    name: String,
    id: String,
    partitions: i32,
    messages: i64,
    size_bytes: u64,
    /// The topic's own overrides.
    configs: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct TopicDetail {
    name: String,
    id: String,
    partitions: Vec<PartitionRow>,
    /// Every topic config's effective value.
    configs: BTreeMap<String, String>,
}

fn effective(
    shard: &Shard,
    state: &catalog::CatalogState,
    topic: &Topic,
) -> BTreeMap<String, String> {
    catalog::TOPIC_CONFIGS
        .iter()
        .filter_map(|k| {
            catalog::effective_config(&shard.config, state, topic, k)
                .map(|(v, _)| (k.to_string(), v))
        })
        .collect()
}

/// Every partition's figures, from the shards that own them.
async fn partition_rows(shard: &Rc<Shard>) -> Vec<crate::metrics::PartitionStats> {
    shard
        .stats_all()
        .await
        .into_iter()
        .flat_map(|s| s.partitions)
        .collect()
}

async fn list(shard: &Rc<Shard>, req: &Req) -> ApiResult {
    let state = shard.catalog.current();
    let parts = partition_rows(shard).await;
    let rows: Vec<TopicSummary> = state
        .topics
        .values()
        .filter(|t| acl::may(shard, req, Operation::Describe, &t.name))
        .map(|t| {
            let mine = parts.iter().filter(|p| p.topic == t.name);
            let (messages, size_bytes) = mine.fold((0i64, 0u64), |(m, b), p| {
                (
                    m + (p.high_watermark - p.log_start_offset).max(0),
                    b + p.size_bytes,
                )
            });
            TopicSummary {
                name: t.name.clone(),
                id: uuid::Uuid::from_bytes(t.id).to_string(),
                partitions: t.partitions,
                messages,
                size_bytes,
                configs: t.configs.clone(),
            }
        })
        .collect();
    ok_json(&rows)
}

async fn describe(shard: &Rc<Shard>, name: &str) -> ApiResult {
    let state = shard.catalog.current();
    let topic = known(&state, name)?;
    let parts = partition_rows(shard).await;
    let rows = (0..topic.partitions)
        .map(|p| {
            let found = parts.iter().find(|s| s.topic == name && s.partition == p);
            PartitionRow {
                partition: p,
                shard: shard.owner_of(name, p),
                // A partition nobody has written to has no log yet: empty at offset 0.
                log_start_offset: found.map(|s| s.log_start_offset).unwrap_or(0),
                high_watermark: found.map(|s| s.high_watermark).unwrap_or(0),
                size_bytes: found.map(|s| s.size_bytes).unwrap_or(0),
            }
        })
        .collect();
    ok_json(&TopicDetail {
        name: topic.name.clone(),
        id: uuid::Uuid::from_bytes(topic.id).to_string(),
        partitions: rows,
        configs: effective(shard, &state, topic),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTopic {
    name: String,
    partitions: Option<i32>,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

async fn create(shard: &Rc<Shard>, req: &Req) -> ApiResult {
    let new: NewTopic = req.json()?;
    acl::authorize_create(shard, req, &new.name)?;
    let partitions = new.partitions.unwrap_or(shard.config.kafka.num_partitions);
    let topic = Topic {
        id: new_topic_id(&new.name),
        name: new.name.clone(),
        partitions,
        configs: new.configs,
    };
    change(shard, Change::CreateTopic(topic)).await?;
    let mut r = describe(shard, &new.name).await?;
    *r.status_mut() = StatusCode::CREATED;
    Ok(r)
}

async fn delete(shard: &Rc<Shard>, name: &str) -> ApiResult {
    known(&shard.catalog.current(), name)?;
    change(shard, Change::DeleteTopic(name.to_owned())).await?;
    no_content()
}

/// PATCH merges into the topic's overrides (a `null` value removes one); PUT replaces
/// them all.
async fn alter(shard: &Rc<Shard>, req: &Req, name: &str) -> ApiResult {
    let body: BTreeMap<String, Option<String>> = req.json()?;
    let state = shard.catalog.current();
    let topic = known(&state, name)?;
    let mut configs = if req.method == Method::PATCH {
        topic.configs.clone()
    } else {
        BTreeMap::new()
    };
    for (k, v) in body {
        match v {
            Some(v) => {
                catalog::validate_config(&k, &v).map_err(catalog_error)?;
                configs.insert(k, v);
            }
            None => {
                configs.remove(&k);
            }
        }
    }
    change(shard, Change::SetConfigs(name.to_owned(), configs)).await?;
    let state = shard.catalog.current();
    let topic = known(&state, name)?;
    ok_json(&effective(shard, &state, topic))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionCount {
    partitions: i32,
}

async fn add_partitions(shard: &Rc<Shard>, req: &Req, name: &str) -> ApiResult {
    let body: PartitionCount = req.json()?;
    let state = shard.catalog.current();
    let topic = known(&state, name)?;
    if body.partitions <= topic.partitions {
        return Err(ApiError::BadRequest(format!(
            "topic '{name}' has {} partitions; the count can only grow",
            topic.partitions
        )));
    }
    change(
        shard,
        Change::SetPartitions(name.to_owned(), body.partitions),
    )
    .await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "name": name, "partitions": body.partitions }),
    ))
}

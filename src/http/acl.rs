//! Kafka's ACLs on the HTTP API's topics (`/api/v1/topics/...`): the HTTP user `name`
//! is the principal `User:<name>` (ANONYMOUS on an open endpoint), its address the host,
//! and the operation the one the Kafka API doing the same thing needs (reading records
//! READ, producing WRITE, listing and describing DESCRIBE, creating CREATE on the cluster
//! or the topic, deleting DELETE, configs DESCRIBE_CONFIGS / ALTER_CONFIGS, partitions
//! ALTER). The consumer groups view follows the group ACLs as ListGroups, DescribeGroups
//! and DeleteGroups do (DESCRIBE, DELETE; the list shows every group with DESCRIBE on the
//! cluster, else those the caller may describe). A refusal is 403 naming what was
//! refused, counted and logged as a Kafka one is (`security::audit::acl_denied`, protocol
//! `http`). Only with `acl.enabled`.
//!
//! Runs on the shard serving the request, from its catalog replica.

use super::{ApiError, Req};
use crate::broker::Shard;
use crate::metrics::Protocol;
use crate::security::acl::{host_of, Operation, Requester, ResourceType, CLUSTER_NAME};
use crate::security::Principal;

fn principal(req: &Req) -> Principal {
    match &req.user {
        Some(u) => Principal::user(u.name.clone()),
        None => Principal::anonymous(),
    }
}

/// Who makes a request, as the ACLs see it; owned, so a stream that outlives the request
/// (the overview's events) keeps checking for the same caller.
pub struct Caller {
    principal: Principal,
    host: String,
}

impl Caller {
    pub fn of(req: &Req) -> Caller {
        Caller {
            principal: principal(req),
            host: req.peer.map(|p| host_of(p.ip())).unwrap_or_default(),
        }
    }

    fn allowed(&self, shard: &Shard, op: Operation, resource: ResourceType, name: &str) -> bool {
        if !shard.acl.enabled() {
            return true;
        }
        let state = shard.catalog.current();
        let who = Requester {
            principal: &self.principal,
            host: &self.host,
        };
        shard
            .acl
            .authorize(&state.security.acls, &who, op, resource, name)
    }

    /// Whether the caller may perform `op` on the topic, without auditing a refusal (for
    /// lists, which leave out what the caller may not see).
    pub fn may(&self, shard: &Shard, op: Operation, topic: &str) -> bool {
        self.allowed(shard, op, ResourceType::Topic, topic)
    }

    /// `may` for any resource.
    pub fn may_on(&self, shard: &Shard, op: Operation, resource: ResourceType, name: &str) -> bool {
        self.allowed(shard, op, resource, name)
    }
}

fn check(shard: &Shard, req: &Req, op: Operation, resource: ResourceType, name: &str) -> bool {
    Caller::of(req).allowed(shard, op, resource, name)
}

/// Whether the request's user may perform `op` on the topic, without auditing a refusal.
pub fn may(shard: &Shard, req: &Req, op: Operation, topic: &str) -> bool {
    check(shard, req, op, ResourceType::Topic, topic)
}

/// `op` on the topic, or 403.
pub fn authorize(shard: &Shard, req: &Req, op: Operation, topic: &str) -> Result<(), ApiError> {
    authorize_on(shard, req, op, ResourceType::Topic, topic)
}

/// `op` on the resource, or 403 naming what was refused (counted and logged).
pub fn authorize_on(
    shard: &Shard,
    req: &Req,
    op: Operation,
    resource: ResourceType,
    name: &str,
) -> Result<(), ApiError> {
    if check(shard, req, op, resource, name) {
        return Ok(());
    }
    let who = principal(req);
    crate::security::audit::acl_denied(Protocol::Http, op.name(), resource.name(), || {
        format!(
            "HTTP: principal {who} denied {} on {} '{name}'",
            op.name(),
            resource.name()
        )
    });
    Err(ApiError::Forbidden(format!(
        "{who} may not {} {} '{name}' (Kafka ACLs: {} on the {} is not allowed)",
        op.name().replace('_', " "),
        resource.name().replace('_', " "),
        op.name().to_ascii_uppercase(),
        resource.name().replace('_', " "),
    )))
}

/// Creating a topic: CREATE on the cluster or on the topic, or 403.
pub fn authorize_create(shard: &Shard, req: &Req, topic: &str) -> Result<(), ApiError> {
    if check(
        shard,
        req,
        Operation::Create,
        ResourceType::Cluster,
        CLUSTER_NAME,
    ) {
        return Ok(());
    }
    authorize(shard, req, Operation::Create, topic)
}

//! The one place Kafka handlers ask the authorizer: `Conn::authorize(op, resource, name)`
//! checks the connection's principal and client address against the ACLs of the
//! configuration and of this shard's catalog replica, counting and logging a refusal
//! (`security::audit::acl_denied`); `Conn::may` is the same check without the audit, for
//! lists a principal sees only part of (Metadata of all topics, ListGroups), which Kafka
//! filters silently. With `acl.enabled = false` both allow everything.
//!
//! Runs on the connection's shard; reads only its catalog replica.

use crate::catalog::security::AclBinding;
use crate::kafka::handlers::Conn;
use crate::metrics::Protocol;
use crate::security::acl::{host_of, Operation, Requester, ResourceType, CLUSTER_NAME};

impl Conn {
    /// Runs `f` with this connection as the authorizer sees it (principal and client
    /// host), the shard's authorizer and its catalog replica.
    fn as_requester<R>(
        &self,
        f: impl FnOnce(&crate::security::acl::Authorizer, &[AclBinding], &Requester) -> R,
    ) -> R {
        let state = self.shard.catalog.current();
        let principal = self.principal.borrow();
        let host = host_of(self.peer.ip());
        let who = Requester {
            principal: &principal,
            host: &host,
        };
        f(&self.shard.acl, &state.security.acls, &who)
    }

    fn check(&self, op: Operation, resource: ResourceType, name: &str, audit: bool) -> bool {
        if !self.shard.acl.enabled() {
            return true;
        }
        let allowed = self.as_requester(|acl, acls, who| {
            let allowed = acl.authorize(acls, who, op, resource, name);
            if !allowed && audit {
                let (principal, host) = (who.principal, who.host);
                crate::security::audit::acl_denied(
                    Protocol::Kafka,
                    op.name(),
                    resource.name(),
                    || {
                        format!(
                            "Kafka: principal {principal} from {host} denied {} on {} '{name}'",
                            op.name(),
                            resource.name()
                        )
                    },
                );
            }
            allowed
        });
        allowed
    }

    /// Whether this connection may perform `op` on the resource; a refusal is counted in
    /// `portask_acl_denials_total` and logged (rate limited).
    pub fn authorize(&self, op: Operation, resource: ResourceType, name: &str) -> bool {
        self.check(op, resource, name, true)
    }

    /// `authorize` on the cluster resource.
    pub fn authorize_cluster(&self, op: Operation) -> bool {
        self.check(op, ResourceType::Cluster, CLUSTER_NAME, true)
    }

    /// `authorize` without counting or logging a refusal.
    pub fn may(&self, op: Operation, resource: ResourceType, name: &str) -> bool {
        self.check(op, resource, name, false)
    }

    /// Whether this connection may perform `op` on some resource of the type (Kafka's
    /// `authorizeByResourceType`); not audited, as Kafka does not log it either.
    pub fn may_any(&self, op: Operation, resource: ResourceType) -> bool {
        if !self.shard.acl.enabled() {
            return true;
        }
        self.as_requester(|acl, acls, who| acl.authorize_any(acls, who, op, resource))
    }

    /// The check of a config resource (DescribeConfigs, AlterConfigs,
    /// IncrementalAlterConfigs): `op` on the topic (config resource type 2) or on the
    /// cluster (a broker, 4, or broker logger, 8); the refusal's error code (other types are
    /// left to the config layer, which refuses them).
    pub fn authorize_config(
        &self,
        op: Operation,
        resource_type: i8,
        name: &str,
    ) -> Result<(), i16> {
        match resource_type {
            2 if !self.authorize(op, ResourceType::Topic, name) => Err(topic_denied()),
            4 | 8 if !self.authorize_cluster(op) => Err(cluster_denied()),
            _ => Ok(()),
        }
    }

    /// Kafka's authorized-operations bit field of a resource for this connection.
    pub fn authorized_operations(&self, resource: ResourceType, name: &str) -> i32 {
        self.as_requester(|acl, acls, who| acl.authorized_operations(acls, who, resource, name))
    }

    /// `authorize(op, Topic, name)` for each of a request's topics, in order.
    pub fn authorize_topics<'a>(
        &self,
        op: Operation,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Vec<bool> {
        names
            .into_iter()
            .map(|name| self.authorize(op, ResourceType::Topic, name))
            .collect()
    }
}

/// What `f` makes of each of `items` that `allowed` (from `Conn::authorize_topics`, in the
/// same order) lets through: the topics a handler asks their owners about.
pub fn only_allowed<'a, T, W>(
    items: &'a [T],
    allowed: &'a [bool],
    f: impl FnMut(&'a T) -> W + 'a,
) -> impl Iterator<Item = W> + 'a {
    items
        .iter()
        .zip(allowed)
        .filter(|(_, a)| **a)
        .map(|(t, _)| t)
        .map(f)
}

/// TOPIC_AUTHORIZATION_FAILED (29).
pub fn topic_denied() -> i16 {
    kafka_protocol::ResponseError::TopicAuthorizationFailed.code()
}

/// GROUP_AUTHORIZATION_FAILED (30).
pub fn group_denied() -> i16 {
    kafka_protocol::ResponseError::GroupAuthorizationFailed.code()
}

/// CLUSTER_AUTHORIZATION_FAILED (31).
pub fn cluster_denied() -> i16 {
    kafka_protocol::ResponseError::ClusterAuthorizationFailed.code()
}

/// TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53).
pub fn transactional_id_denied() -> i16 {
    kafka_protocol::ResponseError::TransactionalIdAuthorizationFailed.code()
}

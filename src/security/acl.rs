//! Kafka's authorizer (`AclAuthorizer` / `StandardAuthorizer` semantics): may a principal,
//! connected from a host, perform an operation on a resource, given the ACL bindings of
//! the catalog (CreateAcls) and of the configuration (`[[acl.bindings]]`)?
//!
//! - a binding's resource pattern matches a resource of its type when it is LITERAL with the
//!   same name or the wildcard `*`, or PREFIXED with a prefix of the name;
//! - its entry matches when its principal is the one asking or `User:*`, and its host the
//!   client's address or `*`;
//! - a matching DENY for the operation (or ALL) refuses, whatever allows it;
//! - else a matching ALLOW for the operation, ALL, or an operation that implies it (READ,
//!   WRITE, DELETE and ALTER imply DESCRIBE; ALTER_CONFIGS implies DESCRIBE_CONFIGS) allows;
//! - `acl.super_users` may do everything; a resource no binding matches at all is open to
//!   everyone only with `acl.allow_everyone_if_no_acl_found`;
//! - with `acl.enabled = false` (a Kafka without an authorizer) everything is allowed.
//!
//! Pure: the bindings are passed in, nothing is counted or logged here (the protocol layers
//! do that through `security::audit`). Built once per shard from the configuration
//! (`Shard::acl`) and called on whichever shard holds the connection.

use std::net::IpAddr;

use crate::catalog::security::AclBinding;
use crate::config::{AclBindingConfig, AclConfig};
use crate::security::Principal;

/// The cluster resource's one name.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// The resource name (LITERAL) and host matching every one.
pub const WILDCARD: &str = "*";
/// The principal matching every one.
pub const WILDCARD_PRINCIPAL: &str = "User:*";

/// Kafka's `PatternType` codes.
pub mod pattern {
    pub const UNKNOWN: i8 = 0;
    pub const ANY: i8 = 1;
    pub const MATCH: i8 = 2;
    pub const LITERAL: i8 = 3;
    pub const PREFIXED: i8 = 4;
}

/// Kafka's `AclPermissionType` codes.
pub mod permission {
    pub const UNKNOWN: i8 = 0;
    pub const ANY: i8 = 1;
    pub const DENY: i8 = 2;
    pub const ALLOW: i8 = 3;
}

/// Kafka's `AclOperation` codes (UNKNOWN 0 and ANY 1 exist only in filters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum Operation {
    All = 2,
    Read = 3,
    Write = 4,
    Create = 5,
    Delete = 6,
    Alter = 7,
    Describe = 8,
    ClusterAction = 9,
    DescribeConfigs = 10,
    AlterConfigs = 11,
    IdempotentWrite = 12,
}

const OPERATIONS: [Operation; 11] = [
    Operation::All,
    Operation::Read,
    Operation::Write,
    Operation::Create,
    Operation::Delete,
    Operation::Alter,
    Operation::Describe,
    Operation::ClusterAction,
    Operation::DescribeConfigs,
    Operation::AlterConfigs,
    Operation::IdempotentWrite,
];

impl Operation {
    pub fn code(self) -> i8 {
        self as i8
    }

    pub fn from_code(code: i8) -> Option<Operation> {
        OPERATIONS.iter().copied().find(|o| o.code() == code)
    }

    /// The name in the configuration and in metric labels (`kafka-acls.sh` words).
    pub fn name(self) -> &'static str {
        match self {
            Operation::All => "all",
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Alter => "alter",
            Operation::Describe => "describe",
            Operation::ClusterAction => "cluster_action",
            Operation::DescribeConfigs => "describe_configs",
            Operation::AlterConfigs => "alter_configs",
            Operation::IdempotentWrite => "idempotent_write",
        }
    }

    pub fn parse(word: &str) -> Option<Operation> {
        let word = word.to_ascii_lowercase().replace('-', "_");
        OPERATIONS.iter().copied().find(|o| o.name() == word)
    }

    /// The operations whose ALLOW also allows this one (besides ALL and itself).
    fn implied_by(self) -> &'static [Operation] {
        match self {
            Operation::Describe => &[
                Operation::Read,
                Operation::Write,
                Operation::Delete,
                Operation::Alter,
            ],
            Operation::DescribeConfigs => &[Operation::AlterConfigs],
            _ => &[],
        }
    }
}

/// Kafka's `ResourceType` codes of the resources this broker authorizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum ResourceType {
    Topic = 2,
    Group = 3,
    Cluster = 4,
    TransactionalId = 5,
}

impl ResourceType {
    pub fn code(self) -> i8 {
        self as i8
    }

    /// The name in the configuration and in metric labels.
    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Topic => "topic",
            ResourceType::Group => "group",
            ResourceType::Cluster => "cluster",
            ResourceType::TransactionalId => "transactional_id",
        }
    }

    pub fn parse(word: &str) -> Option<ResourceType> {
        let word = word.to_ascii_lowercase().replace('-', "_");
        [
            ResourceType::Topic,
            ResourceType::Group,
            ResourceType::Cluster,
            ResourceType::TransactionalId,
        ]
        .into_iter()
        .find(|r| r.name() == word)
    }

    /// The operations Kafka defines on this resource type, for authorized-operation fields.
    pub fn operations(self) -> &'static [Operation] {
        use Operation::*;
        match self {
            ResourceType::Topic => &[
                Read,
                Write,
                Create,
                Delete,
                Alter,
                Describe,
                DescribeConfigs,
                AlterConfigs,
            ],
            ResourceType::Group => &[Read, Describe, Delete],
            ResourceType::Cluster => &[
                Create,
                Alter,
                Describe,
                ClusterAction,
                DescribeConfigs,
                AlterConfigs,
                IdempotentWrite,
            ],
            ResourceType::TransactionalId => &[Write, Describe],
        }
    }
}

/// A client's address as ACL hosts name it (an IPv4 client seen through an IPv6 socket is
/// its IPv4 address).
pub fn host_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        v4 => v4.to_string(),
    }
}

/// Who asks, from where.
pub struct Requester<'a> {
    pub principal: &'a Principal,
    pub host: &'a str,
}

/// The authorizer of one shard: the configuration's part of the ACLs, parsed once.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    enabled: bool,
    super_users: Vec<String>,
    allow_if_no_acl: bool,
    configured: Vec<AclBinding>,
}

/// A configured binding in Kafka's codes, one per operation (the configuration was
/// validated at startup; an unknown word is skipped).
fn from_config(b: &AclBindingConfig) -> Vec<AclBinding> {
    let Some(resource) = ResourceType::parse(&b.resource_type) else {
        return Vec::new();
    };
    let name = match (resource, b.resource_name.as_str()) {
        (ResourceType::Cluster, "") => CLUSTER_NAME.to_owned(),
        (_, n) => n.to_owned(),
    };
    let pattern_type = if b.pattern_type.eq_ignore_ascii_case("prefixed") {
        pattern::PREFIXED
    } else {
        pattern::LITERAL
    };
    let permission_type = if b.permission.eq_ignore_ascii_case("deny") {
        permission::DENY
    } else {
        permission::ALLOW
    };
    b.operations
        .iter()
        .filter_map(|o| Operation::parse(o))
        .map(|op| AclBinding {
            resource_type: resource.code(),
            resource_name: name.clone(),
            pattern_type,
            principal: b.principal.clone(),
            host: b.host.clone(),
            operation: op.code(),
            permission_type,
        })
        .collect()
}

/// Whether `b`'s resource pattern covers the resource `(resource, name)`.
fn covers(b: &AclBinding, resource: ResourceType, name: &str) -> bool {
    b.resource_type == resource.code()
        && match b.pattern_type {
            pattern::LITERAL => b.resource_name == name || b.resource_name == WILDCARD,
            pattern::PREFIXED => name.starts_with(b.resource_name.as_str()),
            _ => false,
        }
}

/// Whether `b`'s entry is about this requester.
fn about(b: &AclBinding, principal: &str, host: &str) -> bool {
    (b.principal == principal || b.principal == WILDCARD_PRINCIPAL)
        && (b.host == host || b.host == WILDCARD)
}

/// Whether `b` grants (or, for a DENY, refuses) `op`.
fn grants(b: &AclBinding, op: Operation) -> bool {
    b.operation == op.code()
        || b.operation == Operation::All.code()
        || (b.permission_type == permission::ALLOW
            && op.implied_by().iter().any(|i| i.code() == b.operation))
}

impl Authorizer {
    pub fn new(config: &AclConfig) -> Authorizer {
        let mut configured: Vec<AclBinding> =
            config.bindings.iter().flat_map(from_config).collect();
        configured.sort();
        configured.dedup();
        Authorizer {
            enabled: config.enabled,
            super_users: config.super_users.clone(),
            allow_if_no_acl: config.allow_everyone_if_no_acl_found,
            configured,
        }
    }

    /// ACLs are enforced (`acl.enabled`): Kafka with an authorizer configured.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The bindings of the configuration (listed by DescribeAcls, never deleted).
    pub fn configured(&self) -> &[AclBinding] {
        &self.configured
    }

    fn super_user(&self, principal: &str) -> bool {
        self.super_users.iter().any(|s| s == principal)
    }

    /// May `who` perform `op` on `(resource, name)`, given the catalog's bindings `stored`?
    pub fn authorize(
        &self,
        stored: &[AclBinding],
        who: &Requester<'_>,
        op: Operation,
        resource: ResourceType,
        name: &str,
    ) -> bool {
        if !self.enabled {
            return true;
        }
        let principal = who.principal.to_string();
        if self.super_user(&principal) {
            return true;
        }
        let mut matching = self
            .configured
            .iter()
            .chain(stored)
            .filter(|b| covers(b, resource, name))
            .peekable();
        if matching.peek().is_none() {
            return self.allow_if_no_acl;
        }
        let mut allowed = false;
        for b in matching.filter(|b| about(b, &principal, who.host) && grants(b, op)) {
            match b.permission_type {
                permission::DENY => return false,
                permission::ALLOW => allowed = true,
                _ => {}
            }
        }
        allowed
    }

    /// May `who` perform `op` on at least one resource of type `resource` (Kafka's
    /// `authorizeByResourceType`, for an idempotent producer: WRITE on any topic)? A
    /// grant counts unless a DENY covers everything it grants.
    pub fn authorize_any(
        &self,
        stored: &[AclBinding],
        who: &Requester<'_>,
        op: Operation,
        resource: ResourceType,
    ) -> bool {
        if !self.enabled {
            return true;
        }
        let principal = who.principal.to_string();
        if self.super_user(&principal) {
            return true;
        }
        let of_type: Vec<&AclBinding> = self
            .configured
            .iter()
            .chain(stored)
            .filter(|b| b.resource_type == resource.code())
            .collect();
        if of_type.is_empty() {
            return self.allow_if_no_acl;
        }
        let mine = || {
            of_type
                .iter()
                .copied()
                .filter(|b| about(b, &principal, who.host) && grants(b, op))
        };
        let denies: Vec<&AclBinding> = mine()
            .filter(|b| b.permission_type == permission::DENY)
            .collect();
        // Whether a DENY covers every name the ALLOW `a` grants.
        let denied = |a: &AclBinding| {
            denies
                .iter()
                .any(|d| match (d.pattern_type, a.pattern_type) {
                    (pattern::LITERAL, _) if d.resource_name == WILDCARD => true,
                    (pattern::LITERAL, pattern::LITERAL) => d.resource_name == a.resource_name,
                    (pattern::PREFIXED, _) => a.resource_name.starts_with(d.resource_name.as_str()),
                    _ => false,
                })
        };
        mine().any(|a| a.permission_type == permission::ALLOW && !denied(a))
    }

    /// Kafka's authorized-operations bit field of a resource (bit n = operation code n) for
    /// `who`: the operations of the resource type it may perform.
    pub fn authorized_operations(
        &self,
        stored: &[AclBinding],
        who: &Requester<'_>,
        resource: ResourceType,
        name: &str,
    ) -> i32 {
        resource
            .operations()
            .iter()
            .filter(|op| self.authorize(stored, who, **op, resource, name))
            .fold(0, |bits, op| bits | (1 << op.code()))
    }
}

/// A binding as CreateAcls may add it, checked as Kafka checks one: a known resource type,
/// LITERAL or PREFIXED, an operation and a permission (not UNKNOWN or ANY), a non-empty
/// resource name (`kafka-cluster` for the cluster) and a principal like `User:alice`.
pub fn validate_new(b: &AclBinding) -> Result<(), String> {
    if !(2..=7).contains(&b.resource_type) {
        return Err(format!("Invalid resourceType {}", b.resource_type));
    }
    if !matches!(b.pattern_type, pattern::LITERAL | pattern::PREFIXED) {
        return Err(format!("Invalid patternType {}", b.pattern_type));
    }
    if !(2..=14).contains(&b.operation) {
        return Err(format!("Invalid operation {}", b.operation));
    }
    if !matches!(b.permission_type, permission::DENY | permission::ALLOW) {
        return Err(format!("Invalid permissionType {}", b.permission_type));
    }
    if b.resource_name.is_empty() {
        return Err("Invalid empty resource name".into());
    }
    if b.resource_type == ResourceType::Cluster.code() && b.resource_name != CLUSTER_NAME {
        return Err(format!(
            "The only valid name for the CLUSTER resource is {CLUSTER_NAME}"
        ));
    }
    if Principal::parse(&b.principal).is_none() {
        return Err(format!("Could not parse principal from `{}`", b.principal));
    }
    if b.host.is_empty() {
        return Err("Invalid empty host".into());
    }
    Ok(())
}

/// A filter of DescribeAcls and DeleteAcls (Kafka's `AclBindingFilter`): ANY (1) matches
/// every value of a code field, a null string field every string; the pattern type MATCH
/// (2) with a name matches the bindings that would apply to that resource (the literal
/// name, the wildcard `*`, prefixes of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFilter {
    pub resource_type: i8,
    pub resource_name: Option<String>,
    pub pattern_type: i8,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: i8,
    pub permission_type: i8,
}

impl AclFilter {
    /// Kafka refuses a filter holding UNKNOWN (or unheard-of) codes.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=7).contains(&self.resource_type) {
            return Err(format!(
                "Invalid resourceType filter {}",
                self.resource_type
            ));
        }
        if !(1..=4).contains(&self.pattern_type) {
            return Err(format!("Invalid patternType filter {}", self.pattern_type));
        }
        if !(1..=14).contains(&self.operation) {
            return Err(format!("Invalid operation filter {}", self.operation));
        }
        if !(1..=3).contains(&self.permission_type) {
            return Err(format!(
                "Invalid permissionType filter {}",
                self.permission_type
            ));
        }
        Ok(())
    }

    pub fn matches(&self, b: &AclBinding) -> bool {
        let code = |filter: i8, value: i8| filter == 1 || filter == value;
        let text =
            |filter: &Option<String>, value: &str| filter.as_deref().is_none_or(|f| f == value);
        let pattern_ok = match self.pattern_type {
            pattern::ANY | pattern::MATCH => true,
            p => p == b.pattern_type,
        };
        let name_ok = match (&self.resource_name, self.pattern_type) {
            (None, _) => true,
            (Some(n), pattern::MATCH) => match b.pattern_type {
                pattern::LITERAL => b.resource_name == *n || b.resource_name == WILDCARD,
                pattern::PREFIXED => n.starts_with(b.resource_name.as_str()),
                _ => false,
            },
            (Some(n), _) => b.resource_name == *n,
        };
        code(self.resource_type, b.resource_type)
            && pattern_ok
            && name_ok
            && text(&self.principal, &b.principal)
            && text(&self.host, &b.host)
            && code(self.operation, b.operation)
            && code(self.permission_type, b.permission_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(
        resource: ResourceType,
        name: &str,
        pattern_type: i8,
        principal: &str,
        op: Operation,
        permission_type: i8,
    ) -> AclBinding {
        AclBinding {
            resource_type: resource.code(),
            resource_name: name.into(),
            pattern_type,
            principal: principal.into(),
            host: WILDCARD.into(),
            operation: op.code(),
            permission_type,
        }
    }

    fn allow(resource: ResourceType, name: &str, principal: &str, op: Operation) -> AclBinding {
        binding(
            resource,
            name,
            pattern::LITERAL,
            principal,
            op,
            permission::ALLOW,
        )
    }

    fn enabled() -> Authorizer {
        Authorizer::new(&AclConfig {
            enabled: true,
            ..AclConfig::default()
        })
    }

    fn may(
        a: &Authorizer,
        acls: &[AclBinding],
        user: &str,
        op: Operation,
        resource: ResourceType,
        name: &str,
    ) -> bool {
        let p = Principal::user(user);
        let who = Requester {
            principal: &p,
            host: "10.0.0.1",
        };
        a.authorize(acls, &who, op, resource, name)
    }

    use Operation::*;
    use ResourceType::*;

    #[test]
    fn without_an_authorizer_everything_is_allowed() {
        let a = Authorizer::new(&AclConfig::default());
        let deny = binding(
            Topic,
            "t",
            pattern::LITERAL,
            "User:*",
            All,
            permission::DENY,
        );
        assert!(may(&a, &[deny], "bob", Write, Topic, "t"));
        assert!(may(&a, &[], "bob", Alter, Cluster, CLUSTER_NAME));
    }

    #[test]
    fn literal_wildcard_and_prefixed_patterns() {
        let a = enabled();
        let acls = vec![
            allow(Topic, "orders", "User:alice", Read),
            allow(Topic, "*", "User:carol", Write),
            binding(
                Topic,
                "alice.",
                pattern::PREFIXED,
                "User:alice",
                Write,
                permission::ALLOW,
            ),
        ];
        assert!(may(&a, &acls, "alice", Read, Topic, "orders"));
        assert!(!may(&a, &acls, "alice", Read, Topic, "orders2"));
        assert!(may(&a, &acls, "alice", Write, Topic, "alice.events"));
        assert!(!may(&a, &acls, "alice", Write, Topic, "alic"));
        assert!(may(&a, &acls, "carol", Write, Topic, "anything"));
        // The type must match: a topic ACL says nothing about a group of the same name.
        assert!(!may(&a, &acls, "alice", Read, Group, "orders"));
        assert!(!may(&a, &acls, "bob", Read, Topic, "orders"));
    }

    #[test]
    fn deny_beats_allow_and_wildcard_principals_and_hosts_match() {
        let a = enabled();
        let mut acls = vec![
            allow(Topic, "t", "User:*", All),
            binding(
                Topic,
                "t",
                pattern::LITERAL,
                "User:bob",
                Write,
                permission::DENY,
            ),
        ];
        assert!(may(&a, &acls, "alice", Write, Topic, "t"));
        assert!(!may(&a, &acls, "bob", Write, Topic, "t"));
        // A DENY of WRITE does not refuse what WRITE would imply.
        assert!(may(&a, &acls, "bob", Describe, Topic, "t"));
        // A host-bound DENY refuses only that host.
        acls.push(AclBinding {
            host: "10.0.0.2".into(),
            ..binding(
                Topic,
                "t",
                pattern::LITERAL,
                "User:alice",
                All,
                permission::DENY,
            )
        });
        assert!(may(&a, &acls, "alice", Write, Topic, "t"));
        acls.push(AclBinding {
            host: "10.0.0.1".into(),
            ..binding(
                Topic,
                "t",
                pattern::LITERAL,
                "User:alice",
                All,
                permission::DENY,
            )
        });
        assert!(!may(&a, &acls, "alice", Read, Topic, "t"));
    }

    #[test]
    fn implied_operations() {
        let a = enabled();
        for op in [Read, Write, Delete, Alter] {
            let acls = [allow(Topic, "t", "User:u", op)];
            assert!(may(&a, &acls, "u", Describe, Topic, "t"), "{op:?}");
            assert!(!may(&a, &acls, "u", Create, Topic, "t"), "{op:?}");
        }
        let acls = [allow(Topic, "t", "User:u", AlterConfigs)];
        assert!(may(&a, &acls, "u", DescribeConfigs, Topic, "t"));
        assert!(!may(&a, &acls, "u", Describe, Topic, "t"));
        let acls = [allow(Topic, "t", "User:u", Describe)];
        assert!(!may(&a, &acls, "u", Read, Topic, "t"));
    }

    #[test]
    fn super_users_and_no_acl_found() {
        let deny_all = binding(
            Topic,
            "*",
            pattern::LITERAL,
            "User:*",
            All,
            permission::DENY,
        );
        let a = Authorizer::new(&AclConfig {
            enabled: true,
            super_users: vec!["User:admin".into()],
            ..AclConfig::default()
        });
        assert!(may(
            &a,
            std::slice::from_ref(&deny_all),
            "admin",
            Delete,
            Topic,
            "t"
        ));
        assert!(!may(&a, &[], "bob", Read, Topic, "t"));
        let open = Authorizer::new(&AclConfig {
            enabled: true,
            allow_everyone_if_no_acl_found: true,
            ..AclConfig::default()
        });
        assert!(may(&open, &[], "bob", Read, Topic, "t"));
        // Any binding on the resource, even for someone else, closes it.
        let other = allow(Topic, "t", "User:alice", Read);
        assert!(!may(
            &open,
            std::slice::from_ref(&other),
            "bob",
            Read,
            Topic,
            "t"
        ));
        assert!(may(&open, &[other], "bob", Read, Topic, "u"));
    }

    #[test]
    fn configured_bindings_count_like_stored_ones() {
        let a = Authorizer::new(&AclConfig {
            enabled: true,
            bindings: vec![AclBindingConfig {
                resource_type: "cluster".into(),
                resource_name: String::new(),
                pattern_type: "literal".into(),
                principal: "User:ops".into(),
                host: "*".into(),
                operations: vec!["alter".into(), "describe".into()],
                permission: "allow".into(),
            }],
            ..AclConfig::default()
        });
        assert_eq!(a.configured().len(), 2);
        assert!(may(&a, &[], "ops", Alter, Cluster, CLUSTER_NAME));
        assert!(!may(&a, &[], "ops", Create, Cluster, CLUSTER_NAME));
    }

    #[test]
    fn by_resource_type_and_authorized_operations() {
        let a = enabled();
        let p = Principal::user("u");
        let who = Requester {
            principal: &p,
            host: "10.0.0.1",
        };
        let acls = vec![binding(
            Topic,
            "u.",
            pattern::PREFIXED,
            "User:u",
            Write,
            permission::ALLOW,
        )];
        assert!(a.authorize_any(&acls, &who, Write, Topic));
        assert!(!a.authorize_any(&acls, &who, Read, Topic));
        let mut denied = acls.clone();
        denied.push(binding(
            Topic,
            "u",
            pattern::PREFIXED,
            "User:u",
            Write,
            permission::DENY,
        ));
        assert!(!a.authorize_any(&denied, &who, Write, Topic));
        let bits = a.authorized_operations(&acls, &who, Topic, "u.x");
        assert_eq!(bits, (1 << 4) | (1 << 8));
        assert_eq!(a.authorized_operations(&acls, &who, Topic, "v"), 0);
        let all = Authorizer::default().authorized_operations(&[], &who, Group, "g");
        assert_eq!(all, (1 << 3) | (1 << 6) | (1 << 8));
    }

    #[test]
    fn filters_match_as_kafka_admin_clients_expect() {
        let lit = allow(Topic, "orders", "User:alice", Read);
        let star = allow(Topic, "*", "User:bob", Write);
        let pre = binding(
            Topic,
            "ord",
            pattern::PREFIXED,
            "User:carol",
            Read,
            permission::DENY,
        );
        let all = [lit.clone(), star.clone(), pre.clone()];
        let filter = |name: Option<&str>, pattern_type| AclFilter {
            resource_type: 1,
            resource_name: name.map(String::from),
            pattern_type,
            principal: None,
            host: None,
            operation: 1,
            permission_type: 1,
        };
        let hits = |f: &AclFilter| all.iter().filter(|b| f.matches(b)).count();
        assert_eq!(hits(&filter(None, pattern::ANY)), 3);
        assert_eq!(hits(&filter(None, pattern::PREFIXED)), 1);
        assert_eq!(hits(&filter(Some("orders"), pattern::LITERAL)), 1);
        assert_eq!(hits(&filter(Some("orders"), pattern::ANY)), 1);
        assert_eq!(hits(&filter(Some("orders"), pattern::MATCH)), 3);
        assert_eq!(hits(&filter(Some("other"), pattern::MATCH)), 1);
        let mut f = filter(None, pattern::ANY);
        f.permission_type = permission::DENY;
        assert_eq!(hits(&f), 1);
        f.principal = Some("User:alice".into());
        assert_eq!(hits(&f), 0);
        assert!(filter(None, pattern::UNKNOWN).validate().is_err());
        assert!(AclFilter {
            operation: 0,
            ..filter(None, 1)
        }
        .validate()
        .is_err());
        assert!(filter(None, pattern::MATCH).validate().is_ok());
    }

    #[test]
    fn new_bindings_are_checked_as_kafka_checks_them() {
        let ok = allow(Topic, "t", "User:alice", Read);
        assert!(validate_new(&ok).is_ok());
        let bad = |b: AclBinding| validate_new(&b).is_err();
        assert!(bad(AclBinding {
            resource_type: 1,
            ..ok.clone()
        }));
        assert!(bad(AclBinding {
            pattern_type: pattern::MATCH,
            ..ok.clone()
        }));
        assert!(bad(AclBinding {
            operation: 1,
            ..ok.clone()
        }));
        assert!(bad(AclBinding {
            permission_type: permission::ANY,
            ..ok.clone()
        }));
        assert!(bad(AclBinding {
            resource_name: String::new(),
            ..ok.clone()
        }));
        assert!(bad(AclBinding {
            principal: "alice".into(),
            ..ok.clone()
        }));
        assert!(bad(allow(Cluster, "c", "User:a", Alter)));
        assert!(validate_new(&allow(Cluster, CLUSTER_NAME, "User:a", Alter)).is_ok());
    }

    #[test]
    fn ipv4_clients_on_ipv6_sockets_are_their_ipv4_address() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(host_of(mapped), "10.1.2.3");
        assert_eq!(host_of("::1".parse().unwrap()), "::1");
    }
}

//! DescribeAcls (key 29), v0–v3 (v0 through `legacy`, literal patterns only): the ACL
//! bindings a filter matches (`security::acl::
//! AclFilter`: ANY, MATCH, literal and prefixed patterns), grouped by resource pattern;
//! those of the configuration (`[[acl.bindings]]`) with the catalog's. Needs DESCRIBE on
//! the cluster (CLUSTER_AUTHORIZATION_FAILED); SECURITY_DISABLED without an authorizer;
//! INVALID_REQUEST for a filter with UNKNOWN codes.
//!
//! Runs on the connection's shard from its catalog replica.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{DescribeAclsRequest, DescribeAclsResponse};
use kafka_protocol::ResponseError;

use super::create_acls::DISABLED;
use super::details::authorize::cluster_denied;
use super::{frame, ready, str_bytes, Conn, Pending};
use crate::catalog::security::AclBinding;
use crate::security::acl::{AclFilter, Operation};

pub fn handle(
    conn: &Rc<Conn>,
    req: DescribeAclsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    let filter = AclFilter {
        resource_type: req.resource_type_filter,
        resource_name: req.resource_name_filter.map(|n| n.to_string()),
        pattern_type: req.pattern_type_filter,
        principal: req.principal_filter.map(|p| p.to_string()),
        host: req.host_filter.map(|h| h.to_string()),
        operation: req.operation,
        permission_type: req.permission_type,
    };
    let error = |code: i16, message: String| {
        DescribeAclsResponse::default()
            .with_error_code(code)
            .with_error_message(Some(str_bytes(message)))
    };
    let resp = if !conn.shard.acl.enabled() {
        error(ResponseError::SecurityDisabled.code(), DISABLED.into())
    } else if !conn.authorize_cluster(Operation::Describe) {
        error(
            cluster_denied(),
            "DescribeAcls needs DESCRIBE on the cluster".into(),
        )
    } else if let Err(why) = filter.validate() {
        error(ResponseError::InvalidRequest.code(), why)
    } else {
        let state = conn.shard.catalog.current();
        let mut by_pattern: BTreeMap<(i8, &str, i8), Vec<&AclBinding>> = BTreeMap::new();
        for b in conn
            .shard
            .acl
            .configured()
            .iter()
            .chain(&state.security.acls)
        {
            if filter.matches(b) {
                let acls = by_pattern
                    .entry((b.resource_type, &b.resource_name, b.pattern_type))
                    .or_default();
                if !acls.contains(&b) {
                    acls.push(b);
                }
            }
        }
        let resources = by_pattern
            .into_iter()
            .map(|((resource_type, name, pattern_type), acls)| {
                DescribeAclsResource::default()
                    .with_resource_type(resource_type)
                    .with_resource_name(str_bytes(name))
                    .with_pattern_type(pattern_type)
                    .with_acls(
                        acls.into_iter()
                            .map(|b| {
                                AclDescription::default()
                                    .with_principal(str_bytes(b.principal.clone()))
                                    .with_host(str_bytes(b.host.clone()))
                                    .with_operation(b.operation)
                                    .with_permission_type(b.permission_type)
                            })
                            .collect(),
                    )
            })
            .collect();
        DescribeAclsResponse::default().with_resources(resources)
    };
    ready(frame(correlation_id, version, &resp))
}

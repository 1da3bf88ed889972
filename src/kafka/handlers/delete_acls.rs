//! DeleteAcls (key 31), v0–v3 (v0 through `legacy`, literal patterns only): remove the
//! ACL bindings each filter matches
//! (`security::acl::AclFilter`) and return them per filter. Only bindings created with
//! CreateAcls (the catalog's) are removed; those of the configuration stay (change the
//! file instead). Needs ALTER on the cluster (CLUSTER_AUTHORIZATION_FAILED); every filter
//! gets SECURITY_DISABLED without an authorizer, INVALID_REQUEST when it holds UNKNOWN
//! codes.
//!
//! Runs on the connection's shard: the filters are resolved against its catalog replica
//! to exact bindings, which go to shard 0's catalog writer as one `Change::Security`.

use std::rc::Rc;

use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::{DeleteAclsRequest, DeleteAclsResponse};
use kafka_protocol::ResponseError;

use super::create_acls::DISABLED;
use super::details::authorize::cluster_denied;
use super::{deferred, frame, str_bytes, Conn, Pending};
use crate::catalog::security::{AclBinding, SecurityChange};
use crate::catalog::Change;
use crate::kafka::catalog_error_code;
use crate::security::acl::{AclFilter, Operation};

fn refused(code: i16, message: impl Into<String>) -> DeleteAclsFilterResult {
    DeleteAclsFilterResult::default()
        .with_error_code(code)
        .with_error_message(Some(str_bytes(message)))
}

fn matching(b: &AclBinding) -> DeleteAclsMatchingAcl {
    DeleteAclsMatchingAcl::default()
        .with_resource_type(b.resource_type)
        .with_resource_name(str_bytes(b.resource_name.clone()))
        .with_pattern_type(b.pattern_type)
        .with_principal(str_bytes(b.principal.clone()))
        .with_host(str_bytes(b.host.clone()))
        .with_operation(b.operation)
        .with_permission_type(b.permission_type)
}

pub fn handle(
    conn: &Rc<Conn>,
    req: DeleteAclsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let n = req.filters.len();
        let results = if !conn.shard.acl.enabled() {
            vec![refused(ResponseError::SecurityDisabled.code(), DISABLED); n]
        } else if !conn.authorize_cluster(Operation::Alter) {
            vec![refused(cluster_denied(), "DeleteAcls needs ALTER on the cluster"); n]
        } else {
            let state = conn.shard.catalog.current();
            let mut results = Vec::with_capacity(n);
            // Per filter: the bindings it removes (None: the filter was refused).
            let mut removed: Vec<Option<Vec<AclBinding>>> = Vec::with_capacity(n);
            let mut all: Vec<AclBinding> = Vec::new();
            for f in req.filters {
                let filter = AclFilter {
                    resource_type: f.resource_type_filter,
                    resource_name: f.resource_name_filter.map(|n| n.to_string()),
                    pattern_type: f.pattern_type_filter,
                    principal: f.principal_filter.map(|p| p.to_string()),
                    host: f.host_filter.map(|h| h.to_string()),
                    operation: f.operation,
                    permission_type: f.permission_type,
                };
                match filter.validate() {
                    Err(why) => {
                        results.push(refused(ResponseError::InvalidRequest.code(), why));
                        removed.push(None);
                    }
                    Ok(()) => {
                        let hits: Vec<AclBinding> = state
                            .security
                            .acls
                            .iter()
                            .filter(|b| filter.matches(b))
                            .cloned()
                            .collect();
                        for b in &hits {
                            if !all.contains(b) {
                                all.push(b.clone());
                            }
                        }
                        results.push(DeleteAclsFilterResult::default());
                        removed.push(Some(hits));
                    }
                }
            }
            let failure = if all.is_empty() {
                None
            } else {
                let change = Change::Security(Box::new(SecurityChange::RemoveAcls(all)));
                match conn.shard.change_catalog(vec![change], false).await.pop() {
                    Some(Err(e)) => Some(e),
                    _ => None,
                }
            };
            for (r, hits) in results.iter_mut().zip(removed) {
                let Some(hits) = hits else { continue };
                match &failure {
                    Some(e) if !hits.is_empty() => {
                        *r = refused(catalog_error_code(e), e.to_string());
                    }
                    _ => r.matching_acls = hits.iter().map(matching).collect(),
                }
            }
            results
        };
        frame(
            correlation_id,
            version,
            &DeleteAclsResponse::default().with_filter_results(results),
        )
    })
}

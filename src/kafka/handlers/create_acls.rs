//! CreateAcls (key 30), v0–v3 (v0, gone from Kafka 4, decoded by `legacy`): add ACL
//! bindings.
//! Needs ALTER on the cluster (CLUSTER_AUTHORIZATION_FAILED); without an authorizer
//! (`acl.enabled = false`) every creation gets SECURITY_DISABLED, as Kafka answers. Each
//! creation is checked as Kafka checks it (`security::acl::validate_new`, INVALID_REQUEST
//! with the reason); the valid ones are stored together.
//!
//! Runs on the connection's shard; the bindings go to shard 0's catalog writer
//! (`Change::Security`) and the answer waits until this shard has the new version.

use std::rc::Rc;

use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::{CreateAclsRequest, CreateAclsResponse};
use kafka_protocol::ResponseError;

use super::details::authorize::cluster_denied;
use super::{deferred, frame, str_bytes, Conn, Pending};
use crate::catalog::security::{AclBinding, SecurityChange};
use crate::catalog::Change;
use crate::kafka::catalog_error_code;
use crate::security::acl::{validate_new, Operation};

fn refused(code: i16, message: impl Into<String>) -> AclCreationResult {
    AclCreationResult::default()
        .with_error_code(code)
        .with_error_message(Some(str_bytes(message)))
}

pub fn handle(
    conn: &Rc<Conn>,
    req: CreateAclsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let n = req.creations.len();
        let results = if !conn.shard.acl.enabled() {
            vec![refused(ResponseError::SecurityDisabled.code(), DISABLED); n]
        } else if !conn.authorize_cluster(Operation::Alter) {
            vec![refused(cluster_denied(), "CreateAcls needs ALTER on the cluster"); n]
        } else {
            let mut results = Vec::with_capacity(n);
            let mut valid = Vec::new();
            let mut slots = Vec::new();
            for (i, c) in req.creations.into_iter().enumerate() {
                let b = AclBinding {
                    resource_type: c.resource_type,
                    resource_name: c.resource_name.to_string(),
                    pattern_type: c.resource_pattern_type,
                    principal: c.principal.to_string(),
                    host: c.host.to_string(),
                    operation: c.operation,
                    permission_type: c.permission_type,
                };
                match validate_new(&b) {
                    Ok(()) => {
                        valid.push(b);
                        slots.push(i);
                        results.push(AclCreationResult::default());
                    }
                    Err(why) => results.push(refused(ResponseError::InvalidRequest.code(), why)),
                }
            }
            if !valid.is_empty() {
                let change = Change::Security(Box::new(SecurityChange::AddAcls(valid)));
                let outcome = conn.shard.change_catalog(vec![change], false).await.pop();
                if let Some(Err(e)) = outcome {
                    for i in slots {
                        results[i] = refused(catalog_error_code(&e), e.to_string());
                    }
                }
            }
            results
        };
        frame(
            correlation_id,
            version,
            &CreateAclsResponse::default().with_results(results),
        )
    })
}

/// Kafka's words when no authorizer is configured.
pub const DISABLED: &str = "No Authorizer is configured on the broker (acl.enabled = false)";

//! DescribeUserScramCredentials (key 50), v0: each user's SCRAM mechanisms and iteration
//! counts (never a key or salt), from the shard's user store: the configuration's
//! `[[users]]` credentials and those AlterUserScramCredentials stored. A null user list
//! describes every user that has one.
//!
//! Errors per user, as Kafka's: RESOURCE_NOT_FOUND for a user without credentials,
//! DUPLICATE_RESOURCE for a user named twice; CLUSTER_AUTHORIZATION_FAILED for the whole
//! request without DESCRIBE on the cluster (ACLs). Runs on the connection's shard.

use std::collections::HashMap;
use std::rc::Rc;

use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};
use kafka_protocol::ResponseError;

use super::details::authorize::cluster_denied;
use super::{frame, ready, str_bytes, Conn, Pending};
use crate::catalog::security::ScramCredential;
use crate::security::acl::Operation;

fn infos(creds: &[ScramCredential]) -> Vec<CredentialInfo> {
    let mut infos: Vec<CredentialInfo> = creds
        .iter()
        .map(|c| {
            CredentialInfo::default()
                .with_mechanism(c.mechanism)
                .with_iterations(c.iterations.min(i32::MAX as u32) as i32)
        })
        .collect();
    infos.sort_by_key(|i| i.mechanism);
    infos
}

pub fn handle(
    conn: &Rc<Conn>,
    req: DescribeUserScramCredentialsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    // DESCRIBE on the cluster, else CLUSTER_AUTHORIZATION_FAILED for the request (as Kafka).
    if !conn.authorize_cluster(Operation::Describe) {
        let resp = DescribeUserScramCredentialsResponse::default()
            .with_error_code(cluster_denied())
            .with_error_message(Some(str_bytes(
                "DescribeUserScramCredentials needs DESCRIBE on the cluster",
            )));
        return ready(frame(correlation_id, version, &resp));
    }
    let users = conn.shard.users();
    let results = match req.users {
        None => users
            .scram_users()
            .map(|(name, creds)| {
                DescribeUserScramCredentialsResult::default()
                    .with_user(str_bytes(name))
                    .with_credential_infos(infos(creds))
            })
            .collect(),
        Some(wanted) => {
            let names: Vec<String> = wanted.iter().map(|u| u.name.to_string()).collect();
            let mut named: HashMap<&str, usize> = HashMap::new();
            for n in &names {
                *named.entry(n.as_str()).or_default() += 1;
            }
            names
                .iter()
                .map(|name| {
                    let r =
                        DescribeUserScramCredentialsResult::default().with_user(str_bytes(name));
                    let creds = users.scram_credentials(name);
                    if named.get(name.as_str()).is_some_and(|n| *n > 1) {
                        r.with_error_code(ResponseError::DuplicateResource.code())
                            .with_error_message(Some(str_bytes(
                                "Cannot describe SCRAM credentials for the same user twice in \
                                 a single request",
                            )))
                    } else if creds.is_empty() {
                        r.with_error_code(ResponseError::ResourceNotFound.code())
                            .with_error_message(Some(str_bytes(
                                "Attempt to describe a user credential that does not exist",
                            )))
                    } else {
                        r.with_credential_infos(infos(creds))
                    }
                })
                .collect()
        }
    };
    let resp = DescribeUserScramCredentialsResponse::default().with_results(results);
    ready(frame(correlation_id, version, &resp))
}

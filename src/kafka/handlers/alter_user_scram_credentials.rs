//! AlterUserScramCredentials (key 51), v0: sets or deletes users' SCRAM credentials. The
//! client sends the salt, the iteration count and the salted password (never the
//! password); the broker keeps only the stored and server keys made from it, in the
//! catalog (`Change::Security`, through shard 0's writer), so they survive restarts and
//! reach every shard's user store.
//!
//! Validation, per user as Kafka's: UNACCEPTABLE_CREDENTIAL for an empty name or an
//! iteration count outside 4096..=16384, UNSUPPORTED_SASL_MECHANISM for an unknown
//! mechanism, DUPLICATE_RESOURCE for a user and mechanism named twice, RESOURCE_NOT_FOUND
//! for deleting a credential the catalog does not hold. A user with any error has none of
//! its alterations applied; without ALTER on the cluster (ACLs) every user gets
//! CLUSTER_AUTHORIZATION_FAILED. Runs on the connection's shard.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
};
use kafka_protocol::ResponseError;

use super::details::authorize::cluster_denied;
use super::{deferred, frame, str_bytes, Conn, Pending};
use crate::catalog::security::SecurityChange;
use crate::catalog::Change;
use crate::kafka::catalog_error_code;
use crate::security::acl::Operation;
use crate::security::scram::{Mechanism, MAX_ITERATIONS, MIN_ITERATIONS};

/// One alteration of the request, in order: its user, mechanism code and the change.
struct Alteration {
    user: String,
    mechanism: i8,
    change: Result<SecurityChange, (i16, String)>,
}

fn refuse(
    code: ResponseError,
    message: impl Into<String>,
) -> Result<SecurityChange, (i16, String)> {
    Err((code.code(), message.into()))
}

pub fn handle(
    conn: &Rc<Conn>,
    req: AlterUserScramCredentialsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        // ALTER on the cluster, else CLUSTER_AUTHORIZATION_FAILED for every user named.
        if !conn.authorize_cluster(Operation::Alter) {
            let mut users: Vec<String> = Vec::new();
            let named = req.deletions.iter().map(|d| d.name.to_string());
            for user in named.chain(req.upsertions.iter().map(|u| u.name.to_string())) {
                if !users.contains(&user) {
                    users.push(user);
                }
            }
            let results = users
                .into_iter()
                .map(|user| {
                    AlterUserScramCredentialsResult::default()
                        .with_user(str_bytes(user))
                        .with_error_code(cluster_denied())
                        .with_error_message(Some(str_bytes(
                            "AlterUserScramCredentials needs ALTER on the cluster",
                        )))
                })
                .collect();
            let resp = AlterUserScramCredentialsResponse::default().with_results(results);
            return frame(correlation_id, version, &resp);
        }
        let stored = conn.shard.catalog.current();
        let mut alterations = Vec::new();
        for d in &req.deletions {
            let user = d.name.to_string();
            let change = if user.is_empty() {
                refuse(
                    ResponseError::UnacceptableCredential,
                    "Username must not be empty",
                )
            } else if Mechanism::from_code(d.mechanism).is_none() {
                refuse(
                    ResponseError::UnsupportedSaslMechanism,
                    "Unknown SCRAM mechanism",
                )
            } else if !stored
                .security
                .scram
                .get(&user)
                .is_some_and(|cs| cs.iter().any(|c| c.mechanism == d.mechanism))
            {
                refuse(
                    ResponseError::ResourceNotFound,
                    "Attempt to delete a user credential that does not exist",
                )
            } else {
                Ok(SecurityChange::DeleteScram {
                    user: user.clone(),
                    mechanism: d.mechanism,
                })
            };
            alterations.push(Alteration {
                user,
                mechanism: d.mechanism,
                change,
            });
        }
        for u in &req.upsertions {
            let user = u.name.to_string();
            let change = match Mechanism::from_code(u.mechanism) {
                _ if user.is_empty() => refuse(
                    ResponseError::UnacceptableCredential,
                    "Username must not be empty",
                ),
                None => refuse(
                    ResponseError::UnsupportedSaslMechanism,
                    "Unknown SCRAM mechanism",
                ),
                Some(_) if u.iterations < MIN_ITERATIONS as i32 => {
                    refuse(ResponseError::UnacceptableCredential, "Too few iterations")
                }
                Some(_) if u.iterations > MAX_ITERATIONS as i32 => {
                    refuse(ResponseError::UnacceptableCredential, "Too many iterations")
                }
                Some(_) if u.salt.is_empty() || u.salted_password.is_empty() => refuse(
                    ResponseError::UnacceptableCredential,
                    "Salt and salted password must not be empty",
                ),
                Some(m) => Ok(SecurityChange::SetScram {
                    user: user.clone(),
                    credential: m.credential_from_salted(
                        &u.salt,
                        u.iterations as u32,
                        &u.salted_password,
                    ),
                }),
            };
            alterations.push(Alteration {
                user,
                mechanism: u.mechanism,
                change,
            });
        }
        // A user and mechanism named twice: every alteration of that user is refused.
        let mut named: HashMap<(&str, i8), usize> = HashMap::new();
        for a in &alterations {
            *named.entry((a.user.as_str(), a.mechanism)).or_default() += 1;
        }
        let doubled: HashSet<String> = named
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|((user, _), _)| user.to_owned())
            .collect();
        for a in alterations.iter_mut().filter(|a| doubled.contains(&a.user)) {
            a.change = refuse(
                ResponseError::DuplicateResource,
                "A user credential cannot be altered twice in the same request",
            );
        }
        // Users in order of first appearance, each with its first error if any.
        let mut order: Vec<String> = Vec::new();
        let mut errors: HashMap<String, Option<(i16, String)>> = HashMap::new();
        for a in &alterations {
            let error = a.change.as_ref().err().cloned();
            match errors.get_mut(&a.user) {
                Some(first) => {
                    if first.is_none() {
                        *first = error;
                    }
                }
                None => {
                    order.push(a.user.clone());
                    errors.insert(a.user.clone(), error);
                }
            }
        }
        let (mut owners, mut changes) = (Vec::new(), Vec::new());
        for a in alterations {
            let user_ok = errors.get(&a.user).is_some_and(|e| e.is_none());
            if let (true, Ok(change)) = (user_ok, a.change) {
                owners.push(a.user);
                changes.push(Change::Security(Box::new(change)));
            }
        }
        let outcomes = if changes.is_empty() {
            Vec::new()
        } else {
            conn.shard.change_catalog(changes, false).await
        };
        for (owner, outcome) in owners.iter().zip(outcomes) {
            if let (Err(e), Some(first)) = (outcome, errors.get_mut(owner)) {
                first.get_or_insert((catalog_error_code(&e), e.to_string()));
            }
        }
        let results = order
            .into_iter()
            .map(|user| {
                let error = errors.remove(&user).flatten();
                let r = AlterUserScramCredentialsResult::default().with_user(str_bytes(user));
                match error {
                    None => r,
                    Some((code, message)) => r
                        .with_error_code(code)
                        .with_error_message(Some(str_bytes(message))),
                }
            })
            .collect();
        frame(
            correlation_id,
            version,
            &AlterUserScramCredentialsResponse::default().with_results(results),
        )
    })
}

//! Kafka's security metadata, kept in the catalog beside the topics: ACL bindings
//! (CreateAcls/DescribeAcls/DeleteAcls) and the SCRAM credentials that
//! AlterUserScramCredentials sets (salted: the password itself is never stored).
//!
//! Plain data with Kafka's numeric codes, changed only through `Change::Security` on shard
//! 0's catalog writer and replicated to every shard like the rest of the catalog. The
//! snapshot stores it as a second record after the main state, so catalogs written before
//! it existed still load (with no ACLs and no stored credentials).

use rkyv::{Archive, Deserialize, Serialize};

/// One ACL, as Kafka's `AclBinding`: a resource pattern and an access control entry, in
/// Kafka's codes (resource type 2 TOPIC, 3 GROUP, 4 CLUSTER, 5 TRANSACTIONAL_ID; pattern 3
/// LITERAL, 4 PREFIXED; operation 2 ALL … 12 IDEMPOTENT_WRITE; permission 2 DENY, 3 ALLOW).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: i8,
    pub resource_name: String,
    pub pattern_type: i8,
    /// `User:alice`, or `User:*` for everyone.
    pub principal: String,
    /// The client address, or `*` for any.
    pub host: String,
    pub operation: i8,
    pub permission_type: i8,
}

/// A user's SCRAM credential for one mechanism (RFC 5802): what the server keeps.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ScramCredential {
    /// Kafka's `ScramMechanism`: 1 SCRAM-SHA-256, 2 SCRAM-SHA-512.
    pub mechanism: i8,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// The security part of one catalog version.
#[derive(Debug, Clone, Default, PartialEq, Archive, Serialize, Deserialize)]
pub struct SecurityState {
    /// Every ACL binding, sorted, without duplicates.
    pub acls: Vec<AclBinding>,
    /// SCRAM credentials by user name, at most one per mechanism.
    pub scram: std::collections::BTreeMap<String, Vec<ScramCredential>>,
}

/// One persisted change to the security state.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub enum SecurityChange {
    /// Adds bindings (already present ones are kept once).
    AddAcls(Vec<AclBinding>),
    /// Removes exactly these bindings (DeleteAcls resolves its filters first).
    RemoveAcls(Vec<AclBinding>),
    /// Sets (or replaces) a user's credential for its mechanism.
    SetScram {
        user: String,
        credential: ScramCredential,
    },
    /// Removes a user's credential for one mechanism.
    DeleteScram { user: String, mechanism: i8 },
}

/// Applies a change to the security state.
pub fn apply(state: &mut SecurityState, change: &SecurityChange) {
    match change {
        SecurityChange::AddAcls(add) => {
            state.acls.extend(add.iter().cloned());
            state.acls.sort();
            state.acls.dedup();
        }
        SecurityChange::RemoveAcls(remove) => state.acls.retain(|b| !remove.contains(b)),
        SecurityChange::SetScram { user, credential } => {
            let creds = state.scram.entry(user.clone()).or_default();
            creds.retain(|c| c.mechanism != credential.mechanism);
            creds.push(credential.clone());
        }
        SecurityChange::DeleteScram { user, mechanism } => {
            if let Some(creds) = state.scram.get_mut(user) {
                creds.retain(|c| c.mechanism != *mechanism);
                if creds.is_empty() {
                    state.scram.remove(user);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(name: &str) -> AclBinding {
        AclBinding {
            resource_type: 2,
            resource_name: name.into(),
            pattern_type: 3,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: 3,
            permission_type: 3,
        }
    }

    #[test]
    fn acls_are_kept_once_and_removed_exactly() {
        let mut s = SecurityState::default();
        apply(
            &mut s,
            &SecurityChange::AddAcls(vec![acl("b"), acl("a"), acl("a")]),
        );
        assert_eq!(s.acls, vec![acl("a"), acl("b")]);
        apply(
            &mut s,
            &SecurityChange::RemoveAcls(vec![acl("a"), acl("c")]),
        );
        assert_eq!(s.acls, vec![acl("b")]);
    }

    #[test]
    fn one_scram_credential_per_user_and_mechanism() {
        let cred = |mechanism, iterations| ScramCredential {
            mechanism,
            salt: vec![1],
            iterations,
            stored_key: vec![2],
            server_key: vec![3],
        };
        let mut s = SecurityState::default();
        let set = |c| SecurityChange::SetScram {
            user: "alice".into(),
            credential: c,
        };
        apply(&mut s, &set(cred(1, 4096)));
        apply(&mut s, &set(cred(2, 4096)));
        apply(&mut s, &set(cred(1, 8192)));
        assert_eq!(s.scram["alice"].len(), 2);
        assert!(s.scram["alice"].contains(&cred(1, 8192)));
        apply(
            &mut s,
            &SecurityChange::DeleteScram {
                user: "alice".into(),
                mechanism: 1,
            },
        );
        apply(
            &mut s,
            &SecurityChange::DeleteScram {
                user: "alice".into(),
                mechanism: 2,
            },
        );
        assert!(s.scram.is_empty());
    }
}

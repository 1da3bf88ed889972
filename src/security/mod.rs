//! Who a client is and what it may do, for every protocol: the principal a connection
//! authenticated as (`Principal`), the users it can log in as (`users`, with SCRAM in
//! `scram`), Kafka's authorizer over the ACLs (`acl`), the audit trail of refusals
//! (`audit`), and the TLS certificates every TLS listener serves (`tls`).
//!
//! Protocol-free: the Kafka, AMQP and HTTP layers authenticate their own way and hand the
//! result here as a `Principal`; runs on whichever shard holds the connection.

pub mod acl;
pub mod audit;
pub mod scram;
pub mod tls;
pub mod users;

use std::fmt;

/// An authenticated identity as Kafka writes it: `User:alice`. Connections that did not
/// authenticate (a `PLAINTEXT` or `SSL` listener without a client certificate) are
/// `User:ANONYMOUS`, as in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal {
    /// `User` for every principal Portask makes.
    pub kind: String,
    pub name: String,
}

impl Principal {
    pub const ANONYMOUS: &'static str = "ANONYMOUS";

    pub fn user(name: impl Into<String>) -> Principal {
        Principal {
            kind: "User".into(),
            name: name.into(),
        }
    }

    pub fn anonymous() -> Principal {
        Principal::user(Principal::ANONYMOUS)
    }

    pub fn is_anonymous(&self) -> bool {
        self.kind == "User" && self.name == Principal::ANONYMOUS
    }

    /// Parses `Kind:name` (the name may itself hold colons, as a certificate subject does).
    pub fn parse(text: &str) -> Option<Principal> {
        let (kind, name) = text.split_once(':')?;
        if kind.is_empty() {
            return None;
        }
        Some(Principal {
            kind: kind.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_print_and_parse_as_kafka_writes_them() {
        let p = Principal::parse("User:CN=alice,O=Example").unwrap();
        assert_eq!(p.kind, "User");
        assert_eq!(p.name, "CN=alice,O=Example");
        assert_eq!(p.to_string(), "User:CN=alice,O=Example");
        assert!(Principal::anonymous().is_anonymous());
        assert!(!Principal::user("alice").is_anonymous());
        assert_eq!(Principal::parse("alice"), None);
        assert_eq!(Principal::parse(":alice"), None);
    }
}

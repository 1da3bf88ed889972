//! Who may connect and what they may do: SASL PLAIN and AMQPLAIN responses, RabbitMQ's
//! salted SHA-256 password hashes, the loopback-only rule for `guest`, and per-vhost
//! configure/write/read permissions (regular expressions, as in RabbitMQ).
//!
//! Users come from the shard's user store (`security::users`: `[[users]]` and the SCRAM
//! credentials in the catalog); vhosts and permissions from `[amqp]`. A connection takes
//! its user's compiled permissions for its vhost at connection.open, compiled once per
//! shard (`Permissions::shared`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use amq_protocol::types::AMQPValue;
use base64::Engine;
use regex::Regex;
use sha2::{Digest, Sha256};

use crate::config::AmqpConfig;
use crate::security::users::UserStore;

/// Credentials out of a start-ok response.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// PLAIN: `authzid \0 user \0 password`.
pub fn parse_plain(response: &[u8]) -> Option<Credentials> {
    let mut parts = response.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = parts.next()?;
    let password = parts.next()?;
    Some(Credentials {
        user: String::from_utf8(user.to_vec()).ok()?,
        password: String::from_utf8(password.to_vec()).ok()?,
    })
}

/// AMQPLAIN: a field table without its length prefix, holding LOGIN and PASSWORD.
pub fn parse_amqplain(response: &[u8]) -> Option<Credentials> {
    let mut framed = (response.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(response);
    let table = crate::catalog::amqp::tables::decode_table(&framed);
    let get = |k: &str| {
        table
            .inner()
            .get(k)
            .and_then(crate::catalog::amqp::tables::str_value)
    };
    match (get("LOGIN"), get("PASSWORD")) {
        (Some(user), Some(password)) => Some(Credentials { user, password }),
        _ => None,
    }
}

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt(4) ++ sha256(salt ++ password)).
pub fn hash_password(salt: [u8; 4], password: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(out)
}

pub fn check_password(hash: &str, password: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(hash.trim()) else {
        return false;
    };
    if raw.len() != 36 {
        return false;
    }
    let salt = [raw[0], raw[1], raw[2], raw[3]];
    // Compare without an early exit.
    let expected = hash_password(salt, password);
    expected.len() == hash.trim().len()
        && expected
            .bytes()
            .zip(hash.trim().bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("ACCESS_REFUSED - Login was refused using authentication mechanism {0}. For details see the broker logfile.")]
    Refused(String),
    #[error("ACCESS_REFUSED - user '{0}' can only connect via localhost")]
    LoopbackOnly(String),
}

/// Checks a PLAIN or AMQPLAIN login against the user store (a user with only SCRAM
/// credentials logs in too); returns the user name.
pub fn authenticate(
    users: &UserStore,
    config: &AmqpConfig,
    mechanism: &str,
    response: &[u8],
    peer: SocketAddr,
) -> Result<String, AuthError> {
    let creds = match mechanism {
        "PLAIN" => parse_plain(response),
        "AMQPLAIN" => parse_amqplain(response),
        _ => None,
    }
    .ok_or_else(|| AuthError::Refused(mechanism.to_owned()))?;
    if !users.verify_password(&creds.user, &creds.password) {
        return Err(AuthError::Refused(mechanism.to_owned()));
    }
    if config.loopback_users.contains(&creds.user) && !peer.ip().is_loopback() {
        return Err(AuthError::LoopbackOnly(creds.user));
    }
    Ok(creds.user)
}

/// A user's compiled permissions on one vhost.
#[derive(Debug, Clone)]
pub struct Permissions {
    configure: Regex,
    write: Regex,
    read: Regex,
}

fn anchored(pattern: &str) -> Option<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).ok()
}

impl Permissions {
    /// The permissions of `user` on `vhost`, if it has any.
    pub fn of(config: &AmqpConfig, user: &str, vhost: &str) -> Option<Permissions> {
        let p = config
            .permissions
            .iter()
            .find(|p| p.user == user && p.vhost == vhost)?;
        // An empty pattern grants nothing, as in RabbitMQ.
        let compile = |s: &str| {
            if s.is_empty() {
                anchored("$^")
            } else {
                anchored(s)
            }
        };
        Some(Permissions {
            configure: compile(&p.configure)?,
            write: compile(&p.write)?,
            read: compile(&p.read)?,
        })
    }

    /// `of`, compiled once per shard for each set of patterns and shared by every
    /// connection that uses it: a compiled set is about 17 KiB, more than everything else
    /// an idle connection holds. The cache is bounded by the configured permissions.
    pub fn shared(config: &AmqpConfig, user: &str, vhost: &str) -> Option<Rc<Permissions>> {
        thread_local! {
            static COMPILED: RefCell<HashMap<[String; 3], Rc<Permissions>>> =
                RefCell::new(HashMap::new());
        }
        let p = config
            .permissions
            .iter()
            .find(|p| p.user == user && p.vhost == vhost)?;
        let key = [p.configure.clone(), p.write.clone(), p.read.clone()];
        if let Some(hit) = COMPILED.with(|c| c.borrow().get(&key).cloned()) {
            return Some(hit);
        }
        let compiled = Rc::new(Self::of(config, user, vhost)?);
        COMPILED.with(|c| c.borrow_mut().insert(key, compiled.clone()));
        Some(compiled)
    }

    /// Resource names as permissions see them (the default exchange is `amq.default`).
    fn name(resource: &str) -> &str {
        if resource.is_empty() {
            "amq.default"
        } else {
            resource
        }
    }

    pub fn configure(&self, resource: &str) -> bool {
        self.configure.is_match(Self::name(resource))
    }

    pub fn write(&self, resource: &str) -> bool {
        self.write.is_match(Self::name(resource))
    }

    pub fn read(&self, resource: &str) -> bool {
        self.read.is_match(Self::name(resource))
    }
}

/// The server properties sent in connection.start, with RabbitMQ's capability names.
pub fn server_properties() -> amq_protocol::types::FieldTable {
    use amq_protocol::types::FieldTable;
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "consumer_priorities",
        "direct_reply_to",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut p = FieldTable::default();
    let s = |v: &str| AMQPValue::LongString(v.into());
    p.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    p.insert("product".into(), s("Portask"));
    p.insert("version".into(), s(env!("CARGO_PKG_VERSION")));
    p.insert("platform".into(), s("Rust"));
    p.insert("cluster_name".into(), s("portask"));
    p.insert(
        "information".into(),
        s("Thread-per-core broker speaking Kafka and AMQP 0-9-1"),
    );
    p.insert("copyright".into(), s("Portask contributors"));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_hashes_verify() {
        let h = hash_password([0x90, 0x8d, 0xc6, 0x0a], "guest");
        assert_eq!(h, "kI3GCrswBLNZQzHJJ95QLoyfAVooYhnvf7jbqiW9BjOYUloe");
        assert!(check_password(&h, "guest"));
        assert!(!check_password(&h, "guest2"));
        assert!(!check_password("garbage", "guest"));
    }

    #[test]
    fn mechanisms_parse() {
        assert_eq!(
            parse_plain(b"\0u\0p"),
            Some(Credentials {
                user: "u".into(),
                password: "p".into()
            })
        );
        let mut t = amq_protocol::types::FieldTable::default();
        t.insert("LOGIN".into(), AMQPValue::LongString("u".into()));
        t.insert("PASSWORD".into(), AMQPValue::LongString("p".into()));
        let enc = crate::catalog::amqp::tables::encode_table(&t);
        assert_eq!(parse_amqplain(&enc[4..]).map(|c| c.user), Some("u".into()));
    }

    #[test]
    fn defaults_allow_guest_on_loopback_only() {
        let c = AmqpConfig::default();
        let users = UserStore::build(
            &crate::config::Config::default(),
            &crate::catalog::security::SecurityState::default(),
        );
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let remote: SocketAddr = "10.0.0.1:1".parse().unwrap();
        assert_eq!(
            authenticate(&users, &c, "PLAIN", b"\0guest\0guest", local),
            Ok("guest".into())
        );
        assert!(authenticate(&users, &c, "PLAIN", b"\0guest\0nope", local).is_err());
        assert_eq!(
            authenticate(&users, &c, "PLAIN", b"\0guest\0guest", remote),
            Err(AuthError::LoopbackOnly("guest".into()))
        );
        let p = Permissions::of(&c, "guest", "/").unwrap();
        assert!(p.configure("anything") && p.write("") && p.read("q"));
        assert!(Permissions::of(&c, "guest", "other").is_none());
    }

    #[test]
    fn connections_share_one_compiled_set_of_permissions() {
        let mut c = AmqpConfig::default();
        let a = Permissions::shared(&c, "guest", "/").unwrap();
        let b = Permissions::shared(&c, "guest", "/").unwrap();
        assert!(Rc::ptr_eq(&a, &b));
        // Other patterns are compiled apart, and grant what they say.
        c.permissions[0].write = "^amq\\.gen.*".into();
        let other = Permissions::shared(&c, "guest", "/").unwrap();
        assert!(!Rc::ptr_eq(&a, &other));
        assert!(a.write("orders") && !other.write("orders") && other.write("amq.gen-1"));
        assert!(Permissions::shared(&c, "guest", "other").is_none());
    }
}

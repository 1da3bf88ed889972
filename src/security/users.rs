//! The one set of users every protocol logs in against: the configuration's `[[users]]`
//! (and the older `amqp.users`, or the built-in `guest`), with their RabbitMQ password
//! hashes, SCRAM credentials and management tags, plus the SCRAM credentials
//! AlterUserScramCredentials stored in the catalog (those override the configuration's for
//! the same user and mechanism, and may name users the configuration does not).
//!
//! Each shard builds its `UserStore` once at start and again whenever an installed catalog
//! changes the stored credentials (`broker::Shard::users`); Kafka SASL, AMQP PLAIN/AMQPLAIN
//! and HTTP basic authentication all read it. Passwords are compared in constant time;
//! nothing here keeps a password.

use std::collections::BTreeMap;

use super::scram::{self, Mechanism};
use crate::catalog::security::{ScramCredential, SecurityState};
use crate::config::{Config, User};

/// One user as the store knows it.
#[derive(Debug, Clone, Default)]
struct Entry {
    password_hash: String,
    /// At most one per mechanism.
    scram: Vec<ScramCredential>,
    /// The user has a credential from AlterUserScramCredentials (the newest password).
    stored: bool,
    tags: Vec<String>,
}

/// Every user and what it can log in with.
#[derive(Debug, Clone, Default)]
pub struct UserStore {
    users: BTreeMap<String, Entry>,
}

/// A configured user's SCRAM credentials, parsed; an error names the user and the key.
pub fn config_credentials(user: &User) -> Result<Vec<ScramCredential>, String> {
    let mut out = Vec::new();
    for (key, mechanism, text) in [
        ("scram_sha_256", Mechanism::Sha256, &user.scram_sha_256),
        ("scram_sha_512", Mechanism::Sha512, &user.scram_sha_512),
    ] {
        if text.trim().is_empty() {
            continue;
        }
        let c = scram::parse_credential(mechanism, text)
            .map_err(|e| format!("user '{}': {key}: {e}", user.name))?;
        out.push(c);
    }
    Ok(out)
}

impl UserStore {
    /// The users of `config` with the credentials stored in `security`. The configuration
    /// was validated (`Config::validate`), so its credentials parse; one that does not is
    /// left out.
    pub fn build(config: &Config, security: &SecurityState) -> UserStore {
        let mut users = BTreeMap::new();
        for u in config.all_users() {
            let scram = config_credentials(&u).unwrap_or_default();
            users.insert(
                u.name.clone(),
                Entry {
                    password_hash: u.password_hash,
                    scram,
                    stored: false,
                    tags: u.tags,
                },
            );
        }
        for (name, creds) in &security.scram {
            let entry = users.entry(name.clone()).or_insert_with(Entry::default);
            for c in creds {
                entry.scram.retain(|x| x.mechanism != c.mechanism);
                entry.scram.push(c.clone());
                entry.stored = true;
            }
        }
        UserStore { users }
    }

    /// Whether `password` is `name`'s. A user whose credentials were set through
    /// AlterUserScramCredentials is checked against those (they hold the newest password);
    /// otherwise against the RabbitMQ password hash, or, without one, the configured SCRAM
    /// credentials (PBKDF2 with their salt, then a constant-time compare).
    pub fn verify_password(&self, name: &str, password: &str) -> bool {
        let Some(user) = self.users.get(name) else {
            return false;
        };
        if user.stored || user.password_hash.is_empty() {
            return user
                .scram
                .iter()
                .min_by_key(|c| c.mechanism)
                .is_some_and(|c| scram::verify_password(c, password));
        }
        crate::amqp::auth::check_password(&user.password_hash, password)
    }

    /// `name`'s credential for `mechanism`.
    pub fn scram_credential(&self, name: &str, mechanism: Mechanism) -> Option<&ScramCredential> {
        self.users
            .get(name)?
            .scram
            .iter()
            .find(|c| c.mechanism == mechanism.code())
    }

    /// `name`'s SCRAM credentials (none for an unknown user).
    pub fn scram_credentials(&self, name: &str) -> &[ScramCredential] {
        self.users.get(name).map_or(&[], |e| e.scram.as_slice())
    }

    /// Every user with SCRAM credentials, and them (DescribeUserScramCredentials).
    pub fn scram_users(&self) -> impl Iterator<Item = (&str, &[ScramCredential])> {
        self.users
            .iter()
            .filter(|(_, e)| !e.scram.is_empty())
            .map(|(n, e)| (n.as_str(), e.scram.as_slice()))
    }

    /// Whether `name` is a user (configured, or given credentials by
    /// AlterUserScramCredentials): what AMQP's EXTERNAL asks of a certificate's name.
    pub fn exists(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// `name`'s management tags; `None` for an unknown user.
    pub fn tags(&self, name: &str) -> Option<&[String]> {
        self.users.get(name).map(|e| e.tags.as_slice())
    }
}

/// What `portask hash-password` prints: a `[[users]]` entry for `name` with `password`'s
/// credential keys (a RabbitMQ hash and SCRAM-SHA-256/512 credentials with fresh salts).
pub fn credentials_block(name: &str, password: &str, iterations: u32) -> Result<String, String> {
    if !(scram::MIN_ITERATIONS..=scram::MAX_ITERATIONS).contains(&iterations) {
        return Err(format!(
            "--iterations must be {}..={}",
            scram::MIN_ITERATIONS,
            scram::MAX_ITERATIONS
        ));
    }
    let random = |n| scram::random_bytes(n).map_err(|e| format!("no randomness: {e}"));
    let rabbit_salt = random(4)?;
    let salt = [
        rabbit_salt[0],
        rabbit_salt[1],
        rabbit_salt[2],
        rabbit_salt[3],
    ];
    let name = toml::Value::String(name.to_owned());
    let mut out = format!("[[users]]\nname = {name}\n");
    out.push_str(&format!(
        "password_hash = \"{}\"\n",
        crate::amqp::auth::hash_password(salt, password)
    ));
    for (key, m) in [
        ("scram_sha_256", Mechanism::Sha256),
        ("scram_sha_512", Mechanism::Sha512),
    ] {
        let c = m.credential(password, &random(16)?, iterations);
        out.push_str(&format!("{key} = \"{}\"\n", scram::format_credential(&c)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::security::{apply, SecurityChange};

    fn user(name: &str, hash: &str, sha256: &str) -> User {
        User {
            name: name.into(),
            password_hash: hash.into(),
            scram_sha_256: sha256.into(),
            scram_sha_512: String::new(),
            tags: vec!["management".into()],
        }
    }

    #[test]
    fn passwords_verify_through_hashes_and_scram() {
        let scram_only = scram::format_credential(&Mechanism::Sha256.credential("s", b"x", 4096));
        let config = Config {
            users: vec![
                user(
                    "rabbit",
                    &crate::amqp::auth::hash_password([1, 2, 3, 4], "r"),
                    "",
                ),
                user("kafka", "", &scram_only),
            ],
            ..Config::default()
        };
        let mut security = SecurityState::default();
        let store = UserStore::build(&config, &security);
        assert!(store.verify_password("rabbit", "r"));
        assert!(!store.verify_password("rabbit", "s"));
        assert!(store.verify_password("kafka", "s"));
        assert!(!store.verify_password("kafka", "r"));
        assert!(!store.verify_password("nobody", ""));
        assert!(store.scram_credential("kafka", Mechanism::Sha256).is_some());
        assert!(store.scram_credential("kafka", Mechanism::Sha512).is_none());
        assert_eq!(store.tags("kafka"), Some(&["management".to_owned()][..]));
        assert_eq!(store.tags("nobody"), None);
        // Stored credentials override the configuration's and hold the newest password.
        for (name, m) in [("rabbit", 2), ("newcomer", 1)] {
            apply(
                &mut security,
                &SecurityChange::SetScram {
                    user: name.into(),
                    credential: Mechanism::from_code(m)
                        .unwrap()
                        .credential("new", b"y", 4096),
                },
            );
        }
        let store = UserStore::build(&config, &security);
        assert!(store.verify_password("rabbit", "new"));
        assert!(!store.verify_password("rabbit", "r"));
        assert!(store.verify_password("newcomer", "new"));
        let names: Vec<&str> = store.scram_users().map(|(n, _)| n).collect();
        assert_eq!(names, ["kafka", "newcomer", "rabbit"]);
    }

    #[test]
    fn bad_config_credentials_name_the_user() {
        let e = config_credentials(&user("bob", "", "salt=AAAA")).unwrap_err();
        assert!(
            e.contains("user 'bob'") && e.contains("scram_sha_256"),
            "{e}"
        );
    }

    #[test]
    fn the_hash_password_block_verifies() {
        let block = credentials_block("a \"quoted\" name", "pw", 4096).unwrap();
        let parsed: toml::Value = toml::from_str(&block).unwrap();
        let u: User = parsed["users"][0].clone().try_into().unwrap();
        let config = Config {
            users: vec![u.clone()],
            ..Config::default()
        };
        assert!(config_credentials(&u).unwrap().len() == 2);
        let store = UserStore::build(&config, &SecurityState::default());
        assert!(store.verify_password("a \"quoted\" name", "pw"));
        assert!(credentials_block("u", "pw", 10).is_err());
    }
}

//! The SASL session of one Kafka connection on a `SASL_*` listener: SaslHandshake picks a
//! mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, from `kafka.sasl_enabled_mechanisms`),
//! SaslAuthenticate carries its tokens (or, after a v0 handshake, bare length-prefixed
//! frames do, as old clients send them), and the session then lasts
//! `kafka.connections_max_reauth_ms` (KIP-368) unless the client re-authenticates, as the
//! same user, on the same connection.
//!
//! `Session::admit` is the gate in front of every request: before authentication only
//! ApiVersions, SaslHandshake and SaslAuthenticate; after the session expired, only the
//! latter two; anything else closes the connection, as Kafka does. A failed exchange marks
//! the session `closing`: the client gets its error answer, then the connection closes.
//!
//! A pure state machine (the clock, the user store and the nonce source are passed in), so
//! it is unit-tested here; the connection (`server`) and the two handlers
//! (`handlers::sasl_handshake`, `handlers::sasl_authenticate`) drive it on the connection's
//! shard.

use std::time::{Duration, Instant};

use kafka_protocol::messages::ApiKey;
use kafka_protocol::ResponseError;

use crate::security::scram::{self, ServerExchange};
use crate::security::users::UserStore;

/// A SASL mechanism a Kafka listener can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Scram(scram::Mechanism),
}

impl Mechanism {
    pub fn parse(name: &str) -> Option<Mechanism> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            other => scram::Mechanism::from_name(other).map(Mechanism::Scram),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(m) => m.name(),
        }
    }
}

/// Where the exchange stands.
#[derive(Debug)]
enum Exchange {
    /// No exchange in progress.
    Idle,
    /// SaslHandshake chose the mechanism; `raw`: it was v0, so the tokens follow as bare
    /// length-prefixed frames rather than SaslAuthenticate requests.
    Chosen { mechanism: Mechanism, raw: bool },
    /// A SCRAM exchange waiting for the client-final message.
    Scram {
        exchange: Box<ServerExchange>,
        raw: bool,
    },
}

/// Why an exchange failed: the Kafka error code and message the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: i16,
    pub message: String,
    /// The mechanism, for the audit counter (`portask_auth_failures_total`).
    pub mechanism: &'static str,
}

/// What a token led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The exchange goes on: these bytes go back to the client.
    Continue(Vec<u8>),
    /// Authenticated as `user`: `reply` goes back; the session lasts `lifetime_ms` (0 = for
    /// ever).
    Done {
        reply: Vec<u8>,
        user: String,
        lifetime_ms: i64,
    },
}

/// One connection's SASL state.
#[derive(Debug)]
pub struct Session {
    exchange: Exchange,
    /// The user the connection authenticated as (kept through re-authentication).
    user: Option<String>,
    /// When the session ends, with `kafka.connections_max_reauth_ms` set.
    expires: Option<Instant>,
    /// Set by a failed exchange: the connection closes once its answers are written.
    closing: Option<String>,
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

fn failure(code: ResponseError, message: impl Into<String>, mechanism: &'static str) -> Failure {
    Failure {
        code: code.code(),
        message: message.into(),
        mechanism,
    }
}

impl Session {
    pub fn new() -> Session {
        Session {
            exchange: Exchange::Idle,
            user: None,
            expires: None,
            closing: None,
        }
    }

    /// Whether a request of `api` may be served at `now` on a listener that does (`sasl`)
    /// or does not use SASL; `Err` says why the connection closes instead.
    pub fn admit(&self, sasl: bool, api: i16, now: Instant) -> Result<(), String> {
        if !sasl {
            return Ok(());
        }
        let sasl_api =
            api == ApiKey::SaslHandshake as i16 || api == ApiKey::SaslAuthenticate as i16;
        let name = || {
            ApiKey::try_from(api)
                .map(|a| format!("{a:?}"))
                .unwrap_or_else(|_| format!("API key {api}"))
        };
        match (&self.user, self.expires) {
            (None, _) if sasl_api || api == ApiKey::ApiVersions as i16 => Ok(()),
            (None, _) => Err(format!(
                "{} request before SASL authentication on a SASL listener",
                name()
            )),
            (Some(user), Some(end)) if now >= end && !sasl_api => Err(format!(
                "{} request after the SASL session of '{user}' expired without \
                 re-authentication (kafka.connections_max_reauth_ms)",
                name()
            )),
            _ => Ok(()),
        }
    }

    /// The next frame is a bare SASL token (after a v0 SaslHandshake).
    pub fn raw(&self) -> bool {
        matches!(
            self.exchange,
            Exchange::Chosen { raw: true, .. } | Exchange::Scram { raw: true, .. }
        )
    }

    /// No exchange in progress and nothing failed: the session can go on on another shard
    /// (`kafka::placement`).
    pub fn settled(&self) -> bool {
        matches!(self.exchange, Exchange::Idle) && self.closing.is_none()
    }

    /// This settled session (`settled`) for the shard its connection moves to: the same
    /// user and expiry.
    pub fn carried(&self) -> Session {
        Session {
            exchange: Exchange::Idle,
            user: self.user.clone(),
            expires: self.expires,
            closing: None,
        }
    }

    /// Why the connection must close after its answers, if it must.
    pub fn closing(&self) -> Option<&str> {
        self.closing.as_deref()
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    fn fail(&mut self, f: Failure) -> Failure {
        self.exchange = Exchange::Idle;
        self.closing = Some(f.message.clone());
        f
    }

    /// SaslHandshake of `version` asking for `mechanism`.
    pub fn handshake(
        &mut self,
        mechanism: &str,
        version: i16,
        enabled: &[String],
    ) -> Result<(), Failure> {
        let chosen = Mechanism::parse(mechanism).filter(|_| enabled.iter().any(|m| m == mechanism));
        let Some(chosen) = chosen else {
            return Err(self.fail(failure(
                ResponseError::UnsupportedSaslMechanism,
                format!(
                    "Unsupported SASL mechanism {mechanism} (enabled: {})",
                    enabled.join(", ")
                ),
                "handshake",
            )));
        };
        let raw = version == 0;
        if !matches!(self.exchange, Exchange::Idle) || (raw && self.user.is_some()) {
            return Err(self.fail(failure(
                ResponseError::IllegalSaslState,
                "Unexpected SaslHandshake request in the current SASL state",
                chosen.name(),
            )));
        }
        self.exchange = Exchange::Chosen {
            mechanism: chosen,
            raw,
        };
        Ok(())
    }

    /// The client's next token (SaslAuthenticate's `auth_bytes`, or a bare frame after a
    /// v0 handshake), checked against `users` at `now`.
    pub fn authenticate(
        &mut self,
        token: &[u8],
        users: &UserStore,
        now: Instant,
        reauth_ms: u64,
        nonce: impl FnOnce() -> Option<String>,
    ) -> Result<Step, Failure> {
        match std::mem::replace(&mut self.exchange, Exchange::Idle) {
            Exchange::Idle => Err(self.fail(failure(
                ResponseError::IllegalSaslState,
                "SaslAuthenticate request received before a SaslHandshake",
                "handshake",
            ))),
            Exchange::Chosen {
                mechanism: Mechanism::Plain,
                ..
            } => {
                let user = check_plain(token, users).map_err(|f| self.fail(f))?;
                self.complete(user, Vec::new(), "PLAIN", now, reauth_ms)
            }
            Exchange::Chosen {
                mechanism: Mechanism::Scram(m),
                raw,
            } => {
                let Some(nonce) = nonce() else {
                    return Err(self.fail(failure(
                        ResponseError::SaslAuthenticationFailed,
                        "Authentication failed: the server has no randomness for a nonce",
                        m.name(),
                    )));
                };
                let started = ServerExchange::start(
                    m,
                    token,
                    |u| users.scram_credential(u, m).cloned(),
                    &nonce,
                );
                match started {
                    Ok((exchange, server_first)) => {
                        self.exchange = Exchange::Scram {
                            exchange: Box::new(exchange),
                            raw,
                        };
                        Ok(Step::Continue(server_first))
                    }
                    Err(e) => Err(self.fail(failure(
                        ResponseError::SaslAuthenticationFailed,
                        e.to_string(),
                        m.name(),
                    ))),
                }
            }
            Exchange::Scram { exchange, .. } => {
                let m = exchange.mechanism();
                match exchange.finish(token) {
                    Ok(server_final) => self.complete(
                        exchange.user().to_owned(),
                        server_final,
                        m.name(),
                        now,
                        reauth_ms,
                    ),
                    Err(e) => Err(self.fail(failure(
                        ResponseError::SaslAuthenticationFailed,
                        e.to_string(),
                        m.name(),
                    ))),
                }
            }
        }
    }

    /// `user` proved who it is: the session starts (or, re-authenticating, goes on).
    fn complete(
        &mut self,
        user: String,
        reply: Vec<u8>,
        mechanism: &'static str,
        now: Instant,
        reauth_ms: u64,
    ) -> Result<Step, Failure> {
        if let Some(before) = &self.user {
            if *before != user {
                let message = format!(
                    "Cannot change principals during re-authentication from User:{before} to \
                     User:{user}"
                );
                return Err(self.fail(failure(
                    ResponseError::SaslAuthenticationFailed,
                    message,
                    mechanism,
                )));
            }
        }
        self.user = Some(user.clone());
        self.expires = (reauth_ms > 0).then(|| now + Duration::from_millis(reauth_ms));
        Ok(Step::Done {
            reply,
            user,
            lifetime_ms: reauth_ms.min(i64::MAX as u64) as i64,
        })
    }
}

/// PLAIN (RFC 4616): `authzid \0 user \0 password`; the user, if the password is right.
fn check_plain(token: &[u8], users: &UserStore) -> Result<String, Failure> {
    let plain = |message: String| {
        failure(
            ResponseError::SaslAuthenticationFailed,
            message,
            Mechanism::Plain.name(),
        )
    };
    let parts: Vec<&[u8]> = token.split(|b| *b == 0).collect();
    if parts.len() != 3 {
        return Err(plain(format!(
            "Invalid SASL/PLAIN response: expected 3 tokens, got {}",
            parts.len()
        )));
    }
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| plain("Invalid SASL/PLAIN response: not UTF-8".into()))
    };
    let (authzid, user, password) = (text(parts[0])?, text(parts[1])?, text(parts[2])?);
    if user.is_empty() {
        return Err(plain(
            "Authentication failed: username not specified".into(),
        ));
    }
    if !authzid.is_empty() && authzid != user {
        return Err(plain(
            "Authentication failed: Client requested an authorization id that is different \
             from username"
                .into(),
        ));
    }
    if !users.verify_password(&user, &password) {
        return Err(plain(
            "Authentication failed: Invalid username or password".into(),
        ));
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::security::SecurityState;
    use crate::config::{Config, User};

    fn users() -> UserStore {
        let config = Config {
            users: vec![
                User {
                    name: "alice".into(),
                    password_hash: crate::amqp::auth::hash_password([1, 2, 3, 4], "a-pw"),
                    scram_sha_256: String::new(),
                    scram_sha_512: String::new(),
                    tags: vec![],
                },
                User {
                    name: "bob".into(),
                    password_hash: crate::amqp::auth::hash_password([1, 2, 3, 4], "b-pw"),
                    scram_sha_256: String::new(),
                    scram_sha_512: String::new(),
                    tags: vec![],
                },
            ],
            ..Config::default()
        };
        UserStore::build(&config, &SecurityState::default())
    }

    fn enabled() -> Vec<String> {
        vec!["PLAIN".into(), "SCRAM-SHA-512".into()]
    }

    const FETCH: i16 = ApiKey::Fetch as i16;
    const HANDSHAKE: i16 = ApiKey::SaslHandshake as i16;
    const VERSIONS: i16 = ApiKey::ApiVersions as i16;

    #[test]
    fn only_sasl_and_api_versions_before_authentication() {
        let s = Session::new();
        let now = Instant::now();
        assert!(s.admit(false, FETCH, now).is_ok());
        assert!(s.admit(true, VERSIONS, now).is_ok());
        assert!(s.admit(true, HANDSHAKE, now).is_ok());
        let e = s.admit(true, FETCH, now).unwrap_err();
        assert!(e.contains("Fetch request before SASL"), "{e}");
    }

    #[test]
    fn plain_login_then_expiry_then_reauthentication() {
        let (store, now) = (users(), Instant::now());
        let mut s = Session::new();
        s.handshake("PLAIN", 1, &enabled()).unwrap();
        assert!(!s.raw());
        let step = s
            .authenticate(b"\0alice\0a-pw", &store, now, 3000, || None)
            .unwrap();
        assert_eq!(
            step,
            Step::Done {
                reply: vec![],
                user: "alice".into(),
                lifetime_ms: 3000
            }
        );
        assert!(s.admit(true, FETCH, now).is_ok());
        let later = now + Duration::from_millis(3000);
        assert!(s.admit(true, FETCH, later).is_err());
        assert!(s.admit(true, HANDSHAKE, later).is_ok());
        // Re-authenticating as the same user renews the session.
        s.handshake("PLAIN", 1, &enabled()).unwrap();
        s.authenticate(b"\0alice\0a-pw", &store, later, 3000, || None)
            .unwrap();
        assert!(s.admit(true, FETCH, later).is_ok());
        assert!(s.closing().is_none());
        // ...as another is refused and closes the connection.
        s.handshake("PLAIN", 1, &enabled()).unwrap();
        let f = s
            .authenticate(b"\0bob\0b-pw", &store, later, 3000, || None)
            .unwrap_err();
        assert_eq!(f.code, 58);
        assert!(
            f.message.contains("Cannot change principals"),
            "{}",
            f.message
        );
        assert!(s.closing().is_some());
        assert_eq!(s.user(), Some("alice"));
    }

    #[test]
    fn failures_carry_kafka_codes() {
        let store = users();
        let now = Instant::now();
        let mut s = Session::new();
        let f = s.handshake("GSSAPI", 1, &enabled()).unwrap_err();
        assert_eq!(f.code, 33);
        assert!(f.message.contains("PLAIN, SCRAM-SHA-512"), "{}", f.message);
        let mut s = Session::new();
        // Enabled list is honoured even for mechanisms the broker knows.
        assert_eq!(
            s.handshake("SCRAM-SHA-256", 1, &enabled())
                .unwrap_err()
                .code,
            33
        );
        let mut s = Session::new();
        let f = s.authenticate(b"x", &store, now, 0, || None).unwrap_err();
        assert_eq!(f.code, 34);
        let mut s = Session::new();
        s.handshake("PLAIN", 1, &enabled()).unwrap();
        let f = s
            .authenticate(b"\0alice\0wrong", &store, now, 0, || None)
            .unwrap_err();
        assert_eq!(
            (f.code, f.message.as_str()),
            (58, "Authentication failed: Invalid username or password")
        );
        assert!(s.closing().is_some());
        for bad in [
            &b""[..],
            b"alice",
            b"\0\0",
            b"bob\0alice\0a-pw",
            b"\0\xff\0x",
        ] {
            let mut s = Session::new();
            s.handshake("PLAIN", 1, &enabled()).unwrap();
            assert_eq!(
                s.authenticate(bad, &store, now, 0, || None)
                    .unwrap_err()
                    .code,
                58
            );
        }
    }

    #[test]
    fn v0_handshake_switches_to_bare_tokens() {
        let store = users();
        let mut s = Session::new();
        s.handshake("PLAIN", 0, &enabled()).unwrap();
        assert!(s.raw());
        s.authenticate(b"\0alice\0a-pw", &store, Instant::now(), 0, || None)
            .unwrap();
        assert!(!s.raw());
        // No second v0 handshake on an authenticated connection.
        assert_eq!(s.handshake("PLAIN", 0, &enabled()).unwrap_err().code, 34);
    }

    #[test]
    fn scram_exchange_runs_in_two_steps() {
        let config = Config {
            users: vec![User {
                name: "carol".into(),
                password_hash: String::new(),
                scram_sha_256: String::new(),
                scram_sha_512: scram::format_credential(
                    &scram::Mechanism::Sha512.credential("c-pw", b"salt", 4096),
                ),
                tags: vec![],
            }],
            ..Config::default()
        };
        let store = UserStore::build(&config, &SecurityState::default());
        let mut s = Session::new();
        s.handshake("SCRAM-SHA-512", 1, &enabled()).unwrap();
        let now = Instant::now();
        let step = s
            .authenticate(b"n,,n=carol,r=abc", &store, now, 0, || Some("xyz".into()))
            .unwrap();
        let Step::Continue(first) = step else {
            panic!("{step:?}")
        };
        assert!(first.starts_with(b"r=abcxyz,s="));
        // A wrong proof fails with Kafka's message and closes.
        let f = s
            .authenticate(b"c=biws,r=abcxyz,p=AAAA", &store, now, 0, || None)
            .unwrap_err();
        assert_eq!(
            (f.code, f.message.as_str()),
            (58, "Authentication failed: Invalid user credentials")
        );
        // An unknown user fails at the first message.
        let mut s = Session::new();
        s.handshake("SCRAM-SHA-512", 1, &enabled()).unwrap();
        let f = s
            .authenticate(b"n,,n=nobody,r=abc", &store, now, 0, || Some("x".into()))
            .unwrap_err();
        assert_eq!(f.code, 58);
        assert_eq!(f.mechanism, "SCRAM-SHA-512");
    }
}

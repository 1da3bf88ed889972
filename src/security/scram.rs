//! SCRAM (RFC 5802) for SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 7677), as Kafka speaks it:
//! the server side of the exchange (`ServerExchange`), the credential a server keeps
//! (`ScramCredential`: salt, iterations, stored and server keys, never the password), how
//! such a credential is made from a password or from the salted password that
//! AlterUserScramCredentials carries, and its text form in the configuration
//! (`salt=<b64>,stored_key=<b64>,server_key=<b64>,iterations=<n>`).
//!
//! Kafka's extensions: a client-first message may carry `key=value` extensions after its
//! nonce; `tokenauth=true` asks for delegation-token authentication, which Portask (like a
//! Kafka without delegation tokens) refuses; other extensions are ignored. Channel binding
//! is not supported (`n` only), and the authorization id must be empty or the user name.
//!
//! Pure functions over bytes; every malformed message is a `ScramError`, never a panic.
//! Runs on whichever shard holds the connection.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

use crate::catalog::security::ScramCredential;

/// Fewest PBKDF2 iterations a credential may have (Kafka's minimum).
pub const MIN_ITERATIONS: u32 = 4096;
/// Most PBKDF2 iterations a credential may have (Kafka's maximum).
pub const MAX_ITERATIONS: u32 = 16384;

/// HMAC-`$digest` of `data` under `key` (HMAC takes keys of any length).
macro_rules! hmac_with {
    ($digest:ty, $key:expr, $data:expr) => {{
        match <Hmac<$digest> as Mac>::new_from_slice($key) {
            Ok(mut mac) => {
                mac.update($data);
                mac.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }};
}

/// A SCRAM mechanism, with Kafka's `ScramMechanism` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mechanism {
    Sha256,
    Sha512,
}

impl Mechanism {
    pub const ALL: [Mechanism; 2] = [Mechanism::Sha256, Mechanism::Sha512];

    /// Kafka's code: 1 SCRAM-SHA-256, 2 SCRAM-SHA-512.
    pub fn code(self) -> i8 {
        match self {
            Mechanism::Sha256 => 1,
            Mechanism::Sha512 => 2,
        }
    }

    pub fn from_code(code: i8) -> Option<Mechanism> {
        match code {
            1 => Some(Mechanism::Sha256),
            2 => Some(Mechanism::Sha512),
            _ => None,
        }
    }

    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sha256 => "SCRAM-SHA-256",
            Mechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => hmac_with!(Sha256, key, data),
            Mechanism::Sha512 => hmac_with!(Sha512, key, data),
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => Sha256::digest(data).to_vec(),
            Mechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// `Hi(password, salt, iterations)`: PBKDF2 with this mechanism's HMAC.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out.to_vec()
            }
            Mechanism::Sha512 => {
                let mut out = [0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }

    /// The credential a server keeps, from the salted password (what
    /// AlterUserScramCredentials sends).
    pub fn credential_from_salted(
        self,
        salt: &[u8],
        iterations: u32,
        salted_password: &[u8],
    ) -> ScramCredential {
        let client_key = self.hmac(salted_password, b"Client Key");
        ScramCredential {
            mechanism: self.code(),
            salt: salt.to_vec(),
            iterations,
            stored_key: self.hash(&client_key),
            server_key: self.hmac(salted_password, b"Server Key"),
        }
    }

    /// The credential a server keeps, from the password itself.
    pub fn credential(self, password: &str, salt: &[u8], iterations: u32) -> ScramCredential {
        let salted = self.salted_password(password.as_bytes(), salt, iterations);
        self.credential_from_salted(salt, iterations, &salted)
    }
}

/// Equal contents, compared without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `password` is the one `credential` was made from (PBKDF2, then a constant-time
/// compare of the stored key).
pub fn verify_password(credential: &ScramCredential, password: &str) -> bool {
    let Some(m) = Mechanism::from_code(credential.mechanism) else {
        return false;
    };
    if credential.iterations == 0 {
        return false;
    }
    let salted = m.salted_password(password.as_bytes(), &credential.salt, credential.iterations);
    let client_key = m.hmac(&salted, b"Client Key");
    constant_time_eq(&m.hash(&client_key), &credential.stored_key)
}

/// `n` random bytes from the operating system.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, getrandom::Error> {
    let mut buf = vec![0u8; n];
    getrandom::getrandom(&mut buf)?;
    Ok(buf)
}

/// A fresh server nonce: 24 random bytes, base64 (printable, no comma). `None` when the
/// operating system gives no randomness (the exchange is then refused).
pub fn server_nonce() -> Option<String> {
    random_bytes(24).ok().map(|b| B64.encode(b))
}

/// The configuration's text form of a credential.
pub fn format_credential(c: &ScramCredential) -> String {
    format!(
        "salt={},stored_key={},server_key={},iterations={}",
        B64.encode(&c.salt),
        B64.encode(&c.stored_key),
        B64.encode(&c.server_key),
        c.iterations
    )
}

/// Parses `salt=<b64>,stored_key=<b64>,server_key=<b64>,iterations=<n>` (any order).
pub fn parse_credential(mechanism: Mechanism, text: &str) -> Result<ScramCredential, String> {
    let (mut salt, mut stored, mut server, mut iterations) = (None, None, None, None);
    for part in text.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| format!("'{part}' is not key=value"))?;
        let b64 = |v: &str| {
            B64.decode(v.trim())
                .map_err(|e| format!("{key} is not base64: {e}"))
        };
        match key.trim() {
            "salt" => salt = Some(b64(value)?),
            "stored_key" => stored = Some(b64(value)?),
            "server_key" => server = Some(b64(value)?),
            "iterations" => {
                iterations = Some(
                    value
                        .trim()
                        .parse::<u32>()
                        .map_err(|_| format!("iterations '{value}' is not a number"))?,
                )
            }
            other => return Err(format!("unknown key '{other}'")),
        }
    }
    let missing = |k: &str| format!("{k} is missing");
    let iterations = iterations.ok_or_else(|| missing("iterations"))?;
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err(format!(
            "iterations must be {MIN_ITERATIONS}..={MAX_ITERATIONS}, not {iterations}"
        ));
    }
    let key_len = match mechanism {
        Mechanism::Sha256 => 32,
        Mechanism::Sha512 => 64,
    };
    let stored = stored.ok_or_else(|| missing("stored_key"))?;
    let server = server.ok_or_else(|| missing("server_key"))?;
    if stored.len() != key_len || server.len() != key_len {
        return Err(format!(
            "stored_key and server_key must be {key_len} bytes for {}",
            mechanism.name()
        ));
    }
    Ok(ScramCredential {
        mechanism: mechanism.code(),
        salt: salt.ok_or_else(|| missing("salt"))?,
        iterations,
        stored_key: stored,
        server_key: server,
    })
}

/// Why a SCRAM exchange failed. The messages are what the client is told (Kafka's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("Authentication failed: malformed SCRAM message ({0})")]
    Malformed(&'static str),
    #[error("Authentication failed: Invalid user credentials")]
    InvalidCredentials,
    #[error(
        "Authentication failed: Client requested an authorization id that is different from username"
    )]
    AuthorizationId,
    #[error("Authentication failed: delegation tokens are not supported")]
    TokenAuth,
    #[error("Authentication failed: Invalid client nonce in the final client message")]
    Nonce,
    #[error("Authentication failed: channel binding is not supported")]
    ChannelBinding,
}

/// A client-first message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// `n,,` or `n,a=<authzid>,`: echoed back (base64) in the client-final's `c=`.
    pub gs2_header: String,
    pub user: String,
    pub nonce: String,
    /// The message less its GS2 header, part of the AuthMessage.
    pub bare: String,
    /// Kafka's `tokenauth=true` extension.
    pub token_auth: bool,
}

/// `saslname`: `=2C` is a comma and `=3D` an equals sign; any other `=` is malformed.
fn decode_saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "2C" => ',',
            "3D" => '=',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// Parses `gs2-header client-first-message-bare`: `n,[a=authzid],n=user,r=nonce[,ext=..]*`.
pub fn parse_client_first(message: &[u8]) -> Result<ClientFirst, ScramError> {
    let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    let (cbind, rest) = text
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    match cbind {
        "n" => {}
        "y" | "p" => return Err(ScramError::ChannelBinding),
        s if s.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed("bad channel binding flag")),
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    let authzid = match authzid {
        "" => None,
        a => Some(
            a.strip_prefix("a=")
                .and_then(decode_saslname)
                .ok_or(ScramError::Malformed("bad authorization id"))?,
        ),
    };
    let mut attributes = bare.split(',');
    let user = attributes
        .next()
        .and_then(|a| a.strip_prefix("n="))
        .and_then(decode_saslname)
        .ok_or(ScramError::Malformed("no user name"))?;
    let nonce = attributes
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .filter(|n| !n.is_empty())
        .ok_or(ScramError::Malformed("no client nonce"))?;
    if !nonce
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(ScramError::Malformed("client nonce is not printable"));
    }
    let mut token_auth = false;
    for ext in attributes {
        let (key, value) = ext
            .split_once('=')
            .ok_or(ScramError::Malformed("extension is not key=value"))?;
        if key.is_empty() {
            return Err(ScramError::Malformed("extension without a name"));
        }
        if key == "tokenauth" && value.eq_ignore_ascii_case("true") {
            token_auth = true;
        }
    }
    if user.is_empty() {
        return Err(ScramError::Malformed("empty user name"));
    }
    if authzid.as_ref().is_some_and(|a| *a != user) {
        return Err(ScramError::AuthorizationId);
    }
    Ok(ClientFirst {
        gs2_header: format!("{cbind},{},", &rest[..rest.len() - bare.len() - 1]),
        user,
        nonce: nonce.to_owned(),
        bare: bare.to_owned(),
        token_auth,
    })
}

/// The server's side of one SCRAM exchange, between the server-first and the client-final
/// messages.
#[derive(Debug, Clone)]
pub struct ServerExchange {
    mechanism: Mechanism,
    credential: ScramCredential,
    first: ClientFirst,
    server_first: String,
    /// Client nonce ++ server nonce.
    nonce: String,
}

impl ServerExchange {
    /// Answers a client-first message: the exchange to finish and the server-first
    /// message. `credential` finds the user's credential for this mechanism.
    pub fn start(
        mechanism: Mechanism,
        client_first: &[u8],
        credential: impl FnOnce(&str) -> Option<ScramCredential>,
        server_nonce: &str,
    ) -> Result<(ServerExchange, Vec<u8>), ScramError> {
        let first = parse_client_first(client_first)?;
        if first.token_auth {
            return Err(ScramError::TokenAuth);
        }
        let credential = credential(&first.user)
            .filter(|c| c.mechanism == mechanism.code())
            .ok_or(ScramError::InvalidCredentials)?;
        let nonce = format!("{}{server_nonce}", first.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        let reply = server_first.clone().into_bytes();
        Ok((
            ServerExchange {
                mechanism,
                credential,
                first,
                server_first,
                nonce,
            },
            reply,
        ))
    }

    /// The user the client named.
    pub fn user(&self) -> &str {
        &self.first.user
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Checks the client-final message `c=<b64 gs2 header>,r=<nonce>[,ext]*,p=<proof>`;
    /// on success, the server-final message `v=<server signature>`.
    pub fn finish(&self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attributes = without_proof.split(',');
        let binding = attributes
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding"))?;
        let binding = B64
            .decode(binding)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        if binding != self.first.gs2_header.as_bytes() {
            return Err(ScramError::ChannelBinding);
        }
        let nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if !constant_time_eq(nonce.as_bytes(), self.nonce.as_bytes()) {
            return Err(ScramError::Nonce);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let auth_message = format!("{},{},{without_proof}", self.first.bare, self.server_first);
        let m = self.mechanism;
        let client_signature = m.hmac(&self.credential.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(ScramError::InvalidCredentials);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        if !constant_time_eq(&m.hash(&client_key), &self.credential.stored_key) {
            return Err(ScramError::InvalidCredentials);
        }
        let server_signature = m.hmac(&self.credential.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3: user "user", password "pencil".
    #[test]
    fn rfc7677_sha256_exchange() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let cred = Mechanism::Sha256.credential("pencil", &salt, 4096);
        let (exchange, server_first) = ServerExchange::start(
            Mechanism::Sha256,
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            |u| (u == "user").then(|| cred.clone()),
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        )
        .unwrap();
        assert_eq!(
            server_first,
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let server_final = exchange
            .finish(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap();
        assert_eq!(
            server_final,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        // A wrong proof is refused.
        assert_eq!(
            exchange.finish(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=AHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
            ),
            Err(ScramError::InvalidCredentials)
        );
        assert!(verify_password(&cred, "pencil"));
        assert!(!verify_password(&cred, "pencil2"));
    }

    /// What a client computes, for the round trip.
    fn client_final(m: Mechanism, password: &str, first_bare: &str, server_first: &str) -> String {
        let fields: Vec<&str> = server_first.split(',').collect();
        let nonce = fields[0].strip_prefix("r=").unwrap();
        let salt = B64.decode(fields[1].strip_prefix("s=").unwrap()).unwrap();
        let i: u32 = fields[2].strip_prefix("i=").unwrap().parse().unwrap();
        let salted = m.salted_password(password.as_bytes(), &salt, i);
        let client_key = m.hmac(&salted, b"Client Key");
        let stored = m.hash(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{first_bare},{server_first},{without_proof}");
        let sig = m.hmac(&stored, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }

    #[test]
    fn sha512_round_trip_and_text_form() {
        let m = Mechanism::Sha512;
        let cred = m.credential("s3cret", b"salty", 4096);
        let text = format_credential(&cred);
        assert_eq!(parse_credential(m, &text).unwrap(), cred);
        let nonce = server_nonce().unwrap();
        let (ex, server_first) = ServerExchange::start(
            m,
            b"n,,n=alice,r=abc,tokenauth=false,other=1",
            |_| Some(cred.clone()),
            &nonce,
        )
        .unwrap();
        assert_eq!(ex.user(), "alice");
        let server_first = String::from_utf8(server_first).unwrap();
        let fin = client_final(
            m,
            "s3cret",
            "n=alice,r=abc,tokenauth=false,other=1",
            &server_first,
        );
        assert!(ex.finish(fin.as_bytes()).unwrap().starts_with(b"v="));
        let wrong = client_final(
            m,
            "nope",
            "n=alice,r=abc,tokenauth=false,other=1",
            &server_first,
        );
        assert_eq!(
            ex.finish(wrong.as_bytes()),
            Err(ScramError::InvalidCredentials)
        );
        // A credential of the other mechanism does not do.
        let other = Mechanism::Sha256.credential("s3cret", b"salty", 4096);
        assert!(ServerExchange::start(m, b"n,,n=alice,r=abc", |_| Some(other), "x").is_err());
    }

    #[test]
    fn malformed_and_refused_messages_are_errors() {
        let cred = Mechanism::Sha256.credential("p", b"s", 4096);
        let start = |msg: &[u8]| {
            ServerExchange::start(Mechanism::Sha256, msg, |_| Some(cred.clone()), "srv").map(|_| ())
        };
        for bad in [
            &b""[..],
            b"n",
            b"n,",
            b"n,,",
            b"n,,r=abc",
            b"n,,n=,r=abc",
            b"n,,n=bob",
            b"n,,n=bob,r=",
            b"n,,n=b=ob,r=x",
            b"x,,n=bob,r=x",
            b"n,,n=bob,r=x,=1",
            b"n,,n=bob,r=x,noequals",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(start(bad), Err(ScramError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(start(b"y,,n=bob,r=x"), Err(ScramError::ChannelBinding));
        assert_eq!(
            start(b"n,,n=bob,r=x,tokenauth=true"),
            Err(ScramError::TokenAuth)
        );
        assert_eq!(
            start(b"n,a=eve,n=bob,r=x"),
            Err(ScramError::AuthorizationId)
        );
        assert_eq!(start(b"n,a=bob,n=bob,r=x"), Ok(()));
        assert_eq!(
            ServerExchange::start(Mechanism::Sha256, b"n,,n=bob,r=x", |_| None, "s").map(|_| ()),
            Err(ScramError::InvalidCredentials)
        );
        let (ex, _) = ServerExchange::start(
            Mechanism::Sha256,
            b"n,,n=bob,r=x",
            |_| Some(cred.clone()),
            "s",
        )
        .unwrap();
        for bad in [
            &b""[..],
            b"p=abc",
            b"c=biws,p=abc",
            b"c=!!,r=xs,p=abc",
            b"c=biws,r=xs,p=!!",
        ] {
            assert!(
                matches!(ex.finish(bad), Err(ScramError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(ex.finish(b"c=biws,r=other,p=AAAA"), Err(ScramError::Nonce));
        assert_eq!(
            ex.finish(b"c=eSws,r=xs,p=AAAA"),
            Err(ScramError::ChannelBinding)
        );
        assert_eq!(
            ex.finish(b"c=biws,r=xs,p=AAAA"),
            Err(ScramError::InvalidCredentials)
        );
    }

    #[test]
    fn credential_text_is_checked() {
        let m = Mechanism::Sha256;
        assert!(parse_credential(m, "").is_err());
        assert!(parse_credential(m, "salt=AAAA,iterations=4096").is_err());
        let good = format_credential(&m.credential("p", b"salt", 4096));
        assert!(parse_credential(m, &good).is_ok());
        assert!(parse_credential(Mechanism::Sha512, &good).is_err());
        let few = good.replace("iterations=4096", "iterations=10");
        assert!(parse_credential(m, &few)
            .unwrap_err()
            .contains("iterations"));
        assert!(parse_credential(m, &good.replace("salt=", "salt=!")).is_err());
        assert_eq!(decode_saslname("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(decode_saslname("a=4"), None);
    }
}

//! HTTP basic authentication against the shard's user store (`security::users`: the
//! `[[users]]` of every protocol and the stored SCRAM credentials), with RabbitMQ's
//! management tags deciding what a user may do. Pure (the fuzz tests drive it); the
//! router counts and logs refused logins (`refused_login`, `security::audit`). Runs on the
//! shard serving the request.
//!
//! - `/health`, `/health/ready` and `/metrics` are open unless `http.auth_health` /
//!   `http.auth_metrics` say otherwise;
//! - reading anything (the dashboard, every `GET` under `/api/v1/`) and the messaging
//!   calls (produce and read records, publish, get) need a management tag: `management`,
//!   `policymaker`, `monitoring` or `administrator`;
//! - changing anything (create, delete, alter, declare, bind, close a connection) needs
//!   `administrator`.
//!
//! No credentials or wrong ones: 401 with a `WWW-Authenticate` challenge. Right
//! credentials without the tag: 403. A `loopback_users` user is refused from a remote
//! address, as over AMQP.

use std::net::SocketAddr;

use base64::Engine;
use http::{header, HeaderMap, Method};

use super::ApiError;
use crate::config::{AmqpConfig, HttpConfig};
use crate::security::users::UserStore;

/// What an endpoint asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Open,
    /// Any management tag.
    Monitor,
    Admin,
}

/// An authenticated user.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub tags: Vec<String>,
}

const MANAGEMENT_TAGS: &[&str] = &["management", "policymaker", "monitoring", "administrator"];

/// The calls that move messages rather than change topology.
const MESSAGING: &[&str] = &["records", "publish", "get"];

/// What `method` on `path` needs.
pub fn need(config: &HttpConfig, method: &Method, path: &[String]) -> Need {
    let first = path.first().map(String::as_str);
    match first {
        Some("health") if !config.auth_health => return Need::Open,
        Some("metrics") if !config.auth_metrics => return Need::Open,
        Some("health") | Some("metrics") => return Need::Monitor,
        _ => {}
    }
    let reading = method == Method::GET || method == Method::HEAD;
    let messaging =
        method == Method::POST && path.last().is_some_and(|l| MESSAGING.contains(&l.as_str()));
    if reading || messaging {
        Need::Monitor
    } else {
        Need::Admin
    }
}

/// Checks the request's credentials against `need`.
pub fn check(
    users: &UserStore,
    config: &AmqpConfig,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    need: Need,
) -> Result<Option<User>, ApiError> {
    if need == Need::Open {
        return Ok(None);
    }
    let (name, password) = basic_credentials(headers).ok_or(ApiError::Unauthorized)?;
    let tags = match users.tags(&name) {
        Some(tags) if users.verify_password(&name, &password) => tags,
        _ => return Err(ApiError::Unauthorized),
    };
    let user = User {
        name,
        tags: tags.to_vec(),
    };
    if config.loopback_users.contains(&user.name) && !peer.is_some_and(|p| p.ip().is_loopback()) {
        return Err(ApiError::Forbidden(format!(
            "user '{}' can only connect via localhost",
            user.name
        )));
    }
    let has = |tag: &str| user.tags.iter().any(|t| t == tag);
    let allowed = match need {
        Need::Open => true,
        Need::Monitor => MANAGEMENT_TAGS.iter().any(|t| has(t)),
        Need::Admin => has("administrator"),
    };
    if !allowed {
        let wanted = if need == Need::Admin {
            "the administrator tag"
        } else {
            "a management tag (management, policymaker, monitoring or administrator)"
        };
        return Err(ApiError::Forbidden(format!(
            "user '{}' needs {wanted} for this",
            user.name
        )));
    }
    Ok(Some(user))
}

/// The user name of a request whose basic credentials `check` refused (for the audit
/// trail); `None` when it sent none.
pub fn refused_login(
    headers: &HeaderMap,
    checked: &Result<Option<User>, ApiError>,
) -> Option<String> {
    match checked {
        Err(ApiError::Unauthorized) => basic_credentials(headers).map(|(name, _)| name),
        _ => None,
    }
}

/// `Authorization: Basic base64(user:password)`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn endpoints_need_what_rabbitmq_users_expect() {
        let c = HttpConfig::default();
        assert_eq!(need(&c, &Method::GET, &path(&["health"])), Need::Open);
        assert_eq!(need(&c, &Method::GET, &path(&["metrics"])), Need::Open);
        let topics = path(&["api", "v1", "topics"]);
        assert_eq!(need(&c, &Method::GET, &topics), Need::Monitor);
        assert_eq!(need(&c, &Method::POST, &topics), Need::Admin);
        let produce = path(&["api", "v1", "topics", "t", "records"]);
        assert_eq!(need(&c, &Method::POST, &produce), Need::Monitor);
        let closed = HttpConfig {
            auth_metrics: true,
            ..HttpConfig::default()
        };
        assert_eq!(
            need(&closed, &Method::GET, &path(&["metrics"])),
            Need::Monitor
        );
    }

    #[test]
    fn basic_header_is_decoded() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            "Basic Z3Vlc3Q6Z3Vlc3Q=".parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&h),
            Some(("guest".into(), "guest".into()))
        );
        h.insert(header::AUTHORIZATION, "Bearer xyz".parse().unwrap());
        assert_eq!(basic_credentials(&h), None);
    }
}

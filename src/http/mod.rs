//! HTTP/1.1 on every shard: health (`health`), Prometheus metrics (`prometheus`), the REST
//! management and messaging API under `/api/v1/` and the live dashboard at `/`.
//!
//! Every shard binds `http.addr`, and `http.tls_addr` (HTTPS, the same service over TLS)
//! when set (SO_REUSEPORT, like the Kafka and AMQP ports), and serves the connections it
//! accepts with hyper, on glommio (`io`). A request runs on the shard
//! that accepted it; whatever it needs of other shards it asks through the mesh
//! (`Shard::stats_all` for metrics and state, `Shard::kafka` / `Shard::amqp` for work on
//! an owner, `Shard::change_catalog` for topology), never by reaching into their memory.
//!
//! Request bodies are read whole, bounded by `http.max_body_bytes` (413 above it, after the
//! rest of the body is read and dropped, within bounds, so the client hears it); every
//! error is JSON `{"error": ..., "reason": ...}` with the status a REST client expects.

pub mod acl;
pub mod amqp;
pub mod auth;
pub mod connections;
pub mod groups;
pub mod health;
pub mod io;
pub mod overview;
pub mod prometheus;
pub mod records;
pub mod stats;
pub mod streams;
pub mod topics;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{select, Either};
use futures::stream::LocalBoxStream;
use futures::StreamExt;
use glommio::net::TcpListener;
use http::{header, HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};

use crate::broker::Shard;
use crate::metrics::Protocol;
use crate::runtime::transport::{self, Transport};
use crate::util::notify::Listener;
use auth::User;

pub fn bind(shard: &Shard) -> std::io::Result<TcpListener> {
    TcpListener::bind(shard.config.http.addr.as_str()).map_err(std::io::Error::from)
}

/// The `https://` listener, when `http.tls_addr` is set.
pub fn bind_tls(shard: &Shard) -> std::io::Result<Option<TcpListener>> {
    let addr = shard.config.http.tls_addr.as_str();
    if addr.is_empty() {
        return Ok(None);
    }
    TcpListener::bind(addr)
        .map(Some)
        .map_err(std::io::Error::from)
}

/// Accepts until the shard stops.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    crate::runtime::listener::accept_loop(shard, listener, "http", |shard, stream| async move {
        let _ = stream.set_nodelay(true);
        connection(shard, Transport::Plain(stream)).await
    })
    .await
}

/// Accepts HTTPS connections until the shard stops: the TLS handshake (ALPN `http/1.1`),
/// then the same service.
pub async fn accept_tls_loop(shard: Rc<Shard>, listener: TcpListener) {
    crate::runtime::listener::accept_loop(shard, listener, "http", |shard, stream| async move {
        let _ = stream.set_nodelay(true);
        let Some(certs) = crate::security::tls::current() else {
            return Ok(());
        };
        let timeout = Duration::from_millis(shard.config.tls.handshake_timeout_ms.max(1));
        let Ok(stream) =
            transport::accept_tls(stream, certs.http.clone(), timeout, Protocol::Http).await
        else {
            // Counted and logged by the handshake.
            return Ok(());
        };
        connection(shard, stream).await
    })
    .await
}

/// Serves one connection (keep-alive) until the peer leaves or the shard stops.
async fn connection(shard: Rc<Shard>, stream: Transport) -> Result<(), hyper::Error> {
    let peer = stream.tcp().peer_addr().map_err(|_| ()).ok();
    let config = &shard.config.http;
    let service_shard = shard.clone();
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let shard = service_shard.clone();
        async move { Ok::<_, Infallible>(handle(&shard, req, peer).await) }
    });
    let mut builder = http1(config);
    builder
        .timer(io::GlommioTimer)
        .header_read_timeout(read_timeout(&shard));
    let conn = builder.serve_connection(io::Io(stream), service);
    let mut conn = std::pin::pin!(conn);
    let stop = Listener::new();
    stop.listen(&shard.stop);
    if shard.stopping.get() {
        return Ok(());
    }
    match select(conn.as_mut(), stop).await {
        Either::Left((r, _)) => r,
        Either::Right(_) => {
            // Finish the request in progress, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// hyper's HTTP/1 server as every connection uses it, less the glommio timer (which only a
/// shard has): the fuzz tests parse requests with this same configuration.
pub fn http1(config: &crate::config::HttpConfig) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .max_buf_size(config.max_header_bytes.max(8192))
        .max_headers(100);
    builder
}

/// What the router reads of a request's head before any handler runs: the decoded path
/// and query, the endpoint's metric name and the credentials it needs, checked. Pure (no
/// shard), so the fuzz tests drive it with whatever hyper parsed.
pub struct Head {
    pub path: Vec<String>,
    pub query: HashMap<String, String>,
    pub endpoint: &'static str,
    pub user: Result<Option<User>, ApiError>,
}

pub fn head(
    config: &crate::config::Config,
    users: &crate::security::users::UserStore,
    parts: &http::request::Parts,
    peer: Option<SocketAddr>,
) -> Head {
    let path = segments(parts.uri.path());
    let endpoint = endpoint_name(&parts.method, &path);
    let need = auth::need(&config.http, &parts.method, &path);
    let user = auth::check(users, &config.amqp, &parts.headers, peer, need);
    Head {
        query: query(parts.uri.query()),
        path,
        endpoint,
        user,
    }
}

/// A request as the API handlers see it: decoded path segments, query, body, the user.
pub struct Req {
    pub method: Method,
    pub path: Vec<String>,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub user: Option<User>,
    /// The client's address (for ACL host matching).
    pub peer: Option<SocketAddr>,
}

impl Req {
    pub fn query_parse<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ApiError> {
        match self.query.get(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::BadRequest(format!("query parameter {key}={v} is not valid"))
            }),
        }
    }

    /// The body as JSON of type `T` (400 naming what is wrong otherwise).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ApiError::BadRequest(format!(
                "request body is not valid JSON for this endpoint: {e}"
            ))
        })
    }
}

/// A response body: whole, or a stream (server-sent events).
pub enum Body {
    Full(Option<Bytes>),
    Stream(LocalBoxStream<'static, Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(s) => s.poll_next_unpin(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Full(Some(b)) => hyper::body::SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => hyper::body::SizeHint::with_exact(0),
            Body::Stream(_) => hyper::body::SizeHint::default(),
        }
    }
}

pub type Reply = Response<Body>;

/// What an API call can fail with, each with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("login required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    Unavailable(String),
    /// The disk refused the write (507 Insufficient Storage).
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The short name in the body's `error` field.
    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "not_authorised",
            ApiError::Forbidden(_) => "not_authorised",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::InsufficientStorage(_) => "insufficient_storage",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn reply(&self) -> Reply {
        let mut r = json(
            self.status(),
            &serde_json::json!({"error": self.kind(), "reason": self.to_string()}),
        );
        if matches!(self, ApiError::Unauthorized) {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"Portask\""),
            );
        }
        r
    }
}

pub type ApiResult = Result<Reply, ApiError>;

/// A JSON response.
pub fn json<T: serde::Serialize + ?Sized>(status: StatusCode, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => with_type(status, "application/json", body.into()),
        Err(e) => with_type(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding the response: {e}").into(),
        ),
    }
}

pub fn ok_json<T: serde::Serialize + ?Sized>(value: &T) -> ApiResult {
    Ok(json(StatusCode::OK, value))
}

/// 204 No Content.
pub fn no_content() -> ApiResult {
    let mut r = Response::new(Body::Full(None));
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

pub fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Reply {
    let mut r = Response::new(Body::Full(Some(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// Percent-decoded path segments (`%2F` is the default vhost `/`, as in RabbitMQ's API).
fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

fn query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

/// Reads, checks and answers one request, counting it in the metrics.
async fn handle(
    shard: &Rc<Shard>,
    req: http::Request<Incoming>,
    peer: Option<SocketAddr>,
) -> Reply {
    let (parts, body) = req.into_parts();
    let Head {
        path,
        query,
        endpoint,
        user,
    } = head(&shard.config, &shard.users(), &parts, peer);
    if let Some(name) = auth::refused_login(&parts.headers, &user) {
        crate::security::audit::auth_failure(Protocol::Http, "basic", || {
            let from = peer.map_or_else(|| "?".to_owned(), |p| p.to_string());
            format!("http basic login as '{name}' from {from} refused")
        });
    }
    let result = async {
        let limits = (shard.config.http.max_body_bytes, read_timeout(shard));
        let body = read_body(body, &parts.headers, limits).await?;
        let user = user?;
        let req = Req {
            method: parts.method.clone(),
            path,
            query,
            headers: parts.headers,
            body,
            user,
            peer,
        };
        route(shard, req).await
    }
    .await;
    let reply = result.unwrap_or_else(|e| e.reply());
    crate::metrics::with(|m| {
        m.request(Protocol::Http, endpoint);
        if reply.status().as_u16() >= 400 {
            m.error(Protocol::Http, reply.status().as_u16() as i32);
        }
    });
    reply
}

/// How much of a body over the limit is read and thrown away before the 413 goes out, and
/// for how long. A client that writes its whole request before reading (most do, unless they
/// send `Expect: 100-continue`) would otherwise meet a closed socket mid-write and report a
/// broken pipe or a reset instead of the 413: closing with unread bytes makes the kernel send
/// RST, which can also discard the answer already sent. Past either bound the connection is
/// closed anyway, so a client cannot make a shard read without end.
const DISCARD_MAX_BYTES: u64 = 64 * 1024 * 1024;
const DISCARD_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// `http.read_timeout_ms`: how long a request's head (hyper's header-read timeout, from its
/// first byte) and then its body may take to arrive whole, so that a stalled or trickling
/// client cannot hold a connection for ever.
fn read_timeout(shard: &Shard) -> std::time::Duration {
    std::time::Duration::from_millis(shard.config.http.read_timeout_ms.max(1))
}

/// The whole request body; 413 once it is over `max` bytes (declared or counted), 408 when
/// it has not all arrived within `limit`.
async fn read_body(
    mut body: Incoming,
    headers: &HeaderMap,
    (max, limit): (usize, std::time::Duration),
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A client that asked `Expect: 100-continue` waits for our word before sending the body;
    // it gets the 413 at once and sends nothing (hyper sends `100 Continue` only when the
    // body is read).
    let waits = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if declared.is_some_and(|n| n > max as u64) {
        if !waits {
            discard(body).await;
        }
        return Err(too_large(max));
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    // The whole body is due within the limit, not each read of it: a client trickling a
    // byte at a time (slowloris) would otherwise hold the connection for ever.
    let deadline = std::time::Instant::now() + limit;
    loop {
        let next = std::pin::pin!(body.frame());
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let late = std::pin::pin!(glommio::timer::sleep(left));
        let frame = match select(next, late).await {
            Either::Left((Some(frame), _)) => frame,
            Either::Left((None, _)) => break,
            Either::Right(_) => {
                return Err(ApiError::RequestTimeout(format!(
                    "the request body was not received whole within {} ms \
                     (http.read_timeout_ms): {len} bytes of it came",
                    limit.as_millis()
                )))
            }
        };
        let frame =
            frame.map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        len += data.len();
        if len > max {
            discard(body).await;
            return Err(too_large(max));
        }
        chunks.push(data);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => Bytes::from(chunks.concat()),
    })
}

/// Reads and drops the rest of a body, within `DISCARD_MAX_BYTES` and `DISCARD_MAX_TIME`.
async fn discard(mut body: Incoming) {
    let drain = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += data.len() as u64;
                if seen > DISCARD_MAX_BYTES {
                    return;
                }
            }
        }
    };
    let drain = std::pin::pin!(drain);
    let limit = std::pin::pin!(glommio::timer::sleep(DISCARD_MAX_TIME));
    select(drain, limit).await;
}

fn too_large(max: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "request body larger than http.max_body_bytes ({max} bytes)"
    ))
}

/// The endpoint's name for `portask_requests_total{protocol="http",api=...}`: the route's
/// first segments, never a user-chosen name (labels stay few).
fn endpoint_name(method: &Method, path: &[String]) -> &'static str {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let get = method == Method::GET;
    match p.as_slice() {
        [] => "dashboard",
        ["health"] | ["health", "ready"] => "health",
        ["metrics"] => "metrics",
        ["api", "v1", "overview"] => "overview",
        ["api", "v1", "stream"] => "stream",
        ["api", "v1", "topics", _, "records"] => "produce",
        ["api", "v1", "topics", _, "partitions", _, "records"] => "read",
        ["api", "v1", "topics", ..] if get => "topics.get",
        ["api", "v1", "topics", ..] => "topics.change",
        ["api", "v1", "exchanges", _, _, "publish"] => "publish",
        ["api", "v1", "queues", _, _, "get"] => "get",
        ["api", "v1", "consumer-groups", ..] => "consumer-groups",
        ["api", "v1", "queues", ..]
        | ["api", "v1", "exchanges", ..]
        | ["api", "v1", "bindings", ..] => {
            if get {
                "amqp.get"
            } else {
                "amqp.change"
            }
        }
        ["api", "v1", "connections", ..] => "connections",
        ["api", "v1", "shards"] => "shards",
        _ => "other",
    }
}

/// The dashboard page: one self-contained file, compiled into the binary.
const DASHBOARD: &str = include_str!("dashboard.html");

async fn route(shard: &Rc<Shard>, req: Req) -> ApiResult {
    let path: Vec<String> = req.path.clone();
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let m = &req.method;
    match p.as_slice() {
        ["health"] => {
            only(m, &[Method::GET, Method::HEAD])?;
            health::health(shard).await
        }
        ["health", "ready"] => {
            only(m, &[Method::GET, Method::HEAD])?;
            health::ready(shard)
        }
        _ if !shard.shutdown.all_ready(shard.count) => Err(ApiError::Unavailable(
            "the broker is starting (recovery in progress)".into(),
        )),
        [] | ["index.html"] => {
            only(m, &[Method::GET, Method::HEAD])?;
            Ok(with_type(
                StatusCode::OK,
                "text/html; charset=utf-8",
                Bytes::from_static(DASHBOARD.as_bytes()),
            ))
        }
        ["metrics"] => {
            only(m, &[Method::GET])?;
            prometheus::scrape(shard).await
        }
        ["api", "v1", rest @ ..] => api(shard, &req, rest).await,
        _ => Err(ApiError::NotFound(format!(
            "no such endpoint: /{}",
            path.join("/")
        ))),
    }
}

/// 405 unless the method is one of `allowed`.
pub fn only(method: &Method, allowed: &[Method]) -> Result<(), ApiError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed)
    }
}

async fn api(shard: &Rc<Shard>, req: &Req, rest: &[&str]) -> ApiResult {
    let m = &req.method;
    match rest {
        ["overview"] => {
            only(m, &[Method::GET])?;
            overview::overview(shard, acl::Caller::of(req)).await
        }
        ["stream"] => {
            only(m, &[Method::GET])?;
            overview::stream(shard, acl::Caller::of(req))
        }
        ["shards"] => {
            only(m, &[Method::GET])?;
            overview::shards(shard).await
        }
        ["topics", _, "records"] | ["topics", _, "partitions", _, "records"] => {
            records::route(shard, req, rest).await
        }
        ["topics", ..] => topics::route(shard, req, &rest[1..]).await,
        ["consumer-groups", ..] => groups::route(shard, req, &rest[1..]).await,
        ["connections", ..] => connections::route(shard, req, &rest[1..]).await,
        ["queues", ..] | ["exchanges", ..] | ["bindings", ..] | ["vhosts", ..] => {
            amqp::route(shard, req, rest).await
        }
        _ => Err(ApiError::NotFound(format!(
            "no such endpoint: /api/v1/{}",
            rest.join("/")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(
            segments("/api/v1/queues/%2F/jobs"),
            vec!["api", "v1", "queues", "/", "jobs"]
        );
        assert_eq!(segments("/"), Vec::<String>::new());
        let q = query(Some("offset=5&max_records=10&name=a%20b&x"));
        assert_eq!(q.get("offset").map(String::as_str), Some("5"));
        assert_eq!(q.get("name").map(String::as_str), Some("a b"));
        assert_eq!(q.get("x").map(String::as_str), Some(""));
    }
}

//! Kafka SASL against the real broker: PLAIN and SCRAM logins with rdkafka on a
//! `SASL_PLAINTEXT` listener, a wrong password reported as an authentication error and
//! counted in `/metrics`, AlterUserScramCredentials and DescribeUserScramCredentials over
//! the wire (kept across a restart), the gate before authentication, SaslHandshake v0 with
//! bare tokens, re-authentication (KIP-368), a logged-in connection moving to its
//! partition's shard with its session, and the same users over AMQP and HTTP.
//!
//! Users are made with `portask hash-password`, as an operator would.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::kafka::{client, read_frame, request_frame};
use common::{Broker, Launch};
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, ApiKey,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse, MetadataRequest,
    ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

/// `[[users]]` as one inline TOML array (for `PORTASK_USERS`): alice (every credential,
/// administrator), carol (SCRAM credentials only, management).
fn users_toml() -> String {
    static USERS: OnceLock<String> = OnceLock::new();
    USERS
        .get_or_init(|| {
            let mut alice = common::hashed_user("alice", "alice-secret");
            alice.insert(
                "tags".into(),
                toml::Value::Array(vec!["administrator".into()]),
            );
            let mut carol = common::hashed_user("carol", "carol-secret");
            carol.remove("password_hash");
            carol.insert("tags".into(), toml::Value::Array(vec!["management".into()]));
            let inline = |t: toml::Table| {
                let pairs: Vec<String> = t.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{{}}}", pairs.join(", "))
            };
            format!("[{}, {}]", inline(alice), inline(carol))
        })
        .clone()
}

/// A broker whose Kafka port is a `SASL_PLAINTEXT` listener, with the test users.
fn sasl_broker(data: &std::path::Path, extra: &[(&str, &str)]) -> Broker {
    // `produce_and_consume` joins a group each time: without Kafka's 3 s initial delay.
    let mut launch = Launch::new(data, 2, &[common::FAST_GROUPS, extra].concat());
    let listeners = format!(
        "[{{name = \"SASL_PLAINTEXT\", addr = \"127.0.0.1:{}\"}}]",
        launch.kafka_port
    );
    launch
        .env
        .push(("PORTASK_KAFKA__LISTENERS".to_owned(), listeners));
    launch.env.push(("PORTASK_USERS".to_owned(), users_toml()));
    Broker::start_launch(launch)
}

fn sasl_settings<'a>(
    mechanism: &'a str,
    user: &'a str,
    password: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", mechanism),
        ("sasl.username", user),
        ("sasl.password", password),
    ]
}

/// Produces `n` records to `topic` and reads them back, as `user`.
fn produce_and_consume(broker: &Broker, settings: &[(&str, &str)], topic: &str, n: usize) {
    let producer: FutureProducer = client(broker, &[settings, &[("linger.ms", "0")]].concat());
    for i in 0..n {
        let payload = format!("m{i}");
        futures::executor::block_on(producer.send(
            FutureRecord::<(), _>::to(topic).payload(&payload),
            Duration::from_secs(15),
        ))
        .expect("delivered");
    }
    let consumer: BaseConsumer = client(
        broker,
        &[
            settings,
            &[
                ("group.id", "sasl-readers"),
                ("auto.offset.reset", "earliest"),
            ],
        ]
        .concat(),
    );
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < n && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("message");
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    let want: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
}

/// A client context that keeps the errors librdkafka reports.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<(KafkaError, String)>>>);

impl ClientContext for Errors {
    fn error(&self, error: KafkaError, reason: &str) {
        self.0
            .lock()
            .expect("errors")
            .push((error, reason.to_owned()));
    }
}

impl ConsumerContext for Errors {}

/// Waits until librdkafka reports an authentication error; returns its reason.
fn authentication_error(broker: &Broker, settings: &[(&str, &str)]) -> String {
    let errors = Errors::default();
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", broker.bootstrap());
    for (k, v) in settings {
        c.set(*k, *v);
    }
    let consumer: BaseConsumer<Errors> = c.create_with_context(errors.clone()).expect("client");
    let _ = consumer.fetch_metadata(None, Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = errors.0.lock().expect("errors").iter().find_map(|(e, r)| {
            matches!(
                e.rdkafka_error_code(),
                Some(RDKafkaErrorCode::Authentication)
            )
            .then(|| r.clone())
        });
        if let Some(reason) = found {
            return reason;
        }
        assert!(
            Instant::now() < deadline,
            "no authentication error; got {:?}",
            errors.0.lock().expect("errors")
        );
        let _ = consumer.poll(Duration::from_millis(100));
    }
}

/// `name{labels}` from `/metrics`, 0 when absent.
fn metric(broker: &Broker, name: &str, labels: &[&str]) -> f64 {
    let text = ureq::get(&format!("{}/metrics", broker.http_url()))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn connect(broker: &Broker) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", broker.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Sends one request and decodes its answer; `None` when the broker closed the connection.
fn call<Req: Encodable, Resp: Decodable + HeaderVersion>(
    s: &mut TcpStream,
    api: ApiKey,
    version: i16,
    correlation: i32,
    req: &Req,
) -> Option<Resp> {
    s.write_all(&request_frame(api, version, correlation, "sasl-test", req))
        .ok()?;
    let mut resp = read_frame(s)?;
    let header =
        ResponseHeader::decode(&mut resp, Resp::header_version(version)).expect("response header");
    assert_eq!(header.correlation_id, correlation);
    Some(Resp::decode(&mut resp, version).expect("response body"))
}

fn closed(s: &mut TcpStream) -> bool {
    read_frame(s).is_none()
}

/// SaslHandshake v1 and SaslAuthenticate (v`version`) with PLAIN on a raw connection.
fn plain_login(
    s: &mut TcpStream,
    user: &str,
    password: &str,
    version: i16,
) -> SaslAuthenticateResponse {
    let hs: SaslHandshakeResponse = call(
        s,
        ApiKey::SaslHandshake,
        1,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    )
    .expect("handshake answer");
    assert_eq!(hs.error_code, 0);
    call(
        s,
        ApiKey::SaslAuthenticate,
        version,
        2,
        &SaslAuthenticateRequest::default()
            .with_auth_bytes(Bytes::from(format!("\0{user}\0{password}"))),
    )
    .expect("authenticate answer")
}

fn metadata(s: &mut TcpStream, correlation: i32) -> bool {
    s.write_all(&request_frame(
        ApiKey::Metadata,
        4,
        correlation,
        "sasl-test",
        &MetadataRequest::default().with_topics(Some(vec![])),
    ))
    .is_ok()
        && read_frame(s).is_some()
}

#[test]
fn plain_login_produces_and_consumes_and_a_wrong_password_is_an_authentication_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = sasl_broker(&dir.path().join("d"), &[]);
    let alice = sasl_settings("PLAIN", "alice", "alice-secret");
    produce_and_consume(&broker, &alice, "plain-topic", 5);

    let reason = authentication_error(&broker, &sasl_settings("PLAIN", "alice", "wrong"));
    assert!(reason.contains("Invalid username or password"), "{reason}");
    let reason = authentication_error(&broker, &sasl_settings("PLAIN", "mallory", "x"));
    assert!(reason.contains("Invalid username or password"), "{reason}");
    // The broker keeps serving everyone else; a SCRAM-only user logs in with PLAIN too.
    produce_and_consume(
        &broker,
        &sasl_settings("PLAIN", "carol", "carol-secret"),
        "plain-topic-2",
        3,
    );
    let failures = metric(
        &broker,
        "portask_auth_failures_total",
        &["protocol=\"kafka\"", "mechanism=\"PLAIN\""],
    );
    assert!(failures >= 2.0, "{failures}");
}

#[test]
fn scram_sha_256_and_sha_512_logins_with_configured_credentials() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = sasl_broker(&dir.path().join("d"), &[]);
    produce_and_consume(
        &broker,
        &sasl_settings("SCRAM-SHA-256", "alice", "alice-secret"),
        "scram-256",
        3,
    );
    produce_and_consume(
        &broker,
        &sasl_settings("SCRAM-SHA-512", "carol", "carol-secret"),
        "scram-512",
        3,
    );
    let reason = authentication_error(&broker, &sasl_settings("SCRAM-SHA-512", "carol", "nope"));
    assert!(reason.contains("Invalid user credentials"), "{reason}");
    assert!(
        metric(
            &broker,
            "portask_auth_failures_total",
            &["mechanism=\"SCRAM-SHA-512\""]
        ) >= 1.0
    );
}

fn describe(s: &mut TcpStream, users: Option<&[&str]>) -> DescribeUserScramCredentialsResponse {
    let users = users.map(|u| {
        u.iter()
            .map(|n| UserName::default().with_name(StrBytes::from_string(n.to_string())))
            .collect()
    });
    call(
        s,
        ApiKey::DescribeUserScramCredentials,
        0,
        20,
        &DescribeUserScramCredentialsRequest::default().with_users(users),
    )
    .expect("describe answer")
}

#[test]
fn altered_scram_credentials_log_in_are_described_and_survive_a_restart() {
    use portask::security::scram::Mechanism;
    let dir = tempfile::tempdir().expect("tmp");
    let mut broker = sasl_broker(&dir.path().join("d"), &[]);
    let mut s = connect(&broker);
    assert_eq!(
        plain_login(&mut s, "alice", "alice-secret", 2).error_code,
        0
    );
    let salt = b"dave-salt".to_vec();
    let salted = Mechanism::Sha512.salted_password(b"dave-secret", &salt, 4096);
    let upsert = |name: &str, mechanism: i8, iterations: i32| {
        ScramCredentialUpsertion::default()
            .with_name(StrBytes::from_string(name.into()))
            .with_mechanism(mechanism)
            .with_iterations(iterations)
            .with_salt(Bytes::from(salt.clone()))
            .with_salted_password(Bytes::from(salted.clone()))
    };
    let resp: AlterUserScramCredentialsResponse = call(
        &mut s,
        ApiKey::AlterUserScramCredentials,
        0,
        10,
        &AlterUserScramCredentialsRequest::default().with_upsertions(vec![
            upsert("dave", 2, 4096),
            upsert("eve", 2, 100),
            upsert("", 2, 4096),
            upsert("frank", 9, 4096),
        ]),
    )
    .expect("alter answer");
    let codes: Vec<(String, i16)> = resp
        .results
        .iter()
        .map(|r| (r.user.to_string(), r.error_code))
        .collect();
    assert_eq!(
        codes,
        [
            ("dave".into(), 0),
            ("eve".into(), 93),   // UNACCEPTABLE_CREDENTIAL: too few iterations
            ("".into(), 93),      // UNACCEPTABLE_CREDENTIAL: no name
            ("frank".into(), 33)  // UNSUPPORTED_SASL_MECHANISM
        ]
    );

    let dave = sasl_settings("SCRAM-SHA-512", "dave", "dave-secret");
    produce_and_consume(&broker, &dave, "dave-topic", 2);
    let check_described = |s: &mut TcpStream| {
        let d = describe(s, Some(&["dave", "nobody"]));
        assert_eq!(d.results.len(), 2);
        assert_eq!(d.results[0].error_code, 0);
        let infos: Vec<(i8, i32)> = d.results[0]
            .credential_infos
            .iter()
            .map(|c| (c.mechanism, c.iterations))
            .collect();
        assert_eq!(infos, [(2, 4096)]);
        assert_eq!(d.results[1].error_code, 91, "RESOURCE_NOT_FOUND");
        let all = describe(s, None);
        let names: Vec<String> = all.results.iter().map(|r| r.user.to_string()).collect();
        assert_eq!(names, ["alice", "carol", "dave"]);
    };
    check_described(&mut s);

    broker.terminate();
    broker.restart();
    let mut s = connect(&broker);
    assert_eq!(plain_login(&mut s, "dave", "dave-secret", 2).error_code, 0);
    check_described(&mut s);
    produce_and_consume(&broker, &dave, "dave-topic-2", 1);

    // Deletions: a credential named twice, one that does not exist, then dave's.
    let delete = |name: &str, mechanism: i8| {
        ScramCredentialDeletion::default()
            .with_name(StrBytes::from_string(name.into()))
            .with_mechanism(mechanism)
    };
    let resp: AlterUserScramCredentialsResponse = call(
        &mut s,
        ApiKey::AlterUserScramCredentials,
        0,
        11,
        &AlterUserScramCredentialsRequest::default()
            .with_deletions(vec![delete("dave", 2), delete("nobody", 1)])
            .with_upsertions(vec![upsert("dave", 2, 4096)]),
    )
    .expect("alter answer");
    let codes: Vec<(String, i16)> = resp
        .results
        .iter()
        .map(|r| (r.user.to_string(), r.error_code))
        .collect();
    assert_eq!(
        codes,
        [("dave".into(), 92), ("nobody".into(), 91)],
        "DUPLICATE_RESOURCE, RESOURCE_NOT_FOUND"
    );
    let resp: AlterUserScramCredentialsResponse = call(
        &mut s,
        ApiKey::AlterUserScramCredentials,
        0,
        12,
        &AlterUserScramCredentialsRequest::default().with_deletions(vec![delete("dave", 2)]),
    )
    .expect("alter answer");
    assert_eq!(resp.results[0].error_code, 0);
    assert_eq!(describe(&mut s, Some(&["dave"])).results[0].error_code, 91);
    let reason = authentication_error(&broker, &dave);
    assert!(reason.contains("Invalid user credentials"), "{reason}");
}

#[test]
fn requests_before_authentication_close_the_connection() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = sasl_broker(&dir.path().join("d"), &[]);
    let mut s = connect(&broker);
    assert!(!metadata(&mut s, 1), "answered before authentication");
    assert!(broker
        .log()
        .contains("Metadata request before SASL authentication"));

    // ApiVersions is served; an unknown mechanism gets the enabled list, then the close.
    let mut s = connect(&broker);
    s.write_all(&request_frame(
        ApiKey::ApiVersions,
        0,
        1,
        "sasl-test",
        &kafka_protocol::messages::ApiVersionsRequest::default(),
    ))
    .expect("write");
    assert!(read_frame(&mut s).is_some());
    let hs: SaslHandshakeResponse = call(
        &mut s,
        ApiKey::SaslHandshake,
        1,
        2,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("GSSAPI")),
    )
    .expect("handshake answer");
    assert_eq!(hs.error_code, 33, "UNSUPPORTED_SASL_MECHANISM");
    let listed: Vec<String> = hs.mechanisms.iter().map(|m| m.to_string()).collect();
    assert_eq!(listed, ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]);
    assert!(closed(&mut s));

    // A wrong password is answered with SASL_AUTHENTICATION_FAILED and a message.
    let mut s = connect(&broker);
    let auth = plain_login(&mut s, "alice", "bad", 1);
    assert_eq!(auth.error_code, 58);
    assert_eq!(
        auth.error_message.as_deref(),
        Some("Authentication failed: Invalid username or password")
    );
    assert!(closed(&mut s));

    // SaslAuthenticate without a handshake is ILLEGAL_SASL_STATE.
    let mut s = connect(&broker);
    let auth: SaslAuthenticateResponse = call(
        &mut s,
        ApiKey::SaslAuthenticate,
        1,
        1,
        &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0a\0b")),
    )
    .expect("authenticate answer");
    assert_eq!(auth.error_code, 34);
}

#[test]
fn sasl_handshake_on_a_plaintext_listener_is_answered_with_an_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start(&dir.path().join("d"), &[]);
    let mut s = connect(&broker);
    let hs: SaslHandshakeResponse = call(
        &mut s,
        ApiKey::SaslHandshake,
        1,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    )
    .expect("an answer, not a close");
    assert_eq!(hs.error_code, 34, "ILLEGAL_SASL_STATE");
    assert!(hs.mechanisms.is_empty());
    // The connection stays usable.
    assert!(metadata(&mut s, 2));
    // librdkafka configured for SASL reports the refusal rather than hanging.
    let reason = {
        let errors = Errors::default();
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", broker.bootstrap());
        for (k, v) in sasl_settings("PLAIN", "guest", "guest") {
            c.set(k, v);
        }
        let consumer: BaseConsumer<Errors> = c.create_with_context(errors.clone()).expect("client");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let _ = consumer.fetch_metadata(None, Duration::from_millis(500));
            let _ = consumer.poll(Duration::from_millis(100));
            let got = errors
                .0
                .lock()
                .expect("errors")
                .iter()
                .find(|(_, r)| r.contains("SASL"))
                .map(|(_, r)| r.clone());
            if let Some(r) = got {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "librdkafka reported no SASL error: {:?}",
                errors.0.lock().expect("errors")
            );
        }
    };
    assert!(
        reason.contains("handshake failed: Broker: Request not valid in current SASL state"),
        "{reason}"
    );
}

/// A bare SASL token frame (after a v0 handshake).
fn raw_token(s: &mut TcpStream, token: &[u8]) -> Option<Bytes> {
    let mut frame = (token.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(token);
    s.write_all(&frame).ok()?;
    read_frame(s)
}

#[test]
fn v0_handshake_then_bare_tokens() {
    use base64::Engine;
    use portask::security::scram::Mechanism;
    let b64 = base64::engine::general_purpose::STANDARD;
    let dir = tempfile::tempdir().expect("tmp");
    let broker = sasl_broker(&dir.path().join("d"), &[]);

    // PLAIN: one token, answered with an empty one; then Kafka requests.
    let mut s = connect(&broker);
    let hs: SaslHandshakeResponse = call(
        &mut s,
        ApiKey::SaslHandshake,
        0,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    )
    .expect("handshake");
    assert_eq!(hs.error_code, 0);
    assert_eq!(
        raw_token(&mut s, b"\0alice\0alice-secret").as_deref(),
        Some(&b""[..])
    );
    assert!(metadata(&mut s, 2));

    // SCRAM-SHA-512: two tokens each way, with carol's configured credential.
    let mut s = connect(&broker);
    let hs: SaslHandshakeResponse = call(
        &mut s,
        ApiKey::SaslHandshake,
        0,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("SCRAM-SHA-512")),
    )
    .expect("handshake");
    assert_eq!(hs.error_code, 0);
    let first = raw_token(&mut s, b"n,,n=carol,r=clientnonce").expect("server-first");
    let first = String::from_utf8(first.to_vec()).expect("utf-8");
    let fields: Vec<&str> = first.split(',').collect();
    let nonce = fields[0].strip_prefix("r=").expect("nonce");
    assert!(nonce.starts_with("clientnonce") && nonce.len() > 11);
    let salt = b64
        .decode(fields[1].strip_prefix("s=").expect("salt"))
        .expect("b64");
    let iterations: u32 = fields[2].strip_prefix("i=").expect("i").parse().expect("n");
    let m = Mechanism::Sha512;
    let salted = m.salted_password(b"carol-secret", &salt, iterations);
    let cred = m.credential_from_salted(&salt, iterations, &salted);
    let client_key = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha512>::new_from_slice(&salted).expect("key");
        mac.update(b"Client Key");
        mac.finalize().into_bytes().to_vec()
    };
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("n=carol,r=clientnonce,{first},{without_proof}");
    let signature = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha512>::new_from_slice(&cred.stored_key).expect("key");
        mac.update(auth_message.as_bytes());
        mac.finalize().into_bytes().to_vec()
    };
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(a, b)| a ^ b)
        .collect();
    let last = format!("{without_proof},p={}", b64.encode(proof));
    let server_final = raw_token(&mut s, last.as_bytes()).expect("server-final");
    assert!(server_final.starts_with(b"v="));
    assert!(metadata(&mut s, 2));

    // A wrong password over bare tokens: the connection closes.
    let mut s = connect(&broker);
    let _: SaslHandshakeResponse = call(
        &mut s,
        ApiKey::SaslHandshake,
        0,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    )
    .expect("handshake");
    assert!(raw_token(&mut s, b"\0alice\0nope").is_none());
}

#[test]
fn reauthentication_keeps_a_producer_going_and_closes_a_silent_client() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = sasl_broker(
        &dir.path().join("d"),
        &[("PORTASK_KAFKA__CONNECTIONS_MAX_REAUTH_MS", "3000")],
    );
    // A raw client learns the session lifetime and is closed once it has passed.
    let mut s = connect(&broker);
    let auth = plain_login(&mut s, "alice", "alice-secret", 1);
    assert_eq!((auth.error_code, auth.session_lifetime_ms), (0, 3000));
    assert!(metadata(&mut s, 3));
    // One that re-authenticates, as the same user, goes on.
    let mut again = connect(&broker);
    assert_eq!(
        plain_login(&mut again, "alice", "alice-secret", 2).error_code,
        0
    );
    std::thread::sleep(Duration::from_millis(3300));
    assert!(!metadata(&mut s, 4), "answered after the session expired");
    assert!(broker.log().contains("expired without re-authentication"));
    assert_eq!(
        plain_login(&mut again, "alice", "alice-secret", 2).error_code,
        0
    );
    assert!(metadata(&mut again, 5));
    // Re-authenticating as someone else is refused.
    let other = plain_login(&mut again, "carol", "carol-secret", 2);
    assert_eq!(other.error_code, 58);
    assert!(
        other
            .error_message
            .as_deref()
            .unwrap_or_default()
            .contains("Cannot change principals"),
        "{other:?}"
    );

    // librdkafka re-authenticates on its own: ~8 s of producing without an error.
    let errors = Errors::default();
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", broker.bootstrap());
    for (k, v) in sasl_settings("SCRAM-SHA-256", "alice", "alice-secret") {
        c.set(k, v);
    }
    c.set("linger.ms", "0");
    c.set("message.timeout.ms", "10000");
    let producer: FutureProducer<Errors> = c.create_with_context(errors.clone()).expect("producer");
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(8) {
        let payload = format!("r{sent}");
        futures::executor::block_on(producer.send(
            FutureRecord::<(), _>::to("reauth-topic").payload(&payload),
            Duration::from_secs(10),
        ))
        .unwrap_or_else(|(e, _)| panic!("record {sent} failed after {:?}: {e}", start.elapsed()));
        sent += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sent > 40, "{sent}");
    let reported = errors.0.lock().expect("errors").clone();
    assert!(reported.is_empty(), "{reported:?}");
    // Only the silent raw client was closed for an expired session.
    let expired = broker
        .log()
        .matches("expired without re-authentication")
        .count();
    assert_eq!(expired, 1, "{}", broker.log());
}

#[test]
fn amqp_and_http_logins_check_the_same_users() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = sasl_broker(
        &dir.path().join("d"),
        &[(
            "PORTASK_AMQP__PERMISSIONS",
            "[{user = \"carol\", vhost = \"/\", configure = \".*\", write = \".*\", read = \".*\"}]",
        )],
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let url =
            |user: &str, pw: &str| format!("amqp://{user}:{pw}@127.0.0.1:{}/%2f", broker.amqp_port);
        // carol has SCRAM credentials only.
        let conn = lapin::Connection::connect(
            &url("carol", "carol-secret"),
            lapin::ConnectionProperties::default(),
        )
        .await
        .expect("carol logs in over AMQP");
        let ch = conn.create_channel().await.expect("channel");
        common::amqp::declare(&ch, "carol-q", Default::default()).await;
        let refused = lapin::Connection::connect(
            &url("carol", "wrong"),
            lapin::ConnectionProperties::default(),
        )
        .await;
        assert!(refused.is_err());
    });
    assert!(
        metric(
            &broker,
            "portask_auth_failures_total",
            &["protocol=\"amqp\"", "mechanism=\"PLAIN\""]
        ) >= 1.0
    );

    let get = |user: &str, pw: &str| {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        match ureq::get(&format!("{}/api/v1/topics", broker.http_url()))
            .set("Authorization", &format!("Basic {token}"))
            .call()
        {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(get("carol", "carol-secret"), 200);
    assert_eq!(get("alice", "alice-secret"), 200);
    assert_eq!(get("carol", "wrong"), 401);
    assert!(
        metric(
            &broker,
            "portask_auth_failures_total",
            &["protocol=\"http\"", "mechanism=\"basic\""]
        ) >= 1.0
    );
}

#[test]
fn amqp_users_still_work_with_a_warning() {
    let dir = tempfile::tempdir().expect("tmp");
    let hash = portask::amqp::auth::hash_password([7, 7, 7, 7], "old-secret");
    let users =
        format!("[{{name = \"old\", password_hash = \"{hash}\", tags = [\"administrator\"]}}]");
    let broker = Broker::start(
        &dir.path().join("d"),
        &[
            ("PORTASK_AMQP__USERS", &users),
            (
                "PORTASK_AMQP__PERMISSIONS",
                "[{user = \"old\", vhost = \"/\", configure = \".*\", write = \".*\", read = \".*\"}]",
            ),
        ],
    );
    assert!(broker.log().contains("amqp.users has moved to [[users]]"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let url = format!("amqp://old:old-secret@127.0.0.1:{}/%2f", broker.amqp_port);
        let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .expect("amqp.users user logs in");
        conn.create_channel().await.expect("channel");
    });
}

/// A connection authenticated with SASL moves to the shard of the partition its Produce
/// requests all go to (`runtime::placement`) with its session: after the move it is still
/// logged in (a request before authentication would close it), answers keep their order,
/// and no request is refused.
#[test]
fn an_authenticated_connection_moves_to_its_partitions_shard_still_logged_in() {
    use common::kafka::{produce_answer, produce_one_frame};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{MetadataResponse, TopicName};
    const TOPIC: &str = "sasl-follow";
    let dir = tempfile::tempdir().expect("tmp");
    let broker = sasl_broker(&dir.path().join("d"), &[]);
    let owner = portask::util::partition_owner(TOPIC, 0, 2) as u64;
    let shard = |s: &TcpStream| {
        let local = s.local_addr().expect("local address");
        broker.connection_shard(local, "alice", "alice-secret")
    };
    let metadata = |s: &mut TcpStream, correlation: i32| -> MetadataResponse {
        let topic = MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str(TOPIC))));
        let req = MetadataRequest::default()
            .with_topics(Some(vec![topic]))
            .with_allow_auto_topic_creation(true);
        call(s, ApiKey::Metadata, 9, correlation, &req).expect("metadata answered")
    };
    // Logged-in connections until one sits on the shard that does not own the partition.
    let mut away = None;
    for _ in 0..64 {
        let mut s = connect(&broker);
        assert_eq!(
            plain_login(&mut s, "alice", "alice-secret", 1).error_code,
            0
        );
        let md = metadata(&mut s, 3);
        assert_eq!(md.topics[0].error_code, 0, "the topic exists");
        if shard(&s).is_some_and(|sh| sh != owner) {
            away = Some(s);
            break;
        }
    }
    let mut s = away.expect("the kernel put one of 64 connections on the other shard");
    let produce = |correlation: i32| {
        produce_one_frame(
            TOPIC,
            correlation,
            format!("record-{correlation}").as_bytes(),
        )
    };
    // Two requests at a time for a little more than the second a run must last before
    // the connection moves (`placement::FOLLOW_FOR`), and 32 requests at least.
    let mut next_offset = 0;
    for round in 0..25 {
        std::thread::sleep(Duration::from_millis(60));
        let first = 100 + 2 * round;
        let frames: Vec<u8> = (first..first + 2).flat_map(produce).collect();
        s.write_all(&frames).expect("write");
        for correlation in first..first + 2 {
            let answer = produce_answer(&mut s).expect("produce answered, still logged in");
            assert_eq!(
                answer,
                (correlation, 0, next_offset),
                "answers in request order"
            );
            next_offset += 1;
        }
    }
    assert_eq!(
        shard(&s),
        Some(owner),
        "served by the partition's shard now"
    );
    assert_eq!(
        broker.metric_total("portask_connections_moved_total", &[("protocol", "kafka")]),
        1.0
    );
    // Still logged in on its new shard: requests are served, not refused or closed.
    assert_eq!(metadata(&mut s, 500).topics[0].error_code, 0);
    s.write_all(&produce(501)).expect("write");
    let answer = produce_answer(&mut s).expect("a produce after the move is answered");
    assert_eq!(answer, (501, 0, next_offset));
}

//! TLS on every port, with real clients and certificates made at run time
//! (`common::tls`): rdkafka over an `SSL` listener with required client certificates, a
//! plaintext listener beside it advertising itself, lapin over amqps logging in with
//! EXTERNAL, HTTPS with basic auth (ureq), the certificate reloaded on SIGHUP, and the
//! handshake counters in `/metrics`.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use common::kafka::{assigned, client, create_topic, delivered, enqueue, poll_n};
use common::tls::{Ca, Issued};
use common::{free_port, Launch};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Offset;

/// A broker with a plaintext Kafka listener (the launcher's port), an `SSL` listener,
/// amqps and https, all with one server certificate from a test CA.
struct Secure {
    launch: Launch,
    child: Child,
    dir: tempfile::TempDir,
    ca: Ca,
    ca_path: PathBuf,
    ssl_port: u16,
    sasl_ssl_port: u16,
    amqps_port: u16,
    https_port: u16,
}

impl Drop for Secure {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const GUEST_HASH: &str = "kI3GCrswBLNZQzHJJ95QLoyfAVooYhnvf7jbqiW9BjOYUloe";

impl Secure {
    /// `client_auth`: none, requested or required; `extra`: more `PORTASK_*` settings.
    fn start(client_auth: &str, extra: &[(&str, &str)]) -> Secure {
        Secure::start_with(client_auth, None, extra)
    }

    /// As `start`, the SSL listener with its own `client_auth` when given.
    fn start_with(
        client_auth: &str,
        listener_auth: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Secure {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("Portask Test CA");
        let ca_path = ca.write(dir.path());
        let (cert, key) = ca.server("portask-a").write(dir.path(), "server");
        let (ssl_port, amqps_port, https_port) = (free_port(), free_port(), free_port());
        let sasl_ssl_port = free_port();
        let mut launch = Launch::new(&dir.path().join("data"), 2, &[]);
        let listeners = format!(
            "[{{name = \"PLAINTEXT\", addr = \"127.0.0.1:{}\"}}, \
              {{name = \"SSL\", addr = \"127.0.0.1:{ssl_port}\", advertised_host = \"localhost\"{}}}, \
              {{name = \"SASL_SSL\", addr = \"127.0.0.1:{sasl_ssl_port}\"}}]",
            launch.kafka_port,
            listener_auth
                .map(|a| format!(", client_auth = \"{a}\""))
                .unwrap_or_default()
        );
        let users = format!(
            "[{{name = \"guest\", password_hash = \"{GUEST_HASH}\", tags = [\"administrator\"]}}, \
              {{name = \"CN=alice,O=Portask Tests\"}}, {}]",
            scram_user("alice", "alice-secret")
        );
        let permissions = "[{user = \"guest\", vhost = \"/\", configure = \".*\", write = \".*\", read = \".*\"}, \
              {user = \"CN=alice,O=Portask Tests\", vhost = \"/\", configure = \".*\", write = \".*\", read = \".*\"}]";
        let quoted = |p: &std::path::Path| format!("{:?}", p.display().to_string());
        let mut env: Vec<(String, String)> = vec![
            ("PORTASK_KAFKA__LISTENERS".into(), listeners),
            ("PORTASK_TLS__CERT_FILE".into(), quoted(&cert)),
            ("PORTASK_TLS__KEY_FILE".into(), quoted(&key)),
            ("PORTASK_TLS__CA_FILE".into(), quoted(&ca_path)),
            (
                "PORTASK_TLS__CLIENT_AUTH".into(),
                format!("{client_auth:?}"),
            ),
            (
                "PORTASK_AMQP__TLS_ADDR".into(),
                format!("\"127.0.0.1:{amqps_port}\""),
            ),
            (
                "PORTASK_HTTP__TLS_ADDR".into(),
                format!("\"127.0.0.1:{https_port}\""),
            ),
            ("PORTASK_USERS".into(), users),
            ("PORTASK_AMQP__PERMISSIONS".into(), permissions.into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        launch.env = env;
        let mut child = launch.spawn();
        launch.wait_ready(&mut child, 1);
        Secure {
            launch,
            child,
            dir,
            ca,
            ca_path,
            ssl_port,
            sasl_ssl_port,
            amqps_port,
            https_port,
        }
    }

    fn ssl_bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.ssl_port)
    }

    /// A client certificate for `cn`, written into the test directory.
    fn client_cert(&self, cn: &str) -> (Issued, PathBuf, PathBuf) {
        let issued = self.ca.client(cn, "Portask Tests");
        let (cert, key) = issued.write(self.dir.path(), &format!("client-{cn}"));
        (issued, cert, key)
    }

    fn metrics(&self) -> String {
        ureq::get(&format!("{}/metrics", self.launch.http_url()))
            .call()
            .expect("metrics")
            .into_string()
            .expect("metrics text")
    }
}

/// A `[[users]]` entry (inline TOML) for `name` with `password`, made by `portask
/// hash-password` as an operator would.
fn scram_user(name: &str, password: &str) -> String {
    toml::Value::Table(common::hashed_user(name, password)).to_string()
}

/// The value of the sample of `name` whose labels include every one of `labels` (0 when
/// there is none).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// rdkafka settings for the SSL listener, with a client certificate when given.
fn ssl_settings<'a>(ca: &'a str, identity: Option<(&'a str, &'a str)>) -> Vec<(&'a str, &'a str)> {
    let mut s = vec![
        ("security.protocol", "ssl"),
        ("ssl.ca.location", ca),
        ("message.timeout.ms", "10000"),
        ("socket.timeout.ms", "5000"),
    ];
    if let Some((cert, key)) = identity {
        s.push(("ssl.certificate.location", cert));
        s.push(("ssl.key.location", key));
    }
    s
}

#[test]
fn ssl_listener_with_required_client_auth_serves_certified_clients_only() {
    // The listener's own rule (Kafka's listener.name.ssl.ssl.client.auth) over the default.
    let b = Secure::start_with("none", Some("required"), &[]);
    let ca = b.ca_path.display().to_string();
    let (_, cert, key) = b.client_cert("alice");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let with_cert = ssl_settings(&ca, Some((&cert, &key)));

    // A certified client produces and consumes over TLS.
    create_topic(&b.launch.bootstrap(), "secure", 1, &[]);
    let producer: FutureProducer = client(&b.ssl_bootstrap(), &with_cert);
    for i in 0..10 {
        let body = format!("record-{i}");
        delivered(enqueue(
            &producer,
            FutureRecord::<(), _>::to("secure").payload(body.as_bytes()),
        ));
    }
    let consumer = assigned(
        &b.ssl_bootstrap(),
        &with_cert,
        "secure",
        1,
        Offset::Beginning,
    );
    let mut got = Vec::new();
    poll_n(&consumer, 10, Duration::from_secs(20), |m| {
        got.push(
            String::from_utf8_lossy(rdkafka::Message::payload(m).unwrap_or_default()).into_owned(),
        )
    });
    assert_eq!(
        got,
        (0..10).map(|i| format!("record-{i}")).collect::<Vec<_>>()
    );

    // Without a certificate the handshake is refused: no metadata, ever.
    let failures_before = metric(
        &b.metrics(),
        "portask_tls_handshake_failures_total",
        &[("protocol", "kafka"), ("reason", "no_certificate")],
    );
    let anonymous: BaseConsumer = client(&b.ssl_bootstrap(), &ssl_settings(&ca, None));
    assert!(
        anonymous
            .fetch_metadata(None, Duration::from_secs(5))
            .is_err(),
        "a client without a certificate got metadata"
    );
    let text = b.metrics();
    assert!(
        metric(
            &text,
            "portask_tls_handshake_failures_total",
            &[("protocol", "kafka"), ("reason", "no_certificate")],
        ) > failures_before,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "portask_tls_handshakes_total",
            &[("protocol", "kafka")]
        ) >= 2.0,
        "{text}"
    );
}

/// A fetch answered from the tail cache with several batches, large ones written as chunks
/// of their own, comes whole over TLS too (the session writes a frame's chunks one after
/// the other): every record, byte for byte, in order.
#[test]
fn large_and_small_cached_batches_come_whole_over_tls() {
    let b = Secure::start("none", &[]);
    let ca = b.ca_path.display().to_string();
    let settings = ssl_settings(&ca, None);
    create_topic(&b.launch.bootstrap(), "large-over-tls", 1, &[]);
    let producer: FutureProducer = client(&b.ssl_bootstrap(), &settings);
    // One batch per record (each waits for its delivery): 40 KiB ones, past the 32 KiB a
    // batch needs to be written uncopied, between small ones.
    let body = |i: usize| -> Vec<u8> {
        let len = if i.is_multiple_of(2) {
            40_000 + i
        } else {
            10 + i
        };
        (0..len).map(|j| (i * 7 + j) as u8).collect()
    };
    for i in 0..12 {
        delivered(enqueue(
            &producer,
            FutureRecord::<(), _>::to("large-over-tls").payload(&body(i)),
        ));
    }
    let consumer = assigned(
        &b.ssl_bootstrap(),
        &settings,
        "large-over-tls",
        1,
        Offset::Beginning,
    );
    let mut got = Vec::new();
    poll_n(&consumer, 12, Duration::from_secs(20), |m| {
        got.push(rdkafka::Message::payload(m).unwrap_or_default().to_vec())
    });
    assert_eq!(got.len(), 12);
    for (i, g) in got.iter().enumerate() {
        assert!(*g == body(i), "record {i}: {} bytes, not its own", g.len());
    }
}

/// A TLS connection stays on the shard that accepted it even when all its requests go to
/// the other shard's partition (its rustls session cannot be handed over): more than a
/// second of Produce requests from the other shard are all answered there, and nothing
/// moved.
#[test]
fn a_tls_connection_stays_on_the_shard_that_accepted_it() {
    use common::kafka::{produce_answer, produce_one_frame};
    const TOPIC: &str = "tls-stays";
    let b = Secure::start("none", &[]);
    create_topic(&b.launch.bootstrap(), TOPIC, 1, &[]);
    let owner = portask::util::partition_owner(TOPIC, 0, 2) as u64;
    let shard = |s: &std::net::TcpStream| {
        let local = s.local_addr().expect("local address");
        common::connection_shard(&b.launch.http_url(), local, "guest", "guest")
    };
    let config = b.ca.client_config(&[]);
    let mut away = None;
    for _ in 0..64 {
        let s = common::tls::connect(b.ssl_port, config.clone()).expect("tls connect");
        if shard(&s.sock).is_some_and(|sh| sh != owner) {
            away = Some(s);
            break;
        }
    }
    let mut s = away.expect("the kernel put one of 64 connections on the other shard");
    let stays_on = shard(&s.sock);
    // Past the run after which a plain connection moves (32 requests over a second).
    for i in 0..50 {
        std::thread::sleep(Duration::from_millis(30));
        s.write_all(&produce_one_frame(TOPIC, i, b"over tls"))
            .expect("write");
        assert_eq!(produce_answer(&mut s), Some((i, 0, i as i64)));
    }
    assert_eq!(shard(&s.sock), stays_on, "the TLS connection stayed");
    let text = b.metrics();
    let moved = metric(
        &text,
        "portask_connections_moved_total",
        &[("protocol", "kafka")],
    );
    assert_eq!(moved, 0.0, "{text}");
}

#[test]
fn sasl_ssl_with_scram_sha_512_serves_the_right_password_only() {
    let b = Secure::start("none", &[]);
    let ca = b.ca_path.display().to_string();
    let bootstrap = format!("127.0.0.1:{}", b.sasl_ssl_port);
    let scram = |password: &'static str| {
        vec![
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "alice"),
            ("sasl.password", password),
            ("ssl.ca.location", ca.as_str()),
            ("message.timeout.ms", "10000"),
        ]
    };
    create_topic(&b.launch.bootstrap(), "scram-over-tls", 1, &[]);
    let producer: FutureProducer = client(&bootstrap, &scram("alice-secret"));
    delivered(enqueue(
        &producer,
        FutureRecord::<(), _>::to("scram-over-tls").payload(&b"secret"[..]),
    ));
    let consumer = assigned(
        &bootstrap,
        &scram("alice-secret"),
        "scram-over-tls",
        1,
        Offset::Beginning,
    );
    let mut got = Vec::new();
    poll_n(&consumer, 1, Duration::from_secs(20), |m| {
        got.push(rdkafka::Message::payload(m).unwrap_or_default().to_vec())
    });
    assert_eq!(got, vec![b"secret".to_vec()]);

    let wrong: BaseConsumer = client(&bootstrap, &scram("not-the-password"));
    assert!(wrong.fetch_metadata(None, Duration::from_secs(5)).is_err());
    let text = b.metrics();
    assert!(
        metric(
            &text,
            "portask_tls_handshakes_total",
            &[("protocol", "kafka")]
        ) >= 3.0,
        "{text}"
    );
}

#[test]
fn plaintext_and_ssl_listeners_in_one_broker_each_advertise_themselves() {
    let b = Secure::start("none", &[]);
    let ca = b.ca_path.display().to_string();
    let plain: BaseConsumer = client(&b.launch.bootstrap(), &[]);
    let md = plain
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("plaintext metadata");
    let brokers: Vec<(String, i32)> = md
        .brokers()
        .iter()
        .map(|br| (br.host().to_owned(), br.port()))
        .collect();
    assert_eq!(
        brokers,
        vec![("127.0.0.1".to_owned(), b.launch.kafka_port as i32)]
    );

    let tls: BaseConsumer = client(&b.ssl_bootstrap(), &ssl_settings(&ca, None));
    let md = tls
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("ssl metadata");
    let brokers: Vec<(String, i32)> = md
        .brokers()
        .iter()
        .map(|br| (br.host().to_owned(), br.port()))
        .collect();
    assert_eq!(brokers, vec![("localhost".to_owned(), b.ssl_port as i32)]);
    // The SSL listener really is TLS: a plaintext Kafka client gets nothing there.
    let confused: BaseConsumer = client(&b.ssl_bootstrap(), &[("socket.timeout.ms", "3000")]);
    assert!(confused
        .fetch_metadata(None, Duration::from_secs(3))
        .is_err());
}

#[test]
fn amqps_external_logs_in_as_the_certificate_subject_and_refuses_unknown_ones() {
    let b = Secure::start("required", &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let url = format!(
        "amqps://127.0.0.1:{}/%2f?auth_mechanism=external",
        b.amqps_port
    );
    let connect = |cn: &str| {
        let (issued, _, _) = b.client_cert(cn);
        let config = lapin::tcp::OwnedTLSConfig {
            identity: Some(lapin::tcp::OwnedIdentity::PKCS8 {
                pem: issued.cert_pem.into_bytes(),
                key: issued.key_pem.into_bytes(),
            }),
            cert_chain: Some(b.ca.pem.clone()),
        };
        let url = url.clone();
        rt.block_on(async move {
            lapin::Connection::connect_with_config(
                &url,
                lapin::ConnectionProperties::default(),
                config,
                lapin::runtime::default_runtime().expect("lapin runtime"),
            )
            .await
        })
    };

    // `CN=alice,O=Portask Tests` is a user: EXTERNAL logs it in without a password.
    let conn = connect("alice")
        .unwrap_or_else(|e| panic!("EXTERNAL login over amqps: {e:?}\n{}", b.launch.log()));
    rt.block_on(async {
        let ch = common::amqp::channel(&conn).await;
        common::amqp::declare(&ch, "over-tls", Default::default()).await;
        common::amqp::publish(&ch, "", "over-tls", b"hello").await;
        let m = common::amqp::get_and_ack(&ch, "over-tls").await;
        assert_eq!(m.delivery.data, b"hello");
        conn.close(200, "bye".into()).await.expect("close");
    });

    // A certificate the CA signed, naming no user: ACCESS_REFUSED.
    let Err(refused) = connect("mallory") else {
        panic!("mallory must be refused");
    };
    assert_eq!(common::amqp::reply_code(&refused), Some(403), "{refused:?}");
    let text = b.metrics();
    assert!(
        metric(
            &text,
            "portask_auth_failures_total",
            &[("protocol", "amqp"), ("mechanism", "EXTERNAL")]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "portask_tls_handshakes_total",
            &[("protocol", "amqp")]
        ) >= 2.0,
        "{text}"
    );
}

#[test]
fn https_serves_the_api_with_basic_auth() {
    let b = Secure::start("none", &[]);
    let agent = ureq::AgentBuilder::new()
        .tls_config(b.ca.client_config(&[b"http/1.1"]))
        .build();
    let url = format!("https://127.0.0.1:{}/api/v1/overview", b.https_port);
    use base64::Engine;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("guest:guest")
    );
    let resp = agent
        .get(&url)
        .set("Authorization", &auth)
        .call()
        .expect("overview over https");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value =
        serde_json::from_str(&resp.into_string().expect("body")).expect("json");
    assert!(body.is_object(), "{body}");
    match agent.get(&url).call() {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("expected 401 without credentials, got {other:?}"),
    }
    // The server picked http/1.1 by ALPN.
    let stream = common::tls::connect(b.https_port, b.ca.client_config(&[b"http/1.1"]))
        .expect("tls connect");
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
}

/// One `GET path` on a kept-alive HTTP/1.1 connection; the status line and body.
fn http_get(stream: &mut impl ReadWrite, path: &str) -> (String, String) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
    stream.flush().expect("flush");
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("response head");
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).expect("response body");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_and_keeps_open_ones() {
    let b = Secure::start("none", &[]);
    let config = b.ca.client_config(&[b"http/1.1"]);
    let served = |s: &rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>| {
        s.conn.peer_certificates().expect("server certificate")[0].to_vec()
    };
    let a = std::fs::read_to_string(b.dir.path().join("server.crt")).expect("cert A");
    let mut old = common::tls::connect(b.https_port, config.clone()).expect("connect");
    let cert_a = served(&old);
    assert!(a.contains("BEGIN CERTIFICATE"));
    let (status, _) = http_get(&mut old, "/health");
    assert!(status.contains("200"), "{status}");

    // Replace the files with certificate B and ask for a reload.
    let next: Issued = b.ca.server("portask-b");
    next.write(b.dir.path(), "server");
    // SAFETY: kill touches no memory of ours. The pid is our own child's, which has not
    // been waited for (`b.child` still owns it), so it cannot have been reused by another
    // process.
    unsafe { libc::kill(b.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = common::tls::connect(b.https_port, config.clone()).expect("connect");
        if served(&fresh) == next.der {
            break;
        }
        assert_eq!(served(&fresh), cert_a, "served neither A nor B");
        assert!(
            Instant::now() < deadline,
            "certificate B never served:\n{}",
            b.launch.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(b.launch.log().contains("TLS certificate reloaded"));
    // The connection opened under A still works, still on A's session.
    let (status, _) = http_get(&mut old, "/health");
    assert!(status.contains("200"), "{status}");
    assert_eq!(served(&old), cert_a);

    // A reload from a broken file keeps B.
    std::fs::write(b.dir.path().join("server.key"), "not a key").expect("break key");
    // SAFETY: as above.
    unsafe { libc::kill(b.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.launch.log().contains("TLS reload failed") {
        assert!(
            Instant::now() < deadline,
            "no reload error logged:\n{}",
            b.launch.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let fresh = common::tls::connect(b.https_port, config).expect("connect after a bad reload");
    assert_eq!(served(&fresh), next.der);
}

#[test]
fn metrics_count_failed_handshakes_by_reason() {
    let b = Secure::start("none", &[("PORTASK_TLS__HANDSHAKE_TIMEOUT_MS", "300")]);
    // Plaintext HTTP on the TLS port: a protocol failure.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", b.https_port)).expect("connect");
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut sink = Vec::new();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = plain.read_to_end(&mut sink);
    // Silence on the amqps port: a timeout.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", b.amqps_port)).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = silent.read_to_end(&mut sink);
    // One good handshake on the SSL listener.
    drop(common::tls::connect(b.ssl_port, b.ca.client_config(&[])).expect("tls connect"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = b.metrics();
        let protocol = metric(
            &text,
            "portask_tls_handshake_failures_total",
            &[("protocol", "http"), ("reason", "protocol")],
        );
        let timeout = metric(
            &text,
            "portask_tls_handshake_failures_total",
            &[("protocol", "amqp"), ("reason", "timeout")],
        );
        let ok = metric(
            &text,
            "portask_tls_handshakes_total",
            &[("protocol", "kafka")],
        );
        if protocol == 1.0 && timeout == 1.0 && ok == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

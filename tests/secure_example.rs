//! The secured broker of the tuning guide's chapter 9, as a user meets it:
//! `scripts/gen-certs.sh DIR` writes the certificates and `secure.toml`, the broker runs
//! with that file (its addresses moved to ephemeral ports, nothing else changed), and real
//! clients use it with the settings the guide gives: librdkafka over `SASL_SSL` with
//! SCRAM-SHA-512 and over mutual-TLS `SSL`, lapin over `amqps://` with EXTERNAL, and
//! HTTPS with basic authentication.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::kafka::{client, enqueue};
use common::{free_port, Broker, Launch};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use rustls_pki_types::pem::PemObject;

/// The secured broker and where its listeners are.
struct Secure {
    broker: Broker,
    certs: PathBuf,
    sasl_ssl: String,
    mtls: String,
    amqps_port: u16,
    https_port: u16,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn start_secure() -> Secure {
    let certs_dir = tempfile::tempdir().expect("temp dir");
    let certs = certs_dir.path().join("secure");
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gen-certs.sh"))
        .arg(&certs)
        .output()
        .expect("run gen-certs.sh");
    assert!(out.status.success(), "gen-certs.sh: {out:?}");
    let (data_dir, data) = common::data_dir();
    let config_path = certs.join("secure.toml");
    let mut launch = Launch::new(&data, 2, &[]);
    let (sasl_port, ssl_port, amqps_port, https_port) =
        (free_port(), free_port(), free_port(), free_port());
    // The example's addresses, moved to this test's ports.
    let config = std::fs::read_to_string(&config_path)
        .expect("read secure.toml")
        .replace(
            "127.0.0.1:9092",
            &format!("127.0.0.1:{}", launch.kafka_port),
        )
        .replace("127.0.0.1:9093", &format!("127.0.0.1:{sasl_port}"))
        .replace("127.0.0.1:9094", &format!("127.0.0.1:{ssl_port}"))
        .replace("127.0.0.1:5672", &format!("127.0.0.1:{}", launch.amqp_port))
        .replace("127.0.0.1:5671", &format!("127.0.0.1:{amqps_port}"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", launch.http_port))
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{https_port}"));
    std::fs::write(&config_path, config).expect("write secure.toml");
    launch.env.push((
        "PORTASK_CONFIG".into(),
        config_path.to_string_lossy().into_owned(),
    ));
    let broker = Broker::start_launch(launch);
    Secure {
        broker,
        sasl_ssl: format!("127.0.0.1:{sasl_port}"),
        mtls: format!("127.0.0.1:{ssl_port}"),
        certs,
        amqps_port,
        https_port,
        _dirs: (certs_dir, data_dir),
    }
}

impl Secure {
    fn path(&self, file: &str) -> String {
        self.certs.join(file).to_string_lossy().into_owned()
    }

    /// librdkafka settings for SCRAM-SHA-512 over TLS, as the guide gives them.
    fn scram(&self, user: &str, password: &str) -> Vec<(&'static str, String)> {
        vec![
            ("security.protocol", "SASL_SSL".into()),
            ("sasl.mechanisms", "SCRAM-SHA-512".into()),
            ("sasl.username", user.into()),
            ("sasl.password", password.into()),
            ("ssl.ca.location", self.path("ca.pem")),
        ]
    }

    /// librdkafka settings for the mutual-TLS listener, with or without `client.pem`.
    fn mtls_settings(&self, with_certificate: bool) -> Vec<(&'static str, String)> {
        let mut s = vec![
            ("security.protocol", "SSL".into()),
            ("ssl.ca.location", self.path("ca.pem")),
        ];
        if with_certificate {
            s.push(("ssl.certificate.location", self.path("client.pem")));
            s.push(("ssl.key.location", self.path("client.key")));
        }
        s
    }

    fn metrics(&self) -> String {
        ureq::get(&format!("{}/metrics", self.broker.http_url()))
            .call()
            .expect("GET /metrics")
            .into_string()
            .expect("metrics text")
    }
}

fn settings<'a>(
    extra: &'a [(&'static str, String)],
    more: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut s: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    s.extend_from_slice(more);
    s
}

fn create_topic(at: &str, security: &[(&'static str, String)], name: &str) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = client(at, &settings(security, &[]));
    let topic = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = futures::executor::block_on(admin.create_topics([&topic], &options))
        .map_err(|e| e.to_string())?;
    match &results[0] {
        Ok(_) => Ok(()),
        Err((_, code)) => Err(format!("{code:?}")),
    }
}

fn produce(
    at: &str,
    security: &[(&'static str, String)],
    topic: &str,
    payload: &str,
) -> Result<(), KafkaError> {
    let p: FutureProducer = client(at, &settings(security, &[("message.timeout.ms", "10000")]));
    match futures::executor::block_on(enqueue(
        &p,
        FutureRecord::to(topic).payload(payload).key("k"),
    )) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e),
        Err(_) => Err(KafkaError::Canceled),
    }
}

#[test]
fn alice_uses_her_topics_over_sasl_ssl_and_is_refused_others() {
    let s = start_secure();
    let alice = s.scram("alice", "alice-secret");
    create_topic(&s.sasl_ssl, &alice, "alice.orders").expect("alice creates alice.orders");
    produce(&s.sasl_ssl, &alice, "alice.orders", "first order").expect("alice produces");

    let c: BaseConsumer = client(
        &s.sasl_ssl,
        &settings(
            &alice,
            &[
                ("group.id", "alice.billing"),
                ("auto.offset.reset", "earliest"),
            ],
        ),
    );
    c.subscribe(&["alice.orders"]).expect("subscribe");
    let mut got = None;
    for _ in 0..300 {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("alice consumes her topic");
            got = m.payload().map(|p| String::from_utf8_lossy(p).into_owned());
            break;
        }
    }
    assert_eq!(got.as_deref(), Some("first order"));

    // Not hers: creating, producing and consuming are refused by the ACLs.
    let refused = create_topic(&s.sasl_ssl, &alice, "payroll").expect_err("payroll refused");
    assert!(refused.contains("Authorization"), "{refused}");
    let admin = s.scram("admin", "admin-secret");
    create_topic(&s.sasl_ssl, &admin, "payroll").expect("the super user creates payroll");
    match produce(&s.sasl_ssl, &alice, "payroll", "raise") {
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)) => {}
        other => panic!("alice producing to payroll: {other:?}"),
    }
    assert!(s
        .metrics()
        .lines()
        .any(|l| l.starts_with("portask_acl_denials_total{") && !l.ends_with(" 0")));
}

#[test]
fn a_wrong_password_is_refused_and_counted() {
    let s = start_secure();
    let wrong = s.scram("alice", "not-her-password");
    let c: BaseConsumer = client(&s.sasl_ssl, &settings(&wrong, &[]));
    let err = c
        .fetch_metadata(None, Duration::from_secs(10))
        .expect_err("a wrong password gets no metadata");
    assert!(
        matches!(err, KafkaError::MetadataFetch(_)),
        "unexpected error {err:?}"
    );
    let metrics = s.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portask_auth_failures_total{")
                && l.contains("SCRAM-SHA-512")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
    // The broker goes on serving the right password.
    let alice = s.scram("alice", "alice-secret");
    create_topic(&s.sasl_ssl, &alice, "alice.after").expect("alice still logs in");
}

#[test]
fn the_client_certificate_is_alice_on_the_mutual_tls_listener() {
    let s = start_secure();
    let with = s.mtls_settings(true);
    create_topic(&s.mtls, &with, "alice.mtls").expect("User:CN=alice creates alice.mtls");
    produce(&s.mtls, &with, "alice.mtls", "by certificate").expect("produce by certificate");
    // The principal is the certificate's (User:CN=alice), not the anonymous one that the
    // example allows everything from loopback: a topic outside "alice." is refused.
    let refused = create_topic(&s.mtls, &with, "payroll").expect_err("payroll refused");
    assert!(refused.contains("Authorization"), "{refused}");
    // Without a certificate the handshake is refused (client_auth = "required").
    let without = s.mtls_settings(false);
    let c: BaseConsumer = client(&s.mtls, &settings(&without, &[]));
    assert!(c.fetch_metadata(None, Duration::from_secs(5)).is_err());
}

#[test]
fn amqps_with_the_client_certificate_logs_in_as_alice_by_external() {
    let s = start_secure();
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let tls = OwnedTLSConfig {
            identity: Some(OwnedIdentity::PKCS8 {
                pem: std::fs::read(s.certs.join("client.pem")).expect("client.pem"),
                key: std::fs::read(s.certs.join("client.key")).expect("client.key"),
            }),
            cert_chain: Some(std::fs::read_to_string(s.certs.join("ca.pem")).expect("ca.pem")),
        };
        let url = format!(
            "amqps://localhost:{}/%2f?auth_mechanism=external",
            s.amqps_port
        );
        let conn = Connection::connect_with_config(
            &url,
            ConnectionProperties::default(),
            tls,
            lapin::runtime::default_runtime().expect("runtime"),
        )
        .await
        .expect("amqps connection with EXTERNAL");
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare(
            "alice.jobs".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("alice may declare alice.jobs");
        ch.basic_publish(
            "".into(),
            "alice.jobs".into(),
            BasicPublishOptions::default(),
            b"over tls",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
        let mut got = None;
        for _ in 0..100 {
            if let Some(m) = ch
                .basic_get("alice.jobs".into(), BasicGetOptions { no_ack: true })
                .await
                .expect("get")
            {
                got = Some(m.delivery.data.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(got.as_deref(), Some(&b"over tls"[..]));
        // Her AMQP permissions stop at "alice.": another queue is refused (403).
        let ch2 = conn.create_channel().await.expect("channel");
        let refused = ch2
            .queue_declare(
                "payroll".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect_err("payroll is not alice's");
        assert!(refused.to_string().contains("ACCESS_REFUSED"), "{refused}");
    });
}

#[test]
fn https_answers_the_administrator_and_refuses_a_wrong_password() {
    let s = start_secure();
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(s.certs.join("ca.pem")).expect("ca.pem");
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("CA certificate")).expect("add CA");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let agent = ureq::AgentBuilder::new().tls_config(Arc::new(tls)).build();
    let url = format!("https://localhost:{}/api/v1/overview", s.https_port);
    let ok = agent
        .get(&url)
        .set("Authorization", &basic("admin", "admin-secret"))
        .call()
        .expect("admin over https");
    assert_eq!(ok.status(), 200);
    match agent
        .get(&url)
        .set("Authorization", &basic("admin", "wrong"))
        .call()
    {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("a wrong password over https: {other:?}"),
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

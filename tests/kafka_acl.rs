//! Kafka ACLs with real clients: librdkafka producers, consumers and admin clients, and
//! the ACL APIs (CreateAcls, DescribeAcls, DeleteAcls) as raw wire requests and through
//! librdkafka's C admin API (rust-rdkafka's admin client has no ACL calls). On a
//! PLAINTEXT listener every client is Kafka's `User:ANONYMOUS`, so each test grants or
//! refuses that principal (from the configuration's `[[acl.bindings]]`, or with
//! CreateAcls) and checks what a user depends on: produce, consume, group join, topic
//! creation (CreateTopics and auto-creation), Metadata hiding, DENY beating ALLOW,
//! prefixed patterns, super users, ACLs surviving a restart, `/metrics` counting a denial
//! and HTTP reads refused without READ.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use common::kafka::{client, read_frame, request_frame};
use common::{data_dir, Broker};
use futures::executor::block_on;
use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialDeletion;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, ApiKey, CreateAclsRequest,
    CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse, DescribeAclsRequest,
    DescribeAclsResponse, DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

const TOPIC: i8 = 2;
const GROUP: i8 = 3;
const CLUSTER: i8 = 4;
const LITERAL: i8 = 3;
const PREFIXED: i8 = 4;
const ANY: i8 = 1;
const MATCH: i8 = 2;
const DENY: i8 = 2;
const ALLOW: i8 = 3;
const ALL: i8 = 2;
const READ: i8 = 3;
const WRITE: i8 = 4;
const CREATE: i8 = 5;
const ALTER: i8 = 7;

const ANONYMOUS: &str = "User:ANONYMOUS";

/// An ACL as DescribeAcls lists it: (resource type, name, pattern, operation, permission).
type Listed = (i8, String, i8, i8, i8);

/// `PORTASK_ACL__BINDINGS` giving `User:ANONYMOUS` the cluster operations `ops` (so that it
/// may manage ACLs with the Kafka API).
fn cluster_grant(ops: &str) -> String {
    format!(r#"[{{resource_type = "cluster", principal = "{ANONYMOUS}", operations = [{ops}]}}]"#)
}

/// A broker with ACLs enforced and `bindings` from the configuration.
fn broker(data: &std::path::Path, bindings: &str, extra: &[(&str, &str)]) -> Broker {
    let mut env = vec![
        ("PORTASK_ACL__ENABLED", "true"),
        ("PORTASK_ACL__BINDINGS", bindings),
    ];
    env.extend_from_slice(extra);
    Broker::start(data, &env)
}

fn connect(b: &Broker) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", b.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s
}

/// One request and its decoded response, at `version`.
fn call<Q: Encodable, R: Decodable>(s: &mut TcpStream, api: ApiKey, version: i16, body: &Q) -> R {
    s.write_all(&request_frame(api, version, 7, "acl-test", body))
        .expect("write");
    let mut resp: Bytes = read_frame(s).expect("response");
    assert_eq!(resp.get_i32(), 7);
    if api.response_header_version(version) >= 1 {
        assert_eq!(resp.get_u8(), 0, "no header tags");
    }
    R::decode(&mut resp, version).expect("decode response")
}

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

fn acl(resource_type: i8, name: &str, pattern: i8, op: i8, permission: i8) -> AclCreation {
    AclCreation::default()
        .with_resource_type(resource_type)
        .with_resource_name(s(name))
        .with_resource_pattern_type(pattern)
        .with_principal(s(ANONYMOUS))
        .with_host(s("*"))
        .with_operation(op)
        .with_permission_type(permission)
}

/// CreateAcls v3; the error code of each creation.
fn create_acls(b: &Broker, creations: Vec<AclCreation>) -> Vec<i16> {
    let resp: CreateAclsResponse = call(
        &mut connect(b),
        ApiKey::CreateAcls,
        3,
        &CreateAclsRequest::default().with_creations(creations),
    );
    resp.results.iter().map(|r| r.error_code).collect()
}

/// A DescribeAcls filter matching every ACL (the codec's defaults are empty strings, not
/// the nulls that match anything).
fn match_all() -> DescribeAclsRequest {
    DescribeAclsRequest::default()
        .with_resource_type_filter(ANY)
        .with_resource_name_filter(None)
        .with_pattern_type_filter(ANY)
        .with_principal_filter(None)
        .with_host_filter(None)
        .with_operation(ANY)
        .with_permission_type(ANY)
}

/// Every ACL DescribeAcls v3 lists: (resource type, name, pattern, op, permission).
fn describe_all(b: &Broker) -> (i16, Vec<Listed>) {
    let resp: DescribeAclsResponse = call(&mut connect(b), ApiKey::DescribeAcls, 3, &match_all());
    let mut acls: Vec<Listed> = resp
        .resources
        .iter()
        .flat_map(|r| {
            r.acls.iter().map(|a| {
                (
                    r.resource_type,
                    r.resource_name.to_string(),
                    r.pattern_type,
                    a.operation,
                    a.permission_type,
                )
            })
        })
        .collect();
    acls.sort();
    (resp.error_code, acls)
}

fn producer(b: &Broker) -> FutureProducer {
    client(b, &[("message.timeout.ms", "10000"), ("linger.ms", "0")])
}

/// Produces one record; the error code librdkafka reports, if any.
fn produce(p: &FutureProducer, topic: &str) -> Option<RDKafkaErrorCode> {
    let sent = block_on(p.send(
        FutureRecord::<str, str>::to(topic).payload("v").key("k"),
        Duration::from_secs(10),
    ));
    match sent {
        Ok(_) => None,
        Err((e, _)) => Some(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)),
    }
}

fn admin(b: &Broker) -> AdminClient<DefaultClientContext> {
    client(b, &[])
}

/// CreateTopics through librdkafka's admin client: Ok or the topic's error code.
fn create_topic(b: &Broker, name: &str) -> Result<(), RDKafkaErrorCode> {
    let t = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    let r = block_on(admin(b).create_topics(&[t], &AdminOptions::new())).expect("create_topics");
    r[0].clone().map(|_| ()).map_err(|(_, code)| code)
}

/// Polls `c` until a message or an error arrives (or 20 s pass).
fn first_event(c: &BaseConsumer) -> Result<Vec<u8>, RDKafkaErrorCode> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => return Ok(m.payload().unwrap_or_default().to_vec()),
            Some(Err(e)) => {
                return Err(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail));
            }
            None => {}
        }
    }
    panic!("no message and no error within 20 s");
}

fn group_consumer(b: &Broker, group: &str, topic: &str) -> BaseConsumer {
    let c: BaseConsumer = client(
        b,
        &[
            ("group.id", group),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", "6000"),
        ],
    );
    c.subscribe(&[topic]).expect("subscribe");
    c
}

/// Metadata v12 of `names` (None: all topics): (name, error code) per topic.
fn metadata(b: &Broker, names: Option<&[&str]>, auto_create: bool) -> Vec<(String, i16)> {
    let topics = names.map(|ns| {
        ns.iter()
            .map(|n| MetadataRequestTopic::default().with_name(Some(TopicName(s(n)))))
            .collect()
    });
    let resp: MetadataResponse = call(
        &mut connect(b),
        ApiKey::Metadata,
        12,
        &MetadataRequest::default()
            .with_topics(topics)
            .with_allow_auto_topic_creation(auto_create),
    );
    let mut out: Vec<(String, i16)> = resp
        .topics
        .iter()
        .map(|t| {
            let name = t.name.as_ref().map(|n| n.to_string()).unwrap_or_default();
            (name, t.error_code)
        })
        .collect();
    out.sort();
    out
}

/// `/metrics`: the sum of `name` over samples with all of `labels`.
fn metric(b: &Broker, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = ureq::get(&format!("{}/metrics", b.http_url()))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parse");
    scrape
        .samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// An HTTP GET as `guest`: status and body.
fn http_get(b: &Broker, path: &str) -> (u16, String) {
    use base64::Engine;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("guest:guest")
    );
    let r = ureq::get(&format!("{}{path}", b.http_url()))
        .set("Authorization", &auth)
        .call();
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("http: {e}"),
    };
    (resp.status(), resp.into_string().unwrap_or_default())
}

/// Produce and consume need WRITE and READ on the topic; a consumer group needs READ on
/// the group (GROUP_AUTHORIZATION_FAILED otherwise); a DENY beats an ALLOW from a prefix;
/// each refusal is counted in `/metrics`; the HTTP API refuses a read without READ and
/// serves it once the HTTP user is granted it, and hides topics and groups the same way.
#[test]
fn produce_consume_and_groups_follow_the_acls() {
    let (_tmp, data) = data_dir();
    let b = broker(
        &data,
        &cluster_grant(r#""alter", "describe", "create""#),
        &[],
    );
    for t in ["granted", "refused", "p.open", "p.locked"] {
        create_topic(&b, t).expect("the cluster CREATE grant creates any topic");
    }
    let codes = create_acls(
        &b,
        vec![
            acl(TOPIC, "granted", LITERAL, WRITE, ALLOW),
            acl(TOPIC, "granted", LITERAL, READ, ALLOW),
            acl(GROUP, "readers", LITERAL, READ, ALLOW),
            acl(TOPIC, "p.", PREFIXED, ALL, ALLOW),
            acl(TOPIC, "p.locked", LITERAL, WRITE, DENY),
        ],
    );
    assert_eq!(codes, vec![0; 5]);

    let p = producer(&b);
    assert_eq!(produce(&p, "granted"), None);
    assert_eq!(produce(&p, "p.open"), None, "allowed by the prefixed ACL");
    assert_eq!(
        produce(&p, "refused"),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    assert_eq!(
        produce(&p, "p.locked"),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed),
        "the literal DENY beats the prefixed ALLOW"
    );

    let readers = group_consumer(&b, "readers", "granted");
    assert_eq!(first_event(&readers), Ok(b"v".to_vec()));
    drop(readers);
    let strangers = group_consumer(&b, "strangers", "granted");
    assert_eq!(
        first_event(&strangers),
        Err(RDKafkaErrorCode::GroupAuthorizationFailed)
    );
    drop(strangers);
    let no_topic = group_consumer(&b, "readers", "refused");
    assert_eq!(
        first_event(&no_topic),
        Err(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    drop(no_topic);

    // `refused` is refused at Metadata (DESCRIBE), `p.locked` at Produce (WRITE).
    let denied = |op| {
        metric(
            &b,
            "portask_acl_denials_total",
            &[
                ("protocol", "kafka"),
                ("operation", op),
                ("resource_type", "topic"),
            ],
        )
    };
    assert!(denied("write") >= 1.0, "the refused produce is counted");
    assert!(denied("describe") >= 1.0, "the refused metadata is counted");
    assert!(
        metric(
            &b,
            "portask_acl_denials_total",
            &[("resource_type", "group")]
        ) >= 1.0
    );

    // HTTP: `guest` is `User:guest`, which no ACL allows anything.
    let (status, body) = http_get(&b, "/api/v1/topics/granted/partitions/0/records");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("READ"),
        "the refusal names the operation: {body}"
    );
    let (status, body) = http_get(&b, "/api/v1/topics");
    assert_eq!(status, 200);
    assert!(
        !body.contains("granted"),
        "undescribable topics are hidden: {body}"
    );
    let overview_topics = |b: &Broker| {
        let (status, body) = http_get(b, "/api/v1/overview");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let mut names: Vec<String> = v["topics"]
            .as_array()
            .expect("topics")
            .iter()
            .filter_map(|t| t["name"].as_str().map(String::from))
            .collect();
        names.sort();
        names
    };
    assert!(
        overview_topics(&b).is_empty(),
        "the dashboard hides them too"
    );
    assert!(
        metric(&b, "portask_acl_denials_total", &[("protocol", "http")]) >= 1.0,
        "the HTTP refusal is counted"
    );
    let grant = acl(TOPIC, "granted", LITERAL, READ, ALLOW).with_principal(s("User:guest"));
    assert_eq!(create_acls(&b, vec![grant]), vec![0]);
    let (status, body) = http_get(&b, "/api/v1/topics/granted/partitions/0/records");
    assert_eq!(status, 200, "{body}");
    let (_, body) = http_get(&b, "/api/v1/topics");
    assert!(body.contains("granted"), "{body}");
    assert_eq!(overview_topics(&b), vec!["granted".to_owned()]);

    // Consumer groups over HTTP follow the group ACLs: hidden and 403 until granted.
    let (status, body) = http_get(&b, "/api/v1/consumer-groups");
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("readers"), "{body}");
    let (status, body) = http_get(&b, "/api/v1/consumer-groups/readers");
    assert_eq!(status, 403, "{body}");
    let grant = acl(GROUP, "readers", LITERAL, 8, ALLOW).with_principal(s("User:guest"));
    assert_eq!(create_acls(&b, vec![grant]), vec![0]);
    let (_, body) = http_get(&b, "/api/v1/consumer-groups");
    assert!(body.contains("readers"), "{body}");
    let (status, body) = http_get(&b, "/api/v1/consumer-groups/readers");
    assert_eq!(status, 200, "{body}");
}

/// CreateTopics needs CREATE on the cluster or the topic; so does auto-creation through
/// Metadata (TOPIC_AUTHORIZATION_FAILED and no topic otherwise). Metadata of all topics
/// leaves out those the principal may not DESCRIBE and answers TOPIC_AUTHORIZATION_FAILED
/// for such a topic by name.
#[test]
fn topic_creation_and_metadata_follow_the_acls() {
    let (_tmp, data) = data_dir();
    let b = broker(&data, &cluster_grant(r#""alter", "describe""#), &[]);
    assert_eq!(
        create_topic(&b, "t1"),
        Err(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    let codes = create_acls(
        &b,
        vec![
            acl(TOPIC, "made.", PREFIXED, ALL, ALLOW),
            // CREATE alone: the topic can be made but not described.
            acl(TOPIC, "hidden", LITERAL, CREATE, ALLOW),
        ],
    );
    assert_eq!(codes, vec![0, 0]);
    assert_eq!(create_topic(&b, "made.x"), Ok(()));
    assert_eq!(create_topic(&b, "hidden"), Ok(()));
    assert_eq!(
        create_topic(&b, "other"),
        Err(RDKafkaErrorCode::TopicAuthorizationFailed)
    );

    let all: Vec<String> = metadata(&b, None, false)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        all,
        vec!["made.x".to_owned()],
        "only describable topics are listed"
    );
    assert_eq!(
        metadata(&b, Some(&["hidden"]), false),
        vec![("hidden".to_owned(), 29)],
        "TOPIC_AUTHORIZATION_FAILED for an undescribable topic by name"
    );

    // Auto-creation: allowed under the prefix, refused (and not made) elsewhere.
    assert_eq!(
        metadata(&b, Some(&["made.auto"]), true),
        vec![("made.auto".to_owned(), 0)]
    );
    assert_eq!(
        metadata(&b, Some(&["nope.auto"]), true),
        vec![("nope.auto".to_owned(), 29)]
    );
    let grant = acl(TOPIC, "nope.", PREFIXED, READ, ALLOW);
    assert_eq!(create_acls(&b, vec![grant]), vec![0]);
    assert_eq!(
        metadata(&b, Some(&["nope.auto"]), false),
        vec![("nope.auto".to_owned(), 3)],
        "the refused auto-creation made nothing (UNKNOWN_TOPIC_OR_PARTITION)"
    );
}

/// CreateAcls, DescribeAcls and DeleteAcls round trip with Kafka's validation; ACLs from
/// the configuration are listed but not deleted; created ACLs survive a restart.
#[test]
fn acl_apis_round_trip_and_survive_a_restart() {
    let (_tmp, data) = data_dir();
    let mut b = broker(&data, &cluster_grant(r#""alter", "describe""#), &[]);
    let configured = vec![
        (CLUSTER, "kafka-cluster".to_owned(), LITERAL, ALTER, ALLOW),
        (CLUSTER, "kafka-cluster".to_owned(), LITERAL, 8, ALLOW),
    ];
    assert_eq!(describe_all(&b), (0, configured.clone()));

    let bad_cluster = acl(CLUSTER, "not-the-cluster", LITERAL, ALTER, ALLOW);
    let bad_pattern = acl(TOPIC, "t", MATCH, READ, ALLOW);
    let bad_principal = acl(TOPIC, "t", LITERAL, READ, ALLOW).with_principal(s("alice"));
    let codes = create_acls(
        &b,
        vec![
            acl(TOPIC, "orders", LITERAL, READ, ALLOW),
            bad_cluster,
            acl(TOPIC, "ord", PREFIXED, WRITE, DENY),
            bad_pattern,
            bad_principal,
            acl(GROUP, "*", LITERAL, READ, ALLOW),
        ],
    );
    assert_eq!(
        codes,
        vec![0, 42, 0, 42, 42, 0],
        "INVALID_REQUEST for the bad ones"
    );
    let created = vec![
        (TOPIC, "ord".to_owned(), PREFIXED, WRITE, DENY),
        (TOPIC, "orders".to_owned(), LITERAL, READ, ALLOW),
        (GROUP, "*".to_owned(), LITERAL, READ, ALLOW),
    ];
    let mut everything = configured.clone();
    everything.extend(created.clone());
    everything.sort();
    assert_eq!(describe_all(&b), (0, everything.clone()));

    // MATCH: every ACL that applies to topic "orders".
    let resp: DescribeAclsResponse = call(
        &mut connect(&b),
        ApiKey::DescribeAcls,
        3,
        &match_all()
            .with_resource_type_filter(TOPIC)
            .with_resource_name_filter(Some(s("orders")))
            .with_pattern_type_filter(MATCH),
    );
    assert_eq!(resp.resources.len(), 2, "{resp:?}");
    // A filter with UNKNOWN codes is refused.
    let resp: DescribeAclsResponse = call(
        &mut connect(&b),
        ApiKey::DescribeAcls,
        3,
        &match_all().with_resource_type_filter(0),
    );
    assert_eq!(resp.error_code, 42);

    b.terminate();
    b.restart();
    assert_eq!(describe_all(&b), (0, everything), "ACLs survive a restart");

    // Delete everything: only the created ACLs go, each reported once.
    let any = DeleteAclsFilter::default()
        .with_resource_type_filter(ANY)
        .with_resource_name_filter(None)
        .with_principal_filter(None)
        .with_host_filter(None)
        .with_pattern_type_filter(ANY)
        .with_operation(ANY)
        .with_permission_type(ANY);
    let resp: DeleteAclsResponse = call(
        &mut connect(&b),
        ApiKey::DeleteAcls,
        3,
        &DeleteAclsRequest::default().with_filters(vec![any]),
    );
    assert_eq!(resp.filter_results.len(), 1);
    assert_eq!(resp.filter_results[0].error_code, 0);
    let mut deleted: Vec<Listed> = resp.filter_results[0]
        .matching_acls
        .iter()
        .map(|m| {
            (
                m.resource_type,
                m.resource_name.to_string(),
                m.pattern_type,
                m.operation,
                m.permission_type,
            )
        })
        .collect();
    deleted.sort();
    let mut created = created;
    created.sort();
    assert_eq!(deleted, created);
    assert_eq!(
        describe_all(&b),
        (0, configured),
        "the configuration's ACLs stay"
    );
}

/// Without `acl.enabled` the ACL APIs answer SECURITY_DISABLED (54) and nothing is
/// refused; with it, a principal without ALTER/DESCRIBE on the cluster gets
/// CLUSTER_AUTHORIZATION_FAILED (31) from them and from the SCRAM credential APIs.
#[test]
fn acl_apis_need_an_authorizer_and_cluster_rights() {
    let (_tmp, data) = data_dir();
    let plain = Broker::start(&data, &[]);
    assert_eq!(
        create_acls(&plain, vec![acl(TOPIC, "t", LITERAL, READ, ALLOW)]),
        vec![54]
    );
    assert_eq!(describe_all(&plain).0, 54);
    assert_eq!(produce(&producer(&plain), "anything"), None);
    drop(plain);

    let (_tmp2, data2) = data_dir();
    let closed = broker(&data2, "[]", &[]);
    assert_eq!(
        create_acls(&closed, vec![acl(TOPIC, "t", LITERAL, READ, ALLOW)]),
        vec![31]
    );
    assert_eq!(describe_all(&closed).0, 31);
    assert_eq!(
        create_topic(&closed, "t"),
        Err(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    // So are SCRAM credentials: DESCRIBE / ALTER on the cluster.
    let described: DescribeUserScramCredentialsResponse = call(
        &mut connect(&closed),
        ApiKey::DescribeUserScramCredentials,
        0,
        &DescribeUserScramCredentialsRequest::default().with_users(None),
    );
    assert_eq!(described.error_code, 31);
    let deletion = ScramCredentialDeletion::default()
        .with_name(s("alice"))
        .with_mechanism(2);
    let altered: AlterUserScramCredentialsResponse = call(
        &mut connect(&closed),
        ApiKey::AlterUserScramCredentials,
        0,
        &AlterUserScramCredentialsRequest::default().with_deletions(vec![deletion]),
    );
    let codes: Vec<i16> = altered.results.iter().map(|r| r.error_code).collect();
    assert_eq!(codes, vec![31]);
}

/// A super user may do everything, whatever the ACLs (here a configured DENY of everything
/// on every topic for everyone, and a created DENY naming it).
#[test]
fn super_users_override_every_acl() {
    let (_tmp, data) = data_dir();
    let deny_all = r#"[{resource_type = "topic", resource_name = "*", principal = "User:*", operations = ["all"], permission = "deny"}]"#;
    let b = broker(
        &data,
        deny_all,
        &[("PORTASK_ACL__SUPER_USERS", r#"["User:ANONYMOUS"]"#)],
    );
    assert_eq!(create_topic(&b, "t"), Ok(()));
    // A catalog DENY naming the super user itself changes nothing either.
    let deny = acl(TOPIC, "t", LITERAL, ALL, DENY);
    assert_eq!(create_acls(&b, vec![deny]), vec![0]);
    let p = producer(&b);
    assert_eq!(produce(&p, "t"), None);
    let c = group_consumer(&b, "g", "t");
    assert_eq!(first_event(&c), Ok(b"v".to_vec()));
    assert_eq!(describe_all(&b).0, 0);
}

/// librdkafka's own ACL admin calls (`rd_kafka_CreateAcls`, `rd_kafka_DescribeAcls`, which
/// rust-rdkafka does not wrap), through its C API: what `kafka-acls`-style tools built on
/// librdkafka see.
mod librdkafka_admin {
    use std::ffi::{CStr, CString};
    use std::os::raw::c_char;
    use std::ptr;

    use rdkafka::admin::AdminClient;
    use rdkafka::bindings as rd;
    use rdkafka::client::DefaultClientContext;

    /// One admin request's result event, waited for on a queue of its own.
    struct Event {
        queue: *mut rd::rd_kafka_queue_t,
        event: *mut rd::rd_kafka_event_t,
    }

    impl Drop for Event {
        fn drop(&mut self) {
            // SAFETY: both were returned by librdkafka for this request and are destroyed
            // once, here (a null event is allowed by rd_kafka_event_destroy).
            unsafe {
                rd::rd_kafka_event_destroy(self.event);
                rd::rd_kafka_queue_destroy(self.queue);
            }
        }
    }

    fn wait(queue: *mut rd::rd_kafka_queue_t) -> Event {
        // SAFETY: `queue` is a live queue this module created; polling it is thread-safe.
        let event = unsafe { rd::rd_kafka_queue_poll(queue, 15_000) };
        assert!(!event.is_null(), "no admin result within 15 s");
        Event { queue, event }
    }

    fn c(text: &str) -> CString {
        CString::new(text).expect("no NUL")
    }

    /// Creates one ALLOW READ ACL for `principal` on the literal topic `topic`; the error
    /// code of its result.
    pub fn create_read_acl(
        admin: &AdminClient<DefaultClientContext>,
        topic: &str,
        principal: &str,
    ) -> i32 {
        let rk = admin.inner().native_ptr();
        let (name, principal, host) = (c(topic), c(principal), c("*"));
        let mut errstr = [0 as c_char; 512];
        // SAFETY: every pointer is valid for the call (the CStrings and `errstr` outlive
        // it); librdkafka copies the strings into the binding, which is destroyed below
        // after CreateAcls has copied it in turn. The result accessors read the live event.
        unsafe {
            let binding = rd::rd_kafka_AclBinding_new(
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
                name.as_ptr(),
                rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
                principal.as_ptr(),
                host.as_ptr(),
                rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_READ,
                rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
                errstr.as_mut_ptr(),
                errstr.len(),
            );
            assert!(!binding.is_null(), "{:?}", CStr::from_ptr(errstr.as_ptr()));
            let queue = rd::rd_kafka_queue_new(rk);
            let mut bindings = [binding];
            rd::rd_kafka_CreateAcls(rk, bindings.as_mut_ptr(), 1, ptr::null(), queue);
            rd::rd_kafka_AclBinding_destroy(binding);
            let done = wait(queue);
            let request_error = rd::rd_kafka_event_error(done.event) as i32;
            if request_error != 0 {
                return request_error;
            }
            let result = rd::rd_kafka_event_CreateAcls_result(done.event);
            let mut n = 0usize;
            let results = rd::rd_kafka_CreateAcls_result_acls(result, &mut n);
            assert_eq!(n, 1);
            let error = rd::rd_kafka_acl_result_error(*results);
            if error.is_null() {
                0
            } else {
                rd::rd_kafka_error_code(error) as i32
            }
        }
    }

    /// The resource names of every topic ACL DescribeAcls lists (or its error code).
    pub fn described_topics(admin: &AdminClient<DefaultClientContext>) -> Result<Vec<String>, i32> {
        let rk = admin.inner().native_ptr();
        let mut errstr = [0 as c_char; 512];
        // SAFETY: as in `create_read_acl`: null strings in the filter mean "any"; the
        // names read from the result are copied before the event is destroyed.
        unsafe {
            let filter = rd::rd_kafka_AclBindingFilter_new(
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
                ptr::null(),
                rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_ANY,
                ptr::null(),
                ptr::null(),
                rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_ANY,
                rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ANY,
                errstr.as_mut_ptr(),
                errstr.len(),
            );
            assert!(!filter.is_null(), "{:?}", CStr::from_ptr(errstr.as_ptr()));
            let queue = rd::rd_kafka_queue_new(rk);
            rd::rd_kafka_DescribeAcls(rk, filter, ptr::null(), queue);
            rd::rd_kafka_AclBinding_destroy(filter);
            let done = wait(queue);
            let error = rd::rd_kafka_event_error(done.event) as i32;
            if error != 0 {
                return Err(error);
            }
            let result = rd::rd_kafka_event_DescribeAcls_result(done.event);
            let mut n = 0usize;
            let acls = rd::rd_kafka_DescribeAcls_result_acls(result, &mut n);
            let mut names: Vec<String> = (0..n)
                .map(|i| {
                    let name = rd::rd_kafka_AclBinding_name(*acls.add(i));
                    CStr::from_ptr(name).to_string_lossy().into_owned()
                })
                .collect();
            names.sort();
            Ok(names)
        }
    }
}

/// librdkafka's admin API creates and lists ACLs (as a kafka-acls-like tool would);
/// without ALTER on the cluster it is refused with CLUSTER_AUTHORIZATION_FAILED.
#[test]
fn librdkafka_admin_creates_and_describes_acls() {
    let (_tmp, data) = data_dir();
    let b = broker(&data, &cluster_grant(r#""alter", "describe""#), &[]);
    let a = admin(&b);
    assert_eq!(
        librdkafka_admin::create_read_acl(&a, "orders", "User:alice"),
        0
    );
    assert_eq!(
        librdkafka_admin::create_read_acl(&a, "payments", "User:*"),
        0
    );
    assert_eq!(
        librdkafka_admin::described_topics(&a),
        Ok(vec!["orders".to_owned(), "payments".to_owned()])
    );
    // The ACLs it made are enforced: READ for everyone on "payments" lets
    // User:ANONYMOUS describe it; "orders" is alice's only.
    let creates = vec![
        acl(TOPIC, "orders", LITERAL, CREATE, ALLOW),
        acl(TOPIC, "payments", LITERAL, CREATE, ALLOW),
    ];
    assert_eq!(create_acls(&b, creates), vec![0, 0]);
    assert_eq!(create_topic(&b, "orders"), Ok(()));
    assert_eq!(create_topic(&b, "payments"), Ok(()));
    assert_eq!(
        metadata(&b, Some(&["orders", "payments"]), false),
        vec![("orders".to_owned(), 29), ("payments".to_owned(), 0)]
    );

    let (_tmp2, data2) = data_dir();
    let closed = broker(&data2, "[]", &[]);
    assert_eq!(
        librdkafka_admin::create_read_acl(&admin(&closed), "t", "User:alice"),
        RDKafkaErrorCode::ClusterAuthorizationFailed as i32
    );
}

/// `[[users]]` entries (for `PORTASK_USERS`) for `(name, password)`, hashed by `portask
/// hash-password`, as an operator makes them.
fn users_toml(users: &[(&str, &str)]) -> String {
    let entries: Vec<String> = users
        .iter()
        .map(|(name, password)| toml::Value::Table(common::hashed_user(name, password)).to_string())
        .collect();
    format!("[{}]", entries.join(", "))
}

/// Two SASL PLAIN users on a `SASL_PLAINTEXT` listener: alice, allowed on topics and
/// groups prefixed `alice.`, produces, consumes and auto-creates there; bob, with no ACL,
/// is refused on the same topic and group, and alice elsewhere; only a principal with
/// ALTER/DESCRIBE on the cluster may manage SCRAM credentials.
#[test]
fn sasl_users_get_their_own_acls() {
    let (_tmp, data) = data_dir();
    let mut launch = common::Launch::new(&data, 2, &[]);
    let alice_acls = r#"[
        {resource_type = "topic", resource_name = "alice.", pattern_type = "prefixed", principal = "User:alice", operations = ["read", "write", "create", "describe"]},
        {resource_type = "group", resource_name = "alice.", pattern_type = "prefixed", principal = "User:alice", operations = ["read"]},
    ]"#;
    launch.env = vec![
        (
            "PORTASK_KAFKA__LISTENERS".to_owned(),
            format!(
                "[{{name = \"SASL_PLAINTEXT\", addr = \"127.0.0.1:{}\"}}]",
                launch.kafka_port
            ),
        ),
        (
            "PORTASK_USERS".to_owned(),
            users_toml(&[("alice", "alice-secret"), ("bob", "bob-secret")]),
        ),
        ("PORTASK_ACL__ENABLED".to_owned(), "true".to_owned()),
        ("PORTASK_ACL__BINDINGS".to_owned(), alice_acls.to_owned()),
    ];
    let b = Broker::start_launch(launch);
    let login = |user: &'static str, password: &'static str| {
        vec![
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", user),
            ("sasl.password", password),
        ]
    };
    let as_user = |user, password, extra: &[(&'static str, &'static str)]| {
        let mut settings = login(user, password);
        settings.extend_from_slice(extra);
        settings
    };
    let alice_producer: FutureProducer = client(
        &b,
        &as_user("alice", "alice-secret", &[("message.timeout.ms", "10000")]),
    );
    let bob_producer: FutureProducer = client(
        &b,
        &as_user("bob", "bob-secret", &[("message.timeout.ms", "10000")]),
    );
    assert_eq!(
        produce(&alice_producer, "alice.orders"),
        None,
        "auto-created and written by alice"
    );
    assert_eq!(
        produce(&bob_producer, "alice.orders"),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    assert_eq!(
        produce(&alice_producer, "bob.orders"),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed)
    );

    let consumer = |user, password| {
        let c: BaseConsumer = client(
            &b,
            &as_user(
                user,
                password,
                &[
                    ("group.id", "alice.readers"),
                    ("auto.offset.reset", "earliest"),
                    ("session.timeout.ms", "6000"),
                ],
            ),
        );
        c.subscribe(&["alice.orders"]).expect("subscribe");
        c
    };
    let alice = consumer("alice", "alice-secret");
    assert_eq!(first_event(&alice), Ok(b"v".to_vec()));
    drop(alice);
    let bob = consumer("bob", "bob-secret");
    assert!(
        matches!(
            first_event(&bob),
            Err(RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::TopicAuthorizationFailed)
        ),
        "bob may neither join alice's group nor read her topic"
    );
    drop(bob);

    // ACLs are the cluster's: bob (no cluster ACL) may not change them.
    let bob_admin: AdminClient<DefaultClientContext> = client(&b, &login("bob", "bob-secret"));
    assert_eq!(
        librdkafka_admin::create_read_acl(&bob_admin, "alice.orders", "User:bob"),
        RDKafkaErrorCode::ClusterAuthorizationFailed as i32,
        "nor grant himself access"
    );
}

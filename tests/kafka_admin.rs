//! Admin surface through librdkafka's AdminClient (and raw IncrementalAlterConfigs, which
//! it lacks): describe and alter topic and broker configs, live effect, survival across a
//! restart, DeleteRecords.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Buf;
use common::kafka::{self, admin};
use common::{data_dir, Broker};
use futures::executor::block_on;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    ApiKey, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use rdkafka::admin::{AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

/// A config's value and the name of its source.
fn describe(broker: &Broker, spec: ResourceSpecifier<'_>, name: &str) -> (Option<String>, String) {
    let r =
        block_on(admin(broker).describe_configs(&[spec], &AdminOptions::new())).expect("describe");
    let res = r
        .into_iter()
        .next()
        .expect("one resource")
        .expect("described");
    let e = res.get(name).unwrap_or_else(|| panic!("{name} listed"));
    (e.value.clone(), format!("{:?}", e.source))
}

/// IncrementalAlterConfigs over a raw socket: (resource type, name, [(config, op, value)]).
fn incremental(
    broker: &Broker,
    resource_type: i8,
    name: &str,
    edits: &[(&str, i8, Option<&str>)],
) -> i16 {
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(StrBytes::from_string(name.to_owned()))
            .with_configs(
                edits
                    .iter()
                    .map(|(k, op, v)| {
                        AlterableConfig::default()
                            .with_name(StrBytes::from_string((*k).to_owned()))
                            .with_config_operation(*op)
                            .with_value(v.map(|v| StrBytes::from_string(v.to_owned())))
                    })
                    .collect(),
            ),
    ]);
    let version = 1;
    let mut s = TcpStream::connect(("127.0.0.1", broker.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&kafka::request_frame(
        ApiKey::IncrementalAlterConfigs,
        version,
        9,
        "admin-test",
        &req,
    ))
    .expect("write");
    let mut body = kafka::read_frame(&mut s).expect("response");
    assert_eq!(body.get_i32(), 9);
    // Flexible response header: an empty tagged-field section.
    assert_eq!(body.get_u8(), 0);
    let resp = IncrementalAlterConfigsResponse::decode(&mut body, version).expect("response");
    resp.responses[0].error_code
}

fn produce_rounds(broker: &Broker, topic: &str, rounds: usize) {
    let p: FutureProducer = kafka::client(broker, &[("linger.ms", "1")]);
    for r in 0..rounds {
        let futures: Vec<_> = (0..20)
            .map(|i| {
                let v = format!("{r}-{i}-{}", "z".repeat(100));
                p.send_result(FutureRecord::to(topic).key("k").payload(v.as_str()))
                    .map_err(|(e, _)| e)
                    .expect("enqueue")
            })
            .collect();
        for f in futures {
            kafka::delivered(f);
        }
    }
}

fn low_watermark(broker: &Broker, topic: &str) -> (i64, i64) {
    kafka::watermarks(broker, topic, 0)
}

#[test]
fn topic_and_broker_configs_round_trip_take_effect_and_survive_restart() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(
        &data,
        &[("PORTASK_KAFKA__RETENTION_CHECK_INTERVAL_MS", "200")],
    );
    let a = admin(&broker);
    let r = block_on(a.create_topics(
        &[NewTopic::new("cfg", 1, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .expect("create");
    assert!(r[0].is_ok());
    let (v, source) = describe(&broker, ResourceSpecifier::Topic("cfg"), "retention.bytes");
    assert_eq!((v.as_deref(), source.as_str()), (Some("-1"), "Default"));

    // AlterConfigs (replace all) through the admin client.
    let r = block_on(a.alter_configs(
        &[AlterConfig::new(ResourceSpecifier::Topic("cfg")).set("segment.bytes", "2048")],
        &AdminOptions::new(),
    ))
    .expect("alter");
    assert!(r[0].is_ok(), "{:?}", r[0]);
    assert_eq!(
        describe(&broker, ResourceSpecifier::Topic("cfg"), "segment.bytes"),
        (Some("2048".into()), "DynamicTopic".to_string())
    );
    // An unknown name is refused with INVALID_CONFIG (rust-rdkafka drops per-resource
    // AlterConfigs errors, so this goes over the raw protocol).
    assert_eq!(
        incremental(&broker, 2, "cfg", &[("no.such.config", 0, Some("1"))]),
        40
    );

    // Many small segments, then a retention limit set incrementally: old segments go.
    produce_rounds(&broker, "cfg", 20);
    let (low, high) = low_watermark(&broker, "cfg");
    assert_eq!((low, high), (0, 400));
    assert_eq!(
        incremental(&broker, 2, "cfg", &[("retention.bytes", 0, Some("4096"))]),
        0
    );
    assert_eq!(
        describe(&broker, ResourceSpecifier::Topic("cfg"), "retention.bytes")
            .0
            .as_deref(),
        Some("4096")
    );
    assert_eq!(
        describe(&broker, ResourceSpecifier::Topic("cfg"), "segment.bytes")
            .0
            .as_deref(),
        Some("2048"),
        "an incremental change keeps the other overrides"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while low_watermark(&broker, "cfg").0 == 0 {
        assert!(
            Instant::now() < deadline,
            "the new retention did not take effect"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        incremental(&broker, 2, "cfg", &[("retention.bytes", 0, Some("soon"))]),
        40,
        "INVALID_CONFIG for a bad value"
    );

    // Broker-level default, then a restart: both changes are still there.
    assert_eq!(
        incremental(&broker, 4, "0", &[("log.retention.ms", 0, Some("3600000"))]),
        0
    );
    assert_eq!(
        describe(&broker, ResourceSpecifier::Broker(0), "log.retention.ms"),
        (Some("3600000".into()), "DynamicDefaultBroker".to_string())
    );
    assert_eq!(
        describe(&broker, ResourceSpecifier::Topic("cfg"), "retention.ms")
            .0
            .as_deref(),
        Some("3600000"),
        "a topic without its own value follows the broker default"
    );
    assert!(broker.terminate().success());
    broker.restart();
    assert_eq!(
        describe(&broker, ResourceSpecifier::Topic("cfg"), "retention.bytes")
            .0
            .as_deref(),
        Some("4096")
    );
    assert_eq!(
        describe(&broker, ResourceSpecifier::Broker(0), "log.retention.ms")
            .0
            .as_deref(),
        Some("3600000")
    );
    // Deleting the override returns to the default.
    assert_eq!(
        incremental(&broker, 2, "cfg", &[("retention.bytes", 1, None)]),
        0
    );
    assert_eq!(
        describe(&broker, ResourceSpecifier::Topic("cfg"), "retention.bytes"),
        (Some("-1".into()), "Default".to_string())
    );
}

#[test]
fn delete_records_moves_the_low_watermark_and_survives_restart() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, &[]);
    let a = admin(&broker);
    block_on(a.create_topics(
        &[NewTopic::new("trim", 1, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .expect("create");
    produce_rounds(&broker, "trim", 5);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("trim", 0, Offset::Offset(42))
        .expect("tpl");
    let r = block_on(a.delete_records(&tpl, &AdminOptions::new())).expect("delete records");
    assert_eq!(r.elements()[0].offset(), Offset::Offset(42));
    assert_eq!(low_watermark(&broker, "trim"), (42, 100));
    // Past the end is refused.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("trim", 0, Offset::Offset(1000))
        .expect("tpl");
    let r = block_on(a.delete_records(&tpl, &AdminOptions::new())).expect("delete records");
    assert!(r.elements()[0].error().is_err());
    assert!(broker.terminate().success());
    broker.restart();
    assert_eq!(low_watermark(&broker, "trim"), (42, 100));
    // A consumer from the beginning starts at the new low watermark.
    let c = kafka::assigned(&broker, &[], "trim", 1, Offset::Beginning);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(Ok(m)) = c.poll(Timeout::After(Duration::from_millis(200))) {
            assert_eq!(m.offset(), 42);
            break;
        }
        assert!(Instant::now() < deadline, "no message after DeleteRecords");
    }
}

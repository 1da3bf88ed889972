//! The Kafka wire edge with raw sockets: bad frames close only their own connection (with
//! a log line) while a real client keeps working; pipelined requests are answered in order;
//! an unknown ApiVersions version gets the v0 fallback.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{data_dir, Broker};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, FetchRequest, MetadataRequest, RequestHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

fn connect(broker: &Broker) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", broker.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Encodes one request frame.
fn request<R: Encodable>(api: ApiKey, version: i16, correlation: i32, body: &R) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str("wire-test")));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header
        .encode(&mut buf, api.request_header_version(version))
        .expect("header");
    body.encode(&mut buf, version).expect("body");
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    buf.to_vec()
}

/// Reads one response frame, or `None` when the broker closed the connection.
fn read_frame(s: &mut TcpStream) -> Option<Bytes> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(Bytes::from(body))
}

/// True when the broker closes the socket (EOF or reset) rather than answering.
fn closed_by_broker(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

/// A real client still gets metadata from the broker.
fn client_still_works(broker: &Broker) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("producer");
    let md = p
        .client()
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata after bad input");
    assert_eq!(md.brokers().len(), 1);
}

#[test]
fn bad_frames_close_only_their_connection() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut bystander = connect(&broker);

    // Random garbage.
    let mut s = connect(&broker);
    s.write_all(b"\x00\x00\x00\x10GET / HTTP/1.1\r\n\r\n")
        .expect("write");
    assert!(closed_by_broker(&mut s), "garbage closes the connection");
    client_still_works(&broker);

    // A 2 GiB size prefix.
    let mut s = connect(&broker);
    s.write_all(&0x7fff_ffffu32.to_be_bytes()).expect("write");
    assert!(
        closed_by_broker(&mut s),
        "oversize frame closes the connection"
    );

    // A negative size.
    let mut s = connect(&broker);
    s.write_all(&(-5i32).to_be_bytes()).expect("write");
    assert!(closed_by_broker(&mut s));

    // A frame cut short: the size promises more than is sent before the client stops.
    let mut s = connect(&broker);
    let full = request(ApiKey::Metadata, 9, 1, &MetadataRequest::default());
    s.write_all(&full[..full.len() - 3]).expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert!(closed_by_broker(&mut s));

    // A complete frame whose body is truncated inside the request.
    let mut s = connect(&broker);
    let mut f = request(
        ApiKey::Metadata,
        4,
        2,
        &MetadataRequest::default().with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("some-topic")))),
        ])),
    );
    f.truncate(f.len() - 6);
    let len = (f.len() - 4) as i32;
    f[0..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&f).expect("write");
    assert!(
        closed_by_broker(&mut s),
        "undecodable body closes the connection"
    );

    // An unknown API key, and a version out of range.
    let mut s = connect(&broker);
    let mut f = request(ApiKey::Metadata, 9, 3, &MetadataRequest::default());
    f[4..6].copy_from_slice(&999i16.to_be_bytes());
    s.write_all(&f).expect("write");
    assert!(closed_by_broker(&mut s));
    let mut s = connect(&broker);
    let mut f = request(ApiKey::Metadata, 9, 4, &MetadataRequest::default());
    f[6..8].copy_from_slice(&99i16.to_be_bytes());
    s.write_all(&f).expect("write");
    assert!(closed_by_broker(&mut s));

    // The untouched connection still answers.
    bystander
        .write_all(&request(
            ApiKey::ApiVersions,
            3,
            77,
            &ApiVersionsRequest::default(),
        ))
        .expect("write");
    let mut resp = read_frame(&mut bystander).expect("response");
    assert_eq!(resp.get_i32(), 77);
    client_still_works(&broker);
    let log = broker.log();
    assert!(log.contains("outside the accepted range"), "{log}");
    assert!(log.contains("unknown API key 999"), "{log}");
    assert!(log.contains("truncated request"), "{log}");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    client_still_works(&broker);
    // Create a topic through auto-creation so the fetch has something to wait on.
    let mut s = connect(&broker);
    let md = MetadataRequest::default()
        .with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("piped")))),
        ]))
        .with_allow_auto_topic_creation(true);
    s.write_all(&request(ApiKey::Metadata, 9, 1, &md))
        .expect("write");
    read_frame(&mut s).expect("metadata");

    // A slow long poll, then two fast requests, in one write.
    let fetch = FetchRequest::default()
        .with_max_wait_ms(800)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("piped")))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let mut all = request(ApiKey::Fetch, 11, 10, &fetch);
    all.extend(request(
        ApiKey::ApiVersions,
        3,
        11,
        &ApiVersionsRequest::default(),
    ));
    all.extend(request(
        ApiKey::Metadata,
        9,
        12,
        &MetadataRequest::default(),
    ));
    s.write_all(&all).expect("write");
    let ids: Vec<i32> = (0..3)
        .map(|_| read_frame(&mut s).expect("response").get_i32())
        .collect();
    assert_eq!(ids, vec![10, 11, 12]);
}

#[test]
fn unknown_api_versions_version_gets_the_v0_fallback() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let mut s = connect(&broker);
    let mut f = request(ApiKey::ApiVersions, 3, 5, &ApiVersionsRequest::default());
    f[6..8].copy_from_slice(&42i16.to_be_bytes());
    s.write_all(&f).expect("write");
    let mut resp = read_frame(&mut s).expect("a v0 response, not a closed socket");
    assert_eq!(resp.get_i32(), 5);
    let body = ApiVersionsResponse::decode(&mut resp, 0).expect("v0 body");
    assert_eq!(body.error_code, 35, "UNSUPPORTED_VERSION");
    let av = body
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::ApiVersions as i16)
        .expect("ApiVersions listed");
    assert_eq!((av.min_version, av.max_version), (0, 4));
    // The connection stays usable: ask again with a version we speak.
    s.write_all(&request(
        ApiKey::ApiVersions,
        3,
        6,
        &ApiVersionsRequest::default(),
    ))
    .expect("write");
    let mut resp = read_frame(&mut s).expect("response");
    assert_eq!(resp.get_i32(), 6);
}

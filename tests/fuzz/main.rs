//! In-process fuzzing of the three network edges, on stable Rust: Kafka request decoding
//! (`codec::decode_frame`, then `codec::decode_request`, the decoder `handlers::dispatch`
//! uses, then the record batches of a produce as the owner shard splits them), AMQP frames,
//! methods, field tables and content-header properties, and HTTP requests through hyper's
//! parser with the broker's settings into the router's `http::head`.
//!
//! Each target mutates the seeds under `fuzz/corpus/<target>/` (captured from rdkafka,
//! lapin and ureq by `tests/fuzz_capture.rs`) for `PORTASK_FUZZ_SECS` seconds (default 5;
//! `.ci/run` runs this binary in release for 60) and fails on a panic or an allocation
//! over the target's bound; see `engine.rs` for the knobs and how to replay a failure.
//! The cargo-fuzz targets in `fuzz/` call the same entry points for longer runs.

mod alloc;
mod engine;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use portask::amqp::{codec as amqp_codec, message};
use portask::kafka::codec::{self as kafka_codec, Request};

#[global_allocator]
static COUNTING: alloc::Counting = alloc::Counting;

/// What decoding one input may allocate: 64 bytes per input byte plus 1 MiB.
///
/// Measured over the seeds and their mutations (the figure each target prints at its
/// end): a decoded Kafka request holds its structs, strings and `Vec`s, at most ~40 bytes
/// per wire byte for requests of many tiny elements (an array of empty partitions); AMQP
/// frames and properties hold a little more than their bytes, plus the read buffer's
/// reserve for a frame the size prefix announces (at most `amqp.frame_max`, 128 KiB);
/// hyper reserves its 8 KiB read buffer and up to `http.max_header_bytes` (64 KiB). The
/// 1 MiB floor covers those fixed buffers; 64× covers the per-byte structures with room.
/// A decoder that trusts a wire count (`Vec::with_capacity(0x7fffffff)`) is over it by
/// orders of magnitude.
fn bound(len: usize) -> usize {
    64 * len + (1 << 20)
}

/// Inputs are cut to this length: long enough for every seed, short enough that a run
/// tries many.
const MAX_INPUT: usize = 64 * 1024;

/// One Kafka request frame, without its size prefix, as `kafka::server` reads it.
pub fn kafka_request(data: &[u8]) {
    if data.len() >= 4 {
        let _ = kafka_codec::frame_len([data[0], data[1], data[2], data[3]], 100 << 20);
    }
    let _ = kafka_codec::correlation_id(data);
    let Ok(frame) = kafka_codec::decode_frame(Bytes::copy_from_slice(data)) else {
        return;
    };
    let Ok(request) = kafka_codec::decode_request(frame.api, frame.body, frame.version) else {
        return;
    };
    // The owner shard splits and checks each partition's record batches.
    if let Request::Produce(produce) = request {
        for topic in &produce.topic_data {
            for partition in &topic.partition_data {
                let Some(records) = &partition.records else {
                    continue;
                };
                let _ = portask::storage::batch::BatchHeader::parse(records);
                let _ = portask::storage::batch::record_count(records);
                if let Ok(batches) = portask::storage::batch::split(records) {
                    for (header, batch) in &batches {
                        let _ = portask::storage::batch::create_time_max(batch, header);
                    }
                }
            }
        }
    }
}

/// Bytes an AMQP client sends after its protocol header: frames, their methods (with the
/// nesting check before amq-protocol parses tables), content headers and properties.
pub fn amqp_frames(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = amqp_codec::take_frame(&mut buf, 131_072) {
        match frame.kind {
            amqp_codec::FRAME_METHOD => {
                let (class, method) = amqp_codec::method_ids(&frame.payload);
                let _ = amqp_codec::method_name(class, method);
                let _ = amqp_codec::decode_method(&frame.payload);
            }
            amqp_codec::FRAME_HEADER => {
                if let Some(header) = amqp_codec::decode_content_header(&frame.payload) {
                    if let Some(view) = message::scan_properties(&header.properties) {
                        if let Some(table) = view.headers {
                            let _ = message::decode_headers(&table);
                        }
                    }
                    let _ = message::parse_props(&header.properties);
                }
            }
            _ => {}
        }
    }
}

/// Bytes an HTTP client sends on one connection, read by hyper as the broker configures it,
/// each request's head taken apart by the router and its body read within the limit.
pub fn http_requests(data: &[u8]) {
    let config = portask::config::Config::default();
    let max_body = config.http.max_body_bytes;
    let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| {
        let config = &config;
        async move {
            use http_body_util::BodyExt;
            let (parts, body) = req.into_parts();
            let _ = portask::http::head(config, &parts, None);
            let _ = http_body_util::Limited::new(body, max_body).collect().await;
            Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                Bytes::from_static(b"{}"),
            )))
        }
    });
    let conn = portask::http::http1(&config.http).serve_connection(Memory(data), service);
    let _ = futures::executor::block_on(conn);
}

/// A connection whose peer sent `data` and then closed; what is written back is dropped.
struct Memory<'a>(&'a [u8]);

impl hyper::rt::Read for Memory<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.0.len().min(buf.remaining());
        buf.put_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for Memory<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[test]
fn kafka_request_decoding() {
    engine::run("kafka_request", MAX_INPUT, bound, kafka_request);
}

#[test]
fn amqp_frame_decoding() {
    engine::run("amqp_frame", MAX_INPUT, bound, amqp_frames);
}

#[test]
fn http_request_routing() {
    engine::run("http_request", MAX_INPUT, bound, http_requests);
}

/// The request of issue 13 that made kafka-protocol 0.18 ask for ~200 GB (a Fetch v4
/// whose partition count is 0x7fffffff): decoded under the counting allocator, within the
/// bound. It is also a seed of `fuzz/corpus/kafka_request/`.
#[test]
fn kafka_huge_count_is_refused_within_bound() {
    let frame = engine_hex("00010004000000010003726570ffffffff000001f40000000100100000007fffffff");
    let ((), usage) = alloc::measure(&frame, (0, 0), || kafka_request(&frame));
    assert!(usage.largest <= bound(frame.len()), "{usage:?}");
}

fn engine_hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
        .collect()
}

/// The engine is deterministic: the same (seed, case) makes the same input.
#[test]
fn inputs_replay_from_their_seed() {
    let mut a = engine::Rng::new(42);
    let mut b = engine::Rng::new(42);
    assert_eq!(a.bytes(64), b.bytes(64));
    assert_ne!(engine::Rng::new(1).next(), engine::Rng::new(2).next());
}

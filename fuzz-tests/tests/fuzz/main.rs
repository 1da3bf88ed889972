//! In-process fuzzing of the network edges, on stable Rust: Kafka request decoding
//! (`codec::decode_frame`, then `codec::decode_request`, the decoder `handlers::dispatch`
//! uses, then the record batches of a produce as the owner shard splits them), AMQP frames,
//! methods, field tables and content-header properties, and HTTP requests through hyper's
//! parser with the broker's settings into the router's `http::head`, and the SASL
//! exchanges (SCRAM, PLAIN, AMQPLAIN) a client drives before it has authenticated, and a
//! stream queue's decoding of stored record batches into AMQP deliveries.
//!
//! Each target mutates the seeds under `fuzz/corpus/<target>/` (captured from rdkafka,
//! lapin and ureq by the broker's `tests/fuzz_capture.rs`) for `PORTASK_FUZZ_SECS` seconds (default 5;
//! `.ci/run` runs this binary in the `fuzz` profile for 60) and fails on a panic or an
//! allocation over the target's bound; see `engine.rs` for the knobs and how to replay a
//! failure.
//! The cargo-fuzz targets in `fuzz/` call the same entry points for longer runs.

mod alloc;
mod engine;
mod targets;

use targets::{amqp_frames, http_requests, kafka_request, sasl_tokens, stream_records};

#[global_allocator]
static COUNTING: alloc::Counting = alloc::Counting;

/// What decoding one AMQP or HTTP input may hold at once: 64 bytes per input byte plus
/// 1 MiB. Measured over the seeds and their mutations (each target prints its figures at
/// its end): fixed buffers dominate — the AMQP read buffer's reserve for the frame a size
/// prefix announces (at most `amqp.frame_max`, 128 KiB), hyper's read buffer (up to
/// `http.max_header_bytes`, 64 KiB) — and the 1 MiB floor covers them; per byte, decoded
/// methods, properties and heads held at most ~80× their bytes for 1-2 KiB inputs, which
/// is still those fixed buffers, so 64× per byte above the floor leaves room.
fn bound(len: usize) -> usize {
    64 * len + (1 << 20)
}

/// The same for a Kafka request: 512 bytes per input byte plus 1 MiB. A decoded request
/// holds a struct per array element, and the decoder reserves a `Vec` for as many
/// elements as the count says once the count fits the bytes left — one element per byte
/// left at worst. In the flexible versions an element can be two bytes on the wire (an
/// empty compact string, an empty tag buffer) and is a struct of up to 120 bytes in memory
/// (kafka-protocol 0.18's request element types; 216 for the largest request), at each of
/// up to three nesting levels. Measured: up to 156 bytes held per frame byte over 45
/// million mutated inputs (a 1.7 KiB request held 262 KiB), and 37× for an 8 MiB Metadata
/// v9 of 4 million empty topics (a single 302 MB `Vec`). 512× leaves room; a decoder that
/// trusts a wire count instead of the bytes left (`Vec::with_capacity(0x7fffffff)` on a
/// 38-byte frame) is over it by orders of magnitude.
fn kafka_bound(len: usize) -> usize {
    512 * len + (1 << 20)
}

/// Inputs are cut to this length: long enough for every seed, short enough that a run
/// tries many.
const MAX_INPUT: usize = 64 * 1024;

#[test]
fn kafka_request_decoding() {
    engine::run("kafka_request", MAX_INPUT, kafka_bound, kafka_request);
}

#[test]
fn amqp_frame_decoding() {
    engine::run("amqp_frame", MAX_INPUT, bound, amqp_frames);
}

#[test]
fn sasl_token_exchanges() {
    engine::run("sasl_tokens", MAX_INPUT, bound, sasl_tokens);
}

/// What decoding one run of stored batches may hold: the inflated records section (at
/// most 1 MiB, `targets::stream_records`' limit, in a buffer that may have doubled to get
/// there) and the decoded records and deliveries: 64 bytes per input byte plus 4 MiB.
fn stream_bound(len: usize) -> usize {
    64 * len + (4 << 20)
}

#[test]
fn stream_record_decoding() {
    engine::run("stream_records", MAX_INPUT, stream_bound, stream_records);
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
    let limit = kafka_bound(frame.len());
    assert!(usage.largest <= limit && usage.peak <= limit, "{usage:?}");
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

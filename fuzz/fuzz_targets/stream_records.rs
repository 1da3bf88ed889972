//! Fuzzes a stream queue's read of its log with libFuzzer: stored record batches (every
//! codec) decoded into records and mapped to AMQP deliveries. The entry point is shared
//! with the in-process fuzz test (`fuzz-tests/tests/fuzz/targets.rs`). `cargo +nightly fuzz run
//! stream_records fuzz/work/stream_records fuzz/corpus/stream_records` from the repository
//! root.
#![no_main]

// Each target calls one of the shared entry points.
#[allow(dead_code)]
#[path = "../../fuzz-tests/tests/fuzz/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::stream_records(data));

//! Fuzzes the Kafka request edge with libFuzzer: the size prefix check, header decoding,
//! the body decoder of every API the broker serves (`codec::decode_request`, as dispatch
//! uses it) and the record batches of a produce. The entry point is shared with the
//! in-process fuzz test (`fuzz-tests/tests/fuzz/targets.rs`). Run for as long as you like from the
//! repository root (nightly): `cargo +nightly fuzz run kafka_request fuzz/work/kafka_request
//! fuzz/corpus/kafka_request` (see README, "Fuzzing").
#![no_main]

// Each target calls one of the shared entry points.
#[allow(dead_code)]
#[path = "../../fuzz-tests/tests/fuzz/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::kafka_request(data));

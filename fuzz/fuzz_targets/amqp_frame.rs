//! Fuzzes the AMQP edge with libFuzzer: frames, methods (with the table nesting check),
//! content headers and properties. The entry point is shared with the in-process fuzz test
//! (`fuzz-tests/tests/fuzz/targets.rs`). `cargo +nightly fuzz run amqp_frame fuzz/work/amqp_frame
//! fuzz/corpus/amqp_frame` from the repository root (see README, "Fuzzing").
#![no_main]

// Each target calls one of the shared entry points.
#[allow(dead_code)]
#[path = "../../fuzz-tests/tests/fuzz/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::amqp_frames(data));

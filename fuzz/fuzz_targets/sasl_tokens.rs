//! Fuzzes the SASL exchanges of unauthenticated clients with libFuzzer: SCRAM client
//! messages against a fixed credential, PLAIN and AMQPLAIN responses. The entry point is
//! shared with the in-process fuzz test (`fuzz-tests/tests/fuzz/targets.rs`). `cargo +nightly fuzz run
//! sasl_tokens fuzz/work/sasl_tokens fuzz/corpus/sasl_tokens` from the repository root.
#![no_main]

// Each target calls one of the shared entry points.
#[allow(dead_code)]
#[path = "../../fuzz-tests/tests/fuzz/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::sasl_tokens(data));

//! Fuzzes the HTTP edge with libFuzzer: the bytes of one connection through hyper's parser,
//! configured as the broker configures it, into the router's `http::head` and a bounded
//! body read. The entry point is shared with the in-process fuzz test
//! (`fuzz-tests/tests/fuzz/targets.rs`). `cargo +nightly fuzz run http_request fuzz/work/http_request
//! fuzz/corpus/http_request` from the repository root (see README, "Fuzzing").
#![no_main]

// Each target calls one of the shared entry points.
#[allow(dead_code)]
#[path = "../../fuzz-tests/tests/fuzz/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::http_requests(data));

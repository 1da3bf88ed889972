//! Nothing: this package exists for its test target, the in-process fuzz tests in
//! `tests/fuzz/` (see `Cargo.toml` for why they are a package of their own).

//! Every tuning profile loads and validates through the broker's own configuration code,
//! and the binary refuses a misspelt key by name.

use std::path::Path;
use std::process::Command;

use portask::config::ConfigBuilder;

#[test]
fn every_profile_loads_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("tuning dir").flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let built = ConfigBuilder::new().file(&path).and_then(|b| b.build());
        assert!(built.is_ok(), "{}: {:?}", path.display(), built.err());
        n += 1;
    }
    assert!(
        n >= 4,
        "default, high_throughput, low_latency and durable profiles"
    );
}

#[test]
fn a_misspelt_key_is_refused_with_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[kafka]\nnum_partitons = 3\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_portask"))
        .arg("--config")
        .arg(&path)
        .arg("--print-config")
        .output()
        .expect("run portask");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("num_partitons"), "{err}");
    // And a good profile prints its effective values with their sources.
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/low_latency.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_portask"))
        .arg("--config")
        .arg(&good)
        .arg("--print-config")
        .output()
        .expect("run portask");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("# file"), "{text}");
    assert!(text.contains("# default"), "{text}");
}

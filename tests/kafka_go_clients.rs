//! Go clients as Debian ships them, with the old protocol versions they speak: segmentio's
//! kafka-go 0.2 (CreateTopics v0, Produce v2, Fetch v2, group join/sync/heartbeat,
//! OffsetCommit v2, OffsetFetch v1) and Shopify's sarama 1.22 set to Kafka 0.8.2 …
//! 2.1 (0.8.2: Produce v0, Fetch v0, ListOffsets v0, Metadata v0; every version:
//! OffsetCommit v1, OffsetFetch v1). The programs in `tests/go/` produce with acks=all and
//! each codec the version allows, read half, commit, and resume from the commits in a new
//! client; each prints what it read and fails with the first thing that went wrong.
//!
//! They are built with Debian's Go toolchain and packages (`golang-go`,
//! `golang-github-segmentio-kafka-go-dev`, `golang-github-shopify-sarama-dev`), installed
//! with apt when missing (CI runs as root).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{data_dir, Broker, FAST_GROUPS};

const GOPATH: &str = "/usr/share/gocode";
const PACKAGES: &[&str] = &[
    "golang-go",
    "golang-github-segmentio-kafka-go-dev",
    "golang-github-shopify-sarama-dev",
];
const MESSAGES: &str = "300";

fn go_installed() -> bool {
    let ok = || {
        Path::new("/usr/bin/go").exists()
            && Path::new(GOPATH)
                .join("src/github.com/segmentio/kafka-go")
                .exists()
            && Path::new(GOPATH)
                .join("src/github.com/Shopify/sarama")
                .exists()
    };
    ok() || (common::apt::apt_install(PACKAGES) && ok())
}

/// Builds `tests/go/<name>/main.go` into `out`, in GOPATH mode against Debian's packages.
fn build(name: &str, out: &Path) -> PathBuf {
    assert!(
        go_installed(),
        "Go or the Debian Go client packages are missing and could not be installed: \
         `apt-get install -y {}`",
        PACKAGES.join(" ")
    );
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/go/{name}/main.go"));
    let binary = out.join(name);
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(&source)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        // Go's build cache is content-addressed and safe to share: kept across runs, a
        // second run does not compile the client packages again (11 of its 17 s of CPU).
        .env(
            "GOCACHE",
            std::env::temp_dir().join("portask-go-build-cache"),
        )
        .env("GOFLAGS", "")
        .output()
        .expect("run go build");
    assert!(
        built.status.success(),
        "go build {name}: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    binary
}

/// Runs a client program; returns its last line, which must be the success summary.
fn run(binary: &Path, args: &[&str]) -> String {
    let out = Command::new(binary)
        .args(args)
        .output()
        .expect("run the Go client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let last = stdout.lines().last().unwrap_or("").to_string();
    assert!(
        out.status.success(),
        "{} {args:?}: {stdout}{}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    last
}

/// The summary a program prints when every message was read exactly once, half before the
/// commit and half after.
fn every_message_once() -> String {
    format!("produced={MESSAGES} first=150 second=150 distinct={MESSAGES}")
}

/// No connection was closed on the clients (an unserved version closes it, which these
/// clients see as a bare EOF and retry for ever).
fn no_connection_closed_by_error(broker: &Broker) {
    let log = broker.log();
    let closed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("kafka connection"))
        .collect();
    assert!(closed.is_empty(), "{closed:#?}");
}

#[test]
fn kafka_go_creates_produces_compressed_and_resumes_a_group_from_its_commits() {
    let (dir, data) = data_dir();
    let client = build("kafkago", dir.path());
    // Each run joins its group twice, each time into an empty group, and the second join
    // waits for the first reader's session to expire (kafka-go leaves no group).
    let broker = Broker::start_with_shards(&data, FAST_GROUPS, 2);
    for codec in ["none", "snappy", "lz4", "gzip"] {
        let topic = format!("kafka-go-{codec}");
        let group = format!("kafka-go-group-{codec}");
        let summary = run(
            &client,
            &[&broker.bootstrap(), &topic, &group, codec, MESSAGES],
        );
        assert_eq!(summary, every_message_once(), "codec {codec}");
    }
    no_connection_closed_by_error(&broker);
}

#[test]
fn sarama_at_old_protocol_versions_produces_commits_and_resumes() {
    let (dir, data) = data_dir();
    let client = build("sarama", dir.path());
    let broker = Broker::start_with_shards(&data, FAST_GROUPS, 2);
    // sarama refuses lz4 below Kafka 0.10.
    let runs = [
        ("0.8.2.0", "none"),
        ("0.8.2.0", "snappy"),
        ("0.8.2.0", "gzip"),
        ("0.10.2.0", "lz4"),
        ("0.11.0.0", "snappy"),
        ("2.1.0", "lz4"),
    ];
    for (version, codec) in runs {
        let topic = format!("sarama-{version}-{codec}");
        let group = format!("sarama-group-{version}-{codec}");
        let summary = run(
            &client,
            &[
                &broker.bootstrap(),
                &topic,
                &group,
                version,
                codec,
                MESSAGES,
            ],
        );
        assert_eq!(summary, every_message_once(), "Kafka {version}, {codec}");
    }
    no_connection_closed_by_error(&broker);
}

//! Test harness: runs the real `portask` binary on ephemeral ports and a temp data dir,
//! unpinned, with two shards (started by `launch.rs`, which the benches share); can
//! SIGTERM or `kill -9` it and restart it on the same dir. `kafka.rs` and `amqp.rs` hold
//! the client helpers, `disk.rs` a small filesystem that fills up, `tls.rs` test
//! certificates made at run time, `idle.rs` idle connections by the thousand.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use launch::{free_port, Launch};

/// Broker settings for tests whose clients join consumer groups: a join into an empty group
/// waits 100 ms instead of Kafka's 3 s initial rebalance delay, and clients may ask for
/// sessions down to 1 s, so a member that left without LeaveGroup expires quickly.
pub const FAST_GROUPS: &[(&str, &str)] = &[
    ("PORTASK_KAFKA__GROUP_INITIAL_REBALANCE_DELAY_MS", "100"),
    ("PORTASK_KAFKA__GROUP_MIN_SESSION_TIMEOUT_MS", "1000"),
];

/// The sum of the counter or gauge samples of `metric` whose labels include `labels`.
pub fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

pub struct Broker {
    child: Option<Child>,
    pub data: PathBuf,
    pub port: u16,
    /// The AMQP port (kept across restarts).
    pub amqp_port: u16,
    /// The HTTP port (kept across restarts).
    pub http_port: u16,
    pub log_path: PathBuf,
    launch: Launch,
    starts: usize,
}

impl Broker {
    /// Starts a broker with two shards on `data`, with extra `PORTASK_*` settings.
    pub fn start(data: &Path, env: &[(&str, &str)]) -> Broker {
        Self::start_with_shards(data, env, 2)
    }

    pub fn start_with_shards(data: &Path, env: &[(&str, &str)], shards: usize) -> Broker {
        Self::start_launch(Launch::new(data, shards, env))
    }

    /// Starts a broker as `launch` says (a test that must know its ports before it writes
    /// a configuration file makes the `Launch` first).
    pub fn start_launch(launch: Launch) -> Broker {
        let mut b = Broker {
            child: None,
            data: launch.data.clone(),
            port: launch.kafka_port,
            amqp_port: launch.amqp_port,
            http_port: launch.http_port,
            log_path: launch.log_path.clone(),
            launch,
            starts: 0,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        self.starts += 1;
        // Held by `self` before the wait, so a start that times out is still killed on drop.
        let child = self.child.insert(self.launch.spawn());
        self.launch.wait_ready(child, self.starts);
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` for clients.
    pub fn amqp_url(&self) -> String {
        self.launch.amqp_url()
    }

    /// `http://127.0.0.1:<port>` of the HTTP API.
    pub fn http_url(&self) -> String {
        self.launch.http_url()
    }

    pub fn bootstrap(&self) -> String {
        self.launch.bootstrap()
    }

    /// `/metrics`, parsed.
    pub fn scrape(&self) -> prometheus_parse::Scrape {
        let text = ureq::get(&format!("{}/metrics", self.http_url()))
            .call()
            .expect("GET /metrics")
            .into_string()
            .expect("metrics text");
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("exposition")
    }

    /// The sum over shards of counter or gauge `name` in `/metrics`, over the samples whose
    /// labels include all of `labels`.
    pub fn metric_total(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sample(&self.scrape(), name, labels)
    }

    /// The shard `/api/v1/connections` (read as `user`) lists the connection whose peer is
    /// `local` (the test's side of it) on.
    pub fn connection_shard(
        &self,
        local: std::net::SocketAddr,
        user: &str,
        password: &str,
    ) -> Option<u64> {
        connection_shard(&self.http_url(), local, user, password)
    }

    pub fn log(&self) -> String {
        self.launch.log()
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// How the broker process ended, or `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Resident memory of the broker process in bytes (from /proc).
    pub fn rss_bytes(&self) -> u64 {
        self.pid().map(launch::rss_bytes).unwrap_or(0)
    }

    /// How the broker process ended, if it has (`None` while it runs).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("broker not running");
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "portask did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again on the same data dir and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker first");
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- broker log (last 40 lines) ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The shard the broker at `http_url` lists (in `/api/v1/connections`, read as `user`) the
/// connection whose peer is `local` (the test's side of it) on.
pub fn connection_shard(
    http_url: &str,
    local: std::net::SocketAddr,
    user: &str,
    password: &str,
) -> Option<u64> {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let body = ureq::get(&format!("{http_url}/api/v1/connections"))
        .set("Authorization", &format!("Basic {token}"))
        .call()
        .expect("GET connections")
        .into_string()
        .expect("body");
    let conns: serde_json::Value = serde_json::from_str(&body).expect("json");
    conns
        .as_array()?
        .iter()
        .find(|c| c["peer"] == local.to_string().as_str())
        .and_then(|c| c["shard"].as_u64())
}

/// True when the broker closes the socket (EOF or reset) rather than answering; false when
/// it answers or stays silent until the read timeout.
pub fn closed_by_broker(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// A fresh temp dir; the broker's data lives in `<dir>/data`.
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    (dir, data)
}

pub mod amqp;
pub mod apt;
pub mod disk;
pub mod idle;
pub mod kafka;
pub mod launch;
pub mod tls;

/// A `[[users]]` entry for `name` with `password`, made by `portask hash-password` as an
/// operator makes one (RabbitMQ hash and both SCRAM credentials, never the password).
pub fn hashed_user(name: &str, password: &str) -> toml::Table {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_portask"))
        .args(["hash-password", "--name", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("portask hash-password");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write password");
    let out = child.wait_with_output().expect("hash-password output");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let parsed: toml::Table = text.parse().expect("hash-password prints TOML");
    let Some(toml::Value::Table(user)) = parsed
        .get("users")
        .and_then(|u| u.as_array())
        .and_then(|a| a.first())
        .cloned()
    else {
        panic!("hash-password printed no [[users]] entry: {text}")
    };
    assert_eq!(
        user.get("name").and_then(|n| n.as_str()),
        Some(name),
        "{text}"
    );
    for key in ["password_hash", "scram_sha_256", "scram_sha_512"] {
        assert!(user.contains_key(key), "{key} missing: {text}");
    }
    user
}

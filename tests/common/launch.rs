//! The one way tests and benches start the real `portask` binary: a data directory, an
//! ephemeral port for each of Kafka, AMQP and HTTP, unpinned shards, the log appended to
//! a file, and a wait until every shard has recovered and every port accepts.
//!
//! `tests/common/mod.rs` (`Broker`, with restarts, `kill -9` and SIGTERM) and the benches
//! (`benches/sizing.rs`, and `--start-broker` of `load`, `groups` and `http`) include this
//! file with `#[path]`; it depends on nothing else in `tests/common`. `BROKER_UNDER_TEST` runs another build of the binary
//! (e.g. an older one, to show a test fails there).
#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on right now, and never handed out before in this process: the
/// kernel may give a port it just gave (its listener closed at once), and a broker whose
/// Kafka and HTTP ports came out equal refuses to start.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed.contains(&port) {
            handed.push(port);
            return port;
        }
    }
}

/// How to start one broker; the ports stay the same across starts.
pub struct Launch {
    pub data: PathBuf,
    pub shards: usize,
    pub kafka_port: u16,
    pub amqp_port: u16,
    pub http_port: u16,
    /// Where stdout and stderr go (appended to, across starts).
    pub log_path: PathBuf,
    /// Extra environment (`PORTASK_*` settings and others), applied after `RUST_LOG=info`.
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// `shards` shards on `data`, fresh ports, the log beside `data` (`<data>.log`).
    pub fn new(data: &Path, shards: usize, env: &[(&str, &str)]) -> Launch {
        Launch {
            data: data.to_owned(),
            shards,
            kafka_port: free_port(),
            amqp_port: free_port(),
            http_port: free_port(),
            log_path: data.with_extension("log"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Spawns the binary. The caller waits with [`Launch::wait_ready`].
    pub fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let bin = std::env::var("BROKER_UNDER_TEST")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_portask").to_owned());
        let mut cmd = Command::new(bin);
        cmd.arg("--data-dir")
            .arg(&self.data)
            .arg("--shards")
            .arg(self.shards.to_string())
            .arg("--placement")
            .arg("unpinned")
            .arg("--kafka-addr")
            .arg(format!("127.0.0.1:{}", self.kafka_port))
            .arg("--amqp-addr")
            .arg(format!("127.0.0.1:{}", self.amqp_port))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.spawn().expect("spawn portask")
    }

    /// Waits until the log holds the start line of every shard for `starts` starts and
    /// every port accepts. Panics (with the log) when the process exits or 60 s pass.
    pub fn wait_ready(&self, child: &mut Child, starts: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let want = self.shards * starts;
        loop {
            let n = self.log().matches("partitions recovered").count();
            if n >= want
                && [self.kafka_port, self.amqp_port, self.http_port]
                    .iter()
                    .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
            {
                return;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("portask exited early with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "portask did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the broker has logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` for clients.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// `http://127.0.0.1:<port>` of the HTTP API.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }
}

/// Resident memory of process `pid` in bytes (VmRSS from /proc), 0 when it is gone.
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// `--start-broker [--broker-shards N]` for a bench's command line (flattened into its
/// clap arguments): run against a Portask of its own instead of a running broker.
#[derive(Debug, Clone, clap::Args)]
pub struct StartFlags {
    /// Start a Portask of its own (the binary `cargo bench` built, a temp data dir,
    /// ephemeral ports, unpinned; the launcher the integration tests use) instead of
    /// using a running broker.
    #[arg(long)]
    pub start_broker: bool,
    /// Shards of the broker --start-broker starts.
    #[arg(long, default_value_t = 2, requires = "start_broker")]
    pub broker_shards: usize,
}

impl StartFlags {
    /// The broker, when `--start-broker` asked for one; dropping it kills it.
    pub fn start(&self) -> Option<Scratch> {
        self.start_broker
            .then(|| Scratch::start(self.broker_shards, &[]))
    }
}

/// A broker started on a temp dir of its own and killed (`kill -9`) on drop: what a bench
/// needs. Tests use `common::Broker`, which also restarts and stops gracefully.
pub struct Scratch {
    pub launch: Launch,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Scratch {
    pub fn start(shards: usize, env: &[(&str, &str)]) -> Scratch {
        Self::start_with(shards, env, |_, _| {})
    }

    /// As `start`, after `setup` has adjusted the launch (its ports are known by then)
    /// and written what it needs into the temp dir (certificates, say).
    pub fn start_with(
        shards: usize,
        env: &[(&str, &str)],
        setup: impl FnOnce(&mut Launch, &Path),
    ) -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut launch = Launch::new(&dir.path().join("data"), shards, env);
        setup(&mut launch, dir.path());
        let child = launch.spawn();
        // Built before the wait, so a start that times out is still killed on drop.
        let mut s = Scratch {
            launch,
            child,
            _dir: dir,
        };
        s.launch.wait_ready(&mut s.child, 1);
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

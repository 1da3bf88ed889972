//! Test harness: runs the real `portask` binary on ephemeral ports and a temp data dir,
//! unpinned, with two shards; can SIGTERM or `kill -9` it and restart it on the same dir.
#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    child: Option<Child>,
    pub data: PathBuf,
    pub port: u16,
    /// The AMQP port (kept across restarts).
    pub amqp_port: u16,
    /// The HTTP port (kept across restarts).
    pub http_port: u16,
    pub log_path: PathBuf,
    env: Vec<(String, String)>,
    shards: usize,
    starts: usize,
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

impl Broker {
    /// Starts a broker with two shards on `data`, with extra `PORTASK_*` settings.
    pub fn start(data: &Path, env: &[(&str, &str)]) -> Broker {
        Self::start_with_shards(data, env, 2)
    }

    pub fn start_with_shards(data: &Path, env: &[(&str, &str)], shards: usize) -> Broker {
        let mut b = Broker {
            child: None,
            data: data.to_owned(),
            port: free_port(),
            amqp_port: free_port(),
            http_port: free_port(),
            log_path: data.with_extension("log"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            shards,
            starts: 0,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        // BROKER_UNDER_TEST runs the tests against another build (e.g. an older one, to
        // show a test fails there).
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
            .arg(format!("127.0.0.1:{}", self.port))
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
        self.child = Some(cmd.spawn().expect("spawn portask"));
        self.starts += 1;
        self.wait_ready();
    }

    /// Waits until every shard has logged its start line for this run.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let want = self.shards * self.starts;
        loop {
            let n = self.log().matches("partitions recovered").count();
            if n >= want
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && TcpStream::connect(("127.0.0.1", self.amqp_port)).is_ok()
                && TcpStream::connect(("127.0.0.1", self.http_port)).is_ok()
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
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

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` for clients.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// `http://127.0.0.1:<port>` of the HTTP API.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
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
        let Some(pid) = self.pid() else { return 0 };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
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
pub mod disk;

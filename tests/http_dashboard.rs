//! The dashboard at `/` in a real headless Chromium against the real broker binary: the page
//! is opened as `http://guest:guest@…/`, must follow `/api/v1/stream` (Basic credentials and
//! all) and show message totals that grow while a Kafka producer runs. Leaves a screenshot at
//! `<target dir>/dashboard.png`.
//!
//! Chromium is driven over its DevTools pipe (`--remote-debugging-pipe`: NUL-separated JSON
//! on file descriptors 3 and 4), not with `--dump-dom`: an open event stream is a fetch that
//! never finishes, so `--virtual-time-budget` never runs out, and without it the DOM is dumped
//! at the load event, before or after the first event depending on luck.
//!
//! Chromium is required, not optional: when `/usr/bin/chromium` is missing the test installs
//! Debian's `chromium` package itself (as root, through apt-get), so the README's
//! `cargo test` is the whole set-up on a fresh machine too.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const TOPIC: &str = "dashboard-load";
/// How long any one thing may take: a DevTools reply, the page reaching a state.
const PATIENCE: Duration = Duration::from_secs(30);

/// Installs Debian's chromium when it is missing (root only).
fn ensure_chromium() {
    if !Path::new(CHROMIUM).exists() {
        common::apt::apt_install(&["chromium"]);
    }
}

#[test]
fn the_dashboard_follows_the_live_stream_in_headless_chromium() {
    ensure_chromium();
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} not found and could not be installed: this test drives a real headless \
         Chromium. Install it with `apt-get install -y --no-install-recommends chromium`."
    );
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let base = broker.http_url();

    // The credentials in the URL are what lets the page in: without them it is refused.
    assert_eq!(http_status(broker.http_port, "/api/v1/stream", None), 401);
    assert_eq!(http_status(broker.http_port, "/", None), 401);
    assert_eq!(http_status(broker.http_port, "/", Some("guest:guest")), 200);

    let load = Load::start(&broker);
    let mut browser = Chromium::launch();
    let page = browser.open(&base.replacen("http://", "http://guest:guest@", 1));

    let first = browser.wait_for(&page, "a first overview with messages", |s| {
        s.updates >= 1 && s.messages_in_total > 0
    });
    let second = browser.wait_for(&page, "the totals to move on", |s| {
        s.updates >= first.updates + 2 && s.messages_in_total > first.messages_in_total
    });
    assert!(
        second.messages_in_total > first.messages_in_total,
        "{first:?} then {second:?}"
    );
    assert!(
        second.rate_in >= 0.0 && second.connections_total >= 1.0,
        "{second:?}"
    );
    // "live" means the updates came from the event stream, not from the polling fallback:
    // the Basic credentials reached the EventSource request.
    assert_eq!(second.state, "live", "{second:?}");

    // A few more updates so the charts have lines in the screenshot.
    let shown = browser.wait_for(&page, "five updates", |s| s.updates >= 5);
    let png = browser.screenshot(&page);
    let path = screenshot_path();
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("dashboard screenshot: {} ({shown:?})", path.display());

    let errors = browser.exceptions();
    assert!(errors.is_empty(), "script errors on the page: {errors:#?}");
    load.stop();
}

/// What the page shows, read back from the `data-value` attributes a test may rely on.
#[derive(Debug, Clone)]
struct Shown {
    updates: u64,
    messages_in_total: u64,
    rate_in: f64,
    connections_total: f64,
    state: String,
}

const READ_SHOWN: &str = r#"(() => {
  const v = (id) => { const e = document.getElementById(id); return e ? e.dataset.value : ""; };
  const s = document.getElementById("status");
  return {
    updates: v("updates"), messagesIn: v("messages-in-total"), rateIn: v("rate-in"),
    connections: v("connections-total"), state: s ? s.dataset.state : "",
  };
})()"#;

impl Shown {
    fn parse(v: &Value) -> Shown {
        let field = |k: &str| v[k].as_str().unwrap_or("").to_string();
        Shown {
            updates: field("updates").parse().unwrap_or(0),
            messages_in_total: field("messagesIn").parse().unwrap_or(0),
            rate_in: field("rateIn").parse().unwrap_or(f64::NAN),
            connections_total: field("connections").parse().unwrap_or(f64::NAN),
            state: field("state"),
        }
    }
}

/// `<target dir>/dashboard.png`.
fn screenshot_path() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("dashboard.png")
}

/// The status code of a plain `GET path`, optionally with Basic `user:password`.
fn http_status(port: u16, path: &str, basic: Option<&str>) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP port");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let auth = basic
        .map(|c| {
            let token = base64::engine::general_purpose::STANDARD.encode(c);
            format!("Authorization: Basic {token}\r\n")
        })
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send request");
    // The status line is all we need; the stream endpoint would never end its body.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no status line in {line:?}"))
}

/// A producer and a consumer on one topic in a background thread, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start(broker: &Broker) -> Load {
        let producer: BaseProducer = kafka::client(broker, &[("linger.ms", "5")]);
        let consumer: BaseConsumer = kafka::client(
            broker,
            &[
                ("group.id", "unused-assign-only"),
                ("enable.auto.commit", "false"),
            ],
        );
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let value = vec![b'd'; 512];
            let mut assigned = false;
            while !flag.load(Ordering::Relaxed) {
                for _ in 0..50 {
                    // A full client queue only means "slower": the next round tries again.
                    let _ = producer.send(BaseRecord::<(), [u8]>::to(TOPIC).payload(&value));
                }
                producer.poll(Duration::ZERO);
                // Auto-creation makes the topic on the first produce; read it from then on.
                if !assigned {
                    let mut tpl = TopicPartitionList::new();
                    if tpl
                        .add_partition_offset(TOPIC, 0, Offset::Beginning)
                        .is_ok()
                        && consumer.assign(&tpl).is_ok()
                    {
                        assigned = true;
                    }
                }
                for _ in 0..200 {
                    if consumer.poll(Duration::ZERO).is_none() {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = producer.flush(Duration::from_secs(5));
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A page (a DevTools session attached to one tab).
struct Page {
    session: String,
}

/// Headless Chromium in its own process group, spoken to over the DevTools pipe.
struct Chromium {
    child: Child,
    commands: std::io::PipeWriter,
    replies: mpsc::Receiver<Value>,
    events: Vec<Value>,
    next_id: u64,
    profile: tempfile::TempDir,
}

impl Chromium {
    fn launch() -> Chromium {
        let profile = tempfile::tempdir().expect("profile dir");
        let log = std::fs::File::create(profile.path().join("chromium.log")).expect("log file");
        // Chromium reads commands on fd 3 and writes replies and events on fd 4.
        let (their_commands, commands) = std::io::pipe().expect("pipe");
        let (replies_in, their_replies) = std::io::pipe().expect("pipe");
        let (cmd_fd, reply_fd) = (their_commands.as_raw_fd(), their_replies.as_raw_fd());
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            "--window-size=1366,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
        // SAFETY: between fork and exec this only calls fcntl and dup2, which are
        // async-signal-safe. Both ends are first copied above fd 10 so that moving one onto
        // 3 or 4 cannot overwrite the other; dup2 clears close-on-exec on 3 and 4 only.
        unsafe {
            cmd.pre_exec(move || {
                let c = libc::fcntl(cmd_fd, libc::F_DUPFD_CLOEXEC, 10);
                let r = libc::fcntl(reply_fd, libc::F_DUPFD_CLOEXEC, 10);
                if c < 0 || r < 0 || libc::dup2(c, 3) < 0 || libc::dup2(r, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        // Our copies of Chromium's ends must go, or its exit would never read as EOF.
        drop(their_commands);
        drop(their_replies);

        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || read_messages(replies_in, tx));
        Chromium {
            child,
            commands,
            replies,
            events: Vec::new(),
            next_id: 0,
            profile,
        }
    }

    /// Sends one DevTools command and waits for its reply, keeping events met on the way.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("encode");
        bytes.push(0);
        if let Err(e) = self.commands.write_all(&bytes) {
            panic!("chromium gone ({e}):\n{}", self.log_tail());
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(m) if m["id"].as_u64() == Some(id) => {
                    if let Some(err) = m.get("error") {
                        panic!("{method}: {err}");
                    }
                    return m["result"].clone();
                }
                Ok(event) => self.events.push(event),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("{method}: no reply in {PATIENCE:?}:\n{}", self.log_tail())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("chromium exited during {method}:\n{}", self.log_tail())
                }
            }
        }
    }

    /// A new tab at 1366×900 that reports script errors, navigated to `url`.
    fn open(&mut self, url: &str) -> Page {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        let session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        let s = Some(session.as_str());
        self.call(s, "Runtime.enable", json!({}));
        self.call(s, "Page.enable", json!({}));
        self.call(
            s,
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1366, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        );
        let nav = self.call(s, "Page.navigate", json!({"url": url}));
        assert!(nav.get("errorText").is_none(), "navigate to {url}: {nav}");
        Page { session }
    }

    /// Polls what the page shows until `ready` holds.
    fn wait_for(&mut self, page: &Page, what: &str, ready: impl Fn(&Shown) -> bool) -> Shown {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let r = self.call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({"expression": READ_SHOWN, "returnByValue": true}),
            );
            let shown = Shown::parse(&r["result"]["value"]);
            if ready(&shown) {
                return shown;
            }
            assert!(
                Instant::now() < deadline,
                "waited {PATIENCE:?} for {what}; the page shows {shown:?}; script errors: {:#?}",
                self.exceptions()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn screenshot(&mut self, page: &Page) -> Vec<u8> {
        let shot = self.call(
            Some(&page.session),
            "Page.captureScreenshot",
            json!({"format": "png"}),
        );
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64")
    }

    /// Uncaught script errors reported so far.
    fn exceptions(&self) -> Vec<Value> {
        self.events
            .iter()
            .filter(|e| e["method"] == "Runtime.exceptionThrown")
            .map(|e| e["params"]["exceptionDetails"].clone())
            .collect()
    }

    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Ask the browser to close (it then reaps its own helper processes), give it a few
        // seconds, then kill whatever is left of the process group we gave it.
        let _ = self
            .commands
            .write_all(b"{\"id\":0,\"method\":\"Browser.close\"}\0");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: signalling the process group of our own child (its id is the group id).
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Splits Chromium's fd-4 output on NUL bytes into JSON messages until it closes.
fn read_messages(mut from: std::io::PipeReader, to: mpsc::Sender<Value>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.iter().position(|&b| b == 0) {
            let msg: Vec<u8> = buf.drain(..=end).collect();
            if let Ok(v) = serde_json::from_slice::<Value>(&msg[..end]) {
                if to.send(v).is_err() {
                    return;
                }
            }
        }
    }
}

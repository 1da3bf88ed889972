//! Tests of the operator tooling in `scripts/` and the profiles in `tuning/`.
//!
//! Std only: each test runs a script as a child process (against fake `/proc/sys` and `/sys`
//! trees where the real ones would make the result machine-dependent) and checks its exit
//! status and output.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

// Only the installer of the shared test code: the rest would link the Kafka and AMQP
// clients into this binary.
#[path = "common/apt.rs"]
mod apt;

/// Tooling variables that must not leak from the developer's shell into a test.
const TOOL_VARS: [&str; 3] = ["PORTASK_SYSCTL_ROOT", "PORTASK_SYS_ROOT", "PORTASK_BIN"];

const SCRIPTS: [&str; 10] = [
    "gen-certs.sh",
    "sysctl.sh",
    "limits.sh",
    "pin.sh",
    "healthcheck.sh",
    "compare.sh",
    "client-compat.sh",
    "group-churn.sh",
    "sanitize.sh",
    "portask.service",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script(name: &str) -> PathBuf {
    repo().join("scripts").join(name)
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "portask-scripts-{}-{}-{}-{}",
            tag,
            std::process::id(),
            n,
            nanos
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Exit code (None when killed by a signal) and stdout + stderr.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `scripts/<name>` with `args` and extra environment `envs`; tooling variables from
/// the caller's environment are removed first.
fn run_script(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(script(name));
    cmd.args(args);
    for var in TOOL_VARS.iter() {
        cmd.env_remove(var);
    }
    for (k, v) in envs.iter() {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

fn run(cmd: &mut Command) -> Run {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {}", cmd, e));
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write_file(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).expect("create parent dir");
    }
    fs::write(path, text).expect("write file");
}

#[test]
fn scripts_exist_are_executable_and_have_help() {
    for name in SCRIPTS.iter() {
        let path = script(name);
        assert!(path.is_file(), "{} is missing", path.display());
        if !name.ends_with(".sh") {
            continue;
        }
        let mode = fs::metadata(&path)
            .expect("stat script")
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{} is not executable", path.display());
        let text = fs::read_to_string(&path).expect("read script");
        assert!(
            text.starts_with("#!/usr/bin/env bash\n"),
            "{}: wrong shebang",
            name
        );
        assert!(
            text.contains("set -euo pipefail"),
            "{}: missing set -euo pipefail",
            name
        );
        let r = run_script(name, &["--help"], &[]);
        assert_eq!(r.code, Some(0), "{} --help: {}", name, r.describe());
        assert!(
            r.stdout.contains("Usage:"),
            "{} --help: {}",
            name,
            r.describe()
        );
        let r = run_script(name, &["--no-such-option"], &[]);
        assert_ne!(
            r.code,
            Some(0),
            "{} accepted a bad option: {}",
            name,
            r.describe()
        );
    }
}

#[test]
fn shellcheck_is_clean() {
    let available = || {
        Command::new("shellcheck")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(
        available() || (apt::apt_install(&["shellcheck"]) && available()),
        "shellcheck is missing and could not be installed: `apt-get install -y shellcheck`"
    );
    let mut checked = 0;
    for entry in fs::read_dir(repo().join("scripts")).expect("read scripts/") {
        let path = entry.expect("dir entry").path();
        if path.extension().map(|e| e == "sh").unwrap_or(false) {
            let r = run(Command::new("shellcheck").arg(&path));
            assert_eq!(
                r.code,
                Some(0),
                "shellcheck {}: {}",
                path.display(),
                r.describe()
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "found only {} scripts to check", checked);
}

// ---------------------------------------------------------------------------------------
// sysctl.sh

/// Values that meet every recommendation of sysctl.sh.
const GOOD_SYSCTLS: [(&str, &str); 18] = [
    ("net.core.somaxconn", "65535"),
    ("net.core.netdev_max_backlog", "16384"),
    ("net.ipv4.tcp_max_syn_backlog", "32768"),
    ("net.core.rmem_max", "16777216"),
    ("net.core.wmem_max", "16777216"),
    ("net.ipv4.tcp_rmem", "4096\t131072\t16777216"),
    ("net.ipv4.tcp_wmem", "4096\t16384\t33554432"),
    ("net.ipv4.tcp_fin_timeout", "15"),
    ("net.ipv4.tcp_keepalive_time", "300"),
    ("net.ipv4.tcp_keepalive_intvl", "30"),
    ("net.ipv4.tcp_keepalive_probes", "5"),
    ("fs.file-max", "9223372036854775807"),
    ("fs.nr_open", "1048576"),
    ("vm.swappiness", "1"),
    ("vm.dirty_ratio", "10"),
    ("vm.dirty_background_ratio", "5"),
    ("kernel.io_uring_disabled", "0"),
    ("fs.aio-max-nr", "1048576"),
];

/// Builds a fake /proc/sys under `root`: the good values, with `overrides` replacing
/// (or, when the value is None, removing) some of them.
fn fake_sysctl_tree(root: &Path, overrides: &[(&str, Option<&str>)]) {
    for (name, good) in GOOD_SYSCTLS.iter() {
        let value = match overrides.iter().find(|(n, _)| n == name) {
            Some((_, v)) => *v,
            None => Some(*good),
        };
        if let Some(v) = value {
            write_file(&root.join(name.replace('.', "/")), &format!("{}\n", v));
        }
    }
}

fn sysctl_check(root: &Path) -> Run {
    let root = root.to_str().expect("utf-8 temp path");
    run_script("sysctl.sh", &["--check"], &[("PORTASK_SYSCTL_ROOT", root)])
}

#[test]
fn sysctl_check_passes_on_a_good_tree() {
    let dir = TempDir::new("sysctl-good");
    fake_sysctl_tree(dir.path(), &[]);
    let r = sysctl_check(dir.path());
    assert_eq!(r.code, Some(0), "{}", r.describe());
    for (name, _) in GOOD_SYSCTLS.iter() {
        assert!(
            r.stdout.contains(name),
            "{} not reported: {}",
            name,
            r.describe()
        );
    }
    assert!(!r.stdout.contains("LOW"), "{}", r.describe());
    assert!(!r.stdout.contains("HIGH"), "{}", r.describe());
}

#[test]
fn sysctl_check_fails_on_low_somaxconn() {
    let dir = TempDir::new("sysctl-low");
    fake_sysctl_tree(dir.path(), &[("net.core.somaxconn", Some("128"))]);
    let r = sysctl_check(dir.path());
    assert_ne!(r.code, Some(0), "{}", r.describe());
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("net.core.somaxconn"))
        .unwrap_or_else(|| panic!("no somaxconn line: {}", r.describe()));
    assert!(line.contains("128") && line.contains("LOW"), "{}", line);
    // Only somaxconn is wrong: every other parameter is reported OK.
    for (name, _) in GOOD_SYSCTLS
        .iter()
        .filter(|(n, _)| *n != "net.core.somaxconn")
    {
        let l = r
            .stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{} not reported: {}", name, r.describe()));
        assert!(l.trim_end().ends_with("OK"), "wrongly flagged: {}", l);
    }
    assert!(r.all().contains("net.core.somaxconn"), "{}", r.describe());
}

#[test]
fn sysctl_check_compares_less_is_better_parameters_the_right_way() {
    // swappiness above the recommendation is worse, below is fine.
    let dir = TempDir::new("sysctl-swap-high");
    fake_sysctl_tree(dir.path(), &[("vm.swappiness", Some("60"))]);
    let r = sysctl_check(dir.path());
    assert_ne!(r.code, Some(0), "{}", r.describe());
    assert!(r.all().contains("vm.swappiness"), "{}", r.describe());

    let dir = TempDir::new("sysctl-swap-low");
    fake_sysctl_tree(dir.path(), &[("vm.swappiness", Some("0"))]);
    let r = sysctl_check(dir.path());
    assert_eq!(r.code, Some(0), "{}", r.describe());

    // io_uring disabled is worse than enabled.
    let dir = TempDir::new("sysctl-uring");
    fake_sysctl_tree(dir.path(), &[("kernel.io_uring_disabled", Some("2"))]);
    let r = sysctl_check(dir.path());
    assert_ne!(r.code, Some(0), "{}", r.describe());
}

#[test]
fn sysctl_check_judges_tcp_buffers_on_their_max_field() {
    // Large min/default fields but a small max: too low.
    let dir = TempDir::new("sysctl-wmem");
    fake_sysctl_tree(
        dir.path(),
        &[("net.ipv4.tcp_wmem", Some("4194304 4194304 4194304"))],
    );
    let r = sysctl_check(dir.path());
    assert_ne!(r.code, Some(0), "{}", r.describe());
    assert!(r.all().contains("net.ipv4.tcp_wmem"), "{}", r.describe());
}

#[test]
fn sysctl_skips_absent_parameters() {
    let dir = TempDir::new("sysctl-absent");
    fake_sysctl_tree(dir.path(), &[("kernel.io_uring_disabled", None)]);
    let r = sysctl_check(dir.path());
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("kernel.io_uring_disabled"))
        .unwrap_or_else(|| panic!("no io_uring line: {}", r.describe()));
    assert!(line.contains("absent"), "{}", line);
}

#[test]
fn sysctl_prints_the_real_kernel_and_exits_zero() {
    let r = run_script("sysctl.sh", &[], &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("somaxconn"), "{}", r.describe());
}

#[test]
fn sysctl_apply_refuses_a_fake_tree() {
    let dir = TempDir::new("sysctl-apply");
    fake_sysctl_tree(dir.path(), &[]);
    let conf = dir.path().join("99-portask.conf");
    let r = run_script(
        "sysctl.sh",
        &["--apply", "--conf", conf.to_str().expect("utf-8 path")],
        &[(
            "PORTASK_SYSCTL_ROOT",
            dir.path().to_str().expect("utf-8 path"),
        )],
    );
    assert_ne!(r.code, Some(0), "{}", r.describe());
    assert!(
        !conf.exists(),
        "--apply wrote {} from a fake tree",
        conf.display()
    );
}

// ---------------------------------------------------------------------------------------
// pin.sh

/// A fake /sys with NUMA node0 = CPUs 0-3 and node1 = CPUs 4-7.
fn fake_two_node_sys() -> TempDir {
    let dir = TempDir::new("sys");
    write_file(
        &dir.path().join("devices/system/node/node0/cpulist"),
        "0-3\n",
    );
    write_file(
        &dir.path().join("devices/system/node/node1/cpulist"),
        "4-7\n",
    );
    write_file(&dir.path().join("devices/system/node/online"), "0-1\n");
    dir
}

fn pin(sys: &Path, args: &[&str]) -> Run {
    let sys = sys.to_str().expect("utf-8 temp path");
    run_script("pin.sh", args, &[("PORTASK_SYS_ROOT", sys)])
}

/// The printed command lines (comments dropped).
fn command_lines(r: &Run) -> Vec<String> {
    r.stdout
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The word after `flag` in a command line.
fn flag_value(line: &str, flag: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| *w == flag)
        .unwrap_or_else(|| panic!("no {} in: {}", flag, line));
    words
        .get(i + 1)
        .unwrap_or_else(|| panic!("nothing after {} in: {}", flag, line))
        .to_string()
}

#[test]
fn pin_node_1_binds_node_1() {
    let sys = fake_two_node_sys();

    let r = pin(sys.path(), &["--node", "1", "--tool", "taskset"]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(
        command_lines(&r),
        vec!["taskset -c 4-7 portask".to_string()]
    );

    let r = pin(sys.path(), &["--node", "1", "--tool", "numactl"]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(
        command_lines(&r),
        vec!["numactl --cpunodebind=1 --membind=1 -- portask".to_string()]
    );

    // Auto picks whichever tool this machine has; either way it is node 1.
    let r = pin(sys.path(), &["--node", "1"]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let lines = command_lines(&r);
    assert_eq!(lines.len(), 1, "{}", r.describe());
    assert!(
        lines[0] == "taskset -c 4-7 portask"
            || lines[0] == "numactl --cpunodebind=1 --membind=1 -- portask",
        "{}",
        lines[0]
    );

    // Default node is 0; extra args and PORTASK_BIN are passed through.
    let r = run_script(
        "pin.sh",
        &[
            "--tool",
            "taskset",
            "--",
            "--config",
            "/etc/portask/portask.toml",
        ],
        &[
            ("PORTASK_SYS_ROOT", sys.path().to_str().expect("utf-8 path")),
            ("PORTASK_BIN", "/opt/portask/bin/portask"),
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(
        command_lines(&r),
        vec![
            "taskset -c 0-3 /opt/portask/bin/portask --config /etc/portask/portask.toml"
                .to_string()
        ]
    );

    // A node that does not exist is an error.
    let r = pin(sys.path(), &["--node", "2"]);
    assert_ne!(r.code, Some(0), "{}", r.describe());
}

#[test]
fn pin_per_node_gives_each_node_its_cpus_ports_and_data_dir() {
    let sys = fake_two_node_sys();
    for tool in ["taskset", "numactl"].iter() {
        let r = pin(
            sys.path(),
            &["--per-node", "--tool", *tool, "--", "--shards", "2"],
        );
        assert_eq!(r.code, Some(0), "{}", r.describe());
        let lines = command_lines(&r);
        assert_eq!(
            lines.len(),
            2,
            "want one command per node: {}",
            r.describe()
        );
        for (node, line) in lines.iter().enumerate() {
            let prefix = if *tool == "taskset" {
                format!(
                    "taskset -c {} portask ",
                    if node == 0 { "0-3" } else { "4-7" }
                )
            } else {
                format!("numactl --cpunodebind={0} --membind={0} -- portask ", node)
            };
            assert!(line.starts_with(&prefix), "node {}: {}", node, line);
            assert_eq!(
                flag_value(line, "--kafka-addr"),
                format!("0.0.0.0:{}", 9092 + node)
            );
            assert_eq!(
                flag_value(line, "--amqp-addr"),
                format!("0.0.0.0:{}", 5672 + node)
            );
            assert_eq!(
                flag_value(line, "--http-addr"),
                format!("0.0.0.0:{}", 8080 + node)
            );
            assert_eq!(
                flag_value(line, "--data-dir"),
                format!("./shards-node{}", node)
            );
            assert!(
                line.ends_with(" --shards 2"),
                "extra args not last: {}",
                line
            );
        }
        // Nothing may be shared between the two instances.
        for flag in ["--kafka-addr", "--amqp-addr", "--http-addr", "--data-dir"].iter() {
            let values: BTreeSet<String> = lines.iter().map(|l| flag_value(l, flag)).collect();
            assert_eq!(
                values.len(),
                2,
                "{} shared between nodes: {:?}",
                flag,
                lines
            );
        }
    }
}

#[test]
fn pin_without_numa_uses_all_online_cpus() {
    let dir = TempDir::new("sys-flat");
    write_file(&dir.path().join("devices/system/cpu/online"), "0-5\n");
    let r = pin(dir.path(), &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(
        command_lines(&r),
        vec!["taskset -c 0-5 portask".to_string()]
    );
}

// ---------------------------------------------------------------------------------------
// limits.sh

#[test]
fn limits_prints_and_exits_zero() {
    let r = run_script("limits.sh", &[], &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("nofile"), "{}", r.describe());
    assert!(r.stdout.contains("memlock"), "{}", r.describe());
}

#[test]
fn limits_check_fails_on_a_low_nofile() {
    // Lowering a soft limit is always allowed, so this is deterministic.
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg("ulimit -Sn 1024 && exec \"$0\" --check")
        .arg(script("limits.sh"));
    let r = run(&mut cmd);
    assert_ne!(r.code, Some(0), "{}", r.describe());
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("nofile"))
        .unwrap_or_else(|| panic!("no nofile line: {}", r.describe()));
    assert!(line.contains("1024") && line.contains("LOW"), "{}", line);
}

// ---------------------------------------------------------------------------------------
// healthcheck.sh

/// A free local port: bound, then released.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr").port()
}

/// Serves every connection with `status` as an HTTP/1.0 response, in a background thread.
fn http_server(status: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind http");
    let port = listener.local_addr().expect("local addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = match stream {
                Ok(s) => s,
                Err(_) => continue,
            };
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            // Read the request head (a bare TCP probe sends nothing and closes).
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            if seen.is_empty() {
                continue;
            }
            let body = "ok\n";
            let _ = write!(
                stream,
                "HTTP/1.0 {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                status,
                body.len(),
                body
            );
        }
    });
    port
}

fn healthcheck(kafka: u16, amqp: u16, http: u16) -> Run {
    run_script(
        "healthcheck.sh",
        &[
            "--host",
            "127.0.0.1",
            "--kafka-port",
            &kafka.to_string(),
            "--amqp-port",
            &amqp.to_string(),
            "--http-port",
            &http.to_string(),
        ],
        &[],
    )
}

#[test]
fn healthcheck_passes_when_everything_answers() {
    let kafka = TcpListener::bind("127.0.0.1:0").expect("bind");
    let amqp = TcpListener::bind("127.0.0.1:0").expect("bind");
    let http = http_server("200 OK");
    let r = healthcheck(
        kafka.local_addr().expect("addr").port(),
        amqp.local_addr().expect("addr").port(),
        http,
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
}

#[test]
fn healthcheck_names_what_failed() {
    let kafka = TcpListener::bind("127.0.0.1:0").expect("bind");
    let kafka_port = kafka.local_addr().expect("addr").port();

    // AMQP port closed.
    let http = http_server("200 OK");
    let r = healthcheck(kafka_port, free_port(), http);
    assert_ne!(r.code, Some(0), "{}", r.describe());
    assert!(r.stderr.contains("amqp"), "{}", r.describe());
    assert!(!r.stderr.contains("kafka"), "{}", r.describe());

    // /health answering 503.
    let amqp = TcpListener::bind("127.0.0.1:0").expect("bind");
    let sick = http_server("503 Service Unavailable");
    let r = healthcheck(kafka_port, amqp.local_addr().expect("addr").port(), sick);
    assert_ne!(r.code, Some(0), "{}", r.describe());
    assert!(
        r.stderr.contains("/health") && r.stderr.contains("503"),
        "{}",
        r.describe()
    );
}

// ---------------------------------------------------------------------------------------
// tuning/*.toml: every key must exist in src/config.rs (the broker rejects unknown keys)

/// `(field, type)` of `pub struct <name>` in config.rs.
fn struct_fields(src: &str, name: &str) -> Vec<(String, String)> {
    let start = src
        .find(&format!("pub struct {} {{", name))
        .unwrap_or_else(|| panic!("no `pub struct {}` in src/config.rs", name));
    let body = &src[start..];
    let end = body.find("\n}").expect("end of struct");
    body[..end]
        .lines()
        .skip(1)
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("pub ")?;
            let (field, ty) = rest.split_once(':')?;
            Some((
                field.trim().to_string(),
                ty.trim().trim_end_matches(',').to_string(),
            ))
        })
        .collect()
}

#[test]
fn tuning_profiles_use_only_config_keys() {
    let src = fs::read_to_string(repo().join("src/config.rs")).expect("read src/config.rs");
    let top = struct_fields(&src, "Config");
    assert!(!top.is_empty(), "no fields parsed from Config");

    // Section name -> its keys; "" holds the top-level keys.
    let mut known: Vec<(String, BTreeSet<String>)> = Vec::new();
    let mut top_keys = BTreeSet::new();
    for (field, ty) in top.iter() {
        if ty.ends_with("Config") {
            let keys = struct_fields(&src, ty)
                .into_iter()
                .map(|(f, _)| f)
                .collect();
            known.push((field.clone(), keys));
        } else {
            top_keys.insert(field.clone());
        }
    }
    known.push((String::new(), top_keys));
    let keys_of = |section: &str| -> Option<&BTreeSet<String>> {
        known.iter().find(|(s, _)| s == section).map(|(_, k)| k)
    };

    let mut profiles = 0;
    for entry in fs::read_dir(repo().join("tuning")).expect("read tuning/") {
        let path = entry.expect("dir entry").path();
        if path.extension().map(|e| e != "toml").unwrap_or(true) {
            continue;
        }
        profiles += 1;
        let name = path.display().to_string();
        let text = fs::read_to_string(&path).expect("read profile");
        let mut section = String::new();
        let mut seen = BTreeSet::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(s) = line.strip_prefix('[') {
                section = s.trim_end_matches(']').trim().to_string();
                assert!(
                    keys_of(&section).is_some(),
                    "{}:{}: unknown section [{}]",
                    name,
                    i + 1,
                    section
                );
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{}:{}: not `key = value`: {}", name, i + 1, line));
            let key = key.trim();
            assert!(!value.trim().is_empty(), "{}:{}: empty value", name, i + 1);
            let known_keys = keys_of(&section).expect("section checked above");
            assert!(
                known_keys.contains(key),
                "{}:{}: `{}` is not a key of [{}] in src/config.rs",
                name,
                i + 1,
                key,
                section
            );
            let dotted = if section.is_empty() {
                key.to_string()
            } else {
                format!("{}.{}", section, key)
            };
            assert!(
                seen.insert(dotted.clone()),
                "{}:{}: {} set twice",
                name,
                i + 1,
                dotted
            );
        }
        // default.toml documents every key the broker has.
        if path
            .file_name()
            .map(|f| f == "default.toml")
            .unwrap_or(false)
        {
            for (section, keys) in known.iter() {
                for key in keys.iter() {
                    let dotted = if section.is_empty() {
                        key.clone()
                    } else {
                        format!("{}.{}", section, key)
                    };
                    assert!(
                        seen.contains(&dotted),
                        "tuning/default.toml lacks {}",
                        dotted
                    );
                }
            }
        }
    }
    assert!(profiles >= 4, "found only {} profiles in tuning/", profiles);
}

// ---------------------------------------------------------------------------------------
// gen-certs.sh

#[test]
fn gen_certs_writes_certificates_and_a_configuration_the_broker_accepts() {
    let dir = TempDir::new("gen-certs");
    let out = dir.path().join("secure");
    let out_str = out.to_str().expect("utf-8 temp path");
    let r = run_script("gen-certs.sh", &[out_str], &[]);
    assert_eq!(r.code, Some(0), "gen-certs.sh: {}", r.describe());
    for file in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        let text = fs::read_to_string(out.join(file)).expect("read generated file");
        assert!(text.contains("-----BEGIN "), "{file} is not PEM");
    }
    let config = fs::read_to_string(out.join("secure.toml")).expect("read secure.toml");
    // Salted credentials only: the passwords themselves are never written.
    assert!(!config.contains("alice-secret"), "{config}");
    assert!(!config.contains("admin-secret"), "{config}");
    assert!(config.contains("scram_sha_512 = \"salt="), "{config}");
    // The broker accepts the configuration as written (every key known, every file found).
    let r = run(Command::new(env!("CARGO_BIN_EXE_portask"))
        .arg("--config")
        .arg(out.join("secure.toml"))
        .arg("--print-config"));
    assert_eq!(r.code, Some(0), "portask --print-config: {}", r.describe());
    for key in [
        "tls_addr = \"127.0.0.1:5671\"",
        "name = \"SASL_SSL\"",
        "enabled = true",
    ] {
        assert!(r.stdout.contains(key), "{key} missing: {}", r.stdout);
    }
}

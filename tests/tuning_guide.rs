//! The commands of the tuning guide run as written.
//!
//! `tuning/README.md` marks the shell blocks that are safe to run with the fence
//! ```` ```sh check ````. This test extracts every such block and runs each command in it
//! with `bash`, from the repository root:
//!
//! - `portask` on the PATH is the broker binary built for this test;
//! - `scripts/pin.sh` sees a fake two-node `/sys` (node 0 = CPUs 0-15,32-47, node 1 =
//!   16-31,48-63), so its examples print the same on every machine;
//! - everything else runs against the real machine. `scripts/sysctl.sh --check` and
//!   `scripts/limits.sh --check` may exit 1 (the host is below a recommendation) as long as
//!   they print their table; any other command must exit 0.
//!
//! A ```` ```text output ```` block right after a checked block lists lines the block's
//! output must contain, in that order. The test fails when a command fails, when an output
//! line is missing, and when the guide stops documenting one of the commands the issue asks
//! for (sysctl.sh, limits.sh, pin.sh, and `--print-config` of every profile).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::Command;

/// The NUMA nodes of the fake `/sys` that `scripts/pin.sh` sees, with their CPUs.
const FAKE_SYS_NODES: [(&str, &str); 2] = [("node0", "0-15,32-47"), ("node1", "16-31,48-63")];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One ```` ```sh check ```` block: the line of its opening fence, its commands
/// (continuation lines joined, comments and blank lines dropped), and the output lines
/// promised after it.
#[derive(Debug, Default)]
struct CheckedBlock {
    line: usize,
    commands: Vec<String>,
    output: Vec<String>,
}

/// The checked blocks of a Markdown text, with the `text output` block that follows each.
fn checked_blocks(markdown: &str) -> Vec<CheckedBlock> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks: Vec<CheckedBlock> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim();
        let info = fence.strip_prefix("```").map(str::trim);
        match info {
            Some("sh check") => {
                let start = i + 1;
                let mut body = Vec::new();
                i += 1;
                while i < lines.len() && lines[i].trim() != "```" {
                    body.push(lines[i]);
                    i += 1;
                }
                blocks.push(CheckedBlock {
                    line: start,
                    commands: commands_of(&body),
                    output: Vec::new(),
                });
            }
            Some("text output") => {
                let mut body = Vec::new();
                i += 1;
                while i < lines.len() && lines[i].trim() != "```" {
                    let l = lines[i].trim();
                    if !l.is_empty() {
                        body.push(l.to_string());
                    }
                    i += 1;
                }
                match blocks.last_mut() {
                    Some(b) if b.output.is_empty() => b.output = body,
                    _ => panic!(
                        "tuning/README.md:{}: a `text output` block must follow a `sh check` block",
                        i + 1
                    ),
                }
            }
            Some(_) => {
                // Any other fenced block: skip to its end so its lines are not parsed.
                i += 1;
                while i < lines.len() && lines[i].trim() != "```" {
                    i += 1;
                }
            }
            None => {}
        }
        i += 1;
    }
    blocks
}

/// Commands of a shell block: lines ending in `\` are joined with the next; blank lines
/// and comment lines are dropped.
fn commands_of(body: &[&str]) -> Vec<String> {
    let mut commands = Vec::new();
    let mut current = String::new();
    for raw in body {
        let line = if current.is_empty() {
            raw.trim_end()
        } else {
            raw.trim()
        };
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head.trim_end());
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let command = current.trim().to_string();
        current.clear();
        if !command.is_empty() && !command.starts_with('#') {
            commands.push(command);
        }
    }
    let rest = current.trim();
    if !rest.is_empty() {
        commands.push(rest.to_string());
    }
    commands
}

/// A temp directory holding the fake `/sys` and a `bin/portask` link, removed on drop.
struct Sandbox {
    root: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let root = tempfile::tempdir().expect("temp dir");
        for (node, cpus) in FAKE_SYS_NODES {
            let dir = root.path().join("sys/devices/system/node").join(node);
            fs::create_dir_all(&dir).expect("fake node dir");
            fs::write(dir.join("cpulist"), format!("{cpus}\n")).expect("cpulist");
        }
        let bin = root.path().join("bin");
        fs::create_dir_all(&bin).expect("bin dir");
        symlink(env!("CARGO_BIN_EXE_portask"), bin.join("portask")).expect("portask link");
        Sandbox { root }
    }

    fn sys(&self) -> PathBuf {
        self.root.path().join("sys")
    }

    fn bin(&self) -> PathBuf {
        self.root.path().join("bin")
    }
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs one documented command the way a reader would, from the repository root.
fn run(sandbox: &Sandbox, command: &str) -> Outcome {
    let path = format!(
        "{}:{}",
        sandbox.bin().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("timeout");
    cmd.arg("300")
        .arg("bash")
        .arg("-c")
        .arg(format!("set -o pipefail\n{command}"))
        .current_dir(repo())
        .env("PATH", path);
    for (key, _) in std::env::vars() {
        if key.starts_with("PORTASK_") {
            cmd.env_remove(key);
        }
    }
    if command.starts_with("scripts/pin.sh") {
        cmd.env("PORTASK_SYS_ROOT", sandbox.sys());
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash for `{command}`: {e}"));
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Whether an exit status is what the guide promises for this command.
fn acceptable(command: &str, outcome: &Outcome) -> bool {
    let host_check = [
        ("scripts/sysctl.sh --check", "PARAMETER"),
        ("scripts/limits.sh --check", "LIMIT"),
    ];
    for (prefix, table_header) in host_check {
        if command.starts_with(prefix) {
            // 1 = the host is below a recommendation: still a working command.
            return matches!(outcome.code, Some(0) | Some(1))
                && outcome.stdout.contains(table_header);
        }
    }
    outcome.code == Some(0)
}

/// The lines `expected` appear in `actual`, in order (each compared trimmed).
fn contains_in_order(actual: &str, expected: &[String]) -> Result<(), String> {
    let mut lines = actual.lines().map(str::trim);
    for want in expected {
        if !lines.any(|l| l == want) {
            return Err(want.clone());
        }
    }
    Ok(())
}

/// Runs every checked block of `markdown`; returns one message per failure.
fn check(markdown: &str) -> Vec<String> {
    let sandbox = Sandbox::new();
    let mut failures = Vec::new();
    for block in checked_blocks(markdown) {
        let mut stdout = String::new();
        for command in &block.commands {
            let outcome = run(&sandbox, command);
            if !acceptable(command, &outcome) {
                failures.push(format!(
                    "line {}: `{command}` exited {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    block.line, outcome.code, outcome.stdout, outcome.stderr
                ));
            }
            stdout.push_str(&outcome.stdout);
        }
        if let Err(missing) = contains_in_order(&stdout, &block.output) {
            failures.push(format!(
                "line {}: the output shown in the guide is not what the block prints: \
                 missing (or out of order) `{missing}`\n--- printed ---\n{stdout}",
                block.line
            ));
        }
    }
    failures
}

fn guide() -> String {
    fs::read_to_string(repo().join("tuning/README.md")).expect("read tuning/README.md")
}

#[test]
fn every_checked_command_of_the_tuning_guide_runs_as_written() {
    let text = guide();
    let commands: usize = checked_blocks(&text).iter().map(|b| b.commands.len()).sum();
    assert!(
        commands >= 20,
        "only {commands} checked commands in the guide"
    );
    let failures = check(&text);
    assert!(
        failures.is_empty(),
        "{} documented command(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_guide_checks_the_commands_it_must_document() {
    let blocks = checked_blocks(&guide());
    let all: Vec<&String> = blocks.iter().flat_map(|b| b.commands.iter()).collect();
    let has = |needle: &str| all.iter().any(|c| c.contains(needle));
    for needle in [
        "scripts/sysctl.sh --check",
        "scripts/limits.sh --check",
        "scripts/pin.sh --node",
        "scripts/pin.sh --per-node",
    ] {
        assert!(has(needle), "no checked block runs `{needle}`");
    }
    let mut profiles = 0;
    for entry in fs::read_dir(repo().join("tuning")).expect("tuning/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("profile name");
            let needle = format!("portask --print-config --config tuning/{name}");
            assert!(has(&needle), "no checked block runs `{needle}`");
            profiles += 1;
        }
    }
    assert!(profiles >= 4, "found only {profiles} profiles");
}

#[test]
fn a_failing_or_misdescribed_command_fails_the_check() {
    let failing = "```sh check\ntrue\nfalse\n```\n";
    let failures = check(failing);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("`false`"), "{failures:?}");

    let wrong_output = "```sh check\necho one\n```\n\n```text output\ntwo\n```\n";
    let failures = check(wrong_output);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("`two`"), "{failures:?}");

    let bad_profile = "```sh check\nportask --print-config --config tuning/no-such.toml\n```\n";
    assert_eq!(check(bad_profile).len(), 1);

    // Plain `sh` blocks are documentation only: never run.
    assert!(check("```sh\nfalse\n```\n").is_empty());
}

#[test]
fn blocks_are_parsed_with_continuations_comments_and_outputs() {
    let md = "intro\n\n```sh check\n# a comment\nportask --print-config \\\n    --shards 2\n\nscripts/pin.sh --node 1\n```\n\n```text output\n  shards = 2    # flag\n```\n\n```text\nnot run\n```\n";
    let blocks = checked_blocks(md);
    assert_eq!(blocks.len(), 1);
    assert_eq!(
        blocks[0].commands,
        vec![
            "portask --print-config --shards 2".to_string(),
            "scripts/pin.sh --node 1".to_string()
        ]
    );
    assert_eq!(blocks[0].output, vec!["shards = 2    # flag".to_string()]);
    assert_eq!(blocks[0].line, 3, "the line of the opening fence");
}

//! The load harness (benches/load) under `cargo test`: its unit tests (percentile maths,
//! rate schedule, ledger, report table) run here, and short runs against a real Portask
//! (the binary, two unpinned shards, ephemeral ports, temp data dir) prove it counts
//! every message and reports a loss when one goes missing.

mod common;

// The harness modules carry their own unit tests; the bench's command-line paths are
// unused here.
#[allow(dead_code)]
#[path = "../benches/load/harness/mod.rs"]
mod harness;

use common::{data_dir, Broker};
use harness::options::{self, Command};
use harness::report::Report;

fn run(args: &[&str]) -> Report {
    let cli = options::parse(args.iter().map(|s| s.to_string())).expect("arguments");
    harness::run(&cli.command).expect("the run completes")
}

#[test]
fn kafka_run_counts_every_message() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let bootstrap = broker.bootstrap();
    let r = run(&[
        "load",
        "kafka",
        "--brokers",
        &bootstrap,
        "--partitions",
        "3",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--messages",
        "3001",
        "--message-size",
        "256",
        "--acks",
        "all",
        "--drain-timeout",
        "10s",
    ]);
    print!("{}", r.render());
    assert!(r.passed, "{}", r.render());
    assert_eq!(r.sent, 3001);
    assert_eq!(r.produce.messages, 3001);
    assert_eq!(r.verdict.expected, 3001);
    assert_eq!(r.verdict.received, 3001);
    assert_eq!(r.verdict.lost, 0);
    assert_eq!(r.verdict.duplicates, 0);
    assert_eq!(r.latency.count, 3001);
    assert!(r.latency.p50_us > 0.0 && r.latency.p50_us <= r.latency.p99_us);
    // acks=all: one ack latency per delivery report, each from its send call.
    let ack = r
        .ack_latency
        .as_ref()
        .expect("acks=all reports its ack latency");
    assert_eq!(ack.count, r.produce.messages);
    assert!(ack.p50_us > 0.0 && ack.p50_us <= ack.p99_us, "{ack:?}");
    assert!(r.render().contains("\n  ack      p50 "), "{}", r.render());
    assert!(r.errors.is_empty(), "{:?}", r.errors);
}

#[test]
fn kafka_run_reports_a_dropped_message_as_lost() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let bootstrap = broker.bootstrap();
    // The first consumer throws away the 1000th message it receives, as if the broker had
    // never delivered it: the ledger must notice, name it and fail the run.
    let r = run(&[
        "load",
        "kafka",
        "--brokers",
        &bootstrap,
        "--partitions",
        "2",
        "--messages",
        "2000",
        "--message-size",
        "100",
        "--rate",
        "20000",
        "--drain-timeout",
        "2s",
        "--test-ignore-receipt",
        "1000",
    ]);
    print!("{}", r.render());
    assert!(!r.passed);
    assert_eq!(r.verdict.expected, 2000);
    assert_eq!(r.verdict.received, 1999);
    assert_eq!(r.verdict.lost, 1);
    assert_eq!(r.verdict.lost_examples.len(), 1);
    assert!(r.render().contains("FAIL"));
}

#[test]
fn kafka_paced_run_keeps_its_schedule() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let bootstrap = broker.bootstrap();
    // 1000 msg/s for 2 s: 2000 messages, and the sending takes about two seconds.
    let r = run(&[
        "load",
        "kafka",
        "--brokers",
        &bootstrap,
        "--rate",
        "1000",
        "--duration",
        "2s",
        "--message-size",
        "64",
        "-X",
        "linger.ms=0",
    ]);
    print!("{}", r.render());
    assert!(r.passed);
    assert_eq!(r.sent, 2000);
    assert!(
        (1.9..3.0).contains(&r.produce.seconds),
        "produce took {} s",
        r.produce.seconds
    );
}

#[test]
fn json_round_trip_and_report_table() {
    let (dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let bootstrap = broker.bootstrap();
    let json = dir.path().join("r.json");
    let json_s = json.to_str().expect("utf-8 path");
    let r = run(&[
        "load",
        "kafka",
        "--brokers",
        &bootstrap,
        "--messages",
        "500",
        "--scenario",
        "tiny",
        "--target",
        "portask",
        "--json",
        json_s,
    ]);
    r.write_json(&json).expect("write json");
    let back = Report::read_json(&json).expect("read json");
    assert_eq!(back.verdict, r.verdict);
    let cli = options::parse(["load", "report", json_s].map(String::from)).expect("args");
    let Command::Report(args) = cli.command else {
        panic!("not report");
    };
    let table = harness::summary::run(&args).expect("report");
    assert!(table.contains("| tiny |"), "{table}");
}

#[test]
fn amqp_confirms_are_timed_and_plain_publishes_are_not() {
    let (_dir, data) = data_dir();
    let broker = Broker::start(&data, &[]);
    let url = broker.amqp_url();
    let r = run(&[
        "load",
        "amqp",
        "--url",
        &url,
        "--messages",
        "2000",
        "--message-size",
        "256",
        "--persistent",
        "--confirm",
        "--rate",
        "4000",
    ]);
    print!("{}", r.render());
    assert!(r.passed, "{}", r.render());
    assert_eq!(r.produce.messages, 2000);
    // One ack latency per confirm, from the basic.publish call.
    let ack = r
        .ack_latency
        .as_ref()
        .expect("confirms report their ack latency");
    assert_eq!(ack.count, r.produce.messages);
    assert!(ack.p50_us > 0.0 && ack.p50_us <= ack.p99_us, "{ack:?}");
    assert!(r.render().contains("\n  ack      p50 "), "{}", r.render());

    // Without confirms nothing acknowledges a publish: no ack line, no ack figures.
    let r = run(&["load", "amqp", "--url", &url, "--messages", "1000"]);
    print!("{}", r.render());
    assert!(r.passed, "{}", r.render());
    assert_eq!(r.produce.messages, 1000);
    assert!(r.ack_latency.is_none(), "{:?}", r.ack_latency);
    assert!(!r.render().contains("  ack "), "{}", r.render());
}

/// The AMQP broker a run drives: the one `LOAD_TEST_AMQP_URL` names (any AMQP broker, e.g.
/// `amqp://guest:guest@127.0.0.1:5672/%2f` for a local RabbitMQ), else a Portask started on
/// `data` (the returned broker keeps it running).
fn amqp_broker(data: &std::path::Path) -> (Option<Broker>, String) {
    match std::env::var("LOAD_TEST_AMQP_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let broker = Broker::start(data, &[]);
            let url = broker.amqp_url();
            (Some(broker), url)
        }
    }
}

#[test]
fn amqp_runs_count_every_copy_and_report_a_dropped_one() {
    let (_dir, data) = data_dir();
    let (_broker, url) = amqp_broker(&data);
    let r = run(&[
        "load",
        "amqp",
        "--url",
        &url,
        "--producers",
        "2",
        "--consumers",
        "2",
        "--messages",
        "3000",
        "--message-size",
        "64",
        "--confirm",
        "--persistent",
    ]);
    print!("{}", r.render());
    assert!(r.passed, "{}", r.render());
    assert_eq!((r.verdict.expected, r.verdict.received), (3000, 3000));
    assert_eq!(r.latency.count, 3000);

    // Fanout to three queues: every message must arrive three times.
    let r = run(&[
        "load",
        "amqp",
        "--url",
        &url,
        "--fanout",
        "3",
        "--messages",
        "1000",
        "--message-size",
        "16",
        "--rate",
        "5000",
    ]);
    print!("{}", r.render());
    assert!(r.passed, "{}", r.render());
    assert_eq!((r.verdict.expected, r.verdict.received), (3000, 3000));

    let r = run(&[
        "load",
        "amqp",
        "--url",
        &url,
        "--messages",
        "1000",
        "--drain-timeout",
        "2s",
        "--test-ignore-receipt",
        "500",
    ]);
    print!("{}", r.render());
    assert!(!r.passed);
    assert_eq!((r.verdict.lost, r.verdict.received), (1, 999));
}

/// `scripts/compare.sh … --dry-run`: its exit code and stdout (no build, no brokers).
fn compare_dry_run(args: &[&str]) -> (Option<i32>, String, String) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/compare.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .env_remove("LOAD_BIN")
        .env_remove("PORTASK_BIN")
        .output()
        .expect("run compare.sh");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.code(), text(out.stdout), text(out.stderr))
}

/// Splits a command line `printf %q` wrote (backslash escapes, no quotes) into arguments.
fn unquote(line: &str) -> Vec<String> {
    assert!(!line.contains('\'') && !line.contains("$'"), "{line}");
    let (mut args, mut arg, mut chars) = (Vec::new(), String::new(), line.chars());
    while let Some(c) = chars.next() {
        match c {
            '\\' => arg.extend(chars.next()),
            ' ' if !arg.is_empty() => args.push(std::mem::take(&mut arg)),
            ' ' => {}
            c => arg.push(c),
        }
    }
    if !arg.is_empty() {
        args.push(arg);
    }
    args
}

#[test]
fn compare_fixed_rate_rows_are_harness_command_lines() {
    let (code, out, err) = compare_dry_run(&["--fixed-rate", "--dry-run"]);
    assert_eq!(code, Some(0), "{out}{err}");
    // Every row the script would run, parsed by the harness's own command line.
    let mut runs = Vec::new();
    for line in out.lines() {
        if let Some((row, cmd)) = line.split_once(": load ") {
            let args = unquote(&format!("load {cmd}"));
            let cli = options::parse(args.iter().cloned())
                .unwrap_or_else(|e| panic!("{row}: {e}\n{line}"));
            runs.push((row.to_owned(), cli.command));
        }
    }
    let rows: Vec<&str> = runs.iter().map(|(row, _)| row.as_str()).collect();
    assert_eq!(
        rows,
        [
            "AMQP 1 KiB transient at 5000 msg/s — portask",
            "AMQP 1 KiB transient at 5000 msg/s — rabbitmq",
            "AMQP 1 KiB persistent + confirms at 5000 msg/s — portask",
            "AMQP 1 KiB persistent + confirms at 5000 msg/s — rabbitmq",
            "AMQP 1 KiB transient at 5000 msg/s, one connection — portask",
            "AMQP 1 KiB transient at 5000 msg/s, one connection — rabbitmq",
            "Kafka 1 KiB acks=all at 10000 msg/s, linger.ms=0 — portask",
        ],
        "{out}"
    );
    assert!(
        out.contains("Kafka 1 KiB acks=all at 10000 msg/s, linger.ms=0 — rabbitmq: n/a"),
        "{out}"
    );
    for (row, command) in &runs {
        match command {
            Command::Amqp(a) => {
                let w = &a.workload;
                assert_eq!((w.rate, w.message_size), (Some(5000.0), 1024), "{row}");
                let durable = row.contains("persistent + confirms");
                assert_eq!((a.persistent, a.confirm), (durable, durable), "{row}");
                assert_eq!(a.one_connection, row.contains("one connection"), "{row}");
                assert!(w.scenario.starts_with("AMQP 1 KiB") && !w.target.is_empty());
            }
            Command::Kafka(k) => {
                let w = &k.workload;
                assert_eq!((w.rate, w.message_size), (Some(10_000.0), 1024), "{row}");
                assert_eq!(k.acks, options::Acks::All);
                assert_eq!(k.partitions, 1);
                assert!(k
                    .producer_properties
                    .contains(&("linger.ms".to_owned(), "0".to_owned())));
            }
            Command::Report(_) => panic!("{row}: not a run"),
        }
    }

    // The default set includes them; --kafka-only keeps only the Kafka row.
    let (code, all, _) = compare_dry_run(&["--dry-run", "--quick"]);
    assert_eq!(code, Some(0), "{all}");
    assert!(all.contains("AMQP 1 KiB persistent + confirms at 5000 msg/s — portask: load "));
    let (_, kafka, _) = compare_dry_run(&["--dry-run", "--fixed-rate", "--kafka-only"]);
    assert_eq!(kafka.lines().count(), 1, "{kafka}");
    assert!(
        kafka.starts_with("Kafka 1 KiB acks=all at 10000 msg/s"),
        "{kafka}"
    );
    // Two sets at once are refused before anything runs.
    let (code, out, err) = compare_dry_run(&["--fixed-rate", "--streams", "--dry-run"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("different sets"), "{err}");
}

//! `cargo bench --bench load -- kafka|amqp|report …`: the end-to-end load harness's
//! command line. Parses the flags, runs one load (or summarises results), prints the
//! report, writes `--json`, and exits 1 when an acknowledged message was lost (2 when the
//! run itself could not be carried out).
//!
//! Everything else lives in `harness/`, which `tests/load_harness.rs` also includes. With
//! `--start-broker` the run gets a Portask of its own, started by `tests/common/launch.rs`
//! (the launcher the integration tests use).

// Cargo builds `harness = false` benches with `--cfg test` but never runs their unit
// tests (tests/load_harness.rs does): those tests and their helpers are dead code here.
#[cfg_attr(test, allow(dead_code, unused_imports))]
mod harness;
#[path = "../../tests/common/launch.rs"]
mod launch;
#[path = "../../tests/common/tls.rs"]
mod tls;

use harness::options::{self, Command};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let mut cli = match options::parse(std::env::args()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Kept until the run's report is written; dropping it kills the broker.
    let _broker = start_broker(&mut cli.command);
    if let Command::Report(args) = &cli.command {
        match harness::summary::run(args) {
            Ok(table) => {
                print!("{table}");
                return;
            }
            Err(e) => {
                eprintln!("load report: {e}");
                std::process::exit(2);
            }
        }
    }
    let cpu_before = _broker.as_ref().map(|b| cpu_seconds(b.pid()));
    let report = match harness::run(&cli.command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("load: {e}");
            std::process::exit(2);
        }
    };
    print!("{}", report.render());
    // The broker's own CPU (user + system) over the run, per message sent: what TLS or a
    // setting costs the broker, whatever the client machine spends.
    if let (Some(b), Some(before)) = (&_broker, cpu_before) {
        let used = cpu_seconds(b.pid()) - before;
        let per_msg = used * 1e6 / report.sent.max(1) as f64;
        println!(
            "broker CPU: {used:.2} s over {} messages sent = {per_msg:.2} µs/msg",
            report.sent
        );
    }
    let json = match &cli.command {
        Command::Kafka(a) => a.workload.json.as_ref(),
        Command::Amqp(a) => a.workload.json.as_ref(),
        Command::Report(_) => None,
    };
    if let Some(path) = json {
        if let Err(e) = report.write_json(path) {
            eprintln!("load: writing {}: {e}", path.display());
            std::process::exit(2);
        }
    }
    if !report.passed {
        std::process::exit(1);
    }
}

/// CPU seconds (user + system) process `pid` has used so far; 0 when it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz.max(1.0)
}

/// With `--start-broker`: starts Portask and points the command at it (with `--tls`, at an
/// `SSL` listener with a certificate made for the run).
fn start_broker(command: &mut Command) -> Option<launch::Scratch> {
    let workload = match command {
        Command::Kafka(a) => &a.workload,
        Command::Amqp(a) => &a.workload,
        Command::Report(_) => return None,
    };
    if !workload.start_broker {
        return None;
    }
    let shards = workload.broker_shards;
    let tls = matches!(command, Command::Kafka(a) if a.tls);
    let ssl_port = launch::free_port();
    let mut ca_file = None;
    let broker = launch::Scratch::start_with(usize::from(shards), &[], |l, dir| {
        if tls {
            // A CA and a server certificate for this run; an SSL listener beside the
            // plaintext one the launcher waits on.
            let ca = tls::Ca::new("load harness CA");
            let (cert, key) = ca.server("portask").write(dir, "server");
            ca_file = Some(ca.write(dir));
            let quoted = |p: &std::path::Path| format!("{:?}", p.display().to_string());
            l.env.extend([
                (
                    "PORTASK_KAFKA__LISTENERS".to_owned(),
                    format!(
                        "[{{name = \"PLAINTEXT\", addr = \"127.0.0.1:{}\"}}, \
                         {{name = \"SSL\", addr = \"127.0.0.1:{ssl_port}\"}}]",
                        l.kafka_port
                    ),
                ),
                ("PORTASK_TLS__CERT_FILE".to_owned(), quoted(&cert)),
                ("PORTASK_TLS__KEY_FILE".to_owned(), quoted(&key)),
            ]);
        }
    });
    match command {
        Command::Kafka(a) if tls => {
            a.brokers = format!("127.0.0.1:{ssl_port}");
            a.tls_ca = ca_file;
        }
        Command::Kafka(a) => a.brokers = broker.launch.bootstrap(),
        Command::Amqp(a) => a.url = broker.launch.amqp_url(),
        Command::Report(_) => {}
    }
    eprintln!("load: started portask with {shards} shards (unpinned, temp data dir)");
    Some(broker)
}

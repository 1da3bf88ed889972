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
    let report = match harness::run(&cli.command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("load: {e}");
            std::process::exit(2);
        }
    };
    print!("{}", report.render());
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
    // Its CPU per message is in the report (`broker_cpu_us_per_msg`).
    match command {
        Command::Kafka(a) => a.workload.broker_pid = Some(broker.pid()),
        Command::Amqp(a) => a.workload.broker_pid = Some(broker.pid()),
        Command::Report(_) => {}
    }
    eprintln!("load: started portask with {shards} shards (unpinned, temp data dir)");
    Some(broker)
}

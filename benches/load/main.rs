//! `cargo bench --bench load -- kafka|amqp|report …`: the end-to-end load harness's
//! command line. Parses the flags, runs one load (or summarises results), prints the
//! report, writes `--json`, and exits 1 when an acknowledged message was lost (2 when the
//! run itself could not be carried out).
//!
//! Everything else lives in `harness/`, which `tests/load_harness.rs` also includes.

// Cargo builds `harness = false` benches with `--cfg test` but never runs their unit
// tests (tests/load_harness.rs does): those tests and their helpers are dead code here.
#[cfg_attr(test, allow(dead_code, unused_imports))]
mod harness;

use harness::options::{self, Command};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match options::parse(std::env::args()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
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

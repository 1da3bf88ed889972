//! The `portask` binary: command line → configuration → broker.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use portask::config::ConfigBuilder;

/// Thread-per-core message broker speaking Kafka and AMQP 0-9-1.
#[derive(Parser, Debug)]
#[command(name = "portask", version)]
struct Cli {
    /// TOML configuration file (see tuning/ for profiles).
    #[arg(long, env = "PORTASK_CONFIG")]
    config: Option<PathBuf>,
    /// Root of the data directory (default ./shards).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Number of shards (default: one per core of the affinity mask).
    #[arg(long)]
    shards: Option<usize>,
    /// Pin shards to cores (`pinned`) or let them float (`unpinned`).
    #[arg(long)]
    placement: Option<String>,
    /// Kafka listener address (default 0.0.0.0:9092).
    #[arg(long)]
    kafka_addr: Option<String>,
    /// AMQP listener address (default 0.0.0.0:5672).
    #[arg(long)]
    amqp_addr: Option<String>,
    /// HTTP listener address (default 0.0.0.0:8080).
    #[arg(long)]
    http_addr: Option<String>,
    /// Print the effective configuration, with where each value came from, and exit.
    #[arg(long)]
    print_config: bool,
}

fn build(
    cli: &Cli,
) -> Result<(portask::config::Config, portask::config::Provenance), portask::config::ConfigError> {
    let mut b = ConfigBuilder::new();
    if let Some(path) = &cli.config {
        b = b.file(path)?;
    }
    b = b.env(std::env::vars())?;
    let quoted = |s: &str| format!("{s:?}");
    if let Some(d) = &cli.data_dir {
        b = b.flag("data_dir", &quoted(&d.to_string_lossy()))?;
    }
    if let Some(n) = cli.shards {
        b = b.flag("shards", &n.to_string())?;
    }
    if let Some(p) = &cli.placement {
        b = b.flag("placement", &quoted(p))?;
    }
    for (key, value) in [
        ("kafka.addr", &cli.kafka_addr),
        ("amqp.addr", &cli.amqp_addr),
        ("http.addr", &cli.http_addr),
    ] {
        if let Some(v) = value {
            b = b.flag(key, &quoted(v))?;
        }
    }
    b.build()
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let (config, provenance) = match build(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portask: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", config.render(&provenance));
        return ExitCode::SUCCESS;
    }
    match portask::broker::start(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("portask: {e}");
            ExitCode::FAILURE
        }
    }
}

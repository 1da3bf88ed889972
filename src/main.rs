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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Read a password from stdin and print the credential keys of a `[[users]]` entry for
    /// it: a RabbitMQ password_hash and SCRAM-SHA-256/512 credentials (never the password).
    HashPassword {
        /// The user's name in the printed entry.
        #[arg(long, default_value = "CHANGE-ME")]
        name: String,
        /// PBKDF2 iterations of the SCRAM credentials (4096..=16384).
        #[arg(long, default_value_t = 4096)]
        iterations: u32,
    },
}

/// `portask hash-password`: the password is the first line of stdin; the `[[users]]` entry
/// goes to stdout.
fn hash_password(name: &str, iterations: u32) -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("portask: reading the password from stdin: {e}");
        return ExitCode::from(2);
    }
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        eprintln!("portask: no password on stdin");
        return ExitCode::from(2);
    }
    match portask::security::users::credentials_block(name, password, iterations) {
        Ok(block) => {
            print!("{block}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portask: {e}");
            ExitCode::from(2)
        }
    }
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
    if let Some(Command::HashPassword { name, iterations }) = &cli.command {
        return hash_password(name, *iterations);
    }
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

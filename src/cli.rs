//! Command-line interface: subcommands and their flags (each flag also reads an environment
//! variable where the NATS tools have a convention for it).

use crate::config::{NatsAuth, NatsConfig, ServiceConfig};
use crate::store::StoreConfig;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// The global service of Natster, event-sourced on NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "natster-global", version, about)]
pub struct Cli {
    /// Log format on stderr (verbosity from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "NATSTER_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service against a NATS server.
    Serve(ServeArgs),
    /// Write a complete operator-mode world: operator, accounts, users, creds, server config.
    Bootstrap(BootstrapArgs),
    /// Run the whole local stack: a nats-server child in operator mode plus the service.
    Dev(DevArgs),
    /// Call one op of the service as an importing account and print the reply.
    Call(CallArgs),
}

/// Connection flags shared by `serve` and `call`.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// User credentials file (JWT + seed).
    #[arg(long, env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// Accept credential files that group or others can read.
    #[arg(long, env = "NATSTER_ALLOW_INSECURE_FILES")]
    pub allow_insecure_files: bool,
}

impl ConnectArgs {
    /// The connection settings; `USER_JWT` + `USER_SEED` (the original's variables) are used
    /// when no creds file is given.
    pub fn nats_config(&self, name: &str) -> NatsConfig {
        let auth = match (
            &self.creds,
            std::env::var("USER_JWT"),
            std::env::var("USER_SEED"),
        ) {
            (Some(path), _, _) => NatsAuth::CredsFile(path.clone()),
            (None, Ok(jwt), Ok(seed)) if !jwt.is_empty() && !seed.is_empty() => {
                NatsAuth::JwtAndSeed { jwt, seed }
            }
            _ => NatsAuth::None,
        };
        NatsConfig {
            url: self.nats_url.clone(),
            auth,
            name: name.to_string(),
            allow_insecure_files: self.allow_insecure_files,
        }
    }
}

/// `serve` flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// Service behaviour flags shared by `serve` and `dev`.
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// Replicas of streams and buckets created by the service (3 in a cluster).
    #[arg(long, env = "NATSTER_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,
    /// Requests larger than this many bytes get 413.
    #[arg(long, env = "NATSTER_MAX_REQUEST_BYTES", default_value_t = 64 * 1024)]
    pub max_request_bytes: usize,
    /// Bound on finishing in-flight requests after SIGTERM (e.g. 10s).
    #[arg(long, env = "NATSTER_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

impl ServiceArgs {
    /// The service settings.
    pub fn service_config(&self) -> ServiceConfig {
        ServiceConfig {
            store: StoreConfig {
                replicas: self.replicas as usize,
                ..StoreConfig::default()
            },
            max_request_bytes: self.max_request_bytes,
            shutdown_timeout: self.shutdown_timeout,
            ..ServiceConfig::default()
        }
    }
}

/// `bootstrap` flags.
#[derive(Debug, Clone, Args)]
pub struct BootstrapArgs {
    /// Directory to write the world into.
    #[arg(long)]
    pub out: PathBuf,
    /// User accounts to create, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "alice,bob")]
    pub users: Vec<String>,
    /// Client port written into the server config.
    #[arg(long, default_value_t = crate::bootstrap::DEFAULT_PORT)]
    pub port: u16,
    /// Overwrite an existing world in that directory.
    #[arg(long)]
    pub force: bool,
}

/// `dev` flags.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// World and server store directory (bootstrapped when it holds no world).
    #[arg(long, default_value = ".natster-dev")]
    pub dir: PathBuf,
    /// User accounts of a new world, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "alice,bob")]
    pub users: Vec<String>,
    /// Client port of a new world's server.
    #[arg(long, default_value_t = crate::bootstrap::DEFAULT_PORT)]
    pub port: u16,
    /// Copy the nats-server log to stderr.
    #[arg(long)]
    pub server_log: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// `call` flags.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// The op, e.g. `whoami`.
    pub op: String,
    /// Request payload (JSON or a raw string, as the op takes it); empty when omitted.
    pub payload: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// How long to wait for the reply.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Parses `5s`, `3m`, `1h`, `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 5s, 3m, 1h)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert!(parse_duration("five").is_err());
    }

    #[test]
    fn users_split_on_commas() {
        let cli = Cli::try_parse_from([
            "natster-global",
            "bootstrap",
            "--out",
            "x",
            "--users",
            "a,b,c",
        ])
        .unwrap();
        let Command::Bootstrap(args) = cli.command else {
            panic!("bootstrap")
        };
        assert_eq!(args.users, ["a", "b", "c"]);
    }
}

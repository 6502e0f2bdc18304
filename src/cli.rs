//! Command-line interface: subcommands and their flags (each flag also reads an environment
//! variable where the NATS tools have a convention for it).

use crate::config::{NatsAuth, NatsConfig, ServiceConfig};
use crate::store::StoreConfig;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// The global service of Natster, event-sourced on NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "natster-global", version, about)]
pub struct Cli {
    /// Log format on stderr (verbosity from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "NATSTER_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// TOML file with settings (keys are the long flag names, e.g. `max-in-flight = 512`);
    /// flags and environment variables take precedence over it.
    #[arg(long, global = true, env = "NATSTER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

pub use crate::telemetry::logging::LogFormat;

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
    /// Inspect or rebuild the read models (connects as the service account).
    Projections(ProjectionsArgs),
    /// Write the JSON Schemas of the wire contract (generated from the code).
    Schemas(SchemasArgs),
}

/// `schemas` flags.
#[derive(Debug, Clone, Args)]
pub struct SchemasArgs {
    /// Directory to write into.
    #[arg(long, default_value = "schemas")]
    pub out: PathBuf,
}

/// `projections` flags.
#[derive(Debug, Clone, Args)]
pub struct ProjectionsArgs {
    #[command(subcommand)]
    pub action: ProjectionsAction,
}

/// `projections` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum ProjectionsAction {
    /// Per projection: applied sequence, stream last sequence, lag, applying instance.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Replay the log into a projection (all when none is named), with a progress bar.
    Rebuild {
        /// accounts, catalogs or oauth.
        #[arg(long)]
        projection: Option<String>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

/// Server URL when neither a flag, the environment nor a context names one.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Connection flags shared by `serve` and `call`.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// NATS server URL(s), comma-separated [default: the context's, else nats://127.0.0.1:4222].
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// User credentials file (JWT + seed) [default: the context's].
    #[arg(long, env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// A `nats` CLI context (~/.config/nats/context/NAME.json) to take the URL and creds from.
    #[arg(long, env = "NATS_CONTEXT")]
    pub context: Option<String>,
    /// Accept credential files that group or others can read.
    #[arg(long, env = "NATSTER_ALLOW_INSECURE_FILES")]
    pub allow_insecure_files: bool,
}

impl ConnectArgs {
    /// The connection settings: flags and environment first, then the context named by
    /// `--context`/`NATS_CONTEXT`; `USER_JWT` + `USER_SEED` (the original's variables) are
    /// used when no creds file is given either way.
    pub fn nats_config(&self, name: &str) -> Result<NatsConfig, String> {
        let context = match &self.context {
            Some(context) => {
                let dir = crate::nats_context::config_dir()
                    .ok_or("--context: no HOME or XDG_CONFIG_HOME to find nats contexts in")?;
                Some(crate::nats_context::load(&dir, context).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        Ok(self.nats_config_with(name, context.unwrap_or_default()))
    }

    /// [`ConnectArgs::nats_config`] with the context already loaded.
    pub fn nats_config_with(
        &self,
        name: &str,
        context: crate::nats_context::NatsContext,
    ) -> NatsConfig {
        let creds = self.creds.clone().or(context.creds);
        let url = self
            .nats_url
            .clone()
            .or(context.url)
            .unwrap_or_else(|| DEFAULT_NATS_URL.to_string());
        let auth = match (
            &creds,
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
            url,
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
    /// Address of the HTTP endpoints /metrics, /healthz and /readyz (port 0: any free port).
    #[arg(long, env = "NATSTER_HTTP_ADDR", default_value = "127.0.0.1:9464")]
    pub http_addr: std::net::SocketAddr,
    /// /readyz fails while a projection lags more than this many stream sequences.
    #[arg(long, env = "NATSTER_READY_MAX_LAG", default_value_t = 10_000)]
    pub ready_max_lag: u64,
    /// Replicas of streams and buckets created by the service (3 in a cluster).
    #[arg(long, env = "NATSTER_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,
    /// Requests larger than this many bytes get 413.
    #[arg(long, env = "NATSTER_MAX_REQUEST_BYTES", default_value_t = 64 * 1024)]
    pub max_request_bytes: usize,
    /// Requests handled at once, all ops together; more wait in their subscriptions.
    #[arg(long, env = "NATSTER_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Bound on finishing in-flight requests after SIGTERM (e.g. 10s).
    #[arg(long, env = "NATSTER_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Account key of the website, allowed to claim codes and read contexts (repeatable).
    #[arg(
        long = "web-account",
        env = "NATSTER_WEB_ACCOUNTS",
        value_delimiter = ','
    )]
    pub web_accounts: Vec<String>,
    /// Hub account whose catalog is shared automatically with every new account.
    #[arg(long, env = "NATSTER_HUB_ACCOUNT", requires = "hub_catalog")]
    pub hub_account: Option<String>,
    /// The hub's catalog name for auto-shares.
    #[arg(long, env = "NATSTER_HUB_CATALOG", requires = "hub_account")]
    pub hub_catalog: Option<String>,
    /// File with the service's xkey seed (SX…), used to seal access tokens.
    #[arg(long, env = "NATSTER_XKEY_SEED_FILE")]
    pub xkey_seed_file: Option<PathBuf>,
    /// Prefix of the claim URL in otc.generate replies.
    #[arg(
        long,
        env = "NATSTER_CLAIM_URL_BASE",
        default_value = "https://natster.io/login/"
    )]
    pub claim_url_base: String,
    /// How long a one-time code stays valid (applies when the codes bucket is created).
    #[arg(long, env = "NATSTER_CODE_TTL", default_value = "5m", value_parser = parse_duration)]
    pub code_ttl: Duration,
    /// A catalog counts as online until this long after its last heartbeat (whole seconds,
    /// e.g. 3m or 30s).
    #[arg(long, env = "NATSTER_ONLINE_TTL", default_value = "3m", value_parser = parse_online_ttl)]
    pub online_ttl: Duration,
    /// Write requests per second allowed per account.
    #[arg(long, env = "NATSTER_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,
    /// Burst of write requests allowed per account above the rate.
    #[arg(long, env = "NATSTER_RATE_BURST", default_value_t = 200)]
    pub rate_burst: u32,
}

impl ServiceArgs {
    /// The service settings; fails with one line naming the bad setting.
    pub fn service_config(&self, allow_insecure_files: bool) -> Result<ServiceConfig, String> {
        for key in self.web_accounts.iter().chain(&self.hub_account) {
            if !crate::auth::is_account_public_key(key) {
                return Err(format!(
                    "--web-account/--hub-account: {key:?} is not an account public key"
                ));
            }
        }
        if let Some(name) = &self.hub_catalog {
            if let Some(problem) = crate::model::validate::catalog_name_problem(name) {
                return Err(format!("--hub-catalog: {problem}"));
            }
        }
        let sealer = match &self.xkey_seed_file {
            Some(path) => {
                if !allow_insecure_files {
                    crate::config::check_private_file(path)
                        .map_err(|e| format!("--xkey-seed-file: {e}"))?;
                }
                Some(std::sync::Arc::new(crate::seal::Sealer::from_file(path)?))
            }
            None => None,
        };
        Ok(ServiceConfig {
            store: StoreConfig {
                replicas: self.replicas as usize,
                code_ttl: self.code_ttl,
                ..StoreConfig::default()
            },
            max_request_bytes: self.max_request_bytes,
            max_in_flight: self.max_in_flight as usize,
            shutdown_timeout: self.shutdown_timeout,
            web_accounts: self.web_accounts.clone(),
            hub: match (&self.hub_account, &self.hub_catalog) {
                (Some(account), Some(catalog)) => Some(crate::config::HubShare {
                    account: account.clone(),
                    catalog: catalog.clone(),
                }),
                _ => None,
            },
            claim_url_base: self.claim_url_base.clone(),
            rate_per_second: self.rate_limit,
            rate_burst: self.rate_burst,
            online_ttl: self.online_ttl,
            ready_max_lag: self.ready_max_lag,
            sealer,
            ..ServiceConfig::default()
        })
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
    /// The op (events.put, heartbeats.put, stats, my.shares, otc.generate, otc.claim, whoami,
    /// context.get, catalogs.validatename), or `watch` to follow the feed.
    pub op: String,
    /// The request: JSON for events.put, heartbeats.put, otc.generate and otc.claim; the raw
    /// OAuth id or catalog name for context.get and catalogs.validatename; nothing otherwise.
    pub payload: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// How long to wait for the reply.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// `json`, or `table` for my.shares and stats.
    #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
    pub output: OutputFormat,
    /// Read-your-writes: reads wait until the service has applied this sequence.
    #[arg(long)]
    pub min_seq: Option<u64>,
}

/// How `call` prints replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Json,
    Table,
}

/// An online TTL: a duration of whole seconds, at least one (the server's per-message TTL).
pub fn parse_online_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl < Duration::from_secs(1) || ttl.subsec_nanos() != 0 {
        return Err("the online TTL must be whole seconds, at least 1s".into());
    }
    Ok(ttl)
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
        assert_eq!(parse_online_ttl("3m"), Ok(Duration::from_secs(180)));
        assert!(parse_online_ttl("500ms").is_err());
        assert!(parse_online_ttl("1500ms").is_err());
    }

    #[test]
    fn explicit_connection_settings_beat_the_context() {
        let context = crate::nats_context::NatsContext {
            name: "prod".into(),
            url: Some("nats://from-context:4222".into()),
            creds: Some("/ctx.creds".into()),
        };
        let mut args = ConnectArgs {
            nats_url: None,
            creds: None,
            context: Some("prod".into()),
            allow_insecure_files: false,
        };
        let from_context = args.nats_config_with("t", context.clone());
        assert_eq!(from_context.url, "nats://from-context:4222");
        assert!(
            matches!(from_context.auth, NatsAuth::CredsFile(ref p) if p.to_str() == Some("/ctx.creds"))
        );
        args.nats_url = Some("nats://flag:4222".into());
        args.creds = Some("/flag.creds".into());
        let explicit = args.nats_config_with("t", context);
        assert_eq!(explicit.url, "nats://flag:4222");
        assert!(
            matches!(explicit.auth, NatsAuth::CredsFile(ref p) if p.to_str() == Some("/flag.creds"))
        );
        let none = ConnectArgs {
            nats_url: None,
            creds: None,
            context: None,
            allow_insecure_files: false,
        }
        .nats_config_with("t", Default::default());
        assert_eq!(none.url, DEFAULT_NATS_URL);
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

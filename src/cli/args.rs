//! The command line: subcommands and their flags (each flag also reads an environment
//! variable where the NATS tools have a convention for it).

use super::connect::{check_private_file, NatsAuth, NatsConfig};
use super::settings::SettingsError;
use crate::model::validate::{catalog_name_problem, is_account_public_key};
use crate::model::ShareLimits;
use crate::service::{HubShare, RunnerConfig, Sealer, ServiceConfig, StoreConfig};
use crate::tooling::{bootstrap, nats_context};
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
    /// List the log messages projections parked because they can never apply them.
    Parked {
        /// Only this projection's.
        #[arg(long)]
        projection: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Re-apply parked messages once their cause is removed: rebuilds each projection that
    /// parked one (in log order, the only correct way); what still cannot be applied stays
    /// parked.
    ReplayParked {
        /// Only this projection's parked messages.
        #[arg(long)]
        projection: Option<String>,
        /// Only the projections that parked this log sequence.
        #[arg(long)]
        seq: Option<u64>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

impl ProjectionsAction {
    /// The connection flags of the action.
    pub fn connect(&self) -> &ConnectArgs {
        match self {
            ProjectionsAction::Status { connect, .. }
            | ProjectionsAction::Rebuild { connect, .. }
            | ProjectionsAction::Parked { connect, .. }
            | ProjectionsAction::ReplayParked { connect, .. } => connect,
        }
    }
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
    /// Accept creds and key files that others, or a group other than root's own, can read.
    #[arg(long, env = "NATSTER_ALLOW_INSECURE_FILES")]
    pub allow_insecure_files: bool,
    /// CA certificate (PEM) that signed the server's TLS certificate; TLS is then required.
    #[arg(long, env = "NATS_CA")]
    pub tls_ca_file: Option<PathBuf>,
}

impl ConnectArgs {
    /// The connection settings: flags and environment first, then the context named by
    /// `--context`/`NATS_CONTEXT`; `USER_JWT` + `USER_SEED` (the original's variables) are
    /// used when no creds file is given either way.
    pub fn nats_config(&self, name: &str) -> Result<NatsConfig, SettingsError> {
        let context = match &self.context {
            Some(context) => {
                let dir = nats_context::config_dir().ok_or_else(|| {
                    SettingsError(
                        "--context: no HOME or XDG_CONFIG_HOME to find nats contexts in".into(),
                    )
                })?;
                Some(nats_context::load(&dir, context).map_err(|e| SettingsError(e.to_string()))?)
            }
            None => None,
        };
        let config = self.nats_config_with(name, context.unwrap_or_default());
        config
            .check_files()
            .map_err(|e| SettingsError(format!("creds: {e}")))?;
        Ok(config)
    }

    /// [`ConnectArgs::nats_config`] with the context already loaded.
    pub fn nats_config_with(&self, name: &str, context: nats_context::NatsContext) -> NatsConfig {
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
            tls_ca: self.tls_ca_file.clone(),
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
    /// Requests one account may have in flight at once (its fair share); beyond, 429.
    #[arg(long, env = "NATSTER_MAX_IN_FLIGHT_PER_ACCOUNT", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight_per_account: u32,
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
    /// How long a one-time code can be claimed (stored with each code when it is generated).
    #[arg(long, env = "NATSTER_CODE_TTL", default_value = "5m", value_parser = parse_positive_duration)]
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
    /// Heartbeats per second allowed per account (a budget separate from writes).
    #[arg(long, env = "NATSTER_HEARTBEAT_RATE", default_value_t = 50)]
    pub heartbeat_rate: u32,
    /// Burst of heartbeats allowed per account above the rate.
    #[arg(long, env = "NATSTER_HEARTBEAT_BURST", default_value_t = 500)]
    pub heartbeat_burst: u32,
    /// How long after it is decided a refusal (429, or 503 for a sequence the log has not
    /// reached) is sent, and then one account's at most 200 a second (0s: at once, unpaced): a
    /// client that sends again as soon as it is refused is slowed instead of spinning.
    #[arg(long, env = "NATSTER_REFUSAL_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub refusal_delay: Duration,
    /// Catalogs one account may have online at once.
    #[arg(long, env = "NATSTER_MAX_ONLINE_CATALOGS", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_online_catalogs: u32,
    /// Active shares one account may have as owner.
    #[arg(long, env = "NATSTER_MAX_OUT_SHARES", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_out_shares: u32,
    /// Accounts one catalog may be shared with at a time.
    #[arg(long, env = "NATSTER_MAX_CATALOG_ACCOUNTS", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_catalog_accounts: u32,
    /// Active shares one account may receive.
    #[arg(long, env = "NATSTER_MAX_IN_SHARES", default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_shares: u32,
    /// MiB of records (as stored) each projection runner keeps in memory between flushes;
    /// beyond it, written records are dropped and read again when next needed.
    #[arg(long, env = "NATSTER_PROJECTION_CACHE_MIB", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub projection_cache_mib: u32,
    /// MiB of records (bounded above, within twice their stored size) one pass of a catch-up
    /// from empty holds: a projection whose bucket is empty and whose backlog is deep reads
    /// the log once per part of its keys that fits, and writes every record once. 0 folds
    /// every backlog in one pass (fractions are allowed: `0.5`).
    #[arg(long, env = "NATSTER_PROJECTION_PASS_MIB", default_value_t = 64.0, value_parser = non_negative_mib)]
    pub projection_pass_mib: f64,
    /// MiB of account records (as stored, plus each one's shares encoded ahead as `my.shares`
    /// answers them) kept in memory for `whoami` and `my.shares` without `Natster-Min-Seq`,
    /// kept current by a watch of the bucket.
    #[arg(long, env = "NATSTER_ACCOUNT_CACHE_MIB", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub account_cache_mib: u32,
    /// How often the instance holding the snapshot lease writes the decision-state snapshot
    /// (also written when it stops); a start folds only the log after the last one.
    #[arg(long, env = "NATSTER_SNAPSHOT_INTERVAL", default_value = "1m", value_parser = parse_positive_duration)]
    pub snapshot_interval: Duration,
}

impl ServiceArgs {
    /// The service settings; fails with one line naming the bad setting.
    pub fn service_config(
        &self,
        allow_insecure_files: bool,
    ) -> Result<ServiceConfig, SettingsError> {
        for key in self.web_accounts.iter().chain(&self.hub_account) {
            if !is_account_public_key(key) {
                return Err(SettingsError(format!(
                    "--web-account/--hub-account: {key:?} is not an account public key"
                )));
            }
        }
        if let Some(name) = &self.hub_catalog {
            if let Some(problem) = catalog_name_problem(name) {
                return Err(SettingsError(format!("--hub-catalog: {problem}")));
            }
        }
        let sealer = match &self.xkey_seed_file {
            Some(path) => {
                if !allow_insecure_files {
                    check_private_file(path)
                        .map_err(|e| SettingsError(format!("--xkey-seed-file: {e}")))?;
                }
                let sealer = Sealer::from_file(path).map_err(|e| SettingsError(e.to_string()))?;
                Some(std::sync::Arc::new(sealer))
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
            max_in_flight_per_account: self.max_in_flight_per_account as usize,
            shutdown_timeout: self.shutdown_timeout,
            web_accounts: self.web_accounts.clone(),
            hub: match (&self.hub_account, &self.hub_catalog) {
                (Some(account), Some(catalog)) => Some(HubShare {
                    account: account.clone(),
                    catalog: catalog.clone(),
                }),
                _ => None,
            },
            claim_url_base: self.claim_url_base.clone(),
            rate_per_second: self.rate_limit,
            rate_burst: self.rate_burst,
            heartbeat_rate_per_second: self.heartbeat_rate,
            heartbeat_burst: self.heartbeat_burst,
            max_online_catalogs: self.max_online_catalogs as usize,
            refusal_delay: self.refusal_delay,
            share_limits: ShareLimits {
                out_shares_per_account: self.max_out_shares as usize,
                accounts_per_catalog: self.max_catalog_accounts as usize,
                in_shares_per_account: self.max_in_shares as usize,
            },
            online_ttl: self.online_ttl,
            ready_max_lag: self.ready_max_lag,
            sealer,
            snapshot_interval: self.snapshot_interval,
            runner: RunnerConfig {
                cache_bytes: (self.projection_cache_mib as usize) << 20,
                pass_bytes: (self.projection_pass_mib * f64::from(1 << 20)) as usize,
                ..RunnerConfig::default()
            },
            account_cache_bytes: (self.account_cache_mib as usize) << 20,
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
    #[arg(long, default_value_t = bootstrap::DEFAULT_PORT)]
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
    #[arg(long, default_value_t = bootstrap::DEFAULT_PORT)]
    pub port: u16,
    /// Copy the nats-server log to stderr.
    #[arg(long)]
    pub server_log: bool,
    /// Run a 3-node JetStream cluster on loopback instead of one server: client ports
    /// `port`, `port+1`, `port+2`, routes on `port+2000…+2002`, a store per node; the service
    /// creates every stream and bucket with 3 replicas.
    #[arg(long)]
    pub cluster: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// `call` flags.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// An op of the API (`whoami`, `events.put`, …: every op of the wire contract), or
    /// `watch` to follow the feed.
    pub op: String,
    /// The request: JSON for events.put, heartbeats.put, otc.generate and otc.claim; the raw
    /// OAuth id or catalog name for context.get and catalogs.validatename; nothing otherwise.
    pub payload: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// How long to wait for the reply.
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
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
pub fn parse_online_ttl(text: &str) -> Result<Duration, InvalidDuration> {
    let ttl = parse_duration(text)?;
    if ttl < Duration::from_secs(1) || ttl.subsec_nanos() != 0 {
        return Err(InvalidDuration(
            "the online TTL must be whole seconds, at least 1s".into(),
        ));
    }
    Ok(ttl)
}

/// A duration greater than zero (a zero timeout or TTL would fail every request).
pub fn parse_positive_duration(text: &str) -> Result<Duration, InvalidDuration> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(InvalidDuration(
            "must be greater than zero (examples: 5s, 3m, 1h)".into(),
        ));
    }
    Ok(duration)
}

/// A duration flag that does not parse (clap names the flag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidDuration(String);

/// Parses `5s`, `3m`, `1h`, `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidDuration> {
    humantime::parse_duration(text)
        .map_err(|e| InvalidDuration(format!("{e} (examples: 5s, 3m, 1h)")))
}

/// A number of MiB that is not finite or below 0.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a number of MiB (0 or more; fractions allowed)")]
pub struct InvalidMib(String);

/// A number of MiB: finite, 0 or more.
fn non_negative_mib(text: &str) -> Result<f64, InvalidMib> {
    match text.parse::<f64>() {
        Ok(mib) if mib.is_finite() && mib >= 0.0 => Ok(mib),
        _ => Err(InvalidMib(text.to_string())),
    }
}

#[cfg(test)]
mod tests;

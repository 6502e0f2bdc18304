//! The `natster-global` command: arguments, settings (flags > environment > TOML file), the
//! connection, and one module per subcommand. [`main`] is all the binary runs.

mod args;
mod call;
mod connect;
mod dev;
mod output;
mod projections;
mod settings;

use crate::service::ServeError;
use crate::store::StoreError;
use crate::tooling::bootstrap::{BootstrapError, World};
use args::{Cli, Command};
use output::outln;
use settings::{Parsed, SettingsError};
use std::future::Future;

/// Exit code for a command that failed while running.
pub const EXIT_FAILED: i32 = 1;
/// Exit code for a command line or setting that is not valid (clap's usage-error code), found
/// before anything connects: flags, environment, config file, creds and key files, contexts.
pub const EXIT_BAD_SETTING: i32 = 2;
/// Exit code when NATS cannot be reached (or, for `call`, nothing answers the op).
pub const EXIT_UNREACHABLE: i32 = 5;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A setting is invalid: one line for the operator, exit code 2.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Connect(#[from] connect::ConnectError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dev(#[from] dev::DevError),
    #[error(transparent)]
    Projections(#[from] projections::ProjectionsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs the command line `args` (program name first) to its end; returns the exit code.
/// `shutdown` completes on SIGTERM or SIGINT (it ends `serve` and `dev` gracefully).
pub async fn main<S: Future<Output = ()>>(
    args: Vec<std::ffi::OsString>,
    shutdown: impl FnOnce() -> S,
) -> Result<i32, CliError> {
    let cli = match settings::parse(args)? {
        Parsed::Run(cli) => *cli,
        Parsed::Display(text) => {
            output::print(&text)?;
            return Ok(0);
        }
    };
    // The long-running commands log their work; the others print their results, and only
    // problems (not the NATS client's connection notes) belong on their stderr.
    let default_level = match cli.command {
        Command::Serve(_) | Command::Dev(_) => "info",
        _ => "warn",
    };
    crate::telemetry::logging::init(cli.log_format, default_level);
    run(cli, shutdown).await
}

async fn run<S: Future<Output = ()>>(
    cli: Cli,
    shutdown: impl FnOnce() -> S,
) -> Result<i32, CliError> {
    match cli.command {
        Command::Serve(args) => {
            let config = args
                .service
                .service_config(args.connect.allow_insecure_files)?;
            let nats = args.connect.nats_config(crate::contract::SERVICE_NAME)?;
            if config.sealer.is_none() {
                tracing::warn!(
                    "no --xkey-seed-file: otc.generate, otc.claim and context.get will answer 503 until the service runs with one"
                );
            }
            crate::service::run(
                args.service.http_addr,
                config,
                || async move { nats.connect().await },
                |_| {},
                shutdown(),
            )
            .await?;
        }
        Command::Bootstrap(args) => {
            let index = World::generate(&args.out, &args.users)?
                .with_port(args.port)
                .write(args.force)?;
            outln!(
                "{}",
                serde_json::to_string_pretty(&index).expect("the index serializes")
            )?;
            eprintln!(
                "wrote a world to {}; start the server with: nats-server -c {}",
                args.out.display(),
                index.server_config.display()
            );
        }
        Command::Dev(args) => dev::run(&args, shutdown()).await?,
        Command::Projections(args) => projections::run(&args).await?,
        Command::Schemas(args) => {
            for name in crate::contract::schemas::write_all(&args.out)? {
                outln!("{}", args.out.join(name).display())?;
            }
        }
        Command::Call(args) => return Ok(call::run(&args).await),
    }
    Ok(0)
}

impl CliError {
    /// The process exit code for this failure (README, "Exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Settings(_)
            | CliError::Serve(ServeError::Limits(_))
            | CliError::Bootstrap(
                BootstrapError::InvalidName(_)
                | BootstrapError::Exists(_)
                | BootstrapError::Duplicate(_),
            ) => EXIT_BAD_SETTING,
            CliError::Projections(error) if error.is_usage() => EXIT_BAD_SETTING,
            CliError::Dev(
                dev::DevError::Settings(_) | dev::DevError::Serve(ServeError::Limits(_)),
            ) => EXIT_BAD_SETTING,
            CliError::Connect(connect::ConnectError::Nats { .. })
            | CliError::Projections(projections::ProjectionsError::Connect(
                connect::ConnectError::Nats { .. },
            )) => EXIT_UNREACHABLE,
            _ => EXIT_FAILED,
        }
    }

    /// Whether the failure is only that stdout's reader went away: the command ends quietly.
    pub fn is_closed_output(&self) -> bool {
        match self {
            CliError::Io(error)
            | CliError::Projections(projections::ProjectionsError::Output(error)) => {
                output::is_closed(error)
            }
            _ => false,
        }
    }
}

#![forbid(unsafe_code)]
//! The `natster-global` binary: parses the command line and runs a subcommand.

use anyhow::Result;
use clap::Parser;
use natster_global::bootstrap::World;
use natster_global::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // The CLI client prints replies; only problems belong on its stderr.
    let default_level = match cli.command {
        Command::Call(_) => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, default_level);
    match cli.command {
        Command::Serve(args) => {
            let config = match args
                .service
                .service_config(args.connect.allow_insecure_files)
            {
                Ok(config) => config,
                Err(problem) => {
                    eprintln!("error: {problem}");
                    std::process::exit(2);
                }
            };
            let client = args.connect.nats_config("natster-global").connect().await?;
            natster_global::service::run(client, config, shutdown_signal()).await?;
        }
        Command::Bootstrap(args) => {
            let index = World::generate(&args.out, &args.users)?
                .with_port(args.port)
                .write(args.force)?;
            println!("{}", serde_json::to_string_pretty(&index)?);
            eprintln!(
                "wrote a world to {}; start the server with: nats-server -c {}",
                args.out.display(),
                index.server_config.display()
            );
        }
        Command::Dev(args) => natster_global::dev::run(&args, shutdown_signal()).await?,
        Command::Projections(args) => natster_global::projections_cmd::run(&args).await?,
        Command::Call(args) => {
            let code = natster_global::call::run(&args).await;
            std::process::exit(code);
        }
    }
    Ok(())
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}

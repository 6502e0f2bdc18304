//! `natster-global dev`: the whole local stack in one command.
//!
//! Bootstraps the directory when it holds no world, starts nats-server in operator mode as a
//! child process (in its own process group, so Ctrl-C reaches only us), runs the service
//! in-process as the NATSTER account, prints commands to try for each caller account, and on
//! Ctrl-C or SIGTERM stops the service (drained), then the server, and returns.

use super::args::DevArgs;
use super::connect::{NatsAuth, NatsConfig};
use super::output::outln;
use super::settings::SettingsError;
use crate::service::{HubShare, Sealer, SeedFileError, ServeError};
use crate::tooling::bootstrap::{self, BootstrapError, Role, World};
use crate::tooling::natsd::{NatsServer, NatsdError, ServerSpec};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

/// Why the local stack stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("the world in the dev directory: {0}")]
    World(#[from] BootstrapError),
    #[error("the dev directory: {0}")]
    Dir(std::io::Error),
    #[error("starting nats-server on port {port}: {source}")]
    Server { port: u16, source: NatsdError },
    #[error(transparent)]
    Xkey(#[from] SeedFileError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Runs the stack until `shutdown` completes.
pub async fn run(args: &DevArgs, shutdown: impl Future<Output = ()>) -> Result<(), DevError> {
    // The settings first: a bad one is reported before anything is written or started.
    let mut config = args.service.service_config(false)?;
    let dir = absolute(&args.dir).map_err(DevError::Dir)?;
    if !World::exists(&dir) {
        World::generate(&dir, &args.users)?
            .with_port(args.port)
            .write(false)?;
        eprintln!("bootstrapped a new world in {}", dir.display());
    }
    let world = World::load(&dir)?;
    let mut server = NatsServer::start(ServerSpec {
        config: Some(world.server_config_path()),
        port: Some(world.port),
        echo_log: args.server_log,
        own_process_group: true,
        ..Default::default()
    })
    .await
    .map_err(|source| DevError::Server {
        port: world.port,
        source,
    })?;
    let nats = NatsConfig {
        url: server.url(),
        auth: NatsAuth::CredsFile(world.creds_path(bootstrap::NATSTER)),
        name: "natster-global-dev".into(),
        allow_insecure_files: false,
        tls_ca: None,
    };
    // The local world's own website and hub accounts, and its xkey, unless flags say otherwise.
    if config.web_accounts.is_empty() {
        config.web_accounts.push(world.key(bootstrap::WEB)?);
    }
    if config.hub.is_none() {
        config.hub = Some(HubShare {
            account: world.key(bootstrap::HUB)?,
            catalog: "hub".into(),
        });
    }
    if config.sealer.is_none() {
        config.sealer = Some(std::sync::Arc::new(Sealer::from_file(&world.xkey_path())?));
    }
    let http_addr = args.service.http_addr;
    let url = server.url();
    let server_exited = async {
        let log = wait_for_exit(&mut server).await;
        eprintln!("nats-server exited unexpectedly:\n{log}");
    };
    let stop = async {
        tokio::select! {
            _ = shutdown => {}
            _ = server_exited => {}
        }
        eprintln!("stopping the service, then nats-server");
    };
    crate::service::run(
        http_addr,
        config,
        || async move { nats.connect_once().await },
        // The instructions are a courtesy: a closed stdout (`dev | head`) leaves the stack
        // running, as Ctrl-C is what stops it.
        |http_addr| {
            if let Err(error) = print_instructions(&world, &url, http_addr) {
                tracing::debug!(%error, "the instructions could not be printed");
            }
        },
        stop,
    )
    .await?;
    server.stop(Duration::from_secs(10)).await;
    eprintln!("stopped");
    Ok(())
}

/// Completes, with the server's log, if the server child exits on its own.
async fn wait_for_exit(server: &mut NatsServer) -> String {
    while !server.has_exited() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.log_text()
}

fn print_instructions(
    world: &World,
    url: &str,
    http_addr: std::net::SocketAddr,
) -> std::io::Result<()> {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "natster-global".into());
    outln!("natster-global dev: nats-server at {url}, service running as NATSTER.")?;
    outln!("Try, as each caller account:")?;
    for account in world.accounts.values() {
        if !matches!(account.role, Role::User | Role::Web | Role::Hub) {
            continue;
        }
        let creds = world.creds_path(&account.name);
        outln!("  # {} ({})", account.name, account.public_key())?;
        outln!(
            "  {exe} call whoami --nats-url {url} --creds {}",
            creds.display()
        )?;
        outln!(
            "  nats --server {url} --creds {} request natster.global.whoami ''",
            creds.display()
        )?;
    }
    outln!("Metrics: http://{http_addr}/metrics  health: /healthz  readiness: /readyz")?;
    outln!("Press Ctrl-C to stop.")
}

fn absolute(path: &Path) -> std::io::Result<std::path::PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    })
}

//! `natster-global dev`: the whole local stack in one command.
//!
//! Bootstraps the directory when it holds no world, starts nats-server in operator mode as a
//! child process (in its own process group, so Ctrl-C reaches only us) — or, with `--cluster`,
//! three of them clustered on loopback with the service's resources R3 — runs the service
//! in-process as the NATSTER account, prints commands to try for each caller account, and on
//! Ctrl-C or SIGTERM stops the service (drained), then the servers, and returns.

use super::args::DevArgs;
use super::connect::{NatsAuth, NatsConfig};
use super::output::outln;
use super::settings::SettingsError;
use crate::service::{HubShare, Sealer, SeedFileError, ServeError};
use crate::tooling::bootstrap::{
    self, BootstrapError, ClusterOptions, Role, ServerConfigOptions, World,
};
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

/// Nodes of `--cluster`.
const CLUSTER_NODES: u16 = 3;
/// How far a node's route port is from its client port (4222 → 6222, NATS's defaults).
const ROUTE_PORT_OFFSET: u16 = 2000;

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
    let mut servers = if args.cluster {
        if config.store.replicas == 1 {
            config.store.replicas = usize::from(CLUSTER_NODES);
        }
        start_cluster(&world, &dir, args.server_log).await?
    } else {
        vec![start_server(world.server_config_path(), world.port, args.server_log).await?]
    };
    let url = servers
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",");
    let nats = NatsConfig {
        url: url.clone(),
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
    let server_exited = async {
        let log = wait_for_exit(&mut servers).await;
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
    for server in &mut servers {
        server.stop(Duration::from_secs(10)).await;
    }
    eprintln!("stopped");
    Ok(())
}

/// One nats-server from `config` on `port`.
async fn start_server(
    config: std::path::PathBuf,
    port: u16,
    echo_log: bool,
) -> Result<NatsServer, DevError> {
    NatsServer::start(ServerSpec {
        config: Some(config),
        port: Some(port),
        echo_log,
        own_process_group: true,
        ..Default::default()
    })
    .await
    .map_err(|source| DevError::Server { port, source })
}

/// Three nodes serving `world`, clustered on loopback: node `i` (`n1`…`n3`) listens on the
/// world's port plus `i`, routes on that plus [`ROUTE_PORT_OFFSET`], and keeps its store and
/// config in `dir`. Returns once all three are ready.
async fn start_cluster(
    world: &World,
    dir: &Path,
    echo_log: bool,
) -> Result<Vec<NatsServer>, DevError> {
    let client_ports: Vec<u16> = (0..CLUSTER_NODES).map(|i| world.port + i).collect();
    let routes: Vec<u16> = client_ports.iter().map(|p| p + ROUTE_PORT_OFFSET).collect();
    let mut starting = Vec::new();
    for (i, (&port, &route)) in client_ports.iter().zip(&routes).enumerate() {
        let name = format!("n{}", i + 1);
        let config = world.server_config(&ServerConfigOptions {
            server_name: Some(name.clone()),
            port: Some(port),
            store_dir: Some(dir.join(format!("jetstream-{name}"))),
            cluster: Some(ClusterOptions {
                name: "natster-dev".into(),
                port: route,
                routes: routes.clone(),
            }),
        });
        let path = dir.join(format!("nats-server-{name}.conf"));
        std::fs::write(&path, config).map_err(DevError::Dir)?;
        starting.push(start_server(path, port, echo_log));
    }
    futures::future::try_join_all(starting).await
}

/// Completes, with its log, when any of the server children exits on its own.
async fn wait_for_exit(servers: &mut [NatsServer]) -> String {
    loop {
        for server in servers.iter_mut() {
            if server.has_exited() {
                return server.log_text();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

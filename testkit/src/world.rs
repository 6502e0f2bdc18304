//! Real nats-servers for tests: a world in operator mode, plain JetStream, a 3-node cluster.

use crate::tls::{connect_creds_tls, TestCertificates};
use anyhow::{bail, Context as _, Result};
use natster_global::tooling::bootstrap::{self, ClusterOptions, ServerConfigOptions, World};
use natster_global::tooling::natsd::{free_port, NatsServer, ServerSpec};
use std::time::Duration;
use tempfile::TempDir;

/// A world (operator, SYS, NATSTER, WEB, HUB and user accounts) served by its own nats-server.
pub struct TestWorld {
    pub world: World,
    pub server: NatsServer,
    _dir: TempDir,
}

impl TestWorld {
    /// A world with users `alice` and `bob`.
    pub async fn start() -> Result<TestWorld> {
        Self::start_with(&["alice", "bob"], |_| Ok(())).await
    }

    /// A world with the given users; `customize` may add or change accounts before the server
    /// config is written.
    pub async fn start_with(
        users: &[&str],
        customize: impl FnOnce(&mut World) -> Result<()>,
    ) -> Result<TestWorld> {
        Self::start_tuned(users, customize, |config| config).await
    }

    /// [`TestWorld::start_with`], the server config text passed through `tune` first (to
    /// change a server limit, say).
    pub async fn start_tuned(
        users: &[&str],
        customize: impl FnOnce(&mut World) -> Result<()>,
        tune: impl FnOnce(String) -> String,
    ) -> Result<TestWorld> {
        let dir = tempfile::tempdir()?;
        let users: Vec<String> = users.iter().map(|s| s.to_string()).collect();
        let mut world = World::generate(dir.path(), &users)?;
        customize(&mut world)?;
        world.write(false)?;
        let path = world.server_config_path();
        std::fs::write(&path, tune(std::fs::read_to_string(&path)?))?;
        let server = NatsServer::start(ServerSpec {
            config: Some(world.server_config_path()),
            ..Default::default()
        })
        .await?;
        world.port = server.port();
        Ok(TestWorld {
            world,
            server,
            _dir: dir,
        })
    }

    /// The public key of account `name`.
    pub fn key(&self, name: &str) -> String {
        self.world
            .key(name)
            .expect("account exists in the test world")
    }

    /// Connects as the user of account `name`.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client> {
        connect_creds(&self.server.url(), &self.world.creds_path(name), name).await
    }
}

/// Connects to `url` (one URL, or several comma-separated) with a creds file.
pub async fn connect_creds(
    url: &str,
    creds: &std::path::Path,
    name: &str,
) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::with_credentials_file(creds)
        .await
        .with_context(|| format!("reading {}", creds.display()))?
        .name(name)
        .connect(url.split(',').map(str::trim).collect::<Vec<_>>().as_slice())
        .await
        .with_context(|| format!("connecting as {name} to {url}"))
}

/// A plain JetStream server (no auth) with a temporary store.
pub struct PlainServer {
    pub server: NatsServer,
    _dir: TempDir,
}

impl PlainServer {
    /// Starts it.
    pub async fn start() -> Result<PlainServer> {
        let dir = tempfile::tempdir()?;
        let server = NatsServer::plain_jetstream(dir.path()).await?;
        Ok(PlainServer { server, _dir: dir })
    }

    /// Connects without credentials.
    pub async fn connect(&self) -> Result<async_nats::Client> {
        Ok(async_nats::connect(self.server.url()).await?)
    }
}

/// Three JetStream servers clustered on loopback; plain, or in operator mode from a world.
pub struct Cluster {
    pub nodes: Vec<NatsServer>,
    /// Each node's `server_name`, by index.
    names: Vec<String>,
    /// The CA clients verify the nodes with, when they require TLS.
    ca: Option<std::path::PathBuf>,
    _dir: TempDir,
}

impl Cluster {
    /// Starts three plain nodes and waits until JetStream has a meta leader.
    pub async fn start_plain() -> Result<Cluster> {
        Self::start(None).await
    }

    /// Starts three nodes serving `world` and waits until JetStream has a meta leader;
    /// readiness is checked as the world's service account.
    pub async fn start(world: Option<&World>) -> Result<Cluster> {
        Self::start_with(world).await
    }

    /// Starts three nodes from the shipped `ops/nats-server/cluster-node-{1,2,3}.conf`, serving
    /// `world` (its operator block as the `operator.conf` they include), with ports, paths and
    /// route hosts substituted for loopback and `tls`'s certificates: TLS from every client and
    /// mutual TLS between the nodes, as in production.
    pub async fn start_tls(world: &World, tls: &TestCertificates) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let (client_ports, route_ports) = six_ports()?;
        std::fs::write(
            dir.path().join("operator.conf"),
            operator_block(&world.server_config(&ServerConfigOptions::default())),
        )?;
        let tls_dir = tls.ca.parent().context("certificate directory")?;
        let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/nats-server");
        let mut configs = Vec::new();
        for i in 0..3 {
            let text = std::fs::read_to_string(format!("{shipped}/cluster-node-{}.conf", i + 1))?;
            let mut text = text
                .replace(
                    "listen: 0.0.0.0:4222",
                    &format!("listen: 127.0.0.1:{}", client_ports[i]),
                )
                .replace(
                    "listen: 0.0.0.0:6222",
                    &format!("listen: 127.0.0.1:{}", route_ports[i]),
                )
                // Other servers on this machine may hold the monitoring port.
                .replace("http: 127.0.0.1:8222", "")
                .replace("/etc/nats/tls", &tls_dir.display().to_string())
                .replace(
                    "/var/lib/nats",
                    &dir.path().join(format!("n{i}")).display().to_string(),
                );
            for (k, route) in route_ports.iter().enumerate() {
                text = text.replace(
                    &format!("nats-route://nats-{}:6222", k + 1),
                    &format!("nats-route://127.0.0.1:{route}"),
                );
            }
            for leftover in [
                "0.0.0.0",
                "/etc/nats",
                "/var/lib/nats",
                "nats-route://nats-",
            ] {
                if text.contains(leftover) {
                    bail!(
                        "cluster-node-{}.conf: {leftover:?} was not substituted",
                        i + 1
                    );
                }
            }
            configs.push((format!("nats-{}", i + 1), client_ports[i], text));
        }
        let cluster = Cluster::launch(dir, configs, Some(tls.ca.clone())).await?;
        let client = connect_creds_tls(
            &cluster.nodes[0].url(),
            &world.creds_path(bootstrap::NATSTER),
            &tls.ca,
            "cluster-check",
        )
        .await?;
        wait_for_placement(&client, Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    async fn start_with(world: Option<&World>) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let (client_ports, cluster_ports) = six_ports()?;
        let mut configs = Vec::new();
        for i in 0..3 {
            let cluster = ClusterOptions {
                name: "natster-test".into(),
                port: cluster_ports[i],
                routes: cluster_ports.to_vec(),
            };
            let store = dir.path().join(format!("n{i}"));
            let conf = match world {
                Some(world) => world.server_config(&ServerConfigOptions {
                    server_name: Some(format!("n{i}")),
                    port: Some(client_ports[i]),
                    store_dir: Some(store),
                    cluster: Some(cluster),
                }),
                None => format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: {:?} }}\n{}",
                    client_ports[i],
                    store.display().to_string(),
                    bootstrap::cluster_block(&cluster)
                ),
            };
            configs.push((format!("n{i}"), client_ports[i], conf));
        }
        let cluster = Cluster::launch(dir, configs, None).await?;
        let client = match world {
            Some(world) => {
                connect_creds(
                    &cluster.nodes[0].url(),
                    &world.creds_path(bootstrap::NATSTER),
                    "cluster-check",
                )
                .await?
            }
            None => async_nats::connect(cluster.nodes[0].url()).await?,
        };
        wait_for_placement(&client, Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Starts one node per `(server name, client port, config text)`, each config written into
    /// `dir` (which the cluster keeps), and returns once every node is ready.
    async fn launch(
        dir: TempDir,
        configs: Vec<(String, u16, String)>,
        ca: Option<std::path::PathBuf>,
    ) -> Result<Cluster> {
        let mut starting = Vec::new();
        let mut names = Vec::new();
        for (name, port, text) in configs {
            let path = dir.path().join(format!("{name}.conf"));
            std::fs::write(&path, text)?;
            starting.push(NatsServer::start(ServerSpec {
                config: Some(path),
                port: Some(port),
                ..Default::default()
            }));
            names.push(name);
        }
        let nodes = futures::future::try_join_all(starting).await?;
        Ok(Cluster {
            nodes,
            names,
            ca,
            _dir: dir,
        })
    }

    /// Client URLs of all nodes, comma-separated (what async-nats accepts as a server list).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Client URLs of all nodes starting with node `first`, then the others in order (for a
    /// client that keeps the order: connected to `first`, failing over to the rest).
    pub fn urls_from(&self, first: usize) -> Vec<String> {
        let urls = self.urls();
        (0..urls.len())
            .map(|i| urls[(first + i) % urls.len()].clone())
            .collect()
    }

    /// Connects with `creds` to node `first`, failing over to the others in order (over TLS
    /// verified against the cluster's CA when it requires TLS).
    pub async fn connect(
        &self,
        creds: &std::path::Path,
        name: &str,
        first: usize,
    ) -> Result<async_nats::Client> {
        let urls = self.urls_from(first);
        let mut options = async_nats::ConnectOptions::with_credentials_file(creds)
            .await
            .with_context(|| format!("reading {}", creds.display()))?
            .name(name)
            .retain_servers_order();
        if let Some(ca) = &self.ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        options
            .connect(urls.as_slice())
            .await
            .with_context(|| format!("connecting as {name} to {}", urls.join(",")))
    }

    /// The index of the node whose `server_name` is `name`.
    pub fn index_of(&self, name: &str) -> Result<usize> {
        self.names
            .iter()
            .position(|n| n == name)
            .with_context(|| format!("{name:?} is not a node of this cluster"))
    }

    /// The node leading stream `stream` (as `js`'s account sees it), waiting up to `within`
    /// for the stream to have a leader.
    pub async fn stream_leader(
        &self,
        js: &async_nats::jetstream::Context,
        stream: &str,
        within: Duration,
    ) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let probe = tokio::time::timeout(Duration::from_secs(1), stream_cluster(js, stream));
            if let Ok(Ok(Some(cluster))) = probe.await {
                if let Some(leader) = cluster.leader {
                    return self.index_of(&leader);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("stream {stream} has no leader within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The JetStream meta leader, asked of the servers as the system account `sys`.
    pub async fn meta_leader(&self, sys: &async_nats::Client, within: Duration) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let reply = tokio::time::timeout(
                Duration::from_secs(1),
                sys.request("$SYS.REQ.SERVER.PING.JSZ", "{}".into()),
            )
            .await;
            if let Ok(Ok(reply)) = reply {
                let jsz: serde_json::Value = serde_json::from_slice(&reply.payload)?;
                if let Some(leader) = jsz["data"]["meta_cluster"]["leader"].as_str() {
                    return self.index_of(leader);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no meta leader within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until stream `stream` has a leader and every replica is current (a restarted
    /// node has caught up).
    pub async fn wait_replicas_current(
        &self,
        js: &async_nats::jetstream::Context,
        stream: &str,
        within: Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let probe = tokio::time::timeout(Duration::from_secs(1), stream_cluster(js, stream));
            let last = match probe.await {
                Ok(Ok(Some(cluster))) => {
                    let complete = cluster.leader.is_some()
                        && cluster.replicas.len() + 1 == self.nodes.len()
                        && cluster
                            .replicas
                            .iter()
                            .all(|r| r.current && !r.offline && r.lag.unwrap_or(0) == 0);
                    if complete {
                        return Ok(());
                    }
                    format!("{cluster:?}")
                }
                Ok(Ok(None)) => "not clustered".into(),
                Ok(Err(error)) => error.to_string(),
                Err(_) => "stream info timed out".into(),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!("replicas of {stream} not current within {within:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills node `index` (SIGKILL): no goodbye to its routes or clients.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Starts node `index` again with its store as it was.
    pub async fn restart(&mut self, index: usize) -> Result<()> {
        Ok(self.nodes[index].restart().await?)
    }

    /// Starts node `index` again with an empty store (a replaced disk).
    pub async fn restart_empty(&mut self, index: usize) -> Result<()> {
        self.nodes[index].kill();
        let store = self._dir.path().join(format!("n{index}"));
        if store.exists() {
            std::fs::remove_dir_all(&store)?;
        }
        self.restart(index).await
    }
}

async fn stream_cluster(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Result<Option<async_nats::jetstream::stream::ClusterInfo>> {
    let mut stream = js.get_stream(stream).await?;
    Ok(stream.info().await?.cluster.clone())
}

/// Three client ports and three route ports, all free and distinct.
fn six_ports() -> Result<(Vec<u16>, Vec<u16>)> {
    // Hold every listener until all six ports are chosen so none is picked twice.
    let listeners: Vec<std::net::TcpListener> = (0..6)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?;
    Ok((ports[..3].to_vec(), ports[3..].to_vec()))
}

/// The operator block of a world's server config (operator, system account, preloaded
/// accounts), as the shipped configs' `operator.conf` holds it in production.
pub fn operator_block(world_conf: &str) -> String {
    world_conf
        .lines()
        .skip_while(|l| !l.starts_with("operator:"))
        .take_while(|l| !l.starts_with("jetstream"))
        .filter(|l| !l.starts_with("resolver: MEMORY"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until JetStream answers account info on `client` (a cluster has elected its meta
/// leader).
pub async fn wait_for_jetstream(client: &async_nats::Client, within: Duration) -> Result<()> {
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + within;
    loop {
        // A server without a meta leader may drop the API request instead of answering, so
        // each probe gets a short deadline of its own.
        let error = match tokio::time::timeout(Duration::from_millis(500), js.query_account()).await
        {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(error)) => error.to_string(),
            Err(_) => "no answer to the account info request".to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("JetStream not ready within {within:?}: {error}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until JetStream on `client` can place a stream on all three nodes: a meta leader
/// alone is not enough, as a node the leader has not heard from yet counts as offline ("no
/// suitable peers for placement").
async fn wait_for_placement(client: &async_nats::Client, within: Duration) -> Result<()> {
    wait_for_jetstream(client, within).await?;
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + within;
    let probe = async_nats::jetstream::stream::Config {
        name: "TESTKIT_PLACEMENT".into(),
        subjects: vec!["testkit.placement".into()],
        num_replicas: 3,
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    };
    loop {
        let created =
            tokio::time::timeout(Duration::from_secs(2), js.create_stream(probe.clone())).await;
        match created {
            Ok(Ok(_)) => {
                js.delete_stream("TESTKIT_PLACEMENT").await?;
                return Ok(());
            }
            Ok(Err(error)) if tokio::time::Instant::now() >= deadline => {
                bail!("no stream on three nodes within {within:?}: {error}")
            }
            Err(_) if tokio::time::Instant::now() >= deadline => {
                bail!("no stream on three nodes within {within:?}: no answer")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A free loopback port (re-exported for tests that run their own listeners).
pub fn port() -> Result<u16> {
    Ok(free_port()?)
}

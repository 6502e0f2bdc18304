#![forbid(unsafe_code)]
//! Test support shared by the integration tests and benchmarks of natster-global (a
//! dev-dependency only; the product never contains it): a real nats-server per test,
//! in operator mode from a freshly minted world or as plain JetStream, clients connected as any
//! account of the world, and a 3-node JetStream cluster on loopback.
//!
//! Everything a helper starts is killed, and its directories removed, when it is dropped.

use anyhow::{bail, Context as _, Result};
use natster_global::contract::{Envelope, MIN_SEQ_HEADER};
use natster_global::service::{GlobalService, RunnerConfig, Sealer, ServiceConfig};
use natster_global::test_util;
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
        let dir = tempfile::tempdir()?;
        let users: Vec<String> = users.iter().map(|s| s.to_string()).collect();
        let mut world = World::generate(dir.path(), &users)?;
        customize(&mut world)?;
        world.write(false)?;
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
        let dir = tempfile::tempdir()?;
        // Hold every listener until all six ports are chosen so none is picked twice.
        let listeners: Vec<std::net::TcpListener> = (0..6)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<_>>()?;
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<std::io::Result<_>>()?;
        drop(listeners);
        let (client_ports, cluster_ports) = ports.split_at(3);
        let mut starting = Vec::new();
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
            let path = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&path, conf)?;
            starting.push(NatsServer::start(ServerSpec {
                config: Some(path),
                port: Some(client_ports[i]),
                ..Default::default()
            }));
        }
        let nodes = futures::future::try_join_all(starting).await?;
        let cluster = Cluster { nodes, _dir: dir };
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
        wait_for_jetstream(&client, Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Client URLs of all nodes, comma-separated (what async-nats accepts as a server list).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }
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

pub use natster_global::test_util::sync;

/// A free loopback port (re-exported for tests that run their own listeners).
pub fn port() -> Result<u16> {
    Ok(free_port()?)
}

/// A test world with the service running in-process: `WEB` is the web account, the world's
/// xkey seals tokens, and projections hand over quickly between instances.
pub struct Harness {
    pub tw: TestWorld,
    pub services: Vec<natster_global::service::GlobalService>,
}

impl Harness {
    /// A world with `users` and one service instance.
    pub async fn start(users: &[&str]) -> Result<Harness> {
        let mut harness = Harness::without_instances(users).await?;
        harness.add_instance(|_| {}).await?;
        Ok(harness)
    }

    /// A world with `users` and no service instance yet (see [`Harness::add_instance`]).
    pub async fn without_instances(users: &[&str]) -> Result<Harness> {
        let tw = TestWorld::start_with(users, |_| Ok(())).await?;
        Ok(Harness {
            tw,
            services: vec![],
        })
    }

    /// The service configuration tests use, adjusted by `adjust`.
    pub fn config(&self, adjust: impl FnOnce(&mut ServiceConfig)) -> Result<ServiceConfig> {
        let mut config = ServiceConfig {
            web_accounts: vec![self.tw.key(bootstrap::WEB)],
            sealer: Some(std::sync::Arc::new(Sealer::from_file(
                &self.tw.world.xkey_path(),
            )?)),
            runner: RunnerConfig {
                takeover_after: Duration::from_secs(2),
                ..Default::default()
            },
            ..Default::default()
        };
        adjust(&mut config);
        Ok(config)
    }

    /// Starts one more service instance.
    pub async fn add_instance(&mut self, adjust: impl FnOnce(&mut ServiceConfig)) -> Result<()> {
        let config = self.config(adjust)?;
        let client = self.tw.connect(bootstrap::NATSTER).await?;
        self.services
            .push(GlobalService::start(client, config).await?);
        Ok(())
    }

    /// Connects as account `name`.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client> {
        self.tw.connect(name).await
    }

    /// The key of account `name`.
    pub fn key(&self, name: &str) -> String {
        self.tw.key(name)
    }

    /// A JetStream context in the service account.
    pub async fn service_js(&self) -> Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::new(
            self.tw.connect(bootstrap::NATSTER).await?,
        ))
    }

    /// Stops every instance.
    pub async fn stop(self) -> Result<()> {
        for service in self.services {
            service.stop().await?;
        }
        Ok(())
    }
}

/// Sends `payload` to `natster.global.<op>` and decodes the envelope; with `min_seq`, sets
/// `Natster-Min-Seq`.
pub async fn call(
    client: &async_nats::Client,
    op: &str,
    payload: impl Into<bytes::Bytes>,
    min_seq: Option<u64>,
) -> Result<Envelope> {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(seq) = min_seq {
        headers.insert(MIN_SEQ_HEADER, seq.to_string().as_str());
    }
    let reply = client
        .request_with_headers(format!("natster.global.{op}"), headers, payload.into())
        .await
        .with_context(|| format!("request {op}"))?;
    serde_json::from_slice(&reply.payload)
        .with_context(|| format!("{op} reply is not an envelope: {:?}", reply.payload))
}

/// `events.put` as natster clients send it; returns the envelope.
pub async fn put_event(
    client: &async_nats::Client,
    event_type: &str,
    catalog: &str,
    target: &str,
    data: serde_json::Value,
) -> Result<Envelope> {
    let body = serde_json::json!({
        "catalog": catalog, "target": target, "event_type": event_type, "data": data,
    });
    call(client, "events.put", serde_json::to_vec(&body)?, None).await
}

/// The `natster_initialized` data an account sends for itself.
pub fn init_data(key: &str) -> serde_json::Value {
    serde_json::json!({"account_id": format!("id-{}", &key[..8]), "account_name": "test", "account_key": key})
}

/// The sequence in a successful `events.put` reply.
pub fn seq_of(envelope: &Envelope) -> Result<u64> {
    anyhow::ensure!(envelope.code == 200, "expected success, got {envelope:?}");
    envelope.data["seq"]
        .as_u64()
        .context("events.put reply has a seq")
}

/// Last sequence of the event stream.
pub async fn events_last_seq(js: &async_nats::jetstream::Context) -> Result<u64> {
    stream_last_seq(js, test_util::EVENTS_STREAM).await
}

/// Last sequence of stream `name` (for a KV bucket's stream `KV_<bucket>`: writes so far).
pub async fn stream_last_seq(js: &async_nats::jetstream::Context, name: &str) -> Result<u64> {
    Ok(js.get_stream(name).await?.info().await?.state.last_sequence)
}

/// What [`project_from_empty`] measured.
pub struct ProjectedBacklog {
    /// From the runner's start until it had applied the requested sequence.
    pub elapsed: Duration,
    /// Each applied sequence the runner reported, with when (one entry per flush).
    pub timeline: Vec<(Duration, u64)>,
    /// Writes to the projection's bucket.
    pub record_writes: u64,
    /// Writes to `PROJ_STATS` (counters, checkpoint, lease).
    pub stats_writes: u64,
}

/// Empties the bucket of projection `P` and `PROJ_STATS`, runs `P`'s runner over the log with
/// `config` until it has applied sequence `upto` (at most two minutes), stops it, and reports
/// what it took.
pub async fn project_from_empty<P: test_util::Projection<Notice = std::convert::Infallible>>(
    js: &async_nats::jetstream::Context,
    upto: u64,
    config: RunnerConfig,
) -> Result<ProjectedBacklog> {
    for bucket in [P::BUCKET, test_util::PROJ_STATS_BUCKET] {
        if js.get_key_value(bucket).await.is_ok() {
            js.delete_key_value(bucket).await?;
        }
    }
    let store = test_util::Store::ensure(js.clone(), &Default::default()).await?;
    let (records_stream, stats_stream) = (
        format!("KV_{}", P::BUCKET),
        format!("KV_{}", test_util::PROJ_STATS_BUCKET),
    );
    let records_before = stream_last_seq(js, &records_stream).await?;
    let stats_before = stream_last_seq(js, &stats_stream).await?;
    let records = js.get_key_value(P::BUCKET).await?;
    let (tx, mut applied) = tokio::sync::watch::channel(0u64);
    let stop = tokio_util::sync::CancellationToken::new();
    let runner = test_util::ProjectionRunner::<P> {
        stream: store.events.clone(),
        records,
        stats: store.stats.clone(),
        config,
        progress: test_util::Progress::new(tx, Default::default()),
        announce: std::sync::Arc::new(test_util::Silent),
    };
    let task = tokio::spawn(runner.run(stop.clone()));
    let started = std::time::Instant::now();
    let mut timeline = Vec::new();
    let waited: std::result::Result<Result<()>, _> =
        tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                let seq = *applied.borrow_and_update();
                timeline.push((started.elapsed(), seq));
                if seq >= upto {
                    return Ok(());
                }
                applied.changed().await?;
            }
        })
        .await;
    let elapsed = started.elapsed();
    stop.cancel();
    waited.context("the backlog was not projected within two minutes")??;
    task.await?;
    Ok(ProjectedBacklog {
        elapsed,
        timeline,
        record_writes: stream_last_seq(js, &records_stream).await? - records_before,
        stats_writes: stream_last_seq(js, &stats_stream).await? - stats_before,
    })
}

/// A realistic event log in the original layout: every one of `accounts` new accounts
/// initialises, then shares (70 %), unshares (20 %) and imports (10 %) over `catalogs` names,
/// up to `events` events. Returns (subject, body) pairs in append order.
pub fn mixed_event_log(accounts: usize, catalogs: usize, events: usize) -> Vec<(String, Vec<u8>)> {
    use natster_global::model::{EventSubject, EventType, InitData};
    let keys: Vec<String> = (0..accounts)
        .map(|_| nkeys::KeyPair::new_account().public_key())
        .collect();
    let mut log = Vec::with_capacity(events);
    for key in &keys {
        let data = InitData {
            account_id: "id".into(),
            account_name: "test".into(),
            account_key: key.clone(),
        };
        log.push((
            EventSubject::new(key, "none", "none", EventType::NatsterInitialized).to_subject(),
            serde_json::to_vec(&data).expect("init data serializes"),
        ));
    }
    let mut i = 0usize;
    while log.len() < events {
        let owner = &keys[i % keys.len()];
        let target = &keys[(i * 7 + 3) % keys.len()];
        let kind = match i % 10 {
            0..=6 => EventType::CatalogShared,
            7 | 8 => EventType::CatalogUnshared,
            _ => EventType::CatalogImported,
        };
        let catalog = format!("cat{}", i % catalogs.max(1));
        log.push((
            EventSubject::new(owner, target, &catalog, kind).to_subject(),
            Vec::new(),
        ));
        i += 1;
    }
    log
}

/// Publishes `log` to JetStream in chunks (the context bounds the acks in flight) and waits
/// for every ack.
pub async fn publish_log(
    js: &async_nats::jetstream::Context,
    log: &[(String, Vec<u8>)],
) -> Result<()> {
    for chunk in log.chunks(1_000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (subject, body) in chunk {
            acks.push(js.publish(subject.clone(), body.clone().into()).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    Ok(())
}

/// Every key and current value of a bucket.
pub async fn dump_bucket(
    kv: &async_nats::jetstream::kv::Store,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
    use futures::StreamExt;
    let mut keys = kv.keys().await?;
    let mut out = std::collections::BTreeMap::new();
    while let Some(key) = keys.next().await {
        let key = key?;
        if let Some(value) = kv.get(&key).await? {
            out.insert(key, value.to_vec());
        }
    }
    Ok(out)
}

/// An account's feed (its import `natster.global-events.>`), live once opened.
pub struct FeedReader {
    sub: async_nats::Subscriber,
}

impl FeedReader {
    /// Subscribes and makes sure the server has the subscription before returning.
    pub async fn open(client: &async_nats::Client) -> Result<FeedReader> {
        let sub = client.subscribe("natster.global-events.>").await?;
        sync(client).await?;
        Ok(FeedReader { sub })
    }

    /// The next message as (kind, payload); fails after `within`.
    pub async fn next(&mut self, within: Duration) -> Result<(String, serde_json::Value)> {
        use futures::StreamExt;
        let message = tokio::time::timeout(within, self.sub.next())
            .await
            .context("no feed message in time")?
            .context("feed closed")?;
        let kind = message
            .subject
            .strip_prefix("natster.global-events.")
            .context("feed subject")?
            .to_string();
        Ok((kind, serde_json::from_slice(&message.payload)?))
    }

    /// The next message that is not a `heartbeat`.
    pub async fn next_notice(&mut self, within: Duration) -> Result<(String, serde_json::Value)> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let (kind, payload) = self.next(left).await?;
            if kind != "heartbeat" {
                return Ok((kind, payload));
            }
        }
    }
}

/// A plain HTTP/1.1 GET (the operator endpoints are all this simple): status and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8(response)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP header end in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The value of the series `series` (name and labels exactly as exported, e.g.
/// `natster_requests_total{op="whoami",code="200"}`) in a metrics text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix(' ')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

impl Harness {
    /// Serves the HTTP endpoints of instance `index` on a free loopback port.
    pub async fn serve_http(&self, index: usize) -> Result<std::net::SocketAddr> {
        let telemetry = self.services[index].telemetry().clone();
        let server =
            test_util::http::serve("127.0.0.1:0", telemetry, std::future::pending::<()>()).await?;
        Ok(server.addr)
    }
}

/// Runs `op(i)` for every `i` in `0..n`, `in_flight` at a time, and returns operations per
/// second. The first error ends the run and is returned.
pub async fn rate_at_in_flight<F, Fut>(n: usize, in_flight: usize, op: F) -> Result<f64>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    use futures::{StreamExt, TryStreamExt};
    let started = std::time::Instant::now();
    futures::stream::iter(0..n)
        .map(op)
        .buffer_unordered(in_flight.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Publishes to JetStream and waits for the stream's acknowledgement.
pub async fn publish_acked(
    js: &async_nats::jetstream::Context,
    subject: String,
    headers: async_nats::HeaderMap,
    payload: Vec<u8>,
) -> Result<()> {
    js.publish_with_headers(subject, headers, payload.into())
        .await?
        .await?;
    Ok(())
}

/// Sends a request to the service and fails unless the reply is a success envelope.
pub async fn request_ok(
    client: &async_nats::Client,
    subject: String,
    payload: Vec<u8>,
) -> Result<()> {
    let reply = client.request(subject, payload.into()).await?;
    anyhow::ensure!(
        reply.payload.starts_with(b"{\"code\":200"),
        "{}",
        String::from_utf8_lossy(&reply.payload)
    );
    Ok(())
}

//! The projection and `events.put` on a 3-node cluster with every stream and bucket R3,
//! beside the same on one node, in one run (issue 17): what replication costs.
//!
//! For each target (one plain JetStream server; three clustered on loopback), on a log of
//! the original layout published first: our projector (the accounts projection, from empty
//! buckets, as in the projection bench) and `events.put` through a running service at 64 in
//! flight (p50/p99); rounds alternate between the targets, medians are reported with the CPU
//! per event or request (this process + every nats-server of the target) and the cluster's
//! ratio to the single node.
//!
//! `cargo bench --bench cluster` runs the full sizes; without `--bench` it is a smoke run.
//! `ROUNDS=N` changes the number of rounds (3).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result};
use async_nats::jetstream;
use natster_global::service::{GlobalService, RunnerConfig, ServiceConfig};
use natster_global::test_util::{with_patience, Accounts, Store, StoreConfig};
use natster_testkit::{
    cpu_seconds, mixed_event_log, percentile, project_from_empty, publish_log, Cluster,
    EventsPutLoad, PlainServer,
};
use std::time::Duration;

const IN_FLIGHT: usize = 64;

/// One JetStream target: a single server or a 3-node cluster.
struct Target {
    name: &'static str,
    replicas: usize,
    client: async_nats::Client,
    /// Client URLs of every node.
    urls: Vec<String>,
    server_pids: Vec<String>,
    _single: Option<PlainServer>,
    _cluster: Option<Cluster>,
}

impl Target {
    async fn single() -> Result<Target> {
        let server = PlainServer::start().await?;
        Ok(Target {
            name: "1 node (R1)",
            replicas: 1,
            client: server.connect().await?,
            urls: vec![server.server.url()],
            server_pids: vec![server.server.pid().context("pid")?.to_string()],
            _single: Some(server),
            _cluster: None,
        })
    }

    async fn cluster() -> Result<Target> {
        let cluster = Cluster::start_plain().await?;
        let urls = cluster.urls();
        let client = async_nats::connect(urls.as_slice()).await?;
        let server_pids = cluster
            .nodes
            .iter()
            .map(|n| n.pid().map(|p| p.to_string()).context("pid"))
            .collect::<Result<_>>()?;
        Ok(Target {
            name: "3 nodes (R3)",
            replicas: 3,
            client,
            urls,
            server_pids,
            _single: None,
            _cluster: Some(cluster),
        })
    }

    fn js(&self) -> jetstream::Context {
        jetstream::new(self.client.clone())
    }

    /// CPU seconds used so far by this process and by the target's servers.
    fn cpu(&self) -> Result<(f64, f64)> {
        let mut servers = 0.0;
        for pid in &self.server_pids {
            servers += cpu_seconds(pid)?;
        }
        Ok((cpu_seconds("self")?, servers))
    }

    /// CPU µs per operation of `n` operations since `before`.
    fn cpu_since(&self, before: (f64, f64), n: usize) -> Result<(f64, f64)> {
        let now = self.cpu()?;
        let per = |s: f64| s * 1e6 / n as f64;
        Ok((per(now.0 - before.0), per(now.1 - before.1)))
    }
}

/// What one round measured on one target.
#[derive(Clone, Copy)]
struct Round {
    projector: f64,
    projector_cpu: (f64, f64),
    appends: f64,
    appends_cpu: (f64, f64),
    p50: Duration,
    p99: Duration,
}

async fn round(target: &Target, events: usize, appends: usize) -> Result<Round> {
    let js = target.js();
    let before = target.cpu()?;
    let run = project_from_empty::<Accounts>(&js, events as u64, RunnerConfig::default()).await?;
    let projector_cpu = target.cpu_since(before, events)?;
    let projector = events as f64 / run.elapsed.as_secs_f64();

    let config = ServiceConfig {
        store: StoreConfig {
            replicas: target.replicas,
            ..Default::default()
        },
        ..Default::default()
    };
    // The service drains its connection when it stops: it gets one of its own.
    let service_client = async_nats::connect(target.urls.as_slice()).await?;
    let service = GlobalService::start(service_client, config)
        .await
        .context("service")?;
    wait_for_interest(&target.client).await?;
    let load = EventsPutLoad::new(appends);
    let before = target.cpu()?;
    let (rate, mut latencies) = load.run(&target.client, IN_FLIGHT).await?;
    // What the requests set off is counted with them.
    load.until_projected(&target.client).await?;
    let appends_cpu = target.cpu_since(before, appends)?;
    service.stop().await?;
    Ok(Round {
        projector,
        projector_cpu,
        appends: rate,
        appends_cpu,
        p50: percentile(&mut latencies, 0.5),
        p99: percentile(&mut latencies, 0.99),
    })
}

/// Waits until the service's endpoints answer on `client`'s node: on a cluster the service's
/// subscriptions reach the other nodes over the routes a moment after it started.
async fn wait_for_interest(client: &async_nats::Client) -> Result<()> {
    let caller = nkeys::KeyPair::new_account().public_key();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let request = client.request(format!("{caller}.natster.global.stats"), "".into());
        match tokio::time::timeout(Duration::from_secs(1), request).await {
            Ok(Ok(_)) => return Ok(()),
            _ if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            _ => anyhow::bail!("the service's endpoints did not answer within 10 s"),
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The median round (by each measure's own median) of `rounds`.
fn medians(rounds: &[Round]) -> Round {
    let of = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    Round {
        projector: of(|r| r.projector),
        projector_cpu: (of(|r| r.projector_cpu.0), of(|r| r.projector_cpu.1)),
        appends: of(|r| r.appends),
        appends_cpu: (of(|r| r.appends_cpu.0), of(|r| r.appends_cpu.1)),
        p50: Duration::from_secs_f64(of(|r| r.p50.as_secs_f64())),
        p99: Duration::from_secs_f64(of(|r| r.p99.as_secs_f64())),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    // As the binary runs (see its doc): the service is measured as shipped.
    natster_global::service::without_transparent_huge_pages();
    let full = std::env::args().any(|a| a == "--bench");
    let (events, accounts, appends) = if full {
        (30_000, 3_000, 6_000)
    } else {
        (1_000, 100, 200)
    };
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let targets = [Target::single().await?, Target::cluster().await?];
    let log = mixed_event_log(accounts, 20_000, events);
    for target in &targets {
        let config = StoreConfig {
            replicas: target.replicas,
            ..Default::default()
        };
        // As a starting instance does: a node may still be catching up with the cluster.
        with_patience(|| Box::pin(Store::ensure(target.js(), &config))).await?;
        publish_log(&target.js(), &log).await?;
    }
    let mut measured: Vec<Vec<Round>> = vec![Vec::new(), Vec::new()];
    for r in 0..rounds {
        for (i, target) in targets.iter().enumerate() {
            let result = round(target, events, appends).await?;
            eprintln!(
                "round {r}, {}: projector {:.0}/s, events.put {:.0}/s (p99 {:?})",
                target.name, result.projector, result.appends, result.p99
            );
            measured[i].push(result);
        }
    }
    let [single, cluster] = [medians(&measured[0]), medians(&measured[1])];
    println!(
        "{events} events over {accounts} accounts, {appends} events.put at {IN_FLIGHT} in flight, median of {rounds} rounds; CPU µs per event or request (this process + nats-servers)"
    );
    println!("| measurement | 1 node (R1) | 3 nodes (R3) | R3 ÷ R1 |");
    println!("|---|---|---|---|");
    println!(
        "| projector (accounts, from empty), events/s | {:.0} (CPU {:.0} + {:.0}) | {:.0} (CPU {:.0} + {:.0}) | {:.2}× |",
        single.projector,
        single.projector_cpu.0,
        single.projector_cpu.1,
        cluster.projector,
        cluster.projector_cpu.0,
        cluster.projector_cpu.1,
        cluster.projector / single.projector
    );
    println!(
        "| `events.put`, requests/s | {:.0} (CPU {:.0} + {:.0}) | {:.0} (CPU {:.0} + {:.0}) | {:.2}× |",
        single.appends,
        single.appends_cpu.0,
        single.appends_cpu.1,
        cluster.appends,
        cluster.appends_cpu.0,
        cluster.appends_cpu.1,
        cluster.appends / single.appends
    );
    println!(
        "| `events.put` p50 / p99 | {:.2?} / {:.2?} | {:.2?} / {:.2?} | {:.2}× p99 |",
        single.p50,
        single.p99,
        cluster.p50,
        cluster.p99,
        cluster.p99.as_secs_f64() / single.p99.as_secs_f64()
    );
    Ok(())
}

//! Node loss on a 3-node cluster (issue 17, DESIGN §6): two service instances on different
//! nodes, three accounts on the three nodes writing steadily, and one node killed at a time —
//! the one leading `NATSTER_EVENTS`, then the meta leader, then the one leading the accounts
//! bucket — each restarted once writes flow again. Afterwards every acknowledged request is in
//! the log exactly once, no request appears twice, every node holds the whole log, and the
//! projections equal a clean rebuild byte for byte.
//!
//! `CLUSTER_FAULT_ROUNDS=N` repeats the three kills N times (the suite runs one round);
//! `CLUSTER_FAULT_LOG=<filter>` shows the instances' log.

use anyhow::{bail, ensure, Context as _, Result};
use async_nats::jetstream;
use natster_global::contract::{Envelope, MSG_ID_HEADER};
use natster_global::service::{GlobalService, RunnerConfig, ServiceConfig, StoreConfig};
use natster_global::test_util::{Accounts, Catalogs, Projection, EVENTS_STREAM};
use natster_global::tooling::bootstrap::{World, NATSTER, SYS};
use natster_testkit::{
    connect_creds, connect_creds_ordered, dump_bucket, events_last_seq, expected_records,
    init_data, put_event, read_events, seq_of, Cluster,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Writes must flow again within this long of a kill (DESIGN §6).
const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// Writes must have flowed without a failure this long before a phase counts as recovered.
const SETTLED: Duration = Duration::from_secs(2);
/// Catalog names each writer shares and unshares in turn.
const NAMES: usize = 8;
const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// What one writer saw.
#[derive(Default)]
struct Outcome {
    /// Every acknowledged request: its `Nats-Msg-Id` and the sequence the reply named.
    acked: Vec<(String, u64)>,
    /// When each acknowledgement arrived.
    acked_at: Vec<Instant>,
    /// When each failed attempt (503, timeout, no responders) ended, and why it failed.
    failed_at: Vec<(Instant, String)>,
}

/// Sends `events.put` requests from `client` (account `me`) every 50 ms until `stop`: a share
/// or unshare of one of [`NAMES`] catalogs with `target`, each under its own `Nats-Msg-Id`,
/// sent again under the same id after a 503, a timeout or no responders until acknowledged
/// (as a client that retries exactly would). Any other answer fails the writer.
async fn write_steadily(
    client: async_nats::Client,
    me: &'static str,
    target: String,
    stop: CancellationToken,
    outcome: Arc<Mutex<Outcome>>,
) -> Result<()> {
    let mut shared = [false; NAMES];
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for n in 0usize.. {
        tick.tick().await;
        if stop.is_cancelled() {
            return Ok(());
        }
        let name = n % NAMES;
        let event_type = if shared[name] {
            "catalog_unshared"
        } else {
            "catalog_shared"
        };
        let body = serde_json::to_vec(&serde_json::json!({
            "catalog": format!("{me}{name}"), "target": target, "event_type": event_type,
        }))?;
        let id = format!("w{n}");
        let started = Instant::now();
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(MSG_ID_HEADER, id.as_str());
            let request = async_nats::Request::new()
                .headers(headers)
                .payload(body.clone().into())
                .timeout(Some(Duration::from_secs(2)));
            let reply = client
                .send_request("natster.global.events.put", request)
                .await;
            let envelope = match reply {
                Ok(message) => serde_json::from_slice::<Envelope>(&message.payload)
                    .map_err(|error| format!("not an envelope: {error}")),
                Err(error) => Err(error.to_string()),
            };
            match envelope {
                Ok(envelope) if envelope.code == 200 => {
                    let mut outcome = outcome.lock().expect("outcome lock");
                    outcome.acked.push((id.clone(), seq_of(&envelope)?));
                    outcome.acked_at.push(Instant::now());
                    break;
                }
                Ok(envelope) if envelope.code != 503 => {
                    bail!("{me}: request {id} ({event_type} {name}) answered {envelope:?}")
                }
                failed => {
                    let why = match failed {
                        Ok(envelope) => envelope.error.unwrap_or_default(),
                        Err(why) => why,
                    };
                    let mut outcome = outcome.lock().expect("outcome lock");
                    outcome.failed_at.push((Instant::now(), why));
                }
            }
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "{me}: request {id} not acknowledged within a minute"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        shared[name] = !shared[name];
    }
    unreachable!("the loop only ends by returning")
}

/// Which node a phase kills.
#[derive(Debug, Clone, Copy)]
#[allow(clippy::enum_variant_names)] // each names whose leader is killed
enum Victim {
    EventsStreamLeader,
    MetaLeader,
    AccountsBucketLeader,
}

struct Fixture {
    cluster: Cluster,
    world: World,
    js: jetstream::Context,
    sys: async_nats::Client,
    outcomes: Vec<Arc<Mutex<Outcome>>>,
}

impl Fixture {
    async fn victim(&self, victim: Victim) -> Result<usize> {
        let within = Duration::from_secs(20);
        match victim {
            Victim::EventsStreamLeader => {
                self.cluster
                    .stream_leader(&self.js, EVENTS_STREAM, within)
                    .await
            }
            Victim::MetaLeader => self.cluster.meta_leader(&self.sys, within).await,
            Victim::AccountsBucketLeader => {
                let bucket = format!("KV_{}", Accounts::BUCKET);
                self.cluster.stream_leader(&self.js, &bucket, within).await
            }
        }
    }

    /// When writes had flowed again for [`SETTLED`] after `since`: the first acknowledgement
    /// after the last failure. Waits at most `RECOVERY_BOUND` plus the settling time.
    async fn recovered_after(&self, since: Instant) -> Result<Duration> {
        let deadline = since + RECOVERY_BOUND + SETTLED + Duration::from_secs(5);
        loop {
            let now = Instant::now();
            let mut last_failure = since;
            let mut acks_after: Vec<Instant> = Vec::new();
            for outcome in &self.outcomes {
                let outcome = outcome.lock().expect("outcome lock");
                if let Some((failed, _)) = outcome.failed_at.last().filter(|(t, _)| *t >= since) {
                    last_failure = last_failure.max(*failed);
                }
                acks_after.extend(outcome.acked_at.iter().copied().filter(|&t| t >= since));
            }
            let first_ack_after_failure = acks_after
                .iter()
                .copied()
                .filter(|&t| t >= last_failure)
                .min();
            if let Some(first) = first_ack_after_failure {
                if now.duration_since(last_failure) >= SETTLED && acks_after.len() >= 3 {
                    let recovery = first.duration_since(since);
                    ensure!(
                        recovery <= RECOVERY_BOUND,
                        "writes took {recovery:?} to flow again; failures: {:#?}",
                        self.failures_since(since)
                    );
                    return Ok(recovery);
                }
            }
            ensure!(
                now < deadline,
                "writes did not flow again within {:?} (last failure {:?} after the kill); failures: {:#?}",
                deadline - since,
                last_failure - since,
                self.failures_since(since)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every stream of the service account (the log and every bucket) has a
    /// leader and all three replicas current: a restarted node has caught up.
    async fn all_current(&self) -> Result<()> {
        use futures::TryStreamExt;
        let deadline = Instant::now() + Duration::from_secs(30);
        // Listing asks the meta leader, which may itself be new.
        let names: Vec<String> = loop {
            match self.js.stream_names().try_collect().await {
                Ok(names) => break names,
                Err(error) if Instant::now() < deadline => {
                    eprintln!("listing streams: {error}; again");
                }
                Err(error) => return Err(error.into()),
            }
        };
        ensure!(
            names.len() > 5,
            "the service's streams and buckets: {names:?}"
        );
        for name in names {
            self.cluster
                .wait_replicas_current(&self.js, &name, Duration::from_secs(30))
                .await?;
        }
        Ok(())
    }

    /// Every failed attempt since `since`: when (after `since`) and why, in time order.
    fn failures_since(&self, since: Instant) -> Vec<String> {
        let mut failures = Vec::new();
        for outcome in &self.outcomes {
            let outcome = outcome.lock().expect("outcome lock");
            failures.extend(
                outcome
                    .failed_at
                    .iter()
                    .filter(|(t, _)| *t >= since)
                    .map(|(t, why)| (t.duration_since(since), why.clone())),
            );
        }
        failures.sort();
        failures
            .into_iter()
            .map(|(after, why)| format!("{after:.1?}: {why}"))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_loss_during_writes_loses_nothing_and_writes_resume_within_10s() -> Result<()> {
    if let Ok(filter) = std::env::var("CLUSTER_FAULT_LOG") {
        // A debugging aid: the instances' log on stderr.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let dir = tempfile::tempdir()?;
    let users: Vec<String> = USERS.iter().map(|u| u.to_string()).collect();
    let world = World::generate(dir.path(), &users)?;
    world.write(false)?;
    let cluster = Cluster::start(Some(&world)).await?;
    let js = jetstream::new(
        connect_creds(
            &cluster.urls().join(","),
            &world.creds_path(NATSTER),
            "check",
        )
        .await?,
    );
    let sys = connect_creds(&cluster.urls().join(","), &world.creds_path(SYS), "sys").await?;
    let mut fixture = Fixture {
        cluster,
        world,
        js,
        sys,
        outcomes: Vec::new(),
    };
    let mut services = Vec::new();
    for node in [0, 1] {
        services.push(start_instance(&fixture, node).await?);
    }

    // Each account lives on its own node and initialises itself.
    let mut clients = Vec::new();
    for (node, user) in USERS.iter().enumerate() {
        let client = connect_creds_ordered(
            &fixture.cluster.urls_from(node),
            &fixture.world.creds_path(user),
            user,
        )
        .await?;
        let key = fixture.world.key(user)?;
        seq_of(
            &put_event(
                &client,
                "natster_initialized",
                "none",
                "none",
                init_data(&key),
            )
            .await?,
        )?;
        clients.push(client);
    }
    let stop = CancellationToken::new();
    let mut writers = Vec::new();
    for (i, user) in USERS.iter().enumerate() {
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        fixture.outcomes.push(outcome.clone());
        let target = fixture.world.key(USERS[(i + 1) % USERS.len()])?;
        writers.push(tokio::spawn(write_steadily(
            clients[i].clone(),
            user,
            target,
            stop.clone(),
            outcome,
        )));
    }

    let rounds: usize = std::env::var("CLUSTER_FAULT_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    for round in 0..rounds {
        for victim in [
            Victim::EventsStreamLeader,
            Victim::MetaLeader,
            Victim::AccountsBucketLeader,
        ] {
            fixture.recovered_after(Instant::now()).await?;
            let node = fixture.victim(victim).await?;
            let killed = Instant::now();
            fixture.cluster.kill(node);
            let recovery = fixture
                .recovered_after(killed)
                .await
                .with_context(|| format!("round {round}: killed n{node} ({victim:?})"))?;
            eprintln!("round {round}: killed n{node} ({victim:?}); writes flowed again after {recovery:?}");
            fixture.cluster.restart(node).await?;
            fixture
                .all_current()
                .await
                .with_context(|| format!("n{node} restarted"))?;
        }
    }
    stop.cancel();
    for writer in writers {
        writer.await??;
    }
    verify_exactly_once(&fixture).await?;
    verify_projections(&fixture).await?;
    for service in services {
        service.stop().await?;
    }
    Ok(())
}

/// An instance connected to node `node` first, failing over to the others; R3 resources.
async fn start_instance(fixture: &Fixture, node: usize) -> Result<GlobalService> {
    let client = connect_creds_ordered(
        &fixture.cluster.urls_from(node),
        &fixture.world.creds_path(NATSTER),
        &format!("natster-global-{node}"),
    )
    .await?;
    let config = ServiceConfig {
        store: StoreConfig {
            replicas: 3,
            ..Default::default()
        },
        runner: RunnerConfig {
            takeover_after: Duration::from_secs(2),
            ..Default::default()
        },
        ..Default::default()
    };
    Ok(GlobalService::start(client, config).await?)
}

/// Every acknowledged request is in the log once, at the sequence its reply named, and no
/// request id appears twice.
async fn verify_exactly_once(fixture: &Fixture) -> Result<()> {
    let stream = fixture.js.get_stream(EVENTS_STREAM).await?;
    let last = events_last_seq(&fixture.js).await?;
    let mut by_id: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for seq in 1..=last {
        let message = stream.get_raw_message(seq).await?;
        if let Some(id) = message.headers.get(MSG_ID_HEADER) {
            by_id.entry(id.to_string()).or_default().push(seq);
        }
    }
    let repeated: Vec<_> = by_id.iter().filter(|(_, seqs)| seqs.len() > 1).collect();
    assert!(repeated.is_empty(), "requests appended twice: {repeated:?}");
    let mut acked = 0;
    for (user, outcome) in USERS.iter().zip(&fixture.outcomes) {
        let key = fixture.world.key(user)?;
        for (id, seq) in &outcome.lock().expect("outcome lock").acked {
            let stored = by_id.get(&format!("{key}:{id}"));
            assert_eq!(
                stored.map(Vec::as_slice),
                Some(&[*seq][..]),
                "{user}'s acknowledged request {id} (seq {seq})"
            );
            acked += 1;
        }
    }
    eprintln!("{acked} acknowledged writes, each in the log once; {last} events in all");
    assert!(
        acked > 100,
        "the writers wrote too little to prove anything: {acked}"
    );
    Ok(())
}

/// Once the projections have applied the whole log, the buckets equal a clean rebuild.
async fn verify_projections(fixture: &Fixture) -> Result<()> {
    let last = events_last_seq(&fixture.js).await?;
    let stats = fixture.js.get_key_value("PROJ_STATS").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for name in [Accounts::NAME, Catalogs::NAME] {
        loop {
            let applied = natster_global::test_util::checkpoint(&stats, name)
                .await
                .map_err(anyhow::Error::msg)?
                .applied_seq;
            if applied >= last {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{name} stopped at {applied} of {last}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let events = read_events(&fixture.js).await?;
    let (accounts, _) = expected_records::<Accounts>(&events);
    let (catalogs, _) = expected_records::<Catalogs>(&events);
    for (bucket, expected) in [(Accounts::BUCKET, accounts), (Catalogs::BUCKET, catalogs)] {
        let stored = dump_bucket(&fixture.js.get_key_value(bucket).await?).await?;
        assert_eq!(stored, expected, "{bucket} differs from a clean rebuild");
    }
    Ok(())
}

//! A 3-node cluster under faults (issue 17, DESIGN §6) — the shipped
//! `ops/nats-server/cluster-node-*.conf` on loopback, TLS to clients and mutual TLS between
//! nodes — with two service instances on different nodes and accounts on all three:
//!
//! - node loss during writes: one node killed at a time (the one leading `NATSTER_EVENTS`,
//!   the meta leader, the one leading the accounts bucket), each restarted once writes flow
//!   again; writes flow again within 10 s of each kill (or within 3 s of the log's new leader,
//!   when the servers take longer to elect one), every acknowledged request is in the
//!   log exactly once, none twice, every node catches up, and the projections equal a clean
//!   rebuild byte for byte;
//! - read-your-writes across nodes and replicas: reads with `Natster-Min-Seq` from another
//!   node always hold the write, while a follower of the bucket is down and then catching up;
//! - the instances' in-memory views follow their buckets through node loss;
//! - rolling restarts of the instances and the nodes, and a node that returns empty.
//!
//! `CLUSTER_FAULT_ROUNDS=N` repeats the three kills N times (the suite runs one round);
//! `CLUSTER_FAULT_LOG=<filter>` shows the instances' log.

use anyhow::{bail, ensure, Context as _, Result};
use async_nats::jetstream;
use natster_global::contract::{
    Envelope, ShareSummary, MIN_SEQ_HEADER, MSG_ID_HEADER, OWN_RECORD_SUBJECT,
};
use natster_global::model::AccountRecord;
use natster_global::service::{GlobalService, RunnerConfig, ServiceConfig, StoreConfig};
use natster_global::test_util::{
    Accounts, Catalogs, Projection, EVENTS_STREAM, SHARE_FEED_CONSUMER,
};
use natster_global::tooling::bootstrap::{World, NATSTER, SYS};
use natster_testkit::{
    dump_bucket, events_last_seq, expected_records, init_data, metric_value, read_events, seq_of,
    Cluster, FeedReader, TestCertificates,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Writes must flow again within this long of a kill (DESIGN §6)...
const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// ...or within this long of the log having a leader again, when the servers took longer to
/// elect one: the election is nats-server's (a follower campaigns 4–9 s after its leader went
/// quiet, again after a split vote), resuming once there is a leader is the service's.
const AFTER_ELECTION_BOUND: Duration = Duration::from_secs(3);
/// Longer than this without a leader for the log is a broken cluster, not a slow election.
const ELECTION_LIMIT: Duration = Duration::from_secs(40);
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
    /// Requests acknowledged after at least one failed attempt (sent again under their id).
    retried: usize,
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
        let mut attempts_failed = 0;
        let envelope = answered(&client, "events.put", Some(&id), None, &body, |why| {
            attempts_failed += 1;
            let mut outcome = outcome.lock().expect("outcome lock");
            outcome.failed_at.push((Instant::now(), why));
        })
        .await?;
        ensure!(
            envelope.code == 200,
            "{me}: request {id} ({event_type} {name}) answered {envelope:?}"
        );
        let mut record = outcome.lock().expect("outcome lock");
        record.acked.push((id, seq_of(&envelope)?));
        record.acked_at.push(Instant::now());
        record.retried += usize::from(attempts_failed > 0);
        drop(record);
        shared[name] = !shared[name];
    }
    unreachable!("the loop only ends by returning")
}

/// Sends `natster.global.<op>` (with `Nats-Msg-Id: msg_id` and `Natster-Min-Seq: min_seq`
/// when given) until it is answered with anything but a 503, as a client that retries exactly
/// would: again under the same id after a 503, a timeout or no responders (each told to
/// `failed`), for at most a minute.
async fn answered(
    client: &async_nats::Client,
    op: &str,
    msg_id: Option<&str>,
    min_seq: Option<u64>,
    body: &[u8],
    mut failed: impl FnMut(String),
) -> Result<Envelope> {
    let started = Instant::now();
    loop {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = msg_id {
            headers.insert(MSG_ID_HEADER, id);
        }
        if let Some(seq) = min_seq {
            headers.insert(MIN_SEQ_HEADER, seq.to_string().as_str());
        }
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(body.to_vec().into())
            .timeout(Some(Duration::from_secs(2)));
        let reply = client
            .send_request(format!("natster.global.{op}"), request)
            .await;
        let failure = match reply {
            Ok(message) => {
                let envelope: Envelope = serde_json::from_slice(&message.payload)
                    .with_context(|| format!("{op} reply is not an envelope"))?;
                if envelope.code != 503 {
                    return Ok(envelope);
                }
                envelope.error.unwrap_or_default()
            }
            Err(error) => error.to_string(),
        };
        failed(failure.clone());
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "{op} {msg_id:?} not answered within a minute; the last attempt: {failure}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Which node a phase kills.
#[derive(Debug, Clone, Copy)]
#[allow(clippy::enum_variant_names)] // each names whose leader is killed
enum Victim {
    EventsStreamLeader,
    MetaLeader,
    AccountsBucketLeader,
}

/// How long a restarted node's replica of one stream may take to be current again. Usually
/// well under a second; once, on a loaded CI machine, the online stream's replica on the
/// restarted node stayed one entry behind its leader, unheard from for 37 s, past the 30 s
/// this was: nats-server's business, but the next kill must wait for it.
const REPLICAS_CURRENT_WITHIN: Duration = Duration::from_secs(90);

/// A world of [`USERS`] served by three nodes run from the shipped cluster configs (client
/// TLS, route mTLS), with a JetStream context of the service account and a system-account
/// client to ask who leads what.
struct Fixture {
    cluster: Cluster,
    world: World,
    js: jetstream::Context,
    sys: async_nats::Client,
    outcomes: Vec<Arc<Mutex<Outcome>>>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let users: Vec<String> = USERS.iter().map(|u| u.to_string()).collect();
        let world = World::generate(&dir.path().join("world"), &users)?;
        world.write(false)?;
        let tls_dir = dir.path().join("tls");
        std::fs::create_dir_all(&tls_dir)?;
        let tls = TestCertificates::make(&tls_dir)?;
        let cluster = Cluster::start_tls(&world, &tls).await?;
        let js = jetstream::new(
            cluster
                .connect(&world.creds_path(NATSTER), "check", 0)
                .await?,
        );
        let sys = cluster.connect(&world.creds_path(SYS), "sys", 1).await?;
        Ok(Fixture {
            cluster,
            world,
            js,
            sys,
            outcomes: Vec::new(),
            _dir: dir,
        })
    }

    /// Connects each of [`USERS`] to its own node (the `i`-th user to node `i`, failing over to
    /// the others) and initialises its account.
    async fn initialised_accounts(&self) -> Result<Vec<async_nats::Client>> {
        let mut clients = Vec::new();
        for (node, user) in USERS.iter().enumerate() {
            let client = self.connect(user, node).await?;
            let key = self.world.key(user)?;
            // `answered` retries "no responders": the instances' subscriptions reach the
            // other nodes over the routes a moment after they started.
            let body = serde_json::to_vec(&serde_json::json!({
                "catalog": "none", "target": "none", "event_type": "natster_initialized",
                "data": init_data(&key),
            }))?;
            seq_of(&answered(&client, "events.put", None, None, &body, |_| {}).await?)?;
            clients.push(client);
        }
        Ok(clients)
    }

    /// Connects as `user` to node `node` first.
    async fn connect(&self, user: &str, node: usize) -> Result<async_nats::Client> {
        self.cluster
            .connect(&self.world.creds_path(user), user, node)
            .await
    }

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

    /// How long after `killed` the log had a leader on a node other than `node` (the one
    /// killed): at once when `node` did not lead it.
    async fn log_led_again(&self, node: usize, killed: Instant) -> Result<Duration> {
        loop {
            let probe = self
                .cluster
                .stream_leader(&self.js, EVENTS_STREAM, Duration::from_secs(1))
                .await;
            if matches!(probe, Ok(leader) if leader != node) {
                return Ok(killed.elapsed());
            }
            ensure!(
                killed.elapsed() < ELECTION_LIMIT,
                "the log had no leader {ELECTION_LIMIT:?} after n{node} was killed: {probe:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// When writes had flowed again for [`SETTLED`] after `since`: the first acknowledgement
    /// after the last failure, which must come within `bound` of `since`. Waits at most
    /// `bound` plus the settling time and a margin.
    async fn recovered_after(&self, since: Instant, bound: Duration) -> Result<Duration> {
        let deadline = since + bound + SETTLED + Duration::from_secs(5);
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
                        recovery <= bound,
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
    /// leader and all three replicas current: a restarted node has caught up. Each stream gets
    /// [`REPLICAS_CURRENT_WITHIN`].
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
                .wait_replicas_current(&self.js, &name, REPLICAS_CURRENT_WITHIN)
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

/// A debugging aid: with `CLUSTER_FAULT_LOG=<filter>`, the instances' log on stderr.
fn log_when_asked() {
    if let Ok(filter) = std::env::var("CLUSTER_FAULT_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_loss_during_writes_loses_nothing_and_writes_resume_within_10s() -> Result<()> {
    log_when_asked();
    let mut fixture = Fixture::start().await?;
    let mut services = Vec::new();
    for node in [0, 1] {
        services.push(start_instance(&fixture, node).await?);
    }
    let stop = CancellationToken::new();

    let writers = start_writers(&mut fixture, &stop).await?;

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
            fixture
                .recovered_after(Instant::now(), RECOVERY_BOUND)
                .await?;
            let node = fixture.victim(victim).await?;
            let readiness = watch_readiness(&services);
            let killed = Instant::now();
            fixture.cluster.kill(node);
            let context = || format!("round {round}: killed n{node} ({victim:?})");
            let elected = fixture
                .log_led_again(node, killed)
                .await
                .with_context(context)?;
            let recovery = fixture
                .recovered_after(killed, RECOVERY_BOUND.max(elected + AFTER_ELECTION_BOUND))
                .await
                .with_context(context)?;
            eprintln!("round {round}: killed n{node} ({victim:?}); the log had a leader after {elected:?}, writes flowed again after {recovery:?}");
            if matches!(victim, Victim::EventsStreamLeader) {
                // While the log had no leader no instance could write, and each said so.
                let seen = readiness.not_ready();
                for instance in 0..services.len() {
                    let reason = seen.iter().find(|(i, _)| *i == instance);
                    assert!(
                        reason.is_some(),
                        "instance {instance} stayed ready while the log had no leader"
                    );
                }
                eprintln!("not ready meanwhile: {:?}", seen.first());
            }
            readiness.stop();
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

/// Every instance's readiness, asked every 100 ms until stopped.
struct ReadinessWatch {
    /// (instance, reason) of every "not ready" answer.
    not_ready: Arc<Mutex<Vec<(usize, String)>>>,
    stop: CancellationToken,
}

impl ReadinessWatch {
    fn not_ready(&self) -> Vec<(usize, String)> {
        self.not_ready.lock().expect("readiness lock").clone()
    }

    fn stop(self) {
        self.stop.cancel();
    }
}

fn watch_readiness(services: &[GlobalService]) -> ReadinessWatch {
    let not_ready = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    for (instance, service) in services.iter().enumerate() {
        let telemetry = service.telemetry().clone();
        let (not_ready, stop) = (not_ready.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let readiness = telemetry.refresh().await;
                if !readiness.ready {
                    let reason = readiness.reason.unwrap_or_default();
                    not_ready
                        .lock()
                        .expect("readiness lock")
                        .push((instance, reason));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    ReadinessWatch { not_ready, stop }
}

/// Connects each account to its own node (failing over to the others), initialises it, and
/// starts its writer ([`write_steadily`], sharing with the next account) until `stop`.
async fn start_writers(
    fixture: &mut Fixture,
    stop: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<Result<()>>>> {
    let mut writers = Vec::new();
    let clients = fixture.initialised_accounts().await?;
    for ((node, user), client) in USERS.iter().enumerate().zip(clients) {
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        fixture.outcomes.push(outcome.clone());
        let target = fixture.world.key(USERS[(node + 1) % USERS.len()])?;
        writers.push(tokio::spawn(write_steadily(
            client,
            user,
            target,
            stop.clone(),
            outcome,
        )));
    }
    Ok(writers)
}

/// An instance connected to node `node` first, failing over to the others; R3 resources.
async fn start_instance(fixture: &Fixture, node: usize) -> Result<GlobalService> {
    let client = fixture
        .cluster
        .connect(
            &fixture.world.creds_path(NATSTER),
            &format!("natster-global-{node}"),
            node,
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
    let (mut acked, mut retried) = (0, 0);
    for (user, outcome) in USERS.iter().zip(&fixture.outcomes) {
        let key = fixture.world.key(user)?;
        let outcome = outcome.lock().expect("outcome lock");
        retried += outcome.retried;
        for (id, seq) in &outcome.acked {
            let stored = by_id.get(&format!("{key}:{id}"));
            assert_eq!(
                stored.map(Vec::as_slice),
                Some(&[*seq][..]),
                "{user}'s acknowledged request {id} (seq {seq})"
            );
            acked += 1;
        }
    }
    eprintln!(
        "{acked} acknowledged writes ({retried} after a failed attempt, sent again under the same id), each in the log once; {last} events in all"
    );
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

/// Read-your-writes across nodes (issue 17 point 3): an account on one node shares a catalog
/// with an account on another, which at once asks `my.shares` with the write's sequence as
/// `Natster-Min-Seq`; 150 such pairs over all three nodes while a follower of the accounts
/// bucket is killed and, half-way, restarts and catches up. A read may be refused (503) and
/// retried, but every answer holds its write. Own-record reads and feeds work on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_with_min_seq_see_their_write_whichever_node_and_replica() -> Result<()> {
    const PAIRS: usize = 150;
    log_when_asked();
    let mut fixture = Fixture::start().await?;
    let services = vec![
        start_instance(&fixture, 0).await?,
        start_instance(&fixture, 1).await?,
    ];
    let clients = fixture.initialised_accounts().await?;
    let mut feeds = Vec::new();
    for client in &clients {
        feeds.push(FeedReader::open(client).await?);
    }
    let keys: Vec<String> = USERS
        .iter()
        .map(|u| fixture.world.key(u))
        .collect::<Result<_, _>>()?;

    // A follower of the accounts bucket: neither its leader nor the log's, so the writes go on.
    let bucket = format!("KV_{}", Accounts::BUCKET);
    let within = Duration::from_secs(20);
    let bucket_leader = fixture
        .cluster
        .stream_leader(&fixture.js, &bucket, within)
        .await?;
    let events_leader = fixture
        .cluster
        .stream_leader(&fixture.js, EVENTS_STREAM, within)
        .await?;
    let follower = (0..3)
        .find(|&n| n != bucket_leader && n != events_leader)
        .unwrap_or((bucket_leader + 1) % 3);
    fixture.cluster.kill(follower);

    let mut refused = 0;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..PAIRS {
        if i == PAIRS / 2 {
            fixture.cluster.restart(follower).await?;
        }
        let (writer, reader) = (i % 3, (i + 1) % 3);
        let catalog = format!("r{i}");
        let body = serde_json::to_vec(&serde_json::json!({
            "catalog": catalog, "target": keys[reader], "event_type": "catalog_shared",
        }))?;
        let id = format!("ryw{i}");
        let put = answered(
            &clients[writer],
            "events.put",
            Some(&id),
            None,
            &body,
            |_| {},
        )
        .await?;
        let seq = seq_of(&put)?;
        let shares = answered(&clients[reader], "my.shares", None, Some(seq), b"", |why| {
            refused += 1;
            *reasons
                .entry(why.split(" sequence").next().unwrap_or("").to_string())
                .or_insert(0) += 1;
        })
        .await?;
        ensure!(shares.code == 200, "my.shares answered {shares:?}");
        let shares: Vec<ShareSummary> = serde_json::from_value(shares.data)?;
        let seen = shares
            .iter()
            .any(|s| s.from_account == keys[writer] && s.catalog == catalog);
        assert!(
            seen,
            "pair {i}: {} read at Min-Seq {seq} without {}'s share {catalog} (node {reader} reading, n{follower} {})",
            USERS[reader],
            USERS[writer],
            if i < PAIRS / 2 { "down" } else { "restarted" },
        );
    }
    eprintln!("{PAIRS} write-then-read pairs, each read saw its write ({refused} reads refused and retried: {reasons:?})");

    // Own-record reads (a direct get through the import) and feeds, from every node, once
    // the cluster is whole again: share notices come through a durable consumer of the log,
    // which after the node's return can be without a leader (and the JetStream API slow to
    // answer) for some seconds; its unacknowledged events then come again.
    fixture.all_current().await?;
    for (node, client) in clients.iter().enumerate() {
        let reply = client
            .request(OWN_RECORD_SUBJECT, bytes::Bytes::new())
            .await?;
        let record: AccountRecord = serde_json::from_slice(&reply.payload)
            .with_context(|| format!("{}'s own record on n{node}", USERS[node]))?;
        assert_eq!(record.account_key, keys[node]);
        assert!(!record.in_shares.is_empty() && !record.out_shares.is_empty());
        // Every share this account was party to is announced to it (at least once); a client
        // of the node that was down missed what was published while it was away (core NATS),
        // so it only has to hear one.
        let parties: BTreeSet<String> = (0..PAIRS)
            .filter(|i| node == i % 3 || node == (i + 1) % 3)
            .map(|i| format!("r{i}"))
            .collect();
        let wanted = if node == follower { 1 } else { parties.len() };
        if let Err(error) = hear_shares(&mut feeds[node], &parties, wanted).await {
            let consumer = share_feed_consumer(&fixture.js).await;
            bail!(
                "{}'s feed on n{node} (n{follower} was down): {error:#}; the share feed's consumer: {consumer}",
                USERS[node]
            );
        }
    }
    for service in services {
        service.stop().await?;
    }
    Ok(())
}

/// Reads `feed` until it has announced `wanted` of the shares of `catalogs`, within 30 s.
async fn hear_shares(
    feed: &mut FeedReader,
    catalogs: &BTreeSet<String>,
    wanted: usize,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut heard = BTreeSet::new();
    while heard.len() < wanted {
        let left = deadline.saturating_duration_since(Instant::now());
        let (kind, notice) = feed
            .next_notice(left)
            .await
            .with_context(|| format!("{} of {wanted} shares announced", heard.len()))?;
        ensure!(kind == "catalog_shared", "a {kind} notice: {notice}");
        let catalog = notice["catalog"].as_str().unwrap_or_default();
        ensure!(
            catalogs.contains(catalog),
            "a notice of another's share: {notice}"
        );
        heard.insert(catalog.to_string());
    }
    Ok(())
}

/// The share feed's durable consumer as the server describes it, or why it cannot be read.
async fn share_feed_consumer(js: &jetstream::Context) -> String {
    let info = async {
        let stream = js.get_stream(EVENTS_STREAM).await?;
        let mut consumer: jetstream::consumer::PullConsumer = stream
            .get_consumer(SHARE_FEED_CONSUMER)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::Ok(consumer.info().await?.clone())
    };
    match tokio::time::timeout(Duration::from_secs(10), info).await {
        Ok(Ok(info)) => format!("{info:?}"),
        Ok(Err(error)) => format!("unreadable: {error:#}"),
        Err(_) => "unreadable: no answer in 10 s".into(),
    }
}

/// Rolling restarts under steady writes that retry exactly (issue 17 points 4 and 5): the two
/// service instances one by one (graceful stop, start), then the three nodes one by one
/// (SIGTERM, start, caught up), then one node loses its store and comes back empty. No
/// acknowledged request is lost or applied twice, every node catches up (the empty one too),
/// the projections reach the end of the log and equal a clean rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restarts_and_an_emptied_node_lose_and_repeat_nothing() -> Result<()> {
    let mut fixture = Fixture::start().await?;
    let mut services = vec![
        Some(start_instance(&fixture, 0).await?),
        Some(start_instance(&fixture, 1).await?),
    ];
    let stop = CancellationToken::new();
    let writers = start_writers(&mut fixture, &stop).await?;

    for (index, service) in services.iter_mut().enumerate() {
        fixture
            .recovered_after(Instant::now(), RECOVERY_BOUND)
            .await?;
        let restarted = Instant::now();
        service.take().context("instance")?.stop().await?;
        *service = Some(start_instance(&fixture, index).await?);
        let recovery = fixture.recovered_after(restarted, RECOVERY_BOUND).await?;
        eprintln!("instance {index} restarted; writes flowed again after {recovery:?}");
    }
    for node in 0..3 {
        fixture
            .recovered_after(Instant::now(), RECOVERY_BOUND)
            .await?;
        let restarted = Instant::now();
        fixture.cluster.nodes[node]
            .stop(Duration::from_secs(10))
            .await;
        fixture.cluster.restart(node).await?;
        fixture.all_current().await?;
        let recovery = fixture.recovered_after(restarted, RECOVERY_BOUND).await?;
        eprintln!("n{node} restarted; writes flowed again after {recovery:?}");
    }
    fixture
        .recovered_after(Instant::now(), RECOVERY_BOUND)
        .await?;
    let emptied = Instant::now();
    fixture.cluster.restart_empty(2).await?;
    fixture.all_current().await?;
    let recovery = fixture.recovered_after(emptied, RECOVERY_BOUND).await?;
    eprintln!("n2 came back empty and caught up; writes flowed again after {recovery:?}");

    stop.cancel();
    for writer in writers {
        writer.await??;
    }
    verify_exactly_once(&fixture).await?;
    verify_projections(&fixture).await?;
    for service in services.into_iter().flatten() {
        service.stop().await?;
    }
    Ok(())
}

/// The instances' in-memory views (account records, online state) follow their buckets
/// through node loss (issue 16 point 5): each node is killed in turn, so whichever node held
/// an instance's watch of a bucket is lost at some point; after each kill a new share and a
/// heartbeat must show in `my.shares` read without `Natster-Min-Seq` (from the views) on
/// whichever instance answers, and by the end every instance has rebuilt both views.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn views_follow_their_buckets_through_node_loss() -> Result<()> {
    let mut fixture = Fixture::start().await?;
    let services = vec![
        start_instance(&fixture, 0).await?,
        start_instance(&fixture, 1).await?,
    ];
    // alice shares with bob, who reads; both live on the node that is not killed first.
    let clients = fixture.initialised_accounts().await?;
    let (alice, bob) = (&clients[0], &clients[1]);
    let (a, b) = (fixture.world.key("alice")?, fixture.world.key("bob")?);
    for node in 0..3 {
        fixture.cluster.kill(node);
        let catalog = format!("v{node}");
        let share = serde_json::to_vec(&serde_json::json!({
            "catalog": catalog, "target": b, "event_type": "catalog_shared",
        }))?;
        let put = answered(alice, "events.put", Some(&catalog), None, &share, |_| {}).await?;
        seq_of(&put)?;
        let beat = serde_json::to_vec(&serde_json::json!({
            "catalog": catalog, "account_key": a, "revision": 1,
        }))?;
        let beat = answered(alice, "heartbeats.put", None, None, &beat, |_| {}).await?;
        ensure!(beat.code == 200, "heartbeat answered {beat:?}");
        // Ten answers in a row (from either instance) show the share, online.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut in_a_row = 0;
        while in_a_row < 10 {
            let reply = answered(bob, "my.shares", None, None, b"", |_| {}).await?;
            let shares: Vec<ShareSummary> = serde_json::from_value(reply.data)?;
            let online = shares
                .iter()
                .any(|s| s.from_account == a && s.catalog == catalog && s.catalog_online);
            in_a_row = if online { in_a_row + 1 } else { 0 };
            ensure!(
                Instant::now() < deadline,
                "n{node} killed: bob's my.shares never showed {catalog} online for long: {shares:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("n{node} killed: the views show the share and heartbeat made after it");
        fixture.cluster.restart(node).await?;
        fixture.all_current().await?;
    }
    for (instance, service) in services.iter().enumerate() {
        let metrics = service.telemetry().encode();
        for series in [
            "natster_account_cache_rebuilds_total",
            "natster_online_view_rebuilds_total",
        ] {
            let rebuilds = metric_value(&metrics, series).unwrap_or(0.0);
            eprintln!("instance {instance}: {series} {rebuilds}");
            assert!(
                rebuilds >= 1.0,
                "instance {instance} never rebuilt: {series}"
            );
        }
    }
    for service in services {
        service.stop().await?;
    }
    Ok(())
}

//! Noisy neighbour: 100 accounts run a normal mix of requests at a steady rate while one more
//! account pushes every limit at once, against the same run without it. Default settings.
//!
//! The quiet mix, per account, 20 requests/s (`QUIET_RATE`) on a fixed schedule (open loop: a slow reply
//! never delays the next request): 40 % `whoami`, 20 % `stats`, 10 % `my.shares`, 20 %
//! `heartbeats.put` of its own catalog, 10 % `events.put` (a share, then its unshare).
//! The noisy account, at the same time: `events.put` shares at 1 000/s with its shares at the
//! per-account cap (10× its write rate, every one a 409 or a 429), heartbeats published without
//! a reply at 2 000/s for 2 000 catalog names (40× its heartbeat budget, twice the cap on
//! catalogs online), and 1 500 `whoami` waiting on a `Natster-Min-Seq` the log does not hold,
//! sent again as soon as they are answered.
//!
//! `NOISY=writes,heartbeats,waits` picks the parts of the noisy load (all by default).
//! Rounds (`ROUNDS`, 5, of `WINDOW_SECS`, 15 s) alternate quiet-only and with the noisy
//! account; each side's median is reported with the ratios. `cargo bench --bench noisy_neighbour` runs the full measurement;
//! without `--bench` (as `cargo test --all-targets` runs it) a short smoke run checks that
//! every quiet request succeeds with the noisy account running.

/// The allocator the product binary uses (see `src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{ensure, Context, Result};
use natster_global::contract::Envelope;
use natster_global::service::{GlobalService, ServiceConfig};
use natster_global::tooling::bootstrap::NATSTER;
use natster_testkit::{cpu_seconds, init_data, put_event, seq_of, TestWorld};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const NOISY_CATALOGS: usize = 10;
const NOISY_WRITES_PER_SECOND: u64 = 1_000;
const NOISY_HEARTBEATS_PER_SECOND: u64 = 2_000;
const NOISY_HEARTBEAT_NAMES: usize = 2_000;
const NOISY_WAITS: usize = 1_500;

struct Sizes {
    quiet: usize,
    /// Requests per second of each quiet account.
    rate: u64,
    window: Duration,
    rounds: usize,
}

/// `name` from the environment, else `default`.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One quiet account.
struct Quiet {
    client: async_nats::Client,
    key: String,
    catalog: String,
    /// The account its share goes to and comes back from.
    other: String,
}

/// What the quiet accounts saw in one round.
struct QuietRun {
    ops: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// Latencies by op.
    by_op: std::collections::BTreeMap<&'static str, Vec<Duration>>,
    cpu_us_per_op: (f64, f64),
}

impl QuietRun {
    fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

fn percentile(latencies: &[Duration], p: f64) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

impl From<[u64; 6]> for NoisyCounts {
    fn from([sent, ok, conflict, limited, unavailable, other]: [u64; 6]) -> Self {
        Self {
            sent: sent.into(),
            ok: ok.into(),
            conflict: conflict.into(),
            limited: limited.into(),
            unavailable: unavailable.into(),
            other: other.into(),
        }
    }
}

/// What the noisy account got back, by reply code.
#[derive(Default)]
struct NoisyCounts {
    sent: AtomicU64,
    ok: AtomicU64,
    conflict: AtomicU64,
    limited: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
}

impl NoisyCounts {
    fn snapshot(&self) -> [u64; 6] {
        [
            &self.sent,
            &self.ok,
            &self.conflict,
            &self.limited,
            &self.unavailable,
            &self.other,
        ]
        .map(|count| count.load(Ordering::Relaxed))
    }

    fn count(&self, reply: &Result<async_nats::Message, async_nats::RequestError>) {
        let code = reply
            .as_ref()
            .ok()
            .and_then(|m| serde_json::from_slice::<Envelope>(&m.payload).ok())
            .map_or(0, |e| e.code);
        let slot = match code {
            200 => &self.ok,
            409 => &self.conflict,
            429 => &self.limited,
            503 => &self.unavailable,
            _ => &self.other,
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

async fn request(
    client: &async_nats::Client,
    op: &str,
    body: Vec<u8>,
) -> Result<Envelope, anyhow::Error> {
    let reply = client
        .request(format!("natster.global.{op}"), body.into())
        .await?;
    Ok(serde_json::from_slice(&reply.payload)?)
}

/// The `n`th request of a quiet account's cycle; `shared` is whether its share is active.
fn quiet_op(quiet: &Quiet, n: u64, shared: bool) -> (&'static str, Vec<u8>) {
    let heartbeat = || {
        serde_json::to_vec(
            &json!({"catalog": quiet.catalog, "account_key": quiet.key, "revision": n}),
        )
    };
    let write = || {
        let event_type = if shared {
            "catalog_unshared"
        } else {
            "catalog_shared"
        };
        serde_json::to_vec(&json!({"catalog": quiet.catalog, "target": quiet.other,
            "event_type": event_type, "data": null}))
    };
    match n % 10 {
        0 | 2 | 5 | 9 => ("whoami", vec![]),
        1 | 7 => ("stats", vec![]),
        4 => ("my.shares", vec![]),
        3 | 6 => ("heartbeats.put", heartbeat().expect("json")),
        _ => ("events.put", write().expect("json")),
    }
}

/// Runs every quiet account's schedule for `window`; waits for the last reply.
async fn quiet_round(
    rate: u64,
    quiet: &Arc<Vec<Quiet>>,
    shared: &Arc<Vec<std::sync::atomic::AtomicBool>>,
    window: Duration,
    server_pid: &str,
) -> Result<QuietRun> {
    let per_account = (window.as_secs_f64() * rate as f64) as u64;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let (cpu_here, cpu_server) = (cpu_seconds("self")?, cpu_seconds(server_pid)?);
    let started = Instant::now();
    let mut accounts = Vec::new();
    for index in 0..quiet.len() {
        let (quiet, shared) = (quiet.clone(), shared.clone());
        accounts.push(tokio::spawn(async move {
            // Accounts start spread over one period, as independent clients would.
            let offset = period.mul_f64(index as f64 / quiet.len() as f64);
            let mut requests = Vec::new();
            for n in 0..per_account {
                tokio::time::sleep_until((started + offset + period * n as u32).into()).await;
                let is_write = n % 10 == 8;
                let active = shared[index].load(Ordering::Relaxed);
                if is_write {
                    shared[index].store(!active, Ordering::Relaxed);
                }
                let (op, body) = quiet_op(&quiet[index], n, active);
                let client = quiet[index].client.clone();
                requests.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let code = request(&client, op, body).await.map_or(0, |e| e.code);
                    (op, sent.elapsed(), code == 200)
                }));
            }
            let mut out = Vec::new();
            for request in requests {
                out.push(request.await?);
            }
            anyhow::Ok(out)
        }));
    }
    let mut latencies = Vec::new();
    let mut by_op = std::collections::BTreeMap::<&'static str, Vec<Duration>>::new();
    let mut failed = 0;
    for account in accounts {
        for (op, latency, ok) in account.await?? {
            latencies.push(latency);
            by_op.entry(op).or_default().push(latency);
            failed += usize::from(!ok);
        }
    }
    let elapsed = started.elapsed();
    let ops = latencies.len();
    let per_op = |seconds: f64| seconds * 1e6 / ops as f64;
    Ok(QuietRun {
        ops,
        failed,
        elapsed,
        latencies,
        by_op,
        cpu_us_per_op: (
            per_op(cpu_seconds("self")? - cpu_here),
            per_op(cpu_seconds(server_pid)? - cpu_server),
        ),
    })
}

/// Set in the environment of the noisy account's own process (see [`NoisyProcess`]).
const NOISY_CHILD: &str = "NATSTER_BENCH_NOISY_CHILD";

/// The noisy account's load in a process of its own (this bench binary again), started under
/// `nice -n NOISY_NICE` (19 by default): as a client on another machine would, it takes cores
/// from the service only when they are idle, while nats-server and the service still receive,
/// route and refuse everything it sends. `NOISY_NICE=0` runs it at the service's priority.
struct NoisyProcess {
    child: std::process::Child,
    pid: String,
    cpu_at_start: f64,
}

impl NoisyProcess {
    fn start(url: &str, creds: &std::path::Path, key: &str, targets: &[String]) -> Result<Self> {
        let niceness = env_or("NOISY_NICE", 19);
        let exe = std::env::current_exe()?;
        let mut command = if niceness == 0 {
            std::process::Command::new(&exe)
        } else {
            let mut nice = std::process::Command::new("nice");
            nice.arg("-n").arg(niceness.to_string()).arg(&exe);
            nice
        };
        let mut child = command
            .env(NOISY_CHILD, "1")
            .env("NOISY_URL", url)
            .env("NOISY_CREDS", creds)
            .env("NOISY_KEY", key)
            .env("NOISY_TARGETS", targets.join(","))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the noisy account's process")?;
        let pid = child.id().to_string();
        // `nice` execs the bench binary, so the pid is the noisy process's own.
        let cpu_at_start = cpu_seconds(&pid).unwrap_or(0.0);
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().context("stdout")?),
            &mut ready,
        )?;
        ensure!(
            ready.trim() == "ready",
            "the noisy process did not start: {ready:?}"
        );
        Ok(Self {
            child,
            pid,
            cpu_at_start,
        })
    }

    /// Stops the load (closing its stdin) and returns its counts and the CPU seconds it used.
    fn stop(mut self) -> Result<(NoisyCounts, f64)> {
        let cpu = cpu_seconds(&self.pid)? - self.cpu_at_start;
        drop(self.child.stdin.take());
        let output = self.child.wait_with_output()?;
        ensure!(
            output.status.success(),
            "the noisy process failed: {}",
            output.status
        );
        let counts: [u64; 6] =
            serde_json::from_slice(&output.stdout).context("the noisy process's counts")?;
        Ok((NoisyCounts::from(counts), cpu))
    }
}

/// The noisy process: runs the load on one thread until its stdin closes, then prints its counts.
fn noisy_child() -> Result<()> {
    let var = |name: &str| std::env::var(name).with_context(|| format!("{name} not set"));
    let (url, creds, key) = (var("NOISY_URL")?, var("NOISY_CREDS")?, var("NOISY_KEY")?);
    let targets: Arc<Vec<String>> =
        Arc::new(var("NOISY_TARGETS")?.split(',').map(String::from).collect());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let counts = Arc::new(NoisyCounts::default());
    runtime.block_on(async {
        let client = natster_testkit::connect_creds(&url, creds.as_ref(), "noisy").await?;
        let stop = CancellationToken::new();
        start_noisy(client, key, targets, counts.clone(), stop.clone());
        println!("ready");
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
            .await??;
        stop.cancel();
        anyhow::Ok(())
    })?;
    println!("{}", serde_json::to_string(&counts.snapshot())?);
    Ok(())
}

/// Starts the noisy account's load; it runs until `stop` is cancelled.
fn start_noisy(
    client: async_nats::Client,
    key: String,
    targets: Arc<Vec<String>>,
    counts: Arc<NoisyCounts>,
    stop: CancellationToken,
) {
    // `NOISY=writes,heartbeats,waits` runs only those parts (all by default).
    let parts = std::env::var("NOISY").unwrap_or_else(|_| "writes,heartbeats,waits".into());
    let runs = |part: &str| parts.split(',').any(|p| p == part);
    // Shares of names beyond the cap, open loop.
    if runs("writes") {
        let (client, counts, stop, targets) = (
            client.clone(),
            counts.clone(),
            stop.clone(),
            targets.clone(),
        );
        tokio::spawn(async move {
            let mut ticks =
                tokio::time::interval(Duration::from_secs(1) / NOISY_WRITES_PER_SECOND as u32);
            for n in 0u64.. {
                tokio::select! { _ = stop.cancelled() => return, _ = ticks.tick() => {} }
                let body = serde_json::to_vec(&json!({"catalog": format!("x{n}"),
                    "target": targets[n as usize % targets.len()], "event_type": "catalog_shared", "data": null}))
                    .expect("json");
                let (client, counts) = (client.clone(), counts.clone());
                counts.sent.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    counts.count(
                        &client
                            .request("natster.global.events.put", body.into())
                            .await,
                    );
                });
            }
        });
    }
    // Heartbeats without a reply subject, as catalog servers send them, open loop.
    if runs("heartbeats") {
        let (client, counts, stop, key) =
            (client.clone(), counts.clone(), stop.clone(), key.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(1));
            let per_tick = NOISY_HEARTBEATS_PER_SECOND / 1_000;
            let mut n = 0u64;
            loop {
                tokio::select! { _ = stop.cancelled() => return, _ = ticks.tick() => {} }
                for _ in 0..per_tick {
                    let body = serde_json::to_vec(
                        &json!({"catalog": format!("h{}", n as usize % NOISY_HEARTBEAT_NAMES),
                        "account_key": key, "revision": n}),
                    )
                    .expect("json");
                    n += 1;
                    counts.sent.fetch_add(1, Ordering::Relaxed);
                    let _ = client
                        .publish("natster.global.heartbeats.put", body.into())
                        .await;
                }
            }
        });
    }
    // Reads waiting on a sequence the log does not hold, re-sent as soon as answered.
    for _ in 0..if runs("waits") { NOISY_WAITS } else { 0 } {
        let (client, counts, stop) = (client.clone(), counts.clone(), stop.clone());
        tokio::spawn(async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Natster-Min-Seq", "4611686018427387904");
            loop {
                counts.sent.fetch_add(1, Ordering::Relaxed);
                let reply = tokio::select! {
                    _ = stop.cancelled() => return,
                    reply = client.request_with_headers("natster.global.whoami", headers.clone(), "".into()) => reply,
                };
                counts.count(&reply);
            }
        });
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<()> {
    // As the binary runs (see its doc): the service is measured as shipped.
    natster_global::service::without_transparent_huge_pages();
    if std::env::var_os(NOISY_CHILD).is_some() {
        return noisy_child();
    }
    tokio::runtime::Runtime::new()?.block_on(bench())
}

async fn bench() -> Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            quiet: 100,
            rate: env_or("QUIET_RATE", 20),
            window: Duration::from_secs(env_or("WINDOW_SECS", 15)),
            rounds: env_or("ROUNDS", 5) as usize,
        }
    } else {
        Sizes {
            quiet: 5,
            rate: 20,
            window: Duration::from_secs(1),
            rounds: 1,
        }
    };
    let names: Vec<String> = (0..sizes.quiet)
        .map(|i| format!("q{i}"))
        .chain(["noisy".to_string()])
        .collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let tw = TestWorld::start_with(&name_refs, |_| Ok(())).await?;
    let server_pid = tw.server.pid().context("server pid")?.to_string();
    let service =
        GlobalService::start(tw.connect(NATSTER).await?, ServiceConfig::default()).await?;

    // Every account initialised; each quiet account owns a catalog; the noisy account shares
    // its catalogs with every quiet account (in full runs, 10 × 100: its per-account cap).
    let mut quiet = Vec::new();
    for i in 0..sizes.quiet {
        let client = tw.connect(&names[i]).await?;
        let key = tw.key(&names[i]);
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
        quiet.push(Quiet {
            client,
            key,
            catalog: format!("c{i}"),
            other: tw.key(&names[(i + 1) % sizes.quiet]),
        });
    }
    let noisy = tw.connect("noisy").await?;
    let noisy_key = tw.key("noisy");
    seq_of(
        &put_event(
            &noisy,
            "natster_initialized",
            "none",
            "none",
            init_data(&noisy_key),
        )
        .await?,
    )?;
    let targets: Arc<Vec<String>> = Arc::new(quiet.iter().map(|q| q.key.clone()).collect());
    let mut prefilled = 0;
    for catalog in 0..NOISY_CATALOGS {
        for target in targets.iter() {
            let body =
                serde_json::to_vec(&json!({"catalog": format!("n{catalog}"), "target": target,
                "event_type": "catalog_shared", "data": null}))?;
            loop {
                let reply = request(&noisy, "events.put", body.clone()).await?;
                if reply.code == 429 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                ensure!(reply.code == 200, "prefill: {reply:?}");
                prefilled += 1;
                break;
            }
        }
    }
    println!(
        "{} quiet accounts, the noisy one with {prefilled} active shares",
        sizes.quiet
    );
    let quiet = Arc::new(quiet);
    let shared: Arc<Vec<std::sync::atomic::AtomicBool>> = Arc::new(
        (0..sizes.quiet)
            .map(|_| std::sync::atomic::AtomicBool::new(false))
            .collect(),
    );

    let mut alone = Vec::new();
    let mut beside = Vec::new();
    let mut noisy_rates = Vec::new();
    for round in 0..sizes.rounds {
        let run = quiet_round(sizes.rate, &quiet, &shared, sizes.window, &server_pid).await?;
        println!(
            "round {round} quiet only: {:.0} ops/s, p99 {:?}, {} failed, CPU µs per op {:.0} here + {:.0} server",
            run.per_second(),
            run.percentile(0.99),
            run.failed,
            run.cpu_us_per_op.0,
            run.cpu_us_per_op.1,
        );
        alone.push(run);

        let noisy = NoisyProcess::start(
            &tw.server.url(),
            &tw.world.creds_path("noisy"),
            &noisy_key,
            &targets,
        )?;
        let started = Instant::now();
        let run = quiet_round(sizes.rate, &quiet, &shared, sizes.window, &server_pid).await?;
        let noisy_elapsed = started.elapsed();
        let (counts, noisy_cpu) = tokio::task::spawn_blocking(move || noisy.stop()).await??;
        let sent = counts.sent.load(Ordering::Relaxed);
        println!(
            "round {round} beside the noisy one: {:.0} ops/s, p99 {:?}, {} failed, CPU µs per op {:.0} here + {:.0} server; noisy sent {sent} ({:.0}/s, its client {:.2} cores): {} ok, {} 409, {} 429, {} 503, {} other/unanswered",
            run.per_second(), run.percentile(0.99), run.failed, run.cpu_us_per_op.0, run.cpu_us_per_op.1,
            sent as f64 / noisy_elapsed.as_secs_f64(),
            noisy_cpu / noisy_elapsed.as_secs_f64(),
            counts.ok.load(Ordering::Relaxed), counts.conflict.load(Ordering::Relaxed),
            counts.limited.load(Ordering::Relaxed), counts.unavailable.load(Ordering::Relaxed),
            counts.other.load(Ordering::Relaxed),
        );
        noisy_rates.push(sent as f64 / noisy_elapsed.as_secs_f64());
        beside.push(run);
        // Let the noisy account's last requests drain before the next quiet-only round.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for run in alone.iter().chain(&beside) {
        ensure!(run.failed == 0, "{} quiet requests failed", run.failed);
    }
    let stat =
        |runs: &[QuietRun], f: &dyn Fn(&QuietRun) -> f64| median(runs.iter().map(f).collect());
    let rate = |r: &QuietRun| r.per_second();
    let p50 = |r: &QuietRun| r.percentile(0.5).as_secs_f64() * 1e3;
    let p99 = |r: &QuietRun| r.percentile(0.99).as_secs_f64() * 1e3;
    let cpu = |r: &QuietRun| r.cpu_us_per_op.0 + r.cpu_us_per_op.1;
    println!();
    println!("| quiet accounts' requests (median of {}) | ops/s | p50 ms | p99 ms | CPU µs per quiet op |", sizes.rounds);
    println!("|---|---|---|---|---|");
    for (name, runs) in [("alone", &alone), ("beside the noisy account", &beside)] {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.0} |",
            stat(runs, &rate),
            stat(runs, &p50),
            stat(runs, &p99),
            stat(runs, &cpu)
        );
    }
    let ops: Vec<&'static str> = alone[0].by_op.keys().copied().collect();
    let op_p99 = |runs: &[QuietRun], op: &str| {
        median(
            runs.iter()
                .map(|r| percentile(&r.by_op[op], 0.99).as_secs_f64() * 1e3)
                .collect(),
        )
    };
    for op in ops {
        println!(
            "p99 of {op}: {:.2} ms alone, {:.2} ms beside",
            op_p99(&alone, op),
            op_p99(&beside, op)
        );
    }
    println!(
        "throughput alone / beside = {:.2}, p99 beside / alone = {:.2}, noisy account sent {:.0} requests/s",
        stat(&alone, &rate) / stat(&beside, &rate),
        stat(&beside, &p99) / stat(&alone, &p99),
        median(noisy_rates),
    );
    service.stop().await?;
    Ok(())
}

//! Scale: how start-up and memory grow with the length of the history. For each size, a log in
//! the original layout (`mixed_event_log`: accounts initialise, then share, unshare and import)
//! is published into `NATSTER_EVENTS` before the service starts; then the release binary runs
//! `serve` as an operator would, and the bench reports, from outside:
//!
//! - how long after start the endpoints answer (`$SRV.PING` as the service account);
//! - how long until the projections have caught up (`/readyz` 200 and every projection's lag
//!   zero in `/metrics`), and that rate against the raw ordered read of the same log in the
//!   same run (an ordered consumer decoding every event, before the service starts);
//! - the process's RSS then, and its peak;
//! - the decision-state snapshot: its size and how long writing it took (the first periodic
//!   write after catching up; the bench runs `--snapshot-interval 5s`);
//! - the projection runners' record caches then: bytes held and the share of lookups served
//!   from memory;
//! - the RSS under a mixed load (8 accounts, 64 requests in flight for 10 s: `whoami`,
//!   `my.shares`, `stats`, a share or unshare in 50), its peak sampled every 100 ms, and the
//!   load's rate;
//! - `projections rebuild` of the three event-log projections with the service stopped: its
//!   time, each projection's replay rate (events ÷ its share of the time) against the raw read,
//!   and that it found every record as the runners left it (none written or deleted);
//! - the same two times and the RSS after a restart (the read models already built, the
//!   decision state restored from the snapshot written at the stop);
//! - in a second table, the fastest the catch-up could have been on this machine, priced from
//!   the raw read and a plain KV put of every record the runners wrote, in the same run; then
//!   the same records written the service's way (chained creates, the account records
//!   republished), after the read and at the same time as a second read ([`ceiling`]).
//!
//! `SCALE_EVENTS=100000,1000000` picks the sizes (accounts are a tenth of the events unless
//! `SCALE_ACCOUNTS` says, catalog names a fifth unless `SCALE_CATALOGS` says);
//! `cargo bench --bench scale` runs 100 000 and 1 000 000 events; without `--bench` (as
//! `cargo test --all-targets` runs it) a smoke run of 2 000 events checks that it all works.
//! This is the baseline of the "cost must not grow with history" goals (DESIGN §4).

#[path = "scale/ceiling.rs"]
mod ceiling;

use anyhow::{ensure, Context, Result};
use ceiling::Ceiling;
use natster_global::test_util::Store;
use natster_global::tooling::bootstrap::NATSTER;
use natster_testkit::{costed, http_get, mixed_event_log, publish_log, TestWorld};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What one start of the service showed.
struct Start {
    answering: Duration,
    caught_up: Duration,
    rss_mib: f64,
    peak_mib: f64,
    /// Size (MiB) and write time of the first snapshot written after catching up.
    snapshot: Option<(f64, Duration)>,
    /// Record caches after catching up: MiB held, share of lookups that were hits, records
    /// written.
    cache: (f64, f64, f64),
    /// Under load: requests per second, highest RSS (MiB).
    load: Option<(f64, f64)>,
}

/// How long the load runs: 10 s in a full run, 2 s in the smoke run (whose `within` is a
/// minute).
fn load_for(within: Duration) -> Duration {
    if within > Duration::from_secs(60) {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(2)
    }
}

/// Accounts that put the load on the service.
const LOAD_USERS: [&str; 8] = ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"];
const LOAD_IN_FLIGHT: usize = 64;

/// The record caches in `metrics`: MiB held (all projections), the share of hits, and the
/// records the runners wrote.
fn cache_use(metrics: &str) -> (f64, f64, f64) {
    let sum = |prefix: &str, with: &str| -> f64 {
        (metrics.lines())
            .filter(|l| l.starts_with(prefix) && l.contains(with))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let bytes = sum("natster_projection_cache_size_bytes{", "");
    let lookups = "natster_projection_cache_lookups_total{";
    let (hits, misses) = (sum(lookups, "\"hit\""), sum(lookups, "\"miss\""));
    let all = hits + misses;
    (
        bytes / 1024.0 / 1024.0,
        if all > 0.0 { hits / all } else { 1.0 },
        sum("natster_projection_record_writes_total{", ""),
    )
}

/// A mixed load from [`LOAD_USERS`] for `duration` while the RSS of `pid` is sampled:
/// requests per second and the highest RSS (MiB) seen.
async fn under_load(tw: &TestWorld, pid: u32, duration: Duration) -> Result<(f64, f64)> {
    let mut users = Vec::new();
    for name in LOAD_USERS {
        let client = tw.connect(name).await?;
        let key = tw.key(name);
        natster_testkit::put_event(
            &client,
            "natster_initialized",
            "none",
            "none",
            natster_testkit::init_data(&key),
        )
        .await?;
        users.push((client, key));
    }
    let users = std::sync::Arc::new(users);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for worker in 0..LOAD_IN_FLIGHT {
        let (users, done) = (users.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = worker;
            while Instant::now() < deadline {
                let (client, _) = &users[n % users.len()];
                let other = &users[(n + 1) % users.len()].1;
                let catalog = format!("load{}", n % 7);
                let reply = match n % 50 {
                    0 => {
                        natster_testkit::put_event(
                            client,
                            "catalog_shared",
                            &catalog,
                            other,
                            serde_json::Value::Null,
                        )
                        .await
                    }
                    1 => {
                        natster_testkit::put_event(
                            client,
                            "catalog_unshared",
                            &catalog,
                            other,
                            serde_json::Value::Null,
                        )
                        .await
                    }
                    k if k < 21 => natster_testkit::call(client, "whoami", "", None).await,
                    k if k < 36 => natster_testkit::call(client, "my.shares", "", None).await,
                    _ => natster_testkit::call(client, "stats", "", None).await,
                };
                if reply.is_ok() {
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                n += LOAD_IN_FLIGHT;
            }
        }));
    }
    let started = Instant::now();
    let mut peak: f64 = 0.0;
    while Instant::now() < deadline {
        peak = peak.max(memory_mib(pid)?.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        task.await?;
    }
    let rate =
        done.load(std::sync::atomic::Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    Ok((rate, peak))
}

/// The value of the sample `series` in `metrics`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    natster_testkit::metric_value(metrics, series)
}

/// Waits until this instance has written a decision-state snapshot; the size of the last one
/// and the mean write time.
async fn first_snapshot(addr: std::net::SocketAddr, deadline: Instant) -> Result<(f64, Duration)> {
    loop {
        let metrics = http_get(addr, "/metrics").await?.1;
        if sample(&metrics, "natster_decision_snapshots_written_total").unwrap_or(0.0) >= 1.0 {
            let bytes = sample(&metrics, "natster_decision_snapshot_size_bytes").context("size")?;
            let took = sample(
                &metrics,
                "natster_decision_snapshot_write_duration_seconds_sum",
            )
            .context("write time")?;
            let writes = sample(
                &metrics,
                "natster_decision_snapshot_write_duration_seconds_count",
            )
            .context("writes")?;
            return Ok((
                bytes / 1024.0 / 1024.0,
                Duration::from_secs_f64(took / writes),
            ));
        }
        ensure!(Instant::now() < deadline, "no snapshot written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `VmRSS` and `VmHWM` of process `pid`, in MiB.
fn memory_mib(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} in /proc/{pid}/status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .context("a number")?
            .parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Whether every `natster_projection_lag_events` series in `metrics` is zero (and there are
/// some).
fn lags_are_zero(metrics: &str) -> bool {
    let lags: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("natster_projection_lag_events{"))
        .collect();
    !lags.is_empty() && lags.iter().all(|l| l.ends_with(" 0"))
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` and measures until it has caught up (at most `within`) and, if
/// `snapshot`, until it has written a snapshot.
async fn start(
    tw: &TestWorld,
    http_port: u16,
    within: Duration,
    snapshot: bool,
) -> Result<(Serve, Start)> {
    let started = Instant::now();
    // `SCALE_LOG=<file>`: the service's info log appended there (a debugging aid).
    let (filter, log) = match std::env::var_os("SCALE_LOG") {
        Some(path) => (
            "natster_global=info",
            Stdio::from(
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)?,
            ),
        ),
        None => ("warn", Stdio::null()),
    };
    let child = Command::new(service_binary())
        .args(["serve", "--nats-url", &tw.server.url(), "--creds"])
        .arg(tw.world.creds_path(NATSTER))
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .args(["--snapshot-interval", "5s"])
        .args(["--log-format", "text"])
        .env("RUST_LOG", filter)
        .env_remove("NATSTER_CONFIG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let serve = Serve(child);
    let probe = tw.connect(NATSTER).await?;
    let deadline = started + within;
    let answering = loop {
        let ping = tokio::time::timeout(
            Duration::from_millis(200),
            probe.request("$SRV.PING.natster-global", "".into()),
        )
        .await;
        if let Ok(Ok(_)) = ping {
            break started.elapsed();
        }
        ensure!(
            Instant::now() < deadline,
            "no $SRV.PING answer within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    // Caught up: ready, and every projection's lag is zero (ready alone allows a lag of up to
    // `--ready-max-lag` events).
    let caught_up = loop {
        let ready = matches!(http_get(addr, "/readyz").await, Ok((200, _)));
        if ready && lags_are_zero(&http_get(addr, "/metrics").await?.1) {
            break started.elapsed();
        }
        ensure!(Instant::now() < deadline, "not caught up within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (rss_mib, peak_mib) = memory_mib(serve.0.id())?;
    let cache = cache_use(&http_get(addr, "/metrics").await?.1);
    let (snapshot, load) = match snapshot {
        true => (
            Some(first_snapshot(addr, deadline).await?),
            Some(under_load(tw, serve.0.id(), load_for(within)).await?),
        ),
        false => (None, None),
    };
    Ok((
        serve,
        Start {
            answering,
            caught_up,
            rss_mib,
            peak_mib,
            snapshot,
            cache,
            load,
        },
    ))
}

/// Stops `serve` with SIGTERM and waits for it.
fn stop(mut serve: Serve) -> Result<()> {
    Command::new("kill")
        .args(["-TERM", &serve.0.id().to_string()])
        .status()?;
    let status = serve.0.wait()?;
    ensure!(status.success(), "serve exited with {status}");
    Ok(())
}

/// Accounts in a log of `events`: `SCALE_ACCOUNTS`, else a tenth of the events.
fn accounts_for(events: usize) -> usize {
    std::env::var("SCALE_ACCOUNTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or((events / 10).max(1))
}

/// Catalog names in a log of `events`: `SCALE_CATALOGS`, else a fifth of the events (the
/// projection bench's 20 000 names per 100 000 events).
fn catalogs_for(events: usize) -> usize {
    std::env::var("SCALE_CATALOGS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or((events / 5).max(1))
}

/// The binary measured: `SCALE_BIN=<path>` names another build (for alternating A/B runs of
/// two builds against the same bench), else this build's.
fn service_binary() -> std::ffi::OsString {
    std::env::var_os("SCALE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_natster-global").into())
}

/// Runs `projections rebuild` (every event-log projection) against the world's server;
/// returns how long it took and the events each replayed (the log, and what the load added).
/// Fails unless every projection found every record as the runners left it (rebuild ==
/// incremental).
fn rebuild(tw: &TestWorld, events: usize) -> Result<(Duration, usize)> {
    let started = Instant::now();
    let output = Command::new(service_binary())
        .args([
            "projections",
            "rebuild",
            "--nats-url",
            &tw.server.url(),
            "--creds",
        ])
        .arg(tw.world.creds_path(NATSTER))
        .env("RUST_LOG", "warn")
        .env_remove("NATSTER_CONFIG")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    let took = started.elapsed();
    let report = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "rebuild failed: {report}");
    let lines: Vec<&str> = report.lines().filter(|l| l.contains("replayed")).collect();
    ensure!(lines.len() == 3, "three projections rebuilt: {report}");
    let mut replayed = 0;
    for line in lines {
        ensure!(
            line.contains(" 0 records written") && line.contains(" 0 deleted"),
            "the rebuild changed what the runners left: {line}"
        );
        replayed = line
            .split_once("replayed ")
            .and_then(|(_, rest)| rest.split_once(' '))
            .and_then(|(n, _)| n.parse().ok())
            .context("the events replayed")?;
        ensure!(replayed >= events, "the whole log replayed: {line}");
    }
    Ok((took, replayed))
}

/// What one size showed: the raw read's rate, the first start, the rebuild (time, events
/// replayed), the restart, and the catch-up's ceiling.
struct Measured {
    raw_read: f64,
    first: Start,
    rebuilt: (Duration, usize),
    restart: Start,
    ceiling: Ceiling,
}

async fn measure(events: usize, within: Duration) -> Result<Measured> {
    let tw = TestWorld::start_with(&LOAD_USERS, |_| Ok(())).await?;
    let server_pid = tw.server.pid().context("server pid")?.to_string();
    let js = async_nats::jetstream::new(tw.connect(NATSTER).await?);
    let store = Store::ensure(js.clone(), &Default::default()).await?;
    let log = mixed_event_log(accounts_for(events), catalogs_for(events), events);
    publish_log(&js, &log).await?;
    drop(log);
    let (raw_read, read_cost) =
        costed(&server_pid, natster_testkit::raw_ordered_read(&js, events)).await?;
    let http_port = natster_testkit::port()?;
    let (serve, first) = start(&tw, http_port, within, true).await?;
    if let Ok(secs) = std::env::var("SCALE_PAUSE").map(|s| s.parse::<u64>()) {
        eprintln!(
            "scale: serve is pid {}, pausing {}s",
            serve.0.id(),
            secs.clone()?
        );
        tokio::time::sleep(Duration::from_secs(secs?)).await;
    }
    stop(serve)?;
    let written = written(&js, &store).await?;
    let ceiling = Ceiling::measure(&js, &server_pid, (events, read_cost), &written).await?;
    let rebuilt = rebuild(&tw, events)?;
    let (serve, restart) = start(&tw, http_port, within, false).await?;
    stop(serve)?;
    Ok(Measured {
        raw_read,
        first,
        rebuilt,
        restart,
        ceiling,
    })
}

/// What the catch-up left in the event log's three projection buckets: records and their mean
/// stored size, each bucket's.
async fn written(
    js: &async_nats::jetstream::Context,
    store: &Store,
) -> Result<Vec<ceiling::Written>> {
    let mut written = Vec::new();
    for bucket in [&store.accounts, &store.catalogs, &store.oauth] {
        // Asked now: a bucket's `status` is the info cached when it was opened.
        let info = js
            .get_stream(&bucket.stream_name)
            .await?
            .info()
            .await?
            .clone();
        let (bytes, messages) = (info.state.bytes, info.state.messages);
        written.push(ceiling::Written {
            records: messages as usize,
            record_bytes: (bytes / messages.max(1)) as usize,
            republished: info.config.republish.is_some(),
        });
    }
    Ok(written)
}

#[tokio::main]
async fn main() -> Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: Vec<usize> = match std::env::var("SCALE_EVENTS") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().parse())
            .collect::<Result<_, _>>()?,
        Err(_) if full => vec![100_000, 1_000_000, 3_000_000],
        Err(_) => vec![2_000],
    };
    let within = Duration::from_secs(if full { 900 } else { 60 });
    println!("| events / accounts / catalog names | endpoints answer | caught up (lag 0): time, events/s ÷ raw ordered read | RSS then (peak) | caches: MiB / hits; record writes | under load: req/s / RSS peak | snapshot: size / write | rebuild of 3: time, events/s per projection ÷ raw | restart: answer / caught up / RSS |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut ceilings = Vec::new();
    for events in sizes {
        let Measured {
            raw_read,
            first,
            rebuilt,
            restart,
            ceiling,
        } = measure(events, within).await?;
        let catch_up = events as f64 / first.caught_up.as_secs_f64();
        let (rebuilt, replayed) = rebuilt;
        let replay = 3.0 * replayed as f64 / rebuilt.as_secs_f64();
        println!(
            "| {events} / {} / {} | {:.1} s | {:.1} s, {catch_up:.0} ÷ {raw_read:.0} = {:.2}× | {:.0} MiB ({:.0}) | {:.0} MiB / {:.0} %; {:.0} k | {} | {} | {:.1} s, {replay:.0} ÷ {raw_read:.0} = {:.2}× | {:.1} s / {:.1} s / {:.0} MiB |",
            accounts_for(events),
            catalogs_for(events),
            first.answering.as_secs_f64(),
            first.caught_up.as_secs_f64(),
            catch_up / raw_read,
            first.rss_mib,
            first.peak_mib,
            first.cache.0,
            first.cache.1 * 100.0,
            first.cache.2 / 1000.0,
            first.load.map_or("—".into(), |(rate, peak)| format!("{rate:.0} / {peak:.0} MiB")),
            first.snapshot.map_or("—".into(), |(mib, took)| format!(
                "{mib:.1} MiB / {:.2} s",
                took.as_secs_f64()
            )),
            rebuilt.as_secs_f64(),
            replay / raw_read,
            restart.answering.as_secs_f64(),
            restart.caught_up.as_secs_f64(),
            restart.rss_mib,
        );
        ceilings.push((events, first.caught_up, ceiling));
    }
    print_ceilings(&ceilings);
    Ok(())
}

/// The second table: what each catch-up could at best have been (`ceiling`), beside what it
/// was. The catch-up's time includes the service's start, which the ceiling does not.
fn print_ceilings(ceilings: &[(usize, Duration, Ceiling)]) {
    println!();
    println!("| events / accounts | raw read: time, CPU s (here + server) | raw KV puts of the records written: time, CPU s | CPUs (here, server, together) | ceiling, overlapped | ceiling, one pass | the service's writes of them: time, CPU s | one pass with those | the read and those at once | catch-up measured |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (events, caught_up, ceiling) in ceilings {
        let (overlapped, one_pass) = (ceiling.overlapped(), ceiling.one_pass());
        let (one_pass_exact, overlapped_exact) =
            (ceiling.one_pass_exact(), ceiling.overlapped_exact());
        let cost = |c: natster_testkit::Cost| {
            format!(
                "{:.2} s, {:.2} + {:.2}",
                c.took.as_secs_f64(),
                c.cpu.here,
                c.cpu.server
            )
        };
        println!(
            "| {events} / {} | {} | {} × {} B: {} | {}, {}, {} | {:.2} s, {:.2}× | {:.2} s, {:.2}× | {} | {:.2} s, {:.2}× | {:.2} s, {:.2}× | {:.2} s, {:.2}× |",
            accounts_for(*events),
            cost(ceiling.read),
            ceiling.records,
            ceiling.record_bytes,
            cost(ceiling.writes),
            ceiling.cpus.0,
            ceiling.cpus.1,
            ceiling.cpus.2,
            overlapped.as_secs_f64(),
            ceiling.ratio(overlapped),
            one_pass.as_secs_f64(),
            ceiling.ratio(one_pass),
            cost(ceiling.exact_writes),
            one_pass_exact.as_secs_f64(),
            ceiling.ratio(one_pass_exact),
            overlapped_exact.as_secs_f64(),
            ceiling.ratio(overlapped_exact),
            caught_up.as_secs_f64(),
            ceiling.ratio(*caught_up),
        );
    }
}

//! `heartbeats.put` ingestion against raw JetStream publishes with the same headers, on one
//! server in one run, and the process's memory once every catalog is online.
//!
//! Two rounds over the same catalogs: the first brings every catalog online (each heartbeat a
//! transition the online projection records and announces), the second is the steady state
//! of catalog servers heartbeating (recorded in the stream, nothing new to project).
//!
//! `cargo bench --bench heartbeats` runs 100 000 distinct catalogs; without `--bench` (as
//! `cargo test --all-targets` runs it) it is a quick smoke run that checks every path works.

/// The allocator the product binary uses (see `src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{ensure, Context, Result};
use async_nats::jetstream;
use natster_global::service::GlobalService;
use natster_global::service::ServiceConfig;
use natster_global::service::StoreConfig;
use natster_global::test_util::online_stream_config;
use natster_testkit::{publish_acked, rate_at_in_flight, request_ok, PlainServer};
use std::time::{Duration, Instant};

const IN_FLIGHT: usize = 64;
const CATALOGS_PER_ACCOUNT: usize = 100;

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

/// Owner key and catalog name of heartbeat `i`.
fn target(keys: &[String], i: usize) -> (&str, String) {
    (&keys[i / CATALOGS_PER_ACCOUNT], format!("cat{i}"))
}

fn heartbeat_body(owner: &str, catalog: &str) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({"catalog": catalog, "account_key": owner, "revision": 1}),
    )
    .expect("json")
}

/// Raw publishes into a stream configured like `NATSTER_ONLINE`, with the same `Nats-TTL`.
async fn raw_publish(js: &jetstream::Context, keys: &[String], n: usize) -> Result<f64> {
    let mut config = online_stream_config(&StoreConfig::default());
    config.name = "BENCH_ONLINE".into();
    config.subjects = vec!["bench.online.>".into()];
    js.create_stream(config).await?;
    rate_at_in_flight(n, IN_FLIGHT, |i| {
        let (owner, catalog) = target(keys, i);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-TTL", "180");
        publish_acked(
            js,
            format!("bench.online.{owner}.{catalog}"),
            headers,
            heartbeat_body(owner, &catalog),
        )
    })
    .await
}

/// `heartbeats.put` requests through the service.
async fn service_heartbeats(client: &async_nats::Client, keys: &[String], n: usize) -> Result<f64> {
    rate_at_in_flight(n, IN_FLIGHT, |i| {
        let (owner, catalog) = target(keys, i);
        request_ok(
            client,
            format!("{owner}.natster.global.heartbeats.put"),
            heartbeat_body(owner, &catalog),
        )
    })
    .await
}

/// Waits until `stats` counts `catalogs` online; returns how long that took.
async fn wait_online(
    client: &async_nats::Client,
    caller: &str,
    catalogs: usize,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let reply = client
            .request(format!("{caller}.natster.global.stats"), "".into())
            .await?;
        let stats: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        if stats["data"]["running_catalogs"].as_u64() == Some(catalogs as u64) {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < Duration::from_secs(300),
            "online projection did not catch up: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Heartbeats published without a reply subject, as the original catalog server sends them,
/// each for a catalog not seen before, paced like many catalog servers rather than one flood:
/// at most `WINDOW` heartbeats published and not yet recorded. The rate counts until
/// `NATSTER_ONLINE` holds all of them (one subject each, so expiry markers of older heartbeats
/// cannot be mistaken for them).
async fn published_heartbeats(
    client: &async_nats::Client,
    keys: &[String],
    n: usize,
) -> Result<f64> {
    const WINDOW: u64 = 4096;
    let mut online = jetstream::new(client.clone())
        .get_stream("NATSTER_ONLINE")
        .await?;
    let before = online.info().await?.state.messages;
    let started = Instant::now();
    let mut recorded = 0u64;
    let mut last_progress = Instant::now();
    for i in 0..n {
        let (owner, catalog) = target(keys, i);
        let catalog = format!("{catalog}new");
        client
            .publish(
                format!("{owner}.natster.global.heartbeats.put"),
                heartbeat_body(owner, &catalog).into(),
            )
            .await?;
        let sent = i as u64 + 1;
        let must_wait =
            |recorded: u64| sent - recorded >= WINDOW || (sent == n as u64 && recorded < sent);
        while must_wait(recorded) {
            let now = online.info().await?.state.messages - before;
            if now != recorded {
                (recorded, last_progress) = (now, Instant::now());
            }
            ensure!(
                last_progress.elapsed() < Duration::from_secs(5),
                "only {recorded} of {sent} published heartbeats recorded (the rest were dropped)"
            );
            if must_wait(recorded) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    Ok(rate(n, started.elapsed()))
}

fn rss_mib() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let catalogs: usize = if full { 100_000 } else { 2_000 };
    let keys: Vec<String> = (0..catalogs.div_ceil(CATALOGS_PER_ACCOUNT))
        .map(|_| nkeys::KeyPair::new_account().public_key())
        .collect();
    let server = PlainServer::start().await?;
    let client = server.connect().await?;
    // Throughput, not the per-account heartbeat budget, is measured here: each account sends
    // all its catalogs' heartbeats at once, three times over.
    let config = ServiceConfig {
        heartbeat_rate_per_second: 1_000_000,
        heartbeat_burst: 1_000_000,
        ..ServiceConfig::default()
    };
    let service = GlobalService::start(client.clone(), config).await?;
    let rss_before = rss_mib()?;

    let raw = raw_publish(&jetstream::new(client.clone()), &keys, catalogs).await?;
    let first = service_heartbeats(&client, &keys, catalogs).await?;
    let caught_up = wait_online(&client, &keys[0], catalogs).await?;
    let rss_online = rss_mib()?;
    let steady = service_heartbeats(&client, &keys, catalogs).await?;
    let published = published_heartbeats(&client, &keys, catalogs).await?;
    // Memory once the online projection holds all of them (a faster projection holds more of
    // them sooner; compared when both are done).
    wait_online(&client, &keys[0], 2 * catalogs).await?;
    let rss = rss_mib()?;
    service.stop().await?;

    println!("| measurement ({catalogs} distinct catalogs, {IN_FLIGHT} in flight) | heartbeats/s | ratio |");
    println!("|---|---|---|");
    println!("| raw JetStream publish (`Nats-TTL`, stream like NATSTER_ONLINE) | {raw:.0} | |");
    println!(
        "| `heartbeats.put`, first round (every heartbeat brings a catalog online) | {first:.0} | {:.2}× raw |",
        first / raw
    );
    println!(
        "| `heartbeats.put`, steady state (catalogs already online) | {steady:.0} | {:.2}× raw |",
        steady / raw
    );
    println!(
        "| `heartbeats.put` published without reply (as natster catalog servers send them; new catalogs, ≤ 4 096 unrecorded at a time), until all recorded | {published:.0} | {:.2}× raw |",
        published / raw
    );
    println!(
        "online projection caught up {:.1} s after the first round's last reply; process RSS (service and benchmark client) {rss_online:.0} MiB with {catalogs} catalogs online, {rss:.0} MiB after the steady rounds, once their catalogs are projected too ({rss_before:.0} MiB at start)",
        caught_up.as_secs_f64()
    );
    Ok(())
}

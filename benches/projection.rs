//! Projection and append throughput, all against one nats-server in one run:
//!
//! - raw JetStream pull + ack of the event log (the read ceiling);
//! - the original service's algorithm: fetch one event, get the record, put it, ack;
//! - our projector (`runner`, accounts projection) over the same log, with KV writes per event;
//! - raw concurrent KV puts (64 in flight), the write ceiling;
//! - `events.put` through the service at 64 in flight against a raw JetStream publish with the
//!   same headers (`Nats-Msg-Id`, expected last subject sequence with a wildcard filter).
//!
//! `cargo bench --bench projection` runs the full sizes; without `--bench` (as `cargo test
//! --all-targets` runs it) it is a quick smoke run that checks every path works.
//! `APPENDS_ONLY=N cargo bench --bench projection` measures only the append path, with N
//! requests (long enough to watch both processes' CPU while it runs).

/// The allocator the product binary uses (see `src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{ensure, Context, Result};
use async_nats::jetstream::{self, consumer, kv};
use futures::{StreamExt, TryStreamExt};
use natster_global::config::ServiceConfig;
use natster_global::events::{decode, Decoded};
use natster_global::model::AccountRecord;
use natster_global::projections::{accounts::Accounts, runner, Projection};
use natster_global::service::GlobalService;
use natster_global::store::{Store, StoreConfig};
use natster_global::testkit::{mixed_event_log, publish_log, PlainServer};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const IN_FLIGHT: usize = 64;
/// Rounds of the raw read and of our projector (medians are reported).
const ROUNDS: usize = 3;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Sizes {
    events: usize,
    accounts: usize,
    original: usize,
    appends: usize,
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

/// Pull with a durable consumer and ack every message.
async fn raw_pull_ack(js: &jetstream::Context, n: usize, round: usize) -> Result<f64> {
    let stream = js.get_stream("NATSTER_EVENTS").await?;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(format!("bench-raw-{round}")),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(512)
        .messages()
        .await?
        .take(n);
    while let Some(message) = messages.next().await {
        message
            .map_err(anyhow::Error::msg)?
            .ack()
            .await
            .map_err(anyhow::Error::msg)?;
    }
    Ok(rate(n, started.elapsed()))
}

/// The original service's projector: fetch one, get, put (unconditionally), ack.
async fn original_algorithm(js: &jetstream::Context, n: usize) -> Result<f64> {
    let stream = js.get_stream("NATSTER_EVENTS").await?;
    let bucket = js
        .create_key_value(kv::Config {
            bucket: "BENCH_ORIGINAL".into(),
            history: 1,
            ..Default::default()
        })
        .await?;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench-original".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let mut batch = consumer.fetch().max_messages(1).messages().await?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(anyhow::Error::msg)?;
            if let Some(Decoded::Event(event)) = decode(&message) {
                for key in Accounts::keys(&event) {
                    let record: Option<AccountRecord> = bucket
                        .get(&key)
                        .await?
                        .and_then(|v| serde_json::from_slice(&v).ok());
                    if let Some(record) = Accounts::apply(&key, record, &event) {
                        bucket
                            .put(&key, serde_json::to_vec(&record)?.into())
                            .await?;
                    }
                }
            }
            message.ack().await.map_err(anyhow::Error::msg)?;
            done += 1;
        }
    }
    Ok(rate(n, started.elapsed()))
}

/// Our runner over the whole log, from empty buckets; returns events/s and KV writes per event.
async fn our_projector(js: &jetstream::Context, n: usize) -> Result<(f64, f64)> {
    for bucket in ["PROJ_ACCOUNT", "PROJ_STATS"] {
        if js.get_key_value(bucket).await.is_ok() {
            js.delete_key_value(bucket).await?;
        }
    }
    let store = &Store::ensure(js.clone(), &StoreConfig::default()).await?;
    let writes_before = bucket_writes(&store.js, "KV_PROJ_ACCOUNT").await?
        + bucket_writes(&store.js, "KV_PROJ_STATS").await?;
    let (tx, mut rx) = tokio::sync::watch::channel(0u64);
    let stop = CancellationToken::new();
    let task = {
        let (events, records, stats, stop) = (
            store.events.clone(),
            store.accounts.clone(),
            store.stats.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            runner::run::<Accounts>(
                &events,
                records,
                stats,
                runner::RunnerConfig::default(),
                runner::Progress::new(tx),
                stop,
            )
            .await
        })
    };
    let started = Instant::now();
    rx.wait_for(|seq| *seq >= n as u64).await?;
    let elapsed = started.elapsed();
    stop.cancel();
    task.await??;
    let writes = bucket_writes(&store.js, "KV_PROJ_ACCOUNT").await?
        + bucket_writes(&store.js, "KV_PROJ_STATS").await?
        - writes_before;
    Ok((rate(n, elapsed), writes as f64 / n as f64))
}

async fn bucket_writes(js: &jetstream::Context, stream: &str) -> Result<u64> {
    Ok(js
        .get_stream(stream)
        .await?
        .info()
        .await?
        .state
        .last_sequence)
}

/// Puts of distinct keys, `IN_FLIGHT` acks outstanding.
async fn raw_kv_puts(js: &jetstream::Context, n: usize) -> Result<f64> {
    js.create_key_value(kv::Config {
        bucket: "BENCH_PUT".into(),
        history: 1,
        ..Default::default()
    })
    .await?;
    let value = serde_json::to_vec(
        &serde_json::json!({"account_key": "A".repeat(56), "initialized_at": 1, "out_shares": [], "in_shares": [], "applied_seq": 1}),
    )?;
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let js = js.clone();
            let value = value.clone();
            async move {
                js.publish(format!("$KV.BENCH_PUT.k{i}"), value.into())
                    .await?
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(rate(n, started.elapsed()))
}

/// `events.put` through the service: inits, then shares on distinct catalogs.
async fn service_appends(client: &async_nats::Client, n: usize) -> Result<f64> {
    let keys: Vec<String> = (0..n / 2)
        .map(|_| nkeys::KeyPair::new_account().public_key())
        .collect();
    let mut requests = Vec::with_capacity(n);
    for key in &keys {
        requests.push((key.clone(), serde_json::json!({"catalog":"none","target":"none","event_type":"natster_initialized","data":{"account_id":"i","account_name":"n","account_key":key}})));
    }
    for (i, key) in keys.iter().enumerate() {
        let target = &keys[(i + 1) % keys.len()];
        requests.push((key.clone(), serde_json::json!({"catalog":format!("bench{i}"),"target":target,"event_type":"catalog_shared","data":null})));
    }
    let started = Instant::now();
    // Inits first (shares need initialised accounts), each phase IN_FLIGHT at a time.
    for phase in requests.chunks(keys.len()) {
        futures::stream::iter(phase)
            .map(|(key, body)| {
                let client = client.clone();
                let body = serde_json::to_vec(body).expect("json");
                async move {
                    let reply = client
                        .request(format!("{key}.natster.global.events.put"), body.into())
                        .await?;
                    ensure!(
                        reply.payload.starts_with(b"{\"code\":200"),
                        "{:?}",
                        reply.payload
                    );
                    Ok(())
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
    }
    Ok(rate(requests.len(), started.elapsed()))
}

/// Raw publishes with the same headers: a message id and an expected last sequence on a
/// wildcard filter.
async fn raw_guarded_publish(js: &jetstream::Context, n: usize) -> Result<f64> {
    js.create_stream(jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw.>".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let js = js.clone();
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("raw-{i}").as_str());
                headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
                headers.insert(
                    "Nats-Expected-Last-Subject-Sequence-Subject",
                    format!("bench.raw.*.c{i}.*").as_str(),
                );
                js.publish_with_headers(
                    format!("bench.raw.a.c{i}.catalog_shared"),
                    headers,
                    "".into(),
                )
                .await?
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(rate(n, started.elapsed()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            events: 100_000,
            accounts: 10_000,
            original: 3_000,
            appends: 20_000,
        }
    } else {
        Sizes {
            events: 3_000,
            accounts: 300,
            original: 200,
            appends: 400,
        }
    };
    if let Some(n) = std::env::var("APPENDS_ONLY")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        let sizes = Sizes {
            appends: n,
            ..sizes
        };
        let server = PlainServer::start().await?;
        let client = server.connect().await?;
        let service = GlobalService::start(client.clone(), ServiceConfig::default()).await?;
        let appends = service_appends(&client, sizes.appends).await?;
        let raw_publish =
            raw_guarded_publish(&jetstream::new(client.clone()), sizes.appends).await?;
        service.stop().await?;
        println!(
            "events.put {appends:.0}/s, raw guarded publish {raw_publish:.0}/s: {:.2}×",
            appends / raw_publish
        );
        return Ok(());
    }
    let server = PlainServer::start().await?;
    let client = server.connect().await?;
    let js = jetstream::new(client.clone());
    Store::ensure(js.clone(), &StoreConfig::default()).await?;
    publish_log(&js, &mixed_event_log(sizes.accounts, 20_000, sizes.events)).await?;

    // The read ceiling and our projector vary from run to run on a small machine: both are
    // measured in alternating rounds and the medians compared.
    let mut raws = Vec::new();
    let mut runs = Vec::new();
    for round in 0..ROUNDS {
        raws.push(raw_pull_ack(&js, sizes.events, round).await?);
        runs.push(our_projector(&js, sizes.events).await?);
    }
    let raw = median(raws);
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ours, writes_per_event) = runs[runs.len() / 2];
    let original = original_algorithm(&js, sizes.original).await?;
    let puts = raw_kv_puts(&js, sizes.events).await?;
    let ceiling = raw.min(puts / writes_per_event);

    // The append path, on a fresh server so the projection benchmark's log does not weigh in.
    let server2 = PlainServer::start().await?;
    let client2 = server2.connect().await?;
    let service = GlobalService::start(client2.clone(), ServiceConfig::default())
        .await
        .context("service")?;
    let appends = service_appends(&client2, sizes.appends).await?;
    let raw_publish = raw_guarded_publish(&jetstream::new(client2.clone()), sizes.appends).await?;
    service.stop().await?;

    println!(
        "| measurement ({} events, {} accounts) | events/s | ratio |",
        sizes.events, sizes.accounts
    );
    println!("|---|---|---|");
    println!("| raw JetStream pull + ack (median of {ROUNDS}) | {raw:.0} | |");
    println!("| original algorithm (fetch 1, get, put, ack) | {original:.0} | |");
    println!("| raw KV put, {IN_FLIGHT} in flight | {puts:.0} | |");
    println!("| ceiling = min(raw pull+ack, KV puts ÷ {writes_per_event:.3} writes/event) | {ceiling:.0} | |");
    println!(
        "| our projector (accounts, median of {ROUNDS}) | {ours:.0} | {:.1}× original, {:.2}× ceiling |",
        ours / original,
        ours / ceiling
    );
    println!("| raw guarded publish, {IN_FLIGHT} in flight | {raw_publish:.0} | |");
    println!("| `events.put` through the service, {IN_FLIGHT} in flight | {appends:.0} | {:.2}× raw publish |", appends / raw_publish);
    println!("KV writes per event: {writes_per_event:.3}");
    Ok(())
}

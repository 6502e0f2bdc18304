//! `heartbeats.put` ingestion against raw JetStream publishes with the same headers, on one
//! server in one run, and the process's memory once every catalog is online.
//!
//! Every catalog is shared with two accounts before the service starts (the log holds the
//! shares), so every heartbeat fans out to two feeds, as issue 16 asks; a client subscribed to
//! every feed takes the deliveries (and the bench checks they arrive). Two rounds of requests
//! over the same catalogs: the first brings every catalog online (each heartbeat a transition
//! the online projection records and announces), the second is the steady state of catalog
//! servers heartbeating; then the steady state again, published without a reply subject as
//! natster catalog servers send them. Beside the raw publish, the same run measures the message
//! flow a steady heartbeat with a reply needs, sent by a responder that decides nothing
//! ([`RawFlow`]): what the request/reply path costs before the service does any work.
//!
//! `cargo bench --bench heartbeats` runs 100 000 distinct catalogs; without `--bench` (as
//! `cargo test --all-targets` runs it) it is a quick smoke run that checks every path works.
//! `FANOUT=N` shares each catalog with N accounts instead of 2.

/// The allocator the product binary uses (see `src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{ensure, Context, Result};
use async_nats::jetstream;
use natster_global::service::GlobalService;
use natster_global::service::ServiceConfig;
use natster_global::service::StoreConfig;
use natster_global::test_util::online_stream_config;
use natster_global::test_util::Store;
use natster_testkit::{
    costed, init_log, metric_value, percentile, publish_acked, publish_log, request_ok,
    timed_at_in_flight, PlainServer,
};
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
async fn raw_publish(js: &jetstream::Context, keys: &[String], n: usize) -> Result<Timed> {
    let mut config = online_stream_config(&StoreConfig::default());
    config.name = "BENCH_ONLINE".into();
    config.subjects = vec!["bench.online.>".into()];
    js.create_stream(config).await?;
    timed(n, IN_FLIGHT, |i| {
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

/// The message flow a steady heartbeat with a reply needs, with nothing decided: a responder
/// in this process records each request's body in a stream configured like `NATSTER_ONLINE`
/// (the same `Nats-TTL`, a subject per catalog), waits for the acknowledgement, publishes
/// `fanout` feed messages and replies; an ordered consumer reads the stream as the online
/// projection does. The most the service's request/reply path could reach on this server.
struct RawFlow {
    client: async_nats::Client,
    feeds: async_nats::Subscriber,
    records: jetstream::consumer::pull::Ordered,
    fanout: usize,
    responder: tokio::task::JoinHandle<()>,
}

impl RawFlow {
    async fn start(
        client: &async_nats::Client,
        js: &jetstream::Context,
        fanout: usize,
    ) -> Result<RawFlow> {
        use futures::StreamExt;
        let mut config = online_stream_config(&StoreConfig::default());
        config.name = "BENCH_FLOW".into();
        config.subjects = vec!["bench.flow.record.>".into()];
        let stream = js.create_stream(config).await?;
        let feeds = client.subscribe("bench.flow.feed.>").await?;
        let mut requests = client.subscribe("bench.flow.request.>").await?;
        let (client_, js) = (client.clone(), js.clone());
        let responder = tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                tokio::spawn(respond(client_.clone(), js.clone(), request, fanout));
            }
        });
        let records = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await?
            .messages()
            .await?;
        Ok(RawFlow {
            client: client.clone(),
            feeds,
            records,
            fanout,
            responder,
        })
    }

    /// One heartbeat for each of the first `n` catalogs, through the flow; returns once the
    /// reader has read every record and every feed message has arrived.
    async fn round(&mut self, keys: &[String], n: usize) -> Result<Timed> {
        use futures::StreamExt;
        let (records, feeds) = (&mut self.records, &mut self.feeds);
        let reader = async move {
            let read = records
                .filter(|record| futures::future::ready(record.is_ok()))
                .take(n)
                .count()
                .await;
            ensure!(read == n, "the ordered reader read {read} records of {n}");
            Ok(())
        };
        // Taken as they come: a subscriber left undrained drops what outgrows its buffer.
        let wanted = n * self.fanout;
        let fed = async move {
            let fed = feeds.take(wanted).count().await;
            ensure!(fed == wanted, "{fed} feed messages of {wanted}");
            Ok(())
        };
        let client = &self.client;
        let requests = timed(n, IN_FLIGHT, |i| {
            let (owner, catalog) = target(keys, i);
            request_ok(
                client,
                format!("bench.flow.request.{owner}.{catalog}"),
                heartbeat_body(owner, &catalog),
            )
        });
        let within = Duration::from_secs(60);
        let all = futures::future::try_join3(requests, reader, fed);
        let (timed, (), ()) = tokio::time::timeout(within, all).await??;
        Ok(timed)
    }
}

impl Drop for RawFlow {
    fn drop(&mut self) {
        self.responder.abort();
    }
}

/// The responder's part of [`RawFlow`] for one request.
async fn respond(
    client: async_nats::Client,
    js: jetstream::Context,
    request: async_nats::Message,
    fanout: usize,
) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-TTL", "180");
    let catalog = &request.subject["bench.flow.request.".len()..];
    let subject = format!("bench.flow.record.{catalog}");
    let Ok(ack) = js
        .publish_with_headers(subject, headers, request.payload.clone())
        .await
    else {
        return;
    };
    if ack.await.is_ok() {
        for k in 0..fanout {
            let feed = format!("bench.flow.feed.{k}");
            let _ = client.publish(feed, request.payload.clone()).await;
        }
        let reply = request.reply.expect("a request");
        let _ = client.publish(reply, "{\"code\":200}".into()).await;
    }
}

/// A rate with its latencies' p50 and p99.
#[derive(Clone, Copy)]
struct Timed {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

impl std::fmt::Display for Timed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} | {:.2?} / {:.2?}", self.rate, self.p50, self.p99)
    }
}

/// [`timed_at_in_flight`], summarised.
async fn timed<F, Fut>(n: usize, in_flight: usize, op: F) -> Result<Timed>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let (rate, mut latencies) = timed_at_in_flight(n, in_flight, op).await?;
    Ok(Timed {
        rate,
        p50: percentile(&mut latencies, 0.5),
        p99: percentile(&mut latencies, 0.99),
    })
}

/// CPU µs per operation of this process (client and service) and of the server while `work`
/// does `n` operations.
async fn with_cpu<T>(
    server_pid: &str,
    n: usize,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<(T, String)> {
    let (result, cost) = costed(server_pid, work).await?;
    let cpu = cost.cpu.micros_per(n);
    Ok((result, format!("{:.0} + {:.0}", cpu.here, cpu.server)))
}

/// `heartbeats.put` requests through the service.
async fn service_heartbeats(
    client: &async_nats::Client,
    keys: &[String],
    n: usize,
) -> Result<Timed> {
    timed(n, IN_FLIGHT, |i| {
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
/// for catalogs already online, paced like many catalog servers rather than one flood: at most
/// `WINDOW` heartbeats published and not yet recorded. The rate counts until `NATSTER_ONLINE`
/// has stored all of them (its last sequence moved by `n`: a catalog keeps only its latest
/// heartbeat, so the message count would not move).
async fn published_heartbeats(
    client: &async_nats::Client,
    keys: &[String],
    n: usize,
) -> Result<f64> {
    const WINDOW: u64 = 4096;
    let mut online = jetstream::new(client.clone())
        .get_stream("NATSTER_ONLINE")
        .await?;
    let before = online.info().await?.state.last_sequence;
    let started = Instant::now();
    let mut recorded = 0u64;
    let mut last_progress = Instant::now();
    for i in 0..n {
        let (owner, catalog) = target(keys, i);
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
            let now = online.info().await?.state.last_sequence - before;
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

/// The log the service starts from: every owner initialises, then shares each of its
/// catalogs with the next `fanout` accounts.
fn shares_log(keys: &[String], catalogs: usize, fanout: usize) -> Vec<(String, Vec<u8>)> {
    use natster_global::model::{EventSubject, EventType};
    let mut log = init_log(keys);
    log.reserve(catalogs * fanout);
    for i in 0..catalogs {
        let (owner, catalog) = target(keys, i);
        let owner_index = i / CATALOGS_PER_ACCOUNT;
        for k in 1..=fanout {
            let share_target = &keys[(owner_index + k) % keys.len()];
            log.push((
                EventSubject::new(owner, share_target, &catalog, EventType::CatalogShared)
                    .to_subject(),
                Vec::new(),
            ));
        }
    }
    log
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
    // As the binary runs (see its doc): the service is measured as shipped.
    natster_global::service::without_transparent_huge_pages();
    let full = std::env::args().any(|a| a == "--bench");
    let catalogs: usize = if full { 100_000 } else { 2_000 };
    let keys: Vec<String> = (0..catalogs.div_ceil(CATALOGS_PER_ACCOUNT))
        .map(|_| nkeys::KeyPair::new_account().public_key())
        .collect();
    let fanout: usize = std::env::var("FANOUT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    let server = PlainServer::start().await?;
    let client = server.connect().await?;
    let js = jetstream::new(client.clone());
    Store::ensure(js.clone(), &StoreConfig::default()).await?;
    let log = shares_log(&keys, catalogs, fanout);
    publish_log(&js, &log).await?;
    // Every feed delivery of the service, counted (the fan-out's consumers).
    let mut feeds = client.subscribe("*.natster.global-events.>").await?;
    let delivered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = delivered.clone();
    let feed_reader = tokio::spawn(async move {
        use futures::StreamExt;
        while feeds.next().await.is_some() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Throughput, not the per-account heartbeat budget, is measured here: each account sends
    // all its catalogs' heartbeats at once, three times over.
    let config = ServiceConfig {
        heartbeat_rate_per_second: 1_000_000,
        heartbeat_burst: 1_000_000,
        ..ServiceConfig::default()
    };
    let service = GlobalService::start(client.clone(), config).await?;
    ensure!(
        service
            .wait_projected(log.len() as u64, Duration::from_secs(120))
            .await,
        "the shares were not projected"
    );
    let rss_before = rss_mib()?;

    let pid = server.server.pid().context("server pid")?.to_string();
    let (raw, raw_cpu) = with_cpu(&pid, catalogs, raw_publish(&js, &keys, catalogs)).await?;
    // The flow's subjects made first, as the service's steady round finds its catalogs'.
    let mut raw_flow = RawFlow::start(&client, &js, fanout).await?;
    raw_flow.round(&keys, catalogs).await?;
    let (flow, flow_cpu) = with_cpu(&pid, catalogs, raw_flow.round(&keys, catalogs)).await?;
    drop(raw_flow);
    let (first, first_cpu) =
        with_cpu(&pid, catalogs, service_heartbeats(&client, &keys, catalogs)).await?;
    let caught_up = wait_online(&client, &keys[0], catalogs).await?;
    let rss_online = rss_mib()?;
    let before_steady = delivered.load(std::sync::atomic::Ordering::Relaxed);
    let (steady, steady_cpu) =
        with_cpu(&pid, catalogs, service_heartbeats(&client, &keys, catalogs)).await?;
    let (published, published_cpu) = with_cpu(
        &pid,
        catalogs,
        published_heartbeats(&client, &keys, catalogs),
    )
    .await?;
    let rss = rss_mib()?;
    // The in-memory views' own size (DESIGN §4 bounds them).
    let metrics = service.telemetry().encode();
    let gauge = |series: &str| metric_value(&metrics, series).unwrap_or(0.0);
    let views = format!(
        "online view {:.0} entries in {:.1} MiB, account cache {:.1} MiB",
        gauge("natster_online_view_entries"),
        gauge("natster_online_view_bytes") / 1_048_576.0,
        gauge("natster_account_cache_bytes") / 1_048_576.0
    );
    // Both steady rounds fanned every heartbeat out to its catalog's share targets.
    let wanted = before_steady + (2 * catalogs * fanout) as u64;
    let started = Instant::now();
    while delivered.load(std::sync::atomic::Ordering::Relaxed) < wanted {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "feeds got {} deliveries, {wanted} expected",
            delivered.load(std::sync::atomic::Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    feed_reader.abort();
    service.stop().await?;

    println!("| measurement ({catalogs} distinct catalogs, each shared with {fanout} accounts, {IN_FLIGHT} in flight) | heartbeats/s | p50 / p99 | ratio | CPU µs (here + server) |");
    println!("|---|---|---|---|---|");
    println!(
        "| raw JetStream publish (`Nats-TTL`, stream like NATSTER_ONLINE) | {raw} | | {raw_cpu} |"
    );
    println!(
        "| the same message flow with nothing decided (a responder recording, fanning out to {fanout} and replying; an ordered reader of the records) | {flow} | {:.2}× raw | {flow_cpu} |",
        flow.rate / raw.rate
    );
    println!(
        "| `heartbeats.put`, first round (every heartbeat brings a catalog online) | {first} | {:.2}× raw | {first_cpu} |",
        first.rate / raw.rate
    );
    println!(
        "| `heartbeats.put`, steady state (catalogs already online) | {steady} | {:.2}× raw, {:.2}× the flow | {steady_cpu} |",
        steady.rate / raw.rate,
        steady.rate / flow.rate
    );
    println!(
        "| `heartbeats.put` published without reply (as natster catalog servers send them; steady state, ≤ 4 096 unrecorded at a time), until all recorded | {published:.0} | | {:.2}× raw | {published_cpu} |",
        published / raw.rate
    );
    println!(
        "online projection caught up {:.1} s after the first round's last reply; every steady heartbeat reached its {fanout} feeds; {views}; process RSS (service, benchmark client and feed reader) {rss_online:.0} MiB with {catalogs} catalogs online, {rss:.0} MiB after the steady rounds ({rss_before:.0} MiB at start)",
        caught_up.as_secs_f64()
    );
    Ok(())
}

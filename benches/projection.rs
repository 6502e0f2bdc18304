//! Projection and append throughput, all against one nats-server in one run:
//!
//! - raw JetStream pull + ack of the event log (the read ceiling), and an ordered read that
//!   only decodes (what each reader of the log pays before its own work);
//! - the original service's algorithm: fetch one event, get the record, put it, ack;
//! - our projector (`runner`, accounts projection) over the same log, with KV writes per event;
//! - raw concurrent KV puts (64 in flight), the write ceiling;
//! - `events.put` through the service at 64 in flight against a raw JetStream publish with the
//!   same headers (`Nats-Msg-Id`, expected last subject sequence with a wildcard filter), a
//!   core request/reply to an instant responder, and the least an `events.put` can cost,
//!   priced from those raw operations.
//!
//! `cargo bench --bench projection` runs the full sizes; without `--bench` (as `cargo test
//! --all-targets` runs it) it is a quick smoke run that checks every path works.
//! `APPENDS_ONLY=N cargo bench --bench projection` measures only the append path, with N
//! requests (long enough to watch both processes' CPU while it runs), and how many messages
//! each request stored in every stream; `PROJECTOR_ONLY=N` runs N rounds of only the raw read
//! and our projector (`TIMELINE=1` also prints when each flush of the projector finished).
//! Every line reports the CPU it cost, in µs per event or request, of this process and of
//! nats-server: on a small machine both share the cores, so CPU per operation is what decides
//! the rates.

/// The allocator the product binary uses (see `src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer, kv};
use futures::{StreamExt, TryStreamExt};
use natster_global::model::AccountRecord;
use natster_global::model::Decoded;
use natster_global::service::GlobalService;
use natster_global::service::RunnerConfig;
use natster_global::service::ServiceConfig;
use natster_global::test_util::{Accounts, Projection};
use natster_global::test_util::{Store, StoreConfig};
use natster_testkit::{
    costed, mixed_event_log, percentile, project_from_empty, publish_acked, publish_log,
    rate_at_in_flight, stream_last_seq, timed_at_in_flight, EventsPutLoad, PlainServer,
};
use std::time::{Duration, Instant};

const IN_FLIGHT: usize = 64;
/// Readers of every event in a running service: the projections' shared read and the
/// decision state's own tail (the share feed, which reads only share events and acks each, and
/// the watches of the account and stats buckets are left out so that the floor stays a floor).
/// It was four, one per projection and the decision state, until the projections shared one
/// read: priced with four, the floor credited the service with two reads it no longer makes.
const LOG_READERS: usize = 2;
/// Alternating rounds of the raw read and of our projector (medians are reported).
const ROUNDS: usize = 5;

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

/// Decodes a message of the log, as the service's log reader does.
fn decode(message: &jetstream::Message) -> Option<Decoded> {
    let info = message.info().ok()?;
    Some(Decoded::from_parts(
        info.stream_sequence,
        info.published.unix_timestamp(),
        &message.subject,
        &message.payload,
    ))
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
    let run = project_from_empty::<Accounts>(js, n as u64, RunnerConfig::default()).await?;
    if std::env::var("TIMELINE").is_ok() {
        let flushes: Vec<(u128, u64)> = run
            .timeline
            .iter()
            .map(|(at, seq)| (at.as_millis(), *seq))
            .collect();
        println!("flushes (ms, applied sequence): {flushes:?}");
    }
    let writes = run.record_writes + run.stats_writes;
    Ok((rate(n, run.elapsed), writes as f64 / n as f64))
}

/// Last sequence of every stream, by name.
async fn stream_writes(js: &jetstream::Context) -> Result<std::collections::BTreeMap<String, u64>> {
    let mut names = js.stream_names();
    let mut out = std::collections::BTreeMap::new();
    while let Some(name) = names.try_next().await? {
        let last = stream_last_seq(js, &name).await?;
        out.insert(name, last);
    }
    Ok(out)
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
    rate_at_in_flight(n, IN_FLIGHT, |i| {
        publish_acked(
            js,
            format!("$KV.BENCH_PUT.k{i}"),
            async_nats::HeaderMap::new(),
            value.clone(),
        )
    })
    .await
}

/// Core NATS request/reply to a responder in this process that answers at once: the hop every
/// `events.put` makes before any JetStream work.
async fn raw_request_reply(client: &async_nats::Client, n: usize) -> Result<f64> {
    let mut requests = client.subscribe("bench.echo").await?;
    let responder = client.clone();
    let echo = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                if responder
                    .publish(reply, "{\"code\":200}".into())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    // The subscription is live once a request round-trips.
    client.request("bench.echo", "".into()).await?;
    let rate = rate_at_in_flight(n, IN_FLIGHT, |_| async {
        client.request("bench.echo", "{}".into()).await?;
        Ok(())
    })
    .await?;
    echo.abort();
    Ok(rate)
}

/// Raw publishes with the same headers: a message id and an expected last sequence on a
/// wildcard filter; the rate and every publish's latency.
async fn raw_guarded_publish(js: &jetstream::Context, n: usize) -> Result<(f64, Vec<Duration>)> {
    js.create_stream(jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw.>".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    timed_at_in_flight(n, IN_FLIGHT, |i| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("raw-{i}").as_str());
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence-Subject",
            format!("bench.raw.*.c{i}.*").as_str(),
        );
        publish_acked(
            js,
            format!("bench.raw.a.c{i}.catalog_shared"),
            headers,
            Vec::new(),
        )
    })
    .await
}

/// CPU time used by this process (the benchmark client and, where it runs, the service) and
/// by the server, to report what each operation costs on a machine where both share the cores.
struct CpuMeter {
    server_pid: String,
}

/// CPU per operation, in microseconds.
#[derive(Clone, Copy)]
struct CpuPerOp {
    here: f64,
    server: f64,
}

impl std::fmt::Display for CpuPerOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} + {:.1}", self.here, self.server)
    }
}

impl CpuMeter {
    fn new(server: &PlainServer) -> Result<CpuMeter> {
        Ok(CpuMeter {
            server_pid: server.server.pid().context("server pid")?.to_string(),
        })
    }

    /// Runs `work` (which does `n` operations) and returns its result and the CPU per operation.
    async fn measure<T>(
        &self,
        n: usize,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<(T, CpuPerOp)> {
        let (result, cost) = costed(&self.server_pid, work).await?;
        let cpu = cost.cpu.micros_per(n);
        Ok((
            result,
            CpuPerOp {
                here: cpu.here,
                server: cpu.server,
            },
        ))
    }
}

/// One round of the projection comparison.
struct Round {
    raw: f64,
    raw_cpu: CpuPerOp,
    ours: f64,
    ours_cpu: CpuPerOp,
    writes_per_event: f64,
}

/// Alternating rounds of the raw read and our projector over the same log.
async fn projection_rounds(
    js: &jetstream::Context,
    meter: &CpuMeter,
    events: usize,
    rounds: usize,
) -> Result<Vec<Round>> {
    let mut out = Vec::new();
    for round in 0..rounds {
        let (raw, raw_cpu) = meter
            .measure(events, raw_pull_ack(js, events, round))
            .await?;
        let ((ours, writes_per_event), ours_cpu) =
            meter.measure(events, our_projector(js, events)).await?;
        out.push(Round {
            raw,
            raw_cpu,
            ours,
            ours_cpu,
            writes_per_event,
        });
    }
    Ok(out)
}

/// The append path: `events.put` through a running service, then raw guarded publishes, on
/// a fresh server; also how many messages each request stored, stream by stream.
struct Appends {
    /// Messages the connection (load and service alike) sent and received per request.
    messages: (f64, f64),
    service: f64,
    service_cpu: CpuPerOp,
    /// p50 and p99 of `events.put`, and of the raw guarded publish.
    service_latency: (Duration, Duration),
    raw_latency: (Duration, Duration),
    stored: Vec<(String, f64)>,
    raw: f64,
    raw_cpu: CpuPerOp,
    echo: f64,
    echo_cpu: CpuPerOp,
}

async fn appends(n: usize) -> Result<Appends> {
    let server = PlainServer::start().await?;
    let meter = CpuMeter::new(&server)?;
    let client = server.connect().await?;
    let js = jetstream::new(client.clone());
    let service = GlobalService::start(client.clone(), ServiceConfig::default())
        .await
        .context("service")?;
    let load = EventsPutLoad::new(n);
    let before = stream_writes(&js).await?;
    let messages_before = connection_messages(&client);
    // Until the service has applied what the requests appended: their projection is counted
    // with them, not with the raw publishes measured next.
    let measured = async {
        let run = load.run(&client, IN_FLIGHT).await?;
        load.until_projected(&client).await?;
        Ok(run)
    };
    let ((rate, mut service_latencies), service_cpu) = meter.measure(n, measured).await?;
    let messages_after = connection_messages(&client);
    let per_request = |after: u64, before: u64| (after - before) as f64 / n as f64;
    let messages = (
        per_request(messages_after.0, messages_before.0),
        per_request(messages_after.1, messages_before.1),
    );
    let stored = stream_writes(&js)
        .await?
        .into_iter()
        .map(|(name, last)| {
            let delta = last - before.get(&name).copied().unwrap_or(0);
            (name, delta as f64 / n as f64)
        })
        .filter(|(_, per)| *per > 0.0)
        .collect();
    let ((raw, mut raw_latencies), raw_cpu) = meter.measure(n, raw_guarded_publish(&js, n)).await?;
    let quantiles =
        |latencies: &mut Vec<Duration>| (percentile(latencies, 0.5), percentile(latencies, 0.99));
    let (echo, echo_cpu) = meter.measure(n, raw_request_reply(&client, n)).await?;
    service.stop().await?;
    Ok(Appends {
        messages,
        echo,
        echo_cpu,
        service: rate,
        service_cpu,
        service_latency: quantiles(&mut service_latencies),
        raw_latency: quantiles(&mut raw_latencies),
        stored,
        raw,
        raw_cpu,
    })
}

fn print_appends(a: &Appends) {
    let stored: Vec<String> = a
        .stored
        .iter()
        .map(|(name, per)| format!("{name} {per:.2}"))
        .collect();
    println!(
        "| raw guarded publish, {IN_FLIGHT} in flight | {:.0} | | {} |",
        a.raw, a.raw_cpu
    );
    println!(
        "| core request/reply to an instant responder, {IN_FLIGHT} in flight | {:.0} | | {} |",
        a.echo, a.echo_cpu
    );
    println!(
        "| `events.put` through the service, {IN_FLIGHT} in flight | {:.0} | {:.2}× raw publish | {} |",
        a.service,
        a.service / a.raw,
        a.service_cpu
    );
    println!(
        "p50 / p99 at {IN_FLIGHT} in flight: events.put {:?} / {:?}, raw guarded publish {:?} / {:?}",
        a.service_latency.0, a.service_latency.1, a.raw_latency.0, a.raw_latency.1
    );
    println!(
        "messages stored per events.put: {:.2} ({})",
        a.stored.iter().map(|(_, per)| per).sum::<f64>(),
        stored.join(", ")
    );
    println!(
        "messages per events.put on the connection the load and the service share: {:.2} sent, {:.2} received",
        a.messages.0, a.messages.1
    );
}

/// Messages `client`'s connection has sent and received so far.
fn connection_messages(client: &async_nats::Client) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let statistics = client.statistics();
    (
        statistics.out_messages.load(Relaxed),
        statistics.in_messages.load(Relaxed),
    )
}

fn env_number(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|n| n.parse().ok())
}

#[tokio::main]
async fn main() -> Result<()> {
    // As the binary runs (see its doc): the service is measured as shipped.
    natster_global::service::without_transparent_huge_pages();
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
    println!("CPU columns: µs per event or request, this process + nats-server");
    if let Some(n) = env_number("APPENDS_ONLY") {
        println!("| measurement | per second | ratio | CPU µs |");
        println!("|---|---|---|---|");
        print_appends(&appends(n).await?);
        return Ok(());
    }
    let server = PlainServer::start().await?;
    let meter = CpuMeter::new(&server)?;
    let client = server.connect().await?;
    let js = jetstream::new(client.clone());
    Store::ensure(js.clone(), &StoreConfig::default()).await?;
    publish_log(&js, &mixed_event_log(sizes.accounts, 20_000, sizes.events)).await?;

    if let Some(rounds) = env_number("PROJECTOR_ONLY") {
        for r in projection_rounds(&js, &meter, sizes.events, rounds).await? {
            println!(
                "raw pull+ack {:.0}/s (CPU {}), our projector {:.0}/s (CPU {}, {:.3} writes/event): {:.2}×",
                r.raw, r.raw_cpu, r.ours, r.ours_cpu, r.writes_per_event, r.ours / r.raw
            );
        }
        return Ok(());
    }

    let (puts, puts_cpu) = meter
        .measure(sizes.events, raw_kv_puts(&js, sizes.events))
        .await?;
    // The machine's speed drifts from second to second (the server and this process share two
    // cores with whatever else runs): the raw read and our projector are measured in
    // alternating rounds, and each round's ratio is taken against that round's ceiling.
    let rounds = projection_rounds(&js, &meter, sizes.events, ROUNDS).await?;
    let ceiling_of = |r: &Round| r.raw.min(puts / r.writes_per_event);
    let ratios: Vec<f64> = rounds.iter().map(|r| r.ours / ceiling_of(r)).collect();
    let ratio = median(ratios.clone());
    let (low, high) = (
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    let raw = median(rounds.iter().map(|r| r.raw).collect());
    let ours = median(rounds.iter().map(|r| r.ours).collect());
    let writes_per_event = median(rounds.iter().map(|r| r.writes_per_event).collect());
    let ceiling = median(rounds.iter().map(ceiling_of).collect());
    let cpu_median = |f: fn(&Round) -> CpuPerOp| CpuPerOp {
        here: median(rounds.iter().map(|r| f(r).here).collect()),
        server: median(rounds.iter().map(|r| f(r).server).collect()),
    };
    let (ordered, ordered_cpu) = meter
        .measure(
            sizes.events,
            natster_testkit::raw_ordered_read(&js, sizes.events),
        )
        .await?;
    let (original, original_cpu) = meter
        .measure(sizes.original, original_algorithm(&js, sizes.original))
        .await?;
    let appends = appends(sizes.appends).await?;

    println!(
        "| measurement ({} events, {} accounts) | events/s | ratio | CPU µs |",
        sizes.events, sizes.accounts
    );
    println!("|---|---|---|---|");
    println!(
        "| raw JetStream pull + ack (median of {ROUNDS}) | {raw:.0} | | {} |",
        cpu_median(|r| r.raw_cpu)
    );
    println!("| ordered read + decode (no acks) | {ordered:.0} | | {ordered_cpu} |");
    println!("| original algorithm (fetch 1, get, put, ack) | {original:.0} | | {original_cpu} |");
    println!("| raw KV put, {IN_FLIGHT} in flight | {puts:.0} | | {puts_cpu} |");
    println!("| ceiling = min(raw pull+ack, KV puts ÷ {writes_per_event:.3} writes/event) | {ceiling:.0} | | |");
    println!(
        "| our projector (accounts, median of {ROUNDS}) | {ours:.0} | {:.1}× original, {ratio:.2}× ceiling (rounds {low:.2}–{high:.2}) | {} |",
        ours / original,
        cpu_median(|r| r.ours_cpu)
    );
    print_appends(&appends);
    println!("KV writes per event: {writes_per_event:.3}");
    // What one events.put must cost at least, priced with this run's raw operations: the
    // event's guarded publish, every other stored message as a raw KV put, the request/reply
    // hop, and every reader of the log at the cost of reading and decoding an event.
    let total = |c: CpuPerOp| c.here + c.server;
    let stored: f64 = appends.stored.iter().map(|(_, per)| per).sum();
    let floor = total(appends.raw_cpu)
        + (stored - 1.0) * total(puts_cpu)
        + total(appends.echo_cpu)
        + LOG_READERS as f64 * total(ordered_cpu);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = cores as f64 * 1e6 / floor;
    println!(
        "events.put floor from its parts: {floor:.0} µs of CPU per request → at most {most:.0}/s on {cores} cores = {:.2}× raw publish",
        most / appends.raw
    );
    println!(
        "events.put spends {:.0} µs of CPU per request: {:.2}× its floor",
        total(appends.service_cpu),
        total(appends.service_cpu) / floor
    );
    Ok(())
}

//! The read ops (`whoami`, `my.shares`, `stats`) through a real account import, against a raw
//! request/reply responder on the same server behind the same export and import, in one run.
//!
//! The caller has initialised and shares 50 catalogs, half of them online (so `my.shares`
//! answers 50 shares with their online state). Rows at 64 requests in flight and, for the
//! latency of one request alone, at 1. Every row is measured in each of three rounds right
//! after that round's raw baseline; the table shows medians over the rounds (rate, ratio to
//! the round's raw rate, p50, p99, CPU per request of this process — client and service — and
//! of nats-server).
//!
//! `cargo bench --bench whoami` runs the full measurement; without `--bench` (as `cargo test
//! --all-targets` runs it) it does a short smoke run that checks every path answers.

/// The allocator the product binary uses (see `src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use natster_global::service::{GlobalService, ServiceConfig};
use natster_global::tooling::bootstrap::NATSTER;
use natster_testkit::{
    call, cpu_seconds, init_data, percentile, put_event, seq_of, sync, timed_at_in_flight,
    TestWorld,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SHARES: usize = 50;
const ROUNDS: usize = 3;
/// The raw responder's reply: a success envelope like the service's.
const RAW_REPLY: &str = r#"{"code":200,"data":{"raw":true}}"#;

/// One row of the table.
struct Row {
    name: &'static str,
    subject: &'static str,
    in_flight: usize,
    /// The raw row this one is compared with (`None`: it is a baseline).
    baseline: Option<usize>,
    /// Another raw row it is compared with.
    also: Option<usize>,
}

const ROWS: [Row; 7] = [
    Row {
        name: "raw request/reply, 64 in flight",
        subject: "natster.global.bench-raw",
        in_flight: 64,
        baseline: None,
        also: None,
    },
    Row {
        name: "`whoami`, 64 in flight",
        subject: "natster.global.whoami",
        in_flight: 64,
        baseline: Some(0),
        also: None,
    },
    Row {
        name: "raw request/reply answering `my.shares`' reply (same bytes), 64 in flight",
        subject: "natster.global.bench-raw-shares",
        in_flight: 64,
        baseline: None,
        also: None,
    },
    Row {
        name: "`my.shares` (50 shares, 25 online), 64 in flight",
        subject: "natster.global.my.shares",
        in_flight: 64,
        baseline: Some(0),
        also: Some(2),
    },
    Row {
        name: "`stats`, 64 in flight",
        subject: "natster.global.stats",
        in_flight: 64,
        baseline: Some(0),
        also: None,
    },
    Row {
        name: "raw request/reply, 1 in flight",
        subject: "natster.global.bench-raw",
        in_flight: 1,
        baseline: None,
        also: None,
    },
    Row {
        name: "`whoami`, 1 in flight",
        subject: "natster.global.whoami",
        in_flight: 1,
        baseline: Some(5),
        also: None,
    },
];

/// One row measured once.
#[derive(Clone, Copy)]
struct Sample {
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// µs of CPU per request: this process (client and service), nats-server.
    cpu: (f64, f64),
}

/// `requests` requests to `subject`, `in_flight` at a time, each answered with a success.
async fn measure(
    client: &async_nats::Client,
    subject: &str,
    requests: usize,
    in_flight: usize,
    server_pid: &str,
) -> Result<Sample> {
    let cpu_before = (cpu_seconds("self")?, cpu_seconds(server_pid)?);
    let (rate, mut latencies) = timed_at_in_flight(requests, in_flight, |_| async {
        let reply = client.request(subject.to_string(), "".into()).await?;
        ensure!(
            reply.payload.starts_with(b"{\"code\":200"),
            "{subject}: {}",
            String::from_utf8_lossy(&reply.payload)
        );
        Ok(())
    })
    .await?;
    let per_request = |before: f64, after: f64| (after - before) * 1e6 / requests as f64;
    let cpu = (
        per_request(cpu_before.0, cpu_seconds("self")?),
        per_request(cpu_before.1, cpu_seconds(server_pid)?),
    );
    Ok(Sample {
        rate,
        p50: percentile(&mut latencies, 0.5),
        p99: percentile(&mut latencies, 0.99),
        cpu,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn median_duration(values: Vec<Duration>) -> Duration {
    Duration::from_secs_f64(median(values.iter().map(Duration::as_secs_f64).collect()))
}

/// The caller initialises, shares `SHARES` catalogs with `bob`, and brings half of them
/// online; returns `my.shares`' reply once it shows exactly that.
async fn set_up_caller(tw: &TestWorld, alice: &async_nats::Client) -> Result<bytes::Bytes> {
    let (a, b) = (tw.key("alice"), tw.key("bob"));
    let bob = tw.connect("bob").await?;
    seq_of(&put_event(alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    seq_of(&put_event(&bob, "natster_initialized", "none", "none", init_data(&b)).await?)?;
    let mut last = 0;
    for i in 0..SHARES {
        last =
            seq_of(&put_event(alice, "catalog_shared", &format!("c{i}"), &b, Value::Null).await?)?;
    }
    for i in 0..SHARES / 2 {
        let beat = json!({"catalog": format!("c{i}"), "account_key": a, "revision": 1});
        let reply = call(alice, "heartbeats.put", serde_json::to_vec(&beat)?, None).await?;
        ensure!(reply.code == 200, "heartbeat: {reply:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shares = call(alice, "my.shares", "", Some(last)).await?;
        let list = shares.data.as_array().context("my.shares lists shares")?;
        let online = list.iter().filter(|s| s["catalog_online"] == true).count();
        if list.len() == SHARES && online == SHARES / 2 {
            let reply = alice.request("natster.global.my.shares", "".into()).await?;
            return Ok(reply.payload);
        }
        ensure!(
            Instant::now() < deadline,
            "my.shares shows {} shares, {online} online",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    // As the binary runs (see its doc): the service is measured as shipped.
    natster_global::service::without_transparent_huge_pages();
    let full = std::env::args().any(|a| a == "--bench");
    let requests = |in_flight: usize| match (full, in_flight) {
        (true, 1) => 4_000,
        (true, _) => 32_000,
        (false, _) => 128,
    };
    let rounds = if full { ROUNDS } else { 1 };
    let tw = TestWorld::start().await?;
    let server_pid = tw.server.pid().context("server pid")?.to_string();
    let service =
        GlobalService::start(tw.connect(NATSTER).await?, ServiceConfig::default()).await?;

    let alice = tw.connect("alice").await?;
    let shares_reply = set_up_caller(&tw, &alice).await?;
    let shares_len = shares_reply.len();
    // Baselines: raw responders in the service account behind the same export and import,
    // answering a fixed success envelope (or the bytes `my.shares` answers) without
    // touching JetStream.
    let raw = tw.connect(NATSTER).await?;
    for (op, payload) in [
        ("bench-raw", bytes::Bytes::from_static(RAW_REPLY.as_bytes())),
        ("bench-raw-shares", shares_reply),
    ] {
        let mut echo = raw
            .queue_subscribe(format!("*.natster.global.{op}"), "bench".into())
            .await?;
        let responder = raw.clone();
        tokio::spawn(async move {
            while let Some(message) = echo.next().await {
                if let Some(reply) = message.reply {
                    let _ = responder.publish(reply, payload.clone()).await;
                }
            }
        });
    }
    sync(&raw).await?;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); ROWS.len()];
    for _ in 0..rounds {
        for (i, row) in ROWS.iter().enumerate() {
            let n = requests(row.in_flight);
            samples[i].push(measure(&alice, row.subject, n, row.in_flight, &server_pid).await?);
        }
    }

    println!("| op | requests/s | ratio to raw | p50 | p99 | CPU µs/request (here + server) |");
    println!("|---|---|---|---|---|---|");
    for (i, row) in ROWS.iter().enumerate() {
        let s = &samples[i];
        let ratio = match row.baseline {
            None => String::new(),
            Some(base) => {
                let ratio_to = |base: usize| {
                    let ratios = (s.iter().zip(&samples[base]))
                        .map(|(ours, raw)| match row.in_flight {
                            // Alone, what matters is the time of one request.
                            1 => ours.p50.as_secs_f64() / raw.p50.as_secs_f64(),
                            _ => ours.rate / raw.rate,
                        })
                        .collect();
                    median(ratios)
                };
                let unit = if row.in_flight == 1 {
                    "× raw p50"
                } else {
                    "×"
                };
                match row.also {
                    None => format!("{:.2}{unit}", ratio_to(base)),
                    Some(also) => format!(
                        "{:.2}{unit} ({:.2}× the same-size raw reply)",
                        ratio_to(base),
                        ratio_to(also)
                    ),
                }
            }
        };
        println!(
            "| {} | {:.0} | {ratio} | {:?} | {:?} | {:.1} + {:.1} |",
            row.name,
            median(s.iter().map(|s| s.rate).collect()),
            median_duration(s.iter().map(|s| s.p50).collect()),
            median_duration(s.iter().map(|s| s.p99).collect()),
            median(s.iter().map(|s| s.cpu.0).collect()),
            median(s.iter().map(|s| s.cpu.1).collect()),
        );
    }
    println!(
        "(medians of {rounds} rounds; {} requests per row at 64 in flight, {} at 1; `my.shares` replies {shares_len} bytes)",
        requests(64),
        requests(1),
    );
    service.stop().await?;
    Ok(())
}

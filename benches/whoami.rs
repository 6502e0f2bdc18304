//! `whoami` through a real account import against a raw request/reply responder on the same
//! server and the same import path, as a ratio measured in one run.
//!
//! `cargo bench --bench whoami` runs the full measurement; without `--bench` (as `cargo test
//! --all-targets` runs it) it does a short smoke run that checks both paths answer.

/// The allocator the product binary uses (see `src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{ensure, Result};
use futures::StreamExt;
use natster_global::service::GlobalService;
use natster_global::service::ServiceConfig;
use natster_global::tooling::bootstrap::NATSTER;
use natster_testkit::{sync, TestWorld};
use std::time::{Duration, Instant};

const CONCURRENCY: usize = 32;

struct Run {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort();
        self.latencies[((self.latencies.len() - 1) as f64 * p) as usize]
    }
}

async fn measure(client: &async_nats::Client, subject: &str, requests: usize) -> Result<Run> {
    let started = Instant::now();
    let per_worker = requests / CONCURRENCY;
    let workers = (0..CONCURRENCY).map(|_| {
        let client = client.clone();
        let subject = subject.to_string();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let t = Instant::now();
                let reply = client.request(subject.clone(), "".into()).await?;
                ensure!(
                    reply.payload.starts_with(b"{\"code\":404"),
                    "unexpected reply"
                );
                latencies.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        })
    });
    let mut latencies = Vec::with_capacity(requests);
    for worker in futures::future::join_all(workers).await {
        latencies.extend(worker??);
    }
    Ok(Run {
        requests: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let requests = if full { 64_000 } else { 640 };
    let tw = TestWorld::start().await?;
    let service =
        GlobalService::start(tw.connect(NATSTER).await?, ServiceConfig::default()).await?;

    // Baseline: a raw responder in the service account behind the same export and import,
    // answering a fixed 404 envelope without touching JetStream.
    let raw = tw.connect(NATSTER).await?;
    let mut echo = raw
        .queue_subscribe("*.natster.global.bench-raw", "bench".into())
        .await?;
    sync(&raw).await?;
    let responder = raw.clone();
    tokio::spawn(async move {
        while let Some(message) = echo.next().await {
            if let Some(reply) = message.reply {
                let _ = responder
                    .publish(reply, r#"{"code":404,"error":"raw","data":null}"#.into())
                    .await;
            }
        }
    });

    let alice = tw.connect("alice").await?;
    let mut baseline = measure(&alice, "natster.global.bench-raw", requests).await?;
    let mut ours = measure(&alice, "natster.global.whoami", requests).await?;
    let ratio = ours.per_second() / baseline.per_second();
    println!("| path | requests/s | p50 | p99 |");
    println!("|---|---|---|---|");
    for (name, run) in [
        ("raw request/reply (baseline)", &mut baseline),
        ("whoami (KV read)", &mut ours),
    ] {
        println!(
            "| {name} | {:.0} | {:?} | {:?} |",
            run.per_second(),
            run.percentile(0.5),
            run.percentile(0.99)
        );
    }
    println!("whoami / raw = {ratio:.2} ({requests} requests each, {CONCURRENCY} in flight)");
    service.stop().await?;
    Ok(())
}

//! Crash safety: `kill -9` the service in the middle of a batch of a 20 000-event backlog (records
//! written, checkpoint not), restart it, and every bucket equals a clean rebuild, byte for byte;
//! `kill -9` it between counting a transition and announcing it (and between receiving a share
//! event and announcing it), and the restart announces both.

use anyhow::{Context, Result};
use async_nats::jetstream;
use natster_global::test_util::{
    checkpoint, counters_key, Accounts, Catalogs, Counters, OAuthIndex, Projection,
};
use natster_global::tooling::bootstrap::NATSTER;
use natster_testkit::{
    dump_bucket, expected_records, mixed_event_log, publish_log, read_events, stream_last_seq,
    TestWorld,
};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EVENTS: usize = 20_000;

/// `serve` as a child process on `tw`'s server, with RUST_LOG `log_filter`.
fn serve_command(tw: &TestWorld, log_filter: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_natster-global"));
    command
        .args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--log-format",
            "text",
            "--nats-url",
            &tw.server.url(),
            "--creds",
        ])
        .arg(tw.world.creds_path(NATSTER))
        .env_remove("USER_JWT")
        .env("RUST_LOG", log_filter)
        .stdout(Stdio::null());
    command
}

/// Starts `serve` as a child process. Its log is dropped unless `CRASH_LOG` names a file to
/// append it to (with `CRASH_RUST_LOG` as its filter, `warn` by default): a debugging aid.
fn spawn_serve(tw: &TestWorld) -> Result<Child> {
    let log = match std::env::var_os("CRASH_LOG") {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)?,
        ),
        None => Stdio::null(),
    };
    let filter = std::env::var("CRASH_RUST_LOG").unwrap_or_else(|_| "warn".into());
    Ok(serve_command(tw, &filter)
        // Passes of a quarter MiB: the account and catalog projections (1 MiB and 0.4 MiB
        // of records) catch up from empty in several passes, so the kill lands in the
        // first pass's writes and the restart writes that part again, then the others.
        .env("NATSTER_PROJECTION_PASS_MIB", "0.25")
        .stderr(log)
        .spawn()?)
}

async fn checkpoints(stats: &jetstream::kv::Store) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for name in [Accounts::NAME, Catalogs::NAME, OAuthIndex::NAME] {
        out.push(
            checkpoint(stats, name)
                .await
                .map_err(anyhow::Error::msg)?
                .applied_seq,
        );
    }
    Ok(out)
}

/// Writes so far to the accounts bucket (records written by any batch, checkpointed or not).
async fn record_writes(js: &jetstream::Context) -> Result<u64> {
    // The bucket does not exist until the service has created it.
    Ok(stream_last_seq(js, &format!("KV_{}", Accounts::BUCKET))
        .await
        .unwrap_or(0))
}

#[tokio::test]
async fn kill_9_during_a_backlog_then_restart_equals_a_clean_rebuild() -> Result<()> {
    let tw = TestWorld::start().await?;
    let js = jetstream::new(tw.connect(NATSTER).await?);
    js.create_stream(jetstream::stream::Config {
        name: "NATSTER_EVENTS".into(),
        subjects: vec!["natster.events.>".into()],
        ..Default::default()
    })
    .await?;
    let log = mixed_event_log(2_000, 3_000, EVENTS);
    publish_log(&js, &log).await?;
    eprintln!("backlog of {} events appended", log.len());

    let mut first = spawn_serve(&tw)?;
    // Wait for the service to create its buckets and start projecting, then kill it mid-way.
    let started = Instant::now();
    let stats = loop {
        if let Ok(stats) = js.get_key_value("PROJ_STATS").await {
            break stats;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "no PROJ_STATS");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The hardest moment: the first records of a batch are written, its checkpoint is not.
    let at_kill = loop {
        if record_writes(&js).await? > 0 {
            break checkpoints(&stats).await?;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "projection never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    first.kill()?; // SIGKILL
    first.wait()?;
    let at_kill_after = checkpoints(&stats).await?;
    eprintln!(
        "killed at checkpoints {at_kill:?} (after the kill: {at_kill_after:?}), {} account records written",
        record_writes(&js).await?
    );
    assert!(
        at_kill_after.iter().any(|&c| c < EVENTS as u64),
        "the kill happened before the backlog was projected: {at_kill_after:?}"
    );

    let mut second = spawn_serve(&tw)?;
    let restarted = Instant::now();
    while checkpoints(&stats).await? != vec![EVENTS as u64; 3] {
        anyhow::ensure!(
            restarted.elapsed() < Duration::from_secs(60),
            "projections did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("caught up {:?} after the restart", restarted.elapsed());
    second.kill()?;
    second.wait()?;

    eprintln!("reading the log back");
    // A clean rebuild, in memory, from the log as stored.
    let events = read_events(&js).await?;
    eprintln!("comparing buckets");
    let (accounts, account_counts) = expected_records::<Accounts>(&events);
    let (catalogs, catalog_counts) = expected_records::<Catalogs>(&events);
    let stored = dump_bucket(&js.get_key_value(Accounts::BUCKET).await?).await?;
    let differing: Vec<&String> = accounts
        .keys()
        .filter(|k| stored.get(*k) != accounts.get(*k))
        .collect();
    for key in differing.iter().take(2) {
        eprintln!(
            "{key}:\n stored   {}\n expected {}",
            String::from_utf8_lossy(stored.get(*key).map(|v| v.as_slice()).unwrap_or(b"-")),
            String::from_utf8_lossy(&accounts[*key])
        );
    }
    eprintln!(
        "{} of {} differ; stored has {} keys",
        differing.len(),
        accounts.len(),
        stored.len()
    );
    assert_eq!(stored, accounts);
    assert_eq!(
        dump_bucket(&js.get_key_value(Catalogs::BUCKET).await?).await?,
        catalogs
    );
    let counters = |name: &str| {
        let stats = stats.clone();
        let key = counters_key(name);
        async move {
            let value = stats.get(&key).await?.context("counters")?;
            Ok::<Counters, anyhow::Error>(serde_json::from_slice(&value)?)
        }
    };
    let a = counters(Accounts::NAME).await?;
    assert_eq!(a.total_initialized, account_counts.total_initialized);
    assert_eq!(a.total_initialized, 2_000);
    let c = counters(Catalogs::NAME).await?;
    assert_eq!(c.share_count, catalog_counts.share_count);
    Ok(())
}

/// `serve` as a child process whose tasks halt at the crash points `halt_at` (empty: none),
/// with its warn log on a channel line by line.
fn spawn_halting_serve(
    tw: &TestWorld,
    halt_at: &str,
) -> Result<(Child, tokio::sync::mpsc::UnboundedReceiver<String>)> {
    let mut child = serve_command(tw, "warn")
        .env("NATSTER_HALT_AT", halt_at)
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    Ok((child, lines))
}

/// Calls `op` until the service answers (it is starting); returns the first envelope.
async fn call_when_up(
    client: &async_nats::Client,
    op: &str,
    body: serde_json::Value,
) -> Result<natster_global::contract::Envelope> {
    let started = Instant::now();
    loop {
        match natster_testkit::call(client, op, serde_json::to_vec(&body)?, None).await {
            Ok(envelope) => return Ok(envelope),
            // No responders yet.
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

#[tokio::test]
async fn kill_9_before_notices_go_out_then_restart_announces_them() -> Result<()> {
    let tw = TestWorld::start().await?;
    let (alice, bob) = (tw.connect("alice").await?, tw.connect("bob").await?);
    let (a, b) = (tw.key("alice"), tw.key("bob"));
    let mut feed = natster_testkit::FeedReader::open(&bob).await?;
    let (mut first, mut log) = spawn_halting_serve(&tw, "before-announce,before-share-notice")?;
    for (client, key) in [(&alice, &a), (&bob, &b)] {
        let init = json!({"catalog": "none", "target": "none", "event_type": "natster_initialized",
            "data": natster_testkit::init_data(key)});
        assert_eq!(call_when_up(client, "events.put", init).await?.code, 200);
    }
    let share =
        json!({"catalog": "films", "target": b, "event_type": "catalog_shared", "data": null});
    assert_eq!(call_when_up(&alice, "events.put", share).await?.code, 200);
    let heartbeat = json!({"catalog": "films", "account_key": a, "revision": 3});
    assert_eq!(
        call_when_up(&alice, "heartbeats.put", heartbeat)
            .await?
            .code,
        200
    );

    // The share notice is received but not published; the transition to online is counted
    // but not announced.
    let mut halted = std::collections::BTreeSet::new();
    while halted.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(30), log.recv())
            .await
            .context("the service never halted at both points")?
            .context("the service's log ended")?;
        for point in ["before-announce", "before-share-notice"] {
            if line.contains("halted at a crash point") && line.contains(point) {
                halted.insert(point);
            }
        }
    }
    let js = jetstream::new(tw.connect(NATSTER).await?);
    let counters: Counters = serde_json::from_slice(
        &js.get_key_value("PROJ_STATS")
            .await?
            .get(counters_key("online"))
            .await?
            .context("online counters")?,
    )?;
    assert_eq!(counters.running_catalogs, 1, "counted before the kill");
    assert!(
        feed.next_notice(Duration::from_millis(200)).await.is_err(),
        "no notice went out before the kill"
    );
    first.kill()?; // SIGKILL
    first.wait()?;

    let (mut second, _log) = spawn_halting_serve(&tw, "")?;
    let mut kinds = std::collections::BTreeSet::new();
    while !(kinds.contains("catalog_shared") && kinds.contains("catalog_online")) {
        let (kind, payload) = feed.next_notice(Duration::from_secs(40)).await?;
        assert_eq!(payload["catalog"], "films", "{kind}: {payload}");
        kinds.insert(kind);
    }
    second.kill()?;
    second.wait()?;
    Ok(())
}

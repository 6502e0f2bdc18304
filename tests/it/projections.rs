//! Projections and the reactor with several instances: failover, stale writers, rebuild,
//! adoption of an original-layout log, auto-share exactly once, batching of a backlog.

use anyhow::{Context, Result};
use async_nats::jetstream;
use natster_global::model::{Event, EventBody, EventSubject, EventType};
use natster_global::service::HubShare;
use natster_global::service::RunnerConfig;
use natster_global::test_util::{
    apply_batch, counters_key, status, Accounts, Catalogs, Counters, OAuthIndex, Projection,
};
use natster_global::tooling::bootstrap::HUB;
use natster_testkit::{
    call, events_last_seq, init_data, put_event, rebuild_projection, seq_of, Harness,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Every key and value of a bucket.
async fn dump(js: &jetstream::Context, bucket: &str) -> Result<BTreeMap<String, Vec<u8>>> {
    natster_testkit::dump_bucket(&js.get_key_value(bucket).await?).await
}

async fn count_subject(js: &jetstream::Context, filter: &str) -> Result<u64> {
    use futures::TryStreamExt;
    let stream = js.get_stream("NATSTER_EVENTS").await?;
    let mut subjects = stream.info_with_subjects(filter).await?;
    let mut total = 0;
    while let Some((_, n)) = subjects.try_next().await? {
        total += n as u64;
    }
    Ok(total)
}

/// Polls `check` until it returns true or `within` passes.
pub(crate) async fn eventually<F, Fut>(within: Duration, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let started = Instant::now();
    loop {
        if check().await? {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn auto_share_happens_exactly_once_with_two_instances_and_across_restarts() -> Result<()> {
    let mut h = Harness::start(&["alice", "bob"]).await?;
    let hub = HubShare {
        account: h.key(HUB),
        catalog: "hubcatalog".into(),
    };
    h.services.pop().context("instance")?.stop().await?;
    for _ in 0..2 {
        let hub = hub.clone();
        h.add_instance(move |c| c.hub = Some(hub)).await?;
    }
    let (alice, bob) = (h.connect("alice").await?, h.connect("bob").await?);
    let (a, b, hub_key) = (h.key("alice"), h.key("bob"), h.key(HUB));
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    let js = h.service_js().await?;
    let alice_filter = format!("natster.events.{hub_key}.{a}.hubcatalog.catalog_shared");
    eventually(Duration::from_secs(15), || async {
        Ok(count_subject(&js, &alice_filter).await? == 1)
    })
    .await?;
    let last = events_last_seq(&js).await?;
    let shares = call(&alice, "my.shares", "", Some(last)).await?;
    assert_eq!(shares.data[0]["from_account"], hub_key.as_str());
    assert_eq!(shares.data[0]["catalog"], "hubcatalog");
    // The hub did not initialise: it does not count; the auto-share does.
    let stats = call(&alice, "stats", "", Some(last)).await?;
    assert_eq!(stats.data["total_initialized"], 1);
    assert_eq!(stats.data["share_count"], 1);

    // Restart every instance; then a new account gets its share, and alice still has one.
    let services = std::mem::take(&mut h.services);
    for service in services {
        service.stop().await?;
    }
    for _ in 0..2 {
        let hub = hub.clone();
        h.add_instance(move |c| c.hub = Some(hub)).await?;
    }
    seq_of(&put_event(&bob, "natster_initialized", "none", "none", init_data(&b)).await?)?;
    let bob_filter = format!("natster.events.{hub_key}.{b}.hubcatalog.catalog_shared");
    eventually(Duration::from_secs(15), || async {
        Ok(count_subject(&js, &bob_filter).await? == 1)
    })
    .await?;
    assert_eq!(count_subject(&js, &alice_filter).await?, 1);
    assert_eq!(
        count_subject(&js, "natster.events.*.*.*.catalog_shared").await?,
        2
    );
    h.stop().await
}

#[tokio::test]
async fn a_standby_instance_takes_over_projections_within_10_seconds() -> Result<()> {
    let mut h = Harness::start(&["alice", "bob"]).await?;
    let (alice, bob) = (h.connect("alice").await?, h.connect("bob").await?);
    let (a, b) = (h.key("alice"), h.key("bob"));
    let seq =
        seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    // The first instance applied it, so it holds the pins.
    assert_eq!(call(&alice, "whoami", "", Some(seq)).await?.code, 200);
    h.add_instance(|_| {}).await?;
    // The first instance dies without releasing anything.
    h.services.remove(0).kill().await;

    let seq =
        seq_of(&put_event(&bob, "natster_initialized", "none", "none", init_data(&b)).await?)?;
    let took = eventually(Duration::from_secs(10), || async {
        Ok(call(&bob, "whoami", "", Some(seq)).await?.code == 200)
    })
    .await?;
    eprintln!("takeover after {took:?}");
    assert!(took < Duration::from_secs(10));
    h.stop().await
}

#[tokio::test]
async fn a_stale_writer_cannot_overwrite_newer_state() -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let alice = h.connect("alice").await?;
    let (a, b) = (h.key("alice"), h.key("bob"));
    let init =
        seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    let shared = seq_of(&put_event(&alice, "catalog_shared", "films", &b, Value::Null).await?)?;
    assert_eq!(
        call(&alice, "my.shares", "", Some(shared))
            .await?
            .data
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let js = h.service_js().await?;
    let before = dump(&js, "PROJ_ACCOUNT").await?;
    let stats_before = dump(&js, "PROJ_STATS").await?;
    // A stale owner replays the old init batch.
    let old = vec![Event {
        seq: init,
        time: 1,
        subject: EventSubject::new(&a, "none", "none", EventType::NatsterInitialized),
        body: EventBody::Empty,
    }];
    let records = js.get_key_value(Accounts::BUCKET).await?;
    let stats = js.get_key_value("PROJ_STATS").await?;
    let parked = js.get_key_value("PROJ_PARKED").await?;
    apply_batch::<Accounts>(&js.client(), &records, &stats, &parked, &old, init, "stale")
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        dump(&js, "PROJ_ACCOUNT").await?,
        before,
        "records unchanged"
    );
    let counters_key = counters_key(Accounts::NAME);
    assert_eq!(
        dump(&js, "PROJ_STATS").await?.get(&counters_key),
        stats_before.get(&counters_key),
        "counters unchanged"
    );
    h.stop().await
}

#[tokio::test]
async fn rebuild_gives_the_same_bytes_and_repairs_damage() -> Result<()> {
    let h = Harness::start(&["alice", "bob", "carol"]).await?;
    let (alice, bob, web) = (
        h.connect("alice").await?,
        h.connect("bob").await?,
        h.connect("WEB").await?,
    );
    let (a, b, c) = (h.key("alice"), h.key("bob"), h.key("carol"));
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    seq_of(&put_event(&bob, "natster_initialized", "none", "none", init_data(&b)).await?)?;
    for (catalog, to) in [("films", &b), ("films", &c), ("music", &b)] {
        seq_of(&put_event(&alice, "catalog_shared", catalog, to, Value::Null).await?)?;
    }
    seq_of(&put_event(&alice, "catalog_unshared", "films", &c, Value::Null).await?)?;
    seq_of(&put_event(&bob, "catalog_imported", "films", &a, Value::Null).await?)?;
    let ctx = json!({"account_public_key": a, "access_token": "tok", "user_id": "u"});
    let code = call(&alice, "otc.generate", serde_json::to_vec(&ctx)?, None).await?;
    let claim = json!({"code": code.data["code"], "oauth_id": "gh|1"});
    assert_eq!(
        call(&web, "otc.claim", serde_json::to_vec(&claim)?, None)
            .await?
            .code,
        200
    );
    let js = h.service_js().await?;
    let last = events_last_seq(&js).await?;
    assert!(
        h.services[0]
            .wait_projected(last, Duration::from_secs(10))
            .await
    );

    let buckets = ["PROJ_ACCOUNT", "PROJ_CATALOG", "PROJ_OAUTH"];
    let mut incremental = BTreeMap::new();
    for bucket in buckets {
        incremental.insert(bucket, dump(&js, bucket).await?);
    }
    let counters_before = dump(&js, "PROJ_STATS").await?;
    let events = js.get_stream("NATSTER_EVENTS").await?;
    let stats = js.get_key_value("PROJ_STATS").await?;

    let report = rebuild_projection::<Accounts>(&js, 1024 * 1024, |_, _| {}).await?;
    assert_eq!((report.written, report.deleted), (0, 0), "{report:?}");
    assert_eq!(report.unchanged, 3);
    let catalogs = js.get_key_value(Catalogs::BUCKET).await?;
    // Damage: a corrupted record and a record that should not exist.
    catalogs.put("music", "garbage".into()).await?;
    catalogs.put("ghost", "{}".into()).await?;
    let report = rebuild_projection::<Catalogs>(&js, 1024 * 1024, |_, _| {}).await?;
    assert_eq!(
        (report.written, report.deleted, report.unchanged),
        (1, 1, 1),
        "{report:?}"
    );
    rebuild_projection::<OAuthIndex>(&js, 1024 * 1024, |_, _| {}).await?;

    for bucket in buckets {
        assert_eq!(
            dump(&js, bucket).await?,
            incremental[bucket],
            "{bucket} after rebuild"
        );
    }
    for name in [Accounts::NAME, Catalogs::NAME] {
        let key = counters_key(name);
        let before: Counters = serde_json::from_slice(&counters_before[&key])?;
        let after: Counters = serde_json::from_slice(&dump(&js, "PROJ_STATS").await?[&key])?;
        assert_eq!(
            (before.total_initialized, before.share_count),
            (after.total_initialized, after.share_count)
        );
    }
    let status = status(&events, &stats, Accounts::NAME)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(status.applied_seq, last);
    assert_eq!(status.lag_events, 0);
    assert!(
        !status.holder.starts_with("rebuild@"),
        "the rebuild released the lease"
    );
    // The runner still works after a rebuild.
    let seq = seq_of(&put_event(&bob, "catalog_shared", "books", &a, Value::Null).await?)?;
    let shares = call(&alice, "my.shares", "", Some(seq)).await?;
    assert_eq!(shares.data.as_array().map(Vec::len), Some(3), "{shares:?}");
    h.stop().await
}

#[tokio::test]
async fn an_original_layout_log_is_adopted_and_replayed() -> Result<()> {
    use natster_testkit::TestWorld;
    let tw = TestWorld::start_with(&["alice", "bob", "carol"], |_| Ok(())).await?;
    let (a, b, c) = (tw.key("alice"), tw.key("bob"), tw.key("carol"));
    let js = jetstream::new(tw.connect("NATSTER").await?);
    js.create_stream(jetstream::stream::Config {
        name: "NATSTER_EVENTS".into(),
        subjects: vec!["natster.events.>".into()],
        ..Default::default()
    })
    .await?;
    let legacy: Vec<(String, Vec<u8>)> = vec![
        (
            format!("natster.events.{a}.none.none.natster_initialized"),
            serde_json::to_vec(&init_data(&a))?,
        ),
        (
            format!("natster.events.{b}.none.none.natster_initialized"),
            serde_json::to_vec(&init_data(&b))?,
        ),
        // The original allowed a second init.
        (
            format!("natster.events.{a}.none.none.natster_initialized"),
            serde_json::to_vec(&init_data(&a))?,
        ),
        (
            format!("natster.events.{a}.{b}.movies.catalog_shared"),
            b"null".to_vec(),
        ),
        (
            format!("natster.events.{a}.{c}.movies.catalog_shared"),
            Vec::new(),
        ),
        (
            format!("natster.events.{a}.{c}.movies.catalog_unshared"),
            b"null".to_vec(),
        ),
        (
            format!("natster.events.{b}.{a}.movies.catalog_imported"),
            b"null".to_vec(),
        ),
        // Someone else sharing alice's name (the original did not prevent it).
        (
            format!("natster.events.{b}.{c}.movies.catalog_shared"),
            b"null".to_vec(),
        ),
        (
            format!("natster.events.{a}.none.none.context_bound"),
            serde_json::to_vec(
                &json!({"oauth_id": "gh|7", "bound_context": {"account_public_key": a, "access_token": "legacy"}}),
            )?,
        ),
        (
            format!("natster.events.{c}.none.none.weird_type"),
            b"{}".to_vec(),
        ),
    ];
    for (subject, body) in &legacy {
        js.publish(subject.clone(), body.clone().into())
            .await?
            .await?;
    }
    let mut h = Harness {
        tw,
        services: vec![],
    };
    h.add_instance(|_| {}).await?;
    let last = legacy.len() as u64;
    let alice = h.connect("alice").await?;
    let who = call(&alice, "whoami", "", Some(last)).await?;
    assert_eq!(who.code, 200);
    assert_eq!(who.data["oauth_id"], "gh|7");
    let stored = js
        .get_stream("NATSTER_EVENTS")
        .await?
        .get_raw_message(1)
        .await?;
    assert_eq!(
        who.data["initialized"].as_i64(),
        Some(stored.time.unix_timestamp()),
        "the first init counts"
    );
    let stats = call(&alice, "stats", "", Some(last)).await?;
    assert_eq!(stats.data["total_initialized"], 2);
    assert_eq!(
        stats.data["share_count"], 1,
        "only the owner's active share"
    );
    let catalog: Value = serde_json::from_slice(
        &js.get_key_value("PROJ_CATALOG")
            .await?
            .get("movies")
            .await?
            .context("movies")?,
    )?;
    assert_eq!(catalog["owner"], a.as_str());
    assert_eq!(catalog["shared_with"], json!([b]));
    let bob = h.connect("bob").await?;
    let bob_shares = call(&bob, "my.shares", "", Some(last)).await?;
    assert!(bob_shares
        .data
        .as_array()
        .context("list")?
        .iter()
        .any(|s| s["from_account"] == a.as_str()));
    // Decisions see the adopted state: the name is alice's, bob already imported.
    assert_eq!(
        put_event(&bob, "catalog_shared", "movies", &a, Value::Null)
            .await?
            .code,
        409
    );
    assert_eq!(
        put_event(&bob, "catalog_imported", "movies", &a, Value::Null)
            .await?
            .code,
        409
    );
    assert_eq!(
        put_event(&alice, "natster_initialized", "none", "none", init_data(&a))
            .await?
            .code,
        409
    );
    let web = h.connect("WEB").await?;
    let ctx = call(&web, "context.get", "gh|7", Some(last)).await?;
    assert_eq!(ctx.code, 200);
    assert_eq!(ctx.data["context"]["access_token"], "");
    // The adopted log was not altered.
    assert!(events_last_seq(&js).await? >= last);
    let first = js
        .get_stream("NATSTER_EVENTS")
        .await?
        .get_raw_message(4)
        .await?;
    assert_eq!(&first.payload[..], b"null");
    h.stop().await
}

#[tokio::test]
async fn the_projections_cli_shows_status_and_rebuilds() -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let alice = h.connect("alice").await?;
    let (a, b) = (h.key("alice"), h.key("bob"));
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    let seq = seq_of(&put_event(&alice, "catalog_shared", "films", &b, Value::Null).await?)?;
    assert!(
        h.services[0]
            .wait_projected(seq, Duration::from_secs(10))
            .await
    );
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_natster-global"))
            .args(args)
            .args(["--nats-url", &h.tw.server.url(), "--creds"])
            .arg(h.tw.world.creds_path("NATSTER"))
            .env_remove("USER_JWT")
            .output()
    };
    let status = cli(&["projections", "status", "--json"])?;
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let rows: Value = serde_json::from_slice(&status.stdout)?;
    let rows = rows.as_array().context("rows")?;
    assert_eq!(rows.len(), 4);
    for row in rows {
        if row["projection"] == "online" {
            assert_eq!(row["stream"], "NATSTER_ONLINE", "{row}");
            assert_eq!(row["applied_seq"], 0, "no heartbeats yet: {row}");
        } else {
            assert_eq!(row["stream"], "NATSTER_EVENTS", "{row}");
            assert_eq!(row["applied_seq"], seq, "{row}");
        }
        assert_eq!(row["lag_events"], 0);
        assert!(
            !row["holder"].as_str().unwrap_or_default().is_empty(),
            "a running instance holds it"
        );
    }
    let table = cli(&["projections", "status"])?;
    let text = String::from_utf8(table.stdout)?;
    assert!(
        ["accounts", "catalogs", "oauth", "online", "NATSTER_ONLINE"]
            .iter()
            .all(|word| text.contains(word)),
        "{text}"
    );

    let rebuilt = cli(&["projections", "rebuild", "--projection", "catalogs"])?;
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let out = String::from_utf8(rebuilt.stdout)?;
    assert!(
        out.contains(&format!("replayed {seq} events up to sequence {seq}")),
        "{out}"
    );
    assert!(
        out.contains("0 records written, 1 unchanged, 0 deleted"),
        "{out}"
    );
    let unknown = cli(&["projections", "rebuild", "--projection", "nope"])?;
    assert!(!unknown.status.success());
    // The service keeps projecting after the rebuild handed the lease back.
    let seq = seq_of(&put_event(&alice, "catalog_unshared", "films", &b, Value::Null).await?)?;
    assert_eq!(
        call(&alice, "my.shares", "", Some(seq)).await?.data,
        json!([])
    );
    h.stop().await
}

/// A server whose event log holds a mixed log of 4 000 events over 300 accounts and 400
/// names (the server, a JetStream context on it, the number of events).
async fn a_published_mixed_log() -> Result<(natster_testkit::PlainServer, jetstream::Context, u64)>
{
    use natster_testkit::{mixed_event_log, publish_log, PlainServer};
    let server = PlainServer::start().await?;
    let js = jetstream::new(server.connect().await?);
    natster_global::test_util::Store::ensure(js.clone(), &Default::default()).await?;
    let log = mixed_event_log(300, 400, 4_000);
    publish_log(&js, &log).await?;
    Ok((server, js, log.len() as u64))
}

/// A cache smaller than the records drops written records and reads them again when they are
/// touched next; the records it leaves are the same.
#[tokio::test]
async fn a_cache_smaller_than_the_records_reads_them_again_and_changes_nothing() -> Result<()> {
    use natster_testkit::project_from_empty;
    let (_server, js, events) = a_published_mixed_log().await?;
    let roomy = project_from_empty::<Accounts>(&js, events, RunnerConfig::default()).await?;
    assert_eq!(roomy.cache_misses, 0, "an empty bucket is known whole");
    let records = dump(&js, Accounts::BUCKET).await?;
    let small = RunnerConfig {
        max_batch_records: 50,
        cache_bytes: 4 << 10,
        ..Default::default()
    };
    let tight = project_from_empty::<Accounts>(&js, events, small).await?;
    assert!(
        tight.cache_misses > 300,
        "records read again: {}",
        tight.cache_misses
    );
    assert_eq!(dump(&js, Accounts::BUCKET).await?, records);
    Ok(())
}

/// Runs the accounts projection over the whole log from empty buckets with `config`; returns
/// how many record writes it made and the bucket it left.
async fn project_backlog(
    js: &jetstream::Context,
    events: u64,
    config: RunnerConfig,
) -> Result<(u64, BTreeMap<String, Vec<u8>>)> {
    let run = natster_testkit::project_from_empty::<Accounts>(js, events, config).await?;
    Ok((run.record_writes, dump(js, Accounts::BUCKET).await?))
}

/// Under a backlog a flush waits for more events (bounded by the records it touches), so a
/// backlog whose records fit in one batch is written with one write per record; a smaller
/// bound splits it into more flushes; both leave the same bytes.
#[tokio::test]
async fn a_backlog_is_written_once_per_record_within_the_batch_bound() -> Result<()> {
    let (_server, js, events) = a_published_mixed_log().await?;
    // No flush for time's sake: only the end of the backlog or the bound starts one.
    let patient = RunnerConfig {
        max_linger: Duration::from_secs(3600),
        ..Default::default()
    };
    let (writes, records) = project_backlog(&js, events, patient.clone()).await?;
    assert!(records.len() >= 300, "every account has a record");
    assert_eq!(
        writes,
        records.len() as u64,
        "one write per record for a backlog within the bound"
    );
    let (bounded_writes, bounded_records) = project_backlog(
        &js,
        events,
        RunnerConfig {
            max_batch_records: 50,
            ..patient
        },
    )
    .await?;
    assert!(
        bounded_writes > writes,
        "a bound of 50 records splits the backlog into more flushes ({bounded_writes} writes)"
    );
    assert_eq!(
        bounded_records, records,
        "batching never changes the result"
    );
    Ok(())
}

/// Under a deep backlog a flush waits for the batch bound (or `backlog_linger`), not for
/// `max_linger`: a backlog read with no linger at all is written once per record when all of
/// it counts as deep, and with more writes when none of it does.
#[tokio::test]
async fn a_deep_backlog_is_flushed_by_its_bound_not_by_the_linger() -> Result<()> {
    let (_server, js, events) = a_published_mixed_log().await?;
    let hasty = RunnerConfig {
        max_linger: Duration::ZERO,
        backlog_linger: Duration::from_secs(3600),
        deep_backlog: events,
        ..Default::default()
    };
    let (shallow_writes, records) = project_backlog(&js, events, hasty.clone()).await?;
    let deep = RunnerConfig {
        deep_backlog: 0,
        ..hasty
    };
    let (deep_writes, deep_records) = project_backlog(&js, events, deep).await?;
    assert_eq!(
        deep_writes,
        records.len() as u64,
        "one write per record under a deep backlog"
    );
    assert!(
        shallow_writes > deep_writes,
        "with no linger, a shallow backlog flushes as it reads ({shallow_writes} writes)"
    );
    assert_eq!(deep_records, records, "batching never changes the result");
    Ok(())
}

/// The accounts projection's counters as stored.
async fn account_counters(js: &jetstream::Context) -> Result<Counters> {
    let stats = js.get_key_value("PROJ_STATS").await?;
    let bytes = stats
        .get(counters_key(Accounts::NAME))
        .await?
        .context("counters")?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// With its bucket empty and a deep backlog, a runner reads the log once per part of the keys
/// that fits its pass budget and writes each record once, however small the flushes of the
/// one-pass fold are; the records and counters are those of the one-pass fold. Nothing is
/// applied (for readers) before the whole run is. The runner's `in_passes` signal is raised
/// while the passes run and lowered after; a fold in one pass never raises it.
#[tokio::test]
async fn a_backlog_from_empty_is_caught_up_in_passes_writing_each_record_once() -> Result<()> {
    let (_server, js, events) = a_published_mixed_log().await?;
    let small_flushes = RunnerConfig {
        max_batch_records: 50,
        deep_backlog: 0,
        pass_bytes: 0,
        ..Default::default()
    };
    let one_pass =
        natster_testkit::project_from_empty::<Accounts>(&js, events, small_flushes.clone()).await?;
    let records = dump(&js, Accounts::BUCKET).await?;
    let one_pass_counters = account_counters(&js).await?;
    assert!(one_pass.record_writes > records.len() as u64);
    assert!(!one_pass.in_passes_raised, "no passes, no signal");

    let in_passes = RunnerConfig {
        pass_bytes: 32 << 10,
        ..small_flushes
    };
    let run = natster_testkit::project_from_empty::<Accounts>(&js, events, in_passes).await?;
    assert_eq!(
        dump(&js, Accounts::BUCKET).await?,
        records,
        "the same records"
    );
    // (`counted_seq` may lag where nothing was counted.)
    let counters = account_counters(&js).await?;
    assert_eq!(
        (counters.total_initialized, counters.share_count),
        (
            one_pass_counters.total_initialized,
            one_pass_counters.share_count
        ),
        "the same counters"
    );
    assert_eq!(counters.total_initialized, 300);
    assert_eq!(
        run.record_writes,
        records.len() as u64,
        "each record written once"
    );
    let applied: Vec<u64> = run.timeline.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(
        applied,
        [0, events],
        "applied at once, when every part is written"
    );
    assert!(
        run.passes >= 8,
        "600 KiB of records in parts of 32 KiB: {} passes",
        run.passes
    );
    // Each pass writes its progress twice (before and after its records).
    assert!(run.stats_writes >= 2 * run.passes);
    assert!(
        run.in_passes_raised && !run.in_passes_at_end,
        "the signal is raised while the passes run and lowered after"
    );
    let stats = js.get_key_value("PROJ_STATS").await?;
    assert!(
        stats.get("passes.accounts").await?.is_none(),
        "the run's progress is gone once it is done"
    );
    Ok(())
}

/// A mixed log of 3 000 events over 300 accounts, then `shares` shares into each of the first
/// `hubs` accounts from the others, under catalog names of `name_len` characters (what a
/// share may add to an account record grows with them); published on a fresh server.
async fn a_log_with_hubs(
    hubs: usize,
    shares: usize,
    name_len: usize,
) -> Result<(natster_testkit::PlainServer, jetstream::Context, u64)> {
    use natster_testkit::{mixed_event_log, publish_log, PlainServer};
    let server = PlainServer::start().await?;
    let js = jetstream::new(server.connect().await?);
    natster_global::test_util::Store::ensure(js.clone(), &Default::default()).await?;
    let mut log = mixed_event_log(300, 400, 3_000);
    let accounts: Vec<String> = log[..300]
        .iter()
        .map(|(subject, _)| subject.split('.').nth(2).unwrap_or_default().to_string())
        .collect();
    for hub in 0..hubs {
        for i in 0..shares {
            let name = format!("{hub}-{i}-{}", "n".repeat(name_len));
            let origin = &accounts[hubs + i % (300 - hubs)];
            let subject =
                EventSubject::new(origin, &accounts[hub], &name, EventType::CatalogShared);
            log.push((subject.to_subject(), Vec::new()));
        }
    }
    publish_log(&js, &log).await?;
    Ok((server, js, log.len() as u64))
}

fn hasty_config(pass_bytes: usize) -> RunnerConfig {
    RunnerConfig {
        max_batch_records: 50,
        deep_backlog: 0,
        pass_bytes,
        ..Default::default()
    }
}

/// Projects the accounts of `a_log_with_hubs(hubs, shares, name_len)` from empty twice, with
/// small flushes: without passes, then with parts of 64 KiB; checks both leave the same records
/// and returns how many there are and how the second run went.
async fn hubs_without_then_with_passes(
    hubs: usize,
    shares: usize,
    name_len: usize,
) -> Result<(u64, natster_testkit::ProjectedBacklog)> {
    let (_server, js, events) = a_log_with_hubs(hubs, shares, name_len).await?;
    let (_, records) = project_backlog(&js, events, hasty_config(0)).await?;
    let run = natster_testkit::project_from_empty::<Accounts>(&js, events, hasty_config(64 << 10))
        .await?;
    assert_eq!(
        dump(&js, Accounts::BUCKET).await?,
        records,
        "the same records"
    );
    Ok((records.len() as u64, run))
}

/// An account every other one shares with, whose record could outgrow what the server takes
/// by what each share may add: every pass holds its record (it is pinned), so shares into it
/// are decided alike in every pass, and the records are still written once each.
#[tokio::test]
async fn an_account_many_share_with_is_pinned_in_every_pass() -> Result<()> {
    let (records, run) = hubs_without_then_with_passes(1, 3_000, 0).await?;
    assert_eq!(
        run.record_writes, records,
        "caught up in passes, each record written once"
    );
    assert!(run.passes > 1, "{} passes", run.passes);
    Ok(())
}

/// More such accounts than a pass may pin: the catch-up in passes cannot be exact; the first
/// pass finds it, writes nothing, and the runner folds the log in one pass.
#[tokio::test]
async fn a_log_passes_cannot_decide_exactly_is_folded_in_one_pass() -> Result<()> {
    let (records, run) = hubs_without_then_with_passes(20, 800, 1_000).await?;
    assert!(
        run.timeline.len() > 3 && run.record_writes > records,
        "folded in one pass, flush after flush ({} flushes, {} writes)",
        run.timeline.len(),
        run.record_writes
    );
    assert_eq!(run.passes, 0, "no pass written");
    assert!(
        run.in_passes_raised && !run.in_passes_at_end,
        "raised for the first pass, lowered when the passes were given up"
    );
    Ok(())
}

//! Poison events: a message a projection can never apply (a record past `max_payload`, a key
//! the bucket refuses, a stored record that does not decode) is parked for that projection
//! alone, and the projection moves on; a rebuild parks the same ones; `projections parked`
//! lists them and `projections replay-parked` re-applies them once the cause is gone.

use anyhow::{ensure, Context, Result};
use async_nats::jetstream;
use natster_global::model::limits::ShareLimits;
use natster_global::model::{AccountRecord, ShareRef};
use natster_global::test_util::{parked_events, Accounts, Catalogs, ParkedEvent, RecordLimit};
use natster_testkit::{
    call, dump_bucket, http_get, init_data, metric_value, put_event, rebuild_projection, seq_of,
    Harness, TestWorld,
};
use serde_json::Value;
use std::collections::BTreeMap;

/// Creates `NATSTER_EVENTS` as the original service did and appends `log` to it.
async fn adopted_log(tw: &TestWorld, log: &[(String, Vec<u8>)]) -> Result<jetstream::Context> {
    let js = jetstream::new(tw.connect("NATSTER").await?);
    js.create_stream(jetstream::stream::Config {
        name: "NATSTER_EVENTS".into(),
        subjects: vec!["natster.events.>".into()],
        ..Default::default()
    })
    .await?;
    for (subject, body) in log {
        js.publish(subject.clone(), body.clone().into())
            .await?
            .await?;
    }
    Ok(js)
}

async fn parked(js: &jetstream::Context) -> Result<Vec<ParkedEvent>> {
    let bucket = js.get_key_value("PROJ_PARKED").await?;
    parked_events(&bucket, None)
        .await
        .map_err(anyhow::Error::msg)
}

/// The parked sequences of `projection`.
fn seqs(parked: &[ParkedEvent], projection: &str) -> Vec<u64> {
    parked
        .iter()
        .filter(|p| p.projection == projection)
        .map(|p| p.seq)
        .collect()
}

async fn buckets(
    js: &jetstream::Context,
) -> Result<BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>> {
    let mut all = BTreeMap::new();
    for bucket in ["PROJ_ACCOUNT", "PROJ_CATALOG"] {
        all.insert(bucket, dump_bucket(&js.get_key_value(bucket).await?).await?);
    }
    Ok(all)
}

fn share(origin: &str, target: &str, catalog: &str) -> (String, Vec<u8>) {
    (
        format!("natster.events.{origin}.{target}.{catalog}.catalog_shared"),
        b"null".to_vec(),
    )
}

fn init(key: &str) -> Result<(String, Vec<u8>)> {
    Ok((
        format!("natster.events.{key}.none.none.natster_initialized"),
        serde_json::to_vec(&init_data(key))?,
    ))
}

fn encoded_len(record: &AccountRecord) -> usize {
    serde_json::to_vec(record).expect("serializes").len()
}

#[tokio::test]
async fn a_record_past_max_payload_parks_exactly_that_event_and_the_projection_moves_on(
) -> Result<()> {
    // A server that carries at most 64 KiB per message (share limits to match), and a log
    // adopted from elsewhere, which knows no limits: alice shares catalogs with long names,
    // each with an account of its own, until her record is 1,500 bytes short of what a
    // message can carry; then one more share that would carry it past.
    let tw = TestWorld::start_tuned(
        &["alice", "bob"],
        |_| Ok(()),
        |config| config.replace("max_payload: 1MB", "max_payload: 64KB"),
    )
    .await?;
    let (a, b) = (tw.key("alice"), tw.key("bob"));
    let limit = RecordLimit::for_max_payload(64 * 1024).max_bytes;
    let mut log = vec![init(&a)?];
    let mut record = AccountRecord {
        account_key: a.clone(),
        initialized_at: 1_700_000_000,
        out_shares: vec![],
        in_shares: vec![],
        oauth_id: None,
        applied_seq: 999,
    };
    let target = || nkeys::KeyPair::new_account().public_key();
    let name = |i: usize, len: usize| format!("c{i:04}{}", "x".repeat(len - 5));
    let mut i = 0;
    let entry = |catalog: String, account: String| ShareRef { catalog, account };
    loop {
        let next = entry(name(i, 3500), target());
        record.out_shares.push(next.clone());
        if encoded_len(&record) > limit - 1_500 {
            record.out_shares.pop();
            break;
        }
        log.push(share(&a, &next.account, &next.catalog));
        i += 1;
    }
    // A filler brings the record to about 1,500 bytes short of the limit.
    let filler_len = limit - 1_500 - encoded_len(&record) - 80;
    ensure!(filler_len > 100, "filler of {filler_len}");
    let filler = entry(name(i, filler_len), target());
    log.push(share(&a, &filler.account, &filler.catalog));
    record.out_shares.push(filler);
    ensure!(encoded_len(&record) <= limit - 1_400);
    let crossing = entry(name(i + 1, 3500), target());
    log.push(share(&a, &crossing.account, &crossing.catalog));
    let crossing_seq = log.len() as u64;
    // Later events, one of them to alice's record again: they apply.
    log.push(init(&b)?);
    log.push(share(&b, &a, "tail"));
    let last = log.len() as u64;
    let js = adopted_log(&tw, &log).await?;

    let mut h = Harness {
        tw,
        services: vec![],
    };
    h.add_instance(|config| {
        config.share_limits = ShareLimits {
            out_shares_per_account: 50,
            accounts_per_catalog: 50,
            in_shares_per_account: 100,
        }
    })
    .await?;
    let http = h.serve_http(0).await?;
    let alice = h.connect("alice").await?;
    let stats = call(&alice, "stats", "", Some(last)).await?;
    assert_eq!(
        stats.code, 200,
        "the projections caught up past the parked event"
    );

    let parked_now = parked(&js).await?;
    assert_eq!(seqs(&parked_now, "accounts"), [crossing_seq]);
    assert!(seqs(&parked_now, "catalogs").is_empty());
    let event = &parked_now[0];
    assert_eq!(event.subject, log[crossing_seq as usize - 1].0);
    assert!(
        event.error.contains("bytes") && event.error.contains(&a),
        "{}",
        event.error
    );
    let stored: AccountRecord = serde_json::from_slice(
        &js.get_key_value("PROJ_ACCOUNT")
            .await?
            .get(&a)
            .await?
            .context("alice's record")?,
    )?;
    assert_eq!(
        stored.out_shares.len(),
        record.out_shares.len(),
        "all but the parked share"
    );
    assert!(!stored.out_shares.contains(&crossing));
    assert_eq!(stored.in_shares.len(), 1, "bob's later share applied");
    assert_eq!(stored.applied_seq, last);
    let (_, text) = http_get(http, "/metrics").await?;
    assert_eq!(
        metric_value(
            &text,
            r#"natster_projection_parked_events_total{projection="accounts"}"#
        ),
        Some(1.0)
    );

    // A rebuild parks the same event and writes the same bytes.
    let before = buckets(&js).await?;
    let report = rebuild_projection::<Accounts>(&js, 64 * 1024, |_, _| {}).await?;
    assert_eq!(
        (report.parked, report.unparked, report.written),
        (1, 0, 0),
        "{report:?}"
    );
    rebuild_projection::<Catalogs>(&js, 64 * 1024, |_, _| {}).await?;
    assert_eq!(buckets(&js).await?, before);
    assert_eq!(parked(&js).await?, parked_now);
    h.stop().await
}

#[tokio::test]
async fn catalog_names_the_kv_refuses_park_for_the_catalog_projection_alone() -> Result<()> {
    let tw = TestWorld::start_with(&["alice", "bob"], |_| Ok(())).await?;
    let (a, b) = (tw.key("alice"), tw.key("bob"));
    let log = vec![
        init(&a)?,
        init(&b)?,
        share(&a, &b, "café"),
        share(&a, &b, "pay$day"),
        share(&a, &b, "me@home"),
        share(&a, &b, "movies"),
    ];
    let last = log.len() as u64;
    let js = adopted_log(&tw, &log).await?;
    let mut h = Harness {
        tw,
        services: vec![],
    };
    h.add_instance(|_| {}).await?;
    let bob = h.connect("bob").await?;
    let shares = call(&bob, "my.shares", "", Some(last)).await?;
    assert_eq!(shares.code, 200);
    assert_eq!(
        shares.data.as_array().map(Vec::len),
        Some(4),
        "the account projection applies all four: {}",
        shares.data
    );
    assert_eq!(call(&bob, "stats", "", Some(last)).await?.code, 200);
    let parked_now = parked(&js).await?;
    assert_eq!(seqs(&parked_now, "catalogs"), [3, 4, 5]);
    assert!(seqs(&parked_now, "accounts").is_empty());
    let catalogs = dump_bucket(&js.get_key_value("PROJ_CATALOG").await?).await?;
    assert_eq!(catalogs.keys().collect::<Vec<_>>(), ["movies"]);
    // A new share still works, and a rebuild agrees byte for byte.
    let alice = h.connect("alice").await?;
    let music = seq_of(&put_event(&alice, "catalog_shared", "music", &b, Value::Null).await?)?;
    assert_eq!(call(&bob, "stats", "", Some(music)).await?.code, 200);
    let before = buckets(&js).await?;
    let report = rebuild_projection::<Catalogs>(&js, 1024 * 1024, |_, _| {}).await?;
    assert_eq!((report.parked, report.written), (3, 0), "{report:?}");
    rebuild_projection::<Accounts>(&js, 1024 * 1024, |_, _| {}).await?;
    assert_eq!(buckets(&js).await?, before);
    assert_eq!(parked(&js).await?, parked_now);
    h.stop().await
}

/// `natster-global projections <args>` as the service account.
async fn projections_cli(h: &Harness, args: &[&str]) -> Result<std::process::Output> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_natster-global"))
        .arg("projections")
        .args(args)
        .arg("--nats-url")
        .arg(h.tw.server.url())
        .arg("--creds")
        .arg(h.tw.world.creds_path("NATSTER"))
        .env_remove("NATS_URL")
        .env_remove("NATS_CREDS")
        .env("NO_COLOR", "1")
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "projections {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

#[tokio::test]
async fn an_undecodable_stored_record_parks_what_touches_it_until_replayed() -> Result<()> {
    let h = Harness::start(&["alice", "bob", "carol"]).await?;
    let (b, c) = (h.key("bob"), h.key("carol"));
    let alice = h.connect("alice").await?;
    for who in ["alice", "bob", "carol"] {
        let client = h.connect(who).await?;
        let key = h.key(who);
        put_event(
            &client,
            "natster_initialized",
            "none",
            "none",
            init_data(&key),
        )
        .await?;
    }
    let first = seq_of(&put_event(&alice, "catalog_shared", "movies", &b, Value::Null).await?)?;
    assert_eq!(call(&alice, "whoami", "", Some(first)).await?.code, 200);
    let js = h.service_js().await?;
    let catalogs = js.get_key_value("PROJ_CATALOG").await?;
    catalogs.put("movies", "garbage".into()).await?;

    let poisoned = seq_of(&put_event(&alice, "catalog_shared", "movies", &c, Value::Null).await?)?;
    let after = seq_of(&put_event(&alice, "catalog_shared", "music", &b, Value::Null).await?)?;
    let carol = h.connect("carol").await?;
    let stats = call(&carol, "stats", "", Some(after)).await?;
    assert_eq!(
        stats.code, 200,
        "every projection moved past the poisoned record"
    );
    let shares = call(&carol, "my.shares", "", Some(after)).await?;
    assert_eq!(
        shares.data.as_array().map(Vec::len),
        Some(1),
        "accounts applied it"
    );
    assert_eq!(
        catalogs.get("movies").await?.as_deref(),
        Some(&b"garbage"[..])
    );
    assert!(catalogs.get("music").await?.is_some());

    let listed = projections_cli(&h, &["parked", "--json"]).await?;
    let listed: Vec<ParkedEvent> = serde_json::from_slice(&listed.stdout)?;
    assert_eq!(seqs(&listed, "catalogs"), [poisoned]);
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].error.contains("does not decode"),
        "{}",
        listed[0].error
    );
    let table = projections_cli(&h, &["parked"]).await?;
    let table = String::from_utf8(table.stdout)?;
    assert!(
        table.contains("catalog_shared") && table.contains(&poisoned.to_string()),
        "{table}"
    );

    // The replay rebuilds the projection that parked it: the record is whole again and the
    // parked list is empty.
    let replay = projections_cli(&h, &["replay-parked", "--seq", &poisoned.to_string()]).await?;
    let replay = String::from_utf8(replay.stdout)?;
    assert!(
        replay.contains("catalogs:") && replay.contains("1 parked before now applied"),
        "{replay}"
    );
    assert!(parked(&js).await?.is_empty());
    let movies: Value = serde_json::from_slice(&catalogs.get("movies").await?.context("movies")?)?;
    assert_eq!(movies["shared_with"], serde_json::json!([b, c]));
    // The runner goes on after the rebuilt checkpoint.
    let next = seq_of(&put_event(&alice, "catalog_shared", "books", &c, Value::Null).await?)?;
    assert_eq!(call(&carol, "stats", "", Some(next)).await?.code, 200);
    assert!(catalogs.get("books").await?.is_some());
    h.stop().await
}

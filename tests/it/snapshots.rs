//! The decision-state snapshot: an instance that stops writes it, the next start restores it
//! and folds only the log after it, and decides exactly as a full replay would (exact
//! retries included); a snapshot that is corrupt, of another format or of another log is
//! ignored (metric, warning) and the whole log is folded instead.

use anyhow::{Context, Result};
use natster_global::contract::Envelope;
use natster_testkit::{
    events_last_seq, http_get, init_data, metric_value, put_event, seq_of, Harness,
};
use serde_json::json;
use tokio::io::AsyncReadExt;

const BUCKET: &str = "NATSTER_SNAPSHOTS";
const OBJECT: &str = "decision-state";

async fn put_with_id(
    client: &async_nats::Client,
    id: &str,
    body: serde_json::Value,
) -> Result<Envelope> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    let subject = "natster.global.events.put";
    let reply =
        (client.request_with_headers(subject, headers, serde_json::to_vec(&body)?.into())).await?;
    Ok(serde_json::from_slice(&reply.payload)?)
}

fn share(catalog: &str, target: &str) -> serde_json::Value {
    json!({"catalog": catalog, "target": target, "event_type": "catalog_shared"})
}

/// The reply code and error of sharing `catalog` from `client` with `target`.
async fn share_code(
    client: &async_nats::Client,
    catalog: &str,
    target: &str,
) -> Result<(u16, String)> {
    let envelope = put_event(
        client,
        "catalog_shared",
        catalog,
        target,
        serde_json::Value::Null,
    )
    .await?;
    Ok((envelope.code, envelope.error.unwrap_or_default()))
}

/// The value of `series` in instance `index`'s `/metrics`.
async fn metric(h: &Harness, index: usize, series: &str) -> Result<f64> {
    let addr = h.serve_http(index).await?;
    let (status, text) = http_get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    metric_value(&text, series).with_context(|| format!("no {series} in\n{text}"))
}

/// Waits until instance `index`'s decision state has folded `seq` (its snapshot at stop then
/// reaches it).
async fn await_folded(h: &Harness, index: usize, seq: u64) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(h, index, "natster_decision_state_sequence").await? < seq as f64 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "sequence {seq} not folded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn stop_all(h: &mut Harness) -> Result<()> {
    for service in std::mem::take(&mut h.services) {
        service.stop().await?;
    }
    Ok(())
}

/// alice and bob initialised, `films` shared with bob under `Nats-Msg-Id` `s-1`; its seq.
async fn some_history(h: &Harness) -> Result<u64> {
    let (alice, bob) = (h.connect("alice").await?, h.connect("bob").await?);
    let (a, b) = (h.key("alice"), h.key("bob"));
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    seq_of(&put_event(&bob, "natster_initialized", "none", "none", init_data(&b)).await?)?;
    seq_of(&put_with_id(&alice, "s-1", share("films", &b)).await?)
}

#[tokio::test]
async fn a_restart_starts_from_the_snapshot_and_decides_as_a_full_replay() -> Result<()> {
    let mut h = Harness::start(&["alice", "bob", "carol"]).await?;
    let shared = some_history(&h).await?;
    let js = h.service_js().await?;
    await_folded(&h, 0, shared).await?;
    stop_all(&mut h).await?;
    // The instance that stopped wrote the snapshot of everything it had folded.
    let snapshots = js.get_object_store(BUCKET).await?;
    let info = snapshots.info(OBJECT).await?;
    let at_stop = events_last_seq(&js).await?;
    assert_eq!(info.metadata["last_seq"], at_stop.to_string());

    // More log after the snapshot, appended while no instance runs.
    let (a, b, c) = (h.key("alice"), h.key("bob"), h.key("carol"));
    let publish = |subject: String, body: serde_json::Value| {
        let js = js.clone();
        async move {
            js.publish(subject, serde_json::to_vec(&body)?.into())
                .await?
                .await?;
            anyhow::Ok(())
        }
    };
    publish(
        format!("natster.events.{c}.none.none.natster_initialized"),
        init_data(&c),
    )
    .await?;
    publish(
        format!("natster.events.{a}.{c}.music.catalog_shared"),
        json!(null),
    )
    .await?;

    h.add_instance(|_| {}).await?;
    assert_eq!(
        metric(&h, 0, "natster_decision_snapshot_sequence").await?,
        at_stop as f64
    );
    let unusable = r#"natster_decision_snapshots_unusable_total{reason="corrupt"}"#;
    assert_eq!(metric(&h, 0, unusable).await?, 0.0);
    let (alice, bob, carol) = (
        h.connect("alice").await?,
        h.connect("bob").await?,
        h.connect("carol").await?,
    );
    // From the snapshot: the retry's first reply, the share, the owner.
    assert_eq!(
        seq_of(&put_with_id(&alice, "s-1", share("films", &b)).await?)?,
        shared
    );
    let (code, error) = share_code(&alice, "films", &b).await?;
    assert_eq!(
        (code, error.contains("already shared")),
        (409, true),
        "{error}"
    );
    let (code, error) = share_code(&bob, "films", &c).await?;
    assert_eq!(
        (code, error.contains("owned by another account")),
        (409, true),
        "{error}"
    );
    // From the log after it.
    let (code, error) = share_code(&alice, "music", &c).await?;
    assert_eq!(
        (code, error.contains("already shared")),
        (409, true),
        "{error}"
    );
    let again = put_event(&carol, "natster_initialized", "none", "none", init_data(&c)).await?;
    assert_eq!(again.code, 409, "{again:?}");
    // And new decisions append.
    seq_of(
        &put_event(
            &carol,
            "catalog_shared",
            "books",
            &a,
            serde_json::Value::Null,
        )
        .await?,
    )?;
    h.stop().await
}

/// Starts an instance over the stored snapshot replaced by `bytes` and checks it was ignored
/// for `reason` and the whole log folded instead.
async fn start_over(h: &mut Harness, bytes: Vec<u8>, reason: &str) -> Result<()> {
    let js = h.service_js().await?;
    let snapshots = js.get_object_store(BUCKET).await?;
    snapshots.put(OBJECT, &mut bytes.as_slice()).await?;
    h.add_instance(|_| {}).await?;
    let series = format!(r#"natster_decision_snapshots_unusable_total{{reason="{reason}"}}"#);
    assert_eq!(metric(h, 0, &series).await?, 1.0, "{reason}");
    assert_eq!(
        metric(h, 0, "natster_decision_snapshot_sequence").await?,
        0.0
    );
    let alice = h.connect("alice").await?;
    let (code, error) = share_code(&alice, "films", &h.key("bob")).await?;
    assert_eq!(
        (code, error.contains("already shared")),
        (409, true),
        "{reason}: {error}"
    );
    stop_all(h).await
}

#[tokio::test]
async fn corrupt_stale_and_foreign_snapshots_are_ignored_and_the_log_is_folded() -> Result<()> {
    let mut h = Harness::start(&["alice", "bob"]).await?;
    some_history(&h).await?;
    stop_all(&mut h).await?;
    let js = h.service_js().await?;
    let mut written = Vec::new();
    (js.get_object_store(BUCKET).await?.get(OBJECT).await?)
        .read_to_end(&mut written)
        .await?;
    assert_eq!(&written[..8], b"NATSTRDS");

    let mut damaged = written.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x55;
    Box::pin(start_over(&mut h, damaged, "corrupt")).await?;
    Box::pin(start_over(&mut h, b"not a snapshot".to_vec(), "corrupt")).await?;
    let mut other_format = written.clone();
    other_format[8..12].copy_from_slice(&99u32.to_le_bytes());
    Box::pin(start_over(&mut h, other_format, "stale")).await?;

    // The same bytes over a log made again (deleted and created anew) belong to another log.
    js.delete_stream("NATSTER_EVENTS").await?;
    let snapshots = js.get_object_store(BUCKET).await?;
    snapshots.put(OBJECT, &mut written.as_slice()).await?;
    h.add_instance(|_| {}).await?;
    let foreign = r#"natster_decision_snapshots_unusable_total{reason="foreign"}"#;
    assert_eq!(metric(&h, 0, foreign).await?, 1.0);
    let alice = h.connect("alice").await?;
    let (code, _) = share_code(&alice, "films", &h.key("bob")).await?;
    assert_eq!(code, 404, "alice is not initialised in the new log");
    h.stop().await
}

/// A snapshot that falls due while the instance's projections catch up from empty in passes
/// waits until they are done (they need the same cores, and readiness waits for them): with
/// a snapshot due every 10 ms, the one stored is written after the last checkpoint the passes
/// wrote. Written during the passes, it would be older: the state does not move after them.
#[tokio::test]
async fn no_snapshot_is_written_while_the_projections_catch_up_in_passes() -> Result<()> {
    use natster_global::test_util::{checkpoint_key, PROJ_STATS_BUCKET};
    let mut h = Harness::without_instances(&["alice"]).await?;
    let js = h.service_js().await?;
    natster_global::test_util::Store::ensure(js.clone(), &Default::default()).await?;
    let log = natster_testkit::mixed_event_log(300, 400, 3_000);
    natster_testkit::publish_log(&js, &log).await?;
    h.add_instance(|config| {
        config.snapshot_interval = std::time::Duration::from_millis(10);
        config.runner.pass_bytes = 32 << 10;
        config.runner.deep_backlog = 0;
    })
    .await?;
    let within = std::time::Duration::from_secs(60);
    anyhow::ensure!(
        h.services[0].wait_projected(log.len() as u64, within).await,
        "not caught up"
    );
    let deadline = std::time::Instant::now() + within;
    while metric(&h, 0, "natster_decision_snapshots_written_total").await? < 1.0 {
        anyhow::ensure!(std::time::Instant::now() < deadline, "no snapshot written");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let stats = js.get_key_value(PROJ_STATS_BUCKET).await?;
    let mut caught_up = None;
    for projection in ["accounts", "catalogs", "oauth"] {
        let entry = stats
            .entry(checkpoint_key(projection))
            .await?
            .context("checkpoint")?;
        caught_up = caught_up.max(Some(entry.created));
    }
    let snapshot = js.get_object_store(BUCKET).await?.info(OBJECT).await?;
    let written = snapshot.modified.context("snapshot time")?;
    anyhow::ensure!(
        Some(written) > caught_up,
        "snapshot written at {written}, the passes ended at {caught_up:?}"
    );
    stop_all(&mut h).await
}

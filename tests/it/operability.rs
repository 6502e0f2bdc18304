//! The operator's view of a running service: metrics, liveness and readiness, and `$SRV`
//! discovery, against a real server with real accounts.

use anyhow::{Context, Result};
use natster_global::test_util::{lease_key, Catalogs, Lease};
use natster_global::test_util::{Store, StoreConfig};
use natster_testkit::{call, http_get, init_data, metric_value, put_event, seq_of, Harness};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

async fn metrics(addr: SocketAddr) -> Result<String> {
    let (status, body) = http_get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    Ok(body)
}

/// Polls `/metrics` until `series` has `value` (gauges mirror state that settles
/// asynchronously, such as a projection applying an event).
async fn await_metric(addr: SocketAddr, series: &str, value: f64) -> Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = metrics(addr).await?;
        if metric_value(&text, series) == Some(value) {
            return Ok(text);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{series} never became {value}; last scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/readyz` until it answers `status`; returns the body.
async fn await_readyz(addr: SocketAddr, status: u16, within: Duration) -> Result<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (answered, body) = http_get(addr, "/readyz").await?;
        if answered == status {
            return Ok(body);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {status}; last: {answered} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn value(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or_else(|| panic!("{series} is not exported:\n{text}"))
}

#[tokio::test]
async fn metrics_count_requests_events_rejections_and_mirror_the_read_models() -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let http = h.serve_http(0).await?;
    let (alice, bob) = (h.connect("alice").await?, h.connect("bob").await?);
    let (a, b) = (h.key("alice"), h.key("bob"));

    let (status, body) = http_get(http, "/healthz").await?;
    assert_eq!((status, body.as_str()), (200, r#"{"alive":true}"#));
    let (status, body) = http_get(http, "/readyz").await?;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body)?;
    assert_eq!(ready["ready"], true);
    let names: Vec<&str> = ready["projections"]
        .as_array()
        .context("projections")?
        .iter()
        .filter_map(|p| p["projection"].as_str())
        .collect();
    assert_eq!(names, ["accounts", "catalogs", "oauth", "online"]);

    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    seq_of(&put_event(&bob, "natster_initialized", "none", "none", init_data(&b)).await?)?;
    let shared = seq_of(&put_event(&alice, "catalog_shared", "films", &b, Value::Null).await?)?;
    // A rule refuses these: already initialised (409), bob does not own `films` (409 too).
    assert_eq!(
        put_event(&alice, "natster_initialized", "none", "none", init_data(&a))
            .await?
            .code,
        409
    );
    assert_eq!(
        put_event(&bob, "catalog_shared", "films", &a, Value::Null)
            .await?
            .code,
        409
    );
    assert_eq!(
        call(&alice, "events.put", "{not json", None).await?.code,
        400
    );
    assert_eq!(call(&alice, "whoami", "", Some(shared)).await?.code, 200);
    let heartbeat = json!({"catalog": "films", "account_key": a, "revision": 1});
    assert_eq!(
        call(
            &alice,
            "heartbeats.put",
            serde_json::to_vec(&heartbeat)?,
            None
        )
        .await?
        .code,
        200
    );

    let text = await_metric(
        http,
        r#"natster_projection_lag_events{projection="catalogs"}"#,
        0.0,
    )
    .await?;
    let text = if metric_value(&text, "natster_catalogs_online") == Some(1.0) {
        text
    } else {
        await_metric(http, "natster_catalogs_online", 1.0).await?
    };
    let text = if metric_value(&text, "natster_accounts_initialized") == Some(2.0) {
        text
    } else {
        await_metric(http, "natster_accounts_initialized", 2.0).await?
    };
    let cases = [
        (r#"natster_requests_total{op="events.put",code="200"}"#, 3.0),
        (r#"natster_requests_total{op="events.put",code="409"}"#, 2.0),
        (r#"natster_requests_total{op="events.put",code="400"}"#, 1.0),
        (r#"natster_requests_total{op="whoami",code="200"}"#, 1.0),
        (
            r#"natster_request_duration_seconds_count{op="events.put",code="200"}"#,
            3.0,
        ),
        (
            r#"natster_events_appended_total{type="natster_initialized"}"#,
            2.0,
        ),
        (
            r#"natster_events_appended_total{type="catalog_shared"}"#,
            1.0,
        ),
        (
            r#"natster_rejections_total{type="natster_initialized",reason="conflict"}"#,
            1.0,
        ),
        (
            r#"natster_rejections_total{type="catalog_shared",reason="conflict"}"#,
            1.0,
        ),
        ("natster_heartbeats_received_total", 1.0),
        (
            r#"natster_feed_messages_sent_total{kind="catalog_online"}"#,
            2.0,
        ),
        ("natster_shares_active", 1.0),
        (
            r#"natster_projection_applied_sequence{projection="accounts"}"#,
            shared as f64,
        ),
        (
            r#"natster_projection_lag_seconds{projection="accounts"}"#,
            0.0,
        ),
        ("natster_nats_connected", 1.0),
        ("natster_nats_reconnects_total", 0.0),
        ("natster_ready", 1.0),
    ];
    for (series, expected) in cases {
        assert_eq!(value(&text, series), expected, "{series}");
    }
    assert!(
        value(
            &text,
            r#"natster_projection_events_applied_total{projection="accounts"}"#
        ) >= shared as f64
    );
    assert!(text.contains(r#"natster_build_info{version=""#), "{text}");
    // Sub-millisecond buckets, and no account key anywhere in the labels.
    assert!(text.contains(
        r#"natster_request_duration_seconds_bucket{le="0.00025",op="whoami",code="200"}"#
    ));
    assert!(!text.contains(&a) && !text.contains(&b) && !text.contains("films"));

    // Stopping: readiness goes first.
    let service = h.services.into_iter().next().context("one instance")?;
    let telemetry = service.telemetry().clone();
    service.stop().await?;
    let (status, body) = http_get(http, "/readyz").await?;
    assert_eq!(status, 503);
    assert_eq!(
        serde_json::from_str::<Value>(&body)?["reason"],
        "shutting down"
    );
    assert_eq!(
        telemetry.phase(),
        natster_global::test_util::Phase::Stopping
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_projection_lag_and_rebuilds_are_exported() -> Result<()> {
    let mut h = Harness::without_instances(&["alice", "bob"]).await?;
    let js = h.service_js().await?;
    let store = Store::ensure(js.clone(), &StoreConfig::default()).await?;
    let stats = store.stats.clone();
    // Another holder keeps the catalogs projection: events pile up behind it.
    let mut blocker = Lease::new(
        stats.clone(),
        lease_key("catalogs"),
        "test-blocker".into(),
        Duration::from_secs(120),
    );
    blocker.seize().await.map_err(anyhow::Error::msg)?;
    h.add_instance(|config| config.ready_max_lag = 2).await?;
    let http = h.serve_http(0).await?;
    let alice = h.connect("alice").await?;
    let a = h.key("alice");
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    for catalog in ["a", "b", "c"] {
        seq_of(
            &put_event(
                &alice,
                "catalog_shared",
                catalog,
                &h.key("bob"),
                Value::Null,
            )
            .await?,
        )?;
    }
    // The other projections may lag for a moment too; the blocked one stays behind.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let unready: Value = loop {
        let body = await_readyz(http, 503, Duration::from_secs(15)).await?;
        let unready: Value = serde_json::from_str(&body)?;
        let reason = unready["reason"].as_str().unwrap_or_default();
        if reason.contains("projection catalogs lags") {
            break unready;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "catalogs never named: {unready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(unready["ready"], false);
    let text = metrics(http).await?;
    assert!(
        value(
            &text,
            r#"natster_projection_lag_events{projection="catalogs"}"#
        ) >= 3.0
    );
    assert!(
        value(
            &text,
            r#"natster_projection_lag_seconds{projection="catalogs"}"#
        ) >= 0.0
    );
    assert_eq!(value(&text, "natster_ready"), 0.0);

    // The holder goes away; the service's runner takes over and the service is ready again.
    blocker.release().await;
    await_readyz(http, 200, Duration::from_secs(20)).await?;

    // A rebuild, run as `projections rebuild` would, shows up on every instance's metrics.
    let handle = tokio::runtime::Handle::current();
    let mut seen_running = false;
    natster_testkit::rebuild_projection::<Catalogs>(&js, 1024 * 1024, |_, _| {
        if !seen_running {
            seen_running = tokio::task::block_in_place(|| {
                handle.block_on(await_metric(
                    http,
                    r#"natster_projection_rebuild_in_progress{projection="catalogs"}"#,
                    1.0,
                ))
            })
            .is_ok();
        }
    })
    .await?;
    assert!(seen_running, "the rebuild was exported as in progress");
    await_metric(
        http,
        r#"natster_projection_rebuild_in_progress{projection="catalogs"}"#,
        0.0,
    )
    .await?;
    await_metric(
        http,
        r#"natster_projection_rebuild_progress_ratio{projection="catalogs"}"#,
        1.0,
    )
    .await?;
    h.stop().await
}

#[tokio::test]
async fn discovery_answers_ping_info_and_stats_through_imports() -> Result<()> {
    let mut h = Harness::start(&["alice"]).await?;
    h.add_instance(|_| {}).await?;
    let alice = h.connect("alice").await?;
    let a = h.key("alice");
    let init =
        seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    assert_eq!(call(&alice, "events.put", "[]", None).await?.code, 400);
    // Read-your-writes: the account projection may not have applied the init yet.
    assert_eq!(call(&alice, "whoami", "", Some(init)).await?.code, 200);

    // Every instance answers; alice sees them through her account's discovery import.
    let infos = gather(&alice, "$SRV.INFO.natster-global", 2).await?;
    let mut ids = Vec::new();
    for info in &infos {
        assert_eq!(info["type"], "io.nats.micro.v1.info_response");
        assert_eq!(info["name"], "natster-global");
        assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
        let endpoints = info["endpoints"].as_array().context("endpoints")?;
        let mut subjects: Vec<&str> = endpoints
            .iter()
            .filter_map(|e| e["subject"].as_str())
            .collect();
        subjects.sort();
        assert_eq!(
            subjects,
            [
                "*.natster.global.catalogs.validatename",
                "*.natster.global.context.get",
                "*.natster.global.events.put",
                "*.natster.global.heartbeats.put",
                "*.natster.global.my.shares",
                "*.natster.global.otc.claim",
                "*.natster.global.otc.generate",
                "*.natster.global.stats",
                "*.natster.global.whoami",
            ]
        );
        assert!(endpoints
            .iter()
            .all(|e| e["queue_group"] == "natster-global"));
        ids.push(info["id"].as_str().context("id")?.to_string());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2, "one answer per instance");
    let pings = gather(&alice, "$SRV.PING.natster-global", 2).await?;
    assert!(pings
        .iter()
        .all(|p| p["type"] == "io.nats.micro.v1.ping_response"));

    // The queue group spread the three requests; together the instances saw them all, the
    // refused one counted as an error with its reason.
    let stats = gather(&alice, "$SRV.STATS.natster-global", 2).await?;
    let endpoint_total = |name: &str, field: &str| -> u64 {
        stats
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["name"] == name)
            .map(|e| e[field].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(endpoint_total("events_put", "num_requests"), 2);
    assert_eq!(endpoint_total("events_put", "num_errors"), 1);
    assert_eq!(endpoint_total("whoami", "num_requests"), 1);
    assert_eq!(endpoint_total("whoami", "num_errors"), 0);
    let last_error = stats
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .find(|e| e["name"] == "events_put" && e["num_errors"] == 1)
        .context("the instance that refused")?;
    assert!(
        last_error["last_error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("400:"),
        "{last_error}"
    );
    h.stop().await
}

/// Sends one discovery request and collects `expected` replies.
async fn gather(client: &async_nats::Client, subject: &str, expected: usize) -> Result<Vec<Value>> {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    natster_global::test_util::sync(client).await?;
    client
        .publish_with_reply(subject.to_string(), inbox, "".into())
        .await?;
    let mut out = Vec::new();
    while out.len() < expected {
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .with_context(|| format!("{subject}: {} of {expected} replies", out.len()))?
            .context("subscription ended")?;
        out.push(serde_json::from_slice(&reply.payload)?);
    }
    Ok(out)
}

#[tokio::test]
async fn one_time_codes_are_counted_issued_claimed_and_expired() -> Result<()> {
    let mut h = Harness::without_instances(&["alice"]).await?;
    h.add_instance(|config| config.store.code_ttl = Duration::from_secs(2))
        .await?;
    let http = h.serve_http(0).await?;
    let (alice, web) = (
        h.connect("alice").await?,
        h.connect(natster_global::tooling::bootstrap::WEB).await?,
    );
    let a = h.key("alice");
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    let context = serde_json::to_vec(&json!({
        "account_name": "alice", "account_public_key": a, "access_token": "t"
    }))?;
    let mut codes = Vec::new();
    for _ in 0..2 {
        let generated = call(&alice, "otc.generate", context.clone(), None).await?;
        assert_eq!(generated.code, 200, "{generated:?}");
        codes.push(generated.data["code"].as_str().context("code")?.to_string());
    }
    let claim = json!({"code": codes[0], "oauth_id": "github|1"});
    assert_eq!(
        call(&web, "otc.claim", serde_json::to_vec(&claim)?, None)
            .await?
            .code,
        200
    );
    // The unclaimed code runs out; the claimed one is not counted as expired.
    let text = await_metric(http, "natster_codes_expired_total", 1.0).await?;
    assert_eq!(value(&text, "natster_codes_issued_total"), 2.0);
    assert_eq!(value(&text, "natster_codes_claimed_total"), 1.0);
    let claim = json!({"code": codes[1], "oauth_id": "github|1"});
    assert_eq!(
        call(&web, "otc.claim", serde_json::to_vec(&claim)?, None)
            .await?
            .code,
        404
    );
    // An absence can only be seen by waiting past when it would have shown: a claimed code
    // wrongly taken for expired would be counted one look (1 s) after the other one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        value(&metrics(http).await?, "natster_codes_expired_total"),
        1.0,
        "the claimed code never counts as expired"
    );
    h.stop().await
}

#[tokio::test]
async fn a_code_is_claimable_for_the_ttl_its_reply_announced_whatever_the_bucket_keeps(
) -> Result<()> {
    let mut h = Harness::without_instances(&["alice"]).await?;
    // The codes bucket is created under a 5-minute TTL...
    h.add_instance(|_| {}).await?;
    for service in std::mem::take(&mut h.services) {
        service.stop().await?;
    }
    // ...and the service then runs with 2 s: a code lives 2 s though the bucket keeps it.
    h.add_instance(|config| config.store.code_ttl = Duration::from_secs(2))
        .await?;
    let http = h.serve_http(0).await?;
    let (alice, web) = (
        h.connect("alice").await?,
        h.connect(natster_global::tooling::bootstrap::WEB).await?,
    );
    let a = h.key("alice");
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    let context = serde_json::to_vec(&json!({"account_public_key": a, "access_token": "t"}))?;
    let generated = call(&alice, "otc.generate", context, None).await?;
    let code = generated.data["code"].as_str().context("code")?.to_string();
    await_metric(http, "natster_codes_expired_total", 1.0).await?;
    let js = h.service_js().await?;
    let codes = js.get_key_value("NATSTER_CODES").await?;
    assert!(
        codes.get(&code).await?.is_some(),
        "the bucket still holds it"
    );
    let claim = json!({"code": code, "oauth_id": "github|1"});
    let refused = call(&web, "otc.claim", serde_json::to_vec(&claim)?, None).await?;
    assert_eq!(refused.code, 404, "{refused:?}");

    // A TTL longer than the bucket's max age raises it, so codes outlive their replies' word.
    for service in std::mem::take(&mut h.services) {
        service.stop().await?;
    }
    h.add_instance(|config| config.store.code_ttl = Duration::from_secs(900))
        .await?;
    let mut stream = js.get_stream("KV_NATSTER_CODES").await?;
    assert_eq!(
        stream.info().await?.config.max_age,
        Duration::from_secs(900)
    );
    h.stop().await
}

#[tokio::test]
async fn losing_nats_makes_the_service_unready_until_it_reconnects() -> Result<()> {
    let mut h = Harness::start(&["alice"]).await?;
    let http = h.serve_http(0).await?;
    assert_eq!(http_get(http, "/readyz").await?.0, 200);
    h.tw.server.stop(Duration::from_secs(5)).await;
    let body = await_readyz(http, 503, Duration::from_secs(15)).await?;
    assert!(body.contains("not connected to NATS"), "{body}");
    assert_eq!(value(&metrics(http).await?, "natster_nats_connected"), 0.0);
    assert_eq!(http_get(http, "/healthz").await?.0, 200, "alive all along");

    h.tw.server.restart().await?;
    await_readyz(http, 200, Duration::from_secs(30)).await?;
    let text = metrics(http).await?;
    assert_eq!(value(&text, "natster_nats_connected"), 1.0);
    assert_eq!(value(&text, "natster_nats_reconnects_total"), 1.0);
    let alice = h.connect("alice").await?;
    assert_eq!(call(&alice, "whoami", "", None).await?.code, 404);
    h.stop().await
}

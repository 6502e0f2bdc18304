//! No tenant can stall, starve or confuse another: share limits bound every record, and an
//! account pushing them at a high rate leaves the others' writes readable.

use anyhow::{Context, Result};
use futures::StreamExt;
use natster_global::model::{limits::RACE_HEADROOM, ShareLimits};
use natster_global::service::{MAX_HELD_PER_ACCOUNT, REFUSALS_PER_SECOND};
use natster_testkit::{call, init_data, put_event, seq_of, Harness};
use serde_json::json;
use std::time::{Duration, Instant};

const LIMITS: ShareLimits = ShareLimits {
    out_shares_per_account: 40,
    accounts_per_catalog: 25,
    in_shares_per_account: 60,
};

fn account_key() -> String {
    nkeys::KeyPair::new_account().public_key()
}

#[tokio::test]
async fn an_account_at_its_share_limits_gets_409s_naming_them_and_others_stay_readable(
) -> Result<()> {
    let mut harness = Harness::without_instances(&["alice", "bob"]).await?;
    harness
        .add_instance(|config| {
            config.share_limits = LIMITS;
            config.rate_per_second = 10_000;
            config.rate_burst = 10_000;
        })
        .await?;
    let alice = harness.connect("alice").await?;
    let bob = harness.connect("bob").await?;
    let (alice_key, bob_key) = (harness.key("alice"), harness.key("bob"));
    for (client, key) in [(&alice, &alice_key), (&bob, &bob_key)] {
        seq_of(
            &put_event(
                client,
                "natster_initialized",
                "none",
                "none",
                init_data(key),
            )
            .await?,
        )?;
    }

    // Alice shares as fast as 32 requests in flight allow: first one catalog with far more
    // accounts than a catalog may have, then many catalogs, far past her out-shares.
    let requests = (0..60)
        .map(|_| ("party".to_string(), account_key()))
        .chain((0..100).map(|i| (format!("cat{i}"), account_key())));
    let pushing = futures::stream::iter(requests)
        .map(|(catalog, target)| {
            let alice = alice.clone();
            async move { put_event(&alice, "catalog_shared", &catalog, &target, json!(null)).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>();
    // Meanwhile Bob's writes are read back within seconds.
    let bob_reads = async {
        let mut slowest = Duration::ZERO;
        for i in 0..10 {
            let started = Instant::now();
            let seq = seq_of(
                &put_event(
                    &bob,
                    "catalog_shared",
                    &format!("b{i}"),
                    &alice_key,
                    json!(null),
                )
                .await?,
            )?;
            let shares = call(&bob, "my.shares", "", Some(seq)).await?;
            anyhow::ensure!(shares.code == 200, "{shares:?}");
            let count = shares.data.as_array().context("a list")?.len();
            anyhow::ensure!(
                count == i + 1,
                "bob sees {count} shares after {} writes",
                i + 1
            );
            slowest = slowest.max(started.elapsed());
        }
        Ok::<_, anyhow::Error>(slowest)
    };
    let (replies, slowest) = tokio::join!(pushing, bob_reads);
    let slowest = slowest?;
    assert!(
        slowest < Duration::from_secs(3),
        "bob's slowest write+read: {slowest:?}"
    );

    let mut accepted = 0;
    let mut refused = std::collections::BTreeSet::new();
    for reply in replies {
        let reply = reply?;
        match reply.code {
            200 => accepted += 1,
            409 => {
                let text = reply.error.unwrap_or_default();
                let limit = text
                    .split_once("(")
                    .and_then(|(_, rest)| rest.split_once(" limit"))
                    .map(|(name, _)| name.to_string())
                    .with_context(|| format!("the refusal names a limit: {text}"))?;
                refused.insert(limit);
            }
            other => anyhow::bail!("unexpected reply {other}: {:?}", reply.error),
        }
    }
    assert_eq!(
        refused,
        ["accounts-per-catalog", "out-shares"]
            .map(String::from)
            .into(),
        "both limits were hit"
    );
    // Racing decisions may pass a limit together, never by more than the headroom the
    // start-up check leaves.
    assert!(
        (LIMITS.out_shares_per_account..=LIMITS.out_shares_per_account * RACE_HEADROOM)
            .contains(&accepted),
        "{accepted} shares accepted"
    );

    // Alice's record holds exactly what was accepted, and the service stays caught up.
    let last = seq_of(&put_event(&bob, "catalog_shared", "last", &alice_key, json!(null)).await?)?;
    let whoami = call(&alice, "whoami", "", Some(last)).await?;
    assert_eq!(whoami.code, 200, "{whoami:?}");
    let shares = call(&alice, "my.shares", "", Some(last)).await?;
    let out_shares = shares
        .data
        .as_array()
        .context("a list")?
        .iter()
        .filter(|s| s["from_account"] == json!(alice_key))
        .count();
    assert_eq!(out_shares, accepted);
    harness.stop().await
}

/// Scrapes `/metrics` until `series` reads `value` (15 s at most).
async fn await_metric(addr: std::net::SocketAddr, series: &str, value: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, text) = natster_testkit::http_get(addr, "/metrics").await?;
        if natster_testkit::metric_value(&text, series) == Some(value) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{series} never became {value}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_auto_share_refused_because_another_account_owns_the_hub_name_is_counted() -> Result<()>
{
    use natster_global::service::HubShare;
    let mut h = Harness::without_instances(&["alice", "bob", "carol"]).await?;
    let hub = HubShare {
        account: h.key(natster_global::tooling::bootstrap::HUB),
        catalog: "hubcatalog".into(),
    };
    let (alice, carol) = (h.connect("alice").await?, h.connect("carol").await?);
    let (a, b, c) = (h.key("alice"), h.key("bob"), h.key("carol"));
    // Before the hub is configured, alice takes the hub's catalog name.
    h.add_instance(|_| {}).await?;
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    let taken = put_event(
        &alice,
        "catalog_shared",
        "hubcatalog",
        &b,
        serde_json::Value::Null,
    )
    .await?;
    assert_eq!(taken.code, 200, "{taken:?}");
    h.services.pop().context("instance")?.stop().await?;
    h.add_instance(move |c| c.hub = Some(hub)).await?;
    let http = h.serve_http(0).await?;
    seq_of(&put_event(&carol, "natster_initialized", "none", "none", init_data(&c)).await?)?;
    // Both inits (alice's from before the hub) lead to a refused auto-share, each counted once.
    await_metric(
        http,
        r#"natster_autoshare_failures_total{reason="conflict"}"#,
        2.0,
    )
    .await?;
    let shares = call(&carol, "my.shares", "", None).await?;
    assert_eq!(shares.data, json!([]), "carol did not get the hub catalog");
    h.stop().await
}

#[tokio::test]
async fn malformed_input_is_400_before_403_and_a_failed_append_leaves_no_name_claim() -> Result<()>
{
    let h = Harness::start(&["alice", "bob"]).await?;
    let (alice, bob) = (h.connect("alice").await?, h.connect("bob").await?);
    let (a, b) = (h.key("alice"), h.key("bob"));
    let heartbeat = |key: &str| {
        serde_json::to_vec(&json!({"account_key": key, "catalog": "movies", "revision": 1}))
    };
    let nope = call(&alice, "heartbeats.put", heartbeat("nope")?, None).await?;
    assert_eq!(nope.code, 400, "{nope:?}");
    let other = call(&alice, "heartbeats.put", heartbeat(&b)?, None).await?;
    assert_eq!(other.code, 403, "{other:?}");

    for (client, key) in [(&alice, &a), (&bob, &b)] {
        seq_of(
            &put_event(
                client,
                "natster_initialized",
                "none",
                "none",
                init_data(key),
            )
            .await?,
        )?;
    }
    // The log refuses every append for a while (full): alice's first share of a name fails,
    // and its claim of the name goes with it.
    let js = h.service_js().await?;
    let mut events = js.get_stream("NATSTER_EVENTS").await?;
    let mut config = events.info().await?.config.clone();
    let held = events.info().await?.state.messages;
    config.max_messages = held as i64;
    js.update_stream(&config).await?;
    let failed = put_event(
        &alice,
        "catalog_shared",
        "movies",
        &b,
        serde_json::Value::Null,
    )
    .await?;
    assert_eq!(failed.code, 503, "{failed:?}");
    let names = js.get_key_value("NATSTER_NAMES").await?;
    assert_eq!(
        names.get("movies").await?,
        None,
        "no claim outlives the failed append"
    );
    config.max_messages = -1;
    js.update_stream(&config).await?;
    let taken = put_event(
        &bob,
        "catalog_shared",
        "movies",
        &a,
        serde_json::Value::Null,
    )
    .await?;
    assert_eq!(taken.code, 200, "the name is free for anyone: {taken:?}");
    h.stop().await
}

#[tokio::test]
async fn heartbeats_have_their_own_budget_and_a_cap_on_catalogs_online() -> Result<()> {
    let mut h = Harness::without_instances(&["alice", "bob"]).await?;
    h.add_instance(|config| {
        config.heartbeat_rate_per_second = 1;
        config.heartbeat_burst = 20;
        config.max_online_catalogs = 5;
    })
    .await?;
    let http = h.serve_http(0).await?;
    let (alice, bob) = (h.connect("alice").await?, h.connect("bob").await?);
    let (a, b) = (h.key("alice"), h.key("bob"));
    let beat = |key: &str, catalog: &str, offline: bool| {
        serde_json::to_vec(&json!({
            "account_key": key, "catalog": catalog, "revision": 1, "offline": offline
        }))
        .expect("serializes")
    };
    // 40 heartbeats at once: the burst is taken, the rest are 429.
    let started = Instant::now();
    let answers = futures::stream::iter(0..40)
        .map(|_| call(&alice, "heartbeats.put", beat(&a, "movies", false), None))
        .buffer_unordered(40)
        .collect::<Vec<_>>()
        .await;
    let codes: Vec<u16> = answers
        .into_iter()
        .map(|answer| answer.map(|envelope| envelope.code))
        .collect::<Result<_>>()?;
    let accepted = codes.iter().filter(|&&c| c == 200).count();
    let limited = codes.iter().filter(|&&c| c == 429).count();
    assert_eq!(accepted + limited, 40, "{codes:?}");
    let refilled = started.elapsed().as_secs() as usize + 1;
    assert!((20..=20 + refilled).contains(&accepted), "{codes:?}");
    let refused = call(&alice, "heartbeats.put", beat(&a, "movies", false), None).await?;
    if refused.code == 429 {
        assert!(refused
            .error
            .unwrap_or_default()
            .contains("heartbeat budget"));
    }
    // Writes have their own budget.
    let init = put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?;
    assert_eq!(init.code, 200, "{init:?}");
    // Heartbeats without a reply subject past the budget are dropped and counted.
    for _ in 0..10 {
        alice
            .publish(
                "natster.global.heartbeats.put",
                beat(&a, "movies", false).into(),
            )
            .await?;
    }
    alice.flush().await?;
    await_metric(http, "natster_heartbeats_received_total", 51.0).await?;
    let (_, text) = natster_testkit::http_get(http, "/metrics").await?;
    let dropped =
        natster_testkit::metric_value(&text, r#"natster_heartbeats_dropped_total{reason="rate"}"#)
            .context("dropped series")?;
    assert!(dropped >= 8.0, "{dropped}");

    // The cap on catalogs online: five, then a sixth is refused until one stops.
    for i in 1..=5 {
        let answer = call(
            &bob,
            "heartbeats.put",
            beat(&b, &format!("c{i}"), false),
            None,
        )
        .await?;
        assert_eq!(answer.code, 200, "{answer:?}");
    }
    let sixth = call(&bob, "heartbeats.put", beat(&b, "c6", false), None).await?;
    assert_eq!(sixth.code, 409, "{sixth:?}");
    assert!(
        sixth
            .error
            .unwrap_or_default()
            .contains("online-catalogs limit 5"),
        "names the limit"
    );
    assert_eq!(
        call(&bob, "heartbeats.put", beat(&b, "c1", false), None)
            .await?
            .code,
        200,
        "an online catalog keeps beating"
    );
    assert_eq!(
        call(&bob, "heartbeats.put", beat(&b, "c1", true), None)
            .await?
            .code,
        200
    );
    assert_eq!(
        call(&bob, "heartbeats.put", beat(&b, "c6", false), None)
            .await?
            .code,
        200
    );
    h.stop().await
}

/// Whether a request failed because no reply came in time.
fn timed_out(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<async_nats::RequestError>()
            .is_some_and(|e| e.kind() == async_nats::RequestErrorKind::TimedOut)
    })
}

#[tokio::test]
async fn one_account_waiting_on_unreachable_sequences_does_not_starve_another() -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let (alice, bob) = (h.connect("alice").await?, h.connect("bob").await?);
    let http = h.serve_http(0).await?;
    // 1,500 reads of a sequence the log will not reach soon, all at once. Refusals come a
    // second late and paced, and past 1,024 held for alice not at all.
    let flood = tokio::spawn(async move {
        futures::stream::iter(0..1_500)
            // Unanswered: the client's request times out (after 10 s; the paced answers are
            // all out by then).
            .map(|_| async {
                let answer = call(&alice, "whoami", "", Some(4_611_686_018_427_387_904)).await;
                (answer, Instant::now())
            })
            .buffer_unordered(1_500)
            .collect::<Vec<_>>()
            .await
    });
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let stats = call(&bob, "stats", "", None).await?;
        slowest = slowest.max(started.elapsed());
        assert_eq!(stats.code, 200, "{stats:?}");
    }
    assert!(
        slowest < Duration::from_secs(1),
        "bob waited {slowest:?} behind alice's flood"
    );
    let answers = flood.await?;
    let mut by_code = std::collections::BTreeMap::<u16, usize>::new();
    let mut unanswered = 0;
    let mut answered_at = Vec::new();
    for (answer, at) in answers {
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) if timed_out(&error) => {
                unanswered += 1;
                continue;
            }
            Err(error) => return Err(error),
        };
        answered_at.push(at);
        *by_code.entry(answer.code).or_default() += 1;
        let error = answer.error.unwrap_or_default();
        match answer.code {
            429 => assert!(error.contains("64 requests in flight"), "{error}"),
            503 => assert!(error.contains("has not reached sequence"), "{error}"),
            other => anyhow::bail!("unexpected {other}: {error}"),
        }
    }
    // Every answer was late and paced: alice got them no faster than the pace allows.
    answered_at.sort();
    let (first, last) = (answered_at[0], answered_at[answered_at.len() - 1]);
    let paced = Duration::from_secs(1) / REFUSALS_PER_SECOND * (answered_at.len() as u32 - 1);
    assert!(
        last - first >= paced.mul_f64(0.9),
        "{} answers within {:?}",
        answered_at.len(),
        last - first
    );
    let refused = by_code.get(&429).copied().unwrap_or(0);
    assert!(
        refused > 0 && refused <= MAX_HELD_PER_ACCOUNT,
        "{by_code:?}"
    );
    // Every request beyond the refusals held got no reply, and was counted.
    await_metric(http, "natster_refusals_dropped_total", unanswered as f64).await?;
    h.stop().await
}

//! No tenant can stall, starve or confuse another: share limits bound every record, and an
//! account pushing them at a high rate leaves the others' writes readable.

use anyhow::{Context, Result};
use futures::StreamExt;
use natster_global::model::{limits::RACE_HEADROOM, ShareLimits};
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

//! Concurrency with two service instances: racing decisions on one aggregate leave exactly one
//! winner and parallel identical requests append once (client retries: `retries.rs`).

use anyhow::{Context, Result};
use async_nats::jetstream;
use natster_testkit::{call, init_data, put_event, seq_of, Harness};
use serde_json::Value;

async fn count_events(js: &jetstream::Context, filter: &str) -> Result<u64> {
    let stream = js.get_stream("NATSTER_EVENTS").await?;
    let info = stream.info_with_subjects(filter).await?;
    let mut total = 0;
    let mut subjects = info;
    while let Some(entry) = futures::TryStreamExt::try_next(&mut subjects).await? {
        total += entry.1 as u64;
    }
    Ok(total)
}

#[tokio::test]
async fn fifty_racing_first_shares_of_one_name_leave_one_owner() -> Result<()> {
    let users: Vec<String> = (0..50).map(|i| format!("user{i}")).collect();
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let mut h = Harness::start(&names).await?;
    h.add_instance(|_| {}).await?;
    let mut clients = Vec::new();
    for name in &names {
        let client = h.connect(name).await?;
        seq_of(
            &put_event(
                &client,
                "natster_initialized",
                "none",
                "none",
                init_data(&h.key(name)),
            )
            .await?,
        )?;
        clients.push(client);
    }
    let target = h.key("user0");
    let other_target = h.key("user1");
    let racers = clients.iter().enumerate().map(|(i, client)| {
        let to = if i == 0 {
            other_target.clone()
        } else {
            target.clone()
        };
        async move { put_event(client, "catalog_shared", "contested", &to, Value::Null).await }
    });
    let results = futures::future::try_join_all(racers).await?;
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, e)| e.code == 200)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "{:?}",
        results.iter().map(|e| e.code).collect::<Vec<_>>()
    );
    assert!(results.iter().all(|e| e.code == 200 || e.code == 409));
    let js = h.service_js().await?;
    assert_eq!(
        count_events(&js, "natster.events.*.*.contested.catalog_shared").await?,
        1
    );

    // Every instance and the projection agree on the owner.
    let winner = &names[winners[0]];
    let seq = seq_of(&results[winners[0]])?;
    let check = call(
        &clients[winners[0]],
        "catalogs.validatename",
        "contested",
        Some(seq),
    )
    .await?;
    assert_eq!(check.data["valid"], true);
    for (i, client) in clients
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != winners[0])
        .take(5)
    {
        let check = call(client, "catalogs.validatename", "contested", Some(seq)).await?;
        assert_eq!(
            check.data["valid"], false,
            "{} vs winner {winner}",
            names[i]
        );
    }
    h.stop().await
}

#[tokio::test]
async fn twenty_parallel_inits_of_one_account_append_one_event() -> Result<()> {
    let mut h = Harness::start(&["alice"]).await?;
    h.add_instance(|_| {}).await?;
    let alice = h.connect("alice").await?;
    let a = h.key("alice");
    let racers =
        (0..20).map(|_| put_event(&alice, "natster_initialized", "none", "none", init_data(&a)));
    let results = futures::future::try_join_all(racers).await?;
    assert!(
        results.iter().all(|e| e.code == 200 || e.code == 409),
        "{results:?}"
    );
    let seqs: std::collections::BTreeSet<u64> = results
        .iter()
        .filter(|e| e.code == 200)
        .map(|e| e.data["seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(
        seqs.len(),
        1,
        "every success names the one appended event: {seqs:?}"
    );
    let js = h.service_js().await?;
    assert_eq!(
        count_events(&js, &format!("natster.events.{a}.>")).await?,
        1
    );
    let seq = *seqs.iter().next().context("one seq")?;
    let stats = call(&alice, "stats", "", Some(seq)).await?;
    assert_eq!(stats.data["total_initialized"], 1);
    h.stop().await
}

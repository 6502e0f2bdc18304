//! Catalog-online tracking against a real server with real accounts: transitions with a short
//! TTL, two instances and a restart, notices counted per recipient; spoofed heartbeats.

use anyhow::{ensure, Context, Result};
use async_nats::jetstream;
use natster_testkit::{
    call, http_get, init_data, metric_value, put_event, seq_of, FeedReader, Harness,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(2);

async fn heartbeat(client: &async_nats::Client, body: Value) -> Result<u16> {
    Ok(
        call(client, "heartbeats.put", serde_json::to_vec(&body)?, None)
            .await?
            .code,
    )
}

/// Waits until the server has replaced the last message on `subject` with its expiry marker.
async fn wait_for_marker(js: &jetstream::Context, subject: &str) -> Result<()> {
    let stream = js.get_stream("NATSTER_ONLINE").await?;
    let started = Instant::now();
    loop {
        if let Ok(message) = stream.get_last_raw_message_by_subject(subject).await {
            if message.headers.get("Nats-Marker-Reason").is_some() {
                return Ok(());
            }
        }
        ensure!(
            started.elapsed() < TTL * 10,
            "no expiry marker on {subject}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn online_state(client: &async_nats::Client) -> Result<(bool, i64)> {
    let shares = call(client, "my.shares", "", None).await?;
    let share = &shares.data[0];
    Ok((
        share["catalog_online"]
            .as_bool()
            .context("catalog_online")?,
        share["revision"].as_i64().context("revision")?,
    ))
}

/// Waits until `my.shares` shows `expected`: a notice goes out just before the online record is
/// written (so a crash can repeat a notice but never lose one).
async fn wait_online_state(client: &async_nats::Client, expected: (bool, i64)) -> Result<()> {
    let started = Instant::now();
    loop {
        let state = online_state(client).await?;
        if state == expected {
            return Ok(());
        }
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "online state {state:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn running(client: &async_nats::Client) -> Result<u64> {
    call(client, "stats", "", None).await?.data["running_catalogs"]
        .as_u64()
        .context("running_catalogs")
}

/// Alice (key `a`) initialises and shares `films` with bob (key `b`), who has read it.
async fn alice_shares_films_with_bob(
    alice: &async_nats::Client,
    bob: &async_nats::Client,
    a: &str,
    b: &str,
) -> Result<()> {
    seq_of(&put_event(alice, "natster_initialized", "none", "none", init_data(a)).await?)?;
    let shared = seq_of(&put_event(alice, "catalog_shared", "films", b, Value::Null).await?)?;
    call(bob, "my.shares", "", Some(shared)).await?;
    Ok(())
}

#[tokio::test]
async fn online_offline_online_with_two_instances_and_a_restart() -> Result<()> {
    let mut h = Harness::without_instances(&["alice", "bob", "carol"]).await?;
    for _ in 0..2 {
        h.add_instance(|c| c.online_ttl = TTL).await?;
    }
    let (alice, bob, carol) = (
        h.connect("alice").await?,
        h.connect("bob").await?,
        h.connect("carol").await?,
    );
    let (a, b) = (h.key("alice"), h.key("bob"));
    let js = h.service_js().await?;
    alice_shares_films_with_bob(&alice, &bob, &a, &b).await?;
    let (mut alice_feed, mut bob_feed, mut carol_feed) = (
        FeedReader::open(&alice).await?,
        FeedReader::open(&bob).await?,
        FeedReader::open(&carol).await?,
    );

    // Online: one notice each to the owner and the share target; the heartbeat itself goes
    // to the target only.
    let beat = json!({"catalog": "films", "account_key": a, "revision": 1});
    assert_eq!(heartbeat(&alice, beat.clone()).await?, 200);
    let (kind, payload) = bob_feed.next(Duration::from_secs(5)).await?;
    assert_eq!(kind, "heartbeat");
    assert_eq!(payload, beat);
    for feed in [&mut alice_feed, &mut bob_feed] {
        let (kind, payload) = feed.next_notice(Duration::from_secs(5)).await?;
        assert_eq!(kind, "catalog_online");
        assert_eq!(
            (payload["catalog"].as_str(), payload["account_key"].as_str()),
            (Some("films"), Some(a.as_str()))
        );
        assert_eq!(payload["revision"], 1);
        assert!(payload["at"].as_str().is_some_and(|at| at.ends_with('Z')));
    }
    // A second heartbeat announces nothing new.
    let beat2 = json!({"catalog": "films", "account_key": a, "revision": 2});
    assert_eq!(heartbeat(&alice, beat2.clone()).await?, 200);
    assert_eq!(
        bob_feed.next(Duration::from_secs(5)).await?,
        ("heartbeat".into(), beat2)
    );
    wait_online_state(&bob, (true, 2)).await?;
    assert_eq!(running(&carol).await?, 1);

    // One instance stops (gracefully); heartbeats stop: exactly one offline notice each,
    // within TTL + 10 s of the last heartbeat.
    let last_beat = Instant::now();
    h.services.remove(0).stop().await?;
    for feed in [&mut alice_feed, &mut bob_feed] {
        let (kind, payload) = feed.next_notice(TTL + Duration::from_secs(10)).await?;
        assert_eq!(kind, "catalog_offline");
        assert_eq!(payload["revision"], 2, "the last revision is kept");
    }
    assert!(last_beat.elapsed() < TTL + Duration::from_secs(10));
    wait_online_state(&bob, (false, 2)).await?;
    assert_eq!(running(&carol).await?, 0);
    wait_for_marker(&js, &format!("natster.online.{a}.films")).await?;

    // A restarted instance next to the survivor: back online once, then an announced
    // shutdown gives one offline notice at once.
    h.add_instance(|c| c.online_ttl = TTL).await?;
    assert_eq!(
        heartbeat(
            &alice,
            json!({"catalog": "films", "account_key": a, "revision": 3})
        )
        .await?,
        200
    );
    for feed in [&mut alice_feed, &mut bob_feed] {
        let (kind, payload) = feed.next_notice(Duration::from_secs(5)).await?;
        assert_eq!(
            (kind.as_str(), &payload["revision"]),
            ("catalog_online", &json!(3))
        );
    }
    assert_eq!(
        heartbeat(
            &alice,
            json!({"catalog": "films", "account_key": a, "revision": 3, "offline": true})
        )
        .await?,
        200
    );
    for feed in [&mut alice_feed, &mut bob_feed] {
        let (kind, _) = feed.next_notice(Duration::from_secs(5)).await?;
        assert_eq!(kind, "catalog_offline");
    }
    // The offline message expires too; its marker must not announce anything again: the next
    // notice after it is the next real transition.
    wait_for_marker(&js, &format!("natster.online.{a}.films")).await?;
    assert_eq!(
        heartbeat(
            &alice,
            json!({"catalog": "films", "account_key": a, "revision": 4})
        )
        .await?,
        200
    );
    for feed in [&mut alice_feed, &mut bob_feed] {
        let (kind, payload) = feed.next_notice(Duration::from_secs(5)).await?;
        assert_eq!(
            (kind.as_str(), &payload["revision"]),
            ("catalog_online", &json!(4))
        );
    }
    // Carol, with no share, heard nothing at all.
    assert!(carol_feed.next(Duration::from_millis(200)).await.is_err());
    h.stop().await
}

#[tokio::test]
async fn spoofed_heartbeats_are_refused_and_change_nothing() -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let (alice, bob) = (h.connect("alice").await?, h.connect("bob").await?);
    let (a, b) = (h.key("alice"), h.key("bob"));
    alice_shares_films_with_bob(&alice, &bob, &a, &b).await?;
    let mut alice_feed = FeedReader::open(&alice).await?;

    // Bob claims to be alice, then heartbeats alice's catalog under his own key.
    assert_eq!(
        heartbeat(
            &bob,
            json!({"catalog": "films", "account_key": a, "revision": 9})
        )
        .await?,
        403
    );
    assert_eq!(
        heartbeat(
            &bob,
            json!({"catalog": "films", "account_key": b, "revision": 9})
        )
        .await?,
        403
    );
    assert_eq!(
        heartbeat(
            &bob,
            json!({"catalog": "fi.lms", "account_key": b, "revision": 9})
        )
        .await?,
        400
    );
    assert_eq!(heartbeat(&bob, json!({"catalog": 5})).await?, 400);

    let js = h.service_js().await?;
    let online = js
        .get_stream("NATSTER_ONLINE")
        .await?
        .info()
        .await?
        .state
        .messages;
    assert_eq!(online, 0, "nothing recorded");
    assert_eq!(online_state(&bob).await?, (false, 0));
    assert_eq!(
        call(&bob, "stats", "", None).await?.data["running_catalogs"],
        0
    );
    assert!(
        alice_feed.next(Duration::from_millis(200)).await.is_err(),
        "no notice"
    );
    h.stop().await
}

#[tokio::test]
async fn an_expiry_while_no_instance_runs_is_announced_once_after_the_restart() -> Result<()> {
    let mut h = Harness::without_instances(&["alice", "bob"]).await?;
    h.add_instance(|c| c.online_ttl = TTL).await?;
    let (alice, bob) = (h.connect("alice").await?, h.connect("bob").await?);
    let (a, b) = (h.key("alice"), h.key("bob"));
    let js = h.service_js().await?;
    alice_shares_films_with_bob(&alice, &bob, &a, &b).await?;
    let (mut alice_feed, mut bob_feed) = (
        FeedReader::open(&alice).await?,
        FeedReader::open(&bob).await?,
    );
    let beat = json!({"catalog": "films", "account_key": a, "revision": 1});
    assert_eq!(heartbeat(&alice, beat).await?, 200);
    for feed in [&mut alice_feed, &mut bob_feed] {
        assert_eq!(
            feed.next_notice(Duration::from_secs(5)).await?.0,
            "catalog_online"
        );
    }

    // Every instance stops; the heartbeat expires meanwhile.
    h.services.remove(0).stop().await?;
    wait_for_marker(&js, &format!("natster.online.{a}.films")).await?;

    // The restarted service announces the expiry once, then the next real transition.
    h.add_instance(|c| c.online_ttl = TTL).await?;
    for feed in [&mut alice_feed, &mut bob_feed] {
        let (kind, payload) = feed.next_notice(Duration::from_secs(10)).await?;
        assert_eq!(
            (kind.as_str(), &payload["revision"]),
            ("catalog_offline", &json!(1))
        );
    }
    wait_online_state(&bob, (false, 1)).await?;
    let beat = json!({"catalog": "films", "account_key": a, "revision": 2});
    assert_eq!(heartbeat(&alice, beat).await?, 200);
    for feed in [&mut alice_feed, &mut bob_feed] {
        let (kind, payload) = feed.next_notice(Duration::from_secs(5)).await?;
        assert_eq!(
            (kind.as_str(), &payload["revision"]),
            ("catalog_online", &json!(2))
        );
    }
    h.stop().await
}

/// Polls `/metrics` until `series` has `value`.
async fn await_metric(addr: std::net::SocketAddr, series: &str, value: f64) -> Result<()> {
    let started = Instant::now();
    loop {
        let (status, text) = http_get(addr, "/metrics").await?;
        ensure!(status == 200, "/metrics answered {status}");
        if metric_value(&text, series) == Some(value) {
            return Ok(());
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "{series} never became {value}; last scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_refused_heartbeat_is_counted_when_published_and_answered_when_sent_with_a_reply(
) -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let http = h.serve_http(0).await?;
    let (alice, bob) = (h.connect("alice").await?, h.connect("bob").await?);
    let (a, b) = (h.key("alice"), h.key("bob"));
    alice_shares_films_with_bob(&alice, &bob, &a, &b).await?;
    let mut bob_feed = FeedReader::open(&bob).await?;
    let publish = |revision: i64| {
        let body = json!({"catalog": "films", "account_key": a, "revision": revision});
        alice.publish("natster.global.heartbeats.put", body.to_string().into())
    };

    // As the original catalog server sends it: no reply subject, nobody told anything.
    publish(1).await?;
    wait_online_state(&bob, (true, 1)).await?;
    let (kind, forwarded) = bob_feed.next(Duration::from_secs(5)).await?;
    assert_eq!(
        (kind.as_str(), &forwarded["revision"]),
        ("heartbeat", &json!(1))
    );
    let dropped = "natster_heartbeats_dropped_total{reason=\"record\"}";
    await_metric(http, dropped, 0.0).await?;

    // The stream now refuses every record: the next one is counted, and changes nothing.
    let js = h.service_js().await?;
    let mut config = js
        .get_stream("NATSTER_ONLINE")
        .await?
        .info()
        .await?
        .config
        .clone();
    config.max_message_size = 8;
    js.update_stream(config.clone()).await?;
    publish(2).await?;
    await_metric(http, dropped, 1.0).await?;
    assert_eq!(online_state(&bob).await?, (true, 1));
    // Published, it was still forwarded; sent with a reply, it is answered with the refusal
    // (for good: 500) and neither recorded nor forwarded.
    let forwarded = bob_feed.next_heartbeat(Duration::from_secs(5)).await?;
    assert_eq!(forwarded["revision"], json!(2));
    let body = json!({"catalog": "films", "account_key": a, "revision": 3});
    let refused = call(&alice, "heartbeats.put", serde_json::to_vec(&body)?, None).await?;
    assert_eq!(refused.code, 500, "{refused:?}");
    assert_eq!(online_state(&bob).await?, (true, 1));

    // Taken again: answered once recorded, and forwarded.
    config.max_message_size = -1;
    js.update_stream(config).await?;
    let body = json!({"catalog": "films", "account_key": a, "revision": 4});
    assert_eq!(heartbeat(&alice, body).await?, 200);
    wait_online_state(&bob, (true, 4)).await?;
    let forwarded = bob_feed.next_heartbeat(Duration::from_secs(5)).await?;
    assert_eq!(
        forwarded["revision"],
        json!(4),
        "revision 3 was not forwarded"
    );
    h.stop().await
}

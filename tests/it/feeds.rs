//! Feeds reach exactly the intended accounts, once per fact, with two service instances.

use anyhow::{Context, Result};
use async_nats::jetstream;
use natster_global::model::{EventSubject, EventType};
use natster_global::test_util::{
    ShareFeedMark, EVENTS_STREAM, PROJ_STATS_BUCKET, SHARE_FEED_CONSUMER, SHARE_FEED_MARK_KEY,
};
use natster_testkit::{call, init_data, put_event, seq_of, FeedReader, Harness};
use serde_json::{json, Value};
use std::time::Duration;

async fn feed(client: &async_nats::Client) -> Result<FeedReader> {
    FeedReader::open(client).await
}

async fn next(feed: &mut FeedReader) -> Result<(String, Value)> {
    feed.next(Duration::from_secs(5)).await
}

#[tokio::test]
async fn each_feed_kind_reaches_exactly_the_intended_accounts_once() -> Result<()> {
    let mut h = Harness::start(&["alice", "bob", "carol"]).await?;
    h.add_instance(|_| {}).await?;
    let (alice, bob, carol) = (
        h.connect("alice").await?,
        h.connect("bob").await?,
        h.connect("carol").await?,
    );
    let (a, b, c) = (h.key("alice"), h.key("bob"), h.key("carol"));
    let (mut alice_feed, mut bob_feed, mut carol_feed) =
        (feed(&alice).await?, feed(&bob).await?, feed(&carol).await?);
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;

    // catalog_shared: to the target and the owner.
    let shared = seq_of(&put_event(&alice, "catalog_shared", "films", &b, Value::Null).await?)?;
    let notice = json!({"catalog": "films", "from_account": a, "to_account": b, "seq": shared});
    for sub in [&mut alice_feed, &mut bob_feed] {
        assert_eq!(next(sub).await?, ("catalog_shared".into(), notice.clone()));
    }
    call(&bob, "my.shares", "", Some(shared)).await?;

    // heartbeat: to the accounts the catalog is shared with; online: to them and the owner.
    let beat = json!({"catalog": "films", "account_key": a, "revision": 7});
    assert_eq!(
        call(&alice, "heartbeats.put", serde_json::to_vec(&beat)?, None)
            .await?
            .code,
        200
    );
    let mut bob_got = [next(&mut bob_feed).await?, next(&mut bob_feed).await?];
    bob_got.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(bob_got[0].0, "catalog_online");
    assert_eq!(bob_got[1], ("heartbeat".into(), beat));
    assert_eq!(next(&mut alice_feed).await?.0, "catalog_online");

    // catalog_unshared: to the target and the owner.
    let unshared = seq_of(&put_event(&alice, "catalog_unshared", "films", &b, Value::Null).await?)?;
    let notice = json!({"catalog": "films", "from_account": a, "to_account": b, "seq": unshared});
    for sub in [&mut alice_feed, &mut bob_feed] {
        assert_eq!(
            next(sub).await?,
            ("catalog_unshared".into(), notice.clone())
        );
    }

    // A last fact for carol: anything sent twice or to the wrong account would come first.
    let last = seq_of(&put_event(&alice, "catalog_shared", "films", &c, Value::Null).await?)?;
    let notice = json!({"catalog": "films", "from_account": a, "to_account": c, "seq": last});
    assert_eq!(
        next(&mut carol_feed).await?,
        ("catalog_shared".into(), notice.clone())
    );
    assert_eq!(
        next(&mut alice_feed).await?,
        ("catalog_shared".into(), notice)
    );
    // Bob, no longer a target, hears nothing more.
    assert!(bob_feed.next(Duration::from_millis(300)).await.is_err());
    h.stop().await
}

/// The share feed's durable consumer exists before the service first answers, so a share
/// appended at once is announced: a consumer created after it (it starts at new events)
/// would never deliver it. (Seen in a cluster, where creating it took longer than the first
/// shares.)
#[tokio::test]
async fn a_share_appended_as_soon_as_the_service_answers_is_announced() -> Result<()> {
    let mut h = Harness::without_instances(&["alice", "bob"]).await?;
    let alice = h.connect("alice").await?;
    let (a, b) = (h.key("alice"), h.key("bob"));
    let mut alice_feed = feed(&alice).await?;
    h.add_instance(|_| {}).await?;
    let js = h.service_js().await?;
    let events = js.get_stream(EVENTS_STREAM).await?;
    events
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(SHARE_FEED_CONSUMER)
        .await
        .map_err(|e| anyhow::anyhow!("no share feed consumer once the service answers: {e}"))?;
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    let shared = seq_of(&put_event(&alice, "catalog_shared", "films", &b, Value::Null).await?)?;
    let notice = json!({"catalog": "films", "from_account": a, "to_account": b, "seq": shared});
    assert_eq!(
        next(&mut alice_feed).await?,
        ("catalog_shared".into(), notice)
    );
    h.stop().await
}

/// The share feed's mark as stored, if any.
async fn share_feed_mark(js: &jetstream::Context) -> Result<Option<u64>> {
    let stats = js.get_key_value(PROJ_STATS_BUCKET).await?;
    Ok(match stats.get(SHARE_FEED_MARK_KEY).await? {
        Some(bytes) => Some(serde_json::from_slice::<ShareFeedMark>(&bytes)?.announced_seq),
        None => None,
    })
}

/// A world with alice and bob, the service's resources made and no instance running: the
/// harness, both keys and the service account's JetStream.
async fn stopped_world() -> Result<(Harness, String, String, jetstream::Context)> {
    let h = Harness::without_instances(&["alice", "bob"]).await?;
    let (a, b) = (h.key("alice"), h.key("bob"));
    let js = h.service_js().await?;
    natster_global::test_util::Store::ensure(js.clone(), &Default::default()).await?;
    Ok((h, a, b, js))
}

/// Appends a share event straight to the log (no service running), as the service would.
async fn append_share(js: &jetstream::Context, from: &str, to: &str, name: &str) -> Result<u64> {
    let subject = EventSubject::new(from, to, name, EventType::CatalogShared).to_subject();
    Ok(js.publish(subject, "".into()).await?.await?.sequence)
}

/// A share feed consumer that goes missing (deleted by an operator) is created again from the
/// feed's mark, not at the log's end: a share appended while it was missing is announced, and
/// the shares announced before the mark are not announced again.
#[tokio::test]
async fn a_share_appended_while_the_feed_consumer_was_missing_is_announced() -> Result<()> {
    let mut h = Harness::start(&["alice", "bob"]).await?;
    let alice = h.connect("alice").await?;
    let (a, b) = (h.key("alice"), h.key("bob"));
    let mut alice_feed = feed(&alice).await?;
    let js = h.service_js().await?;
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    let films = seq_of(&put_event(&alice, "catalog_shared", "films", &b, Value::Null).await?)?;
    assert_eq!(next(&mut alice_feed).await?.1["seq"], films);
    crate::projections::eventually(Duration::from_secs(10), || async {
        Ok(share_feed_mark(&js).await? >= Some(films))
    })
    .await
    .context("the mark reaches the announced share")?;

    h.services.pop().context("the instance")?.stop().await?;
    let events = js.get_stream(EVENTS_STREAM).await?;
    events.delete_consumer(SHARE_FEED_CONSUMER).await?;
    let music = append_share(&js, &a, &b, "music").await?;
    h.add_instance(|_| {}).await?;

    let notice = json!({"catalog": "music", "from_account": a, "to_account": b, "seq": music});
    assert_eq!(
        next(&mut alice_feed).await?,
        ("catalog_shared".into(), notice)
    );
    h.stop().await
}

/// The first mark: with no consumer, the log's end (an adopted log's history is not
/// announced); with a consumer made before marks existed (at new events), its ack floor,
/// which the server sets to the log's end when it creates it.
#[tokio::test]
async fn the_first_mark_is_the_log_end_or_an_existing_consumers_ack_floor() -> Result<()> {
    let (mut h, a, b, js) = stopped_world().await?;
    let history = append_share(&js, &a, &b, "films").await?;
    let events = js.get_stream(EVENTS_STREAM).await?;
    events
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(SHARE_FEED_CONSUMER.into()),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    append_share(&js, &a, &b, "music").await?;
    h.add_instance(|_| {}).await?;
    assert_eq!(
        share_feed_mark(&js).await?,
        Some(history),
        "the existing consumer's ack floor"
    );
    h.stop().await?;

    let (mut h, a, b, js) = stopped_world().await?;
    append_share(&js, &a, &b, "films").await?;
    let end = append_share(&js, &a, &b, "music").await?;
    h.add_instance(|_| {}).await?;
    assert_eq!(share_feed_mark(&js).await?, Some(end), "the log's end");
    h.stop().await
}

/// A share feed consumer deleted under a running instance is created again by it (from the
/// mark), and the shares appended since are announced.
#[tokio::test]
async fn a_feed_consumer_deleted_under_a_running_instance_is_created_again() -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let alice = h.connect("alice").await?;
    let (a, b) = (h.key("alice"), h.key("bob"));
    let mut alice_feed = feed(&alice).await?;
    let js = h.service_js().await?;
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    let events = js.get_stream(EVENTS_STREAM).await?;
    events.delete_consumer(SHARE_FEED_CONSUMER).await?;
    let films = seq_of(&put_event(&alice, "catalog_shared", "films", &b, Value::Null).await?)?;
    let notice = json!({"catalog": "films", "from_account": a, "to_account": b, "seq": films});
    assert_eq!(
        alice_feed.next(Duration::from_secs(15)).await?,
        ("catalog_shared".into(), notice)
    );
    h.stop().await
}

/// A mark that does not decode is written again (as a first mark: here, with no consumer, the
/// log's end) instead of keeping the service from starting.
#[tokio::test]
async fn an_undecodable_mark_is_written_again() -> Result<()> {
    let (mut h, a, b, js) = stopped_world().await?;
    let end = append_share(&js, &a, &b, "films").await?;
    let stats = js.get_key_value(PROJ_STATS_BUCKET).await?;
    stats.put(SHARE_FEED_MARK_KEY, "not a mark".into()).await?;
    h.add_instance(|_| {}).await?;
    assert_eq!(share_feed_mark(&js).await?, Some(end));
    h.stop().await
}

//! The online view against a real nats-server: complete before it answers, current after each
//! change, and rebuilt (and right again) after the server restarts under it.

use super::*;
use crate::store::follow::testing::{client_and_bucket, until};
use std::time::Duration;

fn record(owner: &str, catalog: &str, online: bool, revision: i64) -> bytes::Bytes {
    let record = OnlineRecord {
        catalog: catalog.into(),
        account_key: owner.into(),
        revision,
        online,
        changed_at: 0,
        applied_seq: 1,
    };
    serde_json::to_vec(&record).expect("json").into()
}

fn entry(online: bool, revision: i64) -> Option<OnlineEntry> {
    Some(OnlineEntry { online, revision })
}

/// Waits until the view answers `keys` with `expected`.
async fn until_view_shows(view: &OnlineView, keys: &[&str], expected: &[Option<OnlineEntry>]) {
    let shows = || async { view.lookup(keys.iter().copied()).as_deref() == Some(expected) };
    assert!(
        until(Duration::from_secs(10), shows).await,
        "the view shows {:?}, not {expected:?}",
        view.lookup(keys.iter().copied())
    );
}

#[tokio::test]
async fn an_empty_bucket_gives_a_complete_empty_view() {
    let server = natster_testkit::PlainServer::start().await.expect("server");
    let (client, bucket) = client_and_bucket(&server, "ONLINE_VIEW_TEST").await;
    let stop = CancellationToken::new();
    let view = OnlineView::start(client, bucket, ViewMetrics::default(), stop.clone());
    until_view_shows(&view, &["a.c"], &[None]).await;
    stop.cancel();
}

#[tokio::test]
async fn the_view_follows_the_bucket_and_is_rebuilt_when_the_server_restarts() {
    let mut server = natster_testkit::PlainServer::start().await.expect("server");
    let (client, bucket) = client_and_bucket(&server, "ONLINE_VIEW_TEST").await;
    bucket
        .put("a.c1", record("a", "c1", true, 3))
        .await
        .expect("put");
    bucket
        .put("b.c2", record("b", "c2", false, 1))
        .await
        .expect("put");
    bucket
        .put("b.c3", record("b", "c3", true, 9))
        .await
        .expect("put");
    bucket.delete("b.c3").await.expect("delete");
    let metrics = ViewMetrics::default();
    let stop = CancellationToken::new();
    let view = OnlineView::start(client, bucket.clone(), metrics.clone(), stop.clone());
    let keys = ["a.c1", "b.c2", "b.c3", "d.c4"];

    // Complete from the first answer: the values stored before it started.
    until_view_shows(&view, &keys, &[entry(true, 3), entry(false, 1), None, None]).await;
    assert_eq!(metrics.entries.get(), 2);
    assert_eq!(metrics.rebuilds.get(), 0);

    // Current after each change: a put, a change, a delete.
    bucket
        .put("d.c4", record("d", "c4", true, 2))
        .await
        .expect("put");
    bucket
        .put("a.c1", record("a", "c1", false, 3))
        .await
        .expect("put");
    bucket.delete("b.c2").await.expect("delete");
    until_view_shows(&view, &keys, &[entry(false, 3), None, None, entry(true, 2)]).await;
    assert_eq!(metrics.entries.get(), 2);

    // The client reconnects after the restart: the view is thrown away and read again, and
    // follows changes made after it.
    server.server.restart().await.expect("restart");
    let rebuilt = until(Duration::from_secs(15), || async {
        metrics.rebuilds.get() > 0
    })
    .await;
    assert!(rebuilt, "no rebuild after the server restarted");
    bucket
        .put("b.c3", record("b", "c3", true, 10))
        .await
        .expect("put");
    until_view_shows(
        &view,
        &keys,
        &[entry(false, 3), None, entry(true, 10), entry(true, 2)],
    )
    .await;
    assert_eq!(metrics.entries.get(), 3);
    stop.cancel();
}

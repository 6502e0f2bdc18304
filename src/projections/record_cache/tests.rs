//! The record cache against a real nats-server: a miss read once then held, every change the
//! watch delivers taken in (put, delete), its bound kept, emptied and right again after
//! the server restarts under it, and without a watch (reading the bucket) while paused.

use super::*;
use crate::store::follow::testing::{client_and_bucket, until};
use natster_testkit::PlainServer;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec {
    n: u32,
}

/// Stands for what a reader derives from a record: ten bytes per unit of `n`.
impl CachedRecord for Rec {
    fn derived_bytes(&self) -> usize {
        self.n as usize * 10
    }
}

fn rec(n: u32) -> bytes::Bytes {
    serde_json::to_vec(&Rec { n }).expect("json").into()
}

/// A cache of `limit` bytes over a fresh bucket on `server` holding `stored`, once its watch
/// runs (reads before it are not held).
async fn started_cache(
    server: &PlainServer,
    stored: &[(&str, u32)],
    limit: usize,
) -> (
    kv::Store,
    RecordCache<Rec>,
    RecordCacheMetrics,
    CancellationToken,
) {
    started_pausable_cache(server, stored, limit, Pause::never()).await
}

/// The same, paused by `pause`.
async fn started_pausable_cache(
    server: &PlainServer,
    stored: &[(&str, u32)],
    limit: usize,
    pause: Pause,
) -> (
    kv::Store,
    RecordCache<Rec>,
    RecordCacheMetrics,
    CancellationToken,
) {
    let (client, bucket) = client_and_bucket(server, "RECORD_CACHE_TEST").await;
    for (key, n) in stored {
        bucket.put(*key, rec(*n)).await.expect("put");
    }
    let metrics = RecordCacheMetrics::default();
    let stop = CancellationToken::new();
    let cache = RecordCache::start(
        client,
        bucket.clone(),
        limit,
        metrics.clone(),
        pause,
        stop.clone(),
    );
    until_live(&cache).await;
    (bucket, cache, metrics, stop)
}

async fn value(cache: &RecordCache<Rec>, key: &str) -> Option<u32> {
    cache.get(key).await.expect("get").map(|r| r.n)
}

/// Waits until the cache answers `expected` at `key` (a change reaches it through its watch).
async fn until_cached(cache: &RecordCache<Rec>, key: &str, expected: Option<u32>) {
    let reached = until(Duration::from_secs(10), || async {
        value(cache, key).await == expected
    })
    .await;
    assert!(reached, "{key} never became {expected:?}");
}

/// Waits until the cache's watch runs (`live`) or has stopped.
async fn until_live_is(cache: &RecordCache<Rec>, live: bool) {
    let reached = until(Duration::from_secs(10), || async {
        cache.state.lock().expect("lock").live == live
    })
    .await;
    assert!(reached, "the cache's watch never became live={live}");
}

async fn until_live(cache: &RecordCache<Rec>) {
    until_live_is(cache, true).await;
}

#[tokio::test]
async fn a_miss_is_read_once_then_every_change_is_taken_in() {
    let server = PlainServer::start().await.expect("server");
    let (bucket, cache, metrics, stop) = started_cache(&server, &[("a", 1)], 1 << 20).await;

    assert_eq!(value(&cache, "a").await, Some(1));
    assert_eq!(value(&cache, "a").await, Some(1));
    assert_eq!(value(&cache, "absent").await, None);
    assert_eq!(value(&cache, "absent").await, None);
    assert_eq!((metrics.misses.get(), metrics.hits.get()), (2, 2));

    bucket.put("a", rec(2)).await.expect("put");
    until_cached(&cache, "a", Some(2)).await;
    bucket.put("absent", rec(7)).await.expect("put");
    until_cached(&cache, "absent", Some(7)).await;
    bucket.delete("a").await.expect("delete");
    until_cached(&cache, "a", None).await;
    // All of that came through the watch: no read of the bucket since the first two.
    assert_eq!(metrics.misses.get(), 2);
    stop.cancel();
}

#[tokio::test]
async fn the_cache_keeps_its_bound() {
    let server = PlainServer::start().await.expect("server");
    let limit = 4 * held_bytes("k00", rec(0).len());
    let (bucket, cache, metrics, stop) = started_cache(&server, &[], limit).await;
    // What a record derives counts with it.
    bucket.put("big", rec(30)).await.expect("put");
    assert_eq!(value(&cache, "big").await, Some(30));
    assert_eq!(
        metrics.bytes.get(),
        (held_bytes("big", rec(30).len()) + 300) as i64
    );
    for i in 0..20 {
        bucket.put(format!("k{i:02}"), rec(i)).await.expect("put");
        assert_eq!(value(&cache, &format!("k{i:02}")).await, Some(i));
        let held = cache.state.lock().expect("lock").bytes;
        assert!(held <= limit, "{held} bytes held, bound {limit}");
        assert_eq!(metrics.bytes.get(), held as i64);
    }
    stop.cancel();
}

#[tokio::test]
async fn the_cache_is_emptied_and_right_again_after_the_server_restarts() {
    let mut server = PlainServer::start().await.expect("server");
    let (bucket, cache, metrics, stop) = started_cache(&server, &[("a", 1)], 1 << 20).await;
    assert_eq!(value(&cache, "a").await, Some(1));

    server.server.restart().await.expect("restart");
    let rebuilt = until(Duration::from_secs(15), || async {
        metrics.rebuilds.get() > 0
    })
    .await;
    assert!(rebuilt, "no rebuild after the server restarted");
    until_live(&cache).await;
    bucket.put("a", rec(3)).await.expect("put");
    until_cached(&cache, "a", Some(3)).await;
    stop.cancel();
}

/// While paused the cache has no watch: it holds nothing and every read goes to the bucket, so
/// a change made meanwhile is read, never missed; once the pause is lifted a new watch runs,
/// and the cache holds records and takes their changes in again.
#[tokio::test]
async fn a_paused_cache_reads_the_bucket_and_serves_from_memory_again_after() {
    let server = PlainServer::start().await.expect("server");
    let (signal, raised) = tokio::sync::watch::channel(false);
    let pause = Pause::while_any_raised([raised]);
    let (bucket, cache, metrics, stop) =
        started_pausable_cache(&server, &[("a", 1)], 1 << 20, pause).await;
    assert_eq!(value(&cache, "a").await, Some(1));
    assert_eq!(value(&cache, "a").await, Some(1));
    assert_eq!((metrics.misses.get(), metrics.hits.get()), (1, 1));

    signal.send_replace(true);
    until_live_is(&cache, false).await;
    assert_eq!(metrics.rebuilds.get(), 1, "the pause ended the watch");
    assert_eq!(metrics.bytes.get(), 0, "and emptied the cache");
    bucket.put("a", rec(2)).await.expect("put");
    assert_eq!(value(&cache, "a").await, Some(2));
    assert_eq!(value(&cache, "a").await, Some(2));
    assert_eq!(
        (metrics.misses.get(), metrics.hits.get()),
        (3, 1),
        "while paused every read goes to the bucket"
    );
    assert!(cache.state.lock().expect("lock").records.is_empty());

    signal.send_replace(false);
    until_live(&cache).await;
    assert_eq!(value(&cache, "a").await, Some(2));
    assert_eq!(value(&cache, "a").await, Some(2));
    assert_eq!((metrics.misses.get(), metrics.hits.get()), (4, 2));
    bucket.put("a", rec(3)).await.expect("put");
    until_cached(&cache, "a", Some(3)).await;
    assert_eq!(
        metrics.misses.get(),
        4,
        "the change came through the new watch"
    );
    stop.cancel();
}

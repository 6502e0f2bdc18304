//! Following a bucket's changes with a KV watch that starts over whenever it fails or ends, or
//! the client reconnects: a watch that lived through a reconnect may have missed changes, or
//! follow another node now, so what was built from it is thrown away and built again.
//!
//! The in-memory read views (catalogs online, account records) are built this way.

use async_nats::jetstream::kv;
use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a running watch checks whether the client reconnected.
const RECONNECT_CHECK: Duration = Duration::from_millis(250);
/// Pause before a new watch after one ended.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// What a new watch delivers first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The current value of every key, then every change.
    Current,
    /// Only changes made after it started.
    New,
}

/// What follows a bucket. Calls come in this order for each watch: `started`, `change` for
/// each change (in stream order), `ended`; a watch that could not be made is only `ended`.
pub trait Follower: Send + 'static {
    /// A watch runs. With [`Start::Current`], `empty` says the bucket held no value just
    /// before it was made (so no delivery will say its current values are all in).
    fn started(&mut self, empty: bool);
    /// One change the watch delivered.
    fn change(&mut self, entry: &kv::Entry);
    /// The watch ended, for `reason`; another starts shortly.
    fn ended(&mut self, reason: &'static str);
}

/// Follows `bucket` through `client` until `stop` is cancelled, one watch after another.
pub async fn follow(
    client: async_nats::Client,
    bucket: kv::Store,
    start: Start,
    mut follower: impl Follower,
    stop: CancellationToken,
) {
    let statistics = client.statistics();
    loop {
        let connects = statistics.connects.load(Ordering::Relaxed);
        let reason = match open(&bucket, start).await {
            Err(reason) => reason,
            Ok((mut updates, empty)) => {
                follower.started(empty);
                let mut check = tokio::time::interval(RECONNECT_CHECK);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = check.tick() => {
                            if statistics.connects.load(Ordering::Relaxed) != connects {
                                break "client reconnected";
                            }
                        }
                        entry = updates.next() => match entry {
                            Some(Ok(entry)) => follower.change(&entry),
                            Some(Err(_)) => break "watch failed",
                            None => break "watch ended",
                        },
                    }
                }
            }
        };
        follower.ended(reason);
        tracing::debug!(bucket = %bucket.name, reason, "following the bucket again");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETRY_PAUSE) => {}
        }
    }
}

/// A new watch, and whether the bucket was empty just before it (for [`Start::Current`]).
async fn open(bucket: &kv::Store, start: Start) -> Result<(kv::Watch, bool), &'static str> {
    let empty = match start {
        Start::Current => match bucket.status().await {
            Ok(status) => status.values() == 0,
            Err(_) => return Err("bucket status unavailable"),
        },
        Start::New => false,
    };
    let watch = match start {
        Start::Current => bucket.watch_with_history(">").await,
        Start::New => bucket.watch_all().await,
    };
    watch
        .map(|watch| (watch, empty))
        .map_err(|_| "watch could not be made")
}

/// What the tests of followers share: a bucket on a plain server, and waits on conditions.
#[cfg(test)]
pub(crate) mod testing {
    use async_nats::jetstream::{self, kv};
    use std::future::Future;
    use std::time::Duration;

    /// A client of `server` and a fresh bucket `name` (history 1, as the projections').
    pub async fn client_and_bucket(
        server: &natster_testkit::PlainServer,
        name: &str,
    ) -> (async_nats::Client, kv::Store) {
        let client = server.connect().await.expect("connect");
        let bucket = jetstream::new(client.clone())
            .create_key_value(kv::Config {
                bucket: name.into(),
                history: 1,
                ..Default::default()
            })
            .await
            .expect("bucket");
        (client, bucket)
    }

    /// Waits until `holds` answers true (a watch delivers in its own time), at most `within`;
    /// whether it did.
    pub async fn until<F, Fut>(within: Duration, mut holds: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        tokio::time::timeout(within, async {
            while !holds().await {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .is_ok()
    }
}

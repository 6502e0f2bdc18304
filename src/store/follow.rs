//! Following a bucket's changes with a watch that starts over whenever it fails or ends, or
//! the client reconnects: a watch that lived through a reconnect may have missed changes, or
//! follow another node now, so what was built from it is thrown away and built again.
//!
//! A watch is an ephemeral pull consumer of the bucket's stream (`store::log::open_pull`: no
//! acks, one replica, in memory, idle heartbeats every second), its order checked by consumer
//! sequence: a watch whose consumer was lost with its node ends within about two seconds
//! (the client's KV watch heartbeats every 5 s and noticed after 10), and so does one that
//! skipped a message. Nothing resumes: the follower builds again from the new watch.
//!
//! The in-memory read views (catalogs online, account records, projection stats) are built
//! this way. A follower may also stand its watch down for a while ([`Pause`]): the account
//! cache does while this instance's runner writes the whole bucket in a catch-up, a bucket
//! whose changes it would be delivered and then ignore.

use super::log::open_pull;
use super::pause::Pause;
use async_nats::jetstream::{consumer, kv};
use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a running watch checks whether the client reconnected.
const RECONNECT_CHECK: Duration = Duration::from_millis(250);
/// Pause before a new watch after one ended.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Messages asked for by one pull.
const PULL_BATCH: usize = 256;

/// Why a watch ends when a pause is asked for.
const PAUSED: &str = "paused";

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

/// Follows `bucket` through `client` until `stop` is cancelled, one watch after another, none
/// while `pause` asks for it.
pub async fn follow(
    client: async_nats::Client,
    bucket: kv::Store,
    start: Start,
    mut follower: impl Follower,
    mut pause: Pause,
    stop: CancellationToken,
) {
    let statistics = client.statistics();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = pause.lifted() => {}
        }
        let connects = statistics.connects.load(Ordering::Relaxed);
        let reason = match open(&bucket, start).await {
            Err(reason) => reason,
            Ok((mut updates, empty)) => {
                follower.started(empty);
                let mut check = tokio::time::interval(RECONNECT_CHECK);
                let asked = pause.asked();
                tokio::pin!(asked);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        () = &mut asked => break PAUSED,
                        _ = check.tick() => {
                            if statistics.connects.load(Ordering::Relaxed) != connects {
                                break "client reconnected";
                            }
                        }
                        entry = updates.next() => match entry {
                            Some(Ok(entry)) => follower.change(&entry),
                            Some(Err(reason)) => break reason,
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
async fn open(bucket: &kv::Store, start: Start) -> Result<(Watch, bool), &'static str> {
    let empty = match start {
        Start::Current => match bucket.status().await {
            Ok(status) => status.values() == 0,
            Err(_) => return Err("bucket status unavailable"),
        },
        Start::New => false,
    };
    let deliver_policy = match start {
        Start::Current => consumer::DeliverPolicy::LastPerSubject,
        Start::New => consumer::DeliverPolicy::New,
    };
    // Every key: the server wants a filter for "last per subject".
    let every_key = format!("{}>", bucket.prefix);
    let messages = open_pull(&bucket.stream, deliver_policy, every_key, PULL_BATCH)
        .await
        .map_err(|_| "watch could not be made")?;
    let watch = Watch {
        messages,
        bucket: bucket.name.clone(),
        prefix: bucket.prefix.clone(),
        delivered: 0,
        seen_current: false,
    };
    Ok((watch, empty))
}

/// The messages of one watch, as KV entries.
struct Watch {
    messages: consumer::pull::Stream,
    bucket: String,
    /// Subject prefix of the bucket's keys (`$KV.<bucket>.`).
    prefix: String,
    /// Consumer sequence of the last message taken.
    delivered: u64,
    seen_current: bool,
}

impl Watch {
    /// The next entry; an error names why the watch cannot go on (it failed: a missed
    /// heartbeat, a lost consumer; or it skipped a message). Cancellation-safe.
    async fn next(&mut self) -> Option<Result<kv::Entry, &'static str>> {
        let Ok(message) = self.messages.next().await? else {
            return Some(Err("watch failed"));
        };
        let Ok(info) = message.info() else {
            return Some(Err("watch failed"));
        };
        if info.consumer_sequence != self.delivered + 1 {
            return Some(Err("watch skipped a message"));
        }
        self.delivered = info.consumer_sequence;
        let operation = super::kv::operation(message.headers.as_ref());
        let Some(key) = message.subject.strip_prefix(self.prefix.as_str()) else {
            return Some(Err("watch delivered a subject outside the bucket"));
        };
        self.seen_current |= info.pending == 0;
        Some(Ok(kv::Entry {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            value: message.payload.clone(),
            revision: info.stream_sequence,
            delta: info.pending,
            created: info.published,
            operation,
            seen_current: self.seen_current,
        }))
    }
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

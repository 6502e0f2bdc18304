//! The online projector: applies `NATSTER_ONLINE` to `PROJ_ONLINE`, keeps the running-catalogs
//! counter, and announces each transition once.
//!
//! One instance applies at a time (lease `lease.online` in `PROJ_STATS`, as the event
//! projections do); it reads the stream in order from `checkpoint.online`. Per chunk of
//! messages, in this order:
//! 1. `counters.online` (CAS): the change in running catalogs, with `counted_seq` moved to the
//!    chunk's end, so a replay never counts a message twice;
//! 2. the transition notices (`catalog_online` / `catalog_offline`) to the owner and every
//!    account the catalog is shared with — before the records, so a crash can repeat a notice
//!    but never lose one;
//! 3. the touched records (CAS on their revisions), each with its `applied_seq`;
//! 4. `checkpoint.online`.
//!
//! A graceful stop finishes the chunk in hand, so a restart announces nothing twice.

use super::{apply, decode, OnlineMessage, OnlineRecord, Transition};
use crate::feeds::Feeds;
use crate::lease::Lease;
use crate::projections::runner::{self, Checkpoint, Counters};
use async_nats::jetstream::{consumer, kv, stream};
use futures::StreamExt;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Name of the projection in `PROJ_STATS` keys and logs.
pub const NAME: &str = "online";

/// What the projector reads and writes.
#[derive(Clone)]
pub struct OnlineProjector {
    pub online: stream::Stream,
    pub records: kv::Store,
    pub stats: kv::Store,
    pub feeds: Feeds,
    pub takeover_after: Duration,
    /// Counts stream messages applied.
    pub applied: prometheus_client::metrics::counter::Counter,
}

impl OnlineProjector {
    /// Runs until `shutdown` is cancelled: waits for the lease, then applies the stream.
    /// Cancellation finishes the chunk in hand and releases the lease.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut lease = Lease::new(
            self.stats.clone(),
            runner::lease_key(NAME),
            runner::runner_id(),
            self.takeover_after,
        );
        loop {
            match lease.try_acquire().await {
                Ok(true) => {
                    tracing::info!(projection = NAME, "holding the projection lease");
                    let result = self.lead(&mut lease, &shutdown).await;
                    if shutdown.is_cancelled() {
                        lease.release().await;
                        return;
                    }
                    if let Err(error) = result {
                        tracing::warn!(projection = NAME, %error, "online projector restarting");
                        lease.release().await;
                    }
                }
                Ok(false) => {}
                Err(error) => tracing::debug!(projection = NAME, %error, "lease check failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.takeover_after / 4) => {}
            }
        }
    }

    async fn lead(&self, lease: &mut Lease, shutdown: &CancellationToken) -> Result<(), String> {
        let start = runner::checkpoint(&self.stats, NAME).await? + 1;
        let consumer = self
            .online
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| format!("online consumer: {e}"))?;
        let mut chunks = consumer
            .messages()
            .await
            .map_err(|e| format!("reading the online stream: {e}"))?
            .ready_chunks(1024);
        let mut renew = tokio::time::interval(self.takeover_after / 4);
        renew.tick().await;
        let mut state = State::default();
        loop {
            let chunk = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = renew.tick() => {
                    if !lease.renew().await? {
                        tracing::warn!(projection = NAME, "lost the projection lease; standing by");
                        return Ok(());
                    }
                    continue;
                }
                chunk = chunks.next() => chunk.ok_or("the online reader ended")?,
            };
            let mut messages = Vec::with_capacity(chunk.len());
            let mut last_seq = None;
            for message in chunk {
                let message = message.map_err(|e| format!("reading the online stream: {e}"))?;
                if let Ok(info) = message.info() {
                    last_seq = Some(info.stream_sequence);
                }
                messages.extend(decode(&message));
            }
            let Some(last_seq) = last_seq else { continue };
            if !lease.is_held() {
                return Ok(());
            }
            // On failure, whatever is cached may be stale: the caller starts over from the
            // stored state.
            self.apply_chunk(&mut state, &messages, last_seq).await?;
        }
    }

    async fn apply_chunk(
        &self,
        state: &mut State,
        messages: &[OnlineMessage],
        last_seq: u64,
    ) -> Result<(), String> {
        let counters_key = runner::counters_key(NAME);
        if state.counters.is_none() {
            let (counters, revision) = runner::load::<Counters>(&self.stats, &counters_key).await?;
            state.counters = Some((counters.unwrap_or_default(), revision));
        }
        let keys: BTreeSet<String> = messages
            .iter()
            .map(|m| super::online_key(&m.owner, &m.catalog))
            .filter(|k| !state.records.contains_key(k))
            .collect();
        let loaded = futures::future::join_all(
            keys.iter()
                .map(|key| runner::load::<OnlineRecord>(&self.records, key)),
        )
        .await;
        for (key, result) in keys.into_iter().zip(loaded) {
            state.records.insert(key, result?);
        }

        let (counters, counters_revision) = state.counters.clone().expect("loaded above");
        let mut running_delta = 0i64;
        let mut transitions = Vec::new();
        let mut dirty = BTreeSet::new();
        for message in messages {
            let key = super::online_key(&message.owner, &message.catalog);
            let (record, _) = state.records.get_mut(&key).expect("loaded above");
            let (after, transition) = apply(record.as_ref(), message);
            if after != *record {
                dirty.insert(key);
                *record = after;
            }
            if let Some(transition) = transition {
                if message.seq > counters.counted_seq {
                    running_delta += if transition.online { 1 } else { -1 };
                    transitions.push(transition);
                }
            }
        }

        if running_delta != 0 && last_seq > counters.counted_seq {
            let updated = Counters {
                counted_seq: last_seq,
                running_catalogs: counters.running_catalogs + running_delta,
                ..counters
            };
            // Dropped from the state on failure: the next chunk reads it again.
            state.counters = None;
            let revision = runner::write(
                &self.stats,
                &counters_key,
                Some(&updated),
                counters_revision,
            )
            .await?;
            state.counters = Some((updated, revision));
        }

        for transition in &transitions {
            self.announce(transition).await;
        }

        let writes = dirty.iter().map(|key| {
            let (record, revision) = &state.records[key];
            async move {
                (
                    key.clone(),
                    runner::write(&self.records, key, record.as_ref(), *revision).await,
                )
            }
        });
        let mut failed = None;
        for (key, result) in futures::future::join_all(writes).await {
            match result {
                Ok(revision) => {
                    if let Some(entry) = state.records.get_mut(&key) {
                        entry.1 = revision;
                    }
                }
                Err(error) => {
                    state.records.remove(&key);
                    failed = Some(error);
                }
            }
        }
        if let Some(error) = failed {
            return Err(error);
        }
        if state.records.len() > CACHE_LIMIT {
            state.records.clear();
        }

        let checkpoint_key = runner::checkpoint_key(NAME);
        let (stored, revision) = match state.checkpoint.take() {
            Some(cached) => cached,
            None => {
                let (stored, revision) =
                    runner::load::<Checkpoint>(&self.stats, &checkpoint_key).await?;
                (stored.map_or(0, |c| c.applied_seq), revision)
            }
        };
        if stored < last_seq {
            let checkpoint = Checkpoint {
                applied_seq: last_seq,
                instance: runner::instance_id(),
            };
            let revision =
                runner::write(&self.stats, &checkpoint_key, Some(&checkpoint), revision).await?;
            state.checkpoint = Some((last_seq, revision));
        } else {
            state.checkpoint = Some((stored, revision));
        }
        self.applied.inc_by(messages.len() as u64);
        Ok(())
    }

    /// Sends `transition` to the owner and every account the catalog is shared with.
    async fn announce(&self, transition: &Transition) {
        let mut recipients = vec![transition.owner.clone()];
        recipients.extend(
            self.feeds
                .shared_with(&transition.catalog, &transition.owner),
        );
        self.feeds
            .publish(&recipients, transition.kind(), &transition.payload())
            .await;
    }
}

/// Records cached by the holder before it starts over (bounds memory).
const CACHE_LIMIT: usize = 200_000;

/// What the holder knows it stored.
#[derive(Default)]
struct State {
    records: HashMap<String, (Option<OnlineRecord>, Option<u64>)>,
    counters: Option<(Counters, Option<u64>)>,
    checkpoint: Option<(u64, Option<u64>)>,
}

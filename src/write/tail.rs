//! The decision state's tail: every instance folds the log into memory, in order, from where
//! its state starts (a snapshot's sequence, or the beginning).
//!
//! Until it has folded what the log held when the instance started, the tail reads from the
//! instance's shared read of the log, the one its projections catch up from: on two cores, two
//! ordered reads of a long log at once take about 1.6× as long as one. Then it leaves the
//! shared read and reads on its own, so that decisions never wait on a projection's pace. It
//! leaves early when the shared read hands it nothing for [`STALL`]: the read is going over an
//! earlier part of the log for a projection far behind, or has lost its consumer.

use super::progress::{CloseOnDrop, Progress};
use super::retries::RecentRequests;
use crate::model::DecisionState;
use crate::store::log::message::LogMessage;
use crate::store::log::shared::SharedLog;
use crate::store::log::LogReader;
use async_nats::jetstream::stream;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Messages folded under one hold of the state's write lock.
const CHUNK: usize = 1024;

/// How long the tail may be handed nothing while the log is known to hold more before its read
/// is presumed lost (its consumer's node gone) and started again, or the shared read left.
/// Well below the ~2 s the reader's heartbeats take to tell, because writes wait on the tail.
const STALL: Duration = Duration::from_millis(500);

/// Spawns the task that folds the log `log` reads, after `state`'s last sequence, into
/// `state` and `recent` until `stop` is cancelled: from `log` itself up to `start_target`,
/// then with a reader of its own. `folded` advances to the last sequence folded after every
/// chunk (both hold everything up to it by then) and is closed when the tail ends. A stream
/// that cannot be read is tried again every 250 ms.
pub(super) fn spawn(
    log: SharedLog<LogMessage>,
    start_target: u64,
    state: Arc<RwLock<DecisionState>>,
    recent: Arc<Mutex<RecentRequests>>,
    folded: Arc<Progress>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let tail = Tail {
            state,
            recent,
            folded: CloseOnDrop(folded),
        };
        if tail
            .catch_up_shared(&log, start_target, &stop)
            .await
            .is_break()
        {
            return;
        }
        let events = log.stream().clone();
        drop(log);
        tail.follow_alone(events, &stop).await;
    });
}

/// What the tail folds into, and how far it has.
struct Tail {
    state: Arc<RwLock<DecisionState>>,
    recent: Arc<Mutex<RecentRequests>>,
    folded: CloseOnDrop,
}

impl Tail {
    /// The next sequence to fold.
    fn next_seq(&self) -> u64 {
        self.state.read().expect("decision state lock").last_seq + 1
    }

    /// Folds `messages` (the next ones of the log, in order) and advances the progress.
    fn fold(&self, messages: &[LogMessage]) {
        // Both under the state's lock (state first, then requests, as a snapshot takes
        // them), so a snapshot sees them at the same sequence.
        let seq = {
            let mut state = self.state.write().expect("decision state lock");
            let mut recent = self.recent.lock().expect("recent requests lock");
            for message in messages {
                fold_message(&mut state, &mut recent, message);
            }
            state.last_seq
        };
        self.folded.0.advance(seq);
    }

    /// Folds from the shared read until `target` is folded, or until the read hands nothing
    /// for [`STALL`]. `Break` when `stop` is cancelled.
    async fn catch_up_shared(
        &self,
        log: &SharedLog<LogMessage>,
        target: u64,
        stop: &CancellationToken,
    ) -> ControlFlow<()> {
        let from = self.next_seq();
        if from > target {
            return ControlFlow::Continue(());
        }
        let mut shared = log.subscribe(from);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return ControlFlow::Break(()),
                chunk = shared.next() => {
                    self.fold(&chunk.items);
                    if self.folded.0.reached() >= target {
                        return ControlFlow::Continue(());
                    }
                }
                _ = tokio::time::sleep(STALL) => {
                    tracing::info!(folded = self.folded.0.reached(), target, "the shared read of the log hands the decision state nothing; it reads on its own");
                    return ControlFlow::Continue(());
                }
            }
        }
    }

    /// Folds with a reader of its own until `stop` is cancelled, starting the read again when
    /// the log is known to hold more than it delivers for [`STALL`].
    async fn follow_alone(&self, events: stream::Stream, stop: &CancellationToken) {
        let mut reader = LogReader::new(events, self.next_seq(), LogMessage::decode, CHUNK);
        let mut restarted_at = None;
        // Since when the log has been known to hold more than the tail delivered, with no
        // delivery since; checked every half STALL (one timer for the tail's life).
        let mut behind_since = None;
        let mut check = tokio::time::interval(STALL / 2);
        loop {
            let chunk = tokio::select! {
                _ = stop.cancelled() => return,
                chunk = reader.next_chunk() => chunk,
                _ = check.tick() => {
                    if !stalled(&self.folded.0, &mut behind_since) {
                        continue;
                    }
                    behind_since = None;
                    let at = self.folded.0.reached();
                    // Once per position: while the stream has no leader it repeats.
                    if restarted_at.replace(at) != Some(at) {
                        tracing::info!(folded = at, "the log holds more than the tail delivers; reading it again");
                    }
                    reader.restart();
                    continue;
                }
            };
            behind_since = None;
            match chunk {
                Ok(chunk) => self.fold(&chunk.items),
                Err(error) => {
                    tracing::warn!(%error, "decision state tail cannot read the log; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            }
        }
    }
}

/// Folds one message of the log, the next in order, into the state and the requests it
/// remembers.
fn fold_message(state: &mut DecisionState, recent: &mut RecentRequests, message: &LogMessage) {
    if let Some(request) = &message.request {
        recent.record(
            &request.key,
            &request.fingerprint,
            message.seq,
            message.time,
        );
    }
    state.apply_decoded(&message.decoded);
}

/// Whether the log has been known to hold more than `folded` for [`STALL`] by now, given since
/// when it has (`behind_since`, updated here: started when first seen behind, cleared when
/// level).
fn stalled(folded: &Progress, behind_since: &mut Option<tokio::time::Instant>) -> bool {
    if !folded.behind() {
        *behind_since = None;
        return false;
    }
    behind_since
        .get_or_insert_with(tokio::time::Instant::now)
        .elapsed()
        >= STALL
}

#[cfg(test)]
mod tests;

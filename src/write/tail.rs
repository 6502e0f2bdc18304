//! The decision state's tail: every instance folds the log into memory, in order, with the
//! shared log reader, from where its state starts (a snapshot's sequence, or the beginning).

use super::progress::{CloseOnDrop, Progress};
use super::retries::RecentRequests;
use crate::contract::{MSG_ID_HEADER, REQUEST_FINGERPRINT_HEADER};
use crate::model::{DecisionState, Decoded};
use crate::store::log::LogReader;
use async_nats::jetstream::{self, stream};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Messages folded under one hold of the state's write lock.
const CHUNK: usize = 1024;

/// How long the tail may deliver nothing while the log is known to hold more before its read
/// is presumed lost (its consumer's node gone) and started again. Well below the ~2 s the
/// reader's heartbeats take to tell, because writes wait on the tail.
const STALL: Duration = Duration::from_millis(500);

/// A log message as the write side folds it.
struct Folded {
    decoded: Decoded,
    seq: u64,
    time: i64,
    /// The idempotency key and request fingerprint it was appended under, if a caller gave one.
    request: Option<(String, String)>,
}

fn decode(seq: u64, time: i64, message: &jetstream::Message) -> Option<Folded> {
    let request = message.headers.as_ref().and_then(|headers| {
        let key = headers.get(MSG_ID_HEADER)?.as_str();
        let fingerprint = headers.get(REQUEST_FINGERPRINT_HEADER)?.as_str();
        Some((key.to_string(), fingerprint.to_string()))
    });
    Some(Folded {
        decoded: Decoded::from_parts(seq, time, &message.subject, &message.payload),
        seq,
        time,
        request,
    })
}

/// Spawns the task that folds `events` after `state`'s last sequence into `state` and `recent` until
/// `stop` is cancelled; `folded` advances to the last sequence folded after every chunk (both
/// hold everything up to it by then) and is closed when the tail ends. A stream that cannot be read is tried again every
/// 250 ms.
pub(super) fn spawn(
    events: stream::Stream,
    state: Arc<RwLock<DecisionState>>,
    recent: Arc<Mutex<RecentRequests>>,
    folded: Arc<Progress>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let folded = CloseOnDrop(folded);
        let from = state.read().expect("decision state lock").last_seq + 1;
        let mut reader = LogReader::new(events, from, decode, CHUNK);
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
                    if !stalled(&folded.0, &mut behind_since) {
                        continue;
                    }
                    behind_since = None;
                    let at = folded.0.reached();
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
                Ok(chunk) => {
                    // Both under the state's lock (state first, then requests, as a snapshot
                    // takes them), so a snapshot sees them at the same sequence.
                    let seq = {
                        let mut state = state.write().expect("decision state lock");
                        let mut recent = recent.lock().expect("recent requests lock");
                        for message in &chunk.items {
                            if let Some((key, fingerprint)) = &message.request {
                                recent.record(key, fingerprint, message.seq, message.time);
                            }
                            state.apply_decoded(&message.decoded);
                        }
                        state.last_seq
                    };
                    folded.0.advance(seq);
                }
                Err(error) => {
                    tracing::warn!(%error, "decision state tail cannot read the log; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            }
        }
    });
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

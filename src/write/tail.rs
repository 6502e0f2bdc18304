//! The decision state's tail: every instance folds the whole log into memory, in order, with
//! the shared log reader.

use crate::model::DecisionState;
use crate::store::log::{decode_event, LogReader};
use async_nats::jetstream::stream;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Messages folded under one hold of the state's write lock.
const CHUNK: usize = 1024;

/// Spawns the task that folds `events` from its first message into `state` until `stop` is
/// cancelled; `folded` receives the last sequence folded after every chunk. A stream that
/// cannot be read is tried again every 250 ms.
pub(super) fn spawn(
    events: stream::Stream,
    state: Arc<RwLock<DecisionState>>,
    folded: watch::Sender<u64>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut reader = LogReader::new(events, 1, decode_event, CHUNK);
        loop {
            let chunk = tokio::select! {
                _ = stop.cancelled() => return,
                chunk = reader.next_chunk() => chunk,
            };
            match chunk {
                Ok(chunk) => {
                    let seq = {
                        let mut state = state.write().expect("decision state lock");
                        for message in &chunk.items {
                            state.apply_decoded(message);
                        }
                        state.last_seq
                    };
                    folded.send_replace(seq);
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

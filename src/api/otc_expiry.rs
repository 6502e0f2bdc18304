//! Counting one-time codes that expire unclaimed.
//!
//! The server expires codes on its own (the bucket's max age), so nothing happens in the
//! service when one runs out. Each instance remembers the codes it issued until just after
//! their expiry and then looks once: a code whose last entry is the claim's delete was
//! claimed (by any instance); a code that is gone altogether expired. Memory holds only the
//! codes issued within one TTL; codes issued before a restart are not counted.

use async_nats::jetstream::kv;
use prometheus_client::metrics::counter::Counter;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long after its TTL a code is looked at (the server expires on a timer of its own).
const MARGIN: Duration = Duration::from_secs(1);
/// Looks at a code still present after its TTL before giving up on it.
const LOOKS: u8 = 5;

/// Remembers issued codes; cheap to clone.
#[derive(Clone)]
pub struct CodeExpiry {
    issued: mpsc::UnboundedSender<String>,
}

impl CodeExpiry {
    /// Starts the watcher of codes issued through [`CodeExpiry::issued`], which live `ttl` in
    /// `codes`; expired ones are counted in `expired`. Ends when `stop` is cancelled.
    pub fn start(
        codes: kv::Store,
        ttl: Duration,
        expired: Counter,
        stop: CancellationToken,
    ) -> CodeExpiry {
        let (issued, received) = mpsc::unbounded_channel();
        tokio::spawn(watch(codes, ttl, expired, received, stop));
        CodeExpiry { issued }
    }

    /// A code was stored just now.
    pub fn issued(&self, code: String) {
        let _ = self.issued.send(code);
    }
}

async fn watch(
    codes: kv::Store,
    ttl: Duration,
    expired: Counter,
    mut received: mpsc::UnboundedReceiver<String>,
    stop: CancellationToken,
) {
    // Deadlines grow with issue time (one TTL for all), so the queue stays ordered.
    let mut pending: VecDeque<(Instant, String, u8)> = VecDeque::new();
    loop {
        let next = pending.front().map(|(at, _, _)| *at);
        tokio::select! {
            _ = stop.cancelled() => return,
            code = received.recv() => match code {
                Some(code) => pending.push_back((Instant::now() + ttl + MARGIN, code, 0)),
                None => return,
            },
            _ = sleep_until(next), if next.is_some() => {
                let (_, code, looks) = pending.pop_front().expect("guarded");
                match codes.entry(&code).await {
                    Ok(None) => {
                        expired.inc();
                    }
                    Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                        if looks + 1 < LOOKS {
                            // Retried after the others due now; order is kept closely enough.
                            pending.push_back((Instant::now() + MARGIN, code, looks + 1));
                        }
                    }
                    Ok(Some(_)) => {} // claimed
                    Err(error) => tracing::debug!(%error, "looking at an issued code"),
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

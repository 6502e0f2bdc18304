//! Counting one-time codes that expire unclaimed.
//!
//! A code stops being claimable at its deadline and the server removes it on its own (the
//! bucket's max age), so nothing happens in the service when one runs out. Each instance
//! remembers the codes it issued until just after their deadline and looks at them in the
//! bucket (see [`watch`]): a claim, by any instance, leaves a delete marker; a code still
//! there, or gone without a marker, expired. Memory holds only the codes issued within one
//! TTL; codes issued before a restart are not counted. The TTL must exceed about 1.4 s (the
//! look after it comes 1 s late).

use crate::store::kv as store_kv;
use async_nats::jetstream::kv;
use prometheus_client::metrics::counter::Counter;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long after its deadline a code is looked at (claims in flight at the deadline finish).
const MARGIN: Duration = Duration::from_secs(1);

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
    // A claim leaves a delete marker that itself ages out one TTL after the claim, so a code
    // claimed soon after issue looks, past its TTL, just like one that expired. Hence two
    // looks: shortly before the TTL (a claimed code shows its delete marker; it is done with),
    // and just after it (a code still unclaimed at the first look and gone now expired, since a
    // claim between the looks leaves a marker that outlives the second look).
    let early = (ttl / 4).min(Duration::from_secs(5));
    let mut pending: BinaryHeap<Reverse<(Instant, Look, String)>> = BinaryHeap::new();
    loop {
        let next = pending.peek().map(|Reverse((at, _, _))| *at);
        tokio::select! {
            _ = stop.cancelled() => return,
            code = received.recv() => match code {
                Some(code) => pending.push(Reverse((Instant::now() + ttl - early, Look::BeforeTtl, code))),
                None => return,
            },
            _ = sleep_until(next), if next.is_some() => {
                let Reverse((_, look, code)) = pending.pop().expect("guarded");
                let entry = match store_kv::load::<serde::de::IgnoredAny>(&codes, &code).await {
                    Ok(entry) => entry,
                    Err(error) => {
                        tracing::debug!(%error, "looking at an issued code");
                        continue;
                    }
                };
                let unclaimed = entry.value.is_some();
                let vanished = entry.revision.is_none();
                match look {
                    Look::BeforeTtl if unclaimed => pending.push(Reverse((
                        Instant::now() + early + MARGIN,
                        Look::AfterTtl,
                        code,
                    ))),
                    // Past its deadline a code still there cannot be claimed any more.
                    Look::AfterTtl if unclaimed || vanished => {
                        expired.inc();
                    }
                    _ => {} // claimed
                }
            }
        }
    }
}

/// Which look at a code is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Look {
    BeforeTtl,
    AfterTtl,
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

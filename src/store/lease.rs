//! Single-active work: a lease in a KV bucket, at most one holder at a time per key, renewed by
//! its holder and taken over by another instance once it expires; and [`lead`], the one loop
//! that runs work while this instance holds a lease.
//!
//! Every change is a compare-and-set on the key's revision, so two instances cannot both
//! acquire it, and a holder whose renewal fails (someone else took the key) knows at once that
//! it lost the lease. Expiry compares wall clocks of instances; keep the TTL well above any
//! clock skew.

use super::error::StoreError;
use super::kv;
use async_nats::jetstream::kv::Store as Bucket;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// What the lease key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Who holds it.
    pub owner: String,
    /// Unix milliseconds after which anyone may take it.
    pub expires_ms: u64,
}

/// This process's name: host and process id.
pub fn instance_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        format!("{host}/{}", std::process::id())
    })
    .clone()
}

/// A name for one lease holder: the process plus a random suffix, so two service instances in
/// one process (tests, benchmarks) never mistake each other's lease for their own.
pub fn holder_id() -> String {
    use rand::Rng;
    let suffix: u32 = rand::thread_rng().gen();
    format!("{}#{suffix:08x}", instance_id())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// One instance's handle on a lease key.
pub struct Lease {
    bucket: Bucket,
    key: String,
    ttl: Duration,
    revision: Option<u64>,
    held: Held,
}

/// What work done under a lease sees of it: whether it is still held and when it was lost.
/// Cheap to clone.
#[derive(Clone)]
pub struct Held {
    owner: Arc<str>,
    until: Arc<Mutex<Option<Instant>>>,
    lost: CancellationToken,
}

impl Held {
    /// The name the lease is held under.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Whether the lease is held by this instance's clock: the last renewal has not run out.
    /// Check it before every write made under the lease.
    pub fn is_held(&self) -> bool {
        self.until
            .lock()
            .expect("lease lock")
            .is_some_and(|until| Instant::now() < until)
    }

    /// Completes once a renewal found that another instance took the lease.
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }

    fn set_until(&self, until: Option<Instant>) {
        *self.until.lock().expect("lease lock") = until;
    }
}

impl Lease {
    /// A handle for `owner` on `key`; nothing is written yet.
    pub fn new(bucket: Bucket, key: String, owner: String, ttl: Duration) -> Lease {
        Lease {
            bucket,
            key,
            ttl,
            revision: None,
            held: Held {
                owner: owner.into(),
                until: Arc::default(),
                lost: CancellationToken::new(),
            },
        }
    }

    /// The name this handle holds the lease under.
    pub fn owner(&self) -> &str {
        self.held.owner()
    }

    /// Takes the lease when it is free, expired, or already ours. Returns whether we hold it.
    pub async fn try_acquire(&mut self) -> Result<bool, StoreError> {
        let current = match kv::load::<LeaseRecord>(&self.bucket, &self.key).await {
            Ok(current) => current,
            // A record that does not decode holds nobody's lease.
            Err(error) if error.kind() == super::StoreErrorKind::Permanent => {
                kv::Versioned::default()
            }
            Err(error) => return Err(error),
        };
        let free = current
            .value
            .as_ref()
            .is_none_or(|record| record.owner == self.owner() || record.expires_ms < now_ms());
        if !free {
            self.held.set_until(None);
            return Ok(false);
        }
        self.revision = current.revision;
        Ok(self.write().await)
    }

    /// Extends the lease; `false` means another instance took it, or it could not be written
    /// (stop acting at once).
    pub async fn renew(&mut self) -> bool {
        self.revision.is_some() && self.write().await
    }

    /// Gives the lease up, if still ours.
    pub async fn release(&mut self) {
        if let Some(revision) = self.revision.take() {
            let _ = kv::write_bytes(&self.bucket, &self.key, None, Some(revision)).await;
        }
        self.held.set_until(None);
    }

    /// Takes the lease whoever holds it (for an operator's rebuild). The previous holder
    /// notices at its next renewal.
    pub async fn seize(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        self.held.set_until(Some(started + self.ttl));
        self.revision = Some(kv::put(&self.bucket, &self.key, kv::encode(&self.record())).await?);
        Ok(())
    }

    fn record(&self) -> LeaseRecord {
        LeaseRecord {
            owner: self.owner().to_string(),
            expires_ms: now_ms() + self.ttl.as_millis() as u64,
        }
    }

    /// Writes the lease at the revision last seen; whether it is ours now.
    async fn write(&mut self) -> bool {
        let started = Instant::now();
        let bytes = kv::encode(&self.record());
        match kv::write_bytes(&self.bucket, &self.key, Some(bytes), self.revision).await {
            Ok(revision) => {
                self.revision = revision;
                self.held.set_until(Some(started + self.ttl));
                true
            }
            Err(_) => {
                self.revision = None;
                self.held.set_until(None);
                false
            }
        }
    }
}

/// Reads who holds lease `key` (and until when), if anyone.
pub async fn holder(bucket: &Bucket, key: &str) -> Option<LeaseRecord> {
    kv::load::<LeaseRecord>(bucket, key)
        .await
        .ok()?
        .value
        .filter(|r| r.expires_ms >= now_ms())
}

/// Runs `work` whenever this instance holds `lease`, until `shutdown` is cancelled.
///
/// It tries to acquire the lease every quarter of its TTL; once it holds it, it starts `work`
/// and renews the lease at the same pace while the work runs. A renewal that finds the lease
/// taken tells the work through [`Held::lost`]. The work is never dropped mid-way: it must
/// return promptly once the lease is lost or `shutdown` is cancelled (finishing what it has
/// in hand). When the work fails, the error is logged, the lease released and the work started
/// again once the lease is held again; after `shutdown`, the lease is released so another
/// instance takes over at once.
pub async fn lead<W, F, E>(
    mut lease: Lease,
    what: &'static str,
    shutdown: CancellationToken,
    mut work: W,
) where
    W: FnMut(Held) -> F,
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let tick = lease.ttl / 4;
    loop {
        match lease.try_acquire().await {
            Ok(true) => {
                tracing::info!(lease = what, "holding the lease");
                // A fresh token: a loss told to earlier work must not reach this one.
                lease.held.lost = CancellationToken::new();
                let held = lease.held.clone();
                let result = hold(&mut lease, tick, work(held)).await;
                if shutdown.is_cancelled() {
                    lease.release().await;
                    return;
                }
                if let Err(error) = result {
                    tracing::warn!(lease = what, %error, "work under the lease failed; restarting");
                    lease.release().await;
                }
            }
            Ok(false) => {}
            Err(error) => tracing::debug!(lease = what, %error, "lease check failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

/// Polls `work` to its end, renewing `lease` every `tick` meanwhile.
async fn hold<F: Future>(lease: &mut Lease, tick: Duration, work: F) -> F::Output {
    tokio::pin!(work);
    let mut renew = tokio::time::interval(tick);
    renew.tick().await;
    let mut lost = false;
    loop {
        tokio::select! {
            biased;
            result = &mut work => return result,
            _ = renew.tick(), if !lost => {
                if !lease.renew().await {
                    tracing::warn!(lease = %lease.key, "lost the lease; standing by");
                    lost = true;
                    lease.held.lost.cancel();
                }
            }
        }
    }
}

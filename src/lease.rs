//! A lease in a KV bucket: at most one holder at a time per key, renewed by its holder, taken
//! over by another instance once it expires.
//!
//! Every change is a compare-and-set on the key's revision, so two instances cannot both
//! acquire it, and a holder whose renewal fails (someone else took the key) knows at once that
//! it lost the lease. Expiry compares wall clocks of instances; keep the TTL well above any
//! clock skew.

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the lease key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Who holds it.
    pub owner: String,
    /// Unix milliseconds after which anyone may take it.
    pub expires_ms: u64,
}

/// One instance's handle on a lease key.
pub struct Lease {
    bucket: kv::Store,
    key: String,
    owner: String,
    ttl: Duration,
    revision: Option<u64>,
    held_until: Option<std::time::Instant>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Lease {
    /// A handle for `owner` on `key`; nothing is written yet.
    pub fn new(bucket: kv::Store, key: String, owner: String, ttl: Duration) -> Lease {
        Lease {
            bucket,
            key,
            owner,
            ttl,
            revision: None,
            held_until: None,
        }
    }

    /// The name this handle acquires the lease under.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Whether this handle holds the lease by its own clock (a renewal is due before then).
    pub fn is_held(&self) -> bool {
        self.held_until
            .is_some_and(|until| std::time::Instant::now() < until)
    }

    /// Takes the lease when it is free, expired, or already ours. Returns whether we hold it.
    pub async fn try_acquire(&mut self) -> Result<bool, String> {
        let entry = self
            .bucket
            .entry(&self.key)
            .await
            .map_err(|e| format!("read lease {}: {e}", self.key))?;
        let (current, revision) = match entry {
            Some(entry) if entry.operation == kv::Operation::Put => (
                serde_json::from_slice::<LeaseRecord>(&entry.value).ok(),
                Some(entry.revision),
            ),
            Some(entry) => (None, Some(entry.revision)),
            None => (None, None),
        };
        let free = match &current {
            None => true,
            Some(record) => record.owner == self.owner || record.expires_ms < now_ms(),
        };
        if !free {
            self.held_until = None;
            return Ok(false);
        }
        self.revision = revision;
        self.write().await
    }

    /// Extends the lease; `false` means another instance took it (stop acting at once).
    pub async fn renew(&mut self) -> Result<bool, String> {
        if self.revision.is_none() {
            return Ok(false);
        }
        self.write().await
    }

    /// Gives the lease up, if still ours.
    pub async fn release(&mut self) {
        if let Some(revision) = self.revision.take() {
            let _ = self
                .bucket
                .delete_expect_revision(&self.key, Some(revision))
                .await;
        }
        self.held_until = None;
    }

    /// Takes the lease whoever holds it (for an operator's rebuild). The previous holder
    /// notices at its next renewal.
    pub async fn seize(&mut self) -> Result<(), String> {
        let started = std::time::Instant::now();
        self.held_until = Some(started + self.ttl);
        let record = LeaseRecord {
            owner: self.owner.clone(),
            expires_ms: now_ms() + self.ttl.as_millis() as u64,
        };
        let bytes = Bytes::from(serde_json::to_vec(&record).map_err(|e| e.to_string())?);
        self.revision = Some(
            self.bucket
                .put(&self.key, bytes)
                .await
                .map_err(|e| format!("write lease {}: {e}", self.key))?,
        );
        Ok(())
    }

    async fn write(&mut self) -> Result<bool, String> {
        let started = std::time::Instant::now();
        let record = LeaseRecord {
            owner: self.owner.clone(),
            expires_ms: now_ms() + self.ttl.as_millis() as u64,
        };
        let bytes = Bytes::from(serde_json::to_vec(&record).map_err(|e| e.to_string())?);
        let written = match self.revision {
            Some(revision) => self.bucket.update(&self.key, bytes, revision).await.ok(),
            None => self.bucket.create(&self.key, bytes).await.ok(),
        };
        match written {
            Some(revision) => {
                self.revision = Some(revision);
                self.held_until = Some(started + self.ttl);
                Ok(true)
            }
            None => {
                self.revision = None;
                self.held_until = None;
                Ok(false)
            }
        }
    }
}

/// Reads who holds lease `key` (and until when), if anyone.
pub async fn holder(bucket: &kv::Store, key: &str) -> Option<LeaseRecord> {
    let entry = bucket.entry(key).await.ok()??;
    if entry.operation != kv::Operation::Put {
        return None;
    }
    serde_json::from_slice::<LeaseRecord>(&entry.value)
        .ok()
        .filter(|r| r.expires_ms >= now_ms())
}

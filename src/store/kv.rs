//! The one compare-and-set layer over KV buckets: JSON records read with their revision,
//! writes and deletes that succeed only at the revision read, atomic creates, and failures by
//! kind ([`StoreError`]).
//!
//! Every writer of shared state goes through here: projection records, counters, checkpoints,
//! leases, name claims and one-time codes.

use super::error::StoreError;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use serde::{de::DeserializeOwned, Serialize};

mod grouped;
mod many;
pub use grouped::{create_all, replace_all};
pub use many::load_many;

/// A record as read, with the revision a compare-and-set write must name.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The record; `None` when the key holds nothing (never written, or deleted).
    pub value: Option<T>,
    /// The key's revision; `None` when it was never written (a write then creates it).
    pub revision: Option<u64>,
}

impl<T> Default for Versioned<T> {
    fn default() -> Self {
        Versioned {
            value: None,
            revision: None,
        }
    }
}

/// Whether `key` is one a KV bucket holds: the rule async-nats applies to every KV operation
/// (letters, digits and `-/_=.`, not starting or ending with a dot).
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
}

/// Reads the JSON record at `key` and its revision. A stored value that does not decode is a
/// permanent error.
pub async fn load<T: DeserializeOwned>(
    bucket: &kv::Store,
    key: &str,
) -> Result<Versioned<T>, StoreError> {
    let entry = bucket
        .entry(key)
        .await
        .map_err(|e| StoreError::kv_entry(&bucket.name, &e))?;
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => Ok(Versioned {
            value: Some(decode(&bucket.name, &entry.value)?),
            revision: Some(entry.revision),
        }),
        Some(entry) => Ok(Versioned {
            value: None,
            revision: Some(entry.revision),
        }),
        None => Ok(Versioned::default()),
    }
}

/// Reads the JSON record at `key` from the bucket's leader (`None` when absent or deleted).
///
/// A plain read ([`load`]) is a direct get, which any replica of a replicated bucket may
/// answer, lagging or not; this one never returns a value older than a write the bucket
/// acknowledged before the read started. For reads that promise read-your-writes
/// (`Natster-Min-Seq`); it costs the leader a request and cannot be spread over replicas.
pub async fn load_current<T: DeserializeOwned>(
    bucket: &kv::Store,
    key: &str,
) -> Result<Option<T>, StoreError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    if !is_valid_key(key) {
        return Err(StoreError::new(
            super::error::StoreErrorKind::Permanent,
            format!("read in {}", bucket.name),
            "not a valid key",
        ));
    }
    let subject = format!("{}{key}", bucket.prefix);
    let message = match bucket
        .stream
        .get_last_raw_message_by_subject(&subject)
        .await
    {
        Ok(message) => message,
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(error) => {
            return Err(StoreError::unavailable(
                format!("read in {} from its leader", bucket.name),
                error,
            ))
        }
    };
    match operation(Some(&message.headers)) {
        kv::Operation::Put => decode(&bucket.name, &message.payload).map(Some),
        kv::Operation::Delete | kv::Operation::Purge => Ok(None),
    }
}

/// The KV operation a message of a bucket's stream records (its `KV-Operation` header; a put
/// when it has none).
pub fn operation(headers: Option<&async_nats::HeaderMap>) -> kv::Operation {
    match headers
        .and_then(|h| h.get("KV-Operation"))
        .map(|v| v.as_str())
    {
        Some("DEL") => kv::Operation::Delete,
        Some("PURGE") => kv::Operation::Purge,
        _ => kv::Operation::Put,
    }
}

/// Reads the raw value at `key` and its revision.
pub async fn load_bytes(bucket: &kv::Store, key: &str) -> Result<Versioned<Bytes>, StoreError> {
    let entry = bucket
        .entry(key)
        .await
        .map_err(|e| StoreError::kv_entry(&bucket.name, &e))?;
    Ok(match entry {
        Some(entry) => Versioned {
            revision: Some(entry.revision),
            value: (entry.operation == kv::Operation::Put).then_some(entry.value),
        },
        None => Versioned::default(),
    })
}

/// Decodes a stored JSON record of bucket `bucket`.
pub fn decode<T: DeserializeOwned>(bucket: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::undecodable(format!("a record in {bucket} does not decode"), e))
}

/// The JSON bytes of a record.
pub fn encode<T: Serialize>(record: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(record).expect("records serialize to JSON"))
}

/// Writes `record` at `key` (deletes it for `None`) only if the key is still at `revision`
/// (`None`: only if it was never written); returns the new revision (`None` after a delete).
/// A revision that moved is a conflict.
pub async fn write<T: Serialize>(
    bucket: &kv::Store,
    key: &str,
    record: Option<&T>,
    revision: Option<u64>,
) -> Result<Option<u64>, StoreError> {
    write_bytes(bucket, key, record.map(encode), revision).await
}

/// [`write`] of a record already serialized.
pub async fn write_bytes(
    bucket: &kv::Store,
    key: &str,
    bytes: Option<Bytes>,
    revision: Option<u64>,
) -> Result<Option<u64>, StoreError> {
    match (bytes, revision) {
        (None, None) => Ok(None),
        (None, Some(revision)) => bucket
            .delete_expect_revision(key, Some(revision))
            .await
            .map(|_| None)
            .map_err(|e| StoreError::kv_delete(&bucket.name, &e)),
        (Some(bytes), Some(revision)) => bucket
            .update(key, bytes, revision)
            .await
            .map(Some)
            .map_err(|e| StoreError::kv_update(&bucket.name, &e)),
        (Some(bytes), None) => create(bucket, key, bytes).await.map(Some),
    }
}

/// Creates `key` with `bytes` only if it holds no value; returns its revision. An existing
/// value is a conflict, so of two racing creators exactly one succeeds.
pub async fn create(bucket: &kv::Store, key: &str, bytes: Bytes) -> Result<u64, StoreError> {
    bucket
        .create(key, bytes)
        .await
        .map_err(|e| StoreError::kv_create(&bucket.name, &e))
}

/// Writes `bytes` at `key` whatever it holds (rebuilds, progress records, seized leases).
pub async fn put(bucket: &kv::Store, key: &str, bytes: Bytes) -> Result<u64, StoreError> {
    bucket
        .put(key, bytes)
        .await
        .map_err(|e| StoreError::kv_put(&bucket.name, &e))
}

/// Deletes `key` whatever it holds.
pub async fn delete(bucket: &kv::Store, key: &str) -> Result<(), StoreError> {
    bucket
        .delete(key)
        .await
        .map_err(|e| StoreError::kv_delete(&bucket.name, &e))
}

/// The raw value at `key`, if any.
pub async fn get(bucket: &kv::Store, key: &str) -> Result<Option<Bytes>, StoreError> {
    bucket
        .get(key)
        .await
        .map_err(|e| StoreError::kv_entry(&bucket.name, &e))
}

/// Every key the bucket holds a value for.
pub async fn keys(bucket: &kv::Store) -> Result<Vec<String>, StoreError> {
    let action = || format!("list the keys of {}", bucket.name);
    let mut keys = bucket
        .keys()
        .await
        .map_err(|e| StoreError::unavailable(action(), e))?;
    let mut all = Vec::new();
    while let Some(key) = keys.next().await {
        all.push(key.map_err(|e| StoreError::unavailable(action(), e))?);
    }
    Ok(all)
}

/// Longest wait for the next entry while reading a whole bucket.
const SCAN_STALL: std::time::Duration = std::time::Duration::from_secs(10);

/// One key of a bucket as it stands: its latest value (`None`: deleted) and revision.
pub struct Entry {
    pub key: String,
    pub value: Option<Bytes>,
    pub revision: u64,
}

/// Hands every key of `bucket` as it stands to `each`, in one ordered pass (the bucket's
/// latest message per key); returns the bucket's size in bytes as the pass began. With
/// `max_bytes`, a bucket larger than that is not read (`each` is never called).
pub async fn scan(
    bucket: &kv::Store,
    max_bytes: Option<u64>,
    mut each: impl FnMut(Entry),
) -> Result<u64, StoreError> {
    let action = || format!("read {} whole", bucket.name);
    // Fresh stream info: `kv::Store::status` returns what was cached when the handle was made.
    let state = bucket
        .stream
        .clone()
        .info()
        .await
        .map_err(|e| StoreError::unavailable(action(), e))?
        .state
        .clone();
    if state.messages == 0 || max_bytes.is_some_and(|max| state.bytes > max) {
        return Ok(state.bytes);
    }
    let mut entries = bucket
        .watch_with_history(">")
        .await
        .map_err(|e| StoreError::unavailable(action(), e))?;
    loop {
        let entry = tokio::time::timeout(SCAN_STALL, entries.next())
            .await
            .map_err(|_| StoreError::unavailable(action(), "no entry within the stall timeout"))?
            .ok_or_else(|| StoreError::unavailable(action(), "the bucket reader ended"))?
            .map_err(|e| StoreError::unavailable(action(), e))?;
        let last = entry.delta == 0;
        each(Entry {
            value: matches!(entry.operation, kv::Operation::Put).then_some(entry.value),
            key: entry.key,
            revision: entry.revision,
        });
        if last {
            return Ok(state.bytes);
        }
    }
}

#[cfg(test)]
mod tests;

//! Many keys of a bucket read in a few round trips: JetStream's batched direct get
//! (`multi_last`, nats-server 2.11+), which answers one request with the last message of each
//! subject asked for, then an end-of-batch status.
//!
//! Contract: the same as [`super::load_bytes`] per key (a value and its revision; a deleted
//! key has a revision and no value; a key never written has neither), read from whichever
//! replica answers the direct get. Keys are read in chunks of [`KEYS_PER_READ`], `concurrency`
//! chunks at once; the order of the result is not the order of `keys`. A reply the server cut
//! short (its byte budget for one reply) is completed key by key.

use super::{load_bytes, Versioned};
use crate::store::error::StoreError;
use async_nats::jetstream::kv;
use async_nats::{Client, HeaderMap, StatusCode};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::time::Duration;

/// Keys asked for in one request (the server answers at most 1 024 subjects per request; a
/// smaller chunk keeps each reply well inside its byte budget and spreads a read over
/// concurrent requests).
pub const KEYS_PER_READ: usize = 256;

/// Longest wait for the next message of a reply.
const REPLY_STALL: Duration = Duration::from_secs(5);

/// The end-of-batch status that closes a batched direct get.
const END_OF_BATCH: u16 = 204;

/// Reads the raw value and revision of every key in `keys` (each a valid key), `concurrency`
/// requests at once.
pub async fn load_many(
    client: &Client,
    bucket: &kv::Store,
    keys: impl IntoIterator<Item = String>,
    concurrency: usize,
) -> Result<Vec<(String, Versioned<Bytes>)>, StoreError> {
    let read: Vec<Vec<(String, Versioned<Bytes>)>> = futures::stream::iter(keys)
        .chunks(KEYS_PER_READ)
        .map(|chunk| read_chunk(client, bucket, chunk))
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    Ok(read.into_iter().flatten().collect())
}

/// What one batched reply said.
struct Reply {
    /// The keys it sent, by key.
    found: HashMap<String, Versioned<Bytes>>,
    /// Every matching subject was sent, so a key not found was never written; otherwise the
    /// server stopped early and such a key is unknown.
    complete: bool,
}

async fn read_chunk(
    client: &Client,
    bucket: &kv::Store,
    keys: Vec<String>,
) -> Result<Vec<(String, Versioned<Bytes>)>, StoreError> {
    let Reply {
        mut found,
        complete,
    } = ask(client, bucket, &keys).await?;
    let mut read = Vec::with_capacity(keys.len());
    for key in keys {
        let value = match found.remove(&key) {
            Some(value) => value,
            None if complete => Versioned::default(),
            None => load_bytes(bucket, &key).await?,
        };
        read.push((key, value));
    }
    Ok(read)
}

/// One batched direct get of `keys` from `bucket`'s stream (the default JetStream API prefix,
/// as the service's JetStream context uses).
async fn ask(client: &Client, bucket: &kv::Store, keys: &[String]) -> Result<Reply, StoreError> {
    let action = || format!("read {} keys of {}", keys.len(), bucket.name);
    let subjects: Vec<String> = keys
        .iter()
        .map(|key| format!("{}{key}", bucket.prefix))
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({ "multi_last": subjects }))
        .expect("a list of subjects serializes");
    let inbox = client.new_inbox();
    // The subscription goes to the server before the request on the same connection, so the
    // server knows it before it answers.
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| StoreError::unavailable(action(), e))?;
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{}", bucket.stream_name),
            inbox,
            body.into(),
        )
        .await
        .map_err(|e| StoreError::unavailable(action(), e))?;
    let mut found = HashMap::with_capacity(keys.len());
    loop {
        let message = tokio::time::timeout(REPLY_STALL, replies.next())
            .await
            .map_err(|_| StoreError::unavailable(action(), "no reply within 5 s"))?
            .ok_or_else(|| StoreError::unavailable(action(), "the reply subscription ended"))?;
        match message.status {
            None | Some(StatusCode::OK) => {
                let (key, value) = entry(bucket, message.headers.as_ref(), message.payload)
                    .ok_or_else(|| {
                        StoreError::unavailable(action(), "a reply message without its subject")
                    })?;
                found.insert(key, value);
            }
            Some(status) if status.as_u16() == END_OF_BATCH => {
                let pending = header(message.headers.as_ref(), "Nats-Num-Pending");
                let complete = matches!(pending, None | Some("0"));
                return Ok(Reply { found, complete });
            }
            // No subject asked for has a message.
            Some(StatusCode::NOT_FOUND) if found.is_empty() => {
                return Ok(Reply {
                    found,
                    complete: true,
                });
            }
            Some(status) => {
                let detail = format!(
                    "status {status} {}",
                    message.description.unwrap_or_default()
                );
                return Err(StoreError::unavailable(action(), detail));
            }
        }
    }
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers.and_then(|h| h.get(name)).map(|v| v.as_str())
}

/// The key and its stored value from one message of a reply (the message's stream subject
/// and sequence are in its headers).
fn entry(
    bucket: &kv::Store,
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> Option<(String, Versioned<Bytes>)> {
    let subject = header(headers, "Nats-Subject")?;
    let key = subject.strip_prefix(bucket.prefix.as_str())?.to_string();
    let revision = header(headers, "Nats-Sequence")?.parse().ok()?;
    let value = match super::operation(headers) {
        kv::Operation::Put => Some(payload),
        kv::Operation::Delete | kv::Operation::Purge => None,
    };
    Some((
        key,
        Versioned {
            value,
            revision: Some(revision),
        },
    ))
}

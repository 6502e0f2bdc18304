//! Errors of the store primitives, by what they mean for the caller: a lost compare-and-set
//! (decide again), a value or key the server refuses for good (retrying cannot fix it), or a
//! server that cannot be asked right now (retry later).
//!
//! async-nats reports most failures as kinds; where it only passes the server's JetStream error
//! on, the error chain is walked for it. The one thing read from text is the actual last
//! sequence a wrong-last-sequence error names ([`last_sequence_named`]).

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::kv;
use async_nats::jetstream::ErrorCode;
use std::error::Error as _;

/// What a failed store operation means for its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// A compare-and-set lost: the key's revision or the subject's last sequence moved since
    /// it was read. Read again and decide again.
    Conflict,
    /// The server refuses this value or key and always will: larger than its `max_payload`, a
    /// key the bucket cannot hold, a stored record that does not decode. Retrying cannot fix it.
    Permanent,
    /// The server cannot be asked now: timeout, no responders, disconnected, no leader. Retry
    /// later.
    Unavailable,
}

/// A failed store operation. The text names the operation and the bucket or stream, never a
/// value or key (keys can be one-time codes).
#[derive(Debug, thiserror::Error)]
#[error("{action}: {detail}")]
pub struct StoreError {
    kind: StoreErrorKind,
    action: String,
    detail: String,
    /// The subject's actual last sequence, when a wrong-last-sequence conflict names it.
    actual_last_seq: Option<u64>,
}

impl StoreError {
    /// An error of `kind` while doing `action`.
    pub fn new(kind: StoreErrorKind, action: impl Into<String>, detail: impl ToString) -> Self {
        StoreError {
            kind,
            action: action.into(),
            detail: detail.to_string(),
            actual_last_seq: None,
        }
    }

    /// The server could not be asked (any failure of a read, info or consumer request).
    pub fn unavailable(action: impl Into<String>, detail: impl ToString) -> Self {
        Self::new(StoreErrorKind::Unavailable, action, detail)
    }

    /// A stored value that does not decode as its type.
    pub fn undecodable(action: impl Into<String>, detail: impl ToString) -> Self {
        Self::new(StoreErrorKind::Permanent, action, detail)
    }

    /// What the error means for the caller.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Whether a compare-and-set lost.
    pub fn is_conflict(&self) -> bool {
        self.kind == StoreErrorKind::Conflict
    }

    /// For a lost append: the sequence the aggregate has actually reached, if the server said.
    pub fn actual_last_seq(&self) -> Option<u64> {
        self.actual_last_seq
    }

    /// A JetStream publish (an append, or a KV write underneath).
    pub fn publish(action: impl Into<String>, error: &PublishError) -> Self {
        let kind = match error.kind() {
            PublishErrorKind::WrongLastSequence | PublishErrorKind::WrongLastMessageId => {
                StoreErrorKind::Conflict
            }
            PublishErrorKind::MaxPayloadExceeded => StoreErrorKind::Permanent,
            PublishErrorKind::Other if refused_for_good(error) => StoreErrorKind::Permanent,
            _ => StoreErrorKind::Unavailable,
        };
        let mut store_error = Self::new(kind, action, error);
        if kind == StoreErrorKind::Conflict {
            store_error.actual_last_seq = last_sequence_named(&error.to_string());
        }
        store_error
    }

    /// A KV compare-and-set update.
    pub fn kv_update(bucket: &str, error: &kv::UpdateError) -> Self {
        let kind = match error.kind() {
            kv::UpdateErrorKind::WrongLastRevision => StoreErrorKind::Conflict,
            kv::UpdateErrorKind::InvalidKey => StoreErrorKind::Permanent,
            kv::UpdateErrorKind::TimedOut => StoreErrorKind::Unavailable,
            kv::UpdateErrorKind::Other => refused_or_unavailable(error),
        };
        Self::new(kind, format!("update in {bucket}"), error)
    }

    /// A KV atomic create (fails when the key holds a value).
    pub fn kv_create(bucket: &str, error: &kv::CreateError) -> Self {
        let kind = match error.kind() {
            kv::CreateErrorKind::AlreadyExists => StoreErrorKind::Conflict,
            kv::CreateErrorKind::InvalidKey => StoreErrorKind::Permanent,
            _ => refused_or_unavailable(error),
        };
        Self::new(kind, format!("create in {bucket}"), error)
    }

    /// A KV put (unconditional).
    pub fn kv_put(bucket: &str, error: &kv::PutError) -> Self {
        let kind = match error.kind() {
            kv::PutErrorKind::InvalidKey => StoreErrorKind::Permanent,
            _ => refused_or_unavailable(error),
        };
        Self::new(kind, format!("put in {bucket}"), error)
    }

    /// A KV delete, with or without an expected revision.
    pub fn kv_delete(bucket: &str, error: &kv::DeleteError) -> Self {
        let kind = match error.kind() {
            kv::DeleteErrorKind::InvalidKey => StoreErrorKind::Permanent,
            _ if chain_has_publish_kind(error, PublishErrorKind::WrongLastSequence) => {
                StoreErrorKind::Conflict
            }
            _ => StoreErrorKind::Unavailable,
        };
        Self::new(kind, format!("delete in {bucket}"), error)
    }

    /// A KV read.
    pub fn kv_entry(bucket: &str, error: &kv::EntryError) -> Self {
        let kind = match error.kind() {
            kv::EntryErrorKind::InvalidKey => StoreErrorKind::Permanent,
            _ => StoreErrorKind::Unavailable,
        };
        Self::new(kind, format!("read in {bucket}"), error)
    }
}

/// Permanent when the error chain holds a publish the server (or the client, against the
/// server's `max_payload`) refuses for good; unavailable otherwise.
fn refused_or_unavailable(error: &(dyn std::error::Error + 'static)) -> StoreErrorKind {
    if chain_has_publish_kind(error, PublishErrorKind::MaxPayloadExceeded)
        || publish_in_chain(error).is_some_and(refused_for_good)
    {
        StoreErrorKind::Permanent
    } else if chain_has_publish_kind(error, PublishErrorKind::WrongLastSequence) {
        StoreErrorKind::Conflict
    } else {
        StoreErrorKind::Unavailable
    }
}

/// Whether a publish failed because the stream refuses the message itself (too large for the
/// stream, headers too large): the same message is refused every time.
fn refused_for_good(error: &PublishError) -> bool {
    error
        .source()
        .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|api| {
            matches!(
                api.error_code(),
                ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
                    | ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM
            )
        })
}

/// The first JetStream publish error in `error`'s chain (itself included).
fn publish_in_chain<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a PublishError> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(publish) = error.downcast_ref::<PublishError>() {
            return Some(publish);
        }
        current = error.source();
    }
    None
}

fn chain_has_publish_kind(
    error: &(dyn std::error::Error + 'static),
    kind: PublishErrorKind,
) -> bool {
    publish_in_chain(error).is_some_and(|publish| publish.kind() == kind)
}

/// The actual last sequence named by a wrong-last-sequence error ("wrong last sequence: 42
/// (code 400, error code 10071)" → 42); `None` when the text names none.
pub fn last_sequence_named(text: &str) -> Option<u64> {
    const MARKER: &str = "wrong last sequence: ";
    let at = text.rfind(MARKER)?;
    let digits: String = text[at + MARKER.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_from_conflict_errors() {
        assert_eq!(last_sequence_named("wrong last sequence: 42"), Some(42));
        assert_eq!(
            last_sequence_named(
                "wrong last sequence: wrong last sequence: 7 (code 400, error code 10071)"
            ),
            Some(7)
        );
        assert_eq!(last_sequence_named("nothing 12"), None);
    }

    #[test]
    fn kinds_follow_what_the_client_reports() {
        let too_large = PublishError::new(PublishErrorKind::MaxPayloadExceeded);
        assert_eq!(
            StoreError::publish("append", &too_large).kind(),
            StoreErrorKind::Permanent
        );
        let wrapped = kv::UpdateError::with_source(kv::UpdateErrorKind::Other, too_large);
        assert_eq!(
            StoreError::kv_update("B", &wrapped).kind(),
            StoreErrorKind::Permanent
        );
        let lost = kv::UpdateError::new(kv::UpdateErrorKind::WrongLastRevision);
        assert!(StoreError::kv_update("B", &lost).is_conflict());
        let timeout = PublishError::new(PublishErrorKind::TimedOut);
        assert_eq!(
            StoreError::publish("append", &timeout).kind(),
            StoreErrorKind::Unavailable
        );
        let exists = kv::CreateError::new(kv::CreateErrorKind::AlreadyExists);
        assert!(StoreError::kv_create("B", &exists).is_conflict());
        let bad_key = kv::CreateError::new(kv::CreateErrorKind::InvalidKey);
        assert_eq!(
            StoreError::kv_create("B", &bad_key).kind(),
            StoreErrorKind::Permanent
        );
    }
}

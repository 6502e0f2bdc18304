//! The two writes a decision makes: the catalog-name claim (an atomic create) and the guarded
//! append of its event.

use super::ExecuteError;
use crate::contract::{MSG_ID_HEADER, REQUEST_FINGERPRINT_HEADER};
use crate::model::{Decision, Rejection};
use crate::store::{kv, StoreError};
use async_nats::jetstream;
use sha2::{Digest, Sha256};

/// An appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Stream sequence of the event.
    pub seq: u64,
    /// The append was recognised as a retry of an earlier one (same `Nats-Msg-Id`).
    pub duplicate: bool,
}

/// Claims catalog `name` for `owner`: an atomic create, so of two accounts racing for an
/// unowned name exactly one succeeds. Returns the revision of a claim this call created; a
/// claim already held by `owner` (a retry, or a crash between claim and append) counts as
/// made (`None`: not this call's to release).
pub(super) async fn claim(
    names: &jetstream::kv::Store,
    name: &str,
    owner: &str,
) -> Result<Option<u64>, ExecuteError> {
    match kv::create(names, name, owner.to_string().into()).await {
        Ok(revision) => Ok(Some(revision)),
        Err(error) if error.is_conflict() => {
            if kv::get(names, name).await?.as_deref() == Some(owner.as_bytes()) {
                Ok(None)
            } else {
                Err(
                    Rejection::Conflict("this catalog name is owned by another account".into())
                        .into(),
                )
            }
        }
        Err(error) => Err(error.into()),
    }
}

/// Appends the decided event with its expectation (`Nats-Expected-Last-Subject-Sequence`, and
/// `-Subject` for a wildcard aggregate) and a `Nats-Msg-Id`: the caller's idempotency key
/// when `request` names one (with the request's fingerprint beside it), else one derived from
/// the event and the aggregate version it was decided on, so identical requests racing on the
/// same state append once. A stale expectation is a conflict naming the aggregate's actual
/// last sequence.
pub(super) async fn append(
    js: &jetstream::Context,
    decision: &Decision,
    request: Option<(&str, &str)>,
) -> Result<Appended, StoreError> {
    let subject = decision.subject.to_subject();
    let body = decision.body.encode();
    let mut headers = async_nats::HeaderMap::new();
    match request {
        Some((key, fingerprint)) => {
            headers.insert(MSG_ID_HEADER, key);
            headers.insert(REQUEST_FINGERPRINT_HEADER, fingerprint);
        }
        None => headers.insert(
            MSG_ID_HEADER,
            derived_msg_id(&subject, &body, decision.expectation.last_seq).as_str(),
        ),
    }
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        decision.expectation.last_seq.to_string().as_str(),
    );
    if let Some(filter) = &decision.expectation.filter {
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence-Subject",
            filter.as_str(),
        );
    }
    let failed = |error: &jetstream::context::PublishError| {
        StoreError::publish("append to the event log", error)
    };
    let ack = js
        .publish_with_headers(subject, headers, body.into())
        .await
        .map_err(|e| failed(&e))?
        .await
        .map_err(|e| failed(&e))?;
    Ok(Appended {
        seq: ack.sequence,
        duplicate: ack.duplicate,
    })
}

fn derived_msg_id(subject: &str, body: &[u8], expected: u64) -> String {
    let mut hash = Sha256::new();
    hash.update(subject.as_bytes());
    hash.update([0]);
    hash.update(body);
    hash.update(expected.to_be_bytes());
    data_encoding::BASE64URL_NOPAD.encode(&hash.finalize()[..18])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_depend_on_subject_body_and_version() {
        let a = derived_msg_id("s", b"x", 1);
        assert_eq!(a, derived_msg_id("s", b"x", 1));
        assert_ne!(a, derived_msg_id("s", b"x", 2));
        assert_ne!(a, derived_msg_id("s", b"y", 1));
        assert_ne!(a, derived_msg_id("t", b"x", 1));
    }
}

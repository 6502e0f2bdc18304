//! One request as a handler sees it: the caller's proven identity, the payload read as the
//! op's request type, headers, and the read-your-writes wait.

use super::PreparedAccount;
use super::{ApiContext, ApiError};
use crate::contract::{BodyError, Operation, RequestBody, WhoamiReply, MIN_SEQ_HEADER};
use crate::model::validate::is_account_public_key;
use crate::model::AccountRecord;
use crate::store::kv;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// How long a read waits for `Natster-Min-Seq`.
pub const MIN_SEQ_WAIT: Duration = Duration::from_secs(2);

/// How long a read waits for this instance's tail of the log to reach `Natster-Min-Seq`
/// before taking it for a sequence the log does not hold (the tail follows the log within
/// milliseconds), so such a request gives its slot back at once.
pub const BEYOND_LOG_WAIT: Duration = Duration::from_millis(250);

/// The proven identity of a request: the account public key in the subject's first token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub account: String,
}

/// The first token of a request subject, where the server puts the caller's account key
/// (unchecked: see [`Caller::from_subject`]).
pub fn caller_token(subject: &str) -> &str {
    subject.split('.').next().unwrap_or_default()
}

impl Caller {
    /// Reads the caller from a request subject; 400 when token 1 is not an account key.
    pub fn from_subject(subject: &str) -> Result<Caller, ApiError> {
        let first = caller_token(subject);
        if is_account_public_key(first) {
            Ok(Caller {
                account: first.to_string(),
            })
        } else {
            Err(ApiError::bad_request(
                "the request subject does not start with a caller account key",
            ))
        }
    }
}

/// One request, after identity and size checks.
pub struct ApiRequest<'a> {
    pub caller: Caller,
    pub payload: &'a Bytes,
    pub headers: Option<&'a async_nats::HeaderMap>,
    /// Whether the request has a reply subject (the original heartbeat client sends none).
    pub replies: bool,
}

impl ApiRequest<'_> {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.and_then(|h| h.get(name)).map(|v| v.as_str())
    }

    /// The payload as op `O`'s request; `what` names a JSON request in the error. The error
    /// says what was wrong and where, never the input itself (a payload may hold a secret).
    pub fn body<O: Operation>(&self, what: &str) -> Result<O::Request, ApiError> {
        O::Request::from_bytes(self.payload).map_err(|error| match error {
            BodyError::NotText => ApiError::bad_request(error.to_string()),
            BodyError::Json(error) => {
                let kind = match error.classify() {
                    serde_json::error::Category::Data => "a field is missing or has the wrong type",
                    serde_json::error::Category::Eof => "the JSON ends early",
                    _ => "it is not valid JSON",
                };
                ApiError::bad_request(format!(
                    "malformed {what}: {kind} (line {}, column {})",
                    error.line(),
                    error.column()
                ))
            }
        })
    }

    /// Honours `Natster-Min-Seq`: returns once every projection in `projections` has applied
    /// the requested sequence, or 503 after [`MIN_SEQ_WAIT`] naming both sequences. A sequence
    /// this instance has not read from the log within [`BEYOND_LOG_WAIT`] is 503 answered late
    /// ([`ApiError::beyond_log`]): the request gives its slot back at once.
    pub async fn wait_min_seq(
        &self,
        context: &ApiContext,
        projections: &[&'static str],
    ) -> Result<(), ApiError> {
        let Some(raw) = self.header(MIN_SEQ_HEADER) else {
            return Ok(());
        };
        let wanted: u64 = raw.trim().parse().map_err(|_| {
            ApiError::bad_request("Natster-Min-Seq must be a stream sequence number")
        })?;
        if context
            .decider
            .wait_folded(wanted, BEYOND_LOG_WAIT)
            .await
            .is_err()
        {
            return Err(ApiError::beyond_log(wanted, context.decider.folded()));
        }
        context
            .view
            .wait_applied(projections, wanted, MIN_SEQ_WAIT)
            .await
            .map_err(|(projection, applied)| {
                ApiError::unavailable(format!(
                    "projection {projection} has applied sequence {applied}, the request needs {wanted}; retry shortly"
                ))
            })
    }
}

impl ApiRequest<'_> {
    /// The caller's account record: from the instance's cache, or read from the bucket when
    /// the request waits for a sequence (`Natster-Min-Seq`), which the cache cannot promise.
    pub async fn own_account(
        &self,
        context: &ApiContext,
    ) -> Result<Option<Arc<PreparedAccount>>, ApiError> {
        if self.header(MIN_SEQ_HEADER).is_some() {
            return Ok(self.read_own_record(context).await?.map(Arc::new));
        }
        context
            .account_cache
            .get(&self.caller.account)
            .await
            .map_err(|error| ApiError::store("a projection cannot be read", &error))
    }

    /// The caller's identity as `whoami` answers it: [`ApiRequest::own_account`]'s, except
    /// that a request waiting for a sequence decodes only the stored record (not the share
    /// listing it would not use).
    pub async fn own_identity(
        &self,
        context: &ApiContext,
    ) -> Result<Option<WhoamiReply>, ApiError> {
        if self.header(MIN_SEQ_HEADER).is_some() {
            let record: Option<AccountRecord> = self.read_own_record(context).await?;
            return Ok(record.as_ref().map(WhoamiReply::from));
        }
        Ok(self
            .own_account(context)
            .await?
            .map(|account| account.identity.clone()))
    }

    /// The caller's account record read from the bucket, decoded as `T`.
    async fn read_own_record<T: serde::de::DeserializeOwned>(
        &self,
        context: &ApiContext,
    ) -> Result<Option<T>, ApiError> {
        self.read_record(&context.store.accounts, &self.caller.account)
            .await
    }

    /// Reads a record of a read model (absent → `None`). A request that waits for a sequence
    /// (`Natster-Min-Seq`) reads from the bucket's leader, so on a replicated bucket a lagging
    /// replica cannot answer with a record older than the sequence; others read from any
    /// replica.
    pub async fn read_record<T: serde::de::DeserializeOwned>(
        &self,
        bucket: &async_nats::jetstream::kv::Store,
        key: &str,
    ) -> Result<Option<T>, ApiError> {
        let read = if self.header(MIN_SEQ_HEADER).is_some() {
            kv::load_current::<T>(bucket, key).await
        } else {
            kv::load::<T>(bucket, key).await.map(|record| record.value)
        };
        read.map_err(|error| ApiError::store("a projection cannot be read", &error))
    }
}

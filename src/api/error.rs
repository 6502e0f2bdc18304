//! What a failed request answers: an HTTP-like code and one readable sentence (never a secret).

use crate::model::Rejection;
use crate::store::{StoreError, StoreErrorKind};
use crate::write::ExecuteError;

/// A request that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub message: String,
    /// Answered late and paced per account (see [`super::throttle`]): what a client may repeat
    /// in a loop without waiting — a refusal (429), or a read of a sequence the log has not
    /// reached — holding no slot meanwhile.
    pub late: bool,
}

impl ApiError {
    /// An error with any code, answered at once.
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            late: false,
        }
    }

    /// An error answered late (see [`ApiError::late`]).
    fn answered_late(code: u16, message: impl Into<String>) -> Self {
        ApiError {
            late: true,
            ..Self::new(code, message)
        }
    }
    /// 400: malformed or invalid input.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
    /// 403: not allowed for this caller.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, message)
    }
    /// 404: not found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }
    /// 413: request larger than the cap.
    pub fn too_large(limit: usize) -> Self {
        Self::new(413, format!("the request is larger than {limit} bytes"))
    }
    /// 429: the caller writes faster than allowed.
    pub fn rate_limited() -> Self {
        Self::answered_late(
            429,
            "this account sends write requests faster than allowed; slow down and retry",
        )
    }
    /// 409: a limit of the caller is reached.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }
    /// 429: the caller already has its share of the in-flight slots.
    pub fn too_many_in_flight(share: usize) -> Self {
        Self::answered_late(
            429,
            format!("this account already has {share} requests in flight and as many waiting (its share of the service); wait for answers before sending more"),
        )
    }
    /// 429: past the caller's heartbeat budget.
    pub fn rate_limited_heartbeats() -> Self {
        Self::answered_late(
            429,
            "this account sends heartbeats faster than its heartbeat budget allows; slow down",
        )
    }
    /// 503: not ready.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, message)
    }
    /// 503, answered late: `Natster-Min-Seq` asks for a sequence the log did not reach within
    /// the short wait for a write just acknowledged elsewhere — a client's mistake or a flood,
    /// which a reply at once would let spin.
    pub fn beyond_log(wanted: u64, read_up_to: u64) -> Self {
        Self::answered_late(
            503,
            format!("the event log has not reached sequence {wanted} (this instance has read it up to {read_up_to}); retry once the write it follows is acknowledged"),
        )
    }
    /// 500: an internal failure; the detail goes to the log, not to the caller.
    pub fn internal() -> Self {
        Self::new(500, "internal error; the service logged the details")
    }

    /// A store failure while doing `what` (e.g. "one-time codes cannot be stored"): 503 when
    /// retrying may help, 500 when it cannot. The detail goes to the log.
    pub fn store(what: &str, error: &StoreError) -> Self {
        match error.kind() {
            StoreErrorKind::Permanent => {
                tracing::error!(%error, "{what}");
                Self::internal()
            }
            StoreErrorKind::Conflict | StoreErrorKind::Unavailable => {
                tracing::error!(%error, "{what}");
                Self::unavailable(format!("{what} right now; retry shortly"))
            }
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        let code = match rejection {
            Rejection::BadRequest(_) => 400,
            Rejection::Forbidden(_) => 403,
            Rejection::NotFound(_) => 404,
            Rejection::Conflict(_) => 409,
        };
        ApiError::new(code, rejection.to_string())
    }
}

impl From<ExecuteError> for ApiError {
    fn from(error: ExecuteError) -> Self {
        match error {
            ExecuteError::Rejected(rejection) => rejection.into(),
            reused @ ExecuteError::KeyReused { .. } => ApiError::new(409, reused.to_string()),
            starting @ ExecuteError::Starting { .. } => ApiError::unavailable(starting.to_string()),
            other => {
                tracing::warn!(detail = %other, "append failed");
                ApiError::unavailable(
                    "the event log cannot take the request right now; retry shortly",
                )
            }
        }
    }
}

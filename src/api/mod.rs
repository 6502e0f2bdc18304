//! The request API: one module per op, the reply envelope, and the caller's identity.
//!
//! Every request arrives on `<CALLER_ACCOUNT>.natster.global.<op>`. The first token is put
//! there by the server from the importer's account (export token position 1), so it is the
//! caller's proven identity; an account key that arrives in a payload is never trusted.

pub mod catalogs_validatename;
pub mod context_get;
pub mod envelope;
pub mod events_put;
pub mod heartbeats_put;
pub mod my_shares;
pub mod otc_claim;
pub mod otc_expiry;
pub mod otc_generate;
pub mod stats;
pub mod whoami;

use crate::config::ServiceConfig;
use crate::credentials::CredentialsProvider;
use crate::decider::{Decider, ExecuteError};
use crate::model::Rejection;
use crate::projections::view::StatsView;
use crate::seal::Sealer;
use crate::store::Store;
use bytes::Bytes;
pub use envelope::{ApiError, Envelope};
use std::sync::Arc;
use std::time::Duration;

/// Request header: answer only once the projections read have applied this sequence.
pub const MIN_SEQ_HEADER: &str = "Natster-Min-Seq";
/// How long a read waits for `Natster-Min-Seq`.
pub const MIN_SEQ_WAIT: Duration = Duration::from_secs(2);

/// The ops this service serves. Any other op gets "no responders", as NATS services do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    EventsPut,
    HeartbeatsPut,
    Stats,
    MyShares,
    OtcGenerate,
    OtcClaim,
    Whoami,
    ContextGet,
    CatalogsValidateName,
}

impl Op {
    /// Every served op.
    pub const ALL: &'static [Op] = &[
        Op::EventsPut,
        Op::HeartbeatsPut,
        Op::Stats,
        Op::MyShares,
        Op::OtcGenerate,
        Op::OtcClaim,
        Op::Whoami,
        Op::ContextGet,
        Op::CatalogsValidateName,
    ];

    /// The op's name: the subject tokens after `natster.global.`.
    pub fn name(self) -> &'static str {
        match self {
            Op::EventsPut => "events.put",
            Op::HeartbeatsPut => "heartbeats.put",
            Op::Stats => "stats",
            Op::MyShares => "my.shares",
            Op::OtcGenerate => "otc.generate",
            Op::OtcClaim => "otc.claim",
            Op::Whoami => "whoami",
            Op::ContextGet => "context.get",
            Op::CatalogsValidateName => "catalogs.validatename",
        }
    }

    /// Whether the op writes (and so is rate limited per account).
    pub fn writes(self) -> bool {
        matches!(self, Op::EventsPut | Op::OtcGenerate | Op::OtcClaim)
    }

    /// Subject the service subscribes to for this op (any caller account in token 1).
    pub fn service_subject(self) -> String {
        format!("*.natster.global.{}", self.name())
    }

    /// Subject an importing account uses for this op.
    pub fn importer_subject(self) -> String {
        format!("natster.global.{}", self.name())
    }
}

/// The proven identity of a request: the account public key in the subject's first token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub account: String,
}

impl Caller {
    /// Reads the caller from a request subject; 400 when token 1 is not an account key.
    pub fn from_subject(subject: &str) -> Result<Caller, ApiError> {
        let first = subject.split('.').next().unwrap_or_default();
        if crate::auth::is_account_public_key(first) {
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

/// Per-account rate limiter of write ops.
pub type RateLimiter = governor::DefaultKeyedRateLimiter<String>;

/// What a handler may use; the service shares one behind an `Arc` (a clone copies every
/// bucket handle).
#[derive(Clone)]
pub struct ApiContext {
    pub store: Store,
    pub decider: Decider,
    pub view: StatsView,
    pub config: Arc<ServiceConfig>,
    pub sealer: Option<Arc<Sealer>>,
    pub credentials: Arc<dyn CredentialsProvider>,
    pub feeds: crate::feeds::Feeds,
    pub rate_limiter: Arc<RateLimiter>,
    pub metrics: crate::telemetry::Metrics,
    /// Counts issued codes that expire unclaimed.
    pub codes: otc_expiry::CodeExpiry,
}

impl ApiContext {
    /// The sealer, or 503 when the service runs without an xkey.
    pub fn sealer(&self) -> Result<&Sealer, ApiError> {
        self.sealer.as_deref().ok_or_else(|| {
            ApiError::unavailable("this service runs without an xkey (--xkey-seed-file), so it cannot handle contexts")
        })
    }

    /// Whether `account` is one of the configured web accounts.
    pub fn is_web(&self, account: &str) -> bool {
        self.config.web_accounts.iter().any(|w| w == account)
    }
}

/// One request, after identity and size checks.
pub struct ApiRequest<'a> {
    pub caller: Caller,
    pub payload: &'a Bytes,
    pub headers: Option<&'a async_nats::HeaderMap>,
    /// Whether the requester waits for a reply.
    pub wants_reply: bool,
}

impl ApiRequest<'_> {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.and_then(|h| h.get(name)).map(|v| v.as_str())
    }

    /// The payload as trimmed UTF-8 text (for ops that take a raw string).
    pub fn text(&self) -> Result<&str, ApiError> {
        std::str::from_utf8(self.payload)
            .map(str::trim)
            .map_err(|_| ApiError::bad_request("the request is not UTF-8 text"))
    }
}

/// Runs the handler of `op`; the result is the reply `data` or an error envelope.
pub async fn dispatch(
    context: &ApiContext,
    op: Op,
    request: ApiRequest<'_>,
) -> Result<serde_json::Value, ApiError> {
    if op.writes()
        && context
            .rate_limiter
            .check_key(&request.caller.account)
            .is_err()
    {
        return Err(ApiError::new(
            429,
            "this account sends write requests faster than allowed; slow down and retry",
        ));
    }
    match op {
        Op::EventsPut => events_put::handle(context, &request).await,
        Op::HeartbeatsPut => heartbeats_put::handle(context, &request).await,
        Op::Stats => stats::handle(context, &request).await,
        Op::MyShares => my_shares::handle(context, &request).await,
        Op::OtcGenerate => otc_generate::handle(context, &request).await,
        Op::OtcClaim => otc_claim::handle(context, &request).await,
        Op::Whoami => whoami::handle(context, &request).await,
        Op::ContextGet => context_get::handle(context, &request).await,
        Op::CatalogsValidateName => catalogs_validatename::handle(context, &request).await,
    }
}

/// Honours `Natster-Min-Seq`: returns once every projection in `projections` has applied the
/// requested sequence, or 503 after [`MIN_SEQ_WAIT`] naming both sequences.
pub async fn wait_min_seq(
    context: &ApiContext,
    request: &ApiRequest<'_>,
    projections: &[&'static str],
) -> Result<(), ApiError> {
    let Some(raw) = request.header(MIN_SEQ_HEADER) else {
        return Ok(());
    };
    let wanted: u64 = raw
        .trim()
        .parse()
        .map_err(|_| ApiError::bad_request("Natster-Min-Seq must be a stream sequence number"))?;
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

/// Decodes a JSON request. The error names what was wrong and where, never the input itself
/// (a payload may hold a secret).
pub fn parse_json<T: serde::de::DeserializeOwned>(
    payload: &[u8],
    what: &str,
) -> Result<T, ApiError> {
    serde_json::from_slice(payload).map_err(|error| {
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
    })
}

/// Reads a JSON record from a bucket for a handler (absent → `None`).
pub async fn read_record<T: serde::de::DeserializeOwned>(
    bucket: &async_nats::jetstream::kv::Store,
    key: &str,
) -> Result<Option<T>, ApiError> {
    crate::projections::runner::load::<T>(bucket, key)
        .await
        .map(|(record, _)| record)
        .map_err(|error| {
            tracing::error!(%error, "reading a projection failed");
            ApiError::unavailable("a projection cannot be read right now; retry shortly")
        })
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
            ExecuteError::Unavailable(detail) => {
                tracing::warn!(%detail, "append failed");
                ApiError::unavailable(
                    "the event log cannot take the request right now; retry shortly",
                )
            }
        }
    }
}

//! The request API: the intake ([`intake`]), one handler per op of the contract's op table,
//! and what handlers share.
//!
//! Every request arrives on `<CALLER_ACCOUNT>.natster.global.<op>`. The first token is put
//! there by the server from the importer's account (export token position 1), so it is the
//! caller's proven identity; an account key that arrives in a payload is never trusted.

mod account;
mod catalogs_validatename;
mod context_get;
mod error;
mod events_put;
pub mod heartbeat_acks;
mod heartbeats_put;
pub mod intake;
mod my_shares;
pub mod online_catalogs;
mod otc_claim;
mod otc_generate;
mod request;
pub mod slots;
mod stats;
pub mod throttle;
mod whoami;

pub use account::PreparedAccount;
pub use error::ApiError;
pub use request::{ApiRequest, Caller, MIN_SEQ_WAIT};

use crate::contract::{op, Envelope, Op, Operation};
use crate::otc::{CodeExpiry, CredentialsProvider, Sealer};
use crate::projections::online_view::OnlineView;
use crate::projections::record_cache::RecordCache;
use crate::projections::view::StatsView;
use crate::reactions::Feeds;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::write::Decider;
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The settings the handlers follow.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Accounts allowed to claim codes and read contexts (the website).
    pub web_accounts: Vec<String>,
    /// Prefix of `claim_url` in `otc.generate` replies (the code is appended).
    pub claim_url_base: String,
    /// How long a one-time code stays claimable.
    pub code_ttl: Duration,
    /// A catalog is online until this long after its last heartbeat.
    pub online_ttl: Duration,
    /// Seals access tokens; without it, context ops answer 503.
    pub sealer: Option<Arc<Sealer>>,
}

/// Per-account rate limiter of write ops.
pub type RateLimiter = governor::DefaultKeyedRateLimiter<String>;

/// What a handler may use; the service shares one behind an `Arc`.
pub struct ApiContext {
    pub store: Store,
    pub decider: Decider,
    pub view: StatsView,
    /// What `my.shares` answers catalogs' online state from, once complete.
    pub online_view: OnlineView,
    /// Account records for reads without `Natster-Min-Seq`.
    pub account_cache: RecordCache<PreparedAccount>,
    pub settings: ApiSettings,
    pub credentials: Arc<dyn CredentialsProvider>,
    pub feeds: Feeds,
    pub rate_limiter: RateLimiter,
    /// Per-account heartbeat budget (its own, separate from writes).
    pub heartbeat_limiter: RateLimiter,
    /// The cap on catalogs online per account.
    pub online_catalogs: online_catalogs::OnlineCatalogs,
    /// Records heartbeats published without a reply subject.
    pub heartbeat_acks: heartbeat_acks::HeartbeatAcks,
    pub metrics: Metrics,
    /// Counts issued codes that expire unclaimed.
    pub codes: CodeExpiry,
}

impl ApiContext {
    /// The sealer, or 503 when the service runs without an xkey.
    pub fn sealer(&self) -> Result<&Sealer, ApiError> {
        self.settings.sealer.as_deref().ok_or_else(|| {
            ApiError::unavailable("this service runs without an xkey (--xkey-seed-file), so it cannot handle contexts")
        })
    }

    /// Whether `account` is one of the configured web accounts.
    pub fn is_web(&self, account: &str) -> bool {
        self.settings.web_accounts.iter().any(|w| w == account)
    }
}

/// The handler of an op: its reply is the op's reply type, so what a handler answers is what
/// the contract (and its schema) says. (`my.shares` answers bytes encoded ahead instead, and
/// its tests hold them to the typed encoding of its reply type: see `my_shares::ShareListing`.)
pub trait Handler: Operation {
    fn handle(
        context: &ApiContext,
        request: &ApiRequest<'_>,
    ) -> impl Future<Output = Result<Self::Reply, ApiError>> + Send;
}

async fn serve<H: Handler>(
    context: &ApiContext,
    request: &ApiRequest<'_>,
) -> Result<Bytes, ApiError> {
    let reply = H::handle(context, request).await?;
    Ok(Envelope::success(reply).to_bytes())
}

/// The refusal of a request of `op` from `account` past the account's budget (writes, or
/// heartbeats), taking one unit of the budget otherwise. Checked by the intake before a
/// request takes a slot or a task, so what is over budget costs as little as possible; a
/// heartbeat without reply subject over budget is counted as dropped.
pub fn over_budget(context: &ApiContext, op: Op, account: &str, replies: bool) -> Option<ApiError> {
    if op.writes()
        && context
            .rate_limiter
            .check_key(&account.to_string())
            .is_err()
    {
        return Some(ApiError::rate_limited());
    }
    if op == Op::HeartbeatsPut
        && context
            .heartbeat_limiter
            .check_key(&account.to_string())
            .is_err()
    {
        context.metrics.heartbeats_received.inc();
        if !replies {
            context.metrics.heartbeat_dropped("rate");
        }
        return Some(ApiError::rate_limited_heartbeats());
    }
    None
}

/// Runs the handler of `op` (its budget already taken, see [`over_budget`]); the result is
/// the success envelope's bytes or the error.
pub async fn dispatch(
    context: &ApiContext,
    op: Op,
    request: ApiRequest<'_>,
) -> Result<Bytes, ApiError> {
    let request = &request;
    match op {
        Op::EventsPut => serve::<op::EventsPut>(context, request).await,
        Op::HeartbeatsPut => serve::<op::HeartbeatsPut>(context, request).await,
        Op::Stats => serve::<op::Stats>(context, request).await,
        Op::MyShares => my_shares::serve(context, request).await,
        Op::OtcGenerate => serve::<op::OtcGenerate>(context, request).await,
        Op::OtcClaim => serve::<op::OtcClaim>(context, request).await,
        Op::Whoami => serve::<op::Whoami>(context, request).await,
        Op::ContextGet => serve::<op::ContextGet>(context, request).await,
        Op::CatalogsValidateName => serve::<op::CatalogsValidateName>(context, request).await,
    }
}

//! How the service behaves; filled from flags, environment and file by the CLI, built
//! directly by tests and embedding programs.

use crate::api::ApiSettings;
use crate::model::ShareLimits;
use crate::otc::Sealer;
use crate::projections::runner::RunnerConfig;
use crate::reactions::HubShare;
use crate::store::StoreConfig;
use std::sync::Arc;
use std::time::Duration;

/// How the service behaves.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub store: StoreConfig,
    /// Requests larger than this get 413.
    pub max_request_bytes: usize,
    /// Queue group shared by all instances.
    pub queue_group: String,
    /// Requests handled at once (all ops together); more wait in their subscriptions.
    pub max_in_flight: usize,
    /// Requests one account may have in flight at once (its fair share of `max_in_flight`;
    /// `Natster-Min-Seq` waits count); beyond it, 429 at once.
    pub max_in_flight_per_account: usize,
    /// Bound on finishing in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
    /// Accounts allowed to claim codes and read contexts (the website).
    pub web_accounts: Vec<String>,
    /// Auto-share: each new account gets this hub's catalog shared with it.
    pub hub: Option<HubShare>,
    /// Prefix of `claim_url` in `otc.generate` replies (the code is appended).
    pub claim_url_base: String,
    /// Write requests per second and account, and the burst allowed above it.
    pub rate_per_second: u32,
    pub rate_burst: u32,
    /// Heartbeats per second and account, and the burst allowed above it (a budget of their
    /// own: catalog servers heartbeat every catalog, so writes and heartbeats never starve
    /// each other).
    pub heartbeat_rate_per_second: u32,
    pub heartbeat_burst: u32,
    /// Catalogs one account may have online at once.
    pub max_online_catalogs: usize,
    /// How long after it is decided a refusal (429, or 503 for a sequence the log has not
    /// reached) is sent, one account's refusals paced (zero: at once, unpaced): a client that
    /// sends again as soon as it is refused is slowed instead of spinning.
    pub refusal_delay: Duration,
    /// Share limits `decide` enforces; the records they allow must fit the server's
    /// `max_payload` (checked at start).
    pub share_limits: ShareLimits,
    /// Tuning of the projection runners.
    pub runner: RunnerConfig,
    /// Bytes of account records (as stored) the read ops keep in memory (see
    /// [`crate::projections::record_cache`]).
    pub account_cache_bytes: usize,
    /// A catalog is online until this long after its last heartbeat (whole seconds, at
    /// least 1 s: the server's per-message TTL).
    pub online_ttl: Duration,
    /// `/readyz` fails while a projection lags more than this many stream sequences.
    pub ready_max_lag: u64,
    /// Seals access tokens; without it, context ops answer 503.
    pub sealer: Option<Arc<Sealer>>,
    /// How often the instance holding the snapshot lease writes the decision-state snapshot
    /// (also written when it stops); a restart folds the log after the last one.
    pub snapshot_interval: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            store: StoreConfig::default(),
            max_request_bytes: 64 * 1024,
            queue_group: crate::contract::SERVICE_NAME.into(),
            max_in_flight: 1024,
            max_in_flight_per_account: 64,
            shutdown_timeout: Duration::from_secs(10),
            web_accounts: vec![],
            hub: None,
            claim_url_base: "https://natster.io/login/".into(),
            rate_per_second: 100,
            rate_burst: 200,
            heartbeat_rate_per_second: 50,
            heartbeat_burst: 500,
            max_online_catalogs: 1_000,
            refusal_delay: Duration::from_secs(1),
            share_limits: ShareLimits::default(),
            runner: Default::default(),
            account_cache_bytes: 32 << 20,
            snapshot_interval: Duration::from_secs(60),
            online_ttl: Duration::from_secs(180),
            ready_max_lag: 10_000,
            sealer: None,
        }
    }
}

impl ServiceConfig {
    /// What the handlers follow.
    pub(crate) fn api_settings(&self) -> ApiSettings {
        ApiSettings {
            web_accounts: self.web_accounts.clone(),
            claim_url_base: self.claim_url_base.clone(),
            code_ttl: self.store.code_ttl,
            online_ttl: self.online_ttl,
            sealer: self.sealer.clone(),
        }
    }

    /// One token bucket per caller account: `rate_per_second`, bursts up to `rate_burst`.
    pub(crate) fn rate_limiter(&self) -> crate::api::RateLimiter {
        keyed_limiter(self.rate_per_second, self.rate_burst)
    }

    /// One token bucket per caller account for heartbeats.
    pub(crate) fn heartbeat_limiter(&self) -> crate::api::RateLimiter {
        keyed_limiter(self.heartbeat_rate_per_second, self.heartbeat_burst)
    }
}

/// A token bucket per key: `rate` per second, bursts up to `burst`.
fn keyed_limiter(rate: u32, burst: u32) -> crate::api::RateLimiter {
    use std::num::NonZeroU32;
    let rate = NonZeroU32::new(rate.max(1)).expect("non-zero");
    let burst = NonZeroU32::new(burst.max(1)).expect("non-zero");
    governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
}

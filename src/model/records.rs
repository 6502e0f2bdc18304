//! Plain data types of the domain: read-model records and reply payloads.
//!
//! Pure types only: no NATS here. The decide/apply functions of the event-sourced core live
//! beside these types as they are added.

use serde::{Deserialize, Serialize};

/// One share as seen from an account record: the catalog and the other account.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct ShareRef {
    pub catalog: String,
    pub account: String,
}

/// The account projection record (`PROJ_ACCOUNT` value, key = account public key); also what
/// an account reads of itself through `natster.projections.account`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AccountRecord {
    pub account_key: String,
    /// Unix seconds of the `natster_initialized` event's stream timestamp.
    pub initialized_at: i64,
    #[serde(default)]
    pub out_shares: Vec<ShareRef>,
    #[serde(default)]
    pub in_shares: Vec<ShareRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_id: Option<String>,
    /// Last stream sequence applied to this record.
    #[serde(default)]
    pub applied_seq: u64,
}

/// Reply data of `whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WhoamiReply {
    pub account_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_id: Option<String>,
    /// Unix seconds at which the account initialised Natster.
    pub initialized: i64,
}

impl From<&AccountRecord> for WhoamiReply {
    fn from(record: &AccountRecord) -> Self {
        WhoamiReply {
            account_key: record.account_key.clone(),
            oauth_id: record.oauth_id.clone(),
            initialized: record.initialized_at,
        }
    }
}

/// The catalog projection record (`PROJ_CATALOG` value, key = catalog name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogRecord {
    pub catalog_name: String,
    pub owner: String,
    /// Accounts the catalog is actively shared with, in the order they were shared.
    pub shared_with: Vec<String>,
    #[serde(default)]
    pub applied_seq: u64,
}

/// The OAuth index record (`PROJ_OAUTH` value, key = `crate::projections::oauth::key(oauth_id)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthRecord {
    pub oauth_id: String,
    pub account_key: String,
    /// The bound context; its `access_token` is sealed.
    pub context: crate::model::NatsterContext,
    #[serde(default)]
    pub applied_seq: u64,
}

/// One entry of `my.shares`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ShareSummary {
    pub from_account: String,
    pub to_account: String,
    pub catalog: String,
    pub catalog_online: bool,
    pub revision: i64,
}

/// Reply data of `stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StatsReply {
    pub total_initialized: u64,
    pub running_catalogs: u64,
    pub share_count: u64,
}

/// Reply data of `catalogs.validatename`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NameValidation {
    pub valid: bool,
    pub message: String,
}

/// A catalog server's heartbeat (`heartbeats.put` request, `heartbeat` feed message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Heartbeat {
    pub catalog: String,
    pub account_key: String,
    pub revision: i64,
}

/// Reply data of `otc.generate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OtcGenerateReply {
    pub code: String,
    pub valid_minutes: u64,
    pub claim_url: String,
}

/// Request of `otc.claim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OtcClaimRequest {
    pub code: String,
    pub oauth_id: String,
}

/// Reply data of `context.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ContextReply {
    pub context: crate::model::NatsterContext,
    pub user_jwt: String,
    pub user_seed: String,
}

/// Request of `events.put`, as natster clients send it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EventsPutRequest {
    /// Catalog name, or `none` for `natster_initialized`.
    pub catalog: String,
    /// Account public key the event is about, or `none`.
    pub target: String,
    /// `natster_initialized`, `catalog_shared`, `catalog_unshared` or `catalog_imported`.
    pub event_type: String,
    /// `natster_initialized`: `{"account_id","account_name","account_key"}`; otherwise absent
    /// or `null`.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

/// Reply data of `events.put`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EventsPutReply {
    /// Stream sequence of the appended event (use it as `Natster-Min-Seq` to read your write).
    pub seq: u64,
}

/// Request of `heartbeats.put`: the heartbeat catalog servers send, plus an optional stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HeartbeatRequest {
    pub catalog: String,
    pub account_key: String,
    #[serde(default)]
    pub revision: i64,
    /// The catalog server stops: the catalog goes offline at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offline: bool,
}

/// Reply data of `heartbeats.put` (`{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct EmptyReply {}

/// Feed message `catalog_online` / `catalog_offline`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OnlineNotice {
    pub catalog: String,
    /// The catalog's owner.
    pub account_key: String,
    /// Catalog revision of the heartbeat that brought the change.
    pub revision: i64,
    /// When the change happened (RFC 3339).
    pub at: String,
}

/// Feed message `catalog_shared` / `catalog_unshared`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ShareNotice {
    pub catalog: String,
    pub from_account: String,
    pub to_account: String,
    /// Stream sequence of the event.
    pub seq: u64,
}

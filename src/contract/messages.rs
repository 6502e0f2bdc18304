//! The messages of the wire contract: requests and replies of the ops, feed payloads.
//! Field names are the original service's, so existing clients decode them unchanged.

use crate::model::{AccountRecord, NatsterContext};
use serde::{Deserialize, Serialize};

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
    pub context: NatsterContext,
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

// Without the stop, this is also the `heartbeat` feed message.
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

//! The records the read models store: one account, one catalog name, one OAuth binding.
//! Plain data; what a client account may read of them is stated in `crate::contract`.

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

/// The OAuth index record (`PROJ_OAUTH` value, key = the OAuth id, base64url (see `crate::projections`)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthRecord {
    pub oauth_id: String,
    pub account_key: String,
    /// The bound context; its `access_token` is sealed.
    pub context: crate::model::NatsterContext,
    #[serde(default)]
    pub applied_seq: u64,
}

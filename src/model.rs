//! Plain data types of the domain: read-model records and reply payloads.
//!
//! Pure types only: no NATS here. The decide/apply functions of the event-sourced core live
//! beside these types as they are added.

use serde::{Deserialize, Serialize};

/// One share as seen from an account record: the catalog and the other account.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShareRef {
    pub catalog: String,
    pub account: String,
}

/// The account projection record (`PROJ_ACCOUNT` value, key = account public key); also what
/// an account reads of itself through `natster.projections.account`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

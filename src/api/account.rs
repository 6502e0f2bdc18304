//! The caller's account record as the read ops use it.

use super::my_shares::ShareListing;
use crate::contract::WhoamiReply;
use crate::model::AccountRecord;
use crate::projections::record_cache::CachedRecord;
use serde::Deserialize;

/// What the read ops answer from an account record, derived once when the record is read or
/// a change of it arrives, not per request. The record's own lists of shares are not kept:
/// the listing holds them as `my.shares` answers them.
#[derive(Debug, Deserialize)]
#[serde(from = "AccountRecord")]
pub struct PreparedAccount {
    /// The account as `whoami` answers it (`initialized` is 0 before its init event).
    pub identity: WhoamiReply,
    /// Its shares, encoded ahead for `my.shares`.
    pub shares: ShareListing,
}

impl From<AccountRecord> for PreparedAccount {
    fn from(record: AccountRecord) -> PreparedAccount {
        PreparedAccount {
            identity: WhoamiReply::from(&record),
            shares: ShareListing::new(&record),
        }
    }
}

impl CachedRecord for PreparedAccount {
    /// The listing; the identity is smaller than the stored record it came from, which the
    /// cache counts already.
    fn derived_bytes(&self) -> usize {
        self.shares.size()
    }
}

//! Per-account and per-catalog share limits, and the largest record they allow.
//!
//! Every record a projection writes grows only with active shares: an account's record lists
//! its out- and in-shares, a catalog's record the accounts it is shared with. `decide` refuses
//! a share past any limit (409), so a record's size has a bound that [`ShareLimits::check_fit`]
//! compares with the server's `max_payload` at start. Decisions made at the same moment on
//! the same state can pass a limit together (each append is guarded by its own share pair, not
//! by a count), so the check leaves room for [`RACE_HEADROOM`] times each limit; anything past
//! that (an adopted log, say) is parked by the projection, not retried.

use super::records::{AccountRecord, CatalogRecord, ShareRef};
use super::validate::{MAX_CATALOG_NAME, MAX_OAUTH_ID};

/// The records the limits bound must fit even when concurrent decisions overshoot every
/// limit by as much again.
pub const RACE_HEADROOM: usize = 2;

/// Bytes of a stored message that are not the record: subject, headers of a compare-and-set
/// write, and of the bucket's republish.
pub const MESSAGE_OVERHEAD: usize = 1024;

/// How many active shares an account and a catalog may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareLimits {
    /// Active shares from one account (its out-shares, over all its catalogs).
    pub out_shares_per_account: usize,
    /// Accounts one catalog is actively shared with.
    pub accounts_per_catalog: usize,
    /// Active shares to one account (its in-shares, from all owners).
    pub in_shares_per_account: usize,
}

impl Default for ShareLimits {
    fn default() -> Self {
        ShareLimits {
            out_shares_per_account: 1_000,
            accounts_per_catalog: 1_000,
            in_shares_per_account: 2_000,
        }
    }
}

/// A limit's largest record would not fit in a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the share limits allow {record} records of up to {bytes} bytes (with room for concurrent \
     decisions), more than the server's max_payload of {max_payload} bytes allows; lower \
     {settings} or raise max_payload"
)]
pub struct LimitsTooLarge {
    pub record: &'static str,
    pub bytes: usize,
    pub max_payload: usize,
    pub settings: &'static str,
}

impl ShareLimits {
    /// Bytes of the largest account record these limits allow (every entry at its longest,
    /// [`RACE_HEADROOM`] applied), as stored.
    pub fn largest_account_record(&self) -> usize {
        let share = ShareRef {
            catalog: "z".repeat(MAX_CATALOG_NAME),
            account: longest_account_key(),
        };
        let record = AccountRecord {
            account_key: longest_account_key(),
            initialized_at: i64::MIN,
            out_shares: vec![share.clone(); self.out_shares_per_account * RACE_HEADROOM],
            in_shares: vec![share; self.in_shares_per_account * RACE_HEADROOM],
            // A control character is the longest a character gets in JSON (`\u0000`).
            oauth_id: Some("\u{1}".repeat(MAX_OAUTH_ID)),
            applied_seq: u64::MAX,
        };
        encoded_len(&record)
    }

    /// Bytes of the largest catalog record these limits allow, as stored.
    pub fn largest_catalog_record(&self) -> usize {
        let record = CatalogRecord {
            catalog_name: "z".repeat(MAX_CATALOG_NAME),
            owner: longest_account_key(),
            shared_with: vec![longest_account_key(); self.accounts_per_catalog * RACE_HEADROOM],
            applied_seq: u64::MAX,
        };
        encoded_len(&record)
    }

    /// Whether the largest records fit in a message of `max_payload` bytes (with
    /// [`MESSAGE_OVERHEAD`] for what is not the record).
    pub fn check_fit(&self, max_payload: usize) -> Result<(), LimitsTooLarge> {
        let room = max_payload.saturating_sub(MESSAGE_OVERHEAD);
        let account = self.largest_account_record();
        if account > room {
            return Err(LimitsTooLarge {
                record: "account",
                bytes: account,
                max_payload,
                settings: "--max-out-shares or --max-in-shares",
            });
        }
        let catalog = self.largest_catalog_record();
        if catalog > room {
            return Err(LimitsTooLarge {
                record: "catalog",
                bytes: catalog,
                max_payload,
                settings: "--max-catalog-accounts",
            });
        }
        Ok(())
    }
}

fn longest_account_key() -> String {
    "A".repeat(56)
}

fn encoded_len<T: serde::Serialize>(record: &T) -> usize {
    serde_json::to_vec(record)
        .expect("records serialize to JSON")
        .len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_fit_the_default_max_payload_with_room_for_races() {
        let limits = ShareLimits::default();
        assert_eq!(limits.check_fit(1024 * 1024), Ok(()));
        // 6 000 entries of about 150 bytes each.
        let bytes = limits.largest_account_record();
        assert!((800_000..1_000_000).contains(&bytes), "{bytes}");
    }

    #[test]
    fn limits_whose_records_would_not_fit_are_refused_naming_the_setting() {
        let limits = ShareLimits {
            in_shares_per_account: 5_000,
            ..ShareLimits::default()
        };
        let error = limits.check_fit(1024 * 1024).unwrap_err();
        assert_eq!(error.record, "account");
        assert!(error.to_string().contains("--max-in-shares"), "{error}");
        let limits = ShareLimits {
            accounts_per_catalog: 10_000,
            ..ShareLimits::default()
        };
        assert_eq!(limits.check_fit(1024 * 1024).unwrap_err().record, "catalog");
        assert!(ShareLimits::default().check_fit(64 * 1024).is_err());
    }

    #[test]
    fn the_bound_grows_with_each_limit() {
        let base = ShareLimits::default();
        let more = ShareLimits {
            out_shares_per_account: base.out_shares_per_account + 1,
            ..base
        };
        assert!(more.largest_account_record() > base.largest_account_record());
        let more = ShareLimits {
            accounts_per_catalog: base.accounts_per_catalog + 1,
            ..base
        };
        assert!(more.largest_catalog_record() > base.largest_catalog_record());
    }
}

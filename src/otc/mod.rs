//! One-time codes and the secrets around them: codes (128 bits from the OS CSPRNG, single
//! use, expiring), counting the codes that expire unclaimed, sealing access tokens with the
//! service's xkey before they are stored anywhere, and the provider of NATS credentials for
//! `context.get`. The ops themselves are `crate::api::{otc_generate, otc_claim, context_get}`.

pub mod credentials;
pub mod expiry;
pub mod seal;

pub use credentials::{CredentialsProvider, NoCredentials};
pub use expiry::CodeExpiry;
pub use seal::{Sealer, SeedFileError};

use crate::model::NatsterContext;
use data_encoding::BASE64URL_NOPAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Longest code accepted (codes this service issues have 22 characters).
const MAX_CODE: usize = 64;

/// 128 random bits from the OS CSPRNG, URL-safe (22 characters).
pub fn new_code() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    BASE64URL_NOPAD.encode(&bytes)
}

/// Whether `code` could be a code this service issued: 1 to 64 URL-safe characters. Anything
/// else is never looked up (it may not even be a valid KV key).
pub fn is_well_formed(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= MAX_CODE
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A code's value in the codes bucket: the context it binds (access token sealed) and when
/// it stops being claimable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCode {
    #[serde(flatten)]
    pub context: NatsterContext,
    /// Unix seconds from which the code is refused: its generation plus the code TTL in force
    /// then, whatever the bucket's max age is now. Absent in codes stored by earlier versions
    /// (the bucket's max age bounds those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<u64>,
}

impl StoredCode {
    /// Whether the code can still be claimed at `now` (Unix seconds).
    pub fn is_valid_at(&self, now: u64) -> bool {
        self.valid_until.is_none_or(|until| now < until)
    }
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #[test]
    fn codes_are_url_safe_and_distinct() {
        let a = super::new_code();
        assert_eq!(a.len(), 22);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(a, super::new_code());
        assert!(super::is_well_formed(&a));
        assert!(!super::is_well_formed("a.b"));
        assert!(!super::is_well_formed(""));
    }

    #[test]
    fn a_stored_code_is_the_context_plus_its_deadline() {
        let context = crate::model::NatsterContext {
            account_public_key: "A".into(),
            ..Default::default()
        };
        let code = super::StoredCode {
            context: context.clone(),
            valid_until: Some(100),
        };
        let json = serde_json::to_value(&code).unwrap();
        assert_eq!(json["account_public_key"], "A");
        assert_eq!(json["valid_until"], 100);
        assert!(code.is_valid_at(99));
        assert!(!code.is_valid_at(100));
        // A code stored as a bare context (earlier versions) has no deadline of its own.
        let old: super::StoredCode =
            serde_json::from_value(serde_json::to_value(&context).unwrap()).unwrap();
        assert_eq!(old.valid_until, None);
        assert!(old.is_valid_at(u64::MAX));
    }
}

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

use data_encoding::BASE64URL_NOPAD;
use rand::RngCore;

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
}

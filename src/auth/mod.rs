//! NATS decentralized-auth material: JWT claims, their signed encoding, and `.creds` files.
//!
//! The `nats-jwt` crate cannot express exports, imports, JetStream limits or revocations, so the
//! few claim shapes this project needs are written here (they follow nats-io/jwt v2, as verified
//! against nats-server 2.15.1 in `shared/research/auth-spike.md`). Minting is used by `bootstrap`,
//! `dev` and the tests; the service itself never mints or handles user secrets.

pub mod claims;
pub mod creds;
pub mod jwt;

pub use claims::{
    AccountClaims, AccountLimits, Export, ExportType, Import, OperatorClaims, ResponseType,
    UserClaims,
};
pub use creds::{format_creds, parse_creds, Creds};
pub use jwt::{decode, decode_unverified, encode, JwtError};

/// Returns true when `key` is a well-formed account public key (`A…`, checksum valid), as the
/// original's `nkeys.IsValidPublicAccountKey` checks it: the curve point is not decoded (that
/// costs more than the rest of a request and proves nothing the server has not).
///
/// The service uses this on the first subject token of every request: the export's token
/// position makes the server put the importer's key there, but subjects published inside the
/// service's own account are not rewritten, so the shape is still checked.
pub fn is_account_public_key(key: &str) -> bool {
    key.len() == 56
        && key.starts_with('A')
        && nkeys::from_public_key(key).is_ok_and(|(prefix, _)| {
            nkeys::KeyPairType::from(prefix) == nkeys::KeyPairType::Account
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_keys_are_recognised() {
        let account = nkeys::KeyPair::new_account();
        assert!(is_account_public_key(&account.public_key()));
        let user = nkeys::KeyPair::new_user();
        assert!(!is_account_public_key(&user.public_key()));
        let mut broken = account.public_key();
        broken.replace_range(10..11, if &broken[10..11] == "A" { "B" } else { "A" });
        assert!(!is_account_public_key(&broken));
        assert!(!is_account_public_key("none"));
        assert!(!is_account_public_key(""));
    }
}

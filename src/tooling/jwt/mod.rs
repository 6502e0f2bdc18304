//! NATS decentralized-auth material: JWT claims, their signed encoding, and `.creds` files.
//!
//! The `nats-jwt` crate cannot express exports, imports, JetStream limits or revocations, so the
//! few claim shapes this project needs are written here (they follow nats-io/jwt v2, as verified
//! against nats-server 2.15.1 in `shared/research/auth-spike.md`). Minting is used by `bootstrap`,
//! `dev` and the tests; the service itself never mints or handles user secrets.

pub mod claims;
pub mod creds;
pub mod encoding;

pub use claims::{
    AccountClaims, AccountLimits, Export, ExportType, Import, OperatorClaims, ResponseType,
    UserClaims,
};
pub use creds::{format_creds, parse_creds, Creds};
pub use encoding::{decode, decode_unverified, encode, JwtError};

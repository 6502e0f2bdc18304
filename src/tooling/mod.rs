//! Tooling around the service, never on its request path: the operator-mode world that
//! `bootstrap` and `dev` write (accounts with the contract's exports and imports), NATS JWT
//! minting, running `nats-server` as a child process, and the `nats` CLI's contexts.

pub mod bootstrap;
pub mod jwt;
pub mod nats_context;
pub mod natsd;

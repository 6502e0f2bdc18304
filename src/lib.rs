#![forbid(unsafe_code)]
#![warn(clippy::too_many_lines)]
//! natster-global: the global service of Natster, event-sourced on NATS JetStream.
//!
//! Identity comes from NATS decentralized auth: each request's first subject token is the
//! caller's account key, put there by the server through a secure account import.
//! `ARCHITECTURE.md` maps the modules; `README.md` says how to run it.
//!
//! What other programs use: the domain ([`model`]), the wire contract ([`contract`]), the
//! typed client ([`client`]), the service's entry points and settings ([`service`]), the
//! operator tooling ([`tooling`]) and the command line ([`cli`], what the binary runs).
//! Everything else is internal to the crate.

pub mod cli;
pub mod client;
pub mod contract;
pub mod model;
pub mod service;
pub mod tooling;

pub(crate) mod api;
pub(crate) mod crashpoint;
pub(crate) mod otc;
pub(crate) mod projections;
pub(crate) mod reactions;
pub(crate) mod store;
pub(crate) mod telemetry;
pub(crate) mod write;

#[cfg(feature = "test-util")]
pub mod test_util;

#![forbid(unsafe_code)]
//! natster-global: the global service of Natster, event-sourced on NATS JetStream.
//!
//! Identity comes from NATS decentralized auth: each request's first subject token is the
//! caller's account key, put there by the server through a secure account import. See
//! `README.md` for running it and the design document for the architecture.

pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod call;
pub mod cli;
pub mod client;
pub mod config;
pub mod config_file;
pub mod contract;
pub mod credentials;
pub mod decider;
pub mod dev;
pub mod events;
pub mod feeds;
pub mod lease;
pub mod model;
pub mod nats_context;
pub mod natsd;
pub mod online;
pub mod pinned;
pub mod projections;
pub mod projections_cmd;
pub mod reactor;
pub mod roundtrip;
pub mod seal;
pub mod service;
pub mod share_feed;
pub mod store;
pub mod telemetry;
pub mod testkit;

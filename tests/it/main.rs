//! Every integration test in one binary (one link instead of one per file), against real
//! nats-servers with real JWT accounts. Each module is one area of the product.

mod api_ops;
mod architecture;
mod bindings;
mod call;
mod cli_bootstrap_dev;
mod cli_exit;
mod client;
mod cluster;
mod cluster_faults;
mod compat;
mod contract;
mod crash;
mod decentralized_auth;
mod deploy;
mod feeds;
mod online;
mod operability;
mod ops_kit;
mod own_record;
mod parking;
mod process;
mod projections;
mod races;
mod retries;
mod serve;
mod snapshots;
mod tenancy;

#![forbid(unsafe_code)]
//! Test support shared by the integration tests and benchmarks of natster-global (a
//! dev-dependency only; the product never contains it): a real nats-server per test,
//! in operator mode from a freshly minted world or as plain JetStream, clients connected as any
//! account of the world, and a 3-node JetStream cluster on loopback.
//!
//! Everything a helper starts is killed, and its directories removed, when it is dropped.

mod bench;
mod harness;
mod http;
mod logs;
mod tls;
mod world;

pub use bench::{
    costed, cpu_list, cpu_seconds, percentile, publish_acked, rate_at_in_flight, raw_ordered_read,
    request_ok, timed_at_in_flight, Cost, Cpu, EventsPutLoad,
};
pub use harness::{call, init_data, put_event, seq_of, FeedReader, Harness};
pub use http::{http_get, http_get_with, metric_value, HttpResponse};
pub use logs::{
    dump_bucket, events_last_seq, expected_records, init_log, mixed_event_log, project_from_empty,
    publish_log, read_events, rebuild_projection, stream_last_seq, ProjectedBacklog,
};
pub use natster_global::test_util::sync;
pub use tls::{connect_creds_tls, TestCertificates};
pub use world::{
    connect_creds, operator_block, port, wait_for_jetstream, Cluster, PlainServer, TestWorld,
};

/// The environment variables that choose a connection (or the log level) for the binary: tests
/// that run `natster-global` remove them, so the machine's own settings never leak in.
pub const CONNECTION_ENV: &[&str] = &[
    "NATS_URL",
    "NATS_CREDS",
    "NATS_CONTEXT",
    "NATS_CA",
    "USER_JWT",
    "USER_SEED",
    "RUST_LOG",
];

//! Store primitives over JetStream, each written once: the service's streams and buckets and
//! their never-destructive creation; typed errors by what they mean (conflict, permanent,
//! unavailable); the compare-and-set layer over KV; the ordered log reader; leases and the
//! loop that runs work under one; durable consumers pinned to one instance; the round trip
//! that proves a connection's operations reached the server; pauses asked for by signals.

pub mod error;
pub mod follow;
pub mod kv;
pub mod lease;
pub mod log;
pub mod pause;
pub mod pinned;
mod resources;
pub mod roundtrip;

pub use error::{StoreError, StoreErrorKind};
pub use resources::*;

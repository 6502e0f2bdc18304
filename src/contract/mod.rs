//! The wire contract, stated once: the op table (name, request and reply types, whether it
//! writes), the one reply envelope, the messages, the feed kinds, the subjects, headers and
//! imports other accounts rely on, and the JSON Schemas generated from all of it.
//!
//! Everything here is data and pure functions; the service (`crate::api`), the typed client
//! (`crate::client`), `natster-global call` and `bootstrap` take the contract from here.

mod body;
mod envelope;
mod feeds;
mod messages;
mod ops;
pub mod schemas;
mod subjects;

pub use body::{BodyError, CatalogName, NoPayload, OAuthId, RequestBody, Shape};
pub use envelope::{Envelope, SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER};
pub use feeds::{feed_subject, FeedKind};
pub use messages::*;
pub use ops::{op, visit_ops, Op, OpVisitor, Operation};
pub use subjects::*;

//! Reactions to what the log and the heartbeats say: the feeds publisher (also the online
//! projection's notice hook), the auto-share of the hub catalog, and share notices. Each
//! reaction that must happen once per event runs on a durable consumer pinned to one instance
//! at a time (`crate::store::pinned`), acknowledging an event only after acting on it.

pub mod autoshare;
pub mod feeds;
pub mod share_notices;

pub use autoshare::HubShare;
pub use feeds::Feeds;

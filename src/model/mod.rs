//! The domain, as plain data and pure functions: events and their subjects, the decision
//! state and `decide`, the records the read models store, the catalog-online rule, and the
//! input rules. Nothing here touches NATS; everything here is deterministic.

pub mod bindings;
pub mod compact;
pub mod decide;
pub mod event;
pub mod intern;
pub mod limits;
pub mod online;
pub mod records;
pub mod state;
#[cfg(test)]
pub(crate) mod testing;
pub mod validate;

pub use decide::{decide, Command, Decision, Expectation, Rejection};
pub use event::{
    ContextBoundData, Decoded, Event, EventBody, EventSubject, EventType, InitData, NatsterContext,
    NONE,
};
pub use limits::ShareLimits;
pub use records::{AccountRecord, CatalogRecord, OAuthRecord, ShareRef};
pub use state::DecisionState;

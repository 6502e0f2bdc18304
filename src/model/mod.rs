//! The domain, as plain data and pure functions: events and their subjects, the decision
//! state and `decide`, read-model records. Nothing here touches NATS.

pub mod decide;
pub mod event;
pub mod records;
pub mod validate;

pub use decide::{decide, Command, Decision, DecisionState, Expectation, Rejection};
pub use event::{
    ContextBoundData, Event, EventBody, EventSubject, EventType, InitData, NatsterContext, NONE,
};
pub use records::*;

//! Test support of the domain: a seeded random source and a log made by `decide`.

use super::{decide, Command, DecisionState, Event};

/// A xorshift generator from `seed`: each call gives a number below its argument.
pub fn xorshift(seed: u64) -> impl FnMut(usize) -> usize {
    let mut state = seed;
    move |n| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    }
}

/// Decides `command` on `state`; if accepted, appends its event to `events` (next sequence,
/// time 1), folds it into `state` and returns `true`.
pub fn append_decided(
    state: &mut DecisionState,
    events: &mut Vec<Event>,
    command: &Command,
) -> bool {
    let Ok(decision) = decide(state, command) else {
        return false;
    };
    let event = Event {
        seq: events.len() as u64 + 1,
        time: 1,
        subject: decision.subject,
        body: decision.body,
    };
    state.apply(&event);
    events.push(event);
    true
}

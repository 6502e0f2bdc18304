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

/// A string of up to `max` characters drawn by `next` from ones JSON writes differently:
/// quotes, backslashes, control characters with and without a short escape, DEL, and
/// multi-byte characters beside plain letters.
pub fn awkward_string(next: &mut impl FnMut(usize) -> usize, max: usize) -> String {
    const CHARS: [char; 12] = [
        'a', 'Z', '7', '"', '\\', '\n', '\t', '\u{1}', '\u{1f}', '\u{7f}', 'é', '😀',
    ];
    (0..next(max + 1))
        .map(|_| CHARS[next(CHARS.len())])
        .collect()
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

/// A command of any kind over accounts `keys` and catalog `names`, as `next` draws it (many of
/// them refused by `decide`, as real traffic is).
pub fn random_command(
    next: &mut impl FnMut(usize) -> usize,
    keys: &[String],
    names: &[&str],
) -> Command {
    use super::{ContextBoundData, InitData, NatsterContext};
    let a = keys[next(keys.len())].clone();
    let b = keys[next(keys.len())].clone();
    let catalog = names[next(names.len())].to_string();
    match next(7) {
        0 => Command::Initialize {
            caller: a.clone(),
            data: InitData {
                account_key: a,
                ..InitData::default()
            },
        },
        1 | 2 => Command::Share {
            caller: a,
            target: b,
            catalog,
        },
        3 => Command::Unshare {
            caller: a,
            target: b,
            catalog,
        },
        4 => Command::Import {
            caller: a,
            owner: b,
            catalog,
        },
        5 => Command::AutoShare {
            hub: a,
            target: b,
            catalog,
        },
        _ => Command::BindContext {
            account: a.clone(),
            data: ContextBoundData {
                oauth_id: format!("oauth|{}", next(4)),
                bound_context: NatsterContext {
                    account_public_key: a,
                    ..NatsterContext::default()
                },
                ..ContextBoundData::default()
            },
        },
    }
}

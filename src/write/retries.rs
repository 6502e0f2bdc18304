//! The requests appended under a caller's idempotency key within the event stream's duplicate
//! window, folded from the log (so every instance knows them, and a restart forgets nothing):
//! what lets a retry get its original reply, and a different request reusing the key a 409.
//!
//! Bounded twice: an entry leaves once the window has passed it (by stream time), and past
//! [`MAX_REMEMBERED`] entries the oldest leave first (a retry that old is answered as a new
//! request, as the server's own duplicate window would).

use std::collections::{HashMap, VecDeque};

/// Most requests remembered at once (about 200 bytes each).
pub const MAX_REMEMBERED: usize = 200_000;

/// An earlier request appended under an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Earlier {
    /// Stream sequence of the event it appended.
    pub seq: u64,
    /// [`Command::fingerprint`](crate::model::Command::fingerprint) of that request.
    pub fingerprint: String,
    /// Stream time of the append (Unix seconds).
    pub time: i64,
}

/// One remembered request, as a snapshot stores it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Remembered {
    pub key: String,
    pub fingerprint: String,
    pub seq: u64,
    pub time: i64,
}

/// Recent requests by idempotency key.
#[derive(Debug)]
pub struct RecentRequests {
    window_secs: i64,
    by_key: HashMap<String, Earlier>,
    /// Keys in the order they were appended, with their sequences (a key appended again after
    /// its window holds its newest entry; the older queue slot is recognised by its sequence).
    order: VecDeque<(u64, String)>,
}

impl RecentRequests {
    /// Remembers requests for `window_secs` of stream time.
    pub fn new(window_secs: i64) -> RecentRequests {
        RecentRequests {
            window_secs: window_secs.max(1),
            by_key: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Remembers requests for `window_secs` of stream time, starting from `remembered`
    /// (oldest first, as [`RecentRequests::remembered`] lists them, e.g. from a snapshot).
    pub fn restore(window_secs: i64, remembered: &[Remembered]) -> RecentRequests {
        let mut recent = RecentRequests::new(window_secs);
        for r in remembered {
            recent.record(&r.key, &r.fingerprint, r.seq, r.time);
        }
        recent
    }

    /// Folds in a request appended at `seq`, stream time `time`. Calls come in stream order.
    pub fn record(&mut self, key: &str, fingerprint: &str, seq: u64, time: i64) {
        // The first append under a key is the one retries are answered with; the server
        // refuses a second within the window, so a later one is from after the window.
        if let Some(earlier) = self.by_key.get(key) {
            if earlier.time + self.window_secs > time {
                return;
            }
        }
        self.by_key.insert(
            key.to_string(),
            Earlier {
                seq,
                fingerprint: fingerprint.to_string(),
                time,
            },
        );
        self.order.push_back((seq, key.to_string()));
        self.forget_before(time - self.window_secs);
        while self.order.len() > MAX_REMEMBERED {
            self.pop_oldest();
        }
    }

    /// The earlier request under `key`, if it was appended less than a window before `now`
    /// (Unix seconds).
    pub fn get(&self, key: &str, now: i64) -> Option<&Earlier> {
        self.by_key
            .get(key)
            .filter(|earlier| earlier.time + self.window_secs > now)
    }

    /// Everything remembered, oldest first: recording these into an empty instance with the
    /// same window remembers the same.
    pub fn remembered(&self) -> Vec<Remembered> {
        self.order
            .iter()
            .filter_map(|(seq, key)| {
                let earlier = self.by_key.get(key).filter(|e| e.seq == *seq)?;
                Some(Remembered {
                    key: key.clone(),
                    fingerprint: earlier.fingerprint.clone(),
                    seq: *seq,
                    time: earlier.time,
                })
            })
            .collect()
    }

    /// Requests remembered.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    fn forget_before(&mut self, time: i64) {
        // A slot whose key was appended again since is stale: it goes whatever its time.
        while let Some((seq, key)) = self.order.front() {
            match self.by_key.get(key) {
                Some(earlier) if earlier.seq == *seq && earlier.time >= time => break,
                _ => self.pop_oldest(),
            }
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((seq, key)) = self.order.pop_front() {
            if self.by_key.get(&key).is_some_and(|e| e.seq == seq) {
                self.by_key.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_answers_with_its_first_append_within_the_window() {
        let mut recent = RecentRequests::new(120);
        recent.record("a:1", "f1", 10, 1_000);
        recent.record("a:1", "f2", 11, 1_050);
        let earlier = recent.get("a:1", 1_100).expect("remembered");
        assert_eq!((earlier.seq, earlier.fingerprint.as_str()), (10, "f1"));
        assert!(recent.get("a:1", 1_120).is_none(), "past the window");
        assert!(recent.get("b:1", 1_000).is_none());
    }

    #[test]
    fn entries_leave_with_the_window_and_past_the_cap() {
        let mut recent = RecentRequests::new(10);
        recent.record("a:1", "f", 1, 100);
        recent.record("a:2", "f", 2, 105);
        recent.record("a:3", "f", 3, 111);
        assert_eq!(recent.len(), 2, "a:1 left with the window");
        // A key reused after its window holds its new append, and its old slot cannot
        // evict it.
        recent.record("a:2", "g", 4, 116);
        recent.record("a:9", "f", 5, 121);
        assert_eq!(recent.get("a:2", 121).map(|e| e.seq), Some(4));
        for n in 0..MAX_REMEMBERED + 5 {
            recent.record(&format!("b:{n}"), "f", 10 + n as u64, 121);
        }
        assert_eq!(recent.len(), MAX_REMEMBERED);
        assert!(recent.get("b:0", 121).is_none(), "the oldest left first");
    }
}

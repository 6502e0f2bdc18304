//! How far the tail has folded the log, and the requests waiting for a later sequence.
//!
//! Waking is ordered by sequence: when the tail advances, only the waiters at or below the new
//! sequence are woken. A `tokio::sync::watch` would wake every waiter on every chunk, so an
//! account holding its whole share of slots on sequences the log does not hold would put that
//! many wake-ups in the runtime's queues after each chunk, ahead of the writers the chunk was
//! for. Here such a waiter costs nothing until its deadline, when it removes itself.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;

/// Why a wait ended without the sequence being reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("not reached in time")]
    Timeout,
    /// The tail has stopped: nothing will be folded any more.
    #[error("the tail has stopped")]
    Closed,
}

/// The folded sequence and its waiters; shared by the tail (which advances it) and requests.
#[derive(Default)]
pub struct Progress {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    reached: u64,
    /// The highest sequence the log is known to hold (acknowledged appends, the stream's
    /// state); the tail is stuck when it stays short of it.
    logged: u64,
    closed: bool,
    next_id: u64,
    /// Keyed by (sequence wanted, waiter id); a waiter that gives up removes its own entry.
    waiters: BTreeMap<(u64, u64), oneshot::Sender<()>>,
}

impl Progress {
    /// The last sequence folded.
    pub fn reached(&self) -> u64 {
        self.inner.lock().expect("progress lock").reached
    }

    /// Records that everything up to `seq` is folded and wakes the waiters it satisfies.
    /// A lower `seq` than before changes nothing.
    pub fn advance(&self, seq: u64) {
        let woken = {
            let mut inner = self.inner.lock().expect("progress lock");
            if seq <= inner.reached {
                return;
            }
            inner.reached = seq;
            let later = seq
                .checked_add(1)
                .map_or_else(BTreeMap::new, |next| inner.waiters.split_off(&(next, 0)));
            std::mem::replace(&mut inner.waiters, later)
        };
        for waiter in woken.into_values() {
            let _ = waiter.send(());
        }
    }

    /// Records that the log holds `seq`: an append was acknowledged at it, or the stream
    /// reported it as its end. Never a sequence a caller merely asked for.
    pub fn logged(&self, seq: u64) {
        let mut inner = self.inner.lock().expect("progress lock");
        inner.logged = inner.logged.max(seq);
    }

    /// Whether the log is known to hold a sequence the tail has not folded yet.
    pub fn behind(&self) -> bool {
        let inner = self.inner.lock().expect("progress lock");
        inner.logged > inner.reached
    }

    /// Ends every wait with [`WaitError::Closed`], now and from now on.
    pub fn close(&self) {
        let woken = {
            let mut inner = self.inner.lock().expect("progress lock");
            inner.closed = true;
            std::mem::take(&mut inner.waiters)
        };
        drop(woken);
    }

    /// Waits until `seq` is folded, at most `within`. Cancel-safe: a dropped wait removes
    /// its entry.
    pub async fn wait_for(&self, seq: u64, within: Duration) -> Result<(), WaitError> {
        let (key, reached) = {
            let mut inner = self.inner.lock().expect("progress lock");
            if inner.reached >= seq {
                return Ok(());
            }
            if inner.closed {
                return Err(WaitError::Closed);
            }
            let key = (seq, inner.next_id);
            inner.next_id += 1;
            let (tx, rx) = oneshot::channel();
            inner.waiters.insert(key, tx);
            (key, rx)
        };
        let _registered = Registered {
            progress: self,
            key,
        };
        match tokio::time::timeout(within, reached).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WaitError::Closed),
            Err(_) => Err(WaitError::Timeout),
        }
    }

    /// Waiters registered now.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.inner.lock().expect("progress lock").waiters.len()
    }
}

/// Removes a waiter's entry when its wait ends, however it ends.
struct Registered<'a> {
    progress: &'a Progress,
    key: (u64, u64),
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.progress
            .inner
            .lock()
            .expect("progress lock")
            .waiters
            .remove(&self.key);
    }
}

/// Closes `progress` when dropped: the tail holds one, so a tail that ends (or panics) ends
/// every wait.
pub struct CloseOnDrop(pub std::sync::Arc<Progress>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::{Progress, WaitError};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_wait_ends_when_its_sequence_is_folded_and_not_before() {
        let progress = Arc::new(Progress::default());
        let waiting = {
            let progress = progress.clone();
            tokio::spawn(async move { progress.wait_for(5, Duration::from_secs(10)).await })
        };
        while progress.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        progress.advance(4);
        assert_eq!(progress.waiting(), 1, "4 does not satisfy a wait for 5");
        progress.advance(7);
        assert_eq!(waiting.await.expect("task"), Ok(()));
        assert_eq!(progress.waiting(), 0);
        assert_eq!(progress.reached(), 7);
        progress.advance(3);
        assert_eq!(progress.reached(), 7, "never goes back");
        assert_eq!(progress.wait_for(6, Duration::ZERO).await, Ok(()));
    }

    #[tokio::test]
    async fn advancing_wakes_only_the_waiters_it_satisfies() {
        let progress = Arc::new(Progress::default());
        let far = {
            let progress = progress.clone();
            tokio::spawn(async move {
                progress
                    .wait_for(u64::MAX / 2, Duration::from_secs(10))
                    .await
            })
        };
        let near = {
            let progress = progress.clone();
            tokio::spawn(async move { progress.wait_for(2, Duration::from_secs(10)).await })
        };
        while progress.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        progress.advance(2);
        assert_eq!(near.await.expect("task"), Ok(()));
        assert_eq!(
            progress.waiting(),
            1,
            "the far waiter is still registered, not woken"
        );
        far.abort();
        let _ = far.await;
        assert_eq!(progress.waiting(), 0, "a cancelled wait removes itself");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_times_out_removes_itself() {
        let progress = Progress::default();
        assert_eq!(
            progress.wait_for(9, Duration::from_millis(250)).await,
            Err(WaitError::Timeout)
        );
        assert_eq!(progress.waiting(), 0);
    }

    #[tokio::test]
    async fn closing_ends_every_wait_now_and_later() {
        let progress = Arc::new(Progress::default());
        let waiting = {
            let progress = progress.clone();
            tokio::spawn(async move { progress.wait_for(3, Duration::from_secs(10)).await })
        };
        while progress.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        drop(super::CloseOnDrop(progress.clone()));
        assert_eq!(waiting.await.expect("task"), Err(WaitError::Closed));
        assert_eq!(
            progress.wait_for(3, Duration::from_secs(10)).await,
            Err(WaitError::Closed)
        );
    }
}

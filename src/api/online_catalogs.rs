//! The cap on catalogs online per account, as this instance sees it.
//!
//! Every instance remembers, per owner, the catalogs it took a heartbeat for within the
//! online TTL. A heartbeat for a catalog the owner already has online refreshes it; one for a
//! new catalog is refused once the owner has `cap` catalogs online; an offline heartbeat
//! forgets the catalog. Heartbeats reach instances through a queue group, so each instance
//! sees every online catalog within a few heartbeat periods and the cap holds per instance:
//! with `k` instances an account holds at most `k × cap` catalogs online, and usually `cap`.
//!
//! Memory: at most `cap` catalogs per owner, and owners whose catalogs all expired are dropped
//! as the map is swept (every [`SWEEP_EVERY`] new catalogs).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// New catalogs between two sweeps of expired entries.
const SWEEP_EVERY: usize = 4096;

/// Why a heartbeat's catalog is not taken online.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this account already has {cap} catalogs online (online-catalogs limit {cap}); stop one or \
     let it expire first"
)]
pub struct OnlineCapReached {
    pub cap: usize,
}

/// Catalogs online per owner, with when each was last seen.
pub struct OnlineCatalogs {
    cap: usize,
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_owner: HashMap<String, HashMap<String, Instant>>,
    added_since_sweep: usize,
}

impl OnlineCatalogs {
    /// At most `cap` catalogs per owner, each online for `ttl` after its last heartbeat.
    pub fn new(cap: usize, ttl: Duration) -> OnlineCatalogs {
        OnlineCatalogs {
            cap,
            ttl,
            inner: Mutex::default(),
        }
    }

    /// Records a heartbeat of `owner` for `catalog` at `now` (`offline`: the catalog stops).
    pub fn heartbeat(
        &self,
        owner: &str,
        catalog: &str,
        offline: bool,
        now: Instant,
    ) -> Result<(), OnlineCapReached> {
        let mut inner = self.inner.lock().expect("online catalogs lock");
        if offline {
            if let Some(catalogs) = inner.by_owner.get_mut(owner) {
                catalogs.remove(catalog);
            }
            return Ok(());
        }
        let ttl = self.ttl;
        let catalogs = inner.by_owner.entry(owner.to_string()).or_default();
        if let Some(seen) = catalogs.get_mut(catalog) {
            *seen = now;
            return Ok(());
        }
        if catalogs.len() >= self.cap {
            catalogs.retain(|_, seen| now.duration_since(*seen) < ttl);
            if catalogs.len() >= self.cap {
                return Err(OnlineCapReached { cap: self.cap });
            }
        }
        catalogs.insert(catalog.to_string(), now);
        inner.added_since_sweep += 1;
        if inner.added_since_sweep >= SWEEP_EVERY {
            inner.added_since_sweep = 0;
            inner.by_owner.retain(|_, catalogs| {
                catalogs.retain(|_, seen| now.duration_since(*seen) < ttl);
                !catalogs.is_empty()
            });
        }
        Ok(())
    }

    /// Owners tracked now (for tests of the memory bound).
    #[cfg(test)]
    fn owners(&self) -> usize {
        self.inner
            .lock()
            .expect("online catalogs lock")
            .by_owner
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_counts_distinct_catalogs_online_and_frees_a_slot_on_offline_or_expiry() {
        let ttl = Duration::from_secs(180);
        let online = OnlineCatalogs::new(2, ttl);
        let t0 = Instant::now();
        assert!(online.heartbeat("A", "one", false, t0).is_ok());
        assert!(online.heartbeat("A", "two", false, t0).is_ok());
        // Steady heartbeats of online catalogs are always taken.
        assert!(online.heartbeat("A", "one", false, t0).is_ok());
        assert_eq!(
            online.heartbeat("A", "three", false, t0),
            Err(OnlineCapReached { cap: 2 })
        );
        // Another account has its own cap.
        assert!(online.heartbeat("B", "three", false, t0).is_ok());
        // Stopping a catalog frees its slot.
        assert!(online.heartbeat("A", "two", true, t0).is_ok());
        assert!(online.heartbeat("A", "three", false, t0).is_ok());
        // So does its expiry.
        let later = t0 + ttl + Duration::from_secs(1);
        assert!(online.heartbeat("A", "four", false, later).is_ok());
        assert!(online.heartbeat("A", "five", false, later).is_ok());
        assert!(online.heartbeat("A", "six", false, later).is_err());
    }

    #[test]
    fn owners_whose_catalogs_expired_are_swept() {
        let ttl = Duration::from_secs(1);
        let online = OnlineCatalogs::new(10, ttl);
        let t0 = Instant::now();
        for i in 0..SWEEP_EVERY - 1 {
            online
                .heartbeat(&format!("owner{i}"), "c", false, t0)
                .unwrap();
        }
        assert_eq!(online.owners(), SWEEP_EVERY - 1);
        online
            .heartbeat("last", "c", false, t0 + Duration::from_secs(2))
            .unwrap();
        assert_eq!(online.owners(), 1, "only the fresh owner is left");
    }
}

//! Fair shares of the in-flight slots: one account holds at most `per_account` of them.
//!
//! The intake takes an account's slot before the shared in-flight permit. A request of an
//! account that holds its share already waits for one of that account's slots in a task of
//! its own — never in the endpoint loop, so other accounts' requests go on — with at most
//! `per_account` such waiters per account and `max_waiting` across all accounts; past that it
//! is refused (429, or dropped and counted for a request without a reply subject). A flood
//! from one account (reads waiting on `Natster-Min-Seq` included) thus holds at most its
//! share of the slots everybody needs. A slot is held until the request is answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Slots by account.
pub struct AccountSlots {
    per_account: usize,
    max_waiting: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    accounts: HashMap<String, Account>,
    waiting: usize,
}

struct Account {
    slots: Arc<Semaphore>,
    /// Requests holding or waiting for one of the account's slots.
    users: usize,
    waiting: usize,
}

/// What the intake may do with a request.
pub enum Admission {
    /// A slot of the account, taken.
    Now(Slot),
    /// Wait for a slot of the account.
    Wait(WaitingSlot),
    /// The account holds its share and as many waiters: refuse.
    Refused,
}

/// One account's slot; given back when dropped.
pub struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    _user: User,
}

/// A turn in the account's queue for a slot.
pub struct WaitingSlot {
    slots: Arc<Semaphore>,
    user: User,
}

/// A request counted as a user of an account's slots.
struct User {
    owner: Arc<AccountSlots>,
    account: String,
    waiting: bool,
}

impl AccountSlots {
    /// At most `per_account` slots per account; at most `max_waiting` requests waiting for a
    /// slot across all accounts.
    pub fn new(per_account: usize, max_waiting: usize) -> Arc<AccountSlots> {
        Arc::new(AccountSlots {
            per_account: per_account.max(1),
            max_waiting,
            inner: Mutex::default(),
        })
    }

    /// The most one account may hold.
    pub fn per_account(&self) -> usize {
        self.per_account
    }

    /// Admits a request of `account`.
    pub fn admit(self: &Arc<Self>, account: &str) -> Admission {
        let mut inner = self.inner.lock().expect("slots lock");
        let per_account = self.per_account;
        let total_waiting = inner.waiting;
        let entry = inner
            .accounts
            .entry(account.to_string())
            .or_insert_with(|| Account {
                slots: Arc::new(Semaphore::new(per_account)),
                users: 0,
                waiting: 0,
            });
        if let Ok(permit) = entry.slots.clone().try_acquire_owned() {
            entry.users += 1;
            return Admission::Now(Slot {
                _permit: Some(permit),
                _user: self.user(account, false),
            });
        }
        if entry.waiting >= per_account || total_waiting >= self.max_waiting {
            if entry.users == 0 {
                inner.accounts.remove(account);
            }
            return Admission::Refused;
        }
        entry.users += 1;
        entry.waiting += 1;
        let slots = entry.slots.clone();
        inner.waiting += 1;
        Admission::Wait(WaitingSlot {
            slots,
            user: self.user(account, true),
        })
    }

    fn user(self: &Arc<Self>, account: &str, waiting: bool) -> User {
        User {
            owner: self.clone(),
            account: account.to_string(),
            waiting,
        }
    }
}

impl WaitingSlot {
    /// Waits for the account's slot.
    pub async fn acquired(mut self) -> Slot {
        let permit = self.slots.clone().acquire_owned().await.ok();
        self.user.stop_waiting();
        Slot {
            _permit: permit,
            _user: self.user,
        }
    }
}

impl User {
    fn stop_waiting(&mut self) {
        if std::mem::take(&mut self.waiting) {
            let mut inner = self.owner.inner.lock().expect("slots lock");
            inner.waiting -= 1;
            if let Some(account) = inner.accounts.get_mut(&self.account) {
                account.waiting -= 1;
            }
        }
    }
}

impl Drop for User {
    fn drop(&mut self) {
        self.stop_waiting();
        let mut inner = self.owner.inner.lock().expect("slots lock");
        if let Some(account) = inner.accounts.get_mut(&self.account) {
            account.users -= 1;
            if account.users == 0 {
                inner.accounts.remove(&self.account);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(admission: Admission) -> Slot {
        match admission {
            Admission::Now(slot) => slot,
            _ => panic!("expected a slot at once"),
        }
    }

    #[tokio::test]
    async fn an_account_holds_at_most_its_share_and_waits_in_a_bounded_queue() {
        let slots = AccountSlots::new(2, 100);
        let first = now(slots.admit("A"));
        let _second = now(slots.admit("A"));
        let Admission::Wait(w1) = slots.admit("A") else {
            panic!("the third waits")
        };
        let Admission::Wait(_w2) = slots.admit("A") else {
            panic!("the fourth waits")
        };
        assert!(matches!(slots.admit("A"), Admission::Refused), "queue full");
        let _b = now(slots.admit("B"));
        drop(first);
        let _third = w1.acquired().await;
        assert!(
            matches!(slots.admit("A"), Admission::Wait(_)),
            "a waiter left the queue"
        );
    }

    #[tokio::test]
    async fn idle_accounts_leave_nothing_behind_and_waiting_is_bounded_overall() {
        let slots = AccountSlots::new(1, 1);
        let a = now(slots.admit("A"));
        let b = now(slots.admit("B"));
        let Admission::Wait(wait) = slots.admit("A") else {
            panic!("waits")
        };
        assert!(
            matches!(slots.admit("B"), Admission::Refused),
            "one waiter overall"
        );
        drop(a);
        drop(wait.acquired().await);
        drop(b);
        assert!(slots.inner.lock().unwrap().accounts.is_empty());
        assert_eq!(slots.inner.lock().unwrap().waiting, 0);
    }
}

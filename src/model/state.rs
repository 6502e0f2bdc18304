//! The decision state: everything `decide` looks at, folded from the event log in stream order
//! by [`DecisionState::apply`]. Pure: the shell (`crate::write`) feeds it the log.

use super::event::{Decoded, Event, EventBody, EventSubject, EventType, NONE};
use std::collections::{BTreeMap, HashMap};

/// Decision-relevant facts of one account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountAggregate {
    /// Sequence of the account's first `natster_initialized`; 0 = not initialised.
    pub init_seq: u64,
    /// Sequence of the last event on the account's `context_bound` subject; 0 = none.
    pub context_seq: u64,
    /// Active shares from this account, as owner.
    pub out_shares: usize,
    /// Active shares to this account.
    pub in_shares: usize,
}

/// Decision-relevant facts of one share of a catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareState {
    /// The target imported the catalog while this share is active.
    pub imported: bool,
}

/// Decision-relevant facts of one catalog name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogAggregate {
    /// The first account that shared this name owns it (for good).
    pub owner: String,
    /// Active shares by target account.
    pub shares: BTreeMap<String, ShareState>,
    /// Sequence of the last event of this catalog aggregate (any type); 0 = none.
    pub last_seq: u64,
}

/// Everything `decide` looks at, folded from the log in sequence order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionState {
    pub accounts: HashMap<String, AccountAggregate>,
    pub catalogs: HashMap<String, CatalogAggregate>,
    /// Last sequence on each `origin.target.catalog` pair (any event type).
    pub pairs: HashMap<String, u64>,
    /// Which OAuth id each account is bound to.
    pub bindings: super::bindings::Bindings,
    /// Last stream sequence folded in.
    pub last_seq: u64,
    /// The share limits `decide` enforces (settings, not folded from the log).
    pub limits: super::limits::ShareLimits,
}

impl DecisionState {
    /// An empty state whose decisions enforce `limits`.
    pub fn with_limits(limits: super::limits::ShareLimits) -> DecisionState {
        DecisionState {
            limits,
            ..DecisionState::default()
        }
    }
}

impl DecisionState {
    /// Folds one event in. Events must come in stream order; an event at or below
    /// `last_seq` is ignored (idempotent).
    ///
    /// A catalog's `last_seq` moves with every event on its aggregate subject, valid or not,
    /// because that is what the server compares the expectation with. Shares and unshares by
    /// an account other than the owner (possible only in adopted historical logs) change
    /// nothing else.
    pub fn apply(&mut self, event: &Event) {
        if event.seq <= self.last_seq {
            return;
        }
        self.last_seq = event.seq;
        let s = &event.subject;
        match s.event_type {
            EventType::NatsterInitialized => {
                let account = self.accounts.entry(s.origin.clone()).or_default();
                if account.init_seq == 0 {
                    account.init_seq = event.seq;
                }
            }
            EventType::ContextBound => {
                // Only the exact subject a binding is guarded by counts for its expectation;
                // every binding counts for who is bound to whom, as in the projections.
                if s.target == NONE && s.catalog == NONE {
                    self.accounts
                        .entry(s.origin.clone())
                        .or_default()
                        .context_seq = event.seq;
                }
                if let EventBody::ContextBound(data) = &event.body {
                    if !data.oauth_id.is_empty() {
                        self.bindings.bind(&s.origin, &data.oauth_id);
                    }
                }
            }
            _ => {}
        }
        if s.catalog == NONE {
            return;
        }
        // A share without a real other account (possible only in adopted logs) moves the
        // aggregate's sequence but makes no owner and no share, as in the projections.
        let no_real_target = s.target == NONE || s.target == s.origin;
        self.pairs.insert(s.pair_key(), event.seq);
        let catalog = self.catalogs.entry(s.catalog.clone()).or_default();
        catalog.last_seq = event.seq;
        let mut share_change = 0;
        match s.event_type {
            EventType::CatalogShared if !no_real_target => {
                if catalog.owner.is_empty() {
                    catalog.owner = s.origin.clone();
                }
                if catalog.owner == s.origin && !catalog.shares.contains_key(&s.target) {
                    catalog
                        .shares
                        .insert(s.target.clone(), ShareState::default());
                    share_change = 1;
                }
            }
            EventType::CatalogUnshared
                if !no_real_target
                    && catalog.owner == s.origin
                    && catalog.shares.remove(&s.target).is_some() =>
            {
                share_change = -1;
            }
            EventType::CatalogImported if catalog.owner == s.target => {
                if let Some(share) = catalog.shares.get_mut(&s.origin) {
                    share.imported = true;
                }
            }
            _ => {}
        }
        if share_change != 0 {
            self.count_share(&s.origin, &s.target, share_change);
        }
    }

    fn count_share(&mut self, owner: &str, target: &str, change: isize) {
        let owner = self.accounts.entry(owner.to_string()).or_default();
        owner.out_shares = owner.out_shares.saturating_add_signed(change);
        let target = self.accounts.entry(target.to_string()).or_default();
        target.in_shares = target.in_shares.saturating_add_signed(change);
    }

    /// Active shares from `owner` and to `target` (0 for accounts never seen).
    pub(super) fn share_counts(&self, owner: &str, target: &str) -> (usize, usize) {
        let out = self.accounts.get(owner).map_or(0, |a| a.out_shares);
        let into = self.accounts.get(target).map_or(0, |a| a.in_shares);
        (out, into)
    }

    /// Folds in an event whose subject has the event layout but a type this version does not
    /// know (adopted logs): it still moves its pair's and catalog's sequences.
    pub fn apply_unknown(&mut self, seq: u64, origin: &str, target: &str, catalog: &str) {
        if seq <= self.last_seq {
            return;
        }
        self.last_seq = seq;
        if catalog != NONE {
            self.pairs
                .insert(format!("{origin}.{target}.{catalog}"), seq);
            self.catalogs
                .entry(catalog.to_string())
                .or_default()
                .last_seq = seq;
        }
    }

    /// Folds in any message of the log, as [`Decoded`] describes it.
    pub fn apply_decoded(&mut self, message: &Decoded) {
        match message {
            Decoded::Event(event) => self.apply(event),
            Decoded::Unknown {
                seq,
                origin,
                target,
                catalog,
            } => self.apply_unknown(*seq, origin, target, catalog),
            Decoded::Foreign { seq } => self.skip(*seq),
        }
    }

    /// Moves past a message that is not an event at all.
    pub fn skip(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    /// Whether `account` has initialised.
    pub fn is_initialized(&self, account: &str) -> bool {
        self.accounts.get(account).is_some_and(|a| a.init_seq > 0)
    }

    /// The owner of catalog `name`, if anyone shared it.
    pub fn owner_of(&self, name: &str) -> Option<&str> {
        self.catalogs
            .get(name)
            .map(|c| c.owner.as_str())
            .filter(|o| !o.is_empty())
    }

    /// Accounts `owner`'s catalog `name` is actively shared with (none when `owner` does not
    /// own it).
    pub fn shared_with(&self, name: &str, owner: &str) -> Vec<String> {
        self.catalogs
            .get(name)
            .filter(|c| c.owner == owner)
            .map(|c| c.shares.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub(super) fn pair_last_seq(&self, subject: &EventSubject) -> u64 {
        self.pairs.get(&subject.pair_key()).copied().unwrap_or(0)
    }

    pub(super) fn active_share(
        &self,
        owner: &str,
        target: &str,
        name: &str,
    ) -> Option<&ShareState> {
        self.catalogs
            .get(name)
            .filter(|c| c.owner == owner)
            .and_then(|c| c.shares.get(target))
    }
}

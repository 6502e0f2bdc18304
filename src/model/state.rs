//! The decision state: everything `decide` looks at, folded from the event log in stream order
//! by [`DecisionState::apply`]. Pure: the shell (`crate::write`) feeds it the log.
//!
//! Compact by construction, because every instance holds it for the whole history: account
//! keys and catalog names are interned once ([`Interner`]) and every fact refers to them by a
//! `u32` id, so memory grows by tens of bytes per account, catalog and share pair, not by the
//! length of their strings each time they are mentioned. It serialises (serde) as it is held,
//! which is what a snapshot of it stores.

use super::compact;
use super::event::{Decoded, Event, EventBody, EventSubject, EventType, NONE};
use super::intern::Interner;
use serde::{Deserialize, Serialize};

/// Decision-relevant facts of one account (or of any other token the log names as one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountAggregate {
    /// Sequence of the account's first `natster_initialized`; 0 = not initialised.
    pub init_seq: u64,
    /// Sequence of the last event on the account's `context_bound` subject; 0 = none.
    pub context_seq: u64,
    /// Active shares from this account, as owner.
    pub out_shares: u32,
    /// Active shares to this account.
    pub in_shares: u32,
}

/// Decision-relevant facts of one share of a catalog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareState {
    /// The target imported the catalog while this share is active.
    pub imported: bool,
}

/// No owner yet (an id no interner gives out in practice).
const NO_OWNER: u32 = u32::MAX;

/// Decision-relevant facts of one catalog name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CatalogAggregate {
    /// The first account that shared this name owns it (for good); [`NO_OWNER`] until then.
    owner: u32,
    /// Sequence of the last event of this catalog aggregate (any type); 0 = none.
    last_seq: u64,
    /// Active shares, sorted by target account id.
    shares: Vec<(u32, ShareState)>,
    /// Last sequence on each `origin.target` pair of this name (any event type), sorted by
    /// pair: a few per name, held here rather than in one map keyed by all three ids (at
    /// 3 M events a map of two million pairs held four million slots).
    pairs: Vec<(u32, u32, u64)>,
}

impl Default for CatalogAggregate {
    fn default() -> Self {
        CatalogAggregate {
            owner: NO_OWNER,
            last_seq: 0,
            shares: Vec::new(),
            pairs: Vec::new(),
        }
    }
}

impl CatalogAggregate {
    fn share(&self, target: u32) -> Option<&ShareState> {
        let at = self.shares.binary_search_by_key(&target, |s| s.0).ok()?;
        Some(&self.shares[at].1)
    }

    fn pair_last_seq(&self, origin: u32, target: u32) -> u64 {
        match self
            .pairs
            .binary_search_by_key(&(origin, target), |p| (p.0, p.1))
        {
            Ok(at) => self.pairs[at].2,
            Err(_) => 0,
        }
    }

    /// Moves the pair's sequence to `seq`; whether the pair is new.
    fn touch_pair(&mut self, origin: u32, target: u32, seq: u64) -> bool {
        match self
            .pairs
            .binary_search_by_key(&(origin, target), |p| (p.0, p.1))
        {
            Ok(at) => {
                self.pairs[at].2 = seq;
                false
            }
            Err(at) => {
                compact::reserve_one(&mut self.pairs);
                self.pairs.insert(at, (origin, target, seq));
                true
            }
        }
    }
}

/// A catalog as the decision state knows it, by name (for tests and checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogFacts {
    pub name: String,
    /// Empty until someone shared it.
    pub owner: String,
    pub last_seq: u64,
    /// Active shares by target account.
    pub shares: std::collections::BTreeMap<String, ShareState>,
}

/// Everything `decide` looks at, folded from the log in sequence order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionState {
    /// Every token the log names as an origin or target.
    accounts: Interner,
    /// Facts by account id.
    account_facts: Vec<AccountAggregate>,
    catalog_names: Interner,
    /// Facts by catalog id.
    catalogs: Vec<CatalogAggregate>,
    /// Pairs with a sequence, over all catalog names.
    pair_count: u64,
    /// Which OAuth id each account is bound to.
    pub bindings: super::bindings::Bindings,
    /// Last stream sequence folded in.
    pub last_seq: u64,
    /// The share limits `decide` enforces (settings, not folded from the log, not stored).
    #[serde(skip)]
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
        let origin = self.account_id(&s.origin);
        match s.event_type {
            EventType::NatsterInitialized => {
                let account = &mut self.account_facts[origin as usize];
                if account.init_seq == 0 {
                    account.init_seq = event.seq;
                }
            }
            EventType::ContextBound => {
                // Only the exact subject a binding is guarded by counts for its expectation;
                // every binding counts for who is bound to whom, as in the projections.
                if s.target == NONE && s.catalog == NONE {
                    self.account_facts[origin as usize].context_seq = event.seq;
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
        let target = self.account_id(&s.target);
        let catalog = self.touch_catalog(origin, target, &s.catalog, event.seq);
        // A share without a real other account (possible only in adopted logs) moves the
        // aggregate's sequence but makes no owner and no share, as in the projections.
        let real_target = s.target != NONE && target != origin;
        let aggregate = &mut self.catalogs[catalog as usize];
        let change = match s.event_type {
            EventType::CatalogShared if real_target => {
                if aggregate.owner == NO_OWNER {
                    aggregate.owner = origin;
                }
                match aggregate.shares.binary_search_by_key(&target, |s| s.0) {
                    Err(at) if aggregate.owner == origin => {
                        compact::reserve_one(&mut aggregate.shares);
                        aggregate.shares.insert(at, (target, ShareState::default()));
                        1
                    }
                    _ => 0,
                }
            }
            EventType::CatalogUnshared if real_target && aggregate.owner == origin => {
                match aggregate.shares.binary_search_by_key(&target, |s| s.0) {
                    Ok(at) => {
                        aggregate.shares.remove(at);
                        -1
                    }
                    Err(_) => 0,
                }
            }
            EventType::CatalogImported if aggregate.owner == target => {
                if let Ok(at) = aggregate.shares.binary_search_by_key(&origin, |s| s.0) {
                    aggregate.shares[at].1.imported = true;
                }
                0
            }
            _ => 0,
        };
        if change != 0 {
            self.count_share(origin, target, change);
        }
    }

    /// The id of account token `key`, with a facts slot.
    fn account_id(&mut self, key: &str) -> u32 {
        let id = self.accounts.intern(key);
        if id as usize == self.account_facts.len() {
            self.account_facts.push(AccountAggregate::default());
        }
        id
    }

    /// Moves the sequences of catalog `name` and of its pair to `seq`; the catalog's id.
    fn touch_catalog(&mut self, origin: u32, target: u32, name: &str, seq: u64) -> u32 {
        let id = self.catalog_names.intern(name);
        if id as usize == self.catalogs.len() {
            self.catalogs.push(CatalogAggregate::default());
        }
        let catalog = &mut self.catalogs[id as usize];
        catalog.last_seq = seq;
        self.pair_count += catalog.touch_pair(origin, target, seq) as u64;
        id
    }

    fn count_share(&mut self, owner: u32, target: u32, change: i32) {
        let owner = &mut self.account_facts[owner as usize];
        owner.out_shares = owner.out_shares.saturating_add_signed(change);
        let target = &mut self.account_facts[target as usize];
        target.in_shares = target.in_shares.saturating_add_signed(change);
    }

    /// Folds in an event whose subject has the event layout but a type this version does not
    /// know (adopted logs): it still moves its pair's and catalog's sequences.
    pub fn apply_unknown(&mut self, seq: u64, origin: &str, target: &str, catalog: &str) {
        if seq <= self.last_seq {
            return;
        }
        self.last_seq = seq;
        if catalog != NONE {
            let (origin, target) = (self.account_id(origin), self.account_id(target));
            self.touch_catalog(origin, target, catalog, seq);
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

    /// What the state knows of account `key` (defaults for one the log never named).
    pub fn account_facts(&self, key: &str) -> AccountAggregate {
        self.accounts
            .get(key)
            .map(|id| self.account_facts[id as usize])
            .unwrap_or_default()
    }

    fn catalog(&self, name: &str) -> Option<&CatalogAggregate> {
        let id = self.catalog_names.get(name)?;
        Some(&self.catalogs[id as usize])
    }

    /// Whether `account` has initialised.
    pub fn is_initialized(&self, account: &str) -> bool {
        self.account_facts(account).init_seq > 0
    }

    /// Sequence of the last event on `account`'s binding subject (0 = none).
    pub fn context_seq(&self, account: &str) -> u64 {
        self.account_facts(account).context_seq
    }

    /// The owner of catalog `name`, if anyone shared it.
    pub fn owner_of(&self, name: &str) -> Option<&str> {
        let owner = self.catalog(name)?.owner;
        (owner != NO_OWNER).then(|| self.accounts.name(owner))
    }

    /// Accounts `owner`'s catalog `name` is actively shared with, sorted (none when `owner`
    /// does not own it).
    pub fn shared_with(&self, name: &str, owner: &str) -> Vec<String> {
        let mut targets: Vec<String> = self
            .catalog(name)
            .filter(|c| c.owner != NO_OWNER && self.accounts.name(c.owner) == owner)
            .map(|c| {
                let names = c.shares.iter().map(|s| self.accounts.name(s.0));
                names.map(str::to_string).collect()
            })
            .unwrap_or_default();
        targets.sort_unstable();
        targets
    }

    /// How many accounts catalog `name` is actively shared with.
    pub fn catalog_share_count(&self, name: &str) -> usize {
        self.catalog(name).map_or(0, |c| c.shares.len())
    }

    /// Active shares from `owner` and to `target` (0 for accounts never seen).
    pub fn share_counts(&self, owner: &str, target: &str) -> (usize, usize) {
        let out = self.account_facts(owner).out_shares as usize;
        let into = self.account_facts(target).in_shares as usize;
        (out, into)
    }

    pub(super) fn pair_last_seq(&self, subject: &EventSubject) -> u64 {
        let id = |interner: &Interner, name: &str| interner.get(name);
        let key = (
            id(&self.accounts, &subject.origin),
            id(&self.accounts, &subject.target),
            id(&self.catalog_names, &subject.catalog),
        );
        match key {
            (Some(o), Some(t), Some(c)) => self.catalogs[c as usize].pair_last_seq(o, t),
            _ => 0,
        }
    }

    pub(super) fn active_share(&self, owner: &str, target: &str, name: &str) -> Option<ShareState> {
        let catalog = self.catalog(name)?;
        let owner = self.accounts.get(owner)?;
        if catalog.owner != owner {
            return None;
        }
        catalog.share(self.accounts.get(target)?).copied()
    }

    /// Every catalog name the log mentions, in order of first appearance.
    pub fn catalogs(&self) -> impl Iterator<Item = CatalogFacts> + '_ {
        (0..self.catalogs.len()).map(|id| self.facts_of_catalog(id as u32))
    }

    /// What the state knows of catalog `name`, if the log mentions it.
    pub fn catalog_facts(&self, name: &str) -> Option<CatalogFacts> {
        Some(self.facts_of_catalog(self.catalog_names.get(name)?))
    }

    fn facts_of_catalog(&self, id: u32) -> CatalogFacts {
        let c = &self.catalogs[id as usize];
        CatalogFacts {
            name: self.catalog_names.name(id).to_string(),
            owner: match c.owner {
                NO_OWNER => String::new(),
                owner => self.accounts.name(owner).to_string(),
            },
            last_seq: c.last_seq,
            shares: (c.shares.iter())
                .map(|&(target, share)| (self.accounts.name(target).to_string(), share))
                .collect(),
        }
    }

    /// Sizes of what the state holds: account tokens, catalog names, share pairs.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.accounts.len(),
            self.catalog_names.len(),
            self.pair_count as usize,
        )
    }
}

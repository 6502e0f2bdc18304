//! Decisions: `decide(state, command) -> Decision | Rejection`, pure, against the state folded
//! from the event log by [`DecisionState::apply`].
//!
//! The shell (see `crate::decider`) appends the decided event with the decision's
//! [`Expectation`] so that two instances deciding on the same aggregate cannot both win: a stale
//! decision fails at the server, the shell folds the newer events, and decides again.
//!
//! Guards: an account's initialisation by its exact init subject
//! (`natster.events.<acc>.none.none.natster_initialized`); a share, unshare or import by its
//! (origin, target, catalog) pair, `natster.events.<origin>.<target>.<catalog>.*`; a context
//! binding by its exact subject. Who owns a catalog name is settled by a claim: the first share
//! of an unowned name carries [`Decision::claim`], which the shell makes with an atomic create
//! in a names bucket before appending, so two accounts racing for one name cannot both win
//! (a wildcard guard over all accounts, `natster.events.*.*.<catalog>.*`, would do the same
//! but costs the server a scan of every subject per append).

use super::event::{ContextBoundData, Event, EventBody, EventSubject, EventType, InitData, NONE};
use std::collections::{BTreeMap, HashMap};

/// Decision-relevant facts of one account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountAggregate {
    /// Sequence of the account's first `natster_initialized`; 0 = not initialised.
    pub init_seq: u64,
    /// Sequence of the last event on the account's `context_bound` subject; 0 = none.
    pub context_seq: u64,
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
    /// Last stream sequence folded in.
    pub last_seq: u64,
}

/// What a caller asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `natster_initialized` by `caller` (data must name the caller's key).
    Initialize { caller: String, data: InitData },
    /// `catalog_shared` from `caller` to `target`.
    Share {
        caller: String,
        target: String,
        catalog: String,
    },
    /// `catalog_unshared` by the owner `caller` for `target`.
    Unshare {
        caller: String,
        target: String,
        catalog: String,
    },
    /// `catalog_imported` by `caller`, the target of an active share from `owner`.
    Import {
        caller: String,
        owner: String,
        catalog: String,
    },
    /// The auto-share reactor: `catalog_shared` from the hub to a newly initialised account.
    /// The hub need not be initialised; the name must be unowned or owned by the hub.
    AutoShare {
        hub: String,
        target: String,
        catalog: String,
    },
    /// `context_bound` for `account` (only through `otc.claim`).
    BindContext {
        account: String,
        data: ContextBoundData,
    },
}

impl Command {
    /// The type of the event this command appends.
    pub fn event_type(&self) -> super::EventType {
        use super::EventType;
        match self {
            Command::Initialize { .. } => EventType::NatsterInitialized,
            Command::Share { .. } | Command::AutoShare { .. } => EventType::CatalogShared,
            Command::Unshare { .. } => EventType::CatalogUnshared,
            Command::Import { .. } => EventType::CatalogImported,
            Command::BindContext { .. } => EventType::ContextBound,
        }
    }
}

/// How the append must be guarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// `Nats-Expected-Last-Subject-Sequence` (0 = no message on the filter yet).
    pub last_seq: u64,
    /// `Nats-Expected-Last-Subject-Sequence-Subject`; `None` = the event's own subject.
    pub filter: Option<String>,
}

/// The event to append and its guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub subject: EventSubject,
    pub body: EventBody,
    pub expectation: Expectation,
    /// A catalog name to claim for the event's origin before appending (first share of an
    /// unowned name).
    pub claim: Option<String>,
}

/// Why a command is refused; maps to the envelope codes 400/403/404/409.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

impl Rejection {
    /// A short, fixed label for metrics (`reason`), never holding keys or names.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::BadRequest(_) => "bad_request",
            Rejection::Forbidden(_) => "forbidden",
            Rejection::NotFound(_) => "not_found",
            Rejection::Conflict(_) => "conflict",
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
            // Only the exact subject a binding is guarded by counts for its expectation.
            EventType::ContextBound if s.target == NONE && s.catalog == NONE => {
                self.accounts
                    .entry(s.origin.clone())
                    .or_default()
                    .context_seq = event.seq;
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
        match s.event_type {
            EventType::CatalogShared if !no_real_target => {
                if catalog.owner.is_empty() {
                    catalog.owner = s.origin.clone();
                }
                if catalog.owner == s.origin {
                    catalog.shares.entry(s.target.clone()).or_default();
                }
            }
            EventType::CatalogUnshared if !no_real_target && catalog.owner == s.origin => {
                catalog.shares.remove(&s.target);
            }
            EventType::CatalogImported if catalog.owner == s.target => {
                if let Some(share) = catalog.shares.get_mut(&s.origin) {
                    share.imported = true;
                }
            }
            _ => {}
        }
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

    fn pair_last_seq(&self, subject: &EventSubject) -> u64 {
        self.pairs.get(&subject.pair_key()).copied().unwrap_or(0)
    }

    fn active_share(&self, owner: &str, target: &str, name: &str) -> Option<&ShareState> {
        self.catalogs
            .get(name)
            .filter(|c| c.owner == owner)
            .and_then(|c| c.shares.get(target))
    }
}

pub use super::validate::MAX_OAUTH_ID;

/// Decides `command` against `state`.
///
/// Rules (codes as the envelope reports them):
/// - `Initialize`: the data must name the caller (400); once per account (409).
/// - `Share`: valid name (400), target a valid account key other than the caller (400),
///   initialised caller (404), name not owned by another account (409), not already actively
///   shared with the target (409).
/// - `Unshare`: valid name and target (400), initialised caller (404), an active share from the
///   caller as owner to the target (404).
/// - `Import`: valid name and owner key other than the caller (400), initialised caller (404),
///   an active share from `owner` to the caller (404), not already imported (409).
/// - `AutoShare`: like `Share` without the initialised-origin rule.
/// - `BindContext`: initialised account (404); the context names that account, and the OAuth
///   id is 1–256 characters (400).
pub fn decide(state: &DecisionState, command: &Command) -> Result<Decision, Rejection> {
    match command {
        Command::Initialize { caller, data } => {
            if data.account_key != *caller {
                return Err(Rejection::BadRequest(
                    "the init data must name the calling account's key".into(),
                ));
            }
            if state.is_initialized(caller) {
                return Err(Rejection::Conflict(
                    "this account has already initialised Natster".into(),
                ));
            }
            Ok(Decision {
                subject: EventSubject::new(caller, NONE, NONE, EventType::NatsterInitialized),
                body: EventBody::Initialized(data.clone()),
                expectation: Expectation {
                    last_seq: 0,
                    filter: None,
                },
                claim: None,
            })
        }
        Command::Share {
            caller,
            target,
            catalog,
        } => {
            check_catalog(catalog)?;
            check_other_account(caller, target, "target")?;
            require_initialized(state, caller)?;
            share(state, caller, target, catalog)
        }
        Command::AutoShare {
            hub,
            target,
            catalog,
        } => {
            check_catalog(catalog)?;
            check_other_account(hub, target, "target")?;
            share(state, hub, target, catalog)
        }
        Command::Unshare {
            caller,
            target,
            catalog,
        } => {
            check_catalog(catalog)?;
            check_other_account(caller, target, "target")?;
            require_initialized(state, caller)?;
            if state.active_share(caller, target, catalog).is_none() {
                return Err(Rejection::NotFound(
                    "no active share of this catalog from this account to that target".into(),
                ));
            }
            Ok(catalog_decision(
                state,
                EventSubject::new(caller, target, catalog, EventType::CatalogUnshared),
            ))
        }
        Command::Import {
            caller,
            owner,
            catalog,
        } => {
            check_catalog(catalog)?;
            check_other_account(caller, owner, "target (the catalog owner)")?;
            require_initialized(state, caller)?;
            match state.active_share(owner, caller, catalog) {
                None => Err(Rejection::NotFound(
                    "no active share of this catalog from that owner to this account".into(),
                )),
                Some(share) if share.imported => Err(Rejection::Conflict(
                    "this catalog share was already imported".into(),
                )),
                Some(_) => Ok(catalog_decision(
                    state,
                    EventSubject::new(caller, owner, catalog, EventType::CatalogImported),
                )),
            }
        }
        Command::BindContext { account, data } => {
            require_initialized(state, account)?;
            if data.bound_context.account_public_key != *account {
                return Err(Rejection::BadRequest(
                    "the context does not belong to the account it is bound for".into(),
                ));
            }
            if let Some(problem) = super::validate::oauth_id_problem(&data.oauth_id) {
                return Err(Rejection::BadRequest(problem.into()));
            }
            Ok(Decision {
                subject: EventSubject::new(account, NONE, NONE, EventType::ContextBound),
                body: EventBody::ContextBound(data.clone()),
                expectation: Expectation {
                    last_seq: state.accounts.get(account).map_or(0, |a| a.context_seq),
                    filter: None,
                },
                claim: None,
            })
        }
    }
}

fn share(
    state: &DecisionState,
    origin: &str,
    target: &str,
    catalog: &str,
) -> Result<Decision, Rejection> {
    match state.owner_of(catalog) {
        Some(owner) if owner != origin => {
            return Err(Rejection::Conflict(
                "this catalog name is owned by another account".into(),
            ))
        }
        _ => {}
    }
    if state.active_share(origin, target, catalog).is_some() {
        return Err(Rejection::Conflict(
            "this catalog is already shared with that account".into(),
        ));
    }
    let mut decision = catalog_decision(
        state,
        EventSubject::new(origin, target, catalog, EventType::CatalogShared),
    );
    if state.owner_of(catalog).is_none() {
        decision.claim = Some(catalog.to_string());
    }
    Ok(decision)
}

fn catalog_decision(state: &DecisionState, subject: EventSubject) -> Decision {
    Decision {
        expectation: Expectation {
            last_seq: state.pair_last_seq(&subject),
            filter: Some(subject.pair_aggregate()),
        },
        subject,
        body: EventBody::Empty,
        claim: None,
    }
}

fn check_catalog(name: &str) -> Result<(), Rejection> {
    match super::validate::catalog_name_problem(name) {
        Some(problem) => Err(Rejection::BadRequest(problem.into())),
        None => Ok(()),
    }
}

fn check_other_account(caller: &str, other: &str, what: &str) -> Result<(), Rejection> {
    if !crate::auth::is_account_public_key(other) {
        return Err(Rejection::BadRequest(format!(
            "the {what} is not a valid account public key"
        )));
    }
    if other == caller {
        return Err(Rejection::BadRequest(format!(
            "the {what} must be another account than the caller"
        )));
    }
    Ok(())
}

fn require_initialized(state: &DecisionState, account: &str) -> Result<(), Rejection> {
    if state.is_initialized(account) {
        Ok(())
    } else {
        Err(Rejection::NotFound(
            "this account has not initialised Natster".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NatsterContext;

    // ----- helpers -------------------------------------------------------------------------

    fn account() -> String {
        nkeys::KeyPair::new_account().public_key()
    }

    fn user_key() -> String {
        nkeys::KeyPair::new_user().public_key()
    }

    fn init_data(key: &str) -> InitData {
        InitData {
            account_id: format!("id-{}", &key[..8]),
            account_name: format!("name-{}", &key[..8]),
            account_key: key.to_string(),
        }
    }

    fn init(caller: &str) -> Command {
        Command::Initialize {
            caller: caller.into(),
            data: init_data(caller),
        }
    }

    fn share(caller: &str, target: &str, catalog: &str) -> Command {
        Command::Share {
            caller: caller.into(),
            target: target.into(),
            catalog: catalog.into(),
        }
    }

    fn unshare(caller: &str, target: &str, catalog: &str) -> Command {
        Command::Unshare {
            caller: caller.into(),
            target: target.into(),
            catalog: catalog.into(),
        }
    }

    fn import(caller: &str, owner: &str, catalog: &str) -> Command {
        Command::Import {
            caller: caller.into(),
            owner: owner.into(),
            catalog: catalog.into(),
        }
    }

    fn auto_share(hub: &str, target: &str, catalog: &str) -> Command {
        Command::AutoShare {
            hub: hub.into(),
            target: target.into(),
            catalog: catalog.into(),
        }
    }

    fn context_data(account: &str, oauth_id: &str) -> ContextBoundData {
        ContextBoundData {
            oauth_id: oauth_id.into(),
            bound_context: NatsterContext {
                team_id: "team".into(),
                system_id: "system".into(),
                account_id: "acc-id".into(),
                account_name: "acc-name".into(),
                account_public_key: account.into(),
                access_token: "sealed-token".into(),
                user_id: "user".into(),
                creds: "creds".into(),
            },
        }
    }

    fn bind(account: &str, oauth_id: &str) -> Command {
        Command::BindContext {
            account: account.into(),
            data: context_data(account, oauth_id),
        }
    }

    fn event(seq: u64, origin: &str, target: &str, catalog: &str, ty: EventType) -> Event {
        Event {
            seq,
            time: 1_700_000_000 + seq as i64,
            subject: EventSubject::new(origin, target, catalog, ty),
            body: EventBody::Empty,
        }
    }

    /// Whether a NATS subject matches a filter with `*` / `>` wildcards.
    fn subject_matches(filter: &str, subject: &str) -> bool {
        let f: Vec<&str> = filter.split('.').collect();
        let s: Vec<&str> = subject.split('.').collect();
        for (i, token) in f.iter().enumerate() {
            if *token == ">" {
                return s.len() > i;
            }
            match s.get(i) {
                Some(t) if *token == "*" || token == t => {}
                _ => return false,
            }
        }
        f.len() == s.len()
    }

    /// An in-memory event log plus the decision state folded from it; `run` plays the part of
    /// the shell *and* of the server (it checks each decision's expectation against the log
    /// exactly as `Nats-Expected-Last-Subject-Sequence(-Subject)` would).
    #[derive(Default)]
    struct Sim {
        state: DecisionState,
        log: Vec<Event>,
    }

    impl Sim {
        fn new() -> Self {
            Sim::default()
        }

        /// Appends an event as is (e.g. from an adopted historical log) and folds it in.
        fn append(&mut self, subject: EventSubject, body: EventBody) -> Event {
            let seq = self.log.len() as u64 + 1;
            let event = Event {
                seq,
                time: 1_700_000_000 + seq as i64,
                subject,
                body,
            };
            self.log.push(event.clone());
            self.state.apply(&event);
            event
        }

        /// What the server holds as the last sequence on `filter`.
        fn server_last_seq(&self, filter: &str) -> u64 {
            self.log
                .iter()
                .rev()
                .find(|e| subject_matches(filter, &e.subject.to_subject()))
                .map_or(0, |e| e.seq)
        }

        /// Decides; on success checks the guard like the server would, appends and folds.
        fn run(&mut self, command: &Command) -> Result<Decision, Rejection> {
            let decision = decide(&self.state, command)?;
            let filter = decision
                .expectation
                .filter
                .clone()
                .unwrap_or_else(|| decision.subject.to_subject());
            assert_eq!(
                decision.expectation.last_seq,
                self.server_last_seq(&filter),
                "the server would refuse this decision's expectation on {filter} ({command:?})"
            );
            self.append(decision.subject.clone(), decision.body.clone());
            Ok(decision)
        }

        fn ok(&mut self, command: &Command) -> Decision {
            match self.run(command) {
                Ok(decision) => decision,
                Err(rejection) => panic!("{command:?} was rejected: {rejection:?}"),
            }
        }

        /// Expects a rejection and checks that nothing was appended.
        fn reject(&mut self, command: &Command) -> Rejection {
            let before = self.state.clone();
            match decide(&self.state, command) {
                Ok(decision) => panic!("{command:?} was accepted: {decision:?}"),
                Err(rejection) => {
                    assert_eq!(self.state, before);
                    rejection
                }
            }
        }

        fn initialized(n: usize) -> (Sim, Vec<String>) {
            let mut sim = Sim::new();
            let keys: Vec<String> = (0..n).map(|_| account()).collect();
            for key in &keys {
                sim.ok(&init(key));
            }
            (sim, keys)
        }
    }

    fn bad_request(r: Rejection) {
        assert!(matches!(r, Rejection::BadRequest(_)), "{r:?}");
    }
    fn not_found(r: Rejection) {
        assert!(matches!(r, Rejection::NotFound(_)), "{r:?}");
    }
    fn conflict(r: Rejection) {
        assert!(matches!(r, Rejection::Conflict(_)), "{r:?}");
    }

    const BAD_NAMES: [&str; 12] = [
        "a.b", "a*", "a>", "a b", "café", "ü", "", "none", "NONE", "None", "a-b", "a_b",
    ];

    fn bad_names() -> Vec<String> {
        let mut names: Vec<String> = BAD_NAMES.iter().map(|s| s.to_string()).collect();
        names.push("x".repeat(65));
        names.push("a\u{0}".into());
        names
    }

    // ----- sanity of the helpers ---------------------------------------------------------

    #[test]
    fn subject_matcher_follows_nats_rules() {
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.b.d"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches(
            "natster.events.*.*.movies.*",
            "natster.events.A.B.movies.catalog_shared"
        ));
        assert!(!subject_matches(
            "natster.events.*.*.movies.*",
            "natster.events.A.B.music.catalog_shared"
        ));
    }

    // ----- Initialize ----------------------------------------------------------------------

    #[test]
    fn initialize_happy_path() {
        let a = account();
        let mut sim = Sim::new();
        let d = sim.ok(&init(&a));
        assert_eq!(d.subject.origin, a);
        assert_eq!(d.subject.target, NONE);
        assert_eq!(d.subject.catalog, NONE);
        assert_eq!(d.subject.event_type, EventType::NatsterInitialized);
        assert_eq!(
            d.subject.to_subject(),
            format!("natster.events.{a}.none.none.natster_initialized")
        );
        assert_eq!(d.body, EventBody::Initialized(init_data(&a)));
        assert_eq!(
            d.expectation,
            Expectation {
                last_seq: 0,
                filter: None
            }
        );
        assert!(sim.state.is_initialized(&a));
        assert_eq!(sim.state.accounts[&a].init_seq, 1);
    }

    #[test]
    fn initialize_data_must_name_the_caller() {
        let a = account();
        let b = account();
        let mut sim = Sim::new();
        bad_request(sim.reject(&Command::Initialize {
            caller: a.clone(),
            data: init_data(&b),
        }));
        bad_request(sim.reject(&Command::Initialize {
            caller: a.clone(),
            data: InitData::default(),
        }));
        bad_request(sim.reject(&Command::Initialize {
            caller: a.clone(),
            data: InitData {
                account_key: a.to_lowercase(),
                ..init_data(&a)
            },
        }));
        assert!(!sim.state.is_initialized(&a));
        assert!(!sim.state.is_initialized(&b));
    }

    #[test]
    fn initialize_once_per_account() {
        let (mut sim, keys) = Sim::initialized(3);
        for key in &keys {
            conflict(sim.reject(&init(key)));
            assert!(sim.state.is_initialized(key));
        }
        // The 409 also holds when other events of the account followed the init.
        sim.ok(&share(&keys[0], &keys[1], "movies"));
        sim.ok(&bind(&keys[0], "github|1"));
        conflict(sim.reject(&init(&keys[0])));
        // Another account is unaffected.
        sim.ok(&init(&account()));
    }

    #[test]
    fn uninitialised_accounts_are_not_initialised() {
        let (sim, _) = Sim::initialized(1);
        assert!(!sim.state.is_initialized(&account()));
        assert!(!DecisionState::default().is_initialized(""));
    }

    // ----- Share ---------------------------------------------------------------------------

    #[test]
    fn share_happy_path() {
        let (mut sim, k) = Sim::initialized(2);
        let d = sim.ok(&share(&k[0], &k[1], "movies"));
        assert_eq!(
            d.subject,
            EventSubject::new(&k[0], &k[1], "movies", EventType::CatalogShared)
        );
        assert_eq!(d.body, EventBody::Empty);
        assert_eq!(
            d.expectation,
            Expectation {
                last_seq: 0,
                filter: Some(format!("natster.events.{}.{}.movies.*", k[0], k[1])),
            }
        );
        assert_eq!(
            d.claim.as_deref(),
            Some("movies"),
            "first share claims the name"
        );
        assert_eq!(sim.state.owner_of("movies"), Some(k[0].as_str()));
        assert_eq!(sim.state.catalogs["movies"].last_seq, 3);
        assert!(sim.state.catalogs["movies"].shares.contains_key(&k[1]));
    }

    #[test]
    fn share_expectation_is_the_pairs_last_seq() {
        let (mut sim, k) = Sim::initialized(4);
        sim.ok(&share(&k[0], &k[1], "movies")); // seq 5
        sim.ok(&share(&k[2], &k[1], "music")); // seq 6, other catalog
        sim.ok(&import(&k[1], &k[0], "movies")); // seq 7, import by the target
        sim.ok(&bind(&k[0], "o1")); // seq 8, no catalog
        sim.ok(&unshare(&k[0], &k[1], "movies")); // seq 9
                                                  // Sharing again with the same target expects that pair's last event.
        let d = sim.ok(&share(&k[0], &k[1], "movies"));
        assert_eq!(d.expectation.last_seq, 9);
        assert_eq!(
            d.expectation.filter.as_deref(),
            Some(format!("natster.events.{}.{}.movies.*", k[0], k[1]).as_str())
        );
        assert_eq!(d.claim, None, "the name is already the sharer's");
        // A new target of the same catalog is a fresh pair.
        let d = sim.ok(&share(&k[0], &k[2], "movies"));
        assert_eq!(d.expectation.last_seq, 0);
        // A fresh name expects 0 and claims the name.
        let d = sim.ok(&share(&k[3], &k[0], "books"));
        assert_eq!(d.expectation.last_seq, 0);
        assert_eq!(d.claim.as_deref(), Some("books"));
    }

    #[test]
    fn share_to_several_targets_and_longest_name() {
        let (mut sim, k) = Sim::initialized(4);
        let long = "Z9".repeat(32);
        assert_eq!(long.len(), 64);
        sim.ok(&share(&k[0], &k[1], &long));
        sim.ok(&share(&k[0], &k[2], &long));
        sim.ok(&share(&k[0], &k[3], &long));
        let shares = &sim.state.catalogs[&long].shares;
        assert_eq!(shares.len(), 3);
        // Catalog names are case sensitive: another account can own `Movies` and `movies`.
        sim.ok(&share(&k[1], &k[0], "movies"));
        sim.ok(&share(&k[2], &k[0], "Movies"));
        assert_eq!(sim.state.owner_of("movies"), Some(k[1].as_str()));
        assert_eq!(sim.state.owner_of("Movies"), Some(k[2].as_str()));
    }

    #[test]
    fn share_rejects_bad_catalog_names() {
        let (mut sim, k) = Sim::initialized(2);
        for name in bad_names() {
            bad_request(sim.reject(&share(&k[0], &k[1], &name)));
            bad_request(sim.reject(&auto_share(&k[0], &k[1], &name)));
        }
        assert!(sim.state.catalogs.is_empty());
    }

    #[test]
    fn share_rejects_invalid_targets() {
        let (mut sim, k) = Sim::initialized(2);
        let user = user_key();
        let server = nkeys::KeyPair::new_server().public_key();
        let mut corrupted = k[1].clone();
        corrupted.replace_range(10..11, if &k[1][10..11] == "A" { "B" } else { "A" });
        let targets = [
            user.as_str(),
            server.as_str(),
            k[0].as_str(), // the caller itself
            NONE,
            "",
            "*",
            ">",
            &k[1][..55],
            corrupted.as_str(),
        ];
        for target in targets {
            bad_request(sim.reject(&share(&k[0], target, "movies")));
            bad_request(sim.reject(&auto_share(&k[0], target, "movies")));
        }
        assert!(sim.state.catalogs.is_empty());
    }

    #[test]
    fn share_needs_an_initialised_caller() {
        let (mut sim, k) = Sim::initialized(1);
        let stranger = account();
        not_found(sim.reject(&share(&stranger, &k[0], "movies")));
        // ...but the target need not be initialised.
        sim.ok(&share(&k[0], &stranger, "movies"));
        sim.ok(&share(&k[0], &account(), "movies"));
    }

    #[test]
    fn share_of_a_name_owned_by_another_account_conflicts() {
        let (mut sim, k) = Sim::initialized(3);
        sim.ok(&share(&k[0], &k[1], "movies"));
        conflict(sim.reject(&share(&k[1], &k[2], "movies")));
        conflict(sim.reject(&share(&k[2], &k[1], "movies")));
        // Even sharing back to the owner.
        conflict(sim.reject(&share(&k[1], &k[0], "movies")));
        // Ownership survives when every share is gone.
        sim.ok(&unshare(&k[0], &k[1], "movies"));
        assert!(sim.state.catalogs["movies"].shares.is_empty());
        conflict(sim.reject(&share(&k[2], &k[1], "movies")));
        assert_eq!(sim.state.owner_of("movies"), Some(k[0].as_str()));
        // The owner can share again.
        sim.ok(&share(&k[0], &k[2], "movies"));
    }

    #[test]
    fn share_twice_with_the_same_target_conflicts() {
        let (mut sim, k) = Sim::initialized(3);
        sim.ok(&share(&k[0], &k[1], "movies"));
        conflict(sim.reject(&share(&k[0], &k[1], "movies")));
        conflict(sim.reject(&auto_share(&k[0], &k[1], "movies")));
        // Still conflicts after the target imported it.
        sim.ok(&import(&k[1], &k[0], "movies"));
        conflict(sim.reject(&share(&k[0], &k[1], "movies")));
        // Another target is fine; after an unshare the same target is fine again.
        sim.ok(&share(&k[0], &k[2], "movies"));
        sim.ok(&unshare(&k[0], &k[1], "movies"));
        sim.ok(&share(&k[0], &k[1], "movies"));
    }

    // ----- Unshare -------------------------------------------------------------------------

    #[test]
    fn unshare_happy_path() {
        let (mut sim, k) = Sim::initialized(3);
        sim.ok(&share(&k[0], &k[1], "movies")); // 4
        sim.ok(&share(&k[0], &k[2], "movies")); // 5
        let d = sim.ok(&unshare(&k[0], &k[1], "movies")); // 6
        assert_eq!(
            d.subject,
            EventSubject::new(&k[0], &k[1], "movies", EventType::CatalogUnshared)
        );
        assert_eq!(
            d.subject.to_subject(),
            format!("natster.events.{}.{}.movies.catalog_unshared", k[0], k[1])
        );
        assert_eq!(d.body, EventBody::Empty);
        assert_eq!(
            d.expectation,
            Expectation {
                last_seq: 4,
                filter: Some(format!("natster.events.{}.{}.movies.*", k[0], k[1])),
            }
        );
        let shares = &sim.state.catalogs["movies"].shares;
        assert!(!shares.contains_key(&k[1]));
        assert!(shares.contains_key(&k[2]));
        assert_eq!(sim.state.catalogs["movies"].last_seq, 6);
    }

    #[test]
    fn unshare_without_an_active_share_is_not_found() {
        let (mut sim, k) = Sim::initialized(3);
        // Never shared at all.
        not_found(sim.reject(&unshare(&k[0], &k[1], "movies")));
        // Shared with someone else.
        sim.ok(&share(&k[0], &k[2], "movies"));
        not_found(sim.reject(&unshare(&k[0], &k[1], "movies")));
        // Shared under another name.
        not_found(sim.reject(&unshare(&k[0], &k[2], "music")));
        // Already unshared.
        sim.ok(&unshare(&k[0], &k[2], "movies"));
        not_found(sim.reject(&unshare(&k[0], &k[2], "movies")));
    }

    #[test]
    fn unshare_by_a_non_owner_is_not_found() {
        let (mut sim, k) = Sim::initialized(3);
        sim.ok(&share(&k[0], &k[1], "movies"));
        // A third account cannot unshare the owner's share...
        not_found(sim.reject(&unshare(&k[2], &k[1], "movies")));
        // ...nor can the target "unshare" it back towards the owner.
        not_found(sim.reject(&unshare(&k[1], &k[0], "movies")));
        assert!(sim.state.catalogs["movies"].shares.contains_key(&k[1]));
    }

    #[test]
    fn unshare_validates_input_and_caller() {
        let (mut sim, k) = Sim::initialized(2);
        sim.ok(&share(&k[0], &k[1], "movies"));
        for name in bad_names() {
            bad_request(sim.reject(&unshare(&k[0], &k[1], &name)));
        }
        for target in [user_key(), k[0].clone(), NONE.to_string(), String::new()] {
            bad_request(sim.reject(&unshare(&k[0], &target, "movies")));
        }
        not_found(sim.reject(&unshare(&account(), &k[1], "movies")));
    }

    // ----- Import --------------------------------------------------------------------------

    #[test]
    fn import_happy_path() {
        let (mut sim, k) = Sim::initialized(2);
        sim.ok(&share(&k[0], &k[1], "movies")); // 3
        let d = sim.ok(&import(&k[1], &k[0], "movies")); // 4
        assert_eq!(
            d.subject,
            EventSubject::new(&k[1], &k[0], "movies", EventType::CatalogImported)
        );
        assert_eq!(d.body, EventBody::Empty);
        assert_eq!(
            d.expectation,
            Expectation {
                last_seq: 0,
                filter: Some(format!("natster.events.{}.{}.movies.*", k[1], k[0])),
            }
        );
        assert!(sim.state.catalogs["movies"].shares[&k[1]].imported);
        assert_eq!(sim.state.catalogs["movies"].last_seq, 4);
    }

    #[test]
    fn import_without_an_active_share_is_not_found() {
        let (mut sim, k) = Sim::initialized(3);
        // Nothing shared at all.
        not_found(sim.reject(&import(&k[1], &k[0], "movies")));
        sim.ok(&share(&k[0], &k[2], "movies"));
        // Shared with someone else.
        not_found(sim.reject(&import(&k[1], &k[0], "movies")));
        // Naming an account that is not the owner.
        not_found(sim.reject(&import(&k[2], &k[1], "movies")));
        // Another name.
        not_found(sim.reject(&import(&k[2], &k[0], "music")));
        // After the unshare.
        sim.ok(&unshare(&k[0], &k[2], "movies"));
        not_found(sim.reject(&import(&k[2], &k[0], "movies")));
    }

    #[test]
    fn import_twice_conflicts_but_a_reshare_can_be_imported_again() {
        let (mut sim, k) = Sim::initialized(3);
        sim.ok(&share(&k[0], &k[1], "movies"));
        sim.ok(&share(&k[0], &k[2], "movies"));
        sim.ok(&import(&k[1], &k[0], "movies"));
        conflict(sim.reject(&import(&k[1], &k[0], "movies")));
        // The other target's share is independent.
        sim.ok(&import(&k[2], &k[0], "movies"));
        conflict(sim.reject(&import(&k[2], &k[0], "movies")));
        // Unshare + reshare starts a new share that can be imported once more.
        sim.ok(&unshare(&k[0], &k[1], "movies"));
        sim.ok(&share(&k[0], &k[1], "movies"));
        assert!(!sim.state.catalogs["movies"].shares[&k[1]].imported);
        sim.ok(&import(&k[1], &k[0], "movies"));
        conflict(sim.reject(&import(&k[1], &k[0], "movies")));
    }

    #[test]
    fn import_needs_an_initialised_caller() {
        let (mut sim, k) = Sim::initialized(1);
        let late = account();
        sim.ok(&share(&k[0], &late, "movies"));
        not_found(sim.reject(&import(&late, &k[0], "movies")));
        sim.ok(&init(&late));
        sim.ok(&import(&late, &k[0], "movies"));
    }

    #[test]
    fn import_validates_name_and_owner_key() {
        let (mut sim, k) = Sim::initialized(2);
        sim.ok(&share(&k[0], &k[1], "movies"));
        for name in bad_names() {
            bad_request(sim.reject(&import(&k[1], &k[0], &name)));
        }
        for owner in [user_key(), k[1].clone(), NONE.to_string(), String::new()] {
            bad_request(sim.reject(&import(&k[1], &owner, "movies")));
        }
        assert!(!sim.state.catalogs["movies"].shares[&k[1]].imported);
    }

    // ----- AutoShare -----------------------------------------------------------------------

    #[test]
    fn auto_share_from_an_uninitialised_hub() {
        let hub = account();
        let (mut sim, k) = Sim::initialized(2);
        let d = sim.ok(&auto_share(&hub, &k[0], "welcome"));
        assert_eq!(
            d.subject,
            EventSubject::new(&hub, &k[0], "welcome", EventType::CatalogShared)
        );
        assert_eq!(d.body, EventBody::Empty);
        assert_eq!(
            d.expectation,
            Expectation {
                last_seq: 0,
                filter: Some(format!("natster.events.{hub}.{}.welcome.*", k[0])),
            }
        );
        assert!(!sim.state.is_initialized(&hub));
        assert_eq!(sim.state.owner_of("welcome"), Some(hub.as_str()));
        let d = sim.ok(&auto_share(&hub, &k[1], "welcome"));
        assert_eq!(d.expectation.last_seq, 0, "a new pair");
        assert_eq!(d.claim, None, "the hub already owns the name");
        conflict(sim.reject(&auto_share(&hub, &k[1], "welcome")));
        // The targets can import it.
        sim.ok(&import(&k[0], &hub, "welcome"));
        // A plain Share from the uninitialised hub is still refused.
        not_found(sim.reject(&share(&hub, &account(), "welcome")));
    }

    #[test]
    fn auto_share_refused_when_another_account_owns_the_name() {
        let hub = account();
        let (mut sim, k) = Sim::initialized(3);
        sim.ok(&share(&k[0], &k[1], "welcome"));
        conflict(sim.reject(&auto_share(&hub, &k[2], "welcome")));
        assert_eq!(sim.state.owner_of("welcome"), Some(k[0].as_str()));
        // The target need not be initialised either.
        sim.ok(&auto_share(&hub, &account(), "hubcatalog"));
    }

    // ----- BindContext ---------------------------------------------------------------------

    #[test]
    fn bind_context_happy_path_and_rebinding() {
        let (mut sim, k) = Sim::initialized(2);
        let d = sim.ok(&bind(&k[0], "github|12345")); // 3
        assert_eq!(
            d.subject,
            EventSubject::new(&k[0], NONE, NONE, EventType::ContextBound)
        );
        assert_eq!(
            d.subject.to_subject(),
            format!("natster.events.{}.none.none.context_bound", k[0])
        );
        assert_eq!(
            d.body,
            EventBody::ContextBound(context_data(&k[0], "github|12345"))
        );
        assert_eq!(
            d.expectation,
            Expectation {
                last_seq: 0,
                filter: None
            }
        );
        assert_eq!(sim.state.accounts[&k[0]].context_seq, 3);
        sim.ok(&bind(&k[1], "other")); // 4
                                       // A second binding expects the account's own last context event.
        let d = sim.ok(&bind(&k[0], "google|1")); // 5
        assert_eq!(d.expectation.last_seq, 3);
        assert_eq!(d.expectation.filter, None);
        assert_eq!(sim.state.accounts[&k[0]].context_seq, 5);
        assert_eq!(sim.state.accounts[&k[1]].context_seq, 4);
    }

    #[test]
    fn bind_context_rejections() {
        let (mut sim, k) = Sim::initialized(2);
        let stranger = account();
        not_found(sim.reject(&bind(&stranger, "github|1")));
        // The context names another account.
        bad_request(sim.reject(&Command::BindContext {
            account: k[0].clone(),
            data: context_data(&k[1], "github|1"),
        }));
        bad_request(sim.reject(&Command::BindContext {
            account: k[0].clone(),
            data: context_data("", "github|1"),
        }));
        // OAuth id length: 1..=256.
        bad_request(sim.reject(&bind(&k[0], "")));
        bad_request(sim.reject(&bind(&k[0], &"x".repeat(MAX_OAUTH_ID + 1))));
        sim.ok(&bind(&k[0], "x"));
        sim.ok(&bind(&k[0], &"x".repeat(MAX_OAUTH_ID)));
    }

    // ----- Rejection -----------------------------------------------------------------------

    #[test]
    fn rejection_reasons_are_fixed_labels() {
        assert_eq!(Rejection::BadRequest("k".into()).reason(), "bad_request");
        assert_eq!(Rejection::Forbidden("k".into()).reason(), "forbidden");
        assert_eq!(Rejection::NotFound("k".into()).reason(), "not_found");
        assert_eq!(Rejection::Conflict("k".into()).reason(), "conflict");
        assert_eq!(
            Rejection::Conflict("the message".into()).to_string(),
            "the message"
        );
    }

    #[test]
    fn rejection_messages_hold_no_keys_or_names() {
        let (mut sim, k) = Sim::initialized(3);
        sim.ok(&share(&k[0], &k[1], "secretname"));
        let rejections = [
            sim.reject(&share(&k[2], &k[1], "secretname")),
            sim.reject(&share(&k[0], &k[1], "secretname")),
            sim.reject(&unshare(&k[0], &k[2], "secretname")),
            sim.reject(&import(&k[2], &k[0], "secretname")),
            sim.reject(&share(&k[0], &user_key(), "secretname")),
            sim.reject(&bind(&account(), "github|1")),
        ];
        for r in rejections {
            let text = r.to_string();
            assert!(!text.is_empty());
            assert!(!text.contains("secretname"), "{text}");
            for key in &k {
                assert!(!text.contains(key.as_str()), "{text}");
            }
        }
    }

    // ----- apply ---------------------------------------------------------------------------

    #[test]
    fn apply_ignores_events_at_or_below_last_seq() {
        let a = account();
        let b = account();
        let mut state = DecisionState::default();
        let e1 = Event {
            body: EventBody::Initialized(init_data(&a)),
            ..event(1, &a, NONE, NONE, EventType::NatsterInitialized)
        };
        let e2 = event(2, &a, &b, "movies", EventType::CatalogShared);
        state.apply(&e1);
        state.apply(&e2);
        let snapshot = state.clone();
        // Redelivery of the same events.
        state.apply(&e2);
        state.apply(&e1);
        assert_eq!(state, snapshot);
        // Different events carrying old sequences.
        state.apply(&event(2, &a, &b, "movies", EventType::CatalogUnshared));
        state.apply(&event(1, &b, NONE, NONE, EventType::NatsterInitialized));
        state.apply(&event(0, &b, &a, "music", EventType::CatalogShared));
        assert_eq!(state, snapshot);
        assert_eq!(state.last_seq, 2);
        // A newer event still applies.
        state.apply(&event(3, &a, &b, "movies", EventType::CatalogUnshared));
        assert_eq!(state.last_seq, 3);
        assert!(state.catalogs["movies"].shares.is_empty());
    }

    #[test]
    fn apply_gaps_in_sequences_are_fine() {
        let a = account();
        let b = account();
        let mut state = DecisionState::default();
        state.apply(&event(10, &a, &b, "movies", EventType::CatalogShared));
        state.apply(&event(25, &b, &a, "movies", EventType::CatalogImported));
        assert_eq!(state.last_seq, 25);
        assert_eq!(state.catalogs["movies"].last_seq, 25);
        assert!(state.catalogs["movies"].shares[&b].imported);
    }

    #[test]
    fn apply_moves_catalog_last_seq_for_every_event_on_the_catalog() {
        let owner = account();
        let other = account();
        let third = account();
        let mut sim = Sim::new();
        let cases = [
            EventSubject::new(&owner, &other, "movies", EventType::CatalogShared),
            // Non-owner share and unshare (historical).
            EventSubject::new(&other, &third, "movies", EventType::CatalogShared),
            EventSubject::new(&other, &third, "movies", EventType::CatalogUnshared),
            // Import by the target and an import that matches no share.
            EventSubject::new(&other, &owner, "movies", EventType::CatalogImported),
            EventSubject::new(&third, &owner, "movies", EventType::CatalogImported),
            // Unshare without a share.
            EventSubject::new(&owner, &third, "movies", EventType::CatalogUnshared),
            // Odd historical tokens are still on the aggregate subject.
            EventSubject::new(&owner, NONE, "movies", EventType::CatalogShared),
            EventSubject::new(&owner, NONE, "movies", EventType::NatsterInitialized),
        ];
        for subject in cases {
            let e = sim.append(subject.clone(), EventBody::Empty);
            assert_eq!(sim.state.catalogs["movies"].last_seq, e.seq, "{subject:?}");
            assert_eq!(
                sim.state.catalogs["movies"].last_seq,
                sim.server_last_seq(&EventSubject::catalog_aggregate("movies"))
            );
        }
        // Events elsewhere do not move it.
        let last = sim.state.catalogs["movies"].last_seq;
        sim.append(
            EventSubject::new(&owner, &other, "music", EventType::CatalogShared),
            EventBody::Empty,
        );
        sim.append(
            EventSubject::new(&third, NONE, NONE, EventType::NatsterInitialized),
            EventBody::Empty,
        );
        sim.append(
            EventSubject::new(&third, NONE, NONE, EventType::ContextBound),
            EventBody::Empty,
        );
        assert_eq!(sim.state.catalogs["movies"].last_seq, last);
        assert_eq!(sim.state.catalogs["music"].last_seq, last + 1);
        // `none` is not a catalog.
        assert!(!sim.state.catalogs.contains_key(NONE));
        assert_eq!(sim.state.catalogs.len(), 2);
        assert_eq!(sim.state.last_seq, last + 3);
    }

    #[test]
    fn apply_first_sharer_owns_the_name_for_good() {
        let owner = account();
        let other = account();
        let target = account();
        let mut state = DecisionState::default();
        state.apply(&event(
            1,
            &owner,
            &target,
            "movies",
            EventType::CatalogShared,
        ));
        assert_eq!(state.owner_of("movies"), Some(owner.as_str()));
        state.apply(&event(
            2,
            &owner,
            &target,
            "movies",
            EventType::CatalogUnshared,
        ));
        assert!(state.catalogs["movies"].shares.is_empty());
        assert_eq!(state.owner_of("movies"), Some(owner.as_str()));
        // A later share by someone else changes neither owner nor shares.
        state.apply(&event(
            3,
            &other,
            &target,
            "movies",
            EventType::CatalogShared,
        ));
        assert_eq!(state.owner_of("movies"), Some(owner.as_str()));
        assert!(state.catalogs["movies"].shares.is_empty());
    }

    #[test]
    fn apply_shares_and_unshares_by_non_owners_change_no_shares() {
        let owner = account();
        let intruder = account();
        let t1 = account();
        let t2 = account();
        let mut state = DecisionState::default();
        state.apply(&event(1, &owner, &t1, "movies", EventType::CatalogShared));
        let shares_before = state.catalogs["movies"].shares.clone();
        state.apply(&event(
            2,
            &intruder,
            &t2,
            "movies",
            EventType::CatalogShared,
        ));
        state.apply(&event(
            3,
            &intruder,
            &t1,
            "movies",
            EventType::CatalogUnshared,
        ));
        assert_eq!(state.catalogs["movies"].shares, shares_before);
        assert_eq!(state.catalogs["movies"].owner, owner);
        assert_eq!(state.catalogs["movies"].last_seq, 3);
        // An import naming the intruder as owner does not mark the real share imported.
        state.apply(&event(
            4,
            &t1,
            &intruder,
            "movies",
            EventType::CatalogImported,
        ));
        assert!(!state.catalogs["movies"].shares[&t1].imported);
        // An import by an account without a share marks nothing either.
        state.apply(&event(5, &t2, &owner, "movies", EventType::CatalogImported));
        assert_eq!(state.catalogs["movies"].shares, shares_before);
        // The proper import does.
        state.apply(&event(6, &t1, &owner, "movies", EventType::CatalogImported));
        assert!(state.catalogs["movies"].shares[&t1].imported);
    }

    #[test]
    fn apply_unshare_forgets_the_import() {
        let owner = account();
        let target = account();
        let mut state = DecisionState::default();
        state.apply(&event(
            1,
            &owner,
            &target,
            "movies",
            EventType::CatalogShared,
        ));
        state.apply(&event(
            2,
            &target,
            &owner,
            "movies",
            EventType::CatalogImported,
        ));
        assert!(state.catalogs["movies"].shares[&target].imported);
        state.apply(&event(
            3,
            &owner,
            &target,
            "movies",
            EventType::CatalogUnshared,
        ));
        assert!(!state.catalogs["movies"].shares.contains_key(&target));
        state.apply(&event(
            4,
            &owner,
            &target,
            "movies",
            EventType::CatalogShared,
        ));
        assert!(!state.catalogs["movies"].shares[&target].imported);
        // A duplicate share (historical) keeps the import flag of the active share.
        state.apply(&event(
            5,
            &target,
            &owner,
            "movies",
            EventType::CatalogImported,
        ));
        state.apply(&event(
            6,
            &owner,
            &target,
            "movies",
            EventType::CatalogShared,
        ));
        assert!(state.catalogs["movies"].shares[&target].imported);
    }

    #[test]
    fn apply_keeps_the_first_init_and_the_last_context() {
        let a = account();
        let mut state = DecisionState::default();
        state.apply(&event(3, &a, NONE, NONE, EventType::NatsterInitialized));
        state.apply(&event(7, &a, NONE, NONE, EventType::NatsterInitialized));
        assert_eq!(state.accounts[&a].init_seq, 3);
        assert!(state.is_initialized(&a));
        state.apply(&event(8, &a, NONE, NONE, EventType::ContextBound));
        state.apply(&event(9, &a, NONE, NONE, EventType::ContextBound));
        assert_eq!(state.accounts[&a].context_seq, 9);
        assert_eq!(state.accounts[&a].init_seq, 3);
        // A context binding alone does not initialise an account.
        let b = account();
        state.apply(&event(10, &b, NONE, NONE, EventType::ContextBound));
        assert!(!state.is_initialized(&b));
        assert_eq!(state.accounts[&b].context_seq, 10);
        // Neither do shares, for origin or target.
        let c = account();
        state.apply(&event(11, &b, &c, "movies", EventType::CatalogShared));
        assert!(!state.is_initialized(&b));
        assert!(!state.is_initialized(&c));
    }

    #[test]
    fn historical_double_init_still_conflicts_and_expectations_hold() {
        let a = account();
        let b = account();
        let mut sim = Sim::new();
        sim.append(
            EventSubject::new(&a, NONE, NONE, EventType::NatsterInitialized),
            EventBody::Initialized(init_data(&a)),
        );
        sim.append(
            EventSubject::new(&a, NONE, NONE, EventType::NatsterInitialized),
            EventBody::Initialized(init_data(&a)),
        );
        assert_eq!(sim.state.accounts[&a].init_seq, 1);
        conflict(sim.reject(&init(&a)));
        // Historical share events with empty bodies, including a non-owner share.
        sim.append(
            EventSubject::new(&b, &a, "movies", EventType::CatalogShared),
            EventBody::Empty,
        );
        sim.append(
            EventSubject::new(&a, &b, "movies", EventType::CatalogShared),
            EventBody::Other(serde_json::Value::Null),
        );
        sim.ok(&init(&b));
        // `b` owns `movies`; `a` shared it without owning it, which changed nothing.
        assert_eq!(sim.state.owner_of("movies"), Some(b.as_str()));
        not_found(sim.reject(&unshare(&a, &b, "movies")));
        conflict(sim.reject(&share(&a, &account(), "movies")));
        // The expectation seen by the next decision covers the historical events (Sim checks).
        let d = sim.ok(&unshare(&b, &a, "movies"));
        assert_eq!(d.expectation.last_seq, 3, "the b→a pair's share");
    }

    /// A long pseudo-random run over a few accounts and names: every accepted decision's
    /// expectation must match what the server holds, and the state must equal a fresh fold of
    /// the log (so any prefix/suffix split of the fold gives the same state).
    #[test]
    fn random_runs_keep_expectations_and_state_consistent() {
        let keys: Vec<String> = (0..5).map(|_| account()).collect();
        let names = ["movies", "music", "Books"];
        let mut sim = Sim::new();
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        let mut accepted = 0;
        for _ in 0..2000 {
            let a = &keys[next(keys.len())];
            let b = &keys[next(keys.len())];
            let name = names[next(names.len())];
            let command = match next(7) {
                0 => init(a),
                1 | 2 => share(a, b, name),
                3 => unshare(a, b, name),
                4 => import(a, b, name),
                5 => auto_share(a, b, name),
                _ => bind(a, &format!("oauth|{}", next(3))),
            };
            if sim.run(&command).is_ok() {
                accepted += 1;
            }
        }
        assert!(accepted > 100, "only {accepted} accepted");
        // Invariants of an owner's shares: never the owner itself.
        for catalog in sim.state.catalogs.values() {
            assert!(!catalog.owner.is_empty());
            assert!(!catalog.shares.contains_key(&catalog.owner));
        }
        // Refolding the log, in one go or after a replayed prefix, gives the same state.
        for split in [0, 1, sim.log.len() / 3, sim.log.len() / 2, sim.log.len()] {
            let mut state = DecisionState::default();
            for e in &sim.log[..split] {
                state.apply(e);
            }
            for e in &sim.log {
                state.apply(e);
            }
            assert_eq!(state, sim.state, "split at {split}");
        }
    }

    #[test]
    fn shares_without_a_real_target_make_no_owner_like_the_projections() {
        let (a, b, c) = (account(), account(), account());
        let mut state = DecisionState::default();
        state.apply(&event(1, &a, NONE, "movies", EventType::CatalogShared));
        state.apply(&event(2, &c, &c, "music", EventType::CatalogShared));
        assert_eq!(state.owner_of("movies"), None);
        assert_eq!(state.owner_of("music"), None);
        assert_eq!(
            state.catalogs["movies"].last_seq, 1,
            "the sequence still moves"
        );
        state.apply(&event(3, &b, &c, "movies", EventType::CatalogShared));
        assert_eq!(state.owner_of("movies"), Some(b.as_str()));
        let mut records = std::collections::BTreeMap::new();
        crate::projections::fold::<crate::projections::catalogs::Catalogs>(
            &mut records,
            &[
                event(1, &a, NONE, "movies", EventType::CatalogShared),
                event(3, &b, &c, "movies", EventType::CatalogShared),
            ],
        );
        assert_eq!(records["movies"].owner, b);
    }

    #[test]
    fn a_context_binding_on_an_unusual_subject_does_not_move_the_guard() {
        let a = account();
        let mut state = DecisionState::default();
        state.apply(&event(1, &a, NONE, NONE, EventType::NatsterInitialized));
        state.apply(&event(2, &a, "x", NONE, EventType::ContextBound));
        assert_eq!(state.accounts[&a].context_seq, 0);
        state.apply(&event(3, &a, NONE, NONE, EventType::ContextBound));
        assert_eq!(state.accounts[&a].context_seq, 3);
    }
}

use super::*;
use crate::model::validate::MAX_OAUTH_ID;
use crate::model::{Event, NatsterContext};

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
        ..ContextBoundData::default()
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
    assert_eq!(sim.state.account_facts(&a).init_seq, 1);
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
    assert_eq!(sim.state.catalog_facts("movies").unwrap().last_seq, 3);
    assert!(sim
        .state
        .catalog_facts("movies")
        .unwrap()
        .shares
        .contains_key(&k[1]));
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
    let shares = &sim.state.catalog_facts(&long).unwrap().shares;
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
    assert!(sim.state.catalogs().next().is_none());
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
    assert!(sim.state.catalogs().next().is_none());
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
    assert!(sim.state.catalog_facts("movies").unwrap().shares.is_empty());
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
    let shares = &sim.state.catalog_facts("movies").unwrap().shares;
    assert!(!shares.contains_key(&k[1]));
    assert!(shares.contains_key(&k[2]));
    assert_eq!(sim.state.catalog_facts("movies").unwrap().last_seq, 6);
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
    assert!(sim
        .state
        .catalog_facts("movies")
        .unwrap()
        .shares
        .contains_key(&k[1]));
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
    assert!(sim.state.catalog_facts("movies").unwrap().shares[&k[1]].imported);
    assert_eq!(sim.state.catalog_facts("movies").unwrap().last_seq, 4);
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
    assert!(!sim.state.catalog_facts("movies").unwrap().shares[&k[1]].imported);
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
    assert!(!sim.state.catalog_facts("movies").unwrap().shares[&k[1]].imported);
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
    assert_eq!(sim.state.account_facts(&k[0]).context_seq, 3);
    sim.ok(&bind(&k[1], "other")); // 4
                                   // A second binding expects the account's own last context event.
    let d = sim.ok(&bind(&k[0], "google|1")); // 5
    assert_eq!(d.expectation.last_seq, 3);
    assert_eq!(d.expectation.filter, None);
    assert_eq!(sim.state.account_facts(&k[0]).context_seq, 5);
    assert_eq!(sim.state.account_facts(&k[1]).context_seq, 4);
}

#[test]
fn a_binding_names_the_oauth_id_and_the_account_it_replaces() {
    let (mut sim, k) = Sim::initialized(2);
    let replaced = |d: &Decision| match &d.body {
        EventBody::ContextBound(data) => (
            data.previous_oauth_id.clone(),
            data.previous_account.clone(),
        ),
        other => panic!("{other:?}"),
    };
    assert_eq!(replaced(&sim.ok(&bind(&k[0], "u1"))), (None, None));
    // The same binding again replaces nothing.
    assert_eq!(replaced(&sim.ok(&bind(&k[0], "u1"))), (None, None));
    assert_eq!(
        replaced(&sim.ok(&bind(&k[0], "u2"))),
        (Some("u1".into()), None)
    );
    // u2 moves to k1, which was bound to nothing; k0 is left with none.
    assert_eq!(
        replaced(&sim.ok(&bind(&k[1], "u2"))),
        (None, Some(k[0].clone()))
    );
    assert_eq!(sim.state.bindings.oauth_id_of(&k[0]), None);
    assert_eq!(
        replaced(&sim.ok(&bind(&k[0], "u1"))),
        (None, None),
        "u1 was left when k0 moved to u2"
    );
    assert_eq!(
        replaced(&sim.ok(&bind(&k[0], "u2"))),
        (Some("u1".into()), Some(k[1].clone()))
    );
    assert!(sim.state.bindings.oauth_id_of(&k[1]).is_none());
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
    assert!(state.catalog_facts("movies").unwrap().shares.is_empty());
}

#[test]
fn apply_gaps_in_sequences_are_fine() {
    let a = account();
    let b = account();
    let mut state = DecisionState::default();
    state.apply(&event(10, &a, &b, "movies", EventType::CatalogShared));
    state.apply(&event(25, &b, &a, "movies", EventType::CatalogImported));
    assert_eq!(state.last_seq, 25);
    assert_eq!(state.catalog_facts("movies").unwrap().last_seq, 25);
    assert!(state.catalog_facts("movies").unwrap().shares[&b].imported);
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
        assert_eq!(
            sim.state.catalog_facts("movies").unwrap().last_seq,
            e.seq,
            "{subject:?}"
        );
        assert_eq!(
            sim.state.catalog_facts("movies").unwrap().last_seq,
            sim.server_last_seq(&EventSubject::catalog_aggregate("movies"))
        );
    }
    // Events elsewhere do not move it.
    let last = sim.state.catalog_facts("movies").unwrap().last_seq;
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
    assert_eq!(sim.state.catalog_facts("movies").unwrap().last_seq, last);
    assert_eq!(sim.state.catalog_facts("music").unwrap().last_seq, last + 1);
    // `none` is not a catalog.
    assert!(sim.state.catalog_facts(NONE).is_none());
    assert_eq!(sim.state.catalogs().count(), 2);
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
    assert!(state.catalog_facts("movies").unwrap().shares.is_empty());
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
    assert!(state.catalog_facts("movies").unwrap().shares.is_empty());
}

#[test]
fn apply_shares_and_unshares_by_non_owners_change_no_shares() {
    let owner = account();
    let intruder = account();
    let t1 = account();
    let t2 = account();
    let mut state = DecisionState::default();
    state.apply(&event(1, &owner, &t1, "movies", EventType::CatalogShared));
    let shares_before = state.catalog_facts("movies").unwrap().shares.clone();
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
    assert_eq!(state.catalog_facts("movies").unwrap().shares, shares_before);
    assert_eq!(state.catalog_facts("movies").unwrap().owner, owner);
    assert_eq!(state.catalog_facts("movies").unwrap().last_seq, 3);
    // An import naming the intruder as owner does not mark the real share imported.
    state.apply(&event(
        4,
        &t1,
        &intruder,
        "movies",
        EventType::CatalogImported,
    ));
    assert!(!state.catalog_facts("movies").unwrap().shares[&t1].imported);
    // An import by an account without a share marks nothing either.
    state.apply(&event(5, &t2, &owner, "movies", EventType::CatalogImported));
    assert_eq!(state.catalog_facts("movies").unwrap().shares, shares_before);
    // The proper import does.
    state.apply(&event(6, &t1, &owner, "movies", EventType::CatalogImported));
    assert!(state.catalog_facts("movies").unwrap().shares[&t1].imported);
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
    assert!(state.catalog_facts("movies").unwrap().shares[&target].imported);
    state.apply(&event(
        3,
        &owner,
        &target,
        "movies",
        EventType::CatalogUnshared,
    ));
    assert!(!state
        .catalog_facts("movies")
        .unwrap()
        .shares
        .contains_key(&target));
    state.apply(&event(
        4,
        &owner,
        &target,
        "movies",
        EventType::CatalogShared,
    ));
    assert!(!state.catalog_facts("movies").unwrap().shares[&target].imported);
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
    assert!(state.catalog_facts("movies").unwrap().shares[&target].imported);
}

#[test]
fn apply_keeps_the_first_init_and_the_last_context() {
    let a = account();
    let mut state = DecisionState::default();
    state.apply(&event(3, &a, NONE, NONE, EventType::NatsterInitialized));
    state.apply(&event(7, &a, NONE, NONE, EventType::NatsterInitialized));
    assert_eq!(state.account_facts(&a).init_seq, 3);
    assert!(state.is_initialized(&a));
    state.apply(&event(8, &a, NONE, NONE, EventType::ContextBound));
    state.apply(&event(9, &a, NONE, NONE, EventType::ContextBound));
    assert_eq!(state.account_facts(&a).context_seq, 9);
    assert_eq!(state.account_facts(&a).init_seq, 3);
    // A context binding alone does not initialise an account.
    let b = account();
    state.apply(&event(10, &b, NONE, NONE, EventType::ContextBound));
    assert!(!state.is_initialized(&b));
    assert_eq!(state.account_facts(&b).context_seq, 10);
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
    assert_eq!(sim.state.account_facts(&a).init_seq, 1);
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
    let mut next = crate::model::testing::xorshift(0x9E37_79B9_7F4A_7C15);
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
    for catalog in sim.state.catalogs() {
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
fn a_context_binding_on_an_unusual_subject_does_not_move_the_guard() {
    let a = account();
    let mut state = DecisionState::default();
    state.apply(&event(1, &a, NONE, NONE, EventType::NatsterInitialized));
    state.apply(&event(2, &a, "x", NONE, EventType::ContextBound));
    assert_eq!(state.account_facts(&a).context_seq, 0);
    state.apply(&event(3, &a, NONE, NONE, EventType::ContextBound));
    assert_eq!(state.account_facts(&a).context_seq, 3);
}

// ----- share limits ----------------------------------------------------------------------

fn limited(out: usize, per_catalog: usize, into: usize) -> Sim {
    Sim {
        state: DecisionState::with_limits(crate::model::ShareLimits {
            out_shares_per_account: out,
            accounts_per_catalog: per_catalog,
            in_shares_per_account: into,
        }),
        log: vec![],
    }
}

fn conflict_text(rejection: Rejection) -> String {
    match rejection {
        Rejection::Conflict(text) => text,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[test]
fn a_share_past_the_owners_out_shares_conflicts_naming_the_limit_and_an_unshare_frees_one() {
    let mut sim = limited(3, 100, 100);
    let owner = account();
    sim.ok(&init(&owner));
    let targets: Vec<String> = (0..4).map(|_| account()).collect();
    for (i, target) in targets.iter().take(3).enumerate() {
        sim.ok(&share(&owner, target, &format!("cat{i}")));
    }
    let text = conflict_text(sim.reject(&share(&owner, &targets[3], "cat9")));
    assert!(text.contains("out-shares limit 3"), "{text}");
    sim.ok(&unshare(&owner, &targets[0], "cat0"));
    sim.ok(&share(&owner, &targets[3], "cat9"));
    assert_eq!(sim.state.account_facts(&owner).out_shares, 3);
}

#[test]
fn a_share_past_the_catalogs_accounts_conflicts() {
    let mut sim = limited(100, 2, 100);
    let owner = account();
    sim.ok(&init(&owner));
    sim.ok(&share(&owner, &account(), "photos"));
    sim.ok(&share(&owner, &account(), "photos"));
    let text = conflict_text(sim.reject(&share(&owner, &account(), "photos")));
    assert!(text.contains("accounts-per-catalog limit 2"), "{text}");
    // Another catalog of the same owner is not affected.
    sim.ok(&share(&owner, &account(), "music"));
}

#[test]
fn a_share_past_the_targets_in_shares_conflicts_whoever_shares() {
    let mut sim = limited(100, 100, 2);
    let target = account();
    for i in 0..2 {
        let owner = account();
        sim.ok(&init(&owner));
        sim.ok(&share(&owner, &target, &format!("c{i}")));
    }
    let late = account();
    sim.ok(&init(&late));
    let text = conflict_text(sim.reject(&share(&late, &target, "late")));
    assert!(text.contains("in-shares limit 2"), "{text}");
    // The hub's auto-share obeys the same limits.
    let text = conflict_text(sim.reject(&auto_share(&account(), &target, "hub")));
    assert!(text.contains("in-shares limit 2"), "{text}");
}

#[test]
fn share_counts_follow_only_shares_that_take_effect() {
    let mut sim = limited(100, 100, 100);
    let (owner, other, target) = (account(), account(), account());
    sim.ok(&init(&owner));
    sim.ok(&share(&owner, &target, "photos"));
    // An adopted log may hold a second share of the same pair and a share by a non-owner:
    // neither is a new active share.
    sim.append(
        EventSubject::new(&owner, &target, "photos", EventType::CatalogShared),
        EventBody::Empty,
    );
    sim.append(
        EventSubject::new(&other, &target, "photos", EventType::CatalogShared),
        EventBody::Empty,
    );
    assert_eq!(sim.state.account_facts(&owner).out_shares, 1);
    assert_eq!(sim.state.account_facts(&target).in_shares, 1);
    assert_eq!(sim.state.account_facts(&other).out_shares, 0);
    // An unshare of a share that is not active changes nothing.
    sim.append(
        EventSubject::new(&owner, &other, "photos", EventType::CatalogUnshared),
        EventBody::Empty,
    );
    sim.ok(&unshare(&owner, &target, "photos"));
    assert_eq!(sim.state.account_facts(&owner).out_shares, 0);
    assert_eq!(sim.state.account_facts(&target).in_shares, 0);
}

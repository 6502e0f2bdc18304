//! Decisions: `decide(state, command) -> Decision | Rejection`, pure, against the state folded
//! from the event log by [`DecisionState::apply`](super::DecisionState::apply).
//!
//! The shell (see `crate::write`) appends the decided event with the decision's
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

use super::event::{ContextBoundData, EventBody, EventSubject, EventType, InitData, NONE};
use super::state::DecisionState;

/// What a caller asks for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
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

    /// Whether the decision reads facts of other aggregates that its expectation does not
    /// guard (a binding reads who else holds the OAuth id): the decider brings its state up to
    /// the log's end before deciding it. The rest of such a race is documented where it is
    /// decided.
    pub fn reads_unguarded_state(&self) -> bool {
        matches!(self, Command::BindContext { .. })
    }

    /// A digest of everything the command asks for: two requests under one idempotency key
    /// are the same request exactly when their fingerprints are equal. Stable across
    /// instances and restarts (a hash of the command's JSON, whose field order is fixed).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_vec(self).expect("a command serialises to JSON");
        data_encoding::BASE64URL_NOPAD.encode(&Sha256::digest(&json)[..18])
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

/// Decides `command` against `state`.
///
/// Rules (codes as the envelope reports them):
/// - `Initialize`: the data must name the caller (400); once per account (409).
/// - `Share`: valid name (400), target a valid account key other than the caller (400),
///   initialised caller (404), name not owned by another account (409), not already actively
///   shared with the target (409), within the share limits of the state (409).
/// - `Unshare`: valid name and target (400), initialised caller (404), an active share from the
///   caller as owner to the target (404).
/// - `Import`: valid name and owner key other than the caller (400), initialised caller (404),
///   an active share from `owner` to the caller (404), not already imported (409).
/// - `AutoShare`: like `Share` without the initialised-origin rule.
/// - `BindContext`: initialised account (404); the context names that account, and the OAuth
///   id is 1–256 characters (400). The event names the OAuth id the account leaves and the
///   account the OAuth id leaves, if any.
pub fn decide(state: &DecisionState, command: &Command) -> Result<Decision, Rejection> {
    match command {
        Command::Initialize { caller, data } => initialize(state, caller, data),
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
        } => unshare(state, caller, target, catalog),
        Command::Import {
            caller,
            owner,
            catalog,
        } => import(state, caller, owner, catalog),
        Command::BindContext { account, data } => bind_context(state, account, data),
    }
}

fn initialize(state: &DecisionState, caller: &str, data: &InitData) -> Result<Decision, Rejection> {
    if data.account_key != caller {
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

fn unshare(
    state: &DecisionState,
    caller: &str,
    target: &str,
    catalog: &str,
) -> Result<Decision, Rejection> {
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

fn import(
    state: &DecisionState,
    caller: &str,
    owner: &str,
    catalog: &str,
) -> Result<Decision, Rejection> {
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

/// A binding is guarded by the account's own binding subject only: two bindings of one OAuth
/// id to two accounts appended at the same instant can both miss the other, and then the
/// older account keeps showing the id in its record (`context.get` answers the newer one).
/// Bindings come from people claiming codes, so this is left unguarded rather than
/// serialising every binding through a wildcard expectation the server resolves by scanning
/// every subject.
fn bind_context(
    state: &DecisionState,
    account: &str,
    data: &ContextBoundData,
) -> Result<Decision, Rejection> {
    require_initialized(state, account)?;
    if data.bound_context.account_public_key != account {
        return Err(Rejection::BadRequest(
            "the context does not belong to the account it is bound for".into(),
        ));
    }
    if let Some(problem) = super::validate::oauth_id_problem(&data.oauth_id) {
        return Err(Rejection::BadRequest(problem.into()));
    }
    let bindings = &state.bindings;
    let data = ContextBoundData {
        previous_oauth_id: bindings
            .oauth_id_of(account)
            .filter(|id| *id != data.oauth_id)
            .map(str::to_string),
        previous_account: bindings
            .account_of(&data.oauth_id)
            .filter(|other| *other != account)
            .map(str::to_string),
        ..data.clone()
    };
    Ok(Decision {
        subject: EventSubject::new(account, NONE, NONE, EventType::ContextBound),
        body: EventBody::ContextBound(data),
        expectation: Expectation {
            last_seq: state.context_seq(account),
            filter: None,
        },
        claim: None,
    })
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
    check_limits(state, origin, target, catalog)?;
    let mut decision = catalog_decision(
        state,
        EventSubject::new(origin, target, catalog, EventType::CatalogShared),
    );
    if state.owner_of(catalog).is_none() {
        decision.claim = Some(catalog.to_string());
    }
    Ok(decision)
}

/// The share limits of [`ShareLimits`](super::limits::ShareLimits): a new share must not
/// take the owner past its out-shares, the catalog past its accounts, or the target past its
/// in-shares.
fn check_limits(
    state: &DecisionState,
    origin: &str,
    target: &str,
    catalog: &str,
) -> Result<(), Rejection> {
    let limits = &state.limits;
    let (out_shares, in_shares) = state.share_counts(origin, target);
    if out_shares >= limits.out_shares_per_account {
        return Err(Rejection::Conflict(format!(
            "this account already has {out_shares} active shares, the most one account may \
             have (out-shares limit {}); unshare one first",
            limits.out_shares_per_account
        )));
    }
    let accounts = state.catalog_share_count(catalog);
    if accounts >= limits.accounts_per_catalog {
        return Err(Rejection::Conflict(format!(
            "this catalog is already shared with {accounts} accounts, the most one catalog may \
             be shared with (accounts-per-catalog limit {})",
            limits.accounts_per_catalog
        )));
    }
    if in_shares >= limits.in_shares_per_account {
        return Err(Rejection::Conflict(format!(
            "that account already receives {in_shares} active shares, the most one account may \
             receive (in-shares limit {})",
            limits.in_shares_per_account
        )));
    }
    Ok(())
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
    if !super::validate::is_account_public_key(other) {
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
mod tests;

//! The request API: one module per op, the reply envelope, and the caller's identity.
//!
//! Every request arrives on `<CALLER_ACCOUNT>.natster.global.<op>`. The first token is put
//! there by the server from the importer's account (export token position 1), so it is the
//! caller's proven identity; an account key that arrives in a payload is never trusted.

pub mod envelope;
pub mod whoami;

use crate::store::Store;
use bytes::Bytes;
pub use envelope::{ApiError, Envelope};

/// The ops this service serves. Any other op gets "no responders", as NATS services do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Whoami,
}

impl Op {
    /// Every served op.
    pub const ALL: &'static [Op] = &[Op::Whoami];

    /// The op's name: the subject tokens after `natster.global.`.
    pub fn name(self) -> &'static str {
        match self {
            Op::Whoami => "whoami",
        }
    }

    /// Subject the service subscribes to for this op (any caller account in token 1).
    pub fn service_subject(self) -> String {
        format!("*.natster.global.{}", self.name())
    }

    /// Subject an importing account uses for this op.
    pub fn importer_subject(self) -> String {
        format!("natster.global.{}", self.name())
    }
}

/// The proven identity of a request: the account public key in the subject's first token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub account: String,
}

impl Caller {
    /// Reads the caller from a request subject; 400 when token 1 is not an account key.
    pub fn from_subject(subject: &str) -> Result<Caller, ApiError> {
        let first = subject.split('.').next().unwrap_or_default();
        if crate::auth::is_account_public_key(first) {
            Ok(Caller {
                account: first.to_string(),
            })
        } else {
            Err(ApiError::bad_request(
                "the request subject does not start with a caller account key",
            ))
        }
    }
}

/// What a handler may use: the store and settings.
#[derive(Clone)]
pub struct ApiContext {
    pub store: Store,
}

/// One request, after identity and size checks.
pub struct ApiRequest<'a> {
    pub caller: Caller,
    pub payload: &'a Bytes,
    pub headers: Option<&'a async_nats::HeaderMap>,
}

/// Runs the handler of `op`; the result is the reply `data` or an error envelope.
pub async fn dispatch(
    context: &ApiContext,
    op: Op,
    request: ApiRequest<'_>,
) -> Result<serde_json::Value, ApiError> {
    match op {
        Op::Whoami => whoami::handle(context, &request).await,
    }
}

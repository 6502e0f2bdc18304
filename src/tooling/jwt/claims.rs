//! Claim shapes of nats-io/jwt v2 that this project mints: operator, account, user.
//!
//! Field names and the `-1` = unlimited convention follow the Go library, because nats-server
//! parses these JWTs with it. Only fields this project sets are modelled; unknown fields in
//! decoded JWTs are ignored.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The fields common to every JWT (`iat`, `iss`, `jti` are filled by [`crate::tooling::jwt::encode`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims<N> {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    #[serde(default)]
    pub iat: i64,
    #[serde(default)]
    pub iss: String,
    pub name: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    pub nats: N,
}

/// `nats` part of an operator JWT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorNats {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub system_account: String,
}

/// Operator claims.
pub type OperatorClaims = Claims<OperatorNats>;

impl OperatorClaims {
    /// An operator named `name` with public key `sub`, naming `system_account` as its system account.
    pub fn new(name: &str, sub: &str, system_account: &str) -> Self {
        Claims {
            jti: String::new(),
            iat: 0,
            iss: String::new(),
            name: name.to_string(),
            sub: sub.to_string(),
            exp: None,
            nats: OperatorNats {
                kind: "operator".into(),
                version: 2,
                system_account: system_account.to_string(),
            },
        }
    }
}

/// Kind of an export or import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportType {
    Service,
    Stream,
}

/// How many replies a service export may send per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseType {
    Singleton,
    Stream,
    Chunked,
}

/// One export of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Export {
    pub name: String,
    pub subject: String,
    #[serde(rename = "type")]
    pub kind: ExportType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_type: Option<ResponseType>,
    /// 1-based subject token that the server fills with the importer's account key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_token_position: Option<u32>,
}

impl Export {
    /// A service export answered with one reply per request.
    pub fn service(name: &str, subject: &str, account_token_position: Option<u32>) -> Self {
        Export {
            name: name.into(),
            subject: subject.into(),
            kind: ExportType::Service,
            response_type: Some(ResponseType::Singleton),
            account_token_position,
        }
    }

    /// A stream export.
    pub fn stream(name: &str, subject: &str, account_token_position: Option<u32>) -> Self {
        Export {
            name: name.into(),
            subject: subject.into(),
            kind: ExportType::Stream,
            response_type: None,
            account_token_position,
        }
    }

    /// Sets the response type (service exports only).
    pub fn with_response_type(mut self, response_type: ResponseType) -> Self {
        self.response_type = Some(response_type);
        self
    }
}

/// One import of an account.
///
/// `subject` is the exporter's subject with the importer's own key in the token position;
/// `local_subject` is what the importer's clients use and must have the same wildcards as
/// `subject` (a mismatch invalidates the whole account JWT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Import {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ExportType,
    /// Public key of the exporting account.
    pub account: String,
    pub subject: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_subject: String,
}

impl Import {
    /// An import of `subject` from `account`, seen locally as `local_subject`.
    pub fn new(
        kind: ExportType,
        name: &str,
        account: &str,
        subject: &str,
        local_subject: &str,
    ) -> Self {
        Import {
            name: name.into(),
            kind,
            account: account.into(),
            subject: subject.into(),
            local_subject: local_subject.into(),
        }
    }
}

/// Operator limits of an account; `-1` is unlimited, `0` disables (JetStream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountLimits {
    pub subs: i64,
    pub data: i64,
    pub payload: i64,
    pub imports: i64,
    pub exports: i64,
    pub wildcards: bool,
    pub conn: i64,
    pub leaf: i64,
    pub mem_storage: i64,
    pub disk_storage: i64,
    pub streams: i64,
    pub consumer: i64,
    pub max_ack_pending: i64,
    pub mem_max_stream_bytes: i64,
    pub disk_max_stream_bytes: i64,
    pub max_bytes_required: bool,
}

impl AccountLimits {
    /// No limits, JetStream disabled.
    pub fn without_jetstream() -> Self {
        AccountLimits {
            subs: -1,
            data: -1,
            payload: -1,
            imports: -1,
            exports: -1,
            wildcards: true,
            conn: -1,
            leaf: -1,
            mem_storage: 0,
            disk_storage: 0,
            streams: 0,
            consumer: 0,
            max_ack_pending: -1,
            mem_max_stream_bytes: -1,
            disk_max_stream_bytes: -1,
            max_bytes_required: false,
        }
    }

    /// No limits, JetStream enabled without storage limits.
    pub fn with_jetstream() -> Self {
        AccountLimits {
            mem_storage: -1,
            disk_storage: -1,
            streams: -1,
            consumer: -1,
            ..Self::without_jetstream()
        }
    }

    /// Whether these limits enable JetStream for the account.
    pub fn jetstream_enabled(&self) -> bool {
        self.mem_storage != 0 || self.disk_storage != 0
    }
}

/// Subjects a user may publish or subscribe to (empty = no restriction).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Permission {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// Default publish/subscribe permissions of an account's users.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Permissions {
    #[serde(rename = "pub", default)]
    pub publish: Permission,
    #[serde(rename = "sub", default)]
    pub subscribe: Permission,
}

/// `nats` part of an account JWT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountNats {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
    #[serde(default)]
    pub authorization: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub default_permissions: Permissions,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<Export>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub imports: Vec<Import>,
    pub limits: AccountLimits,
    /// User public key → Unix time: user JWTs issued at or before that time are revoked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revocations: BTreeMap<String, i64>,
}

/// Account claims.
pub type AccountClaims = Claims<AccountNats>;

impl AccountClaims {
    /// An account named `name` with public key `sub`, no exports or imports, JetStream off.
    pub fn new(name: &str, sub: &str) -> Self {
        Claims {
            jti: String::new(),
            iat: 0,
            iss: String::new(),
            name: name.to_string(),
            sub: sub.to_string(),
            exp: None,
            nats: AccountNats {
                kind: "account".into(),
                version: 2,
                authorization: Default::default(),
                default_permissions: Permissions::default(),
                exports: vec![],
                imports: vec![],
                limits: AccountLimits::without_jetstream(),
                revocations: BTreeMap::new(),
            },
        }
    }

    /// Revokes every JWT of user `user_key` issued at or before `at` (Unix seconds).
    pub fn revoke(&mut self, user_key: &str, at: i64) {
        self.nats.revocations.insert(user_key.to_string(), at);
    }
}

/// `nats` part of a user JWT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserNats {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
    #[serde(rename = "pub", default)]
    pub publish: Permission,
    #[serde(rename = "sub", default)]
    pub subscribe: Permission,
    pub subs: i64,
    pub data: i64,
    pub payload: i64,
}

/// User claims.
pub type UserClaims = Claims<UserNats>;

impl UserClaims {
    /// A user named `name` with public key `sub` and no limits.
    pub fn new(name: &str, sub: &str) -> Self {
        Claims {
            jti: String::new(),
            iat: 0,
            iss: String::new(),
            name: name.to_string(),
            sub: sub.to_string(),
            exp: None,
            nats: UserNats {
                kind: "user".into(),
                version: 2,
                publish: Permission::default(),
                subscribe: Permission::default(),
                subs: -1,
                data: -1,
                payload: -1,
            },
        }
    }
}

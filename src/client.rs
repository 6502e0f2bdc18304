//! A typed client for programs in other accounts: [`GlobalClient`] over an `async_nats::Client`
//! connected in the caller's account (with the imports `bootstrap` gives every account).
//!
//! One async method per op; errors are the envelope's code mapped to a [`ClientErrorKind`].
//! Reads can wait for the caller's own writes: [`GlobalClient::at_least`] sets
//! `Natster-Min-Seq` to the sequence an `events.put` returned.

use crate::api::MIN_SEQ_HEADER;
use crate::contract::ReplyEnvelope;
use crate::model::{
    AccountRecord, ContextReply, EventsPutReply, EventsPutRequest, HeartbeatRequest, InitData,
    NameValidation, NatsterContext, OnlineNotice, OtcClaimRequest, OtcGenerateReply, ShareNotice,
    ShareSummary, StatsReply, WhoamiReply,
};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// The importer's subject prefix of the API.
pub const API_PREFIX: &str = "natster.global";
/// The importer's subject prefix of the feed.
pub const FEED_PREFIX: &str = "natster.global-events";
/// The importer's subject of the own-record direct get.
pub const OWN_RECORD_SUBJECT: &str = "natster.projections.account";
/// The importer's subject of own-record updates.
pub const OWN_RECORD_UPDATES_SUBJECT: &str = "natster.projections.account.updates";

/// What kind of failure a call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientErrorKind {
    /// 400 or 413: the request is malformed or too large.
    BadRequest,
    /// 403: the caller may not do this.
    Forbidden,
    /// 404: no such thing (or not initialised).
    NotFound,
    /// 409: a rule refused it against current state.
    Conflict,
    /// 429: too many writes; retry later.
    RateLimited,
    /// 503, or no instance answered: retry later.
    Unavailable,
    /// Another 5xx: the service failed.
    Server,
    /// The request or reply did not make it (timeout, connection, undecodable reply).
    Transport,
}

/// A failed call: its kind, the envelope code (none for transport failures) and the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ClientError {
    pub kind: ClientErrorKind,
    pub code: Option<u16>,
    pub message: String,
}

impl ClientError {
    fn transport(message: impl Into<String>) -> ClientError {
        ClientError {
            kind: ClientErrorKind::Transport,
            code: None,
            message: message.into(),
        }
    }

    /// The error an envelope with `code` and `message` stands for.
    pub fn from_envelope(code: u16, message: String) -> ClientError {
        let kind = match code {
            400 | 413 => ClientErrorKind::BadRequest,
            403 => ClientErrorKind::Forbidden,
            404 => ClientErrorKind::NotFound,
            409 => ClientErrorKind::Conflict,
            429 => ClientErrorKind::RateLimited,
            503 => ClientErrorKind::Unavailable,
            500..=599 => ClientErrorKind::Server,
            _ => ClientErrorKind::BadRequest,
        };
        ClientError {
            kind,
            code: Some(code),
            message: format!("{code}: {message}"),
        }
    }
}

/// A message of the caller's feed.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedMessage {
    Heartbeat(HeartbeatRequest),
    CatalogOnline(OnlineNotice),
    CatalogOffline(OnlineNotice),
    CatalogShared(ShareNotice),
    CatalogUnshared(ShareNotice),
    /// A kind this client does not know (newer service), with its payload.
    Other {
        kind: String,
        payload: serde_json::Value,
    },
}

impl FeedMessage {
    /// Decodes a message of feed kind `kind`.
    pub fn decode(kind: &str, payload: &[u8]) -> Result<FeedMessage, ClientError> {
        fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ClientError> {
            serde_json::from_slice(payload)
                .map_err(|e| ClientError::transport(format!("undecodable feed message: {e}")))
        }
        Ok(match kind {
            "heartbeat" => FeedMessage::Heartbeat(parse(payload)?),
            "catalog_online" => FeedMessage::CatalogOnline(parse(payload)?),
            "catalog_offline" => FeedMessage::CatalogOffline(parse(payload)?),
            "catalog_shared" => FeedMessage::CatalogShared(parse(payload)?),
            "catalog_unshared" => FeedMessage::CatalogUnshared(parse(payload)?),
            other => FeedMessage::Other {
                kind: other.to_string(),
                payload: parse(payload)?,
            },
        })
    }

    /// The feed kind (last subject token).
    pub fn kind(&self) -> &str {
        match self {
            FeedMessage::Heartbeat(_) => "heartbeat",
            FeedMessage::CatalogOnline(_) => "catalog_online",
            FeedMessage::CatalogOffline(_) => "catalog_offline",
            FeedMessage::CatalogShared(_) => "catalog_shared",
            FeedMessage::CatalogUnshared(_) => "catalog_unshared",
            FeedMessage::Other { kind, .. } => kind,
        }
    }
}

/// The service, as seen from one account; cheap to clone.
#[derive(Clone)]
pub struct GlobalClient {
    client: async_nats::Client,
    timeout: Duration,
    min_seq: Option<u64>,
}

impl GlobalClient {
    /// A client on `client` (connected in the caller's account), 5 s per request.
    pub fn new(client: async_nats::Client) -> GlobalClient {
        GlobalClient {
            client,
            timeout: Duration::from_secs(5),
            min_seq: None,
        }
    }

    /// The same client with another request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> GlobalClient {
        self.timeout = timeout;
        self
    }

    /// The same client whose reads wait until the service has applied `seq` (the `seq` an
    /// `events.put` returned): read-your-writes. A read that cannot get there in 2 s fails
    /// with [`ClientErrorKind::Unavailable`].
    pub fn at_least(&self, seq: u64) -> GlobalClient {
        GlobalClient {
            min_seq: Some(seq),
            ..self.clone()
        }
    }

    /// The connection underneath.
    pub fn nats(&self) -> &async_nats::Client {
        &self.client
    }

    /// Sends `payload` to op `op` and returns the reply envelope as it came.
    pub async fn request_raw(
        &self,
        op: &str,
        payload: bytes::Bytes,
    ) -> Result<ReplyEnvelope<serde_json::Value>, ClientError> {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(seq) = self.min_seq {
            headers.insert(MIN_SEQ_HEADER, seq.to_string().as_str());
        }
        let request =
            self.client
                .request_with_headers(format!("{API_PREFIX}.{op}"), headers, payload);
        let reply = tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| ClientError::transport(format!("{op}: no reply within {:?}", self.timeout)))?
            .map_err(|error| match error.kind() {
                async_nats::RequestErrorKind::NoResponders => ClientError {
                    kind: ClientErrorKind::Unavailable,
                    code: None,
                    message: format!("{op}: no natster-global instance answered (no responders; is the import in place?)"),
                },
                _ => ClientError::transport(format!("{op}: {error}")),
            })?;
        serde_json::from_slice(&reply.payload)
            .map_err(|e| ClientError::transport(format!("{op}: the reply is not an envelope: {e}")))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        op: &str,
        payload: bytes::Bytes,
    ) -> Result<T, ClientError> {
        let envelope = self.request_raw(op, payload).await?;
        if envelope.code != 200 {
            return Err(ClientError::from_envelope(
                envelope.code,
                envelope.error.unwrap_or_default(),
            ));
        }
        serde_json::from_value(envelope.data.unwrap_or(serde_json::Value::Null))
            .map_err(|e| ClientError::transport(format!("{op}: unexpected reply data: {e}")))
    }

    fn json(value: &impl serde::Serialize) -> bytes::Bytes {
        serde_json::to_vec(value)
            .expect("request types serialize")
            .into()
    }

    /// `events.put`: appends an event; returns its stream sequence.
    pub async fn put_event(&self, request: &EventsPutRequest) -> Result<u64, ClientError> {
        let reply: EventsPutReply = self.call("events.put", Self::json(request)).await?;
        Ok(reply.seq)
    }

    /// Initialises Natster for the caller (`data.account_key` must be the caller's key).
    pub async fn initialize(&self, data: &InitData) -> Result<u64, ClientError> {
        self.put_event(&EventsPutRequest {
            catalog: crate::model::NONE.into(),
            target: crate::model::NONE.into(),
            event_type: "natster_initialized".into(),
            data: Some(serde_json::to_value(data).expect("init data serializes")),
        })
        .await
    }

    /// Shares the caller's catalog with account `target`.
    pub async fn share(&self, catalog: &str, target: &str) -> Result<u64, ClientError> {
        self.share_event("catalog_shared", catalog, target).await
    }

    /// Ends a share of the caller's catalog with `target`.
    pub async fn unshare(&self, catalog: &str, target: &str) -> Result<u64, ClientError> {
        self.share_event("catalog_unshared", catalog, target).await
    }

    /// Imports `owner`'s catalog shared with the caller.
    pub async fn import(&self, catalog: &str, owner: &str) -> Result<u64, ClientError> {
        self.share_event("catalog_imported", catalog, owner).await
    }

    async fn share_event(
        &self,
        event_type: &str,
        catalog: &str,
        target: &str,
    ) -> Result<u64, ClientError> {
        self.put_event(&EventsPutRequest {
            catalog: catalog.into(),
            target: target.into(),
            event_type: event_type.into(),
            data: None,
        })
        .await
    }

    /// `heartbeats.put`: the caller's catalog is up (or stops, with `offline`).
    pub async fn heartbeat(&self, heartbeat: &HeartbeatRequest) -> Result<(), ClientError> {
        let _: serde_json::Value = self.call("heartbeats.put", Self::json(heartbeat)).await?;
        Ok(())
    }

    /// `stats`.
    pub async fn stats(&self) -> Result<StatsReply, ClientError> {
        self.call("stats", bytes::Bytes::new()).await
    }

    /// `my.shares`.
    pub async fn my_shares(&self) -> Result<Vec<ShareSummary>, ClientError> {
        self.call("my.shares", bytes::Bytes::new()).await
    }

    /// `whoami` ([`ClientErrorKind::NotFound`] before the caller initialised).
    pub async fn whoami(&self) -> Result<WhoamiReply, ClientError> {
        self.call("whoami", bytes::Bytes::new()).await
    }

    /// `otc.generate` for the caller's own context.
    pub async fn otc_generate(
        &self,
        context: &NatsterContext,
    ) -> Result<OtcGenerateReply, ClientError> {
        self.call("otc.generate", Self::json(context)).await
    }

    /// `otc.claim` (web accounts): the bound context, without its access token.
    pub async fn otc_claim(
        &self,
        code: &str,
        oauth_id: &str,
    ) -> Result<NatsterContext, ClientError> {
        let request = OtcClaimRequest {
            code: code.into(),
            oauth_id: oauth_id.into(),
        };
        self.call("otc.claim", Self::json(&request)).await
    }

    /// `context.get` (web accounts).
    pub async fn context_get(&self, oauth_id: &str) -> Result<ContextReply, ClientError> {
        self.call("context.get", bytes::Bytes::from(oauth_id.to_string()))
            .await
    }

    /// `catalogs.validatename`.
    pub async fn validate_name(&self, name: &str) -> Result<NameValidation, ClientError> {
        self.call(
            "catalogs.validatename",
            bytes::Bytes::from(name.to_string()),
        )
        .await
    }

    /// The caller's own account record and its stream sequence; `None` before it initialised.
    pub async fn own_record(&self) -> Result<Option<(AccountRecord, u64)>, ClientError> {
        let request = self.client.request(OWN_RECORD_SUBJECT, bytes::Bytes::new());
        let reply = tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| ClientError::transport("own record: no reply in time"))?
            .map_err(|e| ClientError::transport(format!("own record: {e}")))?;
        if reply.status == Some(async_nats::StatusCode::NOT_FOUND) {
            return Ok(None);
        }
        let seq = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Sequence"))
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0);
        let record = serde_json::from_slice(&reply.payload)
            .map_err(|e| ClientError::transport(format!("own record: {e}")))?;
        Ok(Some((record, seq)))
    }

    /// Every new version of the caller's own account record, from now on.
    pub async fn watch_own_record(
        &self,
    ) -> Result<impl Stream<Item = Result<AccountRecord, ClientError>>, ClientError> {
        let subscription = self.subscribe(OWN_RECORD_UPDATES_SUBJECT).await?;
        Ok(subscription.map(|message| {
            serde_json::from_slice(&message.payload)
                .map_err(|e| ClientError::transport(format!("own record update: {e}")))
        }))
    }

    /// The caller's feed, from now on (every kind).
    pub async fn feed(
        &self,
    ) -> Result<impl Stream<Item = Result<FeedMessage, ClientError>>, ClientError> {
        let subscription = self.subscribe(&format!("{FEED_PREFIX}.>")).await?;
        Ok(subscription.map(|message| {
            let kind = message
                .subject
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_string();
            FeedMessage::decode(&kind, &message.payload)
        }))
    }

    /// Subscribes and returns once the server has registered the subscription.
    async fn subscribe(&self, subject: &str) -> Result<async_nats::Subscriber, ClientError> {
        let subscription = self
            .client
            .subscribe(subject.to_string())
            .await
            .map_err(|e| ClientError::transport(format!("subscribing to {subject}: {e}")))?;
        crate::roundtrip::sync(&self.client)
            .await
            .map_err(|e| ClientError::transport(e.to_string()))?;
        Ok(subscription)
    }
}

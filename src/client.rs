//! A typed client for programs in other accounts: [`GlobalClient`] over an `async_nats::Client`
//! connected in the caller's account (with the imports `bootstrap` gives every account).
//!
//! One async method per op; errors are the envelope's code mapped to a [`ClientErrorKind`].
//! Reads can wait for the caller's own writes: [`GlobalClient::at_least`] sets
//! `Natster-Min-Seq` to the sequence an `events.put` returned.

use crate::contract::{
    op, CatalogName, ContextReply, Envelope, EventsPutRequest, FeedKind, HeartbeatRequest,
    NameValidation, NoPayload, OAuthId, OnlineNotice, Operation, OtcClaimRequest, OtcGenerateReply,
    RequestBody, ShareNotice, ShareSummary, StatsReply, WhoamiReply, FEED_PREFIX, MIN_SEQ_HEADER,
    OWN_RECORD_SUBJECT, OWN_RECORD_UPDATES_SUBJECT,
};
use crate::model::{AccountRecord, EventType, InitData, NatsterContext, NONE};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use std::time::Duration;

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
        Ok(match FeedKind::parse(kind) {
            Some(FeedKind::Heartbeat) => FeedMessage::Heartbeat(parse(payload)?),
            Some(FeedKind::CatalogOnline) => FeedMessage::CatalogOnline(parse(payload)?),
            Some(FeedKind::CatalogOffline) => FeedMessage::CatalogOffline(parse(payload)?),
            Some(FeedKind::CatalogShared) => FeedMessage::CatalogShared(parse(payload)?),
            Some(FeedKind::CatalogUnshared) => FeedMessage::CatalogUnshared(parse(payload)?),
            None => FeedMessage::Other {
                kind: kind.to_string(),
                payload: parse(payload)?,
            },
        })
    }

    /// The feed kind (last subject token).
    pub fn kind(&self) -> &str {
        let kind = match self {
            FeedMessage::Heartbeat(_) => FeedKind::Heartbeat,
            FeedMessage::CatalogOnline(_) => FeedKind::CatalogOnline,
            FeedMessage::CatalogOffline(_) => FeedKind::CatalogOffline,
            FeedMessage::CatalogShared(_) => FeedKind::CatalogShared,
            FeedMessage::CatalogUnshared(_) => FeedKind::CatalogUnshared,
            FeedMessage::Other { kind, .. } => return kind,
        };
        kind.as_str()
    }

    /// The message's payload as JSON.
    pub fn payload(&self) -> serde_json::Value {
        match self {
            FeedMessage::Heartbeat(h) => serde_json::to_value(h),
            FeedMessage::CatalogOnline(n) | FeedMessage::CatalogOffline(n) => {
                serde_json::to_value(n)
            }
            FeedMessage::CatalogShared(n) | FeedMessage::CatalogUnshared(n) => {
                serde_json::to_value(n)
            }
            FeedMessage::Other { payload, .. } => Ok(payload.clone()),
        }
        .expect("feed messages serialize")
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

    /// Sends a request of op `O` and returns its reply; an error envelope is a
    /// [`ClientError`] of the kind its code stands for.
    pub async fn call<O: Operation>(&self, request: &O::Request) -> Result<O::Reply, ClientError> {
        let name = O::OP.name();
        let mut headers = async_nats::HeaderMap::new();
        if let Some(seq) = self.min_seq {
            headers.insert(MIN_SEQ_HEADER, seq.to_string().as_str());
        }
        let request =
            self.client
                .request_with_headers(O::OP.importer_subject(), headers, request.to_bytes());
        let reply = tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| ClientError::transport(format!("{name}: no reply within {:?}", self.timeout)))?
            .map_err(|error| match error.kind() {
                async_nats::RequestErrorKind::NoResponders => ClientError {
                    kind: ClientErrorKind::Unavailable,
                    code: None,
                    message: format!("{name}: no natster-global instance answered (no responders; is the import in place?)"),
                },
                _ => ClientError::transport(format!("{name}: {error}")),
            })?;
        let envelope: Envelope<Option<O::Reply>> = serde_json::from_slice(&reply.payload)
            .map_err(|e| ClientError::transport(format!("{name}: unexpected reply: {e}")))?;
        match (envelope.code, envelope.data) {
            (200, Some(data)) => Ok(data),
            (200, None) => Err(ClientError::transport(format!(
                "{name}: a success without data"
            ))),
            (code, _) => Err(ClientError::from_envelope(
                code,
                envelope.error.unwrap_or_default(),
            )),
        }
    }

    /// `events.put`: appends an event; returns its stream sequence.
    pub async fn put_event(&self, request: &EventsPutRequest) -> Result<u64, ClientError> {
        Ok(self.call::<op::EventsPut>(request).await?.seq)
    }

    /// Initialises Natster for the caller (`data.account_key` must be the caller's key).
    pub async fn initialize(&self, data: &InitData) -> Result<u64, ClientError> {
        self.put_event(&EventsPutRequest {
            catalog: NONE.into(),
            target: NONE.into(),
            event_type: EventType::NatsterInitialized.as_str().into(),
            data: Some(serde_json::to_value(data).expect("init data serializes")),
        })
        .await
    }

    /// Shares the caller's catalog with account `target`.
    pub async fn share(&self, catalog: &str, target: &str) -> Result<u64, ClientError> {
        self.share_event(EventType::CatalogShared, catalog, target)
            .await
    }

    /// Ends a share of the caller's catalog with `target`.
    pub async fn unshare(&self, catalog: &str, target: &str) -> Result<u64, ClientError> {
        self.share_event(EventType::CatalogUnshared, catalog, target)
            .await
    }

    /// Imports `owner`'s catalog shared with the caller.
    pub async fn import(&self, catalog: &str, owner: &str) -> Result<u64, ClientError> {
        self.share_event(EventType::CatalogImported, catalog, owner)
            .await
    }

    async fn share_event(
        &self,
        event_type: EventType,
        catalog: &str,
        target: &str,
    ) -> Result<u64, ClientError> {
        self.put_event(&EventsPutRequest {
            catalog: catalog.into(),
            target: target.into(),
            event_type: event_type.as_str().into(),
            data: None,
        })
        .await
    }

    /// `heartbeats.put`: the caller's catalog is up (or stops, with `offline`).
    pub async fn heartbeat(&self, heartbeat: &HeartbeatRequest) -> Result<(), ClientError> {
        self.call::<op::HeartbeatsPut>(heartbeat).await.map(|_| ())
    }

    /// `stats`.
    pub async fn stats(&self) -> Result<StatsReply, ClientError> {
        self.call::<op::Stats>(&NoPayload).await
    }

    /// `my.shares`.
    pub async fn my_shares(&self) -> Result<Vec<ShareSummary>, ClientError> {
        self.call::<op::MyShares>(&NoPayload).await
    }

    /// `whoami` ([`ClientErrorKind::NotFound`] before the caller initialised).
    pub async fn whoami(&self) -> Result<WhoamiReply, ClientError> {
        self.call::<op::Whoami>(&NoPayload).await
    }

    /// `otc.generate` for the caller's own context.
    pub async fn otc_generate(
        &self,
        context: &NatsterContext,
    ) -> Result<OtcGenerateReply, ClientError> {
        self.call::<op::OtcGenerate>(context).await
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
        self.call::<op::OtcClaim>(&request).await
    }

    /// `context.get` (web accounts).
    pub async fn context_get(&self, oauth_id: &str) -> Result<ContextReply, ClientError> {
        self.call::<op::ContextGet>(&OAuthId(oauth_id.to_string()))
            .await
    }

    /// `catalogs.validatename`.
    pub async fn validate_name(&self, name: &str) -> Result<NameValidation, ClientError> {
        self.call::<op::CatalogsValidateName>(&CatalogName(name.to_string()))
            .await
    }

    /// The caller's own account record and its stream sequence; `None` before it initialised.
    ///
    /// The record is read straight from the bucket (a direct get through the import), which
    /// cannot wait for a sequence: under [`GlobalClient::at_least`] a `stats` call carrying
    /// the sequence goes first, and answers only once the account projection has applied it
    /// (its records are written before its checkpoint moves). On a replicated bucket any
    /// replica may answer the direct get, and one that lags can still return the record as it
    /// was before that sequence: reads that must hold a sequence on a cluster are the ops
    /// (`whoami`, `my.shares`, … under `at_least`), which read from the bucket's leader.
    pub async fn own_record(&self) -> Result<Option<(AccountRecord, u64)>, ClientError> {
        if self.min_seq.is_some() {
            self.stats().await?;
        }
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
        crate::store::roundtrip::sync(&self.client)
            .await
            .map_err(|e| ClientError::transport(e.to_string()))?;
        Ok(subscription)
    }
}

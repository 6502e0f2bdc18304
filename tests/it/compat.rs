//! Compatibility with the original natster clients: requests byte for byte as the Go CLI,
//! catalog server and website send them (`internal/globalservice/client.go`), and replies
//! decoded into mirrors of the Go types they unmarshal into (`internal/models`). The mirrors
//! are stricter than Go's decoder (every field must be present with its Go type), so what
//! they accept, the original client accepts.

use anyhow::{Context, Result};
use natster_global::tooling::bootstrap::WEB;
use natster_testkit::Harness;
use serde::Deserialize;
use std::time::Duration;

/// `models.TypedApiResult[T]`.
#[derive(Debug, Deserialize)]
struct TypedApiResult<T> {
    error: Option<String>,
    code: i64,
    data: T,
}

#[derive(Debug, Deserialize)]
struct WhoamiResponse {
    account_key: String,
    oauth_id: Option<String>,
    initialized: i64,
}

#[derive(Debug, Deserialize)]
struct CatalogShareSummary {
    from_account: String,
    to_account: String,
    catalog: String,
    catalog_online: bool,
    revision: i64,
}

#[derive(Debug, Deserialize)]
struct CommunityStats {
    total_initialized: u64,
    running_catalogs: u64,
    share_count: u64,
}

#[derive(Debug, Deserialize)]
struct CatalogNameValidationResult {
    valid: bool,
    message: String,
}

#[derive(Debug, Deserialize)]
struct OtcGenerateResponse {
    code: String,
    valid_minutes: i64,
    claim_url: String,
}

#[derive(Debug, Deserialize)]
struct NatsterContext {
    team_id: String,
    system_id: String,
    account_id: String,
    account_name: String,
    account_public_key: String,
    access_token: String,
    user_id: String,
    creds: String,
}

#[derive(Debug, Deserialize)]
struct ContextQueryResponse {
    context: NatsterContext,
    user_jwt: String,
    user_seed: String,
}

async fn request<T: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    payload: &'static [u8],
) -> Result<TypedApiResult<T>> {
    let reply = client
        .request(subject.to_string(), bytes::Bytes::from_static(payload))
        .await?;
    serde_json::from_slice(&reply.payload)
        .with_context(|| format!("{subject}: {}", String::from_utf8_lossy(&reply.payload)))
}

/// Polls `whoami` until the published writes have been applied (the Go client publishes
/// events without a reply subject, so there is no sequence to wait for).
async fn await_shares(
    client: &async_nats::Client,
    count: usize,
) -> Result<Vec<CatalogShareSummary>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let shares: TypedApiResult<Vec<CatalogShareSummary>> =
            request(client, "natster.global.my.shares", b"").await?;
        if shares.data.len() >= count && shares.data.iter().all(|s| s.catalog_online) {
            return Ok(shares.data);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "shares never showed: {shares:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn leak(text: String) -> &'static [u8] {
    Box::leak(text.into_bytes().into_boxed_slice())
}

#[tokio::test]
async fn the_original_clients_requests_and_decoding_work_unchanged() -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let (alice, bob, web) = (
        h.connect("alice").await?,
        h.connect("bob").await?,
        h.connect(WEB).await?,
    );
    let (a, b) = (h.key("alice"), h.key("bob"));

    // PublishEvent: no reply subject; Go's field order; `data` omitted when nil
    // (`omitempty`), and `null` as older builds sent it.
    for (client, key, name) in [(&alice, &a, "alice"), (&bob, &b, "bob")] {
        let init = format!(
            r#"{{"catalog":"none","target":"none","event_type":"natster_initialized","data":{{"account_id":"{name}-id","account_name":"{name}","account_key":"{key}"}}}}"#
        );
        client
            .publish("natster.global.events.put", init.into_bytes().into())
            .await?;
    }
    alice
        .publish(
            "natster.global.events.put",
            format!(r#"{{"catalog":"films","target":"{b}","event_type":"catalog_shared"}}"#)
                .into_bytes()
                .into(),
        )
        .await?;
    alice
        .publish(
            "natster.global.events.put",
            format!(
                r#"{{"catalog":"music","target":"{b}","event_type":"catalog_shared","data":null}}"#
            )
            .into_bytes()
            .into(),
        )
        .await?;
    // PublishHeartbeat: no reply subject either.
    for catalog in ["films", "music"] {
        alice
            .publish(
                "natster.global.heartbeats.put",
                format!(r#"{{"catalog":"{catalog}","account_key":"{a}","revision":1717171717}}"#)
                    .into_bytes()
                    .into(),
            )
            .await?;
    }
    alice.flush().await?;

    let shares = await_shares(&bob, 2).await?;
    let mut catalogs: Vec<&str> = shares.iter().map(|s| s.catalog.as_str()).collect();
    catalogs.sort();
    assert_eq!(catalogs, ["films", "music"]);
    assert!(shares
        .iter()
        .all(|s| s.from_account == a && s.to_account == b && s.revision == 1717171717));

    let who: TypedApiResult<WhoamiResponse> = request(&alice, "natster.global.whoami", b"").await?;
    assert_eq!((who.code, who.error.as_deref()), (200, None));
    assert_eq!(who.data.account_key, a);
    assert!(who.data.oauth_id.is_none() && who.data.initialized > 0);

    let stats: TypedApiResult<CommunityStats> = request(&bob, "natster.global.stats", b"").await?;
    assert_eq!(stats.data.total_initialized, 2);
    assert_eq!(stats.data.share_count, 2);
    assert!(stats.data.running_catalogs <= 2);

    // catalogs.validatename takes the raw name.
    let taken: TypedApiResult<CatalogNameValidationResult> =
        request(&bob, "natster.global.catalogs.validatename", b"films").await?;
    assert!(!taken.data.valid && !taken.data.message.is_empty());

    // GenerateOneTimeCode marshals the whole NatsterContext, in Go's field order.
    let context = format!(
        r#"{{"team_id":"T1","system_id":"S1","account_id":"alice-id","account_name":"alice","account_public_key":"{a}","access_token":"gho_secret","user_id":"U1","creds":"/home/alice/.natster/alice.creds"}}"#
    );
    let generated: TypedApiResult<OtcGenerateResponse> =
        request(&alice, "natster.global.otc.generate", leak(context)).await?;
    assert_eq!(generated.code, 200);
    assert!(generated.data.claim_url.ends_with(&generated.data.code));
    assert_eq!(generated.data.valid_minutes, 5);
    // ClaimOneTimeCode (the website) with models.OtcClaimRequest.
    let claim = format!(
        r#"{{"code":"{}","oauth_id":"github|4242"}}"#,
        generated.data.code
    );
    let claimed: TypedApiResult<NatsterContext> =
        request(&web, "natster.global.otc.claim", leak(claim)).await?;
    assert_eq!(claimed.code, 200);
    assert_eq!(claimed.data.account_public_key, a);
    assert_eq!(claimed.data.access_token, "", "never returned");
    assert_eq!(
        (
            claimed.data.system_id.as_str(),
            claimed.data.account_name.as_str(),
            claimed.data.user_id.as_str()
        ),
        ("S1", "alice", "U1")
    );
    assert_eq!(
        (claimed.data.team_id.as_str(), claimed.data.creds.as_str()),
        ("T1", "/home/alice/.natster/alice.creds")
    );
    // GetBoundContextByOAuth sends the raw OAuth id.
    let bound: TypedApiResult<ContextQueryResponse> =
        request(&web, "natster.global.context.get", b"github|4242").await?;
    assert_eq!(bound.code, 200);
    assert_eq!(bound.data.context.account_id, "alice-id");
    assert_eq!(
        (bound.data.user_jwt.as_str(), bound.data.user_seed.as_str()),
        ("", "")
    );

    // Errors decode too: `error` set, `data` null (Go leaves the zero value).
    let refused: TypedApiResult<Option<WhoamiResponse>> =
        request(&web, "natster.global.whoami", b"").await?;
    assert_eq!(refused.code, 404);
    assert!(refused.error.is_some() && refused.data.is_none());
    h.stop().await
}

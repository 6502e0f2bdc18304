//! Retries are exact: a request repeated under its `Nats-Msg-Id` gets its original reply
//! whatever happened since, on any instance and after a restart; the same id on a different
//! request is refused; and `otc.claim` survives a failed append and binds once.

use anyhow::{Context, Result};
use natster_global::contract::Envelope;
use natster_global::tooling::bootstrap::WEB;
use natster_testkit::{call, events_last_seq, init_data, put_event, seq_of, Harness};
use serde_json::json;

async fn put_with_id(
    client: &async_nats::Client,
    id: &str,
    body: &serde_json::Value,
) -> Result<Envelope> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    let reply = client
        .request_with_headers(
            "natster.global.events.put",
            headers,
            serde_json::to_vec(body)?.into(),
        )
        .await?;
    Ok(serde_json::from_slice(&reply.payload)?)
}

fn share(catalog: &str, target: &str, event_type: &str) -> serde_json::Value {
    json!({"catalog": catalog, "target": target, "event_type": event_type, "data": null})
}

fn assert_reused(envelope: &Envelope) {
    assert_eq!(envelope.code, 409, "{envelope:?}");
    let error = envelope.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("already used for a different request"),
        "{error}"
    );
}

#[tokio::test]
async fn a_retry_gets_its_first_reply_and_a_reused_id_is_refused_across_instances_and_restarts(
) -> Result<()> {
    let mut h = Harness::start(&["alice", "bob"]).await?;
    h.add_instance(|_| {}).await?;
    let (alice, bob) = (h.connect("alice").await?, h.connect("bob").await?);
    let (a, b) = (h.key("alice"), h.key("bob"));
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    seq_of(&put_event(&bob, "natster_initialized", "none", "none", init_data(&b)).await?)?;
    let js = h.service_js().await?;

    let shared =
        seq_of(&put_with_id(&alice, "retry-1", &share("films", &b, "catalog_shared")).await?)?;
    // Decided afresh, the retry would be refused as already shared.
    let retry = put_with_id(&alice, "retry-1", &share("films", &b, "catalog_shared")).await?;
    assert_eq!(seq_of(&retry)?, shared);
    // The state moves on: decided afresh, the retry would append again.
    seq_of(
        &put_event(
            &alice,
            "catalog_unshared",
            "films",
            &b,
            serde_json::Value::Null,
        )
        .await?,
    )?;
    let end = events_last_seq(&js).await?;
    // Requests are spread over both instances: every retry answers the first append.
    for _ in 0..6 {
        let retry = put_with_id(&alice, "retry-1", &share("films", &b, "catalog_shared")).await?;
        assert_eq!(seq_of(&retry)?, shared);
        assert_reused(
            &put_with_id(&alice, "retry-1", &share("music", &b, "catalog_shared")).await?,
        );
        assert_reused(
            &put_with_id(&alice, "retry-1", &share("films", &b, "catalog_unshared")).await?,
        );
    }
    assert_eq!(events_last_seq(&js).await?, end, "retries appended nothing");

    // Ids are the caller's: another account's request under the same id is its own.
    let bobs = seq_of(&put_with_id(&bob, "retry-1", &share("music", &a, "catalog_shared")).await?)?;
    assert!(bobs > end);

    // A restarted service knows them from the log.
    for service in std::mem::take(&mut h.services) {
        service.stop().await?;
    }
    h.add_instance(|_| {}).await?;
    let retry = put_with_id(&alice, "retry-1", &share("films", &b, "catalog_shared")).await?;
    assert_eq!(seq_of(&retry)?, shared);
    assert_reused(&put_with_id(&alice, "retry-1", &share("music", &b, "catalog_shared")).await?);
    assert_eq!(
        seq_of(&put_with_id(&bob, "retry-1", &share("music", &a, "catalog_shared")).await?)?,
        bobs
    );
    assert_eq!(events_last_seq(&js).await?, bobs);
    h.stop().await
}

#[tokio::test]
async fn a_claim_whose_append_failed_can_be_retried_and_a_code_binds_once() -> Result<()> {
    let h = Harness::start(&["alice"]).await?;
    let (alice, web) = (h.connect("alice").await?, h.connect(WEB).await?);
    let a = h.key("alice");
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    let context = json!({
        "team_id": "t", "system_id": "s", "account_id": "acc-id", "account_name": "alice",
        "account_public_key": a, "access_token": "tok", "user_id": "u", "creds": "/x.creds"
    });
    let generated = call(&alice, "otc.generate", serde_json::to_vec(&context)?, None).await?;
    let code = generated.data["code"].as_str().context("code")?.to_string();
    let claim = serde_json::to_vec(&json!({"code": code, "oauth_id": "github|42"}))?;
    let other = serde_json::to_vec(&json!({"code": code, "oauth_id": "github|43"}))?;

    // A full event log refuses the append: the claim fails as unavailable, and the code stays.
    let js = h.service_js().await?;
    let mut config = js
        .get_stream("NATSTER_EVENTS")
        .await?
        .cached_info()
        .config
        .clone();
    let end = events_last_seq(&js).await?;
    config.max_messages = i64::try_from(end)?;
    js.update_stream(config.clone()).await?;
    let failed = call(&web, "otc.claim", claim.clone(), None).await?;
    assert_eq!(failed.code, 503, "{failed:?}");
    assert_eq!(events_last_seq(&js).await?, end);
    config.max_messages = -1;
    js.update_stream(config).await?;

    let (first, second) = tokio::join!(
        call(&web, "otc.claim", claim.clone(), None),
        call(&web, "otc.claim", other.clone(), None),
    );
    let (first, second) = (first?, second?);
    // One of the two identities gets the code; the other is told it is used.
    assert_eq!(
        [first.code, second.code]
            .iter()
            .filter(|c| **c == 200)
            .count(),
        1,
        "{first:?} {second:?}"
    );
    assert!([first.code, second.code].contains(&404));
    let winner = if first.code == 200 {
        "github|42"
    } else {
        "github|43"
    };
    let loser = if first.code == 200 {
        "github|43"
    } else {
        "github|42"
    };
    assert_eq!(events_last_seq(&js).await?, end + 1, "one binding appended");
    for retry in [claim, other] {
        assert_eq!(call(&web, "otc.claim", retry, None).await?.code, 404);
    }
    let last = events_last_seq(&js).await?;
    assert_eq!(last, end + 1);
    let got = call(&web, "context.get", winner, Some(last)).await?;
    assert_eq!(got.data["context"]["account_public_key"], a.as_str());
    assert_eq!(
        call(&web, "context.get", loser, Some(last)).await?.code,
        404
    );
    h.stop().await
}

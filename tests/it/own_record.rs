//! Own-record reads through imports: an account reads and watches its own `PROJ_ACCOUNT`
//! record, and reaches no other account's record by payload, raw subject or forged import.

use anyhow::{Context, Result};
use async_nats::StatusCode;
use futures::StreamExt;
use natster_global::contract::PROJ_ACCOUNT_BUCKET;
use natster_global::model::AccountRecord;
use natster_global::test_util::sync;
use natster_global::tooling::bootstrap::{Role, NATSTER};
use natster_global::tooling::jwt::{self as auth, ExportType, Import};
use natster_testkit::{call, init_data, put_event, seq_of, Harness, TestWorld};
use serde_json::Value;
use std::time::Duration;

const OWN_RECORD: &str = "natster.projections.account";
const OWN_UPDATES: &str = "natster.projections.account.updates";

/// The reply to an own-record read: the record, or `None` for a 404.
async fn read_own(
    client: &async_nats::Client,
    payload: &'static str,
) -> Result<Option<AccountRecord>> {
    let reply = client.request(OWN_RECORD, payload.into()).await?;
    if reply.status == Some(StatusCode::NOT_FOUND) {
        return Ok(None);
    }
    anyhow::ensure!(
        reply.status.is_none(),
        "unexpected status {:?}",
        reply.status
    );
    let headers = reply.headers.as_ref().context("direct get headers")?;
    anyhow::ensure!(headers.get("Nats-Sequence").is_some());
    Ok(Some(serde_json::from_slice(&reply.payload)?))
}

#[tokio::test]
async fn an_account_reads_and_watches_its_own_record_only() -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let (alice, bob) = (h.connect("alice").await?, h.connect("bob").await?);
    let (a, b) = (h.key("alice"), h.key("bob"));

    assert_eq!(read_own(&alice, "").await?, None, "404 before init");
    let mut alice_updates = alice.subscribe(OWN_UPDATES).await?;
    sync(&alice).await?;

    let init =
        seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    seq_of(&put_event(&bob, "natster_initialized", "none", "none", init_data(&b)).await?)?;
    let shared = seq_of(&put_event(&alice, "catalog_shared", "films", &b, Value::Null).await?)?;
    call(&alice, "whoami", "", Some(shared)).await?;

    let mine = read_own(&alice, "").await?.context("alice's record")?;
    assert_eq!(mine.account_key, a);
    assert_eq!(mine.applied_seq, shared);
    assert_eq!(mine.out_shares.len(), 1);

    // The updates stream carries alice's record versions: init, then the share.
    let mut versions = Vec::new();
    while versions
        .last()
        .is_none_or(|r: &AccountRecord| r.applied_seq < shared)
    {
        let message = tokio::time::timeout(Duration::from_secs(5), alice_updates.next())
            .await
            .context("an update")?
            .context("updates closed")?;
        let record: AccountRecord = serde_json::from_slice(&message.payload)?;
        assert_eq!(record.account_key, a, "only alice's own record");
        versions.push(record);
    }
    assert_eq!(versions.first().map(|r| r.applied_seq), Some(init));

    // Payload tricks: another key by subject or by sequence gives nothing of bob's.
    let bob_seq = {
        let js = h.service_js().await?;
        let kv = js.get_key_value(PROJ_ACCOUNT_BUCKET).await?;
        kv.entry(&b).await?.context("bob's record")?.revision
    };
    for payload in [
        format!(r#"{{"last_by_subj":"$KV.{PROJ_ACCOUNT_BUCKET}.{b}"}}"#),
        format!(r#"{{"seq":{bob_seq}}}"#),
        format!(r#"{{"next_by_subj":"$KV.{PROJ_ACCOUNT_BUCKET}.*","seq":1}}"#),
        format!(r#"{{"multi_last":["$KV.{PROJ_ACCOUNT_BUCKET}.>"]}}"#),
    ] {
        let reply = alice.request(OWN_RECORD, payload.clone().into()).await;
        if let Ok(reply) = reply {
            let text = String::from_utf8_lossy(&reply.payload);
            assert!(!text.contains(&b), "{payload} leaked bob's record: {text}");
        }
    }
    // Raw subjects of the service account do not exist in alice's account.
    for subject in [
        format!("$JS.API.DIRECT.GET.KV_{PROJ_ACCOUNT_BUCKET}.$KV.{PROJ_ACCOUNT_BUCKET}.{b}"),
        format!("$JS.API.DIRECT.GET.KV_{PROJ_ACCOUNT_BUCKET}"),
        format!("$KV.{PROJ_ACCOUNT_BUCKET}.{b}"),
    ] {
        let error = alice
            .request(subject.clone(), "".into())
            .await
            .expect_err("no responders");
        assert_eq!(
            error.kind(),
            async_nats::RequestErrorKind::NoResponders,
            "{subject}"
        );
    }
    // Bob's record changes; a wide subscription of alice's sees only her own versions.
    let mut alice_wide = alice.subscribe("natster.projections.>").await?;
    sync(&alice).await?;
    let bobs_share = seq_of(&put_event(&bob, "catalog_shared", "music", &a, Value::Null).await?)?;
    call(&alice, "whoami", "", Some(bobs_share)).await?;
    let mut seen = Vec::new();
    while seen
        .last()
        .is_none_or(|r: &AccountRecord| r.applied_seq < bobs_share)
    {
        let message = tokio::time::timeout(Duration::from_secs(5), alice_wide.next())
            .await
            .context("an update")?
            .context("closed")?;
        assert_eq!(message.subject.as_str(), OWN_UPDATES);
        let record: AccountRecord = serde_json::from_slice(&message.payload)?;
        assert_eq!(record.account_key, a, "never bob's record");
        seen.push(record);
    }
    assert_eq!(
        seen.last().map(|r| r.in_shares.len()),
        Some(1),
        "bob's share reached alice's record"
    );
    h.stop().await
}

#[tokio::test]
async fn a_forged_own_record_import_gets_nothing() -> Result<()> {
    let tw = TestWorld::start_with(&["alice", "bob"], |world| {
        let service_key = world.key(NATSTER)?;
        let bob_key = world.key("bob")?;
        let mallory = nkeys::KeyPair::new_account();
        let mut claims = auth::AccountClaims::new("mallory", &mallory.public_key());
        claims.nats.imports.push(Import::new(
            ExportType::Service,
            "natster-own-record",
            &service_key,
            &format!(
                "$JS.API.DIRECT.GET.KV_{b}.$KV.{b}.{bob_key}",
                b = PROJ_ACCOUNT_BUCKET
            ),
            OWN_RECORD,
        ));
        claims.nats.imports.push(Import::new(
            ExportType::Stream,
            "natster-own-record-updates",
            &service_key,
            &format!("natster.projections.account.{bob_key}"),
            OWN_UPDATES,
        ));
        world.add_account("mallory", Role::Custom, mallory, claims)?;
        Ok(())
    })
    .await?;
    let service = tw.connect(NATSTER).await?;
    let service_js = async_nats::jetstream::new(service.clone());
    let store = natster_global::test_util::Store::ensure(service_js, &Default::default()).await?;
    store
        .accounts
        .put(tw.key("bob"), "{\"secret\":1}".into())
        .await?;

    let mallory = tw.connect("mallory").await?;
    let mut updates = mallory.subscribe(OWN_UPDATES).await?;
    sync(&mallory).await?;
    let error = mallory
        .request(OWN_RECORD, "".into())
        .await
        .expect_err("a forged import must not reach the bucket");
    assert_eq!(error.kind(), async_nats::RequestErrorKind::NoResponders);
    store
        .accounts
        .put(tw.key("bob"), "{\"secret\":2}".into())
        .await?;
    sync(&service).await?;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), updates.next())
            .await
            .is_err(),
        "bob's update must not reach mallory"
    );
    Ok(())
}

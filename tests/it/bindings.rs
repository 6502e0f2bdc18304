//! Bindings: an account has at most one OAuth id and an OAuth id at most one account, so
//! binding either side again unbinds what it replaced, in `context.get` and in `whoami`.

use anyhow::{Context, Result};
use natster_global::test_util::{Accounts, OAuthIndex};
use natster_global::tooling::bootstrap::WEB;
use natster_testkit::{
    call, dump_bucket, events_last_seq, init_data, put_event, rebuild_projection, seq_of, Harness,
};
use serde_json::json;

/// Generates a code as `account` and claims it for `oauth_id` as the website.
async fn bind(
    account: &async_nats::Client,
    key: &str,
    web: &async_nats::Client,
    oauth_id: &str,
) -> Result<()> {
    let context = serde_json::to_vec(&json!({
        "account_name": "n", "account_public_key": key, "access_token": "tok", "user_id": oauth_id
    }))?;
    let generated = call(account, "otc.generate", context, None).await?;
    let code = generated.data["code"].as_str().context("code")?;
    let claim = serde_json::to_vec(&json!({"code": code, "oauth_id": oauth_id}))?;
    let claimed = call(web, "otc.claim", claim, None).await?;
    anyhow::ensure!(claimed.code == 200, "{claimed:?}");
    Ok(())
}

#[tokio::test]
async fn rebinding_an_account_or_moving_an_oauth_id_unbinds_what_it_replaced() -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let (alice, bob, web) = (
        h.connect("alice").await?,
        h.connect("bob").await?,
        h.connect(WEB).await?,
    );
    let (a, b) = (h.key("alice"), h.key("bob"));
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    seq_of(&put_event(&bob, "natster_initialized", "none", "none", init_data(&b)).await?)?;
    let js = h.service_js().await?;

    bind(&alice, &a, &web, "github|1").await?;
    bind(&alice, &a, &web, "github|2").await?;
    let last = events_last_seq(&js).await?;
    let old = call(&web, "context.get", "github|1", Some(last)).await?;
    assert_eq!(old.code, 404, "the id alice left: {old:?}");
    let new = call(&web, "context.get", "github|2", Some(last)).await?;
    assert_eq!(new.data["context"]["account_public_key"], a.as_str());
    let who = call(&alice, "whoami", "", Some(last)).await?;
    assert_eq!(who.data["oauth_id"], "github|2");

    // github|2 moves to bob: alice is bound to nothing.
    bind(&bob, &b, &web, "github|2").await?;
    let last = events_last_seq(&js).await?;
    let moved = call(&web, "context.get", "github|2", Some(last)).await?;
    assert_eq!(moved.data["context"]["account_public_key"], b.as_str());
    let who = call(&alice, "whoami", "", Some(last)).await?;
    assert_eq!(who.code, 200);
    assert!(who.data["oauth_id"].is_null(), "{who:?}");
    let who = call(&bob, "whoami", "", Some(last)).await?;
    assert_eq!(who.data["oauth_id"], "github|2");

    // A rebuild from the log agrees, byte for byte.
    let dump = || async {
        let mut all = Vec::new();
        for bucket in ["PROJ_ACCOUNT", "PROJ_OAUTH"] {
            all.push(dump_bucket(&js.get_key_value(bucket).await?).await?);
        }
        anyhow::Ok(all)
    };
    let incremental = dump().await?;
    assert_eq!(incremental[1].len(), 1, "only github|2 is bound");
    rebuild_projection::<Accounts>(&js, 1024 * 1024, |_, _| {}).await?;
    rebuild_projection::<OAuthIndex>(&js, 1024 * 1024, |_, _| {}).await?;
    assert_eq!(dump().await?, incremental);
    h.stop().await
}

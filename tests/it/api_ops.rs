//! Every op through imports from real user accounts: happy paths and every rejection code.

use anyhow::{Context, Result};
use natster_global::contract::Envelope;
use natster_global::tooling::bootstrap::WEB;
use natster_testkit::{call, events_last_seq, init_data, put_event, seq_of, Harness};
use serde_json::{json, Value};

fn assert_code(envelope: &Envelope, code: u16) {
    assert_eq!(envelope.code, code, "{envelope:?}");
    if code == 200 {
        assert!(envelope.error.is_none());
    } else {
        assert!(!envelope.error.as_deref().unwrap_or_default().is_empty());
        assert_eq!(envelope.data, Value::Null);
    }
}

#[tokio::test]
async fn init_share_import_unshare_through_imports() -> Result<()> {
    let h = Harness::start(&["alice", "bob", "carol"]).await?;
    let (alice, bob, carol) = (
        h.connect("alice").await?,
        h.connect("bob").await?,
        h.connect("carol").await?,
    );
    let (a, b) = (h.key("alice"), h.key("bob"));
    let js = h.service_js().await?;

    assert_code(&call(&alice, "whoami", "", None).await?, 404);
    let init = put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?;
    let init_seq = seq_of(&init)?;
    let who = call(&alice, "whoami", "", Some(init_seq)).await?;
    assert_code(&who, 200);
    assert_eq!(who.data["account_key"], a.as_str());
    let stored = js
        .get_stream("NATSTER_EVENTS")
        .await?
        .get_raw_message(init_seq)
        .await?;
    assert_eq!(
        who.data["initialized"].as_i64(),
        Some(stored.time.unix_timestamp()),
        "initialized is the event's stream timestamp"
    );
    assert_code(
        &put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?,
        409,
    );
    assert_code(
        &put_event(&bob, "natster_initialized", "none", "none", init_data(&a)).await?,
        400,
    );
    seq_of(&put_event(&bob, "natster_initialized", "none", "none", init_data(&b)).await?)?;

    // Share.
    let shared = seq_of(&put_event(&alice, "catalog_shared", "movies", &b, Value::Null).await?)?;
    assert_code(
        &put_event(&alice, "catalog_shared", "movies", &b, Value::Null).await?,
        409,
    );
    assert_code(
        &put_event(&bob, "catalog_shared", "movies", &a, Value::Null).await?,
        409,
    );
    assert_code(
        &put_event(&carol, "catalog_shared", "carols", &a, Value::Null).await?,
        404,
    );
    assert_code(
        &put_event(&alice, "catalog_shared", "movies2", &a, Value::Null).await?,
        400,
    );
    assert_code(
        &put_event(&alice, "catalog_shared", "movies2", "ABC", Value::Null).await?,
        400,
    );

    let bob_shares = call(&bob, "my.shares", "", Some(shared)).await?;
    assert_code(&bob_shares, 200);
    assert_eq!(
        bob_shares.data,
        json!([{"from_account": a, "to_account": b, "catalog": "movies", "catalog_online": false, "revision": 0}])
    );
    let alice_shares = call(&alice, "my.shares", "", Some(shared)).await?;
    assert_eq!(alice_shares.data[0]["to_account"], b.as_str());
    assert_eq!(
        call(&carol, "my.shares", "", Some(shared)).await?.data,
        json!([])
    );

    let stats = call(&carol, "stats", "", Some(shared)).await?;
    assert_eq!(
        stats.data,
        json!({"total_initialized": 2, "running_catalogs": 0, "share_count": 1})
    );

    let taken = call(&bob, "catalogs.validatename", "movies", Some(shared)).await?;
    assert_eq!(taken.data["valid"], false);
    assert_eq!(
        call(&alice, "catalogs.validatename", "movies", None)
            .await?
            .data["valid"],
        true
    );
    assert_eq!(
        call(&bob, "catalogs.validatename", "free", None)
            .await?
            .data["valid"],
        true
    );
    assert_eq!(
        call(&bob, "catalogs.validatename", "a.b", None).await?.data["valid"],
        false
    );

    // Import.
    assert_code(
        &put_event(&bob, "catalog_imported", "movies", &a, Value::Null).await?,
        200,
    );
    assert_code(
        &put_event(&bob, "catalog_imported", "movies", &a, Value::Null).await?,
        409,
    );
    assert_code(
        &put_event(&bob, "catalog_imported", "other", &a, Value::Null).await?,
        404,
    );
    assert_code(
        &put_event(&carol, "catalog_imported", "movies", &a, Value::Null).await?,
        404,
    );

    // Unshare.
    let unshared =
        seq_of(&put_event(&alice, "catalog_unshared", "movies", &b, Value::Null).await?)?;
    assert_code(
        &put_event(&alice, "catalog_unshared", "movies", &b, Value::Null).await?,
        404,
    );
    assert_code(
        &put_event(&bob, "catalog_unshared", "movies", &a, Value::Null).await?,
        404,
    );
    assert_eq!(
        call(&bob, "my.shares", "", Some(unshared)).await?.data,
        json!([])
    );
    let stats = call(&carol, "stats", "", Some(unshared)).await?;
    assert_eq!(stats.data["share_count"], 0);
    let catalog = js
        .get_key_value("PROJ_CATALOG")
        .await?
        .get("movies")
        .await?
        .context("catalog record")?;
    let catalog: Value = serde_json::from_slice(&catalog)?;
    assert_eq!(catalog["owner"], a.as_str());
    assert_eq!(
        catalog["shared_with"],
        json!([]),
        "unshare removes the account"
    );
    // Re-share after unshare is allowed; the name stays alice's.
    assert_code(
        &put_event(&alice, "catalog_shared", "movies", &b, Value::Null).await?,
        200,
    );
    h.stop().await
}

#[tokio::test]
async fn one_time_codes_bind_a_context_and_never_leak_the_token() -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let (alice, bob, web) = (
        h.connect("alice").await?,
        h.connect("bob").await?,
        h.connect(WEB).await?,
    );
    let a = h.key("alice");
    const TOKEN: &str = "super-secret-access-token-0123456789";
    let context = json!({
        "team_id": "t", "system_id": "s", "account_id": "acc-id", "account_name": "alice",
        "account_public_key": a, "access_token": TOKEN, "user_id": "u", "creds": "/home/alice/x.creds"
    });
    let context_bytes = serde_json::to_vec(&context)?;

    assert_code(
        &call(&alice, "otc.generate", context_bytes.clone(), None).await?,
        404,
    );
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    assert_code(
        &call(&bob, "otc.generate", context_bytes.clone(), None).await?,
        403,
    );
    let generated = call(&alice, "otc.generate", context_bytes.clone(), None).await?;
    assert_code(&generated, 200);
    let code = generated.data["code"].as_str().context("code")?.to_string();
    assert!(code.len() >= 22, "at least 128 bits");
    assert_eq!(generated.data["valid_minutes"], 5);
    assert!(generated.data["claim_url"]
        .as_str()
        .unwrap_or_default()
        .ends_with(&code));

    let claim = serde_json::to_vec(&json!({"code": code, "oauth_id": "github|42"}))?;
    assert_code(&call(&alice, "otc.claim", claim.clone(), None).await?, 403);
    let claimed = call(&web, "otc.claim", claim.clone(), None).await?;
    assert_code(&claimed, 200);
    assert_eq!(claimed.data["account_public_key"], a.as_str());
    assert_eq!(claimed.data["access_token"], "");
    assert_eq!(claimed.data["user_id"], "u");
    assert_code(&call(&web, "otc.claim", claim, None).await?, 404);
    let unknown = serde_json::to_vec(&json!({"code": "AAAAAAAAAAAAAAAAAAAAAA", "oauth_id": "x"}))?;
    assert_code(&call(&web, "otc.claim", unknown, None).await?, 404);

    let js = h.service_js().await?;
    let last = events_last_seq(&js).await?;
    let got = call(&web, "context.get", "github|42", Some(last)).await?;
    assert_code(&got, 200);
    assert_eq!(got.data["context"]["account_public_key"], a.as_str());
    assert_eq!(got.data["context"]["access_token"], "");
    assert_eq!(got.data["user_jwt"], "");
    assert_eq!(got.data["user_seed"], "");
    assert_code(&call(&alice, "context.get", "github|42", None).await?, 403);
    assert_code(
        &call(&web, "context.get", "github|nobody", Some(last)).await?,
        404,
    );
    let who = call(&alice, "whoami", "", Some(last)).await?;
    assert_eq!(who.data["oauth_id"], "github|42");

    // The token appears in no event and no bucket, raw.
    for stream_name in [
        "NATSTER_EVENTS",
        "KV_PROJ_ACCOUNT",
        "KV_PROJ_OAUTH",
        "KV_PROJ_CATALOG",
        "KV_PROJ_STATS",
        "KV_NATSTER_CODES",
    ] {
        let stream = js.get_stream(stream_name).await?;
        let info = stream.get_info().await?;
        for seq in info.state.first_sequence..=info.state.last_sequence {
            if let Ok(message) = stream.get_raw_message(seq).await {
                let text = String::from_utf8_lossy(&message.payload);
                assert!(
                    !text.contains(TOKEN),
                    "{stream_name} seq {seq} holds the token"
                );
            }
        }
    }
    h.stop().await
}

#[tokio::test]
async fn heartbeats_only_from_the_catalog_owner() -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let (alice, bob) = (h.connect("alice").await?, h.connect("bob").await?);
    let (a, b) = (h.key("alice"), h.key("bob"));
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    seq_of(&put_event(&alice, "catalog_shared", "movies", &b, Value::Null).await?)?;
    let hb = |catalog: &str, key: &str| {
        serde_json::to_vec(&json!({"catalog": catalog, "account_key": key, "revision": 3})).unwrap()
    };
    let ok = call(&alice, "heartbeats.put", hb("movies", &a), None).await?;
    assert_code(&ok, 200);
    assert_eq!(ok.data, json!({}));
    assert_code(
        &call(&bob, "heartbeats.put", hb("movies", &b), None).await?,
        403,
    );
    assert_code(
        &call(&bob, "heartbeats.put", hb("movies", &a), None).await?,
        403,
    );
    assert_code(
        &call(&bob, "heartbeats.put", hb("unowned", &b), None).await?,
        200,
    );
    assert_code(
        &call(&bob, "heartbeats.put", hb("bad name", &b), None).await?,
        400,
    );
    assert_code(&call(&bob, "heartbeats.put", "{", None).await?, 400);
    h.stop().await
}

#[tokio::test]
async fn bad_input_gets_4xx_and_appends_nothing() -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let alice = h.connect("alice").await?;
    let (a, b) = (h.key("alice"), h.key("bob"));
    let init =
        seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    let js = h.service_js().await?;
    let before = events_last_seq(&js).await?;
    let user_key = nkeys::KeyPair::new_user().public_key();
    let big = "x".repeat(70 * 1024);
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"{".to_vec(), 400),
        (b"not json".to_vec(), 400),
        (b"[]".to_vec(), 400),
        (br#"{"catalog":1,"target":"none","event_type":"catalog_shared"}"#.to_vec(), 400),
        (br#"{"catalog":"x","target":"none"}"#.to_vec(), 400),
        (json!({"catalog":"x","target":b,"event_type":"catalog_exploded"}).to_string().into_bytes(), 400),
        (json!({"catalog":"x","target":b,"event_type":"context_bound","data":{}}).to_string().into_bytes(), 403),
        (json!({"catalog":"a.b","target":b,"event_type":"catalog_shared"}).to_string().into_bytes(), 400),
        (json!({"catalog":"a*","target":b,"event_type":"catalog_shared"}).to_string().into_bytes(), 400),
        (json!({"catalog":"a>","target":b,"event_type":"catalog_shared"}).to_string().into_bytes(), 400),
        (json!({"catalog":"a b","target":b,"event_type":"catalog_shared"}).to_string().into_bytes(), 400),
        (json!({"catalog":"café","target":b,"event_type":"catalog_shared"}).to_string().into_bytes(), 400),
        (json!({"catalog":"none","target":b,"event_type":"catalog_shared"}).to_string().into_bytes(), 400),
        (json!({"catalog":"x".repeat(65),"target":b,"event_type":"catalog_shared"}).to_string().into_bytes(), 400),
        (json!({"catalog":"ok","target":"not-a-key","event_type":"catalog_shared"}).to_string().into_bytes(), 400),
        (json!({"catalog":"ok","target":user_key,"event_type":"catalog_shared"}).to_string().into_bytes(), 400),
        (json!({"catalog":"ok","target":"b.c","event_type":"catalog_shared"}).to_string().into_bytes(), 400),
        (json!({"catalog":"none","target":"none","event_type":"natster_initialized","data":{"account_key": b}}).to_string().into_bytes(), 400),
        (json!({"catalog":"none","target":"none","event_type":"natster_initialized","data":"x"}).to_string().into_bytes(), 400),
        (json!({"catalog":"none","target":"none","event_type":"natster_initialized","data":{"account_key": 5}}).to_string().into_bytes(), 400),
        (big.into_bytes(), 413),
    ];
    for (payload, code) in cases {
        let text = String::from_utf8_lossy(&payload)
            .chars()
            .take(80)
            .collect::<String>();
        let envelope = call(&alice, "events.put", payload, None).await?;
        assert_eq!(envelope.code, code, "{text}: {envelope:?}");
    }
    assert_eq!(events_last_seq(&js).await?, before, "nothing was appended");
    // Other ops with bad input.
    assert_code(&call(&alice, "otc.generate", "{", None).await?, 400);
    assert_code(
        &call(&alice, "otc.generate", r#"{"account_public_key": 7}"#, None).await?,
        400,
    );
    assert_code(&call(&alice, "whoami", "", Some(u64::MAX)).await?, 503);
    assert_code(&call(&alice, "whoami", "", Some(init)).await?, 200);
    assert_eq!(events_last_seq(&js).await?, before);
    h.stop().await
}

#[tokio::test]
async fn min_seq_beyond_the_log_is_503_naming_both_sequences() -> Result<()> {
    let h = Harness::start(&["alice"]).await?;
    let alice = h.connect("alice").await?;
    let envelope = call(&alice, "my.shares", "", Some(999_999)).await?;
    assert_code(&envelope, 503);
    let error = envelope.error.unwrap_or_default();
    assert!(
        error.contains("999999") && error.contains("read it up to 0"),
        "{error}"
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Natster-Min-Seq", "soon");
    let reply = alice
        .request_with_headers("natster.global.whoami", headers, "".into())
        .await?;
    let envelope: Envelope = serde_json::from_slice(&reply.payload)?;
    assert_code(&envelope, 400);
    h.stop().await
}

#[tokio::test]
async fn write_ops_are_rate_limited_per_account() -> Result<()> {
    let mut h = Harness::start(&["alice", "bob"]).await?;
    h.services.pop().context("instance")?.stop().await?;
    h.add_instance(|c| {
        c.rate_per_second = 1;
        c.rate_burst = 3;
    })
    .await?;
    let (alice, bob) = (h.connect("alice").await?, h.connect("bob").await?);
    let body = json!({"catalog":"x","target":"none","event_type":"catalog_exploded"}).to_string();
    // All at once: a refusal is sent a second late, by when the budget has a token again.
    let replies =
        futures::future::join_all((0..5).map(|_| call(&alice, "events.put", body.clone(), None)))
            .await;
    let mut codes = replies
        .into_iter()
        .map(|reply| reply.map(|envelope| envelope.code))
        .collect::<Result<Vec<_>>>()?;
    codes.sort();
    assert_eq!(codes, [400, 400, 400, 429, 429]);
    // Another account has its own budget, and reads are not limited.
    assert_eq!(call(&bob, "events.put", body, None).await?.code, 400);
    assert_eq!(call(&alice, "stats", "", None).await?.code, 200);
    h.stop().await
}

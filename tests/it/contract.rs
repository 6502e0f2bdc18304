//! The published contract: checked-in schemas equal the generated ones, the AsyncAPI document
//! describes exactly the subjects served, and live messages from a real server validate.

use anyhow::{Context, Result};
use natster_global::contract;
use natster_global::contract::FeedKind;
use natster_global::contract::Op;
use natster_global::tooling::bootstrap::WEB;
use natster_testkit::{init_data, put_event, seq_of, FeedReader, Harness};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn load(name: &str) -> Result<Value> {
    let text = std::fs::read_to_string(schemas_dir().join(name))
        .with_context(|| format!("schemas/{name}"))?;
    Ok(serde_json::from_str(&text)?)
}

#[test]
fn checked_in_schemas_equal_the_generated_ones() -> Result<()> {
    let generated = contract::schemas::schemas();
    for (name, schema) in &generated {
        let path = schemas_dir().join(name);
        let stored = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            stored == contract::schemas::file_text(schema),
            "schemas/{name} is out of date: run `cargo run -- schemas`"
        );
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(schemas_dir())?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    let expected: BTreeSet<String> = generated.keys().cloned().collect();
    assert_eq!(on_disk, expected, "no stale schema files");
    Ok(())
}

#[test]
fn asyncapi_describes_exactly_the_served_subjects() -> Result<()> {
    const FEED_KINDS: [&str; 5] = [
        "heartbeat",
        "catalog_online",
        "catalog_offline",
        "catalog_shared",
        "catalog_unshared",
    ];
    assert_eq!(FEED_KINDS, FeedKind::ALL.map(FeedKind::as_str));
    let text = std::fs::read_to_string(schemas_dir().join("asyncapi.yaml"))?;
    let doc: Value = serde_norway::from_str(&text)?;
    assert_eq!(doc["asyncapi"], "3.0.0");
    let mut served: BTreeSet<String> = Op::ALL
        .iter()
        .map(|op| format!("natster.global.{}", op.name()))
        .collect();
    served.extend(
        FEED_KINDS
            .iter()
            .map(|k| format!("natster.global-events.{k}")),
    );
    served.insert("natster.projections.account".into());
    served.insert("natster.projections.account.updates".into());
    let channels = doc["channels"].as_object().context("channels")?;
    let addresses: BTreeSet<String> = channels
        .values()
        .filter_map(|c| c["address"].as_str().map(str::to_string))
        .collect();
    assert_eq!(addresses, served);

    // Every reference resolves: to a component or channel of the document, or to a schema file.
    let messages = doc["components"]["messages"]
        .as_object()
        .context("messages")?;
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    let mut files = BTreeSet::new();
    for reference in refs {
        if let Some(file) = reference.strip_prefix("./") {
            assert!(schemas_dir().join(file).exists(), "{reference}");
            files.insert(file.to_string());
        } else {
            let pointer = reference.strip_prefix('#').context("local or file ref")?;
            assert!(
                doc.pointer(pointer).is_some(),
                "{reference} does not resolve"
            );
        }
    }
    for op in Op::ALL {
        for part in ["request", "reply"] {
            assert!(files.contains(&format!("{}.{part}.json", op.name())));
        }
    }
    for kind in FEED_KINDS {
        assert!(files.contains(&format!("feed.{kind}.json")));
    }
    assert!(messages.len() >= 2 * Op::ALL.len() + FEED_KINDS.len());
    for operation in doc["operations"]
        .as_object()
        .context("operations")?
        .values()
    {
        if operation["action"] == "send" && operation["reply"].is_object() {
            assert!(
                operation["bindings"]["nats"]["queue"] == "natster-global"
                    || !operation["bindings"].is_object()
            );
        }
    }
    Ok(())
}

fn collect_refs(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "$ref" {
                    if let Some(reference) = value.as_str() {
                        into.push(reference.to_string());
                    }
                } else {
                    collect_refs(value, into);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, into)),
        _ => {}
    }
}

fn check(schema_file: &str, instance: &Value) -> Result<()> {
    let schema = load(schema_file)?;
    let validator = jsonschema::validator_for(&schema)
        .map_err(|e| anyhow::anyhow!("{schema_file} is not a valid schema: {e}"))?;
    if let Err(error) = validator.validate(instance) {
        anyhow::bail!("{instance} does not match {schema_file}: {error}");
    }
    Ok(())
}

/// Sends a raw request and returns the reply as JSON.
async fn raw(
    client: &async_nats::Client,
    op: &str,
    payload: impl Into<bytes::Bytes>,
) -> Result<Value> {
    let reply = client
        .request(format!("natster.global.{op}"), payload.into())
        .await?;
    Ok(serde_json::from_slice(&reply.payload)?)
}

#[tokio::test]
async fn live_messages_from_a_real_server_match_the_schemas() -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let (alice, bob, web) = (
        h.connect("alice").await?,
        h.connect("bob").await?,
        h.connect(WEB).await?,
    );
    let (a, b) = (h.key("alice"), h.key("bob"));
    let mut bob_feed = FeedReader::open(&bob).await?;

    let replies: Vec<(&str, Value)> = vec![
        ("whoami", raw(&alice, "whoami", "").await?),
        (
            "events.put",
            raw(
                &alice,
                "events.put",
                serde_json::to_vec(&json!({"catalog":"none","target":"none","event_type":"natster_initialized","data":init_data(&a)}))?,
            )
            .await?,
        ),
    ];
    for (op, reply) in &replies {
        check(&format!("{op}.reply.json"), reply)?;
        check("envelope.json", reply)?;
    }
    seq_of(&put_event(&bob, "natster_initialized", "none", "none", init_data(&b)).await?)?;
    let shared = seq_of(&put_event(&alice, "catalog_shared", "films", &b, Value::Null).await?)?;
    let heartbeat = json!({"catalog":"films","account_key":a,"revision":3});
    let context = json!({"team_id":"t","system_id":"s","account_id":"i","account_name":"alice",
        "account_public_key":a,"access_token":"secret","user_id":"u","creds":"/c"});
    let generated = raw(&alice, "otc.generate", serde_json::to_vec(&context)?).await?;
    let code = generated["data"]["code"]
        .as_str()
        .context("code")?
        .to_string();
    let claim = json!({"code": code, "oauth_id": "github|7"});
    let mut replies = vec![
        ("otc.generate", generated),
        (
            "otc.claim",
            raw(&web, "otc.claim", serde_json::to_vec(&claim)?).await?,
        ),
        (
            "heartbeats.put",
            raw(&alice, "heartbeats.put", serde_json::to_vec(&heartbeat)?).await?,
        ),
        (
            "catalogs.validatename",
            raw(&bob, "catalogs.validatename", "films").await?,
        ),
        ("stats", raw(&alice, "stats", "").await?),
        ("events.put", raw(&alice, "events.put", "not json").await?),
        ("otc.claim", raw(&alice, "otc.claim", "{}").await?),
    ];
    // Read ops after the writes have been projected.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Natster-Min-Seq", shared.to_string().as_str());
    for op in ["my.shares", "whoami"] {
        let reply = alice
            .request_with_headers(format!("natster.global.{op}"), headers.clone(), "".into())
            .await?;
        replies.push((op, serde_json::from_slice(&reply.payload)?));
    }
    let bound = raw(&web, "context.get", "github|7").await?;
    replies.push(("context.get", bound));
    for (op, reply) in &replies {
        check(&format!("{op}.reply.json"), reply).with_context(|| op.to_string())?;
        check("envelope.json", reply)?;
    }
    assert!(
        replies.iter().any(|(_, r)| r["code"] != 200),
        "error envelopes too"
    );

    // Requests as clients send them match the request schemas.
    check(
        "events.put.request.json",
        &json!({"catalog":"films","target":b,"event_type":"catalog_shared","data":null}),
    )?;
    check("heartbeats.put.request.json", &heartbeat)?;
    check("otc.generate.request.json", &context)?;
    check("otc.claim.request.json", &claim)?;
    check("context.get.request.json", &json!("github|7"))?;
    check("stats.request.json", &json!(""))?;

    // Feed messages bob received.
    let mut seen = BTreeSet::new();
    while seen.len() < 3 {
        let (kind, message) = bob_feed.next(Duration::from_secs(10)).await?;
        check(&format!("feed.{kind}.json"), &message)?;
        seen.insert(kind);
    }
    assert_eq!(
        seen,
        BTreeSet::from([
            "catalog_online".into(),
            "catalog_shared".into(),
            "heartbeat".into()
        ])
    );

    // Event payloads as stored.
    let js = h.service_js().await?;
    let events = js.get_stream("NATSTER_EVENTS").await?;
    let last = natster_testkit::events_last_seq(&js).await?;
    let mut kinds = BTreeSet::new();
    for seq in 1..=last {
        let message = events.get_raw_message(seq).await?;
        let kind = message
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let body: Value = if message.payload.is_empty() {
            json!("")
        } else {
            serde_json::from_slice(&message.payload)?
        };
        check(&format!("event.{kind}.json"), &body)?;
        kinds.insert(kind);
    }
    assert_eq!(kinds.len(), 3, "{kinds:?}");

    // The own record read through the import.
    let record = alice
        .request("natster.projections.account", "".into())
        .await?;
    check(
        "account-record.json",
        &serde_json::from_slice(&record.payload)?,
    )?;
    h.stop().await
}

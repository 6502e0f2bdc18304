//! The wire contract as JSON Schemas (draft 2020-12), generated from the Rust types.
//!
//! `schemas/` holds the output of [`schemas`] (written by `natster-global schemas`); a test
//! fails when the two differ, and another validates live replies against them. File names:
//! `<op>.request.json`, `<op>.reply.json` (the whole envelope, with the op's `data`),
//! `envelope.json`, `event.<type>.json` (event payloads), `feed.<kind>.json` and
//! `account-record.json` (what an account reads of itself).

use crate::model::{
    AccountRecord, ContextBoundData, ContextReply, EmptyReply, EventsPutReply, EventsPutRequest,
    HeartbeatRequest, InitData, NameValidation, NatsterContext, OnlineNotice, OtcClaimRequest,
    OtcGenerateReply, ShareNotice, ShareSummary, StatsReply, WhoamiReply,
};
use schemars::{json_schema, JsonSchema, Schema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The reply envelope: `code`, `error` on failure, and `data` (`null` on failure).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Envelope")]
pub struct ReplyEnvelope<T> {
    /// HTTP-like: 200, 400, 403, 404, 409, 413, 429, 500, 503.
    pub code: u16,
    /// What went wrong (only on failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The op's reply on success; `null` on failure.
    pub data: Option<T>,
}

/// The envelope of any op (`data` of any type).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Envelope")]
pub struct AnyEnvelope {
    /// HTTP-like: 200, 400, 403, 404, 409, 413, 429, 500, 503.
    pub code: u16,
    /// What went wrong (only on failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The op's reply on success; `null` on failure.
    pub data: serde_json::Value,
}

fn schema<T: JsonSchema>(title: &str) -> Schema {
    let mut schema = schemars::schema_for!(T);
    schema.insert("title".into(), title.into());
    schema
}

fn reply<T: JsonSchema>(op: &str) -> (String, Schema) {
    let mut schema = schema::<ReplyEnvelope<T>>(&format!("Reply of {op}"));
    // `data` is always present (`null` on failure); an `Option` alone would make it optional.
    if let Some(required) = schema
        .ensure_object()
        .get_mut("required")
        .and_then(|r| r.as_array_mut())
    {
        if !required.iter().any(|r| r == "data") {
            required.push("data".into());
        }
    }
    (format!("{op}.reply.json"), schema)
}

/// An empty request payload (the op takes no input).
fn empty_request(op: &str) -> (String, Schema) {
    (
        format!("{op}.request.json"),
        json_schema!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": format!("Request of {op}"),
            "description": "An empty payload (zero bytes); anything sent is ignored.",
            "type": "string",
            "maxLength": 0
        }),
    )
}

/// A raw-text request payload (not JSON).
fn text_request(op: &str, description: &str) -> (String, Schema) {
    (
        format!("{op}.request.json"),
        json_schema!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": format!("Request of {op}"),
            "description": description,
            "type": "string",
            "contentMediaType": "text/plain"
        }),
    )
}

/// Every schema of the contract, by file name.
pub fn schemas() -> BTreeMap<String, serde_json::Value> {
    let mut all: Vec<(String, Schema)> = vec![
        (
            "envelope.json".into(),
            schema::<AnyEnvelope>("Reply envelope of every op"),
        ),
        (
            "events.put.request.json".into(),
            schema::<EventsPutRequest>("Request of events.put"),
        ),
        reply::<EventsPutReply>("events.put"),
        (
            "heartbeats.put.request.json".into(),
            schema::<HeartbeatRequest>("Request of heartbeats.put"),
        ),
        reply::<EmptyReply>("heartbeats.put"),
        empty_request("stats"),
        reply::<StatsReply>("stats"),
        empty_request("my.shares"),
        reply::<Vec<ShareSummary>>("my.shares"),
        (
            "otc.generate.request.json".into(),
            schema::<NatsterContext>("Request of otc.generate: the caller's natster context"),
        ),
        reply::<OtcGenerateReply>("otc.generate"),
        (
            "otc.claim.request.json".into(),
            schema::<OtcClaimRequest>("Request of otc.claim"),
        ),
        reply::<NatsterContext>("otc.claim"),
        empty_request("whoami"),
        reply::<WhoamiReply>("whoami"),
        text_request("context.get", "The OAuth id, as raw text."),
        reply::<ContextReply>("context.get"),
        text_request(
            "catalogs.validatename",
            "The candidate catalog name, as raw text.",
        ),
        reply::<NameValidation>("catalogs.validatename"),
        (
            "event.natster_initialized.json".into(),
            schema::<InitData>("Payload of natster_initialized"),
        ),
        (
            "event.context_bound.json".into(),
            schema::<ContextBoundData>("Payload of context_bound (the access token is sealed)"),
        ),
        (
            "feed.heartbeat.json".into(),
            schema::<HeartbeatRequest>("Feed message heartbeat: the catalog server's heartbeat"),
        ),
        (
            "account-record.json".into(),
            schema::<AccountRecord>("The caller's own account record"),
        ),
    ];
    for event in ["catalog_shared", "catalog_unshared", "catalog_imported"] {
        all.push((
            format!("event.{event}.json"),
            json_schema!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": format!("Payload of {event}"),
                "description": "No payload: new events have an empty body; historical logs also hold `null` or `{}`.",
                "anyOf": [
                    {"type": "string", "maxLength": 0},
                    {"type": "null"},
                    {"type": "object", "maxProperties": 0}
                ]
            }),
        ));
    }
    for kind in ["catalog_online", "catalog_offline"] {
        all.push((
            format!("feed.{kind}.json"),
            schema::<OnlineNotice>(&format!("Feed message {kind}")),
        ));
    }
    for kind in ["catalog_shared", "catalog_unshared"] {
        all.push((
            format!("feed.{kind}.json"),
            schema::<ShareNotice>(&format!("Feed message {kind}")),
        ));
    }
    all.into_iter()
        .map(|(name, schema)| (name, schema.to_value()))
        .collect()
}

/// The text a schema file holds (pretty JSON, newline-terminated).
pub fn file_text(schema: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema serializes");
    text.push('\n');
    text
}

/// Writes every schema into `dir`; returns the file names.
pub fn write_all(dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, schema) in schemas() {
        std::fs::write(dir.join(&name), file_text(&schema))?;
        written.push(name);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_op_has_a_request_and_a_reply_schema() {
        let schemas = super::schemas();
        for op in crate::api::Op::ALL {
            for part in ["request", "reply"] {
                let name = format!("{}.{part}.json", op.name());
                let schema = schemas.get(&name).unwrap_or_else(|| panic!("{name}"));
                assert_eq!(
                    schema["$schema"],
                    "https://json-schema.org/draft/2020-12/schema"
                );
            }
        }
    }
}

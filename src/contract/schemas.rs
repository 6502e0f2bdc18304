//! The wire contract as JSON Schemas (draft 2020-12), generated from the op table and the
//! message types.
//!
//! `schemas/` holds the output of [`schemas`] (written by `natster-global schemas`); a test
//! fails when the two differ, and another validates live replies against them. File names:
//! `<op>.request.json`, `<op>.reply.json` (the whole envelope, with the op's `data`),
//! `envelope.json`, `event.<type>.json` (event payloads), `feed.<kind>.json` and
//! `account-record.json` (what an account reads of itself).

use super::body::{titled, RequestBody};
use super::feeds::FeedKind;
use super::messages::{HeartbeatRequest, OnlineNotice, ShareNotice};
use super::ops::{visit_ops, OpVisitor, Operation};
use super::Envelope;
use crate::model::{AccountRecord, ContextBoundData, EventType, InitData};
use schemars::{json_schema, Schema};
use std::collections::BTreeMap;

/// `<op>.request.json` and `<op>.reply.json` of every op in the table.
struct OpSchemas(Vec<(String, Schema)>);

impl OpVisitor for OpSchemas {
    fn visit<O: Operation>(&mut self) {
        let name = O::OP.name();
        self.0.push((
            format!("{name}.request.json"),
            <O::Request as RequestBody>::schema(name),
        ));
        self.0
            .push((format!("{name}.reply.json"), reply::<O::Reply>(name)));
    }
}

/// The envelope of one op's reply: `data` is the op's reply or `null`, and always present.
fn reply<T: schemars::JsonSchema>(op: &str) -> Schema {
    let mut schema = titled::<Envelope<Option<T>>>(&format!("Reply of {op}"));
    schema.insert(
        "description".into(),
        "The reply envelope: `code`, `error` on failure, and `data` (`null` on failure).".into(),
    );
    if let Some(required) = schema
        .ensure_object()
        .get_mut("required")
        .and_then(|r| r.as_array_mut())
    {
        if !required.iter().any(|r| r == "data") {
            required.push("data".into());
        }
    }
    schema
}

/// Every schema of the contract, by file name.
pub fn schemas() -> BTreeMap<String, serde_json::Value> {
    let mut envelope = titled::<Envelope>("Reply envelope of every op");
    envelope.insert(
        "description".into(),
        "The envelope of any op (`data` of any type).".into(),
    );
    let mut ops = OpSchemas(vec![("envelope.json".into(), envelope)]);
    visit_ops(&mut ops);
    let mut all = ops.0;
    all.extend([
        (
            "event.natster_initialized.json".into(),
            titled::<InitData>("Payload of natster_initialized"),
        ),
        (
            "event.context_bound.json".into(),
            titled::<ContextBoundData>("Payload of context_bound (the access token is sealed)"),
        ),
        (
            "feed.heartbeat.json".into(),
            titled::<HeartbeatRequest>("Feed message heartbeat: the catalog server's heartbeat"),
        ),
        (
            "account-record.json".into(),
            titled::<AccountRecord>("The caller's own account record"),
        ),
    ]);
    for event in [
        EventType::CatalogShared,
        EventType::CatalogUnshared,
        EventType::CatalogImported,
    ] {
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
    for kind in [FeedKind::CatalogOnline, FeedKind::CatalogOffline] {
        all.push((
            format!("feed.{}.json", kind.as_str()),
            titled::<OnlineNotice>(&format!("Feed message {}", kind.as_str())),
        ));
    }
    for kind in [FeedKind::CatalogShared, FeedKind::CatalogUnshared] {
        all.push((
            format!("feed.{}.json", kind.as_str()),
            titled::<ShareNotice>(&format!("Feed message {}", kind.as_str())),
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
        for op in crate::contract::Op::ALL {
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

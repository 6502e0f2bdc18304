//! Request payloads: how each kind travels (nothing, raw text, or JSON) and how it is written,
//! read and described as a JSON Schema.

use super::messages::{EventsPutRequest, HeartbeatRequest, OtcClaimRequest};
use crate::model::NatsterContext;
use bytes::Bytes;
use schemars::{json_schema, JsonSchema, Schema};

/// Why a request payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// A text payload that is not UTF-8.
    #[error("the request is not UTF-8 text")]
    NotText,
    /// A JSON payload that does not decode as the op's request type.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// How a request payload travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Nothing (anything sent is ignored).
    Empty,
    /// Raw UTF-8 text, not JSON: what it holds.
    Text(&'static str),
    /// A JSON document.
    Json,
}

/// The payload of an op's request.
pub trait RequestBody: Sized + Send + Sync + 'static {
    /// How it travels.
    const SHAPE: Shape;
    /// The bytes to send.
    fn to_bytes(&self) -> Bytes;
    /// Reads a received payload.
    fn from_bytes(bytes: &[u8]) -> Result<Self, BodyError>;
    /// The JSON Schema of the payload of op `op` (file `<op>.request.json`).
    fn schema(op: &str) -> Schema;
}

/// An op that takes no input: anything sent is ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoPayload;

impl RequestBody for NoPayload {
    const SHAPE: Shape = Shape::Empty;

    fn to_bytes(&self) -> Bytes {
        Bytes::new()
    }

    fn from_bytes(_: &[u8]) -> Result<Self, BodyError> {
        Ok(NoPayload)
    }

    fn schema(op: &str) -> Schema {
        json_schema!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": format!("Request of {op}"),
            "description": "An empty payload (zero bytes); anything sent is ignored.",
            "type": "string",
            "maxLength": 0
        })
    }
}

/// Raw-text payloads (not JSON): received trimmed of surrounding whitespace.
macro_rules! text_body {
    ($(#[$doc:meta])* $ty:ident, $what:literal, $description:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $ty(pub String);

        impl RequestBody for $ty {
            const SHAPE: Shape = Shape::Text($what);

            fn to_bytes(&self) -> Bytes {
                Bytes::from(self.0.clone())
            }

            fn from_bytes(bytes: &[u8]) -> Result<Self, BodyError> {
                std::str::from_utf8(bytes)
                    .map(|text| $ty(text.trim().to_string()))
                    .map_err(|_| BodyError::NotText)
            }

            fn schema(op: &str) -> Schema {
                json_schema!({
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "title": format!("Request of {op}"),
                    "description": $description,
                    "type": "string",
                    "contentMediaType": "text/plain"
                })
            }
        }
    };
}

text_body!(
    /// An OAuth id, as `context.get` takes it.
    OAuthId,
    "an OAuth id",
    "The OAuth id, as raw text."
);
text_body!(
    /// A candidate catalog name, as `catalogs.validatename` takes it.
    CatalogName,
    "a catalog name",
    "The candidate catalog name, as raw text."
);

/// JSON payloads of a request type; `$about` follows the op name in the schema's title.
macro_rules! json_body {
    ($($ty:ty => $about:literal),* $(,)?) => {$(
        impl RequestBody for $ty {
            const SHAPE: Shape = Shape::Json;

            fn to_bytes(&self) -> Bytes {
                serde_json::to_vec(self).expect("request types serialize").into()
            }

            fn from_bytes(bytes: &[u8]) -> Result<Self, BodyError> {
                Ok(serde_json::from_slice(bytes)?)
            }

            fn schema(op: &str) -> Schema {
                let mut schema = schemars::schema_for!($ty);
                schema.insert("title".into(), format!("Request of {op}{}", $about).into());
                schema
            }
        }
    )*};
}

json_body! {
    EventsPutRequest => "",
    HeartbeatRequest => "",
    NatsterContext => ": the caller's natster context",
    OtcClaimRequest => "",
}

/// The schema of type `T` with a title (for messages that are not request payloads).
pub(crate) fn titled<T: JsonSchema>(title: &str) -> Schema {
    let mut schema = schemars::schema_for!(T);
    schema.insert("title".into(), title.into());
    schema
}

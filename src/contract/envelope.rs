//! The reply envelope `{"code", "error"?, "data"}` that existing Natster clients decode, and
//! the micro-service error headers that go with a failure.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Header carrying an error's text, as NATS micro services set it.
pub const SERVICE_ERROR_HEADER: &str = "Nats-Service-Error";
/// Header carrying an error's code, as NATS micro services set it.
pub const SERVICE_ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";

/// The reply of every op. Success: `{"code":200,"data":…}` with no `error` key. Failure:
/// `{"code":<4xx|5xx>,"error":"<one readable sentence>","data":null}` (the original's shape).
///
/// `T` is the op's reply type; `Envelope` alone (any `data`) is what a program reading replies
/// of every op decodes, and `Envelope<Option<T>>` one op's, success or failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Envelope")]
pub struct Envelope<T = serde_json::Value> {
    /// HTTP-like: 200, 400, 403, 404, 409, 413, 429, 500, 503.
    pub code: u16,
    /// What went wrong (only on failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The op's reply on success; `null` on failure.
    pub data: T,
}

impl<T> Envelope<T> {
    /// `{"code":200,"data":…}`.
    pub fn success(data: T) -> Envelope<T> {
        Envelope {
            code: 200,
            error: None,
            data,
        }
    }
}

impl<T: Default> Envelope<T> {
    /// `{"code":…,"error":…,"data":null}` (for `T` = `Option<_>` or `serde_json::Value`).
    pub fn failure(code: u16, error: impl Into<String>) -> Envelope<T> {
        Envelope {
            code,
            error: Some(error.into()),
            data: T::default(),
        }
    }
}

impl<T: Serialize> Envelope<T> {
    /// The JSON bytes of this envelope.
    pub fn to_bytes(&self) -> bytes::Bytes {
        serde_json::to_vec(self)
            .expect("an envelope always serializes")
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_has_no_error_key() {
        let bytes = Envelope::success(serde_json::json!({"a": 1})).to_bytes();
        assert_eq!(&bytes[..], br#"{"code":200,"data":{"a":1}}"#);
    }

    #[test]
    fn failure_has_null_data() {
        let bytes = Envelope::<serde_json::Value>::failure(404, "nope").to_bytes();
        assert_eq!(&bytes[..], br#"{"code":404,"error":"nope","data":null}"#);
    }
}

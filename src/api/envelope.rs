//! The reply envelope `{"code", "error"?, "data"}` that existing Natster clients decode.

use serde::Serialize;

/// Header carrying an error's text, as NATS micro services set it.
pub const SERVICE_ERROR_HEADER: &str = "Nats-Service-Error";
/// Header carrying an error's code, as NATS micro services set it.
pub const SERVICE_ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";

/// A reply envelope. Success has no `error` key; failure has `"data": null`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Envelope {
    pub code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub data: serde_json::Value,
}

impl Envelope {
    /// `{"code":200,"data":…}`.
    pub fn success(data: serde_json::Value) -> Envelope {
        Envelope {
            code: 200,
            error: None,
            data,
        }
    }

    /// `{"code":…,"error":…,"data":null}`.
    pub fn failure(error: &ApiError) -> Envelope {
        Envelope {
            code: error.code,
            error: Some(error.message.clone()),
            data: serde_json::Value::Null,
        }
    }

    /// The JSON bytes of this envelope.
    pub fn to_bytes(&self) -> bytes::Bytes {
        serde_json::to_vec(self)
            .expect("an envelope always serializes")
            .into()
    }
}

/// A request that failed: an HTTP-like code and one readable sentence (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub message: String,
}

impl ApiError {
    /// An error with any code.
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
    /// 400: malformed or invalid input.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
    /// 403: not allowed for this caller.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, message)
    }
    /// 404: not found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }
    /// 409: conflicts with current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }
    /// 413: request larger than the cap.
    pub fn too_large(limit: usize) -> Self {
        Self::new(413, format!("the request is larger than {limit} bytes"))
    }
    /// 503: not ready.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, message)
    }
    /// 500: an internal failure; the detail goes to the log, not to the caller.
    pub fn internal() -> Self {
        Self::new(500, "internal error; the service logged the details")
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
        let bytes = Envelope::failure(&ApiError::not_found("nope")).to_bytes();
        assert_eq!(&bytes[..], br#"{"code":404,"error":"nope","data":null}"#);
    }
}

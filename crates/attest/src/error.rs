//! The service's refusal type: an HTTP status, a stable code and a message that never
//! carries a secret.

use serde_json::{Value, json};

/// A refusal or failure, as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Extra detail (for example which policy rules denied).
    pub detail: Option<Value>,
}

impl ApiError {
    /// A refusal with `status`.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
        }
    }

    /// 400: the request or its evidence is not acceptable.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// 401: credential missing or wrong.
    pub fn unauthorized() -> Self {
        Self::new(
            401,
            "unauthorized",
            "a valid administrator credential is required (Authorization: Bearer ...)",
        )
    }

    /// 404: no such provider or resource.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(404, "not_found", what)
    }

    /// 500: a failure of ours (details go to the log, not the caller).
    pub fn internal(code: &'static str) -> Self {
        Self::new(500, code, "internal error; see the service log")
    }

    /// 500 for a failure whose cause goes to the service log only.
    pub fn logged(code: &'static str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(code, %cause, "internal error");
        Self::internal(code)
    }

    /// With extra detail.
    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The JSON body: `{"error": {"code", "message", "detail"?}}`.
    pub fn body(&self) -> Value {
        let mut e = json!({ "code": self.code, "message": self.message });
        if let Some(d) = &self.detail {
            e["detail"] = d.clone();
        }
        json!({ "error": e })
    }
}

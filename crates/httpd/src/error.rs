//! The services' one refusal type: an HTTP status, a stable machine code, a message
//! for the caller (never a secret, never an internal cause) and optional detail. An
//! internal cause goes to the log, under the request's id, and not to the caller.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// A refusal or failure, as an API reports it: `{"error": {"code", "message",
/// "detail"?}}` with the status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation for the caller.
    pub message: String,
    /// Extra detail (which policy rules denied, say).
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

    /// 400: the request is not acceptable.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// 500: a failure of ours (details go to the log, not the caller).
    pub fn internal(code: &'static str) -> Self {
        Self::new(500, code, "internal error; see the service log")
    }

    /// 500 whose `cause` goes to the log (at ERROR, with the request's id) only.
    pub fn logged(code: &'static str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(code, %cause, "internal error");
        Self::internal(code)
    }

    /// With extra detail.
    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The body every contract declares: `{"error": {"code", "message", "detail"?}}`.
    pub fn response(&self) -> api_contract::ErrorResponse {
        api_contract::ErrorResponse::new(self.code, &self.message, self.detail.clone())
    }

    /// [`ApiError::response`] as JSON.
    pub fn body(&self) -> Value {
        serde_json::to_value(self.response()).unwrap_or(Value::Null)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.response())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn body_and_status() {
        let e = ApiError::bad("bad_parameter", "no").with_detail(json!({"x": 1}));
        assert_eq!(
            e.body(),
            json!({"error": {"code": "bad_parameter", "message": "no", "detail": {"x": 1}}})
        );
        assert_eq!(e.into_response().status(), StatusCode::BAD_REQUEST);
        let e = ApiError::logged("store", "secret cause");
        assert!(!e.body().to_string().contains("secret cause"));
        assert_eq!(e.status, 500);
    }
}

//! The service's refusal type is the services' one (`httpd::ApiError`: an HTTP status,
//! a stable code and a message that never carries a secret); the refusals particular
//! to the attestation service are made here.

pub use httpd::ApiError;

/// The attestation service's own refusals.
pub trait AttestRefusal {
    /// 401: the administrator credential is missing or wrong.
    fn unauthorized() -> Self;
    /// 404: no such provider or resource.
    fn not_found(what: impl Into<String>) -> Self;
}

impl AttestRefusal for ApiError {
    fn unauthorized() -> Self {
        Self::new(
            401,
            "unauthorized",
            "a valid administrator credential is required (Authorization: Bearer ...)",
        )
    }

    fn not_found(what: impl Into<String>) -> Self {
        Self::new(404, "not_found", what)
    }
}

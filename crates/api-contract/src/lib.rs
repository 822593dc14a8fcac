//! What every service contract (`keyvault-api`, `attest-api`) shares:
//!
//! - the refusal body every service answers with and every client reads
//!   ([`ErrorResponse`]);
//! - the finishing touches of an OpenAPI document generated from a contract
//!   ([`finish_document`]): the contract's version and the bearer scheme;
//! - the check that the document checked in beside the code is the one the contract
//!   generates ([`check_document`]).

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

/// Every refusal: `{"error": {"code", "message", "detail"?}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    /// The refusal.
    pub error: ErrorBody,
}

/// A refusal's stable code, message and optional detail.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code (`forbidden`, `policy_denied`, ...).
    pub code: String,
    /// For people; never a secret or an internal cause.
    pub message: String,
    /// Extra detail (which policy conditions failed, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub detail: Option<Value>,
}

impl ErrorResponse {
    /// A refusal with `code`, `message` and `detail`.
    pub fn new(code: &str, message: &str, detail: Option<Value>) -> Self {
        ErrorResponse {
            error: ErrorBody {
                code: code.to_string(),
                message: message.to_string(),
                detail,
            },
        }
    }
}

/// One operation of a contract for its OpenAPI document: a stub function, named as
/// the operation's id, that carries the path, path parameters, request body and
/// answers as [`utoipa::path`] attributes, with [`ErrorResponse`] as every refusal.
/// The contract crate needs `utoipa` and `ErrorResponse` in scope.
///
/// `operation_stub!(id, method "/path/{p}", ["p"], Request => 200 Answer)`; without
/// `Request,` for no body; without `Answer` for an empty answer.
#[macro_export]
macro_rules! operation_stub {
    ($id:ident, $method:ident $path:literal, [$($p:literal),*], $req:ty => $status:literal $ok:ty) => {
        #[utoipa::path($method, path = $path,
            params($(($p = String, Path)),*),
            request_body = $req,
            responses((status = $status, description = "done", body = $ok), (status = "default", description = "refused", body = ErrorResponse)))]
        #[allow(dead_code)]
        fn $id() {}
    };
    ($id:ident, $method:ident $path:literal, [$($p:literal),*] => $status:literal $ok:ty) => {
        #[utoipa::path($method, path = $path,
            params($(($p = String, Path)),*),
            responses((status = $status, description = "done", body = $ok), (status = "default", description = "refused", body = ErrorResponse)))]
        #[allow(dead_code)]
        fn $id() {}
    };
    ($id:ident, $method:ident $path:literal, [$($p:literal),*] => $status:literal) => {
        #[utoipa::path($method, path = $path,
            params($(($p = String, Path)),*),
            responses((status = $status, description = "done"), (status = "default", description = "refused", body = ErrorResponse)))]
        #[allow(dead_code)]
        fn $id() {}
    };
}

/// Writes `x-opencvm-roles` (who may call) on each operation the document has, from a
/// contract's table: `(path, method in upper case, roles)`.
pub fn annotate_roles<'a>(
    doc: &mut Value,
    ops: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
) {
    for (path, method, roles) in ops {
        let op = &mut doc["paths"][path][method.to_ascii_lowercase()];
        if op.is_object() {
            op["x-opencvm-roles"] = json!(roles);
        }
    }
}

/// Finishes a document generated from a contract: its version (the contract crate's
/// `version`, not the build's) and the `bearer` HTTP scheme credentials are presented
/// with.
pub fn finish_document(mut doc: Value, version: &str) -> Value {
    doc["info"]["version"] = json!(version);
    doc["components"]["securitySchemes"] = json!({
        "bearer": { "type": "http", "scheme": "bearer" }
    });
    doc
}

/// The HTTP methods an OpenAPI path item may hold operations under (its other members,
/// `parameters` or `summary`, are not operations).
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every operation of an OpenAPI document: its path template, its method (lower case)
/// and the operation object.
pub fn operations(doc: &Value) -> Vec<(&str, &str, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            if METHODS.contains(&method.as_str()) {
                out.push((path.as_str(), method.as_str(), op));
            }
        }
    }
    out
}

/// Whether the document checked in at `path` is `generated` (pretty JSON and a
/// newline); with `OPENCVM_BLESS` set in the environment, first writes it there. A
/// contract crate's test calls this, so CI fails on a change of the contract whose
/// document was not checked in.
pub fn check_document(path: &std::path::Path, generated: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(generated).map_err(|e| e.to_string())? + "\n";
    if std::env::var_os("OPENCVM_BLESS").is_some() {
        std::fs::write(path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let checked_in = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: {e} (OPENCVM_BLESS=1 writes it)", path.display()))?;
    if checked_in != text {
        return Err(format!(
            "{} differs from the contract's document: run the contract crate's tests with OPENCVM_BLESS=1 and check the change in",
            path.display()
        ));
    }
    Ok(())
}

/// Checks recorded answers of a running server against the OpenAPI document at `doc`
/// with `scripts/validate-openapi.py` of the repository at `repo` (validators nobody in
/// this project wrote: openapi-spec-validator, openapi-schema-validator). `records` are
/// `{"operation", "status", "body"}`. Returns the script's exit code (0: every answer
/// matches) and its output.
#[cfg(feature = "testing")]
pub fn validate_responses(
    repo: &std::path::Path,
    doc: &std::path::Path,
    records: &[Value],
) -> std::io::Result<(Option<i32>, String)> {
    let file = std::env::temp_dir().join(format!(
        "opencvm-openapi-records-{}-{:?}.json",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&file, serde_json::to_vec(records)?)?;
    let out = std::process::Command::new("python3")
        .arg(repo.join("scripts/validate-openapi.py"))
        .arg(doc)
        .arg(&file)
        .output();
    let _ = std::fs::remove_file(&file);
    let out = out?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.code(), text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_round_trip_and_documents_are_compared_exactly() {
        let e = ErrorResponse::new("forbidden", "no", Some(json!({"x": 1})));
        let v = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(
            v,
            json!({"error": {"code": "forbidden", "message": "no", "detail": {"x": 1}}})
        );
        assert_eq!(serde_json::from_value::<ErrorResponse>(v).ok(), Some(e));
        let dir = std::env::temp_dir().join(format!("api-contract-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let path = dir.join("doc.json");
        let doc = finish_document(json!({"openapi": "3.1.0", "info": {}}), "1.2.3");
        assert!(check_document(&path, &doc).is_err(), "missing file");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n",
        )
        .unwrap_or_default();
        assert_eq!(check_document(&path, &doc), Ok(()));
        let other = finish_document(doc.clone(), "1.2.4");
        let with_ops = json!({"paths": {"/a": {"parameters": [], "get": {"operationId": "g"},
            "post": {"operationId": "p"}}}});
        let ids: Vec<_> = operations(&with_ops)
            .iter()
            .map(|(path, m, op)| (*path, *m, op["operationId"].as_str().unwrap_or_default()))
            .collect();
        assert_eq!(ids, [("/a", "get", "g"), ("/a", "post", "p")]);
        assert!(check_document(&path, &other).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The checked-in OpenAPI document (`openapi/control.json`) is the one this contract
//! generates. `OPENCVM_BLESS=1 cargo test -p control-api` rewrites the file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn the_checked_in_openapi_document_is_the_generated_one() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi/control.json");
    api_contract::check_document(&path, &control_api::openapi()).unwrap();
}

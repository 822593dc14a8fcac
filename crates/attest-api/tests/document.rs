//! The checked-in OpenAPI document (`openapi/attest.json`) is the one this contract
//! generates: a change of the contract that is not checked in fails here (and so in
//! CI). `OPENCVM_BLESS=1 cargo test -p attest-api` rewrites the file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn the_checked_in_openapi_document_is_the_generated_one() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi/attest.json");
    api_contract::check_document(&path, &attest_api::openapi()).unwrap();
}

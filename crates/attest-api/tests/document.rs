//! The checked-in OpenAPI document (`openapi/attest.json`) is the one this contract
//! generates: a change of the contract that is not checked in fails here (and so in
//! CI). `OPENCVM_BLESS=1 cargo test -p attest-api` rewrites the file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn the_checked_in_openapi_document_is_the_generated_one() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi/attest.json");
    let generated = serde_json::to_string_pretty(&attest_api::openapi()).unwrap() + "\n";
    if std::env::var_os("OPENCVM_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (OPENCVM_BLESS=1 writes it)", path.display()));
    assert!(
        checked_in == generated,
        "{} differs from the contract's document: run OPENCVM_BLESS=1 cargo test -p attest-api and check the change in",
        path.display()
    );
}

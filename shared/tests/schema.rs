//! The published JSON Schema is generated from the policy types; this proves the checked-in copy is current,
//! and that the shipped example policies compile.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use txngate_core::Policy;

#[test]
fn checked_in_schema_matches_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/policy.schema.json");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        file,
        txngate_core::policy::json_schema(),
        "schema/policy.schema.json is stale: regenerate with `cargo run --bin txngate -- policy schema > schema/policy.schema.json`"
    );
}

#[test]
fn example_policy_compiles() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy.json");
    Policy::from_json(&std::fs::read(path).unwrap()).unwrap();
}

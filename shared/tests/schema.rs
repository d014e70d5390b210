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

/// The policy reference (docs/policy.md) is checked against the schema: every field the schema knows has a
/// row (or is named in its parent's row), and every row names a field the schema knows.
#[test]
fn policy_reference_covers_the_schema() {
    use serde_json::Value;
    let reference =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/policy.md")).unwrap();
    let section = reference
        .split("## Policy reference")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let rows: Vec<(String, String)> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            (
                cells[0]
                    .trim_start_matches("| ")
                    .trim_matches('`')
                    .to_string(),
                l.to_string(),
            )
        })
        .collect();
    let schema = txngate_core::policy::json_schema();
    let defs = schema["$defs"].clone();
    let resolve = |v: &Value| -> Value {
        let mut v = v.clone();
        for _ in 0..4 {
            let next = v
                .get("$ref")
                .or_else(|| v.get("allOf").and_then(|a| a[0].get("$ref")))
                .or_else(|| {
                    v.get("anyOf")
                        .and_then(|a| a.as_array().unwrap().iter().find_map(|x| x.get("$ref")))
                })
                .and_then(Value::as_str)
                .map(|r| defs[r.trim_start_matches("#/$defs/")].clone());
            match next {
                Some(n) => v = n,
                None => break,
            }
        }
        v
    };
    // Map keys in the policy reference's notation.
    let key_name = |field: &str| if field == "agents" { "{id}" } else { "{name}" };
    let mut missing = Vec::new();
    let mut known = Vec::new();
    let mut stack: Vec<(String, Value)> = vec![(String::new(), schema.clone())];
    while let Some((path, node)) = stack.pop() {
        let node = resolve(&node);
        let Some(props) = node.get("properties").and_then(Value::as_object) else {
            continue;
        };
        for (field, sub) in props {
            let full = if path.is_empty() {
                field.clone()
            } else {
                format!("{path}.{field}")
            };
            let sub = resolve(sub);
            known.push(full.clone());
            if let Some(row) = rows
                .iter()
                .find(|(p, _)| *p == full || *p == format!("{full}[]"))
            {
                // A row for an object: its fields must be named in that row.
                let item = resolve(sub.get("items").unwrap_or(&sub));
                for inner in item
                    .get("properties")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    if !row.1.contains(&format!("\"{inner}\""))
                        && !row.1.contains(&format!("`{inner}`"))
                    {
                        missing.push(format!("{full}.{inner} (not named in the row of {full})"));
                    }
                    known.push(format!("{full}.{inner}"));
                }
                continue;
            }
            if let Some(items) = sub.get("items") {
                stack.push((format!("{full}[]"), items.clone()));
            } else if let Some(values) = sub.get("additionalProperties").filter(|v| v.is_object()) {
                stack.push((format!("{full}.{}", key_name(field)), values.clone()));
            } else if sub.get("properties").is_some() {
                stack.push((full.clone(), sub.clone()));
            } else {
                missing.push(full);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/policy.md policy reference lacks: {missing:#?}"
    );
    let normalise = |p: &str| {
        p.replace("[]", "")
            .replace(".{id}", "")
            .replace(".{name}", "")
    };
    let known: Vec<String> = known.iter().map(|k| normalise(k)).collect();
    for (row, _) in &rows {
        if row == "tools[\"*\"]" {
            continue;
        }
        assert!(
            known.contains(&normalise(row)),
            "docs/policy.md row `{row}` names no schema field"
        );
    }
}

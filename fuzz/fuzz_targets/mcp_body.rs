//! MCP bodies: requests through `mcp::parse_message` and `routing::check`, responses through
//! `listing::filter_list` (tools/list) as JSON and as SSE; the same bytes as a request path through `mcp::normalize_path`.
//! Invariants: a parsed `tools/call`, `prompts/get` or `resources/read` always has a non-empty name (URI)
//! without control characters within its length bound, and object arguments; a filtered JSON
//! `tools/list` never still lists a hidden tool; a normalised path is absolute, lower-case, without empty
//! segments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use txngate_core::listing::{filter_list, ListKind};
use txngate_core::mcp::routing::{self, encode_value, RoutingHeaders};
use txngate_core::mcp::{
    normalize_path, parse_message, Target, MAX_NAME_BYTES, MAX_URI_BYTES,
};

/// Tools whose name starts with `h` are hidden from the caller.
fn visible(name: &str) -> bool {
    !name.starts_with('h')
}

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = parse_message(data, 65536, 32) {
        if let Some(target) = &message.target {
            let name = target.name();
            let max = match target {
                Target::Resource(_) => MAX_URI_BYTES,
                _ => MAX_NAME_BYTES,
            };
            assert!(!name.is_empty() && name.len() <= max, "{name:?}");
            assert!(!name.chars().any(char::is_control), "{name:?}");
            if let Target::Tool(call) = target {
                // Kept as bytes by the typed reader: they still read back as an object, and hash as its tree.
                let tree = call.arguments.to_value().expect("arguments read back");
                assert!(tree.is_object());
                assert_eq!(
                    call.arguments.canonical_sha256(),
                    txngate_core::mcp::Arguments::from(tree).canonical_sha256()
                );
            }
            if let Target::Prompt(get) = target {
                assert!(get.arguments.is_object());
            }
            // Any spelling of a name-bearing method is one; headers that repeat the body (the name encoded as
            // a client must) always pass, whatever the body's protocol version.
            assert!(message.method.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(target.method())));
            let method = message.method.clone().unwrap_or_default();
            let version = message.protocol_version_meta.clone();
            let headers = RoutingHeaders {
                method: vec![method],
                name: vec![encode_value(name)],
                protocol_version: version.into_iter().collect(),
            };
            if !message.method.as_deref().unwrap_or("").contains(',')
                && !message.protocol_version_meta.as_deref().unwrap_or("").contains(',')
                && message.method.as_deref().unwrap_or("").bytes().all(|b| (0x20..=0x7e).contains(&b))
                && message.protocol_version_meta.as_deref().unwrap_or("").bytes().all(|b| (0x20..=0x7e).contains(&b))
            {
                assert!(routing::check(&message, &headers).is_ok());
            }
        }
        let _ = routing::check(&message, &RoutingHeaders::from_pairs([("Mcp-Name", "=?base64?eA==?=")]));
    }

    if let Ok(out) = filter_list(ListKind::Tools, "application/json", data, &visible) {
        if out != data {
            let value: Value = match serde_json::from_slice(&out) {
                Ok(v) => v,
                Err(e) => panic!("filtered tools/list is not JSON: {e}"),
            };
            let tools = value["result"]["tools"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for tool in tools {
                let name = tool.get("name").and_then(Value::as_str).unwrap_or("");
                assert!(visible(name), "hidden tool {name:?} still listed");
            }
        }
    }
    let _ = filter_list(ListKind::Tools, "text/event-stream; charset=utf-8", data, &visible);

    let path = normalize_path(&String::from_utf8_lossy(data));
    assert!(path.starts_with('/'), "{path:?}");
    assert!(path == "/" || !path.ends_with('/'), "{path:?}");
    assert!(!path.contains("//"), "{path:?}");
    assert!(!path.bytes().any(|b| b.is_ascii_uppercase()), "{path:?}");
});

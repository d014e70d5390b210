//! List results (`tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`) filtered down to
//! what one caller may use, as JSON or as an SSE stream. A filtered result is one caller's view: it is marked
//! `"cacheScope": "private"` (MCP 2026-07-28 caching utility) so that no shared cache serves it to another.

use core::fmt;

use serde_json::Value;

pub use crate::mcp::ListKind;

/// Why a list response could not be filtered (the host must not pass it on).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListError {
    /// A JSON body that does not parse.
    Json { detail: String },
    /// An SSE stream that is not UTF-8.
    SseEncoding,
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json { detail } => write!(f, "list response is not JSON: {detail}"),
            Self::SseEncoding => f.write_str("list response SSE stream is not UTF-8"),
        }
    }
}

impl std::error::Error for ListError {}

/// Removes from a `kind` list result the entries `visible` rejects (by their `name`, `uri` or `uriTemplate`)
/// and marks the result `"cacheScope": "private"`. Bodies that are not such a result (errors, other
/// responses, an empty body) come back unchanged. `content_type` selects JSON or SSE.
pub fn filter_list(
    kind: ListKind,
    content_type: &str,
    body: &[u8],
    visible: &dyn Fn(&str) -> bool,
) -> Result<Vec<u8>, ListError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(body.to_vec());
    }
    let media = content_type.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("text/event-stream") {
        filter_sse(kind, body, visible)
    } else {
        filter_json(kind, body, visible)
    }
}

fn filter_json(
    kind: ListKind,
    body: &[u8],
    visible: &dyn Fn(&str) -> bool,
) -> Result<Vec<u8>, ListError> {
    let json = |e: serde_json::Error| ListError::Json {
        detail: e.to_string(),
    };
    let mut value: Value = serde_json::from_slice(body).map_err(json)?;
    if filter_value(kind, &mut value, visible) {
        serde_json::to_vec(&value).map_err(json)
    } else {
        Ok(body.to_vec())
    }
}

/// True when `value` was a `kind` list result (and was filtered and marked private). An array (a batch
/// response, which no request through txngate asks for) has each member filtered, so none passes unread.
fn filter_value(kind: ListKind, value: &mut Value, visible: &dyn Fn(&str) -> bool) -> bool {
    if let Value::Array(members) = value {
        let mut any = false;
        // One level only: a batch holds objects, and nested arrays cannot be a list result.
        for member in members.iter_mut().filter(|m| m.is_object()) {
            any |= filter_value(kind, member, visible);
        }
        return any;
    }
    let Some(result) = value.get_mut("result").and_then(Value::as_object_mut) else {
        return false;
    };
    let Some(entries) = result
        .get_mut(kind.array_key())
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    let key = kind.name_key();
    entries.retain(|entry| entry.get(key).and_then(Value::as_str).is_some_and(visible));
    result.insert("cacheScope".into(), Value::String("private".into()));
    true
}

fn filter_sse(
    kind: ListKind,
    body: &[u8],
    visible: &dyn Fn(&str) -> bool,
) -> Result<Vec<u8>, ListError> {
    let text = core::str::from_utf8(body).map_err(|_| ListError::SseEncoding)?;
    // CRLF, LF and a lone CR all end a line (the SSE grammar).
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(normalized.len());
    for (i, event) in normalized.split("\n\n").enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| {
                l.strip_prefix("data:")
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
            })
            .collect();
        let mut parsed = if data.is_empty() {
            None
        } else {
            serde_json::from_str::<Value>(&data.join("\n")).ok()
        };
        let filtered = parsed
            .as_mut()
            .is_some_and(|value| filter_value(kind, value, visible));
        match parsed {
            Some(value) if filtered => {
                let mut wrote_data = false;
                for line in event.lines() {
                    if line.starts_with("data:") {
                        if !wrote_data {
                            out.push_str("data: ");
                            out.push_str(&value.to_string());
                            out.push('\n');
                            wrote_data = true;
                        }
                    } else {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
                if out.ends_with('\n') {
                    out.pop();
                }
            }
            _ => out.push_str(event),
        }
    }
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn tools_list_json_and_sse_are_filtered() {
        let visible = |n: &str| n != "delete_repo";
        let body = json!({"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"send_email"},{"name":"delete_repo"}],"ttlMs":5,"cacheScope":"public"}}).to_string();
        let out: Value = serde_json::from_slice(
            &filter_list(
                ListKind::Tools,
                "application/json",
                body.as_bytes(),
                &visible,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(out["result"]["tools"], json!([{"name":"send_email"}]));
        assert_eq!(out["result"]["cacheScope"], "private");
        assert_eq!(out["result"]["ttlMs"], 5);

        let sse = format!("event: message\r\nid: 5\r\ndata: {body}\r\n\r\n");
        let out = String::from_utf8(
            filter_list(
                ListKind::Tools,
                "text/event-stream; charset=utf-8",
                sse.as_bytes(),
                &visible,
            )
            .unwrap(),
        )
        .unwrap();
        assert!(out.starts_with("event: message\nid: 5\ndata: {"), "{out}");
        assert!(!out.contains("delete_repo"));
        assert!(out.contains(r#""cacheScope":"private""#), "{out}");
        assert!(out.ends_with("\n\n"), "{out:?}");

        let error = json!({"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}).to_string();
        assert_eq!(
            filter_list(
                ListKind::Tools,
                "application/json",
                error.as_bytes(),
                &visible
            )
            .unwrap(),
            error.as_bytes()
        );
        assert_eq!(
            filter_list(ListKind::Tools, "application/json", b"", &visible).unwrap(),
            b""
        );
        assert!(filter_list(ListKind::Tools, "application/json", b"{", &visible).is_err());
    }

    /// An origin that answers with a JSON array (a batch response) must not get its list past the filter.
    #[test]
    fn batch_shaped_list_responses_are_filtered() {
        let visible = |n: &str| n != "delete_repo";
        let body = json!([{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"send_email"},{"name":"delete_repo"}]}}]).to_string();
        let out = filter_list(
            ListKind::Tools,
            "application/json",
            body.as_bytes(),
            &visible,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("delete_repo"), "{out}");
        assert!(out.contains("send_email"), "{out}");
        let sse = format!("data: {body}\n\n");
        let out = filter_list(
            ListKind::Tools,
            "text/event-stream",
            sse.as_bytes(),
            &visible,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("delete_repo"), "{out}");
    }

    /// SSE lines may end in a lone CR (the SSE grammar, which client parsers follow): a stream of such
    /// events must be filtered too, not passed on as one unparsable event.
    #[test]
    fn sse_with_cr_line_endings_is_filtered() {
        let visible = |n: &str| n != "delete_repo";
        let note =
            json!({"jsonrpc":"2.0","method":"notifications/progress","params":{}}).to_string();
        let list = json!({"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"send_email"},{"name":"delete_repo"}]}}).to_string();
        let sse = format!("event: message\rdata: {note}\r\revent: message\rdata: {list}\r\r");
        let out = String::from_utf8(
            filter_list(
                ListKind::Tools,
                "text/event-stream",
                sse.as_bytes(),
                &visible,
            )
            .unwrap(),
        )
        .unwrap();
        assert!(!out.contains("delete_repo"), "{out:?}");
        assert!(out.contains("send_email"), "{out:?}");
    }

    #[test]
    fn every_kind_filters_by_its_own_key() {
        let visible = |n: &str| n.starts_with("ok");
        for (kind, key, field) in [
            (ListKind::Prompts, "prompts", "name"),
            (ListKind::Resources, "resources", "uri"),
            (
                ListKind::ResourceTemplates,
                "resourceTemplates",
                "uriTemplate",
            ),
        ] {
            let body = json!({"jsonrpc":"2.0","id":1,"result":{key:[{field:"ok1"},{field:"no"},{"other":"ok"}]}});
            let out: Value = serde_json::from_slice(
                &filter_list(
                    kind,
                    "application/json",
                    body.to_string().as_bytes(),
                    &visible,
                )
                .unwrap(),
            )
            .unwrap();
            assert_eq!(out["result"][key], json!([{field:"ok1"}]), "{kind:?}");
            assert_eq!(out["result"]["cacheScope"], "private");
            // Another kind's result is left alone.
            let other = if kind == ListKind::Prompts {
                ListKind::Tools
            } else {
                ListKind::Prompts
            };
            let same = filter_list(
                other,
                "application/json",
                body.to_string().as_bytes(),
                &visible,
            )
            .unwrap();
            assert_eq!(same, body.to_string().as_bytes());
        }
    }

    proptest! {
        #[test]
        fn sse_filter_never_panics(body in "(data: |event: |\n|\r|[{}\"a:,])*") {
            let _ = filter_list(ListKind::Tools, "text/event-stream", body.as_bytes(), &|_| true);
        }

        /// Whatever the entries, none that `visible` rejects survives, and the result is marked private.
        #[test]
        fn nothing_hidden_survives(names in prop::collection::vec("[a-c]{1,2}", 0..8)) {
            let entries: Vec<Value> = names.iter().map(|n| json!({"name": n})).collect();
            let body = json!({"jsonrpc":"2.0","id":1,"result":{"prompts": entries}}).to_string();
            let out: Value = serde_json::from_slice(
                &filter_list(ListKind::Prompts, "application/json", body.as_bytes(), &|n| n.contains('a')).unwrap(),
            ).unwrap();
            let kept: Vec<String> = names.iter().filter(|n| n.contains('a')).cloned().collect();
            let got: Vec<String> = out["result"]["prompts"].as_array().unwrap().iter()
                .map(|e| e["name"].as_str().unwrap().to_string()).collect();
            prop_assert_eq!(got, kept);
            prop_assert_eq!(&out["result"]["cacheScope"], "private");
        }
    }
}

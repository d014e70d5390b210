//! List results (`tools/list`, ...) filtered down to what one caller may use.

use serde_json::Value;

use super::McpError;

/// Removes from a `tools/list` result the tools `visible` rejects. Bodies that are not a tools/list result
/// (errors, other responses) come back unchanged. `content_type` selects JSON or SSE.
pub fn filter_tools_list(
    content_type: &str,
    body: &[u8],
    visible: &dyn Fn(&str) -> bool,
) -> Result<Vec<u8>, McpError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("text/event-stream") {
        filter_sse(body, visible)
    } else {
        filter_json(body, visible)
    }
}

fn filter_json(body: &[u8], visible: &dyn Fn(&str) -> bool) -> Result<Vec<u8>, McpError> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| McpError::Json {
        detail: e.to_string(),
    })?;
    if filter_value(&mut value, visible) {
        serde_json::to_vec(&value).map_err(|e| McpError::Json {
            detail: e.to_string(),
        })
    } else {
        Ok(body.to_vec())
    }
}

/// True when `value` was a tools/list result (and was filtered).
fn filter_value(value: &mut Value, visible: &dyn Fn(&str) -> bool) -> bool {
    let Some(tools) = value
        .get_mut("result")
        .and_then(|r| r.get_mut("tools"))
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    tools.retain(|tool| {
        tool.get("name")
            .and_then(Value::as_str)
            .is_some_and(visible)
    });
    true
}

fn filter_sse(body: &[u8], visible: &dyn Fn(&str) -> bool) -> Result<Vec<u8>, McpError> {
    let text = core::str::from_utf8(body).map_err(|_| McpError::Json {
        detail: "SSE stream is not UTF-8".into(),
    })?;
    let normalized = text.replace("\r\n", "\n");
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
            .is_some_and(|value| filter_value(value, visible));
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
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn tools_list_json_and_sse_are_filtered() {
        let visible = |n: &str| n != "delete_repo";
        let body = json!({"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"send_email"},{"name":"delete_repo"}]}}).to_string();
        let out: Value = serde_json::from_slice(
            &filter_tools_list("application/json", body.as_bytes(), &visible).unwrap(),
        )
        .unwrap();
        assert_eq!(out["result"]["tools"], json!([{"name":"send_email"}]));

        let sse = format!("event: message\r\nid: 5\r\ndata: {body}\r\n\r\n");
        let out = String::from_utf8(
            filter_tools_list("text/event-stream; charset=utf-8", sse.as_bytes(), &visible)
                .unwrap(),
        )
        .unwrap();
        assert!(out.starts_with("event: message\nid: 5\ndata: {"), "{out}");
        assert!(!out.contains("delete_repo"));
        assert!(out.ends_with("\n\n"), "{out:?}");

        let error = json!({"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}).to_string();
        assert_eq!(
            filter_tools_list("application/json", error.as_bytes(), &visible).unwrap(),
            error.as_bytes()
        );
    }

    proptest! {
        #[test]
        fn sse_filter_never_panics(body in "(data: |event: |\n|\r|[{}\"a:,])*") {
            let _ = filter_tools_list("text/event-stream", body.as_bytes(), &|_| true);
        }
    }
}

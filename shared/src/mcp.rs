//! MCP on the wire: JSON-RPC 2.0 bodies of Streamable HTTP requests, the `Mcp-Method`/`Mcp-Name` headers that
//! must agree with them, and the `tools/list` responses a caller should only see its own tools in.
//!
//! Batches (JSON arrays, MCP 2025-03-26 only) are refused with 400: every later revision dropped them, and
//! authorizing some calls of a batch but not others has no faithful rendering as one HTTP answer.

use core::fmt;

use serde_json::{Map, Value};

use crate::json::{parse_strict, JsonError};

/// Why an MCP request body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum McpError {
    /// A POST to the MCP endpoint without a body (or the host could not read it).
    BodyMissing,
    TooLarge {
        max: usize,
    },
    Json {
        detail: String,
    },
    DuplicateKey {
        path: String,
        key: String,
    },
    TooDeep {
        max: usize,
    },
    /// Valid JSON but not a JSON-RPC 2.0 message.
    Invalid {
        detail: &'static str,
    },
    Batch,
    /// `tools/call` without a usable `params.name`, or a name outside the MCP tool-name alphabet.
    ToolName {
        detail: &'static str,
    },
    /// `params.arguments` present but not an object.
    Arguments,
    /// An `Mcp-Method` or `Mcp-Name` header that disagrees with the body.
    HeaderMismatch {
        header: &'static str,
        header_value: String,
        body_value: String,
    },
}

impl McpError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BodyMissing => "mcp.body_missing",
            Self::TooLarge { .. } => "mcp.body_too_large",
            Self::Json { .. } => "mcp.parse",
            Self::DuplicateKey { .. } => "mcp.duplicate_key",
            Self::TooDeep { .. } => "mcp.depth",
            Self::Invalid { .. } => "mcp.invalid",
            Self::Batch => "mcp.batch",
            Self::ToolName { .. } => "mcp.tool_name",
            Self::Arguments => "mcp.arguments",
            Self::HeaderMismatch { .. } => "mcp.header_mismatch",
        }
    }

    /// The JSON-RPC error code a client sees.
    pub fn rpc_code(&self) -> i64 {
        match self {
            Self::Json { .. } | Self::DuplicateKey { .. } | Self::TooDeep { .. } => -32700,
            Self::ToolName { .. } | Self::Arguments => -32602,
            Self::HeaderMismatch { .. } => -32020,
            Self::BodyMissing | Self::TooLarge { .. } | Self::Invalid { .. } | Self::Batch => {
                -32600
            }
        }
    }
}

impl fmt::Display for McpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BodyMissing => f.write_str("MCP POST without a body"),
            Self::TooLarge { max } => write!(f, "MCP body larger than {max} bytes"),
            Self::Json { detail } => write!(f, "MCP body is not JSON: {detail}"),
            Self::DuplicateKey { path, key } => {
                let at = if path.is_empty() { "/" } else { path };
                write!(f, "MCP body has duplicate key {key:?} at {at}")
            }
            Self::TooDeep { max } => write!(f, "MCP body nested deeper than {max} levels"),
            Self::Invalid { detail } => write!(f, "not a JSON-RPC 2.0 message: {detail}"),
            Self::Batch => {
                f.write_str("JSON-RPC batches are not accepted; send one message per request")
            }
            Self::ToolName { detail } => write!(f, "tools/call: {detail}"),
            Self::Arguments => f.write_str("tools/call: params.arguments must be an object"),
            Self::HeaderMismatch {
                header,
                header_value,
                body_value,
            } => {
                write!(
                    f,
                    "{header} header {header_value:?} does not match the body's {body_value:?}"
                )
            }
        }
    }
}

impl std::error::Error for McpError {}

/// A `tools/call` request.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

/// One JSON-RPC message from an MCP client.
#[derive(Debug, Clone, PartialEq)]
pub struct McpMessage {
    /// The request id (string or number); None for notifications and responses.
    pub id: Option<Value>,
    /// None for a response to a server-initiated request.
    pub method: Option<String>,
    pub tool_call: Option<ToolCall>,
}

impl McpMessage {
    pub fn is_tools_list(&self) -> bool {
        self.method
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case("tools/list"))
    }
}

/// MCP tool names: 1-128 of `A-Z a-z 0-9 _ - . /`. Names outside (spaces, Unicode look-alikes) are refused
/// rather than matched loosely, so no spelling can slip past a rule.
pub fn is_valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
}

/// A request path as an MCP server's router may read it, to decide whether a request is for the MCP
/// endpoint: query and fragment dropped, percent-escapes decoded once, `\` read as `/`, `;parameters` dropped
/// from each segment, empty and `.` segments removed, `..` resolved, ASCII letters lowercased. The result
/// starts with `/` and has no trailing `/` (the root is `/`).
///
/// Routers differ on each of these (Express matches routes case-insensitively and ignores a trailing slash by
/// default, servlet containers drop `;jsessionid=...`, many merge slashes or decode escapes), and a spelling
/// the gate took for another path while the server routes it to its MCP endpoint would skip tool
/// authorization. Erring towards "the MCP endpoint" only puts more requests under tool authorization.
pub fn normalize_path(path: &str) -> String {
    let raw = path.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(raw);
    let mut segments: Vec<String> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        match segment.split(';').next().unwrap_or("") {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            name => segments.push(name.to_ascii_lowercase()),
        }
    }
    if segments.is_empty() {
        return "/".into();
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in segments {
        out.push('/');
        out.push_str(&segment);
    }
    out
}

/// Whether [`normalize_path`] would return `path` (before any `?` or `#`) unchanged: it starts with `/`,
/// has only lowercase letters, digits and `-_.~`, no empty, `.` or `..` segment and no trailing `/` (or is
/// `/`). The common case; it lets the per-request path check skip the allocations of the full normalisation.
pub fn is_normalized(path: &str) -> bool {
    if path == "/" {
        return true;
    }
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    rest.split('/').all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'-' | b'_' | b'.' | b'~')
            })
    })
}

fn percent_decode(text: &str) -> String {
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            if let (Some(high), Some(low)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                out.push(u8::try_from((high << 4) | low).unwrap_or(b'%'));
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one MCP client message.
pub fn parse_message(
    body: &[u8],
    max_bytes: usize,
    max_depth: usize,
) -> Result<McpMessage, McpError> {
    if body.len() > max_bytes {
        return Err(McpError::TooLarge { max: max_bytes });
    }
    let value = parse_strict(body, max_depth).map_err(|e| match e {
        JsonError::DuplicateKey { path, key } => McpError::DuplicateKey { path, key },
        JsonError::TooDeep { max_depth } => McpError::TooDeep { max: max_depth },
        other => McpError::Json {
            detail: other.to_string(),
        },
    })?;
    let mut object = match value {
        Value::Object(o) => o,
        Value::Array(_) => return Err(McpError::Batch),
        _ => {
            return Err(McpError::Invalid {
                detail: "expected a JSON object",
            })
        }
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(McpError::Invalid {
            detail: "\"jsonrpc\" must be \"2.0\"",
        });
    }
    let id = match object.get("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
        Some(_) => {
            return Err(McpError::Invalid {
                detail: "\"id\" must be a string or a number",
            })
        }
    };
    let method = match object.get("method") {
        None => None,
        Some(Value::String(m)) if !m.is_empty() => Some(m.clone()),
        Some(_) => {
            return Err(McpError::Invalid {
                detail: "\"method\" must be a non-empty string",
            })
        }
    };
    if method.is_none() && !(object.contains_key("result") || object.contains_key("error")) {
        return Err(McpError::Invalid {
            detail: "neither a request (method) nor a response (result/error)",
        });
    }
    // Taken out of the document, so the arguments move into the tool call instead of being deep-copied.
    let params = match object.remove("params") {
        None => None,
        Some(Value::Object(p)) => Some(p),
        Some(_) => {
            return Err(McpError::Invalid {
                detail: "\"params\" must be an object",
            })
        }
    };
    // Method names are matched as spelt by the official SDKs, but a server that matched them loosely must not
    // receive a `TOOLS/CALL` that skipped tool authorization: any spelling of tools/call is one.
    let tool_call = if method
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case("tools/call"))
    {
        Some(read_tool_call(params)?)
    } else {
        None
    };
    Ok(McpMessage {
        id,
        method,
        tool_call,
    })
}

fn read_tool_call(params: Option<Map<String, Value>>) -> Result<ToolCall, McpError> {
    let mut params = params.ok_or(McpError::ToolName {
        detail: "params.name is missing",
    })?;
    let name = match params.remove("name") {
        Some(Value::String(name)) => name,
        Some(_) => {
            return Err(McpError::ToolName {
                detail: "params.name must be a string",
            })
        }
        None => {
            return Err(McpError::ToolName {
                detail: "params.name is missing",
            })
        }
    };
    if !is_valid_tool_name(&name) {
        return Err(McpError::ToolName {
            detail: "tool names are 1-128 characters of A-Z a-z 0-9 _ - . /",
        });
    }
    let arguments = match params.remove("arguments") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(McpError::Arguments),
    };
    Ok(ToolCall { name, arguments })
}

/// MCP 2026-07-28: `Mcp-Method` must equal the body's method and, for `tools/call`, `Mcp-Name` its tool.
pub fn check_headers(
    message: &McpMessage,
    mcp_method: Option<&str>,
    mcp_name: Option<&str>,
) -> Result<(), McpError> {
    if let Some(header) = mcp_method {
        let body = message.method.as_deref().unwrap_or("");
        if header != body {
            return Err(McpError::HeaderMismatch {
                header: "Mcp-Method",
                header_value: header.to_string(),
                body_value: body.to_string(),
            });
        }
    }
    if let Some(header) = mcp_name {
        let body = message.tool_call.as_ref().map_or("", |c| c.name.as_str());
        if header != body {
            return Err(McpError::HeaderMismatch {
                header: "Mcp-Name",
                header_value: header.to_string(),
                body_value: body.to_string(),
            });
        }
    }
    Ok(())
}

/// A JSON-RPC error response body.
pub fn error_body(id: Option<&Value>, code: i64, message: &str, data: Value) -> String {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": {"code": code, "message": message, "data": data},
    });
    body.to_string()
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn parse(body: &str) -> Result<McpMessage, McpError> {
        parse_message(body.as_bytes(), 65536, 32)
    }

    #[test]
    fn tool_call_is_read() {
        let m = parse(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"send_email","arguments":{"to":"a@b"}}}"#).unwrap();
        assert_eq!(m.id, Some(json!(7)));
        let call = m.tool_call.unwrap();
        assert_eq!(call.name, "send_email");
        assert_eq!(call.arguments, json!({"to":"a@b"}));
    }

    #[test]
    fn any_spelling_of_tools_call_is_a_tool_call() {
        let m = parse(
            r#"{"jsonrpc":"2.0","id":1,"method":"TOOLS/Call","params":{"name":"delete_repo"}}"#,
        )
        .unwrap();
        assert_eq!(m.tool_call.unwrap().name, "delete_repo");
        assert!(parse(r#"{"jsonrpc":"2.0","id":1,"method":"Tools/List"}"#)
            .unwrap()
            .is_tools_list());
    }

    #[test]
    fn other_messages() {
        assert!(parse(r#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#)
            .unwrap()
            .is_tools_list());
        assert!(
            parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
                .unwrap()
                .id
                .is_none()
        );
        assert!(parse(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#)
            .unwrap()
            .method
            .is_none());
    }

    #[test]
    fn refusals_with_reasons() {
        for (body, reason) in [
            (
                r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#,
                "mcp.batch",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list"}"#,
                "mcp.duplicate_key",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
                "mcp.duplicate_key",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":1,"x":2}}}"#,
                "mcp.duplicate_key",
            ),
            (r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#, "mcp.invalid"),
            (r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#, "mcp.invalid"),
            (r#"{"jsonrpc":"2.0","id":1}"#, "mcp.invalid"),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
                "mcp.tool_name",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_email "}}"#,
                "mcp.tool_name",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_еmail"}}"#,
                "mcp.tool_name",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
                "mcp.tool_name",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":[1]}}"#,
                "mcp.arguments",
            ),
            ("{", "mcp.parse"),
        ] {
            assert_eq!(parse(body).unwrap_err().reason(), reason, "{body}");
        }
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{{"a":{}}}}}"#,
            "[".repeat(40) + &"]".repeat(40)
        );
        assert_eq!(parse(&deep).unwrap_err().reason(), "mcp.depth");
        assert_eq!(
            parse_message(&[b' '; 10], 5, 8).unwrap_err(),
            McpError::TooLarge { max: 5 }
        );
    }

    #[test]
    fn headers_must_match_body() {
        let m = parse(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}"#)
            .unwrap();
        assert!(check_headers(&m, Some("tools/call"), Some("a")).is_ok());
        assert!(check_headers(&m, None, None).is_ok());
        assert_eq!(
            check_headers(&m, Some("tools/list"), None)
                .unwrap_err()
                .reason(),
            "mcp.header_mismatch"
        );
        assert_eq!(
            check_headers(&m, None, Some("b")).unwrap_err().rpc_code(),
            -32020
        );
    }

    #[test]
    fn normal_paths() {
        for path in ["/", "/mcp", "/a/b.c/d~e-f_g", "/..."] {
            assert!(is_normalized(path), "{path}");
        }
        for path in [
            "", "mcp", "/mcp/", "//mcp", "/MCP", "/a/./b", "/a/../b", "/.", "/a;b", "/a%2f",
            "/a\\b", "/mcp?x",
        ] {
            assert!(!is_normalized(path), "{path}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(body in prop::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse_message(&body, 1024, 16);
        }

        /// The fast path agrees with the full normalisation: a path it calls normal is normalised to itself.
        #[test]
        fn is_normalized_means_normalize_is_identity(path in "[/a-zA-Z0-9._~%;?#\\\\-]{0,24}") {
            if is_normalized(&path) {
                prop_assert_eq!(normalize_path(&path), path.clone());
            }
        }

    }
}

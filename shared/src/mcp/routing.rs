//! The MCP 2026-07-28 routing headers (basic/transports "Standard Request Headers", "Value Encoding",
//! "Server Validation"): `Mcp-Method`, `Mcp-Name` and `MCP-Protocol-Version` must agree with the body they
//! travel with. A load balancer or a policy in front of txngate may route or decide on the headers while the
//! server executes the body; any disagreement is refused before authorization, with 400 and `HeaderMismatch`
//! (-32020).

use std::borrow::Cow;

use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

use super::{McpError, McpMessage};

pub const MCP_METHOD: &str = "Mcp-Method";
pub const MCP_NAME: &str = "Mcp-Name";
pub const MCP_PROTOCOL_VERSION: &str = "MCP-Protocol-Version";

/// The first protocol revision that requires `Mcp-Method` and `Mcp-Name`. Versions are `YYYY-MM-DD`, so a
/// string comparison orders them (anything that is not a date and sorts after it is treated as newer).
pub const FIRST_REQUIRING_VERSION: &str = "2026-07-28";

const SENTINEL_PREFIX: &str = "=?base64?";
const SENTINEL_SUFFIX: &str = "?=";

/// Standard alphabet, padding required, unused bits zero: one spelling per value.
const CANONICAL: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(false),
);

/// Every entry of each routing header, as the host received them (values trimmed of spaces and tabs).
/// Kept per entry, not joined: a repeated routing header is refused, since a first-value and a last-value
/// reader would disagree about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingHeaders {
    pub method: Vec<String>,
    pub name: Vec<String>,
    pub protocol_version: Vec<String>,
}

impl RoutingHeaders {
    /// Collects the routing headers from all request headers (names compared case-insensitively).
    pub fn from_pairs<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut out = Self::default();
        for (name, value) in headers {
            let slot = if name.eq_ignore_ascii_case(MCP_METHOD) {
                &mut out.method
            } else if name.eq_ignore_ascii_case(MCP_NAME) {
                &mut out.name
            } else if name.eq_ignore_ascii_case(MCP_PROTOCOL_VERSION) {
                &mut out.protocol_version
            } else {
                continue;
            };
            slot.push(value.trim_matches([' ', '\t']).to_string());
        }
        out
    }
}

/// Whether `version` (an `MCP-Protocol-Version` value) is a revision that requires the routing headers.
pub fn requires_routing_headers(version: &str) -> bool {
    version >= FIRST_REQUIRING_VERSION
}

/// The one value of a header, `None` when absent. More than one entry, or one entry an intermediary joined
/// from several with `,` (the Fetch API does) while the body's value has no comma, is a repetition.
fn single<'h>(
    header: &'static str,
    values: &'h [String],
    body_value: Option<&str>,
) -> Result<Option<&'h str>, McpError> {
    let value = match values {
        [] => return Ok(None),
        [value] => value.as_str(),
        _ => return Err(McpError::HeaderRepeated { header }),
    };
    if value.contains(',') && !body_value.is_some_and(|b| b.contains(',')) {
        return Err(McpError::HeaderRepeated { header });
    }
    Ok(Some(value))
}

/// Plain header values are visible ASCII and spaces (anything else must travel in the base64 form).
fn check_plain(header: &'static str, value: &str) -> Result<(), McpError> {
    if value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        Ok(())
    } else {
        Err(McpError::HeaderInvalid {
            header,
            detail: "characters outside visible ASCII must use the =?base64?...?= form",
        })
    }
}

/// Decodes an `Mcp-Name` value: `=?base64?<standard base64 with padding>?=` is decoded (whatever it wraps,
/// plain ASCII too), any other value is taken as it is. The base64 must be canonical (re-encoding the bytes
/// gives the same text) and decode to UTF-8; otherwise `None`, so a corrupt header never matches anything.
pub fn decode_value(value: &str) -> Option<Cow<'_, str>> {
    let Some(payload) = sentinel_payload(value) else {
        return Some(Cow::Borrowed(value));
    };
    let bytes = CANONICAL.decode(payload).ok()?;
    if CANONICAL.encode(&bytes) != payload {
        return None;
    }
    String::from_utf8(bytes).ok().map(Cow::Owned)
}

/// The base64 text between the sentinel markers (case-sensitive), when `value` has them.
fn sentinel_payload(value: &str) -> Option<&str> {
    value
        .strip_prefix(SENTINEL_PREFIX)
        .and_then(|rest| rest.strip_suffix(SENTINEL_SUFFIX))
}

/// Encodes a value for `Mcp-Name` as a client must: plain when it is visible ASCII without surrounding
/// spaces and does not look like the sentinel, else the base64 form.
pub fn encode_value(value: &str) -> String {
    let plain = value.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && value.trim_matches(' ') == value
        && sentinel_payload(value).is_none();
    if plain {
        value.to_string()
    } else {
        format!(
            "{SENTINEL_PREFIX}{}{SENTINEL_SUFFIX}",
            CANONICAL.encode(value.as_bytes())
        )
    }
}

/// Checks the routing headers against the message. In order: no routing header repeated; the protocol version
/// agrees with `params._meta`; then `Mcp-Method` equals the body's method and `Mcp-Name` the target's name or
/// URI (after decoding). On 2026-07-28 and later (by the header, else by `_meta`) `Mcp-Method` is required on
/// every message with a method, `Mcp-Name` on `tools/call`, `prompts/get` and `resources/read`, and the
/// version header itself; on older or unstated versions each is checked when present.
pub fn check(message: &McpMessage, headers: &RoutingHeaders) -> Result<(), McpError> {
    let body_method = message.method.as_deref();
    let body_name = message.target.as_ref().map(super::Target::name);
    let meta_version = message.protocol_version_meta.as_deref();

    let version = single(
        MCP_PROTOCOL_VERSION,
        &headers.protocol_version,
        meta_version,
    )?;
    let method = single(MCP_METHOD, &headers.method, body_method)?;
    let name = single(MCP_NAME, &headers.name, body_name)?;

    if let Some(version) = version {
        check_plain(MCP_PROTOCOL_VERSION, version)?;
        if let Some(meta) = meta_version {
            if meta != version {
                return Err(mismatch(MCP_PROTOCOL_VERSION, version, meta));
            }
        }
    }
    let modern = version
        .or(meta_version)
        .is_some_and(requires_routing_headers);
    if modern && version.is_none() {
        return Err(McpError::HeaderMissing {
            header: MCP_PROTOCOL_VERSION,
        });
    }

    match (method, body_method) {
        (Some(header), body) => {
            check_plain(MCP_METHOD, header)?;
            let body = body.unwrap_or("");
            if header != body {
                return Err(mismatch(MCP_METHOD, header, body));
            }
        }
        (None, Some(_)) if modern => return Err(McpError::HeaderMissing { header: MCP_METHOD }),
        (None, _) => {}
    }

    match (name, body_name) {
        (Some(header), body) => {
            let decoded = decode_value(header).ok_or(McpError::HeaderInvalid {
                header: MCP_NAME,
                detail: "malformed or non-canonical base64, or not UTF-8",
            })?;
            if sentinel_payload(header).is_none() {
                check_plain(MCP_NAME, header)?;
            }
            let body = body.unwrap_or("");
            if decoded != body {
                return Err(mismatch(MCP_NAME, &decoded, body));
            }
        }
        (None, Some(_)) if modern => return Err(McpError::HeaderMissing { header: MCP_NAME }),
        (None, _) => {}
    }
    Ok(())
}

fn mismatch(header: &'static str, header_value: &str, body_value: &str) -> McpError {
    McpError::HeaderMismatch {
        header,
        header_value: header_value.to_string(),
        body_value: body_value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::parse_message;
    use proptest::prelude::*;
    use serde_json::json;

    fn message(method: &str, params: serde_json::Value) -> McpMessage {
        let body = json!({"jsonrpc":"2.0","id":1,"method":method,"params":params}).to_string();
        parse_message(body.as_bytes(), 65536, 32).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> RoutingHeaders {
        RoutingHeaders::from_pairs(pairs.iter().copied())
    }

    fn reason(m: &McpMessage, pairs: &[(&str, &str)]) -> &'static str {
        match check(m, &headers(pairs)) {
            Ok(()) => "ok",
            Err(e) => {
                assert_eq!(e.rpc_code(), -32020, "{e}");
                assert_eq!(e.status(), 400);
                e.reason()
            }
        }
    }

    #[test]
    fn spec_examples_decode() {
        assert_eq!(
            decode_value("=?base64?SGVsbG8sIOS4lueVjA==?=").unwrap(),
            "Hello, 世界"
        );
        assert_eq!(decode_value("=?base64?IHBhZGRlZCA=?=").unwrap(), " padded ");
        assert_eq!(
            decode_value("=?base64?bGluZTEKbGluZTI=?=").unwrap(),
            "line1\nline2"
        );
        assert_eq!(
            decode_value("=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=").unwrap(),
            "=?base64?literal?="
        );
        assert_eq!(
            encode_value("Hello, 世界"),
            "=?base64?SGVsbG8sIOS4lueVjA==?="
        );
        assert_eq!(
            encode_value("=?base64?literal?="),
            "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="
        );
        assert_eq!(encode_value("get_weather"), "get_weather");
        // Plain values, including markers in another case or too short to wrap anything.
        for plain in [
            "get_weather",
            "=?BASE64?Z2V0?=",
            "=?base64?=",
            "file:///a b",
        ] {
            assert_eq!(decode_value(plain).unwrap(), plain);
        }
        assert_eq!(decode_value("=?base64??=").unwrap(), "");
    }

    #[test]
    fn malformed_base64_is_refused() {
        for bad in [
            "=?base64?Z2V0?",               // no suffix: plain, fine
            "=?base64?Z2V0X3dlYXRoZXI?=",   // missing padding
            "=?base64?Z2V0X3dlYXRoZXJ=?=",  // wrong padding
            "=?base64?Z2V0 X3dl?=",         // space
            "=?base64?Z2V0_3dl?=",          // base64url character
            "=?base64?Z2V0X3dlYXRoZXI==?=", // extra padding
            "=?base64?/w==?=",              // 0xFF: not UTF-8
        ] {
            let decoded = decode_value(bad);
            if bad.ends_with("?=") {
                assert!(decoded.is_none(), "{bad} -> {decoded:?}");
            } else {
                assert_eq!(decoded.unwrap(), bad);
            }
        }
        // "YQ==" is canonical for "a"; "YR==" decodes to the same byte with non-zero unused bits.
        assert_eq!(decode_value("=?base64?YQ==?=").unwrap(), "a");
        assert!(decode_value("=?base64?YR==?=").is_none());
    }

    #[test]
    fn names_per_method() {
        let tool = message("tools/call", json!({"name":"get_weather"}));
        let prompt = message("prompts/get", json!({"name":"code_review"}));
        let resource = message(
            "resources/read",
            json!({"uri":"file:///projects/app/config.json"}),
        );
        assert_eq!(
            reason(
                &tool,
                &[("Mcp-Method", "tools/call"), ("Mcp-Name", "get_weather")]
            ),
            "ok"
        );
        assert_eq!(
            reason(
                &prompt,
                &[("mcp-method", "prompts/get"), ("MCP-NAME", "code_review")]
            ),
            "ok"
        );
        assert_eq!(
            reason(
                &resource,
                &[
                    ("Mcp-Method", "resources/read"),
                    ("Mcp-Name", "file:///projects/app/config.json")
                ]
            ),
            "ok"
        );
        assert_eq!(
            reason(&tool, &[("Mcp-Name", "get_weathe")]),
            "mcp.header_mismatch"
        );
        assert_eq!(
            reason(&prompt, &[("Mcp-Name", "Code_Review")]),
            "mcp.header_mismatch"
        );
        assert_eq!(
            reason(
                &resource,
                &[("Mcp-Name", "file:///projects/app/other.json")]
            ),
            "mcp.header_mismatch"
        );
        assert_eq!(
            reason(&tool, &[("Mcp-Method", "TOOLS/CALL")]),
            "mcp.header_mismatch"
        );
        // A name header on a method without a name.
        let list = message("tools/list", json!({}));
        assert_eq!(reason(&list, &[("Mcp-Name", "x")]), "mcp.header_mismatch");
        assert_eq!(reason(&list, &[("Mcp-Method", "tools/list")]), "ok");
    }

    #[test]
    fn base64_names() {
        let weather = message("tools/call", json!({"name":"天気"}));
        let wrapped = encode_value("天気");
        assert_eq!(reason(&weather, &[("Mcp-Name", &wrapped)]), "ok");
        assert_eq!(
            reason(&weather, &[("Mcp-Name", "天気")]),
            "mcp.header_invalid"
        );
        // A plain-ASCII name wrapped anyway is decoded too.
        let tool = message("tools/call", json!({"name":"get_weather"}));
        assert_eq!(
            reason(&tool, &[("Mcp-Name", "=?base64?Z2V0X3dlYXRoZXI=?=")]),
            "ok"
        );
        assert_eq!(
            reason(&tool, &[("Mcp-Name", "=?base64?Z2V0X3dlYXRoZXI?=")]),
            "mcp.header_invalid"
        );
        assert_eq!(
            reason(&tool, &[("Mcp-Name", "=?base64?ZGVsZXRlX3JlcG8=?=")]),
            "mcp.header_mismatch"
        );
        // The literal sentinel text as a name must itself be wrapped.
        let literal = message("tools/call", json!({"name":"=?base64?Z2V0X3dlYXRoZXI=?="}));
        assert_eq!(
            reason(&literal, &[("Mcp-Name", "=?base64?Z2V0X3dlYXRoZXI=?=")]),
            "mcp.header_mismatch"
        );
        let resource = message("resources/read", json!({"uri":"file:///docs/résumé.txt"}));
        let wrapped = encode_value("file:///docs/résumé.txt");
        assert_eq!(reason(&resource, &[("Mcp-Name", &wrapped)]), "ok");
        // Control characters only in the base64 form.
        let newline = message("prompts/get", json!({"name":"a b"}));
        assert_eq!(reason(&newline, &[("Mcp-Name", "a b")]), "ok");
        assert_eq!(reason(&newline, &[("Mcp-Name", "=?base64?YSBi?=")]), "ok");
    }

    #[test]
    fn repeated_headers() {
        let tool = message("tools/call", json!({"name":"get_weather"}));
        assert_eq!(
            reason(
                &tool,
                &[("Mcp-Method", "tools/call"), ("mcp-method", "tools/call")]
            ),
            "mcp.header_repeated"
        );
        assert_eq!(
            reason(&tool, &[("Mcp-Method", "tools/call, tools/call")]),
            "mcp.header_repeated"
        );
        assert_eq!(
            reason(&tool, &[("Mcp-Name", "get_weather, delete_repo")]),
            "mcp.header_repeated"
        );
        assert_eq!(
            reason(
                &tool,
                &[("Mcp-Name", "get_weather"), ("Mcp-Name", "get_weather")]
            ),
            "mcp.header_repeated"
        );
        assert_eq!(
            reason(&tool, &[("MCP-Protocol-Version", "2025-11-25, 2026-07-28")]),
            "mcp.header_repeated"
        );
        // A name that has a comma may travel with one.
        let comma = message("tools/call", json!({"name":"a,b"}));
        assert_eq!(reason(&comma, &[("Mcp-Name", "a,b")]), "ok");
        assert_eq!(
            reason(&comma, &[("Mcp-Name", "a, b")]),
            "mcp.header_mismatch"
        );
    }

    #[test]
    fn required_on_modern_versions() {
        let modern = |method: &str, params: serde_json::Value| {
            let mut params = params;
            params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28"});
            message(method, params)
        };
        let tool = modern("tools/call", json!({"name":"get_weather"}));
        let v = ("MCP-Protocol-Version", "2026-07-28");
        assert_eq!(
            reason(
                &tool,
                &[v, ("Mcp-Method", "tools/call"), ("Mcp-Name", "get_weather")]
            ),
            "ok"
        );
        assert_eq!(
            reason(&tool, &[v, ("Mcp-Name", "get_weather")]),
            "mcp.header_missing"
        );
        assert_eq!(
            reason(&tool, &[v, ("Mcp-Method", "tools/call")]),
            "mcp.header_missing"
        );
        assert_eq!(
            reason(
                &tool,
                &[("Mcp-Method", "tools/call"), ("Mcp-Name", "get_weather")]
            ),
            "mcp.header_missing"
        );
        let discover = modern("server/discover", json!({}));
        assert_eq!(
            reason(&discover, &[v, ("Mcp-Method", "server/discover")]),
            "ok"
        );
        assert_eq!(reason(&discover, &[v]), "mcp.header_missing");
        let read = modern("resources/read", json!({"uri":"file:///a"}));
        assert_eq!(
            reason(&read, &[v, ("Mcp-Method", "resources/read")]),
            "mcp.header_missing"
        );
        // Later versions too; older ones and none only check what is there.
        let plain = message("tools/call", json!({"name":"get_weather"}));
        assert_eq!(
            reason(&plain, &[("MCP-Protocol-Version", "2027-01-01")]),
            "mcp.header_missing"
        );
        assert_eq!(
            reason(&plain, &[("MCP-Protocol-Version", "2025-11-25")]),
            "ok"
        );
        assert_eq!(reason(&plain, &[]), "ok");
        // A response needs no Mcp-Method.
        let response = parse_message(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#, 1024, 8).unwrap();
        assert_eq!(reason(&response, &[v]), "ok");
    }

    #[test]
    fn protocol_version_must_match_meta() {
        let mut params = json!({"_meta":{"io.modelcontextprotocol/protocolVersion":"2025-11-25"}});
        let m = message("tools/list", params.clone());
        assert_eq!(reason(&m, &[("MCP-Protocol-Version", "2025-11-25")]), "ok");
        assert_eq!(
            reason(
                &m,
                &[
                    ("MCP-Protocol-Version", "2026-07-28"),
                    ("Mcp-Method", "tools/list")
                ]
            ),
            "mcp.header_mismatch"
        );
        params["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2026-07-28");
        let m = message("tools/list", params);
        assert_eq!(
            reason(
                &m,
                &[
                    ("MCP-Protocol-Version", "2025-11-25"),
                    ("Mcp-Method", "tools/list")
                ]
            ),
            "mcp.header_mismatch"
        );
        assert_eq!(
            reason(&m, &[("MCP-Protocol-Version", "2026-07-28\u{1}")]),
            "mcp.header_invalid"
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(value in ".{0,64}") {
            let _ = decode_value(&value);
            let _ = decode_value(&format!("=?base64?{value}?="));
        }

        #[test]
        fn encode_then_decode_round_trips(value in "\\PC{0,40}|[ -~]{0,40}|.{0,40}") {
            let encoded = encode_value(&value);
            prop_assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{encoded:?}");
            prop_assert_eq!(decode_value(&encoded).unwrap(), value.as_str());
        }

        #[test]
        fn check_never_panics(
            name in "[^\\p{Cc}]{1,16}",
            header in ".{0,24}",
            method in "[a-z/]{0,12}",
            version in "[0-9-]{0,12}",
        ) {
            let m = message("tools/call", json!({"name": name}));
            let _ = check(&m, &headers(&[("Mcp-Name", &header), ("Mcp-Method", &method), ("MCP-Protocol-Version", &version)]));
        }
    }
}

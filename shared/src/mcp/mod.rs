//! MCP on the wire: JSON-RPC 2.0 bodies of Streamable HTTP requests, the `Mcp-Method`/`Mcp-Name` headers that
//! must agree with them, and the list responses a caller should only see its own entries in.
//!
//! Batches (JSON arrays, MCP 2025-03-26 only) are refused with 400: every later revision dropped them, and
//! authorizing some calls of a batch but not others has no faithful rendering as one HTTP answer.

use core::fmt;

use serde_json::{Map, Value};

use crate::json::{self, parse_strict, JsonError};

mod arguments;
mod path;
pub mod routing;

pub use arguments::Arguments;
pub use path::{is_normalized, normalize_path};
pub use routing::RoutingHeaders;

/// Longest tool or prompt name accepted at all (bytes). MCP recommends at most 128 characters.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest resource URI accepted (bytes): 2048 is the common URL limit of browsers and proxies.
pub const MAX_URI_BYTES: usize = 2048;
/// The `params._meta` key where 2026-07-28 bodies repeat the `MCP-Protocol-Version` header.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

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
    /// `tools/call` without a usable `params.name` (missing, not a string, empty, too long, control characters).
    ToolName {
        detail: &'static str,
    },
    /// `prompts/get` without a usable `params.name`.
    PromptName {
        detail: &'static str,
    },
    /// `resources/read`, `resources/subscribe` or `resources/unsubscribe` without a usable `params.uri`.
    ResourceUri {
        method: &'static str,
        detail: &'static str,
    },
    /// `completion/complete` without a usable `params.ref` (missing, not an object, unknown `type`, or its
    /// prompt name or resource URI unusable): authorization could not tell what is being completed.
    CompletionRef {
        detail: &'static str,
    },
    /// `subscriptions/listen` whose `params.notifications` or `resourceSubscriptions` is ill-typed.
    Subscriptions {
        detail: &'static str,
    },
    /// `params.arguments` of `tools/call` or `prompts/get` present but not an object.
    Arguments {
        method: &'static str,
    },
    /// `params._meta` not an object, or its protocol version not a string.
    Meta {
        detail: &'static str,
    },
    /// A routing header (`Mcp-Method`, `Mcp-Name`, `MCP-Protocol-Version`) sent more than once.
    HeaderRepeated {
        header: &'static str,
    },
    /// A routing header the request's protocol version requires is absent.
    HeaderMissing {
        header: &'static str,
    },
    /// A routing header value that cannot be read: bad characters, malformed or non-canonical base64.
    HeaderInvalid {
        header: &'static str,
        detail: &'static str,
    },
    /// A routing header that disagrees with the body (`Mcp-Name` after decoding).
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
            Self::PromptName { .. } => "mcp.prompt_name",
            Self::ResourceUri { .. } => "mcp.resource_uri",
            Self::CompletionRef { .. } => "mcp.completion_ref",
            Self::Subscriptions { .. } => "mcp.subscriptions",
            Self::Arguments { .. } => "mcp.arguments",
            Self::Meta { .. } => "mcp.meta",
            Self::HeaderRepeated { .. } => "mcp.header_repeated",
            Self::HeaderMissing { .. } => "mcp.header_missing",
            Self::HeaderInvalid { .. } => "mcp.header_invalid",
            Self::HeaderMismatch { .. } => "mcp.header_mismatch",
        }
    }

    /// The JSON-RPC error code a client sees.
    pub fn rpc_code(&self) -> i64 {
        match self {
            Self::Json { .. } | Self::DuplicateKey { .. } | Self::TooDeep { .. } => -32700,
            Self::ToolName { .. }
            | Self::PromptName { .. }
            | Self::ResourceUri { .. }
            | Self::CompletionRef { .. }
            | Self::Subscriptions { .. }
            | Self::Arguments { .. }
            | Self::Meta { .. } => -32602,
            // HeaderMismatch (MCP 2026-07-28 basic/transports "Server Validation"): also for missing and
            // malformed routing headers.
            Self::HeaderRepeated { .. }
            | Self::HeaderMissing { .. }
            | Self::HeaderInvalid { .. }
            | Self::HeaderMismatch { .. } => -32020,
            Self::BodyMissing | Self::TooLarge { .. } | Self::Invalid { .. } | Self::Batch => {
                -32600
            }
        }
    }

    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        if matches!(self, Self::TooLarge { .. }) {
            413
        } else {
            400
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
            Self::PromptName { detail } => write!(f, "prompts/get: {detail}"),
            Self::ResourceUri { method, detail } => write!(f, "{method}: {detail}"),
            Self::CompletionRef { detail } => write!(f, "completion/complete: {detail}"),
            Self::Subscriptions { detail } => write!(f, "subscriptions/listen: {detail}"),
            Self::Arguments { method } => {
                write!(f, "{method}: params.arguments must be an object")
            }
            Self::Meta { detail } => write!(f, "params._meta: {detail}"),
            Self::HeaderRepeated { header } => write!(f, "{header} header sent more than once"),
            Self::HeaderMissing { header } => {
                write!(f, "{header} header is required by this protocol version")
            }
            Self::HeaderInvalid { header, detail } => write!(f, "{header} header: {detail}"),
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

/// A body refused after its `id` was read: the error response still carries that id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The request's id when it had a usable one (string or number).
    pub id: Option<Value>,
    pub error: McpError,
}

impl From<McpError> for Refusal {
    fn from(error: McpError) -> Self {
        Self { id: None, error }
    }
}

/// A `tools/call` request.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// `params.arguments`, always an object (`{}` when absent or null).
    pub arguments: Arguments,
}

/// A `prompts/get` request.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptGet {
    pub name: String,
    /// `params.arguments`, always an object (`{}` when absent or null).
    pub arguments: Value,
}

/// A `resources/read` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRead {
    pub uri: String,
}

/// What a name-bearing method acts on: the value `Mcp-Name` must repeat and authorization decides on.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Tool(ToolCall),
    Prompt(PromptGet),
    Resource(ResourceRead),
}

/// A method that names a prompt or resource without acting on it through `Mcp-Name` (MCP sends that header
/// only for `tools/call`, `prompts/get` and `resources/read`): what authorization must still check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `completion/complete`: argument completions for a prompt or a resource (template).
    Completion(CompletionRef),
    /// `resources/subscribe` or `resources/unsubscribe` (2025-11-25 and earlier): `params.uri`.
    ResourceSubscription { method: &'static str, uri: String },
    /// `subscriptions/listen` (2026-07-28): `params.notifications.resourceSubscriptions`, possibly empty.
    Listen { uris: Vec<String> },
}

/// `params.ref` of `completion/complete`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompletionRef {
    /// `{"type": "ref/prompt", "name": ...}`.
    Prompt { name: String },
    /// `{"type": "ref/resource", "uri": ...}`: a URI or a URI template.
    Resource { uri: String },
}

impl Target {
    /// The name (tools, prompts) or URI (resources): the value of `Mcp-Name`.
    pub fn name(&self) -> &str {
        match self {
            Self::Tool(call) => &call.name,
            Self::Prompt(get) => &get.name,
            Self::Resource(read) => &read.uri,
        }
    }

    /// The method as the specification spells it.
    pub fn method(&self) -> &'static str {
        match self {
            Self::Tool(_) => TOOLS_CALL,
            Self::Prompt(_) => PROMPTS_GET,
            Self::Resource(_) => RESOURCES_READ,
        }
    }
}

const TOOLS_CALL: &str = "tools/call";
const PROMPTS_GET: &str = "prompts/get";
const RESOURCES_READ: &str = "resources/read";
const COMPLETION_COMPLETE: &str = "completion/complete";
const RESOURCES_SUBSCRIBE: &str = "resources/subscribe";
const RESOURCES_UNSUBSCRIBE: &str = "resources/unsubscribe";
const SUBSCRIPTIONS_LISTEN: &str = "subscriptions/listen";

/// What a call acts on: the MCP primitive a rule is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Tool,
    Prompt,
    Resource,
}

impl Kind {
    /// The noun used in reasons (`tool.scope`), audit fields and messages.
    pub fn noun(self) -> &'static str {
        match self {
            Self::Tool => "tool",
            Self::Prompt => "prompt",
            Self::Resource => "resource",
        }
    }
}

/// The list methods whose results are filtered per caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl ListKind {
    /// The method as the specification spells it.
    pub fn method(self) -> &'static str {
        match self {
            Self::Tools => "tools/list",
            Self::Prompts => "prompts/list",
            Self::Resources => "resources/list",
            Self::ResourceTemplates => "resources/templates/list",
        }
    }

    /// The member of the result that holds the entries.
    pub fn array_key(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::ResourceTemplates => "resourceTemplates",
        }
    }

    /// The member of each entry that names it.
    pub fn name_key(self) -> &'static str {
        match self {
            Self::Tools | Self::Prompts => "name",
            Self::Resources => "uri",
            Self::ResourceTemplates => "uriTemplate",
        }
    }

    /// Any ASCII spelling of a list method: a server that matched loosely must not return an unfiltered list.
    pub fn of_method(method: &str) -> Option<Self> {
        [
            Self::Tools,
            Self::Prompts,
            Self::Resources,
            Self::ResourceTemplates,
        ]
        .into_iter()
        .find(|kind| method.eq_ignore_ascii_case(kind.method()))
    }
}

/// One JSON-RPC message from an MCP client.
#[derive(Debug, Clone, PartialEq)]
pub struct McpMessage {
    /// The request id (string or number); None for notifications and responses.
    pub id: Option<Value>,
    /// None for a response to a server-initiated request.
    pub method: Option<String>,
    /// `tools/call`, `prompts/get`, `resources/read` (any ASCII spelling): what the call acts on.
    pub target: Option<Target>,
    /// `completion/complete`, `resources/subscribe`, `resources/unsubscribe`, `subscriptions/listen` (any
    /// ASCII spelling): the prompt or resources they name, authorized without `Mcp-Name`.
    pub reference: Option<Reference>,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`, sent by 2026-07-28 clients in every body.
    pub protocol_version_meta: Option<String>,
}

impl McpMessage {
    /// The list method of this message, if it is one (any ASCII spelling).
    pub fn list_kind(&self) -> Option<ListKind> {
        self.method.as_deref().and_then(ListKind::of_method)
    }

    pub fn is_tools_list(&self) -> bool {
        self.list_kind() == Some(ListKind::Tools)
    }

    pub fn tool_call(&self) -> Option<&ToolCall> {
        match &self.target {
            Some(Target::Tool(call)) => Some(call),
            _ => None,
        }
    }

    pub fn prompt_get(&self) -> Option<&PromptGet> {
        match &self.target {
            Some(Target::Prompt(get)) => Some(get),
            _ => None,
        }
    }

    pub fn resource_read(&self) -> Option<&ResourceRead> {
        match &self.target {
            Some(Target::Resource(read)) => Some(read),
            _ => None,
        }
    }
}

/// The alphabet MCP recommends for tool and prompt names (2026-07-28 server/tools "Tool Names"): 1-128
/// characters of `A-Z a-z 0-9 _ - .`. The parser does not enforce it (the SDKs accept other names with a
/// warning); authorization refuses names outside it unless a rule names them exactly.
pub fn is_recommended_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Policy rule keys as accepted before issue #12: 1-128 of `A-Z a-z 0-9 _ - . /`.
/// Superseded by [`is_recommended_name`]; kept while the policy loader still calls it.
pub fn is_valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
}

/// Parses one MCP client message.
pub fn parse_message(
    body: &[u8],
    max_bytes: usize,
    max_depth: usize,
) -> Result<McpMessage, McpError> {
    parse_request(body, max_bytes, max_depth).map_err(|r| r.error)
}

/// Parses one MCP client message; a refusal keeps the message's id when it had a usable one, so the error
/// response can carry it whatever was wrong with the rest of the body.
pub fn parse_request(
    body: &[u8],
    max_bytes: usize,
    max_depth: usize,
) -> Result<McpMessage, Refusal> {
    if body.len() > max_bytes {
        return Err(McpError::TooLarge { max: max_bytes }.into());
    }
    // Every body tries the typed reader first: without a tree of the envelope it costs less than the tree
    // reader even for a small `tools/call` (15.9k wasm instructions against 20.3k); anything else costs one
    // scan more before the tree reader.
    if let Some(message) = read_tool_call(body, max_depth) {
        return Ok(message);
    }
    read_tree(body, max_depth)
}

/// The typed reader of a `tools/call` (issue #17: big arguments): one strict scan of the whole body (syntax,
/// duplicate keys, depth) that keeps `params.arguments` as bytes, then the few envelope members the tree
/// reader looks at (`id`, `jsonrpc`, `method`, `params.name`, `params._meta`), read off the scan with the
/// tree reader's rules. `None` whenever the body is anything else (another method, a member of the wrong
/// type, anything the tree reader would refuse): the general reader then decides, and words any refusal,
/// exactly as for every other body.
fn read_tool_call(body: &[u8], max_depth: usize) -> Option<McpMessage> {
    let scan = json::scan(body, max_depth)?;
    let root = scan.root();
    if !scan.is_object(root) {
        return None;
    }
    let method = scan.as_str(scan.member(root, "method")?)?;
    if !method.eq_ignore_ascii_case(TOOLS_CALL) {
        return None;
    }
    // As `read_tree`: an id is a string or a number (the same value the tree reader makes of it).
    let id = match scan.member(root, "id") {
        None => None,
        Some(id) if scan.is_string(id) || scan.is_number(id) => Some(scan.to_value(id)?),
        Some(_) => return None,
    };
    if scan.as_str(scan.member(root, "jsonrpc")?)? != "2.0" {
        return None;
    }
    let params = scan.member(root, "params")?;
    if !scan.is_object(params) {
        return None;
    }
    let protocol_version_meta = match scan.member(params, "_meta") {
        None => None,
        Some(meta) if scan.is_object(meta) => match scan.member(meta, META_PROTOCOL_VERSION) {
            None => None,
            Some(version) => Some(scan.as_str(version)?.into_owned()),
        },
        Some(_) => return None,
    };
    let name = scan.as_str(scan.member(params, "name")?)?;
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return None;
    }
    let arguments = match scan.member(params, "arguments") {
        Some(arguments) if scan.is_object(arguments) => {
            Arguments::from_raw(scan.into_raw(arguments)?)
        }
        None => Arguments::from(Value::Object(Map::new())),
        Some(arguments) if scan.is_null(arguments) => Arguments::from(Value::Object(Map::new())),
        Some(_) => return None,
    };
    Some(McpMessage {
        id,
        method: Some(method.into_owned()),
        target: Some(Target::Tool(ToolCall {
            name: name.into_owned(),
            arguments,
        })),
        reference: None,
        protocol_version_meta,
    })
}

/// The general reader: the body as a `serde_json::Value`, then the JSON-RPC checks on it.
fn read_tree(body: &[u8], max_depth: usize) -> Result<McpMessage, Refusal> {
    let value = parse_strict(body, max_depth).map_err(|e| match e {
        JsonError::DuplicateKey { path, key } => McpError::DuplicateKey { path, key },
        JsonError::TooDeep { max_depth } => McpError::TooDeep { max: max_depth },
        other => McpError::Json {
            detail: other.to_string(),
        },
    })?;
    let mut object = match value {
        Value::Object(o) => o,
        Value::Array(_) => return Err(McpError::Batch.into()),
        _ => {
            return Err(McpError::Invalid {
                detail: "expected a JSON object",
            }
            .into())
        }
    };
    // The id first: every later refusal answers it.
    let id = match object.get("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
        Some(_) => {
            return Err(McpError::Invalid {
                detail: "\"id\" must be a string or a number",
            }
            .into())
        }
    };
    let refuse = |error: McpError| Refusal {
        id: id.clone(),
        error,
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(refuse(McpError::Invalid {
            detail: "\"jsonrpc\" must be \"2.0\"",
        }));
    }
    let method = match object.get("method") {
        None => None,
        Some(Value::String(m)) if !m.is_empty() => Some(m.clone()),
        Some(_) => {
            return Err(refuse(McpError::Invalid {
                detail: "\"method\" must be a non-empty string",
            }))
        }
    };
    if method.is_none() && !(object.contains_key("result") || object.contains_key("error")) {
        return Err(refuse(McpError::Invalid {
            detail: "neither a request (method) nor a response (result/error)",
        }));
    }
    // Taken out of the document, so the arguments move into the target instead of being deep-copied.
    let mut params = match object.remove("params") {
        None => None,
        Some(Value::Object(p)) => Some(p),
        Some(_) => {
            return Err(refuse(McpError::Invalid {
                detail: "\"params\" must be an object",
            }))
        }
    };
    let protocol_version_meta = read_meta(params.as_ref()).map_err(refuse)?;
    // Method names are matched as spelt by the official SDKs, but a server that matched them loosely must not
    // receive a `TOOLS/CALL` that skipped authorization: any spelling of a name-bearing method is one.
    let target = match method.as_deref() {
        Some(m) if m.eq_ignore_ascii_case(TOOLS_CALL) => {
            let (name, arguments) = read_named(&mut params, TOOLS_CALL, |detail| {
                McpError::ToolName { detail }
            })
            .map_err(refuse)?;
            Some(Target::Tool(ToolCall {
                name,
                arguments: Arguments::from(arguments),
            }))
        }
        Some(m) if m.eq_ignore_ascii_case(PROMPTS_GET) => {
            let (name, arguments) = read_named(&mut params, PROMPTS_GET, |detail| {
                McpError::PromptName { detail }
            })
            .map_err(refuse)?;
            Some(Target::Prompt(PromptGet { name, arguments }))
        }
        Some(m) if m.eq_ignore_ascii_case(RESOURCES_READ) => {
            let uri = read_uri(&mut params, RESOURCES_READ).map_err(refuse)?;
            Some(Target::Resource(ResourceRead { uri }))
        }
        _ => None,
    };
    let reference = match method.as_deref() {
        Some(m) if m.eq_ignore_ascii_case(COMPLETION_COMPLETE) => Some(Reference::Completion(
            read_completion_ref(&mut params).map_err(refuse)?,
        )),
        Some(m) if m.eq_ignore_ascii_case(RESOURCES_SUBSCRIBE) => {
            let uri = read_uri(&mut params, RESOURCES_SUBSCRIBE).map_err(refuse)?;
            Some(Reference::ResourceSubscription {
                method: RESOURCES_SUBSCRIBE,
                uri,
            })
        }
        Some(m) if m.eq_ignore_ascii_case(RESOURCES_UNSUBSCRIBE) => {
            let uri = read_uri(&mut params, RESOURCES_UNSUBSCRIBE).map_err(refuse)?;
            Some(Reference::ResourceSubscription {
                method: RESOURCES_UNSUBSCRIBE,
                uri,
            })
        }
        Some(m) if m.eq_ignore_ascii_case(SUBSCRIPTIONS_LISTEN) => Some(Reference::Listen {
            uris: read_listen(params.as_mut()).map_err(refuse)?,
        }),
        _ => None,
    };
    Ok(McpMessage {
        id,
        method,
        target,
        reference,
        protocol_version_meta,
    })
}

/// `params._meta["io.modelcontextprotocol/protocolVersion"]`, when there.
fn read_meta(params: Option<&Map<String, Value>>) -> Result<Option<String>, McpError> {
    let Some(meta) = params.and_then(|p| p.get("_meta")) else {
        return Ok(None);
    };
    let Value::Object(meta) = meta else {
        return Err(McpError::Meta {
            detail: "must be an object",
        });
    };
    match meta.get(META_PROTOCOL_VERSION) {
        None => Ok(None),
        Some(Value::String(v)) => Ok(Some(v.clone())),
        Some(_) => Err(McpError::Meta {
            detail: "the protocol version must be a string",
        }),
    }
}

/// Structural checks only (the value is compared with `Mcp-Name` and rule keys exactly, so it needs no
/// normalising): a non-empty string of at most `max` bytes without control characters.
fn check_name(value: Option<Value>, member: Member, max: usize) -> Result<String, &'static str> {
    let text = match value {
        Some(Value::String(text)) => text,
        Some(_) => return Err(member.not_string),
        None => return Err(member.missing),
    };
    if text.is_empty() {
        return Err(member.empty);
    }
    if text.len() > max {
        return Err(member.too_long);
    }
    if text.chars().any(char::is_control) {
        return Err(member.control);
    }
    Ok(text)
}

/// The details of one checked member, spelt out once per member so they can stay `&'static str`.
#[derive(Clone, Copy)]
struct Member {
    missing: &'static str,
    not_string: &'static str,
    empty: &'static str,
    too_long: &'static str,
    control: &'static str,
}

const NAME: Member = Member {
    missing: "params.name is missing",
    not_string: "params.name must be a string",
    empty: "params.name is empty",
    too_long: "params.name is longer than 128 bytes",
    control: "params.name contains a control character",
};

const URI: Member = Member {
    missing: "params.uri is missing",
    not_string: "params.uri must be a string",
    empty: "params.uri is empty",
    too_long: "params.uri is longer than 2048 bytes",
    control: "params.uri contains a control character",
};

fn read_named(
    params: &mut Option<Map<String, Value>>,
    method: &'static str,
    name_error: fn(&'static str) -> McpError,
) -> Result<(String, Value), McpError> {
    let name = check_name(
        params.as_mut().and_then(|p| p.remove("name")),
        NAME,
        MAX_NAME_BYTES,
    )
    .map_err(name_error)?;
    let arguments = match params.as_mut().and_then(|p| p.remove("arguments")) {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(McpError::Arguments { method }),
    };
    Ok((name, arguments))
}

fn read_uri(
    params: &mut Option<Map<String, Value>>,
    method: &'static str,
) -> Result<String, McpError> {
    check_name(
        params.as_mut().and_then(|p| p.remove("uri")),
        URI,
        MAX_URI_BYTES,
    )
    .map_err(|detail| McpError::ResourceUri { method, detail })
}

const REF_NAME: Member = Member {
    missing: "params.ref.name is missing",
    not_string: "params.ref.name must be a string",
    empty: "params.ref.name is empty",
    too_long: "params.ref.name is longer than 128 bytes",
    control: "params.ref.name contains a control character",
};

const REF_URI: Member = Member {
    missing: "params.ref.uri is missing",
    not_string: "params.ref.uri must be a string",
    empty: "params.ref.uri is empty",
    too_long: "params.ref.uri is longer than 2048 bytes",
    control: "params.ref.uri contains a control character",
};

const LISTEN_URI: Member = Member {
    missing: "a resourceSubscriptions entry is missing",
    not_string: "resourceSubscriptions entries must be strings",
    empty: "a resourceSubscriptions entry is empty",
    too_long: "a resourceSubscriptions entry is longer than 2048 bytes",
    control: "a resourceSubscriptions entry contains a control character",
};

/// `params.ref` of `completion/complete`. Its `type` is compared exactly: a reference type txngate does not
/// know could name something no rule covers, so it is refused rather than passed.
fn read_completion_ref(params: &mut Option<Map<String, Value>>) -> Result<CompletionRef, McpError> {
    let fail = |detail| McpError::CompletionRef { detail };
    let mut reference = match params.as_mut().and_then(|p| p.remove("ref")) {
        Some(Value::Object(r)) => r,
        None => return Err(fail("params.ref is missing")),
        Some(_) => return Err(fail("params.ref must be an object")),
    };
    let kind = match reference.get("type") {
        Some(Value::String(t)) => t.as_str(),
        None => return Err(fail("params.ref.type is missing")),
        Some(_) => return Err(fail("params.ref.type must be a string")),
    };
    match kind {
        "ref/prompt" => check_name(reference.remove("name"), REF_NAME, MAX_NAME_BYTES)
            .map(|name| CompletionRef::Prompt { name })
            .map_err(fail),
        "ref/resource" => check_name(reference.remove("uri"), REF_URI, MAX_URI_BYTES)
            .map(|uri| CompletionRef::Resource { uri })
            .map_err(fail),
        _ => Err(fail(
            "params.ref.type is neither \"ref/prompt\" nor \"ref/resource\"",
        )),
    }
}

/// The resource URIs of a `subscriptions/listen` filter (empty when it subscribes to none). A missing
/// `notifications` is left to the server (it subscribes to nothing txngate authorizes).
fn read_listen(params: Option<&mut Map<String, Value>>) -> Result<Vec<String>, McpError> {
    let fail = |detail| McpError::Subscriptions { detail };
    let filter = match params.and_then(|p| p.remove("notifications")) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(filter)) => filter,
        Some(_) => return Err(fail("params.notifications must be an object")),
    };
    let entries = match filter.get("resourceSubscriptions") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(fail("resourceSubscriptions must be an array of strings")),
    };
    entries
        .iter()
        .map(|entry| check_name(Some(entry.clone()), LISTEN_URI, MAX_URI_BYTES).map_err(fail))
        .collect()
}

/// The JSON-RPC error code of a refusal with HTTP `status` when no more specific code applies (the body
/// errors of [`McpError::rpc_code`] are more specific). MCP 2026-07-28 reserves -32000..-32099 (basic/index
/// "Error Codes"), so txngate's own refusals use `-(31000 + status)` outside it: -31401 Txn-Token refused,
/// -31403 forbidden, -31429 rate limited, -31502/-31503/-31504 upstream, keys or store unavailable. A request
/// that is not a valid request is -32600 and an internal failure -32603, as JSON-RPC defines them.
pub fn status_rpc_code(status: u16) -> i64 {
    match status {
        400 | 413 => -32600,
        500 => -32603,
        other => -(31000 + i64::from(other)),
    }
}

/// The OAuth-style `error` value of a refusal outside the MCP endpoint (RFC 6750 §3.1 names where one fits).
pub fn status_error_name(status: u16) -> &'static str {
    match status {
        400 | 413 => "invalid_request",
        401 => "invalid_token",
        403 => "insufficient_scope",
        429 => "rate_limited",
        500 => "server_error",
        502 => "bad_gateway",
        504 => "gateway_timeout",
        _ => "temporarily_unavailable",
    }
}

/// A JSON-RPC error response body. Without a usable request id the `id` member is omitted, as the
/// 2026-07-28 schema allows (`JSONRPCErrorResponse.id` is optional), rather than sent as `null`.
pub fn error_body(id: Option<&Value>, code: i64, message: &str, data: Value) -> String {
    let mut body = Map::new();
    body.insert("jsonrpc".into(), Value::from("2.0"));
    if let Some(id) = id {
        body.insert("id".into(), id.clone());
    }
    body.insert(
        "error".into(),
        serde_json::json!({"code": code, "message": message, "data": data}),
    );
    Value::Object(body).to_string()
}

#[cfg(test)]
mod tests {
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
        let call = m.tool_call().unwrap();
        assert_eq!(call.name, "send_email");
        assert_eq!(call.arguments, json!({"to":"a@b"}));
    }

    #[test]
    fn tool_call_arguments_are_kept_as_sent() {
        let body = r#"{"params":{"arguments": {"to":"a@b", "n":[1, 2.50]},"name":"send_email"},"method":"tools/call","id":7,"jsonrpc":"2.0"}"#;
        let m = read_tool_call(body.as_bytes(), 32).unwrap();
        let call = m.tool_call().unwrap();
        assert_eq!(call.arguments.raw(), Some(r#"{"to":"a@b", "n":[1, 2.50]}"#));
        assert_eq!(call.arguments, json!({"to":"a@b","n":[1,2.5]}));
        assert_eq!(
            call.arguments.canonical_sha256(),
            crate::encoding::sha256(br#"{"n":[1,2.5],"to":"a@b"}"#)
        );
        assert_eq!(m, read_tree(body.as_bytes(), 32).unwrap());
        let m = parse(body).unwrap();
        assert!(m.tool_call().unwrap().arguments.raw().is_some());
    }

    #[test]
    fn any_spelling_of_tools_call_is_a_tool_call() {
        let m = parse(
            r#"{"jsonrpc":"2.0","id":1,"method":"TOOLS/Call","params":{"name":"delete_repo"}}"#,
        )
        .unwrap();
        assert_eq!(m.tool_call().unwrap().name, "delete_repo");
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
    fn prompts_and_resources_are_targets() {
        let m = parse(r#"{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"code_review","arguments":{"lang":"rust"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#).unwrap();
        assert_eq!(
            m.prompt_get(),
            Some(&PromptGet {
                name: "code_review".into(),
                arguments: json!({"lang":"rust"})
            })
        );
        assert_eq!(m.protocol_version_meta.as_deref(), Some("2026-07-28"));
        let m = parse(r#"{"jsonrpc":"2.0","id":3,"method":"Prompts/Get","params":{"name":"x"}}"#)
            .unwrap();
        assert_eq!(m.prompt_get().unwrap().arguments, json!({}));
        assert_eq!(m.target.as_ref().unwrap().method(), "prompts/get");
        let m = parse(r#"{"jsonrpc":"2.0","id":4,"method":"RESOURCES/read","params":{"uri":"file:///docs/a b.txt"}}"#).unwrap();
        assert_eq!(m.resource_read().unwrap().uri, "file:///docs/a b.txt");
        assert_eq!(m.target.unwrap().name(), "file:///docs/a b.txt");
        // Names outside the recommended alphabet parse: authorization decides on them.
        let m =
            parse(r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"天気 /x"}}"#)
                .unwrap();
        assert_eq!(m.tool_call().unwrap().name, "天気 /x");
        let m =
            parse(r#"{"jsonrpc":"2.0","id":6,"method":"server/discover","params":{"_meta":{}}}"#)
                .unwrap();
        assert!(m.target.is_none() && m.list_kind().is_none());
    }

    #[test]
    fn references_are_read() {
        let m = parse(r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"code_review","title":"Review"},"argument":{"name":"language","value":"py"}}}"#).unwrap();
        assert_eq!(
            m.reference,
            Some(Reference::Completion(CompletionRef::Prompt {
                name: "code_review".into()
            }))
        );
        // No Mcp-Name for these methods: they are not targets.
        assert!(m.target.is_none());
        let m = parse(r#"{"jsonrpc":"2.0","id":1,"method":"COMPLETION/complete","params":{"ref":{"type":"ref/resource","uri":"file:///{path}"}}}"#).unwrap();
        assert_eq!(
            m.reference,
            Some(Reference::Completion(CompletionRef::Resource {
                uri: "file:///{path}".into()
            }))
        );
        for method in [RESOURCES_SUBSCRIBE, RESOURCES_UNSUBSCRIBE] {
            let body = json!({"jsonrpc":"2.0","id":1,"method":method,"params":{"uri":"file:///a"}});
            assert_eq!(
                parse(&body.to_string()).unwrap().reference,
                Some(Reference::ResourceSubscription {
                    method,
                    uri: "file:///a".into()
                })
            );
        }
        let m = parse(r#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":true,"resourceSubscriptions":["file:///a","file:///b"]}}}"#).unwrap();
        assert_eq!(
            m.reference,
            Some(Reference::Listen {
                uris: vec!["file:///a".into(), "file:///b".into()]
            })
        );
        let m = parse(r#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{}}"#)
            .unwrap();
        assert_eq!(m.reference, Some(Reference::Listen { uris: vec![] }));
        let m = parse(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).unwrap();
        assert!(m.reference.is_none());
    }

    #[test]
    fn ill_typed_references_are_refused() {
        let long = "a".repeat(129);
        for (params, reason, detail) in [
            (json!({}), "mcp.completion_ref", "params.ref is missing"),
            (
                json!({"ref": []}),
                "mcp.completion_ref",
                "params.ref must be an object",
            ),
            (
                json!({"ref": {}}),
                "mcp.completion_ref",
                "params.ref.type is missing",
            ),
            (
                json!({"ref": {"type": null}}),
                "mcp.completion_ref",
                "params.ref.type must be a string",
            ),
            (
                json!({"ref": {"type": "ref/tool", "name": "x"}}),
                "mcp.completion_ref",
                "neither",
            ),
            (
                json!({"ref": {"type": "ref/prompt"}}),
                "mcp.completion_ref",
                "params.ref.name is missing",
            ),
            (
                json!({"ref": {"type": "ref/prompt", "name": long}}),
                "mcp.completion_ref",
                "longer than 128",
            ),
            (
                json!({"ref": {"type": "ref/resource", "uri": ""}}),
                "mcp.completion_ref",
                "params.ref.uri is empty",
            ),
        ] {
            let body =
                json!({"jsonrpc":"2.0","id":1,"method":"completion/complete","params":params});
            let e = parse(&body.to_string()).unwrap_err();
            assert_eq!(
                (e.reason(), e.rpc_code(), e.status()),
                (reason, -32602, 400),
                "{params}"
            );
            assert!(e.to_string().contains(detail), "{e}");
        }
        let e = parse(r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{}}"#)
            .unwrap_err();
        assert_eq!(e.reason(), "mcp.resource_uri");
        assert_eq!(e.to_string(), "resources/subscribe: params.uri is missing");
        for params in [
            json!({"notifications": 1}),
            json!({"notifications": {"resourceSubscriptions": {}}}),
            json!({"notifications": {"resourceSubscriptions": ["file:///a\u{0}"]}}),
        ] {
            let body =
                json!({"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":params});
            let e = parse(&body.to_string()).unwrap_err();
            assert_eq!(
                (e.reason(), e.rpc_code()),
                ("mcp.subscriptions", -32602),
                "{params}"
            );
        }
    }

    #[test]
    fn list_kinds() {
        for (method, kind) in [
            ("tools/list", ListKind::Tools),
            ("PROMPTS/LIST", ListKind::Prompts),
            ("resources/list", ListKind::Resources),
            ("resources/Templates/list", ListKind::ResourceTemplates),
        ] {
            let body = json!({"jsonrpc":"2.0","id":1,"method":method}).to_string();
            assert_eq!(parse(&body).unwrap().list_kind(), Some(kind), "{method}");
        }
        assert_eq!(ListKind::of_method("tools/call"), None);
        assert_eq!(ListKind::ResourceTemplates.name_key(), "uriTemplate");
    }

    #[test]
    fn recommended_names() {
        assert!(is_recommended_name("send_email-v2.1"));
        assert!(is_recommended_name(&"a".repeat(128)));
        for name in ["", "a/b", "a b", "é", "send_\u{0435}mail"] {
            assert!(!is_recommended_name(name), "{name:?}");
        }
        assert!(!is_recommended_name(&"a".repeat(129)));
    }

    #[test]
    fn refusals_with_reasons() {
        let long_name = "a".repeat(129);
        let long_uri = format!("file:///{}", "a".repeat(2041));
        for (body, reason) in [
            (
                r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#.to_string(),
                "mcp.batch",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list"}"#.into(),
                "mcp.duplicate_key",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#.into(),
                "mcp.duplicate_key",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":1,"x":2}}}"#.into(),
                "mcp.duplicate_key",
            ),
            (r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#.into(), "mcp.invalid"),
            (r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#.into(), "mcp.invalid"),
            (r#"{"jsonrpc":"2.0","id":1}"#.into(), "mcp.invalid"),
            (r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[]}"#.into(), "mcp.invalid"),
            (r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#.into(), "mcp.tool_name"),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":""}}"#.into(),
                "mcp.tool_name",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_email\n"}}"#.into(),
                "mcp.tool_name",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a\u0000"}}"#.into(),
                "mcp.tool_name",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#.into(),
                "mcp.tool_name",
            ),
            (
                json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":long_name}}).to_string(),
                "mcp.tool_name",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":[1]}}"#.into(),
                "mcp.arguments",
            ),
            (r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{}}"#.into(), "mcp.prompt_name"),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":["a"]}}"#.into(),
                "mcp.prompt_name",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"a","arguments":"x"}}"#.into(),
                "mcp.arguments",
            ),
            (r#"{"jsonrpc":"2.0","id":1,"method":"resources/read"}"#.into(), "mcp.resource_uri"),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":""}}"#.into(),
                "mcp.resource_uri",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a\u007f"}}"#.into(),
                "mcp.resource_uri",
            ),
            (
                json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":long_uri}}).to_string(),
                "mcp.resource_uri",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":7}}"#.into(),
                "mcp.meta",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":20260728}}}"#.into(),
                "mcp.meta",
            ),
            ("{".into(), "mcp.parse"),
        ] {
            assert_eq!(parse(&body).unwrap_err().reason(), reason, "{body}");
        }
        let uri = format!("file:///{}", "a".repeat(2040));
        let ok = json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":uri}});
        assert!(parse(&ok.to_string()).is_ok());
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

    /// Whatever is wrong after the id was read, the refusal keeps the id; before it, there is none.
    #[test]
    fn refusals_keep_the_id() {
        let refusal = |body: &str| parse_request(body.as_bytes(), 65536, 32).unwrap_err();
        for body in [
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":""}}"#,
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"a","arguments":1}}"#,
            r#"{"jsonrpc":"2.0","id":9,"method":"prompts/get"}"#,
            r#"{"jsonrpc":"2.0","id":9,"method":"resources/read","params":{"uri":3}}"#,
            r#"{"jsonrpc":"2.0","id":9,"method":"x","params":1}"#,
            r#"{"jsonrpc":"1.0","id":9,"method":"x"}"#,
            r#"{"method":7,"id":9,"jsonrpc":"2.0"}"#,
        ] {
            assert_eq!(refusal(body).id, Some(json!(9)), "{body}");
        }
        assert_eq!(
            refusal(r#"{"jsonrpc":"2.0","id":"a-1","method":"tools/call"}"#).id,
            Some(json!("a-1"))
        );
        for body in [
            "{",
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":{},"method":"tools/call"}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"x"}]"#,
        ] {
            assert_eq!(refusal(body).id, None, "{body}");
        }
    }

    #[test]
    fn error_bodies() {
        let with: Value = serde_json::from_str(&error_body(
            Some(&json!(7)),
            -32020,
            "m",
            json!({"reason":"r"}),
        ))
        .unwrap();
        assert_eq!(with["id"], 7);
        let without: Value =
            serde_json::from_str(&error_body(None, -32700, "m", json!({}))).unwrap();
        assert!(without.get("id").is_none(), "{without}");
        assert_eq!(without["error"]["code"], -32700);
        for (status, code) in [
            (400, -32600),
            (401, -31401),
            (403, -31403),
            (413, -32600),
            (429, -31429),
            (500, -32603),
            (502, -31502),
            (503, -31503),
            (504, -31504),
        ] {
            assert_eq!(status_rpc_code(status), code, "{status}");
            // Outside the range JSON-RPC and MCP reserve, except the two JSON-RPC codes themselves.
            assert!(!(-32099..=-32000).contains(&code), "{status}");
        }
    }

    /// MCP bodies around arguments of every shape, members in any order, sometimes repeated.
    fn arb_body() -> impl Strategy<Value = String> {
        use crate::json::texts;
        let method = prop::sample::select(vec![
            "tools/call",
            "TOOLS/Call",
            "prompts/get",
            "tools/list",
        ]);
        let name = prop_oneof![
            4 => Just(r#""send_email""#.to_string()),
            1 => Just(r#""send\u005femail""#.to_string()),
            1 => Just(r#""a\u0007""#.to_string()),
            1 => Just(format!(r#""{}""#, "n".repeat(MAX_NAME_BYTES))),
            1 => Just(format!(r#""{}""#, "n".repeat(MAX_NAME_BYTES + 1))),
            1 => Just("null".to_string()),
            1 => Just(r#""""#.to_string()),
            1 => Just("7".to_string()),
            1 => texts::string(),
        ];
        let arguments = prop_oneof![
            4 => texts::text().prop_map(|t| format!(r#"{{"k":{t}, "a" : [{t}]}}"#)),
            2 => texts::text(),
            1 => Just("null".to_string()),
        ];
        let id = prop::sample::select(vec![
            "1",
            r#""a""#,
            "null",
            "{}",
            "-0",
            "2.50",
            "1e400",
            "18446744073709551616",
            r#""\u0061\n""#,
            "[1]",
        ]);
        // The envelope members the readers look at, in every shape they may come in (`None`: left out).
        let jsonrpc = prop::sample::select(vec![
            Some(r#""2.0""#),
            Some(r#""2\u002e0""#),
            Some(r#""2.00""#),
            Some("2.0"),
            None,
        ]);
        let meta = prop::sample::select(vec![
            None,
            Some(r#"{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}"#),
            Some(r#"{"io.modelcontextprotocol\/protocolVersion":"2026-07-28","x":1}"#),
            Some(r#"{"io.modelcontextprotocol/protocolVersion":20260728}"#),
            Some(r#"{}"#),
            Some("[]"),
        ]);
        let shape = prop::sample::select(vec![0u8, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
        (
            (method, name, arguments, id),
            (jsonrpc, meta, shape),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_flat_map(
                |((method, name, arguments, id), (jsonrpc, meta, shape), repeat, no_arguments)| {
                    let mut params = vec![format!(r#""name":{name}"#)];
                    if !no_arguments {
                        params.push(format!(r#""arguments": {arguments}"#));
                    }
                    if repeat {
                        params.push(r#""arguments":{}"#.to_string());
                    }
                    if let Some(meta) = meta {
                        params.push(format!(r#""_meta":{meta}"#));
                    }
                    let params = Just(params).prop_shuffle();
                    (Just(method), Just(id), Just(jsonrpc), Just(shape), params)
                },
            )
            .prop_flat_map(|(method, id, jsonrpc, shape, params)| {
                let mut members = vec![format!(r#""id":{id}"#), format!(r#""method":"{method}""#)];
                if let Some(jsonrpc) = jsonrpc {
                    members.push(format!(r#""jsonrpc":{jsonrpc}"#));
                }
                match shape {
                    // No params, params of another type; an extra member; the body in an array.
                    1 => {}
                    2 => members.push(r#""params":[]"#.to_string()),
                    _ => members.push(format!(r#""params": {{ {} }}"#, params.join(","))),
                }
                if shape == 3 {
                    members.push(r#""extra":{"deep":[1,{"x":null}]}"#.to_string());
                }
                (Just(shape), Just(members).prop_shuffle())
            })
            .prop_map(|(shape, members)| {
                let object = format!("{{{}}}", members.join(","));
                if shape == 4 {
                    format!("[{object}]")
                } else {
                    object
                }
            })
    }

    proptest! {
        /// The typed reader and the tree reader: the same message or the same refusal, and the same hash.
        #[test]
        fn typed_reader_is_the_tree_reader(body in arb_body(), max_depth in 3usize..9) {
            let tree = read_tree(body.as_bytes(), max_depth);
            // Whatever the typed reader takes, the tree reader reads the same; what it leaves, the tree decides.
            if let Some(typed) = read_tool_call(body.as_bytes(), max_depth) {
                prop_assert_eq!(Ok(typed), tree.clone(), "{}", body);
            }
            let typed = parse_request(body.as_bytes(), 1 << 20, max_depth);
            prop_assert_eq!(&typed, &tree, "{}", body);
            if let Ok(McpMessage { target: Some(Target::Tool(call)), .. }) = &typed {
                let value = call.arguments.to_value().unwrap();
                prop_assert_eq!(
                    call.arguments.canonical_sha256(),
                    crate::encoding::sha256(&crate::json::canonical(&value))
                );
            }
        }

        #[test]
        fn parse_never_panics(body in prop::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse_message(&body, 1024, 16);
        }
    }
}

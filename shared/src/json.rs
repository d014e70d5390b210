//! Strict JSON: the one reader every untrusted document goes through (token header and claims, MCP bodies,
//! JWKS, the policy). serde_json keeps the last of two equal keys, which lets an attacker show one value to
//! a validator and another to the tool behind it; this reader refuses duplicates and bounds nesting instead.

use core::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JsonError {
    /// Not JSON, or trailing bytes after the value.
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// The same key twice in one object; `path` is the JSON pointer of that object.
    DuplicateKey { path: String, key: String },
    /// Nested deeper than the configured bound.
    TooDeep { max_depth: usize },
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax {
                line,
                column,
                message,
            } => {
                write!(f, "invalid JSON at line {line} column {column}: {message}")
            }
            Self::DuplicateKey { path, key } => {
                write!(
                    f,
                    "duplicate key {key:?} in the object at {}",
                    display_pointer(path)
                )
            }
            Self::TooDeep { max_depth } => write!(f, "JSON nested deeper than {max_depth} levels"),
        }
    }
}

impl std::error::Error for JsonError {}

fn display_pointer(path: &str) -> &str {
    if path.is_empty() {
        "the top level"
    } else {
        path
    }
}

/// Parses `bytes` as one JSON value, refusing duplicate keys anywhere and nesting beyond `max_depth`.
pub fn parse_strict(bytes: &[u8], max_depth: usize) -> Result<Value, JsonError> {
    let mut state = State { failure: None };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result = StrictSeed {
        depth: 0,
        max_depth,
        state: &mut state,
    }
    .deserialize(&mut de)
    .and_then(|value| de.end().map(|()| value));
    match result {
        Ok(value) => Ok(value),
        Err(err) => Err(state.failure.take().unwrap_or_else(|| JsonError::Syntax {
            line: err.line(),
            column: err.column(),
            message: strip_position(&err.to_string()),
        })),
    }
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message.get(..i).unwrap_or(message).to_string(),
        None => message.to_string(),
    }
}

/// Escapes one reference token of a JSON pointer (RFC 6901).
pub fn escape_pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Shared by every level of one parse: the first failure. A duplicate key's pointer is built while the
/// error unwinds (each enclosing level prepends its own step), so a document that parses pays nothing for
/// it: keeping the path up to date for every value cost a copy of every key.
struct State {
    failure: Option<JsonError>,
}

/// On the way out of a failed child: prepend the child's step to a duplicate key's pointer.
fn prepend_step(state: &mut State, step: impl FnOnce() -> String) {
    if let Some(JsonError::DuplicateKey { path, .. }) = &mut state.failure {
        let mut full = step();
        full.push_str(path);
        *path = full;
    }
}

struct StrictSeed<'s> {
    depth: usize,
    max_depth: usize,
    state: &'s mut State,
}

impl<'de> DeserializeSeed<'de> for StrictSeed<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl StrictSeed<'_> {
    /// The seed of a child value; the caller pushes its segment before and pops it after.
    fn child(&mut self) -> Result<StrictSeed<'_>, JsonError> {
        if self.depth + 1 > self.max_depth {
            return Err(JsonError::TooDeep {
                max_depth: self.max_depth,
            });
        }
        Ok(StrictSeed {
            depth: self.depth + 1,
            max_depth: self.max_depth,
            state: self.state,
        })
    }
}

impl<'de> Visitor<'de> for StrictSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let child = match self.child() {
                Ok(child) => child,
                Err(err) => return Err(fail(self.state, err)),
            };
            match seq.next_element_seed(child) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(err) => {
                    let index = items.len();
                    prepend_step(self.state, || format!("/{index}"));
                    return Err(err);
                }
            }
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // One lookup: the vacant slot is filled once the value is read.
            let slot = match object.entry(key) {
                serde_json::map::Entry::Vacant(slot) => slot,
                serde_json::map::Entry::Occupied(taken) => {
                    let err = JsonError::DuplicateKey {
                        path: String::new(),
                        key: taken.key().clone(),
                    };
                    return Err(fail(self.state, err));
                }
            };
            let child = match self.child() {
                Ok(child) => child,
                Err(err) => return Err(fail(self.state, err)),
            };
            match map.next_value_seed(child) {
                Ok(value) => {
                    slot.insert(value);
                }
                Err(err) => {
                    prepend_step(self.state, || {
                        format!("/{}", escape_pointer_token(slot.key()))
                    });
                    return Err(err);
                }
            }
        }
        Ok(Value::Object(object))
    }
}

fn fail<E: de::Error>(state: &mut State, err: JsonError) -> E {
    let message = err.to_string();
    state.failure = Some(err);
    E::custom(message)
}

/// Serializes with object keys sorted and no whitespace, so equal documents hash equally whatever their
/// key order or spacing on the wire.
pub fn canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            out.push(b'{');
            // serde_json's map iterates in key order already (a BTreeMap without its `preserve_order`
            // feature); sorted here only if some build unified that feature in.
            if map.keys().zip(map.keys().skip(1)).all(|(a, b)| a < b) {
                for (i, (key, v)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_string(key, out);
                    out.push(b':');
                    write_canonical(v, out);
                }
            } else {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                for (i, (key, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_string(key, out);
                    out.push(b':');
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(text) => write_string(text, out),
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // Writing a number into a Vec cannot fail; an empty write would only weaken a hash, never a verdict.
        Value::Number(number) => {
            let _ = serde_json::to_writer(&mut *out, number);
        }
    }
}

/// A JSON string exactly as serde_json writes it: quote and backslash escaped, control characters as
/// `\b \t \n \f \r` or `\u00xx`, everything else (non-ASCII included) as is. Plain runs are copied at once.
fn write_string(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            for nibble in [b >> 4, b & 0xf] {
                out.push(HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'));
            }
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_plain_documents() {
        let v = parse_strict(br#"{"a":[1,2,{"b":null}],"c":"x"}"#, 8).unwrap();
        assert_eq!(v["a"][2]["b"], Value::Null);
    }

    #[test]
    fn refuses_duplicate_keys_with_their_path() {
        let err = parse_strict(br#"{"a":{"b":1,"b":2}}"#, 8).unwrap_err();
        assert_eq!(
            err,
            JsonError::DuplicateKey {
                path: "/a".into(),
                key: "b".into()
            }
        );
        let err = parse_strict(br#"{"x":1,"x":1}"#, 8).unwrap_err();
        assert!(matches!(err, JsonError::DuplicateKey { ref path, .. } if path.is_empty()));
    }

    #[test]
    fn refuses_deep_nesting() {
        let deep = "[".repeat(40) + &"]".repeat(40);
        assert_eq!(
            parse_strict(deep.as_bytes(), 32).unwrap_err(),
            JsonError::TooDeep { max_depth: 32 }
        );
        assert!(parse_strict(deep.as_bytes(), 64).is_ok());
        let very_deep = "[".repeat(100_000);
        assert!(parse_strict(very_deep.as_bytes(), 32).is_err());
    }

    #[test]
    fn refuses_trailing_bytes_bom_and_garbage() {
        assert!(matches!(
            parse_strict(b"{} x", 8),
            Err(JsonError::Syntax { .. })
        ));
        assert!(matches!(
            parse_strict(b"\xef\xbb\xbf{}", 8),
            Err(JsonError::Syntax { .. })
        ));
        assert!(matches!(
            parse_strict(b"", 8),
            Err(JsonError::Syntax { .. })
        ));
    }

    #[test]
    fn canonical_sorts_keys_and_drops_whitespace() {
        let a = parse_strict(br#"{ "b": 1, "a": {"y": [1, 2], "x": "s"} }"#, 8).unwrap();
        assert_eq!(
            canonical(&a),
            br#"{"a":{"x":"s","y":[1,2]},"b":1}"#.to_vec()
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z\\\\\"é]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z~/]{0,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn duplicate_key_pointers_reach_through_arrays_and_escaped_keys() {
        let err = parse_strict(br#"{"a":[0,{"x/y":{"k":1,"k":2}}]}"#, 8).unwrap_err();
        assert_eq!(
            err,
            JsonError::DuplicateKey {
                path: "/a/1/x~1y".into(),
                key: "k".into()
            }
        );
    }

    proptest! {
        #[test]
        fn canonical_strings_are_serde_jsons(text in "\\PC{0,8}|[\\x00-\\x20\"\\\\\\x7f]{0,6}") {
            let mut mine = Vec::new();
            write_string(&text, &mut mine);
            prop_assert_eq!(mine, serde_json::to_vec(&text).unwrap());
        }

        #[test]
        fn strict_parse_round_trips_what_serde_json_writes(v in arb_json()) {
            let text = serde_json::to_vec(&v).unwrap();
            prop_assert_eq!(parse_strict(&text, 16).unwrap(), v.clone());
            prop_assert_eq!(parse_strict(&canonical(&v), 16).unwrap(), v);
        }

        #[test]
        fn strict_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_strict(&bytes, 8);
        }
    }
}

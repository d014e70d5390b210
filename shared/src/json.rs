//! Strict JSON: the one reader every untrusted document goes through (token header and claims, MCP bodies,
//! JWKS, the policy). serde_json keeps the last of two equal keys, which lets an attacker show one value to
//! a validator and another to the tool behind it; this reader refuses duplicates and bounds nesting instead.

use core::fmt;
use std::borrow::Cow;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

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
/// One reference token of a JSON pointer, unescaped (`~1` to `/`, then `~0` to `~`, as `Value::pointer`);
/// borrowed when it has no `~`.
pub fn unescape_pointer_token(token: &str) -> Cow<'_, str> {
    if token.contains('~') {
        Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(token)
    }
}

/// `value.pointer(pointer)` (RFC 6901, exactly as serde_json reads it) without a `String` per token.
pub fn pointer<'v>(value: &'v Value, pointer: &str) -> Option<&'v Value> {
    if pointer.is_empty() {
        return Some(value);
    }
    let rest = pointer.strip_prefix('/')?;
    rest.split('/').try_fold(value, |target, token| {
        let token = unescape_pointer_token(token);
        match target {
            Value::Object(map) => map.get(token.as_ref()),
            Value::Array(list) => array_index(&token).and_then(|i| list.get(i)),
            _ => None,
        }
    })
}

/// An array index token as serde_json reads it: no sign, no leading zero.
fn array_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

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

/// Appends `text` as a JSON string, exactly as serde_json writes it.
pub(crate) fn push_string(out: &mut Vec<u8>, text: &str) {
    write_string(text, out);
}

/// A JSON string exactly as serde_json writes it: quote and backslash escaped, control characters as
/// `\b \t \n \f \r` or `\u00xx`, everything else (non-ASCII included) as is. Plain runs are copied at once.
fn write_string(text: &str, out: &mut impl Sink) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    out.put(b"\"");
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time to the next byte that needs escaping (the scan's stops once UTF-8 is known:
        // control characters, the quote, the backslash), then that byte.
        if let Some(word) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
            let mask = stop_mask(word, false);
            if mask == 0 {
                i += 8;
                continue;
            }
            i += (mask.trailing_zeros() / 8) as usize;
        }
        let Some(&b) = bytes.get(i) else { break };
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[],
            _ => {
                i += 1;
                continue;
            }
        };
        out.put(bytes.get(start..i).unwrap_or_default());
        if escape.is_empty() {
            out.put(b"\\u00");
            for nibble in [b >> 4, b & 0xf] {
                out.put(&[HEX.get(usize::from(nibble)).copied().unwrap_or(b'0')]);
            }
        } else {
            out.put(escape);
        }
        i += 1;
        start = i;
    }
    out.put(bytes.get(start..).unwrap_or_default());
    out.put(b"\"");
}

// ---------------------------------------------------------------------------------------------------------
// The strict reader without a tree: a document checked as `parse_strict` checks it (syntax, duplicate keys,
// depth), kept as its bytes and one span per value, so big MCP arguments are read once and hashed in their
// canonical form without a `Value` (issue #17: a `Value` costs an allocation per key and string).

/// What one span holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Object,
    Array,
    /// `escaped`: the text has a backslash, so its bytes are not its value.
    Str {
        escaped: bool,
    },
    /// `verbatim`: an integer that serde_json writes back exactly as it was sent.
    Number {
        verbatim: bool,
    },
    /// `true`, `false` or `null`.
    Literal,
}

/// One value: its bytes `start..end` and the index after its subtree (its next sibling). Values are stored
/// in document order; an object's children are its members' key and value, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Node {
    start: usize,
    end: usize,
    next: usize,
    token: Token,
    /// Its canonical form is its bytes as sent (compact, keys in order, nothing to re-escape or reformat):
    /// the hash takes the whole span at once.
    as_sent: bool,
}

/// Deeper than this, serde_json's own recursion limit (128) could refuse what the scan accepts.
const SCAN_DEPTH_CAP: usize = 100;

/// Bytes that end a plain run in a string: the quote, the backslash, control characters and (until the
/// string's first one is seen) non-ASCII bytes.
const STOP_ASCII: [bool; 256] = stops(true);
/// The same once the string is known to need a UTF-8 check.
const STOP_TEXT: [bool; 256] = stops(false);

const fn stops(non_ascii: bool) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        #[allow(clippy::indexing_slicing)] // b < 256: in bounds, and a const fn has no `get_mut`.
        {
            table[b] =
                b < 0x20 || b == b'"' as usize || b == b'\\' as usize || (non_ascii && b >= 0x80);
        }
        b += 1;
    }
    table
}

/// The bytes of `word` (read little-endian) that end a plain run ([`STOP_ASCII`] when `ascii`, else
/// [`STOP_TEXT`]): the usual SWAR tests (below 0x20, a quote, a backslash, ≥ 0x80), a high bit per byte.
/// Zero exactly when no byte does; otherwise its lowest set bit is in the first byte that does (a borrow only
/// reaches bytes after a true one), so `trailing_zeros / 8` is that byte's index.
fn stop_mask(word: u64, ascii: bool) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = ONES * 0x80;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let high = if ascii { word } else { 0 };
    (below(word, 0x20) | below(quote, 1) | below(backslash, 1) | high) & HIGHS
}

/// Whether none of the eight bytes in `word` ends a plain run.
#[cfg(test)]
fn plain_word(word: u64, ascii: bool) -> bool {
    stop_mask(word, ascii) == 0
}

/// A document that passed the strict checks, as spans over the caller's bytes.
#[derive(Debug)]
pub struct Scan<'a> {
    bytes: &'a [u8],
    nodes: Vec<Node>,
}

/// One value that passed the strict checks, owned: the document it was scanned in, its spans, and which of
/// them is the value (kept whole, so taking a value out of a scan copies the bytes once and moves the
/// spans instead of rebasing each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawJson {
    bytes: Box<[u8]>,
    nodes: Vec<Node>,
    root: usize,
}

/// Reads `bytes` as one JSON value with [`parse_strict`]'s checks, without building a tree. `None` means
/// "not taken": the scan refuses whatever `parse_strict` refuses (and, to stay simple, a little more: lone
/// surrogate escapes, nesting past 100, an empty container at the depth bound), so the caller runs
/// `parse_strict` for the exact error. When it accepts, `parse_strict` accepts the same document.
pub fn scan(bytes: &[u8], max_depth: usize) -> Option<Scan<'_>> {
    let mut scanner = Scanner {
        bytes,
        pos: 0,
        // About one value per 8 bytes in real arguments: grown rarely, not from 4 up.
        nodes: Vec::with_capacity(16 + bytes.len() / 8),
        max_depth: max_depth.min(SCAN_DEPTH_CAP),
        keys: Vec::new(),
        whitespace: 0,
        reformatted: 0,
    };
    scanner.value(0)?;
    scanner.skip_whitespace();
    if scanner.pos != bytes.len() {
        return None;
    }
    Some(Scan {
        bytes,
        nodes: scanner.nodes,
    })
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    max_depth: usize,
    /// Scratch for one object's keys (reused: an object's keys are compared when it closes).
    keys: Vec<Cow<'a, [u8]>>,
    /// Whitespace bytes skipped so far, and values whose canonical form is not their bytes: a container
    /// whose close finds both unchanged since its open is canonical as sent.
    whitespace: usize,
    reformatted: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        let start = self.pos;
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
        self.whitespace += self.pos - start;
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_whitespace();
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    fn leaf(&mut self, start: usize, token: Token) {
        let next = self.nodes.len() + 1;
        let as_sent = !matches!(
            token,
            Token::Str { escaped: true } | Token::Number { verbatim: false }
        );
        if !as_sent {
            self.reformatted += 1;
        }
        self.nodes.push(Node {
            start,
            end: self.pos,
            next,
            token,
            as_sent,
        });
    }

    /// One value at `depth` (the top level is 0).
    fn value(&mut self, depth: usize) -> Option<()> {
        self.skip_whitespace();
        let start = self.pos;
        match self.peek()? {
            open @ (b'{' | b'[') => {
                // Conservative: `parse_strict` refuses a non-empty container here, and an empty array.
                if depth + 1 > self.max_depth {
                    return None;
                }
                let index = self.nodes.len();
                let token = if open == b'{' {
                    Token::Object
                } else {
                    Token::Array
                };
                self.nodes.push(Node {
                    start,
                    end: start,
                    next: index + 1,
                    token,
                    as_sent: false,
                });
                self.pos += 1;
                let (whitespace, reformatted) = (self.whitespace, self.reformatted);
                let in_order = if open == b'{' {
                    self.object(index, depth)?
                } else {
                    self.array(depth)?;
                    true
                };
                let as_sent =
                    in_order && whitespace == self.whitespace && reformatted == self.reformatted;
                if !as_sent {
                    self.reformatted += 1;
                }
                let (end, next) = (self.pos, self.nodes.len());
                let node = self.nodes.get_mut(index)?;
                node.end = end;
                node.next = next;
                node.as_sent = as_sent;
            }
            b'"' => {
                let escaped = self.string()?;
                self.leaf(start, Token::Str { escaped });
            }
            b'-' | b'0'..=b'9' => {
                let verbatim = self.number()?;
                self.leaf(start, Token::Number { verbatim });
            }
            b't' => self.literal(start, b"true")?,
            b'f' => self.literal(start, b"false")?,
            b'n' => self.literal(start, b"null")?,
            _ => return None,
        }
        Some(())
    }

    fn literal(&mut self, start: usize, word: &[u8]) -> Option<()> {
        let end = start.checked_add(word.len())?;
        if !self.bytes.get(start..end)?.iter().eq(word) {
            return None;
        }
        self.pos = end;
        self.leaf(start, Token::Literal);
        Some(())
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        self.skip_whitespace();
        if self.peek()? == b']' {
            self.pos += 1;
            return Some(());
        }
        loop {
            self.value(depth + 1)?;
            self.skip_whitespace();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// The members of the object opened at `index`; whether its keys are in canonical (sorted) order.
    fn object(&mut self, index: usize, depth: usize) -> Option<bool> {
        self.skip_whitespace();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(true);
        }
        // Unescaped keys in strictly increasing order (their bytes are their value) are unique and canonical:
        // checked as they come, so such an object needs no second pass over its keys.
        let mut sorted = true;
        let mut previous: Option<&'a [u8]> = None;
        let bytes = self.bytes;
        loop {
            self.skip_whitespace();
            if self.peek()? != b'"' {
                return None;
            }
            let start = self.pos;
            let escaped = self.string()?;
            self.leaf(start, Token::Str { escaped });
            if sorted {
                let key = bytes.get(start + 1..self.pos - 1)?;
                sorted = !escaped && previous.is_none_or(|p| p < key);
                previous = Some(key);
            }
            self.expect(b':')?;
            self.value(depth + 1)?;
            self.skip_whitespace();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    break;
                }
                _ => return None,
            }
        }
        if sorted {
            return Some(true);
        }
        // Duplicate keys: the decoded keys, sorted, must all differ.
        let mut keys = core::mem::take(&mut self.keys);
        keys.clear();
        let mut child = index + 1;
        while child < self.nodes.len() {
            let key = self.nodes.get(child)?;
            // An escaped key is compared decoded; the rest as sent (the same bytes).
            keys.push(match key.token {
                Token::Str { escaped: false } => {
                    Cow::Borrowed(self.bytes.get(key.start + 1..key.end.checked_sub(1)?)?)
                }
                _ => decoded(self.bytes, key)?,
            });
            child = self.nodes.get(child + 1)?.next;
        }
        // Keys in strictly increasing order are unique (and canonical); otherwise most objects have a few
        // keys: comparing each pair (lengths first) beats sorting them.
        let in_order = keys.iter().zip(keys.iter().skip(1)).all(|(a, b)| a < b);
        let unique = if in_order {
            true
        } else if keys.len() <= 12 {
            keys.iter().enumerate().all(|(i, a)| {
                keys.iter()
                    .skip(i + 1)
                    .all(|b| a.len() != b.len() || a != b)
            })
        } else {
            keys.sort_unstable();
            keys.windows(2).all(|pair| pair.first() != pair.get(1))
        };
        keys.clear();
        self.keys = keys;
        unique.then_some(in_order)
    }

    /// A string at `pos` (its opening quote); whether it has escapes. Plain runs are skipped with a table
    /// (this loop is most of a big body's scan); UTF-8 is checked once per string that has non-ASCII bytes.
    fn string(&mut self) -> Option<bool> {
        let bytes = self.bytes;
        let content = self.pos + 1;
        let mut pos = content;
        let mut escaped = false;
        // Until the first non-ASCII byte; then the string gets one UTF-8 check at its end.
        let mut ascii = true;
        loop {
            // Eight bytes at a time: the first byte that ends the run comes out of the word's mask. The last
            // few bytes of the document go one by one.
            let stop = match bytes.get(pos..pos + 8) {
                Some(word) => {
                    let mask = stop_mask(u64::from_le_bytes(word.try_into().ok()?), ascii);
                    if mask == 0 {
                        pos += 8;
                        continue;
                    }
                    pos += (mask.trailing_zeros() / 8) as usize;
                    *bytes.get(pos)?
                }
                None => {
                    let stops = if ascii { &STOP_ASCII } else { &STOP_TEXT };
                    let rest = bytes.get(pos..)?;
                    let run = rest
                        .iter()
                        .position(|&b| stops.get(usize::from(b)).copied().unwrap_or(true))?;
                    pos += run;
                    *rest.get(run)?
                }
            };
            match stop {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.pos = pos + 1;
                    self.escape()?;
                    pos = self.pos;
                }
                0x80.. => ascii = false,
                _ => return None,
            }
        }
        if !ascii {
            core::str::from_utf8(bytes.get(content..pos)?).ok()?;
        }
        self.pos = pos + 1;
        Some(escaped)
    }

    /// The escape after a backslash at `pos - 1`.
    fn escape(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 1,
            b'u' => {
                self.pos += 1;
                let unit = self.hex4()?;
                if (0xDC00..0xE000).contains(&unit) {
                    return None;
                }
                if (0xD800..0xDC00).contains(&unit) {
                    if self.bytes.get(self.pos..self.pos + 2)? != b"\\u" {
                        return None;
                    }
                    self.pos += 2;
                    if !(0xDC00..0xE000).contains(&self.hex4()?) {
                        return None;
                    }
                }
            }
            _ => return None,
        }
        Some(())
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.bytes.get(self.pos..self.pos + 4)?;
        let mut unit = 0;
        for &d in digits {
            unit = unit * 16 + char::from(d).to_digit(16)?;
        }
        self.pos += 4;
        Some(unit)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    /// A number at `pos`; whether serde_json writes it back byte for byte (an integer it reads as
    /// `u64` or `i64`). Any other number is read by serde_json itself, which refuses the out-of-range.
    fn number(&mut self) -> Option<bool> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let int_start = self.pos;
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        let int_digits = self.pos - int_start;
        let mut verbatim = true;
        if self.peek() == Some(b'.') {
            verbatim = false;
            self.pos += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            verbatim = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        let text = self.bytes.get(start..self.pos)?;
        // At most 19 digits is below 10^19, within u64: a non-negative integer is written back as sent.
        if int_digits > 19 {
            verbatim = false;
        } else if verbatim && negative {
            let magnitude = self
                .bytes
                .get(int_start..self.pos)?
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            // serde_json reads `-0` as the float -0.0, and below i64::MIN as a float.
            if !(1..=1u64 << 63).contains(&magnitude) {
                verbatim = false;
            }
        }
        if !verbatim {
            serde_json::from_slice::<serde_json::Number>(text).ok()?;
        }
        Some(verbatim)
    }
}

/// The decoded bytes of the string `node` (borrowed when it has no escapes).
fn decoded<'a>(bytes: &'a [u8], node: &Node) -> Option<Cow<'a, [u8]>> {
    let raw = bytes.get(node.start..node.end)?;
    match node.token {
        Token::Str { escaped: false } => raw.get(1..raw.len().checked_sub(1)?).map(Cow::Borrowed),
        Token::Str { escaped: true } => serde_json::from_slice::<String>(raw)
            .ok()
            .map(|s| Cow::Owned(s.into_bytes())),
        _ => None,
    }
}

/// The value at `index` as a tree: what [`parse_strict`] makes of its bytes. A plain string, an integer
/// serde_json reads exactly and a literal are made directly (an id, a constrained argument); anything else is
/// parsed.
fn tree_at(view: &View<'_>, index: usize) -> Option<Value> {
    let node = view.nodes.get(index)?;
    let bytes = view.bytes_of(index)?;
    match node.token {
        Token::Str { escaped: false } => {
            let text = core::str::from_utf8(bytes.get(1..bytes.len().checked_sub(1)?)?).ok()?;
            return Some(Value::String(text.to_owned()));
        }
        // Verbatim integers are what serde_json reads as u64 (non-negative) or i64 (negative).
        Token::Number { verbatim: true } => {
            let text = core::str::from_utf8(bytes).ok()?;
            let number = if bytes.first() == Some(&b'-') {
                text.parse::<i64>().ok().map(Value::from)
            } else {
                text.parse::<u64>().ok().map(Value::from)
            };
            if number.is_some() {
                return number;
            }
        }
        Token::Literal => match bytes {
            b"true" => return Some(Value::Bool(true)),
            b"false" => return Some(Value::Bool(false)),
            b"null" => return Some(Value::Null),
            _ => {}
        },
        _ => {}
    }
    parse_strict(bytes, SCAN_DEPTH_CAP + 1).ok()
}

/// The spans of one document or value, borrowed.
#[derive(Clone, Copy)]
struct View<'a> {
    bytes: &'a [u8],
    nodes: &'a [Node],
}

impl<'a> View<'a> {
    fn bytes_of(&self, index: usize) -> Option<&'a [u8]> {
        let node = self.nodes.get(index)?;
        self.bytes.get(node.start..node.end)
    }

    /// The decoded bytes of the string at `index` (borrowed when it has no escapes).
    fn key(&self, index: usize) -> Option<Cow<'a, [u8]>> {
        decoded(self.bytes, self.nodes.get(index)?)
    }

    /// The members of the object at `index`: (key index, value index) in document order.
    fn members(&self, index: usize) -> impl Iterator<Item = (usize, usize)> + 'a {
        let nodes = self.nodes;
        let end = nodes.get(index).map_or(0, |n| n.next);
        let mut child = index + 1;
        core::iter::from_fn(move || {
            if child >= end {
                return None;
            }
            let key = child;
            let value = nodes.get(key + 1)?;
            child = value.next;
            Some((key, key + 1))
        })
    }

    /// The value of `key` in the object at `index`.
    fn member(&self, index: usize, key: &str) -> Option<usize> {
        if self.nodes.get(index)?.token != Token::Object {
            return None;
        }
        self.members(index)
            .find(|&(k, _)| self.key(k).as_deref() == Some(key.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The canonical form of the value at `index` (what [`canonical`] writes for its `Value`).
    fn write_canonical(&self, index: usize, out: &mut impl Sink) -> Option<()> {
        let node = self.nodes.get(index)?;
        if node.as_sent {
            out.put(self.bytes_of(index)?);
            return Some(());
        }
        match node.token {
            Token::Literal | Token::Str { escaped: false } | Token::Number { verbatim: true } => {
                out.put(self.bytes_of(index)?)
            }
            Token::Str { escaped: true } => {
                let text: String = serde_json::from_slice(self.bytes_of(index)?).ok()?;
                write_string(&text, out);
            }
            Token::Number { verbatim: false } => {
                let number: serde_json::Number =
                    serde_json::from_slice(self.bytes_of(index)?).ok()?;
                let mut text = Vec::with_capacity(24);
                serde_json::to_writer(&mut text, &number).ok()?;
                out.put(&text);
            }
            Token::Array => {
                out.put(b"[");
                let mut child = index + 1;
                while child < node.next {
                    if child > index + 1 {
                        out.put(b",");
                    }
                    self.write_canonical(child, out)?;
                    child = self.nodes.get(child)?.next;
                }
                out.put(b"]");
            }
            Token::Object => {
                let mut members = Vec::new();
                for (key, value) in self.members(index) {
                    members.push((self.key(key)?, key, value));
                }
                members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                out.put(b"{");
                for (i, (_, key, value)) in members.into_iter().enumerate() {
                    if i > 0 {
                        out.put(b",");
                    }
                    self.write_canonical(key, out)?;
                    out.put(b":");
                    self.write_canonical(value, out)?;
                }
                out.put(b"}");
            }
        }
        Some(())
    }
}

impl<'a> Scan<'a> {
    fn view(&self) -> View<'_> {
        View {
            bytes: self.bytes,
            nodes: &self.nodes,
        }
    }

    /// The top-level value.
    pub fn root(&self) -> ValueRef {
        ValueRef(0)
    }

    /// The value of `key` when `of` is an object that has it.
    pub fn member(&self, of: ValueRef, key: &str) -> Option<ValueRef> {
        self.view().member(of.0, key).map(ValueRef)
    }

    pub fn is_object(&self, value: ValueRef) -> bool {
        self.nodes.get(value.0).map(|n| n.token) == Some(Token::Object)
    }

    pub fn is_string(&self, value: ValueRef) -> bool {
        matches!(
            self.nodes.get(value.0).map(|n| n.token),
            Some(Token::Str { .. })
        )
    }

    pub fn is_number(&self, value: ValueRef) -> bool {
        matches!(
            self.nodes.get(value.0).map(|n| n.token),
            Some(Token::Number { .. })
        )
    }

    pub fn is_null(&self, value: ValueRef) -> bool {
        self.view().bytes_of(value.0) == Some(b"null")
    }

    /// `value` as a tree, read from its bytes by [`parse_strict`] (so exactly the tree's value).
    pub fn to_value(&self, value: ValueRef) -> Option<Value> {
        tree_at(&self.view(), value.0)
    }

    /// The decoded text when `value` is a string.
    pub fn as_str(&self, value: ValueRef) -> Option<Cow<'a, str>> {
        match decoded(self.bytes, self.nodes.get(value.0)?)? {
            Cow::Borrowed(b) => core::str::from_utf8(b).ok().map(Cow::Borrowed),
            Cow::Owned(b) => String::from_utf8(b).ok().map(Cow::Owned),
        }
    }

    /// Where `value` is in the document's bytes.
    pub fn span(&self, value: ValueRef) -> Option<core::ops::Range<usize>> {
        self.nodes.get(value.0).map(|n| n.start..n.end)
    }

    /// `value` on its own, owned.
    pub fn to_raw(&self, value: ValueRef) -> Option<RawJson> {
        self.nodes.get(value.0)?;
        Some(RawJson {
            bytes: self.bytes.into(),
            nodes: self.nodes.clone(),
            root: value.0,
        })
    }

    /// `value` on its own, owned, without copying the spans.
    pub fn into_raw(self, value: ValueRef) -> Option<RawJson> {
        self.nodes.get(value.0)?;
        Some(RawJson {
            bytes: self.bytes.into(),
            nodes: self.nodes,
            root: value.0,
        })
    }
}

/// A value in a [`Scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueRef(usize);

impl RawJson {
    fn view(&self) -> View<'_> {
        View {
            bytes: &self.bytes,
            nodes: &self.nodes,
        }
    }

    /// The value's bytes as they were sent (UTF-8: the scan checked every string, the rest is ASCII).
    pub fn as_str(&self) -> Option<&str> {
        core::str::from_utf8(self.view().bytes_of(self.root)?).ok()
    }

    /// The value as a tree (it was checked when scanned; this parses it again).
    pub fn to_value(&self) -> Result<Value, JsonError> {
        parse_strict(
            self.view().bytes_of(self.root).unwrap_or_default(),
            SCAN_DEPTH_CAP + 1,
        )
    }

    /// The value at the JSON pointer `pointer` (RFC 6901, read as `Value::pointer` reads it), as a tree.
    pub fn pointer(&self, pointer: &str) -> Option<Value> {
        let view = self.view();
        let mut at = self.root;
        if !pointer.is_empty() {
            for token in pointer.strip_prefix('/')?.split('/') {
                let token = unescape_pointer_token(token);
                let node = view.nodes.get(at)?;
                at = match node.token {
                    Token::Object => view.member(at, &token)?,
                    Token::Array => {
                        let wanted = array_index(&token)?;
                        let mut child = at + 1;
                        for _ in 0..wanted {
                            child = view.nodes.get(child)?.next;
                        }
                        if child >= node.next {
                            return None;
                        }
                        child
                    }
                    _ => return None,
                };
            }
        }
        tree_at(&view, at)
    }

    /// Its canonical form, as [`canonical`] writes the same value's tree.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.nodes.get(self.root).map_or(0, |n| n.end - n.start));
        let _ = self.view().write_canonical(self.root, &mut out);
        out
    }

    /// The SHA-256 of its canonical form, streamed into the hash (no canonical copy).
    pub fn canonical_sha256(&self) -> [u8; 32] {
        let mut out = HashSink::default();
        let _ = self.view().write_canonical(self.root, &mut out);
        out.finish()
    }
}

/// Where the canonical writer puts its bytes.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Feeds SHA-256 in chunks: the canonical writer's many one-byte writes go to a buffer first.
struct HashSink {
    hasher: Sha256,
    buffer: [u8; 256],
    len: usize,
}

impl Default for HashSink {
    fn default() -> Self {
        Self {
            hasher: Sha256::new(),
            buffer: [0; 256],
            len: 0,
        }
    }
}

impl HashSink {
    fn flush(&mut self) {
        self.hasher
            .update(self.buffer.get(..self.len).unwrap_or_default());
        self.len = 0;
    }

    fn finish(mut self) -> [u8; 32] {
        self.flush();
        self.hasher.finalize().into()
    }
}

impl Sink for HashSink {
    fn put(&mut self, bytes: &[u8]) {
        if let Some(room) = self.buffer.get_mut(self.len..self.len + bytes.len()) {
            room.copy_from_slice(bytes);
            self.len += bytes.len();
            return;
        }
        self.flush();
        if let Some(room) = self.buffer.get_mut(..bytes.len()) {
            room.copy_from_slice(bytes);
            self.len = bytes.len();
        } else {
            self.hasher.update(bytes);
        }
    }
}

/// JSON texts as clients may send them (any spacing and key order, escapes serde_json never writes, keys
/// that repeat, numbers of every shape), for the tests that hold the scan to `parse_strict`.
#[cfg(test)]
pub(crate) mod texts {
    use proptest::prelude::*;

    fn render_string(chars: &[(char, u8)]) -> String {
        let mut out = String::from("\"");
        for &(c, style) in chars {
            let short = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '/' if style == 2 => Some("\\/"),
                '\n' => Some("\\n"),
                '\t' => Some("\\t"),
                '\u{8}' => Some("\\b"),
                '\u{c}' => Some("\\f"),
                '\r' => Some("\\r"),
                _ => None,
            };
            match (short, style) {
                (_, 1) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
                (Some(text), _) => out.push_str(text),
                (None, _) if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                (None, _) => out.push(c),
            }
        }
        out.push('"');
        out
    }

    pub(crate) fn string() -> impl Strategy<Value = String> {
        prop::collection::vec(
            (
                prop_oneof![
                    4 => prop::char::range('a', 'c'),
                    1 => Just('/'),
                    1 => Just('"'),
                    1 => Just('\\'),
                    1 => prop::char::range('\u{0}', '\u{1f}'),
                    1 => Just('é'),
                    1 => Just('\u{1F600}'),
                    1 => Just('\u{7f}'),
                ],
                0u8..3,
            ),
            0..5,
        )
        .prop_map(|chars| render_string(&chars))
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| n.to_string()),
            "-?(0|[1-9][0-9]{0,21})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
            Just("-0".to_string()),
            Just("-9223372036854775808".to_string()),
            Just("-9223372036854775809".to_string()),
            Just("18446744073709551616".to_string()),
            Just("1e400".to_string()),
        ]
    }

    fn space() -> impl Strategy<Value = &'static str> {
        prop_oneof![6 => Just(""), 1 => Just(" "), 1 => Just("\n\t "), 1 => Just("\r")]
    }

    /// One JSON text (always well-formed; duplicate keys and numbers out of range do occur).
    pub(crate) fn text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            number(),
            string(),
        ];
        leaf.prop_recursive(5, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec((inner.clone(), space()), 0..5).prop_map(|items| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(v, s)| format!("{s}{v}{s}"))
                        .collect();
                    format!("[{}]", items.join(","))
                }),
                prop::collection::vec((string(), inner, space()), 0..5).prop_map(|members| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(k, v, s)| format!("{s}{k}{s}:{s}{v}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }
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

    /// What the scan accepts, `parse_strict` accepts, with the same value and the same canonical form.
    fn scan_agrees(bytes: &[u8], max_depth: usize) -> Result<bool, TestCaseError> {
        let strict = parse_strict(bytes, max_depth);
        let Some(scanned) = scan(bytes, max_depth) else {
            return Ok(false);
        };
        let tree = match strict {
            Ok(tree) => tree,
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "scan accepted what parse_strict refused: {e}"
                )))
            }
        };
        // Every value's tree, made directly or parsed, is parse_strict's reading of its bytes.
        let view = scanned.view();
        for index in 0..scanned.nodes.len() {
            let expected = parse_strict(view.bytes_of(index).unwrap(), SCAN_DEPTH_CAP + 1).ok();
            prop_assert_eq!(tree_at(&view, index), expected);
        }
        let raw = scanned.to_raw(scanned.root()).unwrap();
        prop_assert_eq!(raw.as_str().map(str::as_bytes), Some(bytes.trim_ascii()));
        prop_assert_eq!(raw.to_value().unwrap(), tree.clone());
        let expected = canonical(&tree);
        let mine = raw.canonical();
        prop_assert_eq!(
            String::from_utf8_lossy(&mine),
            String::from_utf8_lossy(&expected)
        );
        prop_assert_eq!(raw.canonical_sha256(), crate::encoding::sha256(&expected));
        Ok(true)
    }

    #[test]
    fn scan_examples() {
        for (text, taken) in [
            (
                r#"{"b":[1,2.5,-0,1e2,"x\u00e9\/"],"a":{"\u0061":null}}"#,
                true,
            ),
            (r#"{"a":1,"\u0061":2}"#, false),
            (r#"{"a":{"k":1,"k":1}}"#, false),
            (r#""\ud800""#, false),
            (r#""\ud83d\ude00""#, true),
            ("[1,]", false),
            ("01", false),
            ("1e400", false),
            (" {} ", true),
        ] {
            let taken_now = scan(text.as_bytes(), 8).is_some();
            assert_eq!(taken_now, taken, "{text}");
            if taken {
                let raw = scan(text.as_bytes(), 8).unwrap();
                let raw = raw.to_raw(raw.root()).unwrap();
                assert_eq!(
                    raw.canonical(),
                    canonical(&parse_strict(text.as_bytes(), 8).unwrap()),
                    "{text}"
                );
            }
        }
        assert!(scan(b"[[[]]]", 2).is_none() && scan(b"[[[]]]", 3).is_some());
    }

    #[test]
    fn pointers_read_as_serde_jsons() {
        let text = r#"{"a":[10,{"b/c":{"~":true}},[]],"":1,"e\u0301":"x","0":{"01":2}}"#;
        let tree = parse_strict(text.as_bytes(), 8).unwrap();
        let scanned = scan(text.as_bytes(), 8).unwrap();
        let raw = scanned.to_raw(scanned.root()).unwrap();
        for pointer in [
            "",
            "/",
            "/a",
            "/a/0",
            "/a/1",
            "/a/1/b~1c",
            "/a/1/b~1c/~0",
            "/a/2",
            "/a/2/0",
            "/a/3",
            "/a/01",
            "/a/+1",
            "/a/-1",
            "/a/x",
            "a",
            "/e\u{301}",
            "/0/01",
            "/0/1",
            "/a/0/x",
            "/zz",
        ] {
            assert_eq!(
                raw.pointer(pointer),
                tree.pointer(pointer).cloned(),
                "{pointer}"
            );
            assert_eq!(
                super::pointer(&tree, pointer),
                tree.pointer(pointer),
                "{pointer}"
            );
        }
        for pointer in ["/a~01", "/~1", "/~2", "/a~", "//", "/a//"] {
            let odd =
                serde_json::json!({"a~1": 1, "/": 2, "~2": 3, "a~": 4, "": {"": 5}, "a": {"": 6}});
            assert_eq!(
                super::pointer(&odd, pointer),
                odd.pointer(pointer),
                "{pointer}"
            );
        }
    }

    proptest! {
        #[test]
        fn plain_words_have_no_stop_byte(
            bytes in prop_oneof![
                any::<[u8; 8]>(),
                prop::array::uniform8(prop::sample::select(vec![
                    0x00, 0x01, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x5b, 0x5c, 0x5d, 0x61, 0x7f, 0x80, 0xa2, 0xdc, 0xff,
                ])),
                prop::array::uniform8(0x20u8..0x7f),
            ],
            ascii in any::<bool>(),
        ) {
            let table = if ascii { &STOP_ASCII } else { &STOP_TEXT };
            let expected = bytes.iter().all(|&b| !table[usize::from(b)]);
            prop_assert_eq!(plain_word(u64::from_le_bytes(bytes), ascii), expected);
            // The first stop byte is where the mask's lowest bit says.
            let first = bytes.iter().position(|&b| table[usize::from(b)]);
            let mask = stop_mask(u64::from_le_bytes(bytes), ascii);
            prop_assert_eq!(first, (mask != 0).then(|| (mask.trailing_zeros() / 8) as usize));
        }

        #[test]
        fn scan_is_parse_strict_on_json_texts(text in texts::text(), max_depth in 1usize..8) {
            let taken = scan_agrees(text.as_bytes(), max_depth)?;
            // The texts avoid what the scan leaves to parse_strict (lone surrogates, the depth bound, numbers
            // out of range, duplicate keys), so whatever parse_strict accepts the scan takes too.
            if !taken && parse_strict(text.as_bytes(), max_depth).is_ok() {
                let deep = parse_strict(text.as_bytes(), max_depth.saturating_sub(1)).is_err();
                prop_assert!(deep, "scan refused {}", text);
            }
        }

        #[test]
        fn scan_is_parse_strict_on_damaged_texts(
            text in texts::text(),
            at in any::<prop::sample::Index>(),
            byte in prop_oneof![any::<u8>(), prop::sample::select(b"{}[]\",:\\ 0e.-u".to_vec())],
            insert in any::<bool>(),
        ) {
            let mut bytes = text.into_bytes();
            let i = at.index(bytes.len() + 1);
            if insert || i == bytes.len() {
                bytes.insert(i, byte);
            } else {
                bytes[i] = byte;
            }
            scan_agrees(&bytes, 6)?;
        }

        #[test]
        fn scan_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = scan_agrees(&bytes, 8);
        }
    }
}

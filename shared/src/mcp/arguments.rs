//! `params.arguments` of a `tools/call`: read once, kept as sent, hashed in canonical form, and made into a
//! tree only for what reads one (argument constraints, `audit.arguments: "full"`).

use core::fmt;

use serde_json::Value;

use crate::json::{self, JsonError, RawJson};

/// The arguments of a call, always an object. A `tools/call` read by the typed reader keeps their bytes
/// (checked as strictly as the rest of the body); otherwise they are a tree.
#[derive(Clone)]
pub struct Arguments(Repr);

#[derive(Clone)]
enum Repr {
    Raw(RawJson),
    Tree(Value),
}

impl Arguments {
    pub(super) fn from_raw(raw: RawJson) -> Self {
        Self(Repr::Raw(raw))
    }

    /// The arguments as a tree. Bytes kept by the typed reader were already checked, so this does not fail
    /// in practice; a caller that gets an error must refuse the call.
    pub fn to_value(&self) -> Result<Value, JsonError> {
        match &self.0 {
            Repr::Raw(raw) => raw.to_value(),
            Repr::Tree(value) => Ok(value.clone()),
        }
    }

    /// The SHA-256 of their canonical form (keys sorted, no whitespace): the audit's `arguments_sha256`.
    pub fn canonical_sha256(&self) -> [u8; 32] {
        match &self.0 {
            Repr::Raw(raw) => raw.canonical_sha256(),
            Repr::Tree(value) => crate::encoding::sha256(&json::canonical(value)),
        }
    }

    /// The value at the JSON pointer `pointer`, as `Value::pointer` finds it; only that value becomes a tree.
    pub fn pointer(&self, pointer: &str) -> Option<Value> {
        match &self.0 {
            Repr::Raw(raw) => raw.pointer(pointer),
            Repr::Tree(value) => json::pointer(value, pointer).cloned(),
        }
    }

    /// The bytes as the client sent them, when kept.
    pub fn raw(&self) -> Option<&str> {
        match &self.0 {
            Repr::Raw(raw) => raw.as_str(),
            Repr::Tree(_) => None,
        }
    }
}

impl From<Value> for Arguments {
    fn from(value: Value) -> Self {
        Self(Repr::Tree(value))
    }
}

/// Equal when they are the same JSON value, however they were kept.
impl PartialEq for Arguments {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Raw(a), Repr::Raw(b)) if a == b => true,
            (_, Repr::Tree(b)) => self == b,
            _ => other.to_value().is_ok_and(|b| *self == b),
        }
    }
}

impl PartialEq<Value> for Arguments {
    fn eq(&self, other: &Value) -> bool {
        self.to_value().is_ok_and(|v| v == *other)
    }
}

/// Arguments can carry personal data: only their size and hash are printed.
impl fmt::Debug for Arguments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arguments")
            .field(
                "sha256",
                &crate::encoding::hex_lower(&self.canonical_sha256()),
            )
            .finish_non_exhaustive()
    }
}

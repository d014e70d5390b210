//! Host-verified mode (once called hybrid): Envoy's native `jwt_authn` verifies the Transaction Token's signature (BoringSSL, far faster
//! than P-256 in Wasm) and publishes the verified payload as dynamic metadata (`payload_in_metadata`); the
//! filter applies every other txngate rule to the same token. The filter never trusts a header for this:
//! only dynamic metadata, which no client can set, and only when that payload equals the token's own
//! payload claim for claim ([`HostVerified::attest`]). No metadata (jwt_authn missing, placed after the
//! filter, its rule not matching the route, the token refused) or another token's payload: 401
//! `token.host_unverified`, never an accept.
//!
//! Configuration: the plugin configuration is the policy JSON plus one adapter key, removed before the
//! policy is compiled (`hybrid_jwt_authn`, its first spelling, is accepted as well):
//!
//! ```json
//! { "host_verified_jwt_authn": { "payload_in_metadata": "txn_payload" }, "trust_domain": "...", ... }
//! ```
//!
//! `payload_in_metadata` must name the same key as the `jwt_authn` provider's `payload_in_metadata`; the
//! metadata namespace is jwt_authn's (`envoy.filters.http.jwt_authn`, or `metadata_namespace` to override).
//!
//! The metadata is read as the protobuf encoding of the stream's `envoy.config.core.v3.Metadata` (property
//! `metadata`), decoded here with a small bounded reader: `filter_metadata` (map<string, Struct>) →
//! `Struct` → JSON, numbers as f64 (what `Struct` keeps).

use serde_json::{Map, Number, Value};
use txngate_core::token::{HostVerified, TokenError};

/// The adapter key of the plugin configuration that turns host-verified mode on.
pub const CONFIG_KEY: &str = "host_verified_jwt_authn";
/// The key's first spelling (the mode was called hybrid), still accepted.
pub const LEGACY_CONFIG_KEY: &str = "hybrid_jwt_authn";
/// jwt_authn's dynamic metadata namespace.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
/// Nesting bound for decoded `Struct` values: the core's for token payloads.
use txngate_core::token::MAX_CLAIMS_DEPTH as MAX_DEPTH;

/// Where jwt_authn's verified payload is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthn {
    pub namespace: String,
    pub payload_key: String,
}

/// Why the host-verified configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `key`: the spelling the configuration used.
    Field {
        key: &'static str,
        field: &'static str,
        expected: &'static str,
    },
    Unknown {
        key: &'static str,
        member: String,
    },
    /// Both spellings of the key.
    Twice,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Field {
                key,
                field,
                expected,
            } => write!(f, "{key}.{field} must be {expected}"),
            Self::Unknown { key, member } => write!(f, "{key}: unknown member {member:?}"),
            Self::Twice => write!(
                f,
                "{CONFIG_KEY} and {LEGACY_CONFIG_KEY} are the same setting: give one"
            ),
        }
    }
}

/// Reads the value of the `host_verified_jwt_authn` (or `hybrid_jwt_authn`) key (see [`crate::plugin`]).
pub fn from_value(key: &'static str, section: Value) -> Result<JwtAuthn, ConfigError> {
    let Value::Object(section) = section else {
        return Err(ConfigError::Field {
            key,
            field: "",
            expected: "an object",
        });
    };
    let mut jwt_authn = JwtAuthn {
        namespace: JWT_AUTHN_NAMESPACE.to_string(),
        payload_key: String::new(),
    };
    for (member, value) in section {
        let text = value.as_str().filter(|s| !s.is_empty());
        match member.as_str() {
            "payload_in_metadata" => {
                jwt_authn.payload_key = text
                    .ok_or(ConfigError::Field {
                        key,
                        field: "payload_in_metadata",
                        expected: "a non-empty string (jwt_authn's payload_in_metadata)",
                    })?
                    .to_string();
            }
            "metadata_namespace" => {
                jwt_authn.namespace = text
                    .ok_or(ConfigError::Field {
                        key,
                        field: "metadata_namespace",
                        expected: "a non-empty string",
                    })?
                    .to_string();
            }
            _ => return Err(ConfigError::Unknown { key, member }),
        }
    }
    if jwt_authn.payload_key.is_empty() {
        return Err(ConfigError::Field {
            key,
            field: "payload_in_metadata",
            expected: "a non-empty string (jwt_authn's payload_in_metadata)",
        });
    }
    Ok(jwt_authn)
}

impl JwtAuthn {
    /// The attestation for this request: `metadata` is the protobuf `Metadata` Envoy returned for the
    /// `metadata` property (None when it had none), `token` the token header's value.
    pub fn attest(
        &self,
        metadata: Option<&[u8]>,
        token: Option<&str>,
        max_bytes: usize,
    ) -> Result<HostVerified, TokenError> {
        let claims = metadata.and_then(|m| self.verified_payload(m));
        let Some(token) = token else {
            return Err(TokenError::HostUnverified {
                detail: "no token header",
            });
        };
        HostVerified::attest(token, max_bytes, claims.as_ref())
    }

    /// The payload jwt_authn published, as JSON; None when absent or not decodable (fail closed).
    pub fn verified_payload(&self, metadata: &[u8]) -> Option<Value> {
        let filter = map_entries(metadata, 1)
            .ok()?
            .into_iter()
            .find(|(k, _)| *k == self.namespace.as_bytes())?
            .1;
        let value = map_entries(filter, 1)
            .ok()?
            .into_iter()
            .find(|(k, _)| *k == self.payload_key.as_bytes())?
            .1;
        match decode_value(value, 0).ok()? {
            v @ Value::Object(_) => Some(v),
            _ => None,
        }
    }
}

// -- a minimal, bounded protobuf reader ------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Malformed;

enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self.rest.split_first().ok_or(Malformed)?;
            self.rest = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Malformed)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n > self.rest.len() {
            return Err(Malformed);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, Malformed> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                let bytes: [u8; 8] = self.take(8)?.try_into().map_err(|_| Malformed)?;
                Field::Fixed64(u64::from_le_bytes(bytes))
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| Malformed)?;
                Field::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Field::Fixed32
            }
            _ => return Err(Malformed),
        };
        Ok(Some((key >> 3, field)))
    }
}

/// One protobuf map entry: (key bytes, value message bytes).
type Entry<'a> = (&'a [u8], &'a [u8]);

/// The entries of the map field `number` of a message.
fn map_entries(message: &[u8], number: u64) -> Result<Vec<Entry<'_>>, Malformed> {
    let mut out = Vec::new();
    let mut reader = Reader { rest: message };
    while let Some((n, field)) = reader.next()? {
        let (true, Field::Bytes(entry)) = (n == number, field) else {
            continue;
        };
        let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
        let mut inner = Reader { rest: entry };
        while let Some((n, field)) = inner.next()? {
            match (n, field) {
                (1, Field::Bytes(k)) => key = k,
                (2, Field::Bytes(v)) => value = v,
                _ => {}
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

/// `google.protobuf.Struct` → JSON object.
fn decode_struct(message: &[u8], depth: usize) -> Result<Value, Malformed> {
    let mut map = Map::new();
    for (key, value) in map_entries(message, 1)? {
        let key = core::str::from_utf8(key).map_err(|_| Malformed)?;
        map.insert(key.to_string(), decode_value(value, depth + 1)?);
    }
    Ok(Value::Object(map))
}

/// `google.protobuf.Value` → JSON (an unset kind, which protobuf allows, is refused).
fn decode_value(message: &[u8], depth: usize) -> Result<Value, Malformed> {
    if depth > MAX_DEPTH {
        return Err(Malformed);
    }
    let mut value = None;
    let mut reader = Reader { rest: message };
    while let Some((n, field)) = reader.next()? {
        value = Some(match (n, field) {
            (1, Field::Varint(_)) => Value::Null,
            (2, Field::Fixed64(bits)) => {
                Value::Number(Number::from_f64(f64::from_bits(bits)).ok_or(Malformed)?)
            }
            (3, Field::Bytes(s)) => {
                Value::String(core::str::from_utf8(s).map_err(|_| Malformed)?.to_string())
            }
            (4, Field::Varint(b)) => Value::Bool(b != 0),
            (5, Field::Bytes(s)) => decode_struct(s, depth + 1)?,
            (6, Field::Bytes(list)) => {
                let mut items = Vec::new();
                let mut inner = Reader { rest: list };
                while let Some((n, field)) = inner.next()? {
                    if let (1, Field::Bytes(item)) = (n, field) {
                        items.push(decode_value(item, depth + 1)?);
                    }
                }
                Value::Array(items)
            }
            _ => continue,
        });
    }
    value.ok_or(Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn len_field(n: u64, bytes: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    fn entry(key: &str, value: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        len_field(1, key.as_bytes(), &mut e);
        len_field(2, value, &mut e);
        e
    }

    /// The protobuf encoding of a JSON value as `google.protobuf.Value` (what Envoy produces).
    fn encode_value(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        match v {
            Value::Null => {
                varint(1 << 3, &mut out);
                out.push(0);
            }
            Value::Bool(b) => {
                varint(4 << 3, &mut out);
                varint(u64::from(*b), &mut out);
            }
            Value::Number(n) => {
                varint(2 << 3 | 1, &mut out);
                out.extend_from_slice(&n.as_f64().unwrap().to_bits().to_le_bytes());
            }
            Value::String(s) => len_field(3, s.as_bytes(), &mut out),
            Value::Array(items) => {
                let mut list = Vec::new();
                for i in items {
                    len_field(1, &encode_value(i), &mut list);
                }
                len_field(6, &list, &mut out);
            }
            Value::Object(_) => len_field(5, &encode_struct(v), &mut out),
        }
        out
    }

    fn encode_struct(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in v.as_object().unwrap() {
            len_field(1, &entry(k, &encode_value(v)), &mut out);
        }
        out
    }

    fn metadata(namespace: &str, key: &str, payload: &Value) -> Vec<u8> {
        let mut filter = Vec::new();
        len_field(1, &entry(key, &encode_value(payload)), &mut filter);
        let mut out = Vec::new();
        len_field(1, &entry("envoy.filters.http.mcp", &[]), &mut out);
        len_field(1, &entry(namespace, &filter), &mut out);
        out
    }

    fn jwt_authn() -> JwtAuthn {
        from_value(CONFIG_KEY, json!({"payload_in_metadata": "txn_payload"})).unwrap()
    }

    #[test]
    fn decodes_the_payload_jwt_authn_published() {
        let payload = json!({"sub": "a", "iat": 1_800_000_000, "act": {"sub": "b"}, "aud": ["x", "y"], "f": false, "n": null});
        let meta = metadata(JWT_AUTHN_NAMESPACE, "txn_payload", &payload);
        let got = jwt_authn().verified_payload(&meta).unwrap();
        assert_eq!(got["sub"], "a");
        assert_eq!(got["iat"].as_f64(), Some(1.8e9));
        assert_eq!(got["act"], json!({"sub": "b"}));
        assert_eq!(got["aud"], json!(["x", "y"]));
        assert_eq!(got["n"], Value::Null);
    }

    #[test]
    fn absent_or_other_metadata_gives_nothing() {
        let h = jwt_authn();
        assert!(h.verified_payload(&[]).is_none());
        let other = metadata(JWT_AUTHN_NAMESPACE, "other_key", &json!({"sub": "a"}));
        assert!(h.verified_payload(&other).is_none());
        let other = metadata(
            "envoy.filters.http.ext_authz",
            "txn_payload",
            &json!({"sub": "a"}),
        );
        assert!(h.verified_payload(&other).is_none());
        let mut truncated = metadata(JWT_AUTHN_NAMESPACE, "txn_payload", &json!({"sub": "a"}));
        truncated.pop();
        assert!(h.verified_payload(&truncated).is_none());
    }
}

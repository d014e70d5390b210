//! proxy-wasm ABI 0.2.1 constants and the map (header pairs) wire format.

use serde::Serialize;

/// Status codes returned by host calls (`WasmResult` in proxy-wasm-cpp-host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl Status {
    pub(crate) fn code(self) -> i32 {
        self as i32
    }
}

/// `MapType` of the ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapKind {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    GrpcInitialMetadata,
    GrpcTrailingMetadata,
    CallResponseHeaders,
    CallResponseTrailers,
}

impl MapKind {
    pub(crate) fn from_abi(v: i32) -> Option<MapKind> {
        Some(match v {
            0 => MapKind::RequestHeaders,
            1 => MapKind::RequestTrailers,
            2 => MapKind::ResponseHeaders,
            3 => MapKind::ResponseTrailers,
            4 => MapKind::GrpcInitialMetadata,
            5 => MapKind::GrpcTrailingMetadata,
            6 => MapKind::CallResponseHeaders,
            7 => MapKind::CallResponseTrailers,
            _ => return None,
        })
    }
}

/// `BufferType` of the ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BufferKind {
    RequestBody,
    ResponseBody,
    DownstreamData,
    UpstreamData,
    CallResponseBody,
    GrpcReceive,
    VmConfiguration,
    PluginConfiguration,
    CallData,
}

impl BufferKind {
    pub(crate) fn from_abi(v: i32) -> Option<BufferKind> {
        Some(match v {
            0 => BufferKind::RequestBody,
            1 => BufferKind::ResponseBody,
            2 => BufferKind::DownstreamData,
            3 => BufferKind::UpstreamData,
            4 => BufferKind::CallResponseBody,
            5 => BufferKind::GrpcReceive,
            6 => BufferKind::VmConfiguration,
            7 => BufferKind::PluginConfiguration,
            8 => BufferKind::CallData,
            _ => return None,
        })
    }
}

/// Log levels of the ABI (same numbering as Envoy's spdlog levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub(crate) fn from_abi(v: i32) -> Option<LogLevel> {
        Some(match v {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }

    /// Short lowercase name (`info`, `warn`...).
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
        }
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serializes pairs the way the SDK expects them: `u32 count`, then `count` times
/// `(u32 key_len, u32 value_len)`, then every key and value each followed by a NUL byte.
pub(crate) fn serialize_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut size = 4;
    for (k, v) in pairs {
        size += 8 + k.as_ref().len() + v.as_ref().len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at + 4)?;
    let arr: [u8; 4] = b.try_into().ok()?;
    Some(u32::from_le_bytes(arr) as usize)
}

/// Parses the pairs wire format; `None` when malformed. An empty input is an empty map.
pub(crate) fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)?;
    if count > bytes.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    let mut p = 4 + count.checked_mul(8)?;
    for n in 0..count {
        let s = 4 + n * 8;
        let klen = read_u32(bytes, s)?;
        let vlen = read_u32(bytes, s + 4)?;
        let key = bytes.get(p..p.checked_add(klen)?)?.to_vec();
        p += klen + 1;
        let value = bytes.get(p..p.checked_add(vlen)?)?.to_vec();
        p += vlen + 1;
        out.push((key, value));
    }
    Some(out)
}

/// Header maps are kept as `(lowercase name, value)` pairs in order, like Envoy's.
pub(crate) fn pairs_to_headers(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).to_ascii_lowercase(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_roundtrip() {
        let pairs = vec![
            (":method".to_string(), "GET".to_string()),
            ("x-empty".to_string(), String::new()),
        ];
        let bytes = serialize_pairs(&pairs);
        assert_eq!(&bytes[0..4], &[2, 0, 0, 0]);
        let back = pairs_to_headers(deserialize_pairs(&bytes).unwrap());
        assert_eq!(back, pairs);
    }

    #[test]
    fn malformed_pairs_are_rejected() {
        assert!(deserialize_pairs(&[5, 0, 0, 0, 1]).is_none());
        assert_eq!(deserialize_pairs(&[]).unwrap().len(), 0);
    }
}

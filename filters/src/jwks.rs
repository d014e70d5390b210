//! Host-free pieces of JWKS fetching: where to send the request, how a fetched set is shared between VMs,
//! and how failures back off. The proxy-wasm glue (`filter.rs`) does the calls.
//!
//! Sharing: a VM that fetched and installed a set writes it to shared data under two keys, the body and a
//! meta record `fetched_ms ‖ sha256(body)` (written last). Every VM's tick reads the meta record (40 bytes)
//! and, when it is newer than what the VM has, reads the body, checks its hash (a reader between the two
//! writes of another VM sees a mismatch and simply tries again next tick) and installs it with the original
//! fetch time, so staleness is measured from the real fetch on every VM and all VMs converge on one set.
//! A third key is a claim (`held_until_ms`) that keeps several VMs from fetching the same URI at once: taken
//! for [`CLAIM_MS`] by the fetching VM, released on success, and held for the backoff after a failure, so
//! all VMs together retry a failing server once per backoff period, not once per VM; a
//! fourth (`refetched_at_ms`) spreads the core's per-VM debounce of unknown-`kid` refetches over all VMs.

use txngate_core::encoding::sha256;

/// Largest JWKS response accepted (bytes).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Timeout of one JWKS request.
pub const FETCH_TIMEOUT_MS: u64 = 5000;
/// A claim older than this is abandoned (the claiming VM's fetch failed or it died).
pub const CLAIM_MS: u64 = FETCH_TIMEOUT_MS + 1000;

/// Where a `jwks_uri` is fetched: Envoy cluster, `:authority`, `:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub cluster: String,
    pub authority: String,
    pub path: String,
}

/// Splits an `http(s)://authority/path?query` URI. `cluster` defaults to the host name. None for URIs with
/// credentials, an empty host or characters that have no place in a request line.
pub fn target(uri: &str, cluster: Option<&str>) -> Option<Target> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))?;
    let rest = rest.split('#').next().unwrap_or("");
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty()
        || authority.contains('@')
        || !authority.bytes().all(|b| b.is_ascii_graphic())
    {
        return None;
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let path = match path.strip_prefix('?') {
        Some(query) => format!("/?{query}"),
        None if path.is_empty() => "/".to_string(),
        None => path.to_string(),
    };
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    let cluster = cluster.map_or_else(|| host.to_string(), str::to_string);
    Some(Target {
        cluster,
        authority: authority.to_string(),
        path,
    })
}

/// Shared-data keys of one issuer's set. The URI is part of the name so a policy change that points an
/// issuer elsewhere never picks up the old set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub meta: String,
    pub body: String,
    pub claim: String,
    /// When a VM last refetched on an unknown `kid` (`ms`): the cross-VM debounce window.
    pub refetch: String,
}

pub fn keys(issuer_name: &str, uri: &str) -> Keys {
    let digest = sha256(format!("{issuer_name}\n{uri}").as_bytes());
    let id: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Keys {
        meta: format!("txngate:jwks:{id}:meta"),
        body: format!("txngate:jwks:{id}:body"),
        claim: format!("txngate:jwks:{id}:claim"),
        refetch: format!("txngate:jwks:{id}:refetch"),
    }
}

/// The meta record of a shared set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub fetched_ms: u64,
    pub sha256: [u8; 32],
}

impl Meta {
    pub fn of(body: &[u8], fetched_ms: u64) -> Self {
        Self {
            fetched_ms,
            sha256: sha256(body),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40);
        out.extend_from_slice(&self.fetched_ms.to_le_bytes());
        out.extend_from_slice(&self.sha256);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let fetched: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        let sha256: [u8; 32] = bytes.get(8..40)?.try_into().ok()?;
        (bytes.len() == 40).then_some(Self {
            fetched_ms: u64::from_le_bytes(fetched),
            sha256,
        })
    }

    /// Whether `body` is the body this record describes.
    pub fn matches(&self, body: &[u8]) -> bool {
        sha256(body) == self.sha256
    }
}

/// Milliseconds to wait after `failures` consecutive failed fetches: 1 s doubling to 64 s, never longer
/// than the refresh period.
pub fn backoff_ms(failures: u32, refresh_ms: u64) -> u64 {
    let exp = failures.saturating_sub(1).min(6);
    (1000u64 << exp).min(refresh_ms.max(1000))
}

pub fn encode_ms(ms: u64) -> [u8; 8] {
    ms.to_le_bytes()
}

pub fn decode_ms(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_split_into_cluster_authority_and_path() {
        let t = target(
            "https://tts.example:8443/.well-known/jwks.json?v=1#x",
            Some("tts"),
        )
        .unwrap();
        assert_eq!(
            t,
            Target {
                cluster: "tts".into(),
                authority: "tts.example:8443".into(),
                path: "/.well-known/jwks.json?v=1".into()
            }
        );
        let t = target("http://127.0.0.1:9000", None).unwrap();
        assert_eq!(
            (t.cluster.as_str(), t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1", "127.0.0.1:9000", "/")
        );
        assert_eq!(target("http://h?x=1", None).unwrap().path, "/?x=1");
        assert_eq!(target("http://[::1]:80/k", None).unwrap().cluster, "[::1]");
        assert!(target("https://user:pw@h/k", None).is_none());
        assert!(target("https:///k", None).is_none());
        assert!(target("ftp://h/k", None).is_none());
        assert!(target("http://h/a b", None).is_none());
    }

    #[test]
    fn meta_round_trips_and_checks_the_body() {
        let m = Meta::of(b"{\"keys\":[]}", 42);
        let back = Meta::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert!(back.matches(b"{\"keys\":[]}"));
        assert!(!back.matches(b"{}"));
        assert!(Meta::decode(&[0u8; 39]).is_none());
        assert!(Meta::decode(&[0u8; 41]).is_none());
    }

    #[test]
    fn keys_depend_on_issuer_and_uri() {
        assert_ne!(keys("a", "http://x/1"), keys("a", "http://x/2"));
        assert_ne!(keys("a", "http://x/1"), keys("b", "http://x/1"));
        assert!(keys("a", "u").meta.ends_with(":meta"));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_ms(1, 300_000), 1000);
        assert_eq!(backoff_ms(2, 300_000), 2000);
        assert_eq!(backoff_ms(40, 300_000), 64_000);
        assert_eq!(backoff_ms(40, 10_000), 10_000);
    }
}

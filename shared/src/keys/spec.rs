//! What a policy says about keys: the algorithms, where an issuer's keys come from, how strictly a set is
//! read, the accepted `typ`.

use core::fmt;

/// The JWS algorithms txngate verifies. Anything else (none, HS*, ES512, Ed448, ...) is refused by name.
/// `EdDSA` and `Ed25519` (RFC 9864's fully specified name for the same Ed25519 signature) are two names, and
/// a key is bound to one of them: a token must name the one its key is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    EdDSA,
    /// RFC 9864: EdDSA over Ed25519, fully specified.
    Ed25519,
    ES256,
    /// ECDSA over P-384 with SHA-384 (RFC 7518 §3.4).
    ES384,
    RS256,
    PS256,
}

impl Algorithm {
    pub const ALL: [Self; 6] = [
        Self::EdDSA,
        Self::Ed25519,
        Self::ES256,
        Self::ES384,
        Self::RS256,
        Self::PS256,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::Ed25519 => "Ed25519",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::RS256 => "RS256",
            Self::PS256 => "PS256",
        }
    }

    /// The length of a well-formed JWS signature, where it is fixed by the algorithm (RFC 7518 §3.4: `r ‖ s`).
    pub fn signature_len(self) -> Option<usize> {
        match self {
            Self::EdDSA | Self::Ed25519 | Self::ES256 => Some(64),
            Self::ES384 => Some(96),
            Self::RS256 | Self::PS256 => None,
        }
    }

    /// Exact, case-sensitive match (RFC 7515: `alg` values are case-sensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How strictly a set is read: keys written into the policy must all be usable; a fetched JWKS may also
/// publish keys for algorithms this issuer does not allow, which are skipped (never weak or invalid ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    Inline,
    Fetched,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Inline,
    /// Fetched by the host from `uri` (through Envoy `cluster` where set).
    Remote {
        uri: String,
        cluster: Option<String>,
        refresh_ms: u64,
        max_stale_ms: u64,
        min_refetch_ms: u64,
    },
}

/// Defaults of a remote key source (`refresh_seconds`, `max_stale_seconds`, `min_refetch_seconds`), the
/// same for a Txn-Token issuer and a WIMSE trust domain.
pub const DEFAULT_REFRESH_SECONDS: u32 = 300;
pub const DEFAULT_MAX_STALE_SECONDS: u32 = 3600;
pub const DEFAULT_MIN_REFETCH_SECONDS: u32 = 30;

/// A remote key source as a policy writes it: checked once here for every kind of key owner.
#[derive(Debug, Clone, Copy)]
pub struct RemoteSpec<'a> {
    pub uri: &'a str,
    pub cluster: Option<&'a str>,
    pub refresh_seconds: u32,
    pub max_stale_seconds: u32,
    pub min_refetch_seconds: u32,
}

impl KeySource {
    /// Checks a remote source; on error, the field at fault (`jwks_uri`, `refresh_seconds`,
    /// `max_stale_seconds`) and what is wrong with it.
    pub fn remote(spec: RemoteSpec<'_>) -> Result<Self, (&'static str, &'static str)> {
        if !(spec.uri.starts_with("https://") || spec.uri.starts_with("http://")) {
            return Err(("jwks_uri", "must be an http(s) URL"));
        }
        if spec.refresh_seconds == 0 {
            return Err(("refresh_seconds", "must be at least 1"));
        }
        if spec.max_stale_seconds < spec.refresh_seconds {
            return Err(("max_stale_seconds", "must be at least refresh_seconds"));
        }
        Ok(Self::Remote {
            uri: spec.uri.to_string(),
            cluster: spec.cluster.map(str::to_string),
            refresh_ms: u64::from(spec.refresh_seconds) * 1000,
            max_stale_ms: u64::from(spec.max_stale_seconds) * 1000,
            min_refetch_ms: u64::from(spec.min_refetch_seconds) * 1000,
        })
    }
}

/// Media type names compare case-insensitively, and a JOSE `typ` may omit the `application/` prefix (RFC 7515
/// §4.1.9): `application/TxnToken+JWT` is `txntoken+jwt`. Nothing else is folded (no parameters, no spaces).
pub fn same_media_type(a: &str, b: &str) -> bool {
    fn bare(t: &str) -> &str {
        t.get(..12)
            .filter(|p| p.eq_ignore_ascii_case("application/"))
            .map_or(t, |_| t.get(12..).unwrap_or(""))
    }
    let (a, b) = (bare(a), bare(b));
    !a.is_empty() && a.eq_ignore_ascii_case(b)
}

/// The `typ` every issuer accepts unless its policy entry says otherwise (the Transaction Tokens draft).
pub const TXN_TOKEN_TYP: &str = "txntoken+jwt";

/// The WIMSE Workload Identity Token's explicit type (workload-creds; RFC 8725 §3.11): here so the key ring,
/// which binds each entry to its accepted types, needs nothing from `wimse`.
pub const WIT_TYP: &str = "wit+jwt";

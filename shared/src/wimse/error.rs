//! Why a WIMSE proof was refused. Both drafts recommend 400 for a bad WIT or WPT (401 would need a
//! `WWW-Authenticate` challenge that this scheme does not have); a full replay cache is the gate's own
//! condition (503, retry).

use core::fmt;

/// A refused WIMSE proof; each variant has its stable reason code.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WimseError {
    /// The policy requires a proof and the request carries none (or only one of the two headers).
    ProofMissing {
        detail: &'static str,
    },
    /// The WIT is malformed, wrongly typed, uses a refused algorithm, or its claims are missing or ill-typed.
    WitInvalid {
        detail: String,
    },
    /// The WIT's key or subject is not of a configured trust domain (unknown `kid`, a `sub` outside the
    /// trust domain whose key signed it, an `iss` the trust domain does not declare).
    WitUntrusted {
        detail: String,
    },
    /// The WIT's `kid` names no key of a trust domain (reason `wimse.wit_untrusted`); `refetch` lists the
    /// key-ring entries of remote trust domains the host could refetch (the gate debounces it).
    UnknownKid {
        kid: String,
        refetch: Vec<usize>,
    },
    /// A remote trust domain's keys were never fetched or are older than their staleness bound: fail closed
    /// like a Txn-Token issuer's (503 `keys.unavailable`); `entry` is its key-ring entry.
    KeysUnavailable {
        trust_domain: String,
        entry: usize,
    },
    WitSignature,
    WitExpired {
        exp: i64,
    },
    /// The WPT is malformed, wrongly typed, its `alg` is not the WIT's `cnf.jwk.alg`, or a claim is missing.
    WptInvalid {
        detail: String,
    },
    /// The WPT is not signed by the WIT's confirmation key.
    WptSignature,
    WptExpired {
        exp: i64,
    },
    /// The WPT's `exp` is further ahead than the policy's `max_proof_lifetime_seconds`.
    WptLifetime {
        seconds: i64,
        max: u64,
    },
    /// The WPT's `aud` is not this request's target URI under a configured audience.
    WptAudience {
        found: String,
        expected: String,
    },
    /// `wth` is not the hash of the presented WIT.
    WitHash,
    /// `tth` is absent or not the hash of the presented Txn-Token.
    TxnTokenHash {
        detail: &'static str,
    },
    /// `ath` or an `oth` entry names a token the request does not carry, or another one.
    OtherHash {
        detail: String,
    },
    /// The WPT's `jti` was already seen from this workload within its validity.
    Replay,
    /// Every replay-cache entry is still live: refused rather than forgetting one (a replay would pass).
    ReplayCacheFull {
        entries: usize,
    },
}

impl WimseError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ProofMissing { .. } => "wimse.proof_missing",
            Self::WitInvalid { .. } => "wimse.wit_invalid",
            Self::WitUntrusted { .. } | Self::UnknownKid { .. } => "wimse.wit_untrusted",
            Self::KeysUnavailable { .. } => "keys.unavailable",
            Self::WitSignature => "wimse.wit_signature",
            Self::WitExpired { .. } => "wimse.wit_expired",
            Self::WptInvalid { .. } => "wimse.wpt_invalid",
            Self::WptSignature => "wimse.wpt_signature",
            Self::WptExpired { .. } => "wimse.wpt_expired",
            Self::WptLifetime { .. } => "wimse.wpt_lifetime",
            Self::WptAudience { .. } => "wimse.wpt_audience",
            Self::WitHash => "wimse.wit_hash",
            Self::TxnTokenHash { .. } => "wimse.txn_token_hash",
            Self::OtherHash { .. } => "wimse.other_hash",
            Self::Replay => "wimse.replay",
            Self::ReplayCacheFull { .. } => "wimse.replay_cache_full",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::ReplayCacheFull { .. } | Self::KeysUnavailable { .. } => 503,
            _ => 400,
        }
    }

    /// Every reason code, for documentation checks.
    pub const REASONS: [&'static str; 15] = [
        "wimse.proof_missing",
        "wimse.wit_invalid",
        "wimse.wit_untrusted",
        "wimse.wit_signature",
        "wimse.wit_expired",
        "wimse.wpt_invalid",
        "wimse.wpt_signature",
        "wimse.wpt_expired",
        "wimse.wpt_lifetime",
        "wimse.wpt_audience",
        "wimse.wit_hash",
        "wimse.txn_token_hash",
        "wimse.other_hash",
        "wimse.replay",
        "wimse.replay_cache_full",
    ];
}

impl fmt::Display for WimseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ProofMissing { detail } => {
                write!(f, "a WIMSE proof (WIT and WPT) is required: {detail}")
            }
            Self::WitInvalid { detail } => write!(f, "invalid Workload-Identity-Token: {detail}"),
            Self::WitUntrusted { detail } => write!(f, "untrusted Workload-Identity-Token: {detail}"),
            Self::UnknownKid { kid, .. } => write!(
                f,
                "untrusted Workload-Identity-Token: kid {kid:?} is no key of a configured trust domain"
            ),
            Self::KeysUnavailable { trust_domain, .. } => write!(
                f,
                "keys of trust domain {trust_domain:?} are unavailable (not fetched or stale)"
            ),
            Self::WitSignature => f.write_str("the Workload-Identity-Token signature is invalid"),
            Self::WitExpired { exp } => write!(f, "the Workload-Identity-Token expired (exp {exp})"),
            Self::WptInvalid { detail } => write!(f, "invalid Workload-Proof-Token: {detail}"),
            Self::WptSignature => f.write_str(
                "the Workload-Proof-Token is not signed by the key the Workload-Identity-Token confirms",
            ),
            Self::WptExpired { exp } => write!(f, "the Workload-Proof-Token expired (exp {exp})"),
            Self::WptLifetime { seconds, max } => write!(
                f,
                "the Workload-Proof-Token is valid for {seconds} s more; at most {max} s are accepted"
            ),
            Self::WptAudience { found, expected } => write!(
                f,
                "the Workload-Proof-Token is for {found:?}, not this request ({expected:?})"
            ),
            Self::WitHash => f.write_str(
                "the Workload-Proof-Token's wth is not the hash of the presented Workload-Identity-Token",
            ),
            Self::TxnTokenHash { detail } => {
                write!(f, "the Workload-Proof-Token does not cover this Txn-Token: {detail}")
            }
            Self::OtherHash { detail } => {
                write!(f, "the Workload-Proof-Token's token hashes do not match: {detail}")
            }
            Self::Replay => f.write_str("the Workload-Proof-Token (jti) was already used"),
            Self::ReplayCacheFull { entries } => write!(
                f,
                "the WIMSE replay cache is full ({entries} live proofs); retry shortly"
            ),
        }
    }
}

impl std::error::Error for WimseError {}

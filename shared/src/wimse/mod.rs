//! WIMSE proof of possession: the Workload Identity Token (WIT, draft-ietf-wimse-workload-creds) names the
//! calling workload and binds it to a public key; the Workload Proof Token (WPT, draft-ietf-wimse-wpt) is
//! signed per request with that key and carries the hash of the WIT and of the Txn-Token it covers. Together
//! they prove who presents a Transaction Token where no mTLS peer is known (the Cloudflare edge, meshes that
//! end mTLS before the sidecar).
//!
//! Host-free and sans-IO like the gate: each signature comes out as a [`SignedJwt`] that the gate hands to
//! the host in `Step::VerifySignature`; time is passed in; the replay cache is state the gate owns.
//!
//! Drafts implemented (editor's copies in github.com/ietf-wg-wimse/draft-ietf-wimse-s2s-protocol at commit
//! 40b1c41, 2026-08-06): draft-ietf-wimse-workload-creds-03 and draft-ietf-wimse-wpt-02.

mod error;
mod replay;
mod spec;
mod wit;
mod wpt;

pub use error::WimseError;
pub use replay::ReplayCache;
pub use spec::{
    compile, PeerBindingSpec, PeerSource, SpecError, TrustDomain, TrustDomainSpec, WimseRules,
    WimseSpec,
};
pub use wit::{Wit, WitCheck};
pub use wpt::{RequestBinding, Wpt, WptCheck};

use crate::keys::{Algorithm, PublicKey};

/// The request header carrying the WIT (workload-creds §4.1.1).
pub const WIT_HEADER: &str = "workload-identity-token";
/// The request header carrying the WPT (wpt §2).
pub const WPT_HEADER: &str = "workload-proof-token";
/// The WIT's explicit type (RFC 8725 §3.11).
pub use crate::keys::WIT_TYP;
/// The WPT's explicit type.
pub const WPT_TYP: &str = "wpt+jwt";

/// A JWS whose signature the host must check with its own crypto: the exact signed bytes, the signature and
/// the key (a configured trust-domain key for a WIT, the WIT's `cnf` key for a WPT; never a key the JWS
/// itself names).
#[derive(Debug, Clone)]
pub struct SignedJwt {
    raw: String,
    signing_input_len: usize,
    signature: Vec<u8>,
    key: PublicKey,
}

impl SignedJwt {
    /// The signed parts of `untrusted` (parsed from `raw`), to be checked with `key`.
    pub(crate) fn new(raw: &str, untrusted: &crate::token::UntrustedToken, key: PublicKey) -> Self {
        Self {
            raw: raw.to_string(),
            signing_input_len: untrusted.signing_input().len(),
            signature: untrusted.signature().to_vec(),
            key,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }

    /// `BASE64URL(header) || '.' || BASE64URL(payload)`.
    pub fn signing_input(&self) -> &[u8] {
        self.raw
            .as_bytes()
            .get(..self.signing_input_len)
            .unwrap_or_default()
    }

    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// The compact JWS as presented.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Verifies with the core's own implementation.
    pub fn verify_native(&self) -> bool {
        self.key.verify(self.signing_input(), &self.signature)
    }
}

/// The two WIMSE headers of a request, each read exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// Neither header.
    Absent,
    Both {
        wit: String,
        wpt: String,
    },
}

/// Reads the WIT and WPT headers: both or neither; each at most once and a single JWS (no comma).
pub fn presented(headers: &[(String, String)]) -> Result<Presented, WimseError> {
    let wit = single(headers, WIT_HEADER)?;
    let wpt = single(headers, WPT_HEADER)?;
    match (wit, wpt) {
        (None, None) => Ok(Presented::Absent),
        (Some(wit), Some(wpt)) => Ok(Presented::Both {
            wit: wit.to_string(),
            wpt: wpt.to_string(),
        }),
        (None, Some(_)) => Err(WimseError::ProofMissing {
            detail: "a Workload-Proof-Token without its Workload-Identity-Token",
        }),
        (Some(_), None) => Err(WimseError::ProofMissing {
            detail: "a Workload-Identity-Token without a Workload-Proof-Token (a WIT is never a bearer token)",
        }),
    }
}

/// The value of header `name` when the request carries it exactly once (trimmed of spaces and tabs).
pub(crate) fn single<'h>(
    headers: &'h [(String, String)],
    name: &'static str,
) -> Result<Option<&'h str>, WimseError> {
    let mut found = headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
    let Some((_, first)) = found.next() else {
        return Ok(None);
    };
    // A compact JWS never contains a comma: one means two values joined by an intermediary.
    if found.next().is_some() || first.contains(',') {
        let e = match name {
            WIT_HEADER => WimseError::WitInvalid {
                detail: "the Workload-Identity-Token header is repeated".into(),
            },
            _ => WimseError::WptInvalid {
                detail: format!("the {name} header is repeated"),
            },
        };
        return Err(e);
    }
    Ok(Some(first.trim_matches([' ', '\t'])))
}

/// How the caller's identity was proven, as audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvenBy {
    /// The host's verified mTLS peer (Envoy: the client certificate's SPIFFE URI SAN).
    Mtls,
    /// A WIT with a WPT signed by its key, covering this request's Txn-Token.
    Wimse,
}

impl ProvenBy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Mtls => "mtls",
            Self::Wimse => "wimse",
        }
    }
}

/// base64url(SHA-256(ASCII value)): the hash the WPT's `wth`, `tth`, `ath` and `oth` carry.
pub fn token_hash(value: &str) -> String {
    crate::encoding::encode_b64url(&crate::encoding::sha256(value.as_bytes()))
}

#[cfg(test)]
mod tests;

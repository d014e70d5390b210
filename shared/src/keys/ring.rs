//! The key ring: one key set per issuer, key lookup by `kid`, and when a host should fetch again.

use std::sync::Arc;

use super::*;

/// One issuer's current keys and fetch bookkeeping. Replaced atomically: a request sees the old set or the
/// new one, never a mix.
#[derive(Debug, Clone)]
pub struct IssuerKeys {
    pub name: String,
    /// The `iss` this issuer's tokens carry. RFC 8725 §3.8: a token with an `iss` is accepted only from a key
    /// of an issuer that declares that very `iss`; an issuer without one verifies only tokens without `iss`.
    pub iss: Option<String>,
    pub algorithms: Vec<Algorithm>,
    /// JOSE `typ` values accepted from this issuer (media types: compared case-insensitively, with or
    /// without the `application/` prefix, RFC 7515 §4.1.9).
    pub typ: Vec<String>,
    pub source: KeySource,
    keys: Option<Arc<KeySet>>,
    fetched_at_ms: Option<u64>,
    last_refetch_ms: Option<u64>,
    generation: u64,
}

impl IssuerKeys {
    /// Whether a token header's `typ` is one this issuer may use.
    pub fn accepts_typ(&self, typ: &str) -> bool {
        self.typ.iter().any(|allowed| same_media_type(allowed, typ))
    }

    /// The current set, fresh or stale (None until a remote set is first fetched).
    pub fn key_set(&self) -> Option<&KeySet> {
        self.keys.as_deref()
    }

    pub fn fetched_at_ms(&self) -> Option<u64> {
        self.fetched_at_ms
    }
}

/// What the key ring says about a key lookup.
#[derive(Debug)]
pub enum KeyLookup<'a> {
    Found {
        issuer: usize,
        key: &'a PublicKey,
    },
    /// No configured key has this `kid`; `refetch` lists remote issuers a host could refetch.
    UnknownKid {
        refetch: Vec<usize>,
    },
    /// No `kid` and more than one candidate key.
    KidRequired,
    /// The same `kid` in two issuers' sets.
    AmbiguousKid,
    /// Remote keys never fetched, or older than their staleness bound.
    Unavailable {
        issuer: usize,
    },
}

/// All issuers' keys.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    issuers: Vec<IssuerKeys>,
}

impl KeyRing {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_issuer(
        &mut self,
        name: String,
        iss: Option<String>,
        algorithms: Vec<Algorithm>,
        source: KeySource,
        inline: Option<KeySet>,
    ) {
        self.add_issuer_with_types(
            name,
            iss,
            algorithms,
            vec![TXN_TOKEN_TYP.to_string()],
            source,
            inline,
        );
    }

    /// [`KeyRing::add_issuer`] with the issuer's accepted `typ` values.
    pub fn add_issuer_with_types(
        &mut self,
        name: String,
        iss: Option<String>,
        algorithms: Vec<Algorithm>,
        typ: Vec<String>,
        source: KeySource,
        inline: Option<KeySet>,
    ) {
        let keys = inline.map(Arc::new);
        self.issuers.push(IssuerKeys {
            name,
            iss,
            algorithms,
            typ,
            source,
            keys,
            fetched_at_ms: None,
            last_refetch_ms: None,
            generation: 0,
        });
    }

    pub fn issuers(&self) -> &[IssuerKeys] {
        &self.issuers
    }

    pub fn issuer(&self, index: usize) -> Option<&IssuerKeys> {
        self.issuers.get(index)
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.issuers.iter().position(|i| i.name == name)
    }

    /// A change counter per issuer; hosts and caches use it to notice a replaced set.
    pub fn generation(&self) -> u64 {
        self.issuers.iter().map(|i| i.generation).sum()
    }

    /// Installs a fetched JWKS for issuer `index`, replacing the old set whole. On error the old set stays.
    pub fn install(
        &mut self,
        index: usize,
        jwks: &[u8],
        now_ms: u64,
    ) -> Result<Vec<SkippedKey>, KeyError> {
        let Some(issuer) = self.issuers.get_mut(index) else {
            return Err(KeyError::NotAKeySet);
        };
        let (set, skipped) = KeySet::parse(jwks, &issuer.algorithms, Strictness::Fetched)?;
        issuer.keys = Some(Arc::new(set));
        issuer.fetched_at_ms = Some(now_ms);
        issuer.generation += 1;
        Ok(skipped)
    }

    /// Marks a successful fetch whose content did not change (e.g. 304), extending freshness.
    pub fn touch(&mut self, index: usize, now_ms: u64) {
        if let Some(issuer) = self.issuers.get_mut(index) {
            if issuer.keys.is_some() {
                issuer.fetched_at_ms = Some(now_ms);
            }
        }
    }

    /// Remote issuers whose periodic refresh is due (never fetched, or older than `refresh`).
    pub fn refresh_due(&self, now_ms: u64) -> Vec<usize> {
        self.issuers
            .iter()
            .enumerate()
            .filter(|(_, i)| match (&i.source, i.fetched_at_ms) {
                (KeySource::Remote { .. }, None) => true,
                (KeySource::Remote { refresh_ms, .. }, Some(at)) => {
                    now_ms.saturating_sub(at) >= *refresh_ms
                }
                (KeySource::Inline, _) => false,
            })
            .map(|(n, _)| n)
            .collect()
    }

    /// Debounced refetch on an unknown `kid`: true at most once per `min_refetch` window per issuer.
    pub fn claim_refetch(&mut self, index: usize, now_ms: u64) -> bool {
        let Some(issuer) = self.issuers.get_mut(index) else {
            return false;
        };
        let KeySource::Remote { min_refetch_ms, .. } = issuer.source else {
            return false;
        };
        if issuer
            .last_refetch_ms
            .is_some_and(|last| now_ms.saturating_sub(last) < min_refetch_ms)
        {
            return false;
        }
        issuer.last_refetch_ms = Some(now_ms);
        true
    }

    fn usable(issuer: &IssuerKeys, now_ms: u64) -> Option<&Arc<KeySet>> {
        match (&issuer.source, issuer.fetched_at_ms) {
            (KeySource::Inline, _) => issuer.keys.as_ref(),
            (KeySource::Remote { max_stale_ms, .. }, Some(at))
                if now_ms.saturating_sub(at) <= *max_stale_ms =>
            {
                issuer.keys.as_ref()
            }
            (KeySource::Remote { .. }, _) => None,
        }
    }

    /// Whether issuer `index`'s keys may be used at `now_ms` (inline, or fetched within the staleness bound).
    pub fn is_usable(&self, index: usize, now_ms: u64) -> bool {
        self.issuers
            .get(index)
            .is_some_and(|i| Self::usable(i, now_ms).is_some())
    }

    /// Selects the key for a token header's `kid` (the only thing a token may say about keys).
    pub fn lookup(&self, kid: Option<&str>, now_ms: u64) -> KeyLookup<'_> {
        let mut found: Option<(usize, &PublicKey)> = None;
        let mut unavailable: Option<usize> = None;
        let mut candidates = 0usize;
        let mut sole: Option<(usize, &PublicKey)> = None;
        for (index, issuer) in self.issuers.iter().enumerate() {
            let Some(set) = Self::usable(issuer, now_ms) else {
                unavailable.get_or_insert(index);
                continue;
            };
            match kid {
                Some(kid) => {
                    if let Some(key) = set.by_kid(kid) {
                        if found.is_some() {
                            return KeyLookup::AmbiguousKid;
                        }
                        found = Some((index, key));
                    }
                }
                None => {
                    candidates += set.len();
                    if let Some(key) = set.keys().first() {
                        sole = Some((index, key));
                    }
                }
            }
        }
        match kid {
            Some(_) => match found {
                Some((issuer, key)) => KeyLookup::Found { issuer, key },
                None => match unavailable {
                    // The kid may belong to keys we cannot use right now: say so rather than "unknown".
                    Some(issuer) => KeyLookup::Unavailable { issuer },
                    None => KeyLookup::UnknownKid {
                        refetch: self
                            .issuers
                            .iter()
                            .enumerate()
                            .filter(|(_, i)| matches!(i.source, KeySource::Remote { .. }))
                            .map(|(n, _)| n)
                            .collect(),
                    },
                },
            },
            None => match (candidates, sole, unavailable) {
                (1, Some((issuer, key)), None) => KeyLookup::Found { issuer, key },
                (0, _, Some(issuer)) => KeyLookup::Unavailable { issuer },
                _ => KeyLookup::KidRequired,
            },
        }
    }
}

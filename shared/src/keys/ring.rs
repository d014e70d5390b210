//! The key ring: one key set per issuer and key lookup by `kid`. Remote sets come and go through the ring's
//! [`Refresher`] (when to fetch, back-off, staleness, unknown-`kid` debounce: [`super::refresh`]); the ring
//! applies what it decides.

use std::sync::Arc;

use super::refresh::{Fetch, FetchResult, RefreshError, Refreshed, Refresher, Schedule};
use super::*;

/// What an entry's keys sign: a key selected for one kind of token is never used for the other (a trust
/// domain's Identity Server key does not verify Txn-Tokens, an issuer's key does not verify WITs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// A Transaction Token Service (the policy's `issuers`).
    TxnToken,
    /// A WIMSE trust domain's Identity Server (`wimse.trust_domains`): Workload Identity Tokens.
    TrustDomain,
}

/// One issuer's current keys. Replaced atomically: a request sees the old set or the
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
    /// What these keys sign; lookups only see entries of the role they ask for.
    pub role: KeyRole,
    keys: Option<Arc<KeySet>>,
    fetched_at_ms: Option<u64>,
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

/// All issuers' keys, and the fetch state of the remote ones.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    issuers: Vec<IssuerKeys>,
    refresher: Refresher,
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
        self.push(
            name,
            iss,
            algorithms,
            typ,
            source,
            inline,
            KeyRole::TxnToken,
        );
    }

    /// A WIMSE trust domain's Identity Server keys: fetched and refreshed exactly like an issuer's, but only
    /// [`KeyRing::lookup_for`] with [`KeyRole::TrustDomain`] selects them. Returns the entry's index.
    pub fn add_trust_domain(
        &mut self,
        name: String,
        algorithms: Vec<Algorithm>,
        source: KeySource,
        inline: Option<KeySet>,
    ) -> usize {
        let index = self.issuers.len();
        let typ = vec![super::WIT_TYP.to_string()];
        self.push(
            name,
            None,
            algorithms,
            typ,
            source,
            inline,
            KeyRole::TrustDomain,
        );
        index
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        name: String,
        iss: Option<String>,
        algorithms: Vec<Algorithm>,
        typ: Vec<String>,
        source: KeySource,
        inline: Option<KeySet>,
        role: KeyRole,
    ) {
        let keys = inline.map(Arc::new);
        self.refresher.add(&source, &algorithms);
        self.issuers.push(IssuerKeys {
            name,
            iss,
            algorithms,
            typ,
            source,
            role,
            keys,
            fetched_at_ms: None,
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

    /// The remote issuers' fetch state (read-only: hosts ask it whether a shared copy is newer, whether a
    /// fetch is in flight).
    pub fn refresher(&self) -> &Refresher {
        &self.refresher
    }

    /// The fetches a host should send now (see [`Refresher::poll`]).
    pub fn poll(&mut self, now_ms: u64) -> Vec<Fetch> {
        self.refresher.poll(now_ms)
    }

    /// The host did not send a fetch [`KeyRing::poll`] handed out (see [`Refresher::release`]).
    pub fn release(&mut self, issuer: usize) {
        self.refresher.release(issuer);
    }

    /// The answer to a fetch: a new set replaces the old one whole; on any failure the old set stays.
    pub fn on_response(
        &mut self,
        issuer: usize,
        result: FetchResult<'_>,
        now_ms: u64,
    ) -> Refreshed {
        let refreshed = self.refresher.on_response(issuer, result, now_ms);
        self.apply(issuer, &refreshed);
        refreshed
    }

    /// A set fetched elsewhere at `fetched_ms` (another worker, a cache); see [`Refresher::adopt`].
    pub fn adopt(&mut self, issuer: usize, body: &[u8], fetched_ms: u64, now_ms: u64) -> Refreshed {
        let refreshed = self.refresher.adopt(issuer, body, fetched_ms, now_ms);
        self.apply(issuer, &refreshed);
        refreshed
    }

    /// Installs a JWKS the host obtained by other means as fetched at `now_ms` (no back-off on error); the
    /// old set stays on error.
    pub fn install(
        &mut self,
        index: usize,
        jwks: &[u8],
        now_ms: u64,
    ) -> Result<Vec<SkippedKey>, RefreshError> {
        let refreshed = self.refresher.install(index, jwks, now_ms)?;
        self.apply(index, &refreshed);
        Ok(match refreshed {
            Refreshed::Installed { skipped, .. } => skipped,
            _ => Vec::new(),
        })
    }

    fn apply(&mut self, index: usize, refreshed: &Refreshed) {
        let Some(issuer) = self.issuers.get_mut(index) else {
            return;
        };
        match refreshed {
            Refreshed::Installed {
                set, fetched_ms, ..
            } => {
                issuer.keys = Some(Arc::clone(set));
                issuer.fetched_at_ms = Some(*fetched_ms);
                issuer.generation += 1;
            }
            Refreshed::Unchanged { fetched_ms } if issuer.keys.is_some() => {
                issuer.fetched_at_ms = Some(*fetched_ms);
            }
            _ => {}
        }
    }

    /// Remote issuers a fetch is due for (see [`Refresher::due`]).
    pub fn refresh_due(&self, now_ms: u64) -> Vec<usize> {
        self.refresher.due(now_ms)
    }

    /// Debounced refetch on an unknown `kid` (see [`Refresher::want_refetch`]).
    pub fn claim_refetch(&mut self, index: usize, now_ms: u64) -> bool {
        self.refresher.want_refetch(index, now_ms)
    }

    fn usable(issuer: &IssuerKeys, now_ms: u64) -> Option<&Arc<KeySet>> {
        // The one staleness policy (`Schedule::serves`): past it, fail closed.
        match (Schedule::of(&issuer.source), issuer.fetched_at_ms) {
            (None, _) => issuer.keys.as_ref(),
            (Some(schedule), Some(at)) if schedule.serves(at, now_ms) => issuer.keys.as_ref(),
            (Some(_), _) => None,
        }
    }

    /// Whether issuer `index`'s keys may be used at `now_ms` (inline, or fetched within the staleness bound).
    pub fn is_usable(&self, index: usize, now_ms: u64) -> bool {
        self.issuers
            .get(index)
            .is_some_and(|i| Self::usable(i, now_ms).is_some())
    }

    /// Selects the Txn-Token key for a token header's `kid` (the only thing a token may say about keys).
    pub fn lookup(&self, kid: Option<&str>, now_ms: u64) -> KeyLookup<'_> {
        self.lookup_for(KeyRole::TxnToken, kid, now_ms)
    }

    /// Selects the key for a `kid` among the entries of one role (the same rules for every role).
    pub fn lookup_for(&self, role: KeyRole, kid: Option<&str>, now_ms: u64) -> KeyLookup<'_> {
        let mut found: Option<(usize, &PublicKey)> = None;
        let mut unavailable: Option<usize> = None;
        let mut candidates = 0usize;
        let mut sole: Option<(usize, &PublicKey)> = None;
        let entries = self
            .issuers
            .iter()
            .enumerate()
            .filter(|(_, i)| i.role == role);
        for (index, issuer) in entries {
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
                            .filter(|(_, i)| {
                                i.role == role && matches!(i.source, KeySource::Remote { .. })
                            })
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

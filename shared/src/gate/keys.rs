//! The gate's remote-key methods: a host drives the key ring's refresher through these (what to fetch, the
//! answers, sets fetched elsewhere); the rules are in `crate::keys::refresh`.

use crate::keys::refresh::{Fetch, FetchResult, RefreshError, Refreshed};
use crate::keys::SkippedKey;

use super::*;

impl Gate {
    /// The key fetches to send now (see [`crate::keys::refresh::Refresher::poll`]). Call it on a timer,
    /// and at once when an [`Outcome`] names a `refetch_issuer`.
    pub fn poll_keys(&mut self, now_ms: u64) -> Vec<Fetch> {
        self.keys.poll(now_ms)
    }

    /// The answer to a fetch from [`Gate::poll_keys`]; tokens cached under a replaced set are verified again.
    pub fn on_keys_response(
        &mut self,
        issuer: usize,
        result: FetchResult<'_>,
        now_ms: u64,
    ) -> Refreshed {
        let refreshed = self.keys.on_response(issuer, result, now_ms);
        self.forget_tokens_on(&refreshed);
        refreshed
    }

    /// A set another worker or a cache fetched at `fetched_ms` (see
    /// [`crate::keys::refresh::Refresher::adopt`]).
    pub fn adopt_keys(
        &mut self,
        issuer: usize,
        body: &[u8],
        fetched_ms: u64,
        now_ms: u64,
    ) -> Refreshed {
        let refreshed = self.keys.adopt(issuer, body, fetched_ms, now_ms);
        self.forget_tokens_on(&refreshed);
        refreshed
    }

    /// The host did not send a fetch [`Gate::poll_keys`] handed out (another worker covers it).
    pub fn release_keys_fetch(&mut self, issuer: usize) {
        self.keys.release(issuer);
    }

    /// Installs a JWKS obtained by other means as fetched at `now_ms` (see [`KeyRing::install`]); tokens
    /// cached under the old set are verified again.
    pub fn install_jwks(
        &mut self,
        issuer: usize,
        jwks: &[u8],
        now_ms: u64,
    ) -> Result<Vec<SkippedKey>, RefreshError> {
        let skipped = self.keys.install(issuer, jwks, now_ms)?;
        self.cache.clear();
        Ok(skipped)
    }

    /// Remote issuers a fetch is due for now.
    pub fn refresh_due(&self, now_ms: u64) -> Vec<usize> {
        self.keys.refresh_due(now_ms)
    }

    fn forget_tokens_on(&mut self, refreshed: &Refreshed) {
        if matches!(refreshed, Refreshed::Installed { .. }) {
            self.cache.clear();
        }
    }
}

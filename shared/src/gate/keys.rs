//! The gate's remote-key methods: installing a fetched JWKS and saying which issuers are due.

use crate::keys::{KeyError, SkippedKey};

use super::*;

impl Gate {
    /// Installs a fetched JWKS for issuer `index` (see [`KeyRing::install`]); tokens cached under the old
    /// set are verified again.
    pub fn install_jwks(
        &mut self,
        issuer: usize,
        jwks: &[u8],
        now_ms: u64,
    ) -> Result<Vec<SkippedKey>, KeyError> {
        let skipped = self.keys.install(issuer, jwks, now_ms)?;
        self.cache.clear();
        Ok(skipped)
    }

    /// A fetch that returned the same content: the set stays fresh.
    pub fn touch_jwks(&mut self, issuer: usize, now_ms: u64) {
        self.keys.touch(issuer, now_ms);
    }

    /// Remote issuers due for a periodic fetch.
    pub fn refresh_due(&self, now_ms: u64) -> Vec<usize> {
        self.keys.refresh_due(now_ms)
    }
}

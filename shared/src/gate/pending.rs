//! The suspended evaluations a host resumes: a signature to check, a global limit to consult.

use std::sync::Arc;

use crate::authorization::Kind;
use crate::delegation::Delegation;
use crate::keys::{Algorithm, PublicKey};
use crate::policy::RuleLimit;
use crate::ratelimit::{self, LimitRule, LimitState, RateLimitStore, SlotTable, StoreError};
use crate::token::VerifiedToken;

use super::*;

/// A signature the host must check.
#[derive(Debug)]
pub struct PendingSignature {
    pub(super) ctx: Context,
    pub(super) raw: String,
    pub(super) signing_input_len: usize,
    pub(super) signature: Vec<u8>,
    pub(super) issuer: usize,
    pub(super) key: PublicKey,
}

impl PendingSignature {
    pub fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }

    /// The exact signed bytes.
    pub fn signing_input(&self) -> &[u8] {
        self.raw
            .as_bytes()
            .get(..self.signing_input_len)
            .unwrap_or_default()
    }

    /// The signature as JWS carries it (raw r‖s for ES256, which is also WebCrypto's format).
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// The configured key the token's `kid` selected (never a key from the token).
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// Verifies with the core's own implementation (jwt-compact).
    pub fn verify_native(&self) -> bool {
        self.key.verify(self.signing_input(), &self.signature)
    }
}

/// A rate limit the host must consult.
#[derive(Debug)]
pub struct PendingLimit {
    pub(super) ctx: Context,
    pub(super) token: Arc<VerifiedToken>,
    pub(super) delegation: Delegation,
    pub(super) key: String,
    pub(super) limit: RuleLimit,
    pub(super) kind: Kind,
    /// The tool or prompt name, or the resource URI.
    pub(super) name: String,
    /// What the bucket counts: the tool or prompt name, the resource rule's pattern (also the remote
    /// descriptor's `tool` / `prompt` / `resource` entry).
    pub(super) subject: String,
    /// The `RateLimit-Policy` name: the tool or prompt name, the resource rule's pattern.
    pub(super) policy_name: String,
    pub(super) dry_run: bool,
}

impl PendingLimit {
    /// The bucket's store key.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn rule(&self) -> &LimitRule {
        &self.limit.rule
    }

    /// The tool or prompt name, or the resource URI, of the limited call.
    pub fn tool(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn now_ms(&self) -> u64 {
        self.ctx.now_ms
    }

    /// The rule's remote limit, when the rate limit service counts it ([`crate::rls`]).
    pub fn remote(&self) -> Option<&crate::rls::RemoteLimit> {
        self.limit.remote.as_ref()
    }

    /// The `ShouldRateLimit` request for this call (None for a local limit).
    pub fn remote_request(
        &self,
        service: &crate::rls::RateLimitService,
    ) -> Option<crate::rls_wire::RateLimitRequest> {
        let who = crate::rls::Identity {
            name: &self.subject,
            agent: &self.delegation.agent,
            sub: &self.token.sub,
        };
        Some(self.remote()?.request(service, &self.limit.rule, who))
    }
}

/// A synchronous limiter backend.
pub trait Limiter {
    fn consume(
        &mut self,
        key: &str,
        rule: &LimitRule,
        now_ms: u64,
    ) -> Result<LimitState, StoreError>;
}

impl<S: RateLimitStore> Limiter for S {
    fn consume(
        &mut self,
        key: &str,
        rule: &LimitRule,
        now_ms: u64,
    ) -> Result<LimitState, StoreError> {
        ratelimit::consume(self, key, rule, now_ms)
    }
}

impl<S: RateLimitStore + ?Sized> Limiter for SlotTable<'_, S> {
    fn consume(
        &mut self,
        key: &str,
        rule: &LimitRule,
        now_ms: u64,
    ) -> Result<LimitState, StoreError> {
        SlotTable::consume(self, key, rule, now_ms)
    }
}

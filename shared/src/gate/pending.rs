//! The suspended evaluations a host resumes: a signature to check, a global limit to consult.

use std::sync::Arc;

use crate::authorization::Kind;
use crate::delegation::Delegation;
use crate::keys::{Algorithm, PublicKey};
use crate::policy::RuleLimit;
use crate::ratelimit::{self, LimitRule, LimitState, RateLimitStore, SlotTable, StoreError};
use crate::token::VerifiedToken;
use crate::wimse::SignedJwt;

use super::*;

/// A signature the host must check: the host only reads the algorithm, the signed bytes, the signature and
/// the key, and resumes with whether it verified; what was signed is the core's business.
#[derive(Debug)]
pub struct PendingSignature {
    pub(super) ev: Evaluation,
    /// The compact JWS whose signature this is, and the key to check it with.
    pub(super) jwt: SignedJwt,
    pub(super) signed: Signed,
}

/// What a pending signature is over, and where the evaluation goes once it verified.
#[derive(Debug)]
pub(super) enum Signed {
    /// The request's Transaction Token, verified with a key of issuer `issuer`.
    TxnToken { issuer: usize },
    /// A WIMSE credential of the caller (WIT or WPT); where its check stands is in the evaluation
    /// (`gate/wimse.rs`).
    WorkloadProof,
}

impl PendingSignature {
    pub fn algorithm(&self) -> Algorithm {
        self.jwt.algorithm()
    }

    /// The exact signed bytes.
    pub fn signing_input(&self) -> &[u8] {
        self.jwt.signing_input()
    }

    /// The signature as JWS carries it (raw r‖s for ES256, which is also WebCrypto's format).
    pub fn signature(&self) -> &[u8] {
        self.jwt.signature()
    }

    /// The configured key the token's `kid` selected (never a key from the token).
    pub fn key(&self) -> &PublicKey {
        self.jwt.key()
    }

    /// Verifies with the core's own implementation (jwt-compact).
    pub fn verify_native(&self) -> bool {
        self.jwt.verify_native()
    }
}

/// A rate limit the host must consult.
#[derive(Debug)]
pub struct PendingLimit {
    pub(super) ev: Evaluation,
    pub(super) token: Arc<VerifiedToken>,
    pub(super) delegation: Delegation,
    pub(super) bucket_key: String,
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
    /// The bucket's store key (not to be confused with [`PendingSignature::key`], a public key).
    pub fn bucket_key(&self) -> &str {
        &self.bucket_key
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
        self.ev.now_ms
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
            sub: self.token.sub(),
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

//! Rate limits: GCRA (the token bucket computed from one timestamp) in exact integer arithmetic, over a
//! compare-and-swap store so Envoy shared data, a Durable Object and a test map can all back it.
//!
//! Time is scaled so every step is an integer: one unit is `1/limit` ms, so the emission interval
//! (`period/limit`) is exactly `period_ms` units and no rounding ever lets an extra call through.

use core::fmt;
use std::collections::HashMap;

/// A validated limit: `limit` calls per `period_seconds` on average, `burst` back to back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimitRule {
    limit: u32,
    period_ms: u64,
    burst: u32,
}

impl LimitRule {
    /// Errors name the field at fault.
    pub fn new(
        limit: u32,
        period_seconds: u32,
        burst: u32,
    ) -> Result<Self, (&'static str, &'static str)> {
        if limit == 0 {
            return Err(("limit", "must be at least 1"));
        }
        if period_seconds == 0 {
            return Err(("period_seconds", "must be at least 1"));
        }
        if period_seconds > 31_536_000 {
            return Err(("period_seconds", "must be at most one year (31536000)"));
        }
        if burst == 0 {
            return Err(("burst", "must be at least 1"));
        }
        Ok(Self {
            limit,
            period_ms: u64::from(period_seconds) * 1000,
            burst,
        })
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn period_seconds(&self) -> u64 {
        self.period_ms / 1000
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    fn now_units(&self, now_ms: u64) -> u128 {
        u128::from(now_ms) * u128::from(self.limit)
    }

    fn tolerance_units(&self) -> u128 {
        u128::from(self.burst) * u128::from(self.period_ms)
    }
}

/// The state of one bucket after a call (serializable: a remote limiter such as a Durable Object sends it
/// back to the gate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LimitState {
    pub allowed: bool,
    pub limit: u32,
    pub burst: u32,
    pub period_seconds: u64,
    /// Calls that could still be made right now.
    pub remaining: u32,
    /// When denied: milliseconds until one call would pass.
    pub retry_after_ms: u64,
    /// Milliseconds until the bucket is full again.
    pub reset_ms: u64,
}

/// The bucket's stored state: the theoretical arrival time, in scaled units.
pub type Tat = u128;

/// One GCRA step. `stored` is the bucket's TAT (None for a new or drained bucket). Returns the TAT to store
/// (None when the call is denied: nothing changes) and the resulting state.
pub fn gcra(rule: &LimitRule, stored: Option<Tat>, now_ms: u64) -> (Option<Tat>, LimitState) {
    let now = rule.now_units(now_ms);
    let tau = rule.tolerance_units();
    let interval = u128::from(rule.period_ms);
    let limit = u128::from(rule.limit);
    let tat = stored.map_or(now, |t| t.max(now));
    let next = tat.saturating_add(interval);
    let to_ms_ceil = |units: u128| u64::try_from(units.div_ceil(limit)).unwrap_or(u64::MAX);
    let base = LimitState {
        allowed: false,
        limit: rule.limit,
        burst: rule.burst,
        period_seconds: rule.period_seconds(),
        remaining: 0,
        retry_after_ms: 0,
        reset_ms: 0,
    };
    if next - now > tau {
        let retry = next - now - tau;
        let state = LimitState {
            retry_after_ms: to_ms_ceil(retry),
            reset_ms: to_ms_ceil(tat - now),
            ..base
        };
        (None, state)
    } else {
        let remaining = u32::try_from((tau - (next - now)) / interval).unwrap_or(u32::MAX);
        let state = LimitState {
            allowed: true,
            remaining,
            reset_ms: to_ms_ceil(next - now),
            ..base
        };
        (Some(next), state)
    }
}

/// A store failure: the limiter cannot know the count, so the rule's `on_store_error` decides.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend refused or failed the operation.
    Backend { detail: String },
    /// Compare-and-swap kept failing under contention.
    Contention { attempts: u32 },
    /// A stored value that is not a bucket.
    Corrupt { key: String },
    /// Every slot a new bucket could take is live (bounded key space).
    Full,
    /// The rate limit service of a remote rule timed out, was unreachable or failed ([`crate::rls`]).
    Remote { kind: RemoteFailure, detail: String },
}

impl StoreError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Backend { .. } | Self::Corrupt { .. } => "ratelimit.store_error",
            Self::Contention { .. } => "ratelimit.contention",
            Self::Full => "ratelimit.store_full",
            Self::Remote { kind, .. } => kind.reason(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Backend { detail } => write!(f, "rate-limit store failed: {detail}"),
            Self::Contention { attempts } => write!(
                f,
                "rate-limit store: compare-and-swap lost {attempts} times in a row"
            ),
            Self::Corrupt { key } => {
                write!(f, "rate-limit store: value at {key:?} is not a bucket")
            }
            Self::Full => {
                f.write_str("rate-limit store is full: every slot for this key holds a live bucket")
            }
            Self::Remote { kind, detail } => {
                write!(f, "rate limit service {kind}: {detail}")
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// A key-value store with compare-and-swap: what every host's limiter backend must offer.
pub trait RateLimitStore {
    /// The value at `key` and its version, or None.
    fn load(&mut self, key: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError>;
    /// Writes `value` if `key` is still at version `expected` (None: only if absent). Ok(false) on a lost
    /// race; the caller reloads and retries.
    fn compare_and_swap(
        &mut self,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<bool, StoreError>;
}

/// Bounded retries: contention beyond this is reported, never spun on.
pub const MAX_CAS_ATTEMPTS: u32 = 16;

/// The store key of the bucket for `rule_name`, `dimension` and `id`. The rule's numbers are part of it
/// because the stored TAT is in units that depend on `limit`.
pub fn bucket_key(tool: &str, dimension: &str, id: &str, rule: &LimitRule) -> String {
    // `txngate:rl:{limit}:{period_ms}:{burst}:{dimension}:{tool}:{id}`, written without `format!`.
    use crate::encoding::push_decimal;
    let mut key = String::with_capacity(48 + dimension.len() + tool.len() + id.len());
    key.push_str("txngate:rl:");
    push_decimal(&mut key, u64::from(rule.limit));
    key.push(':');
    push_decimal(&mut key, rule.period_ms);
    key.push(':');
    push_decimal(&mut key, u64::from(rule.burst));
    for part in [dimension, tool, id] {
        key.push(':');
        key.push_str(part);
    }
    key
}

fn decode_tat(bytes: &[u8]) -> Option<Tat> {
    let raw: [u8; 16] = bytes.try_into().ok()?;
    Some(u128::from_le_bytes(raw))
}

/// Runs one call against bucket `key` in `store`: load, step, compare-and-swap, retrying lost races.
pub fn consume(
    store: &mut dyn RateLimitStore,
    key: &str,
    rule: &LimitRule,
    now_ms: u64,
) -> Result<LimitState, StoreError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let current = store.load(key)?;
        let (stored, version) = match &current {
            Some((bytes, version)) => (
                Some(decode_tat(bytes).ok_or_else(|| StoreError::Corrupt {
                    key: key.to_string(),
                })?),
                Some(*version),
            ),
            None => (None, None),
        };
        let (next, state) = gcra(rule, stored, now_ms);
        let Some(next) = next else { return Ok(state) };
        if store.compare_and_swap(key, version, &next.to_le_bytes())? {
            return Ok(state);
        }
    }
    Err(StoreError::Contention {
        attempts: MAX_CAS_ATTEMPTS,
    })
}

/// A plain in-memory store (tests, the CLI, a Durable Object's in-memory mirror).
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    entries: HashMap<String, (Vec<u8>, u64)>,
    next_version: u64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl RateLimitStore for MemoryStore {
    fn load(&mut self, key: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        Ok(self.entries.get(key).cloned())
    }

    fn compare_and_swap(
        &mut self,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<bool, StoreError> {
        let current = self.entries.get(key).map(|(_, v)| *v);
        if current != expected {
            return Ok(false);
        }
        self.next_version += 1;
        self.entries
            .insert(key.to_string(), (value.to_vec(), self.next_version));
        Ok(true)
    }
}

/// Buckets in a fixed number of slots, for stores that can never delete a key (proxy-wasm shared data): a
/// bucket hashes to `PROBES` candidate slots and takes its own, a free one, or a drained one (a bucket whose
/// TAT has passed holds no state, so reusing its slot loses nothing). Memory stays bounded by `slots`
/// whatever IDs an attacker invents; when every candidate is live the call fails closed (`StoreError::Full`).
#[derive(Debug)]
pub struct SlotTable<'s, S: RateLimitStore + ?Sized> {
    store: &'s mut S,
    slots: u32,
}

/// Candidate slots per bucket.
pub const PROBES: u32 = 8;

impl<'s, S: RateLimitStore + ?Sized> SlotTable<'s, S> {
    pub fn new(store: &'s mut S, slots: u32) -> Self {
        Self {
            store,
            slots: slots.max(1),
        }
    }

    /// The store key of slot `index`.
    pub fn slot_key(index: u32) -> String {
        let mut key = String::with_capacity(26);
        key.push_str("txngate:rl:slot:");
        crate::encoding::push_decimal(&mut key, u64::from(index));
        key
    }

    /// Like [`consume`], with `key` living in one of its candidate slots.
    pub fn consume(
        &mut self,
        key: &str,
        rule: &LimitRule,
        now_ms: u64,
    ) -> Result<LimitState, StoreError> {
        let digest = slot_digest(key);
        let mut fingerprint = [0u8; 16];
        fingerprint.copy_from_slice(digest.get(..16).unwrap_or(&[0u8; 16]));
        let start = u32::from_le_bytes([digest[16], digest[17], digest[18], digest[19]]);
        let now_units = rule.now_units(now_ms);
        for _ in 0..MAX_CAS_ATTEMPTS {
            // Pick: our slot if present, else the first free or drained candidate.
            let mut chosen: Option<(String, Option<u64>, Option<Tat>)> = None;
            for probe in 0..PROBES.min(self.slots) {
                let index = start.wrapping_add(probe) % self.slots;
                let slot = Self::slot_key(index);
                match self.store.load(&slot)? {
                    Some((bytes, version)) => {
                        let (owner, tat) = decode_slot(&bytes)
                            .ok_or_else(|| StoreError::Corrupt { key: slot.clone() })?;
                        if owner == fingerprint {
                            chosen = Some((slot, Some(version), Some(tat)));
                            break;
                        }
                        if tat <= now_units && chosen.is_none() {
                            chosen = Some((slot, Some(version), None));
                        }
                    }
                    None => {
                        if chosen.is_none() {
                            chosen = Some((slot, None, None));
                        }
                    }
                }
            }
            let Some((slot, version, stored)) = chosen else {
                return Err(StoreError::Full);
            };
            let (next, state) = gcra(rule, stored, now_ms);
            let Some(next) = next else { return Ok(state) };
            if self
                .store
                .compare_and_swap(&slot, version, &encode_slot(&fingerprint, next))?
            {
                return Ok(state);
            }
        }
        Err(StoreError::Contention {
            attempts: MAX_CAS_ATTEMPTS,
        })
    }
}

/// Bucket keys whose SHA-256 is remembered: a worker sees the same few buckets call after call, and hashing
/// the key again (two SHA-256 blocks, no hardware help in Wasm) cost about a tenth of a cached decision.
const DIGEST_MEMO: usize = 8;

/// (key, SHA-256 of key) pairs, matched on the key's exact bytes, and the next one to replace.
type DigestMemo = (Vec<(Box<str>, [u8; 32])>, usize);

std::thread_local! {
    static DIGESTS: core::cell::RefCell<DigestMemo> = const { core::cell::RefCell::new((Vec::new(), 0)) };
}

/// SHA-256 of a bucket key, from the memo or computed (and remembered): a pure function of `key`.
fn slot_digest(key: &str) -> [u8; 32] {
    DIGESTS.with_borrow_mut(|(entries, next)| {
        if let Some((_, digest)) = entries
            .iter()
            .find(|(k, _)| crate::cache::same_bytes(k.as_bytes(), key.as_bytes()))
        {
            return *digest;
        }
        let digest = crate::encoding::sha256(key.as_bytes());
        if entries.len() < DIGEST_MEMO {
            entries.push((key.into(), digest));
        } else if let Some(slot) = entries.get_mut(*next) {
            *slot = (key.into(), digest);
        }
        *next = (*next + 1) % DIGEST_MEMO;
        digest
    })
}

fn encode_slot(owner: &[u8; 16], tat: Tat) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(owner);
    out.extend_from_slice(&tat.to_le_bytes());
    out
}

fn decode_slot(bytes: &[u8]) -> Option<([u8; 16], Tat)> {
    let owner: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
    let tat = decode_tat(bytes.get(16..)?)?;
    Some((owner, tat))
}

/// How a call to the rate limit service ([`crate::rls`]) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteFailure {
    /// No answer within `timeout_ms` (gRPC DEADLINE_EXCEEDED).
    Timeout,
    /// The call could not be made or the service could not be reached (gRPC UNAVAILABLE, an unknown
    /// cluster, no healthy host).
    Unreachable,
    /// The service answered with an error status, an UNKNOWN code or bytes that are not a response.
    Error,
}

impl RemoteFailure {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Timeout => "ratelimit.remote_timeout",
            Self::Unreachable => "ratelimit.remote_unreachable",
            Self::Error => "ratelimit.remote_error",
        }
    }
}

impl core::fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Timeout => "timed out",
            Self::Unreachable => "is unreachable",
            Self::Error => "failed",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(limit: u32, period: u32, burst: u32) -> LimitRule {
        LimitRule::new(limit, period, burst).unwrap()
    }

    #[test]
    fn eleventh_call_over_ten_per_minute_is_refused() {
        let r = rule(10, 60, 10);
        let mut store = MemoryStore::new();
        for i in 0..10 {
            let s = consume(&mut store, "k", &r, 1_000_000).unwrap();
            assert!(s.allowed);
            assert_eq!(s.remaining, 9 - i);
        }
        let s = consume(&mut store, "k", &r, 1_000_000).unwrap();
        assert!(!s.allowed);
        assert_eq!(s.retry_after_ms, 6000);
        assert!(!consume(&mut store, "k", &r, 1_005_999).unwrap().allowed);
        assert!(consume(&mut store, "k", &r, 1_006_000).unwrap().allowed);
    }

    #[test]
    fn burst_is_smaller_than_limit() {
        let r = rule(10, 60, 3);
        let mut store = MemoryStore::new();
        let allowed = (0..5)
            .filter(|_| consume(&mut store, "k", &r, 0).unwrap().allowed)
            .count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn corrupt_values_are_errors_not_passes() {
        let mut store = MemoryStore::new();
        store.compare_and_swap("k", None, b"junk").unwrap();
        assert!(matches!(
            consume(&mut store, "k", &rule(1, 1, 1), 0),
            Err(StoreError::Corrupt { .. })
        ));
    }

    struct Fighting(MemoryStore);
    impl RateLimitStore for Fighting {
        fn load(&mut self, key: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
            self.0.load(key)
        }
        fn compare_and_swap(
            &mut self,
            _: &str,
            _: Option<u64>,
            _: &[u8],
        ) -> Result<bool, StoreError> {
            Ok(false)
        }
    }

    #[test]
    fn endless_contention_is_reported() {
        let mut store = Fighting(MemoryStore::new());
        assert_eq!(
            consume(&mut store, "k", &rule(1, 1, 1), 0),
            Err(StoreError::Contention {
                attempts: MAX_CAS_ATTEMPTS
            })
        );
    }

    #[test]
    fn keys_are_written_as_before() {
        let r = rule(7, 60, 3);
        assert_eq!(
            bucket_key("send:email", "agent", "spiffe://t/a", &r),
            format!("txngate:rl:7:60000:3:agent:send:email:spiffe://t/a")
        );
        for index in [0, 9, 10, 262_143, u32::MAX] {
            assert_eq!(
                SlotTable::<MemoryStore>::slot_key(index),
                format!("txngate:rl:slot:{index}")
            );
        }
    }

    #[test]
    fn slot_digests_are_sha256_of_the_key_memo_or_not() {
        let keys: Vec<String> = (0..3 * DIGEST_MEMO).map(|i| format!("k{i}")).collect();
        for round in 0..3 {
            for k in keys.iter().take(DIGEST_MEMO / 2 + round * DIGEST_MEMO) {
                assert_eq!(slot_digest(k), crate::encoding::sha256(k.as_bytes()));
            }
        }
        assert_eq!(slot_digest(""), crate::encoding::sha256(b""));
    }

    #[test]
    fn slot_table_is_bounded_and_reuses_drained_slots() {
        let r = rule(1, 1, 1);
        let mut store = MemoryStore::new();
        {
            let mut table = SlotTable::new(&mut store, 4);
            for agent in 0..4 {
                assert!(table.consume(&format!("a{agent}"), &r, 0).unwrap().allowed);
            }
            // All four slots are live: a fifth bucket cannot be placed.
            assert_eq!(table.consume("a4", &r, 0), Err(StoreError::Full));
            // A second call of a known bucket still finds it.
            assert!(!table.consume("a0", &r, 0).unwrap().allowed);
            // After a period everything drained: new buckets take the old slots.
            assert!(table.consume("a4", &r, 1000).unwrap().allowed);
        }
        assert_eq!(store.len(), 4);
    }

    proptest! {
        /// Over any window of `period`, a bucket never passes more than `burst + limit` calls, and from a
        /// full bucket exactly `burst` back-to-back calls pass.
        #[test]
        fn gcra_never_exceeds_its_bound(limit in 1u32..20, period in 1u32..10, burst in 1u32..20,
                                         gaps in prop::collection::vec(0u64..3000, 1..80)) {
            let r = rule(limit, period, burst);
            let mut tat = None;
            let mut now = 1_000_000u64;
            let mut passed: Vec<u64> = Vec::new();
            for gap in gaps {
                now += gap;
                let (next, state) = gcra(&r, tat, now);
                prop_assert_eq!(state.allowed, next.is_some());
                if let Some(n) = next { tat = Some(n); passed.push(now); }
                if !state.allowed { prop_assert!(state.retry_after_ms > 0); }
            }
            let window = u64::from(period) * 1000;
            for (i, start) in passed.iter().enumerate() {
                let in_window = passed[i..].iter().take_while(|t| **t < start + window).count();
                prop_assert!(in_window as u64 <= u64::from(burst) + u64::from(limit));
            }
        }

        #[test]
        fn full_bucket_passes_exactly_burst(limit in 1u32..50, period in 1u32..100, burst in 1u32..50) {
            let r = rule(limit, period, burst);
            let mut tat = None;
            let mut passed = 0;
            for _ in 0..(burst + 5) {
                let (next, _) = gcra(&r, tat, 5_000);
                if let Some(n) = next { tat = Some(n); passed += 1; }
            }
            prop_assert_eq!(passed, burst);
        }

        #[test]
        fn retry_after_is_exact(limit in 1u32..50, period in 1u32..100, burst in 1u32..10) {
            let r = rule(limit, period, burst);
            let mut tat = None;
            for _ in 0..burst { tat = gcra(&r, tat, 0).0.or(tat); }
            let (denied, state) = gcra(&r, tat, 0);
            prop_assert!(denied.is_none());
            prop_assert!(gcra(&r, tat, state.retry_after_ms).0.is_some());
            prop_assert!(gcra(&r, tat, state.retry_after_ms - 1).0.is_none());
        }
    }
}

//! The WPT replay window: each `jti` seen from a workload is remembered until its proof expires (plus
//! leeway). Bounded: expired entries are dropped when room is needed, and when every entry is still live a
//! new proof is refused instead of one being forgotten (forgetting would let its replay pass). One cache per
//! host instance (Envoy VM, Worker isolate): a replay to another instance is not seen, as the draft notes.

use std::collections::HashMap;

use super::WimseError;
use crate::encoding::sha256;

#[derive(Debug, Clone)]
pub struct ReplayCache {
    /// SHA-256 of `sub`, NUL, `jti` → end of the proof's validity (ms).
    seen: HashMap<[u8; 32], u64>,
    capacity: usize,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn key(sub: &str, jti: &str) -> [u8; 32] {
        let mut input = Vec::with_capacity(sub.len() + 1 + jti.len());
        input.extend_from_slice(sub.as_bytes());
        input.push(0);
        input.extend_from_slice(jti.as_bytes());
        sha256(&input)
    }

    /// Refuses a `jti` already seen from `sub` and still within its validity, remembering nothing (the
    /// body-holding header stage: the full decision of the same request remembers it).
    pub fn check(&self, sub: &str, jti: &str, now_ms: u64) -> Result<(), WimseError> {
        match self.seen.get(&Self::key(sub, jti)) {
            Some(until) if *until >= now_ms => Err(WimseError::Replay),
            _ => Ok(()),
        }
    }

    /// Refuses a `jti` already seen from `sub` and still within its validity; otherwise remembers it until
    /// `valid_until_ms`.
    pub fn check_and_remember(
        &mut self,
        sub: &str,
        jti: &str,
        valid_until_ms: u64,
        now_ms: u64,
    ) -> Result<(), WimseError> {
        self.check(sub, jti, now_ms)?;
        let key = Self::key(sub, jti);
        if self.seen.len() >= self.capacity && !self.seen.contains_key(&key) {
            self.seen.retain(|_, until| *until >= now_ms);
            if self.seen.len() >= self.capacity {
                return Err(WimseError::ReplayCacheFull {
                    entries: self.capacity,
                });
            }
        }
        self.seen.insert(key, valid_until_ms);
        Ok(())
    }
}

//! Verified tokens, kept so a transaction's later calls skip the signature check. Bounded in entries; each
//! entry dies at its token's `exp` (plus leeway) and when the keys it was verified with are replaced.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::token::VerifiedToken;

#[derive(Debug)]
struct Entry {
    token: Arc<VerifiedToken>,
    valid_until_ms: i128,
    key_generation: u64,
}

/// A bounded first-in-first-out map from token SHA-256 to its verified claims.
#[derive(Debug, Default)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<[u8; 32], Entry>,
    order: VecDeque<[u8; 32]>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::with_capacity(capacity.min(4096)),
            order: VecDeque::new(),
        }
    }

    /// The cached token if still valid at `now_ms` and verified under the current key generation.
    pub fn get(
        &mut self,
        hash: &[u8; 32],
        now_ms: u64,
        key_generation: u64,
    ) -> Option<Arc<VerifiedToken>> {
        let entry = self.entries.get(hash)?;
        if entry.valid_until_ms <= i128::from(now_ms) || entry.key_generation != key_generation {
            self.entries.remove(hash);
            return None;
        }
        Some(Arc::clone(&entry.token))
    }

    pub fn insert(&mut self, token: Arc<VerifiedToken>, valid_until_ms: i128, key_generation: u64) {
        if self.capacity == 0 || self.entries.contains_key(token.sha256()) {
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        let hash = *token.sha256();
        self.entries.insert(
            hash,
            Entry {
                token,
                valid_until_ms,
                key_generation,
            },
        );
        self.order.push_back(hash);
        if self.order.len() > self.capacity.saturating_mul(2) {
            let entries = &self.entries;
            self.order.retain(|h| entries.contains_key(h));
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}

/// The SHA-256 (and its hex) of the last few raw tokens seen, matched on their exact bytes: a transaction's
/// calls repeat one token, and hashing it again on every call (SHA-256 has no hardware help in Wasm) cost
/// more than the rest of a cached decision. A miss costs a few length checks and short `memcmp`s.
#[derive(Debug, Default)]
pub struct HashMemo {
    entries: Vec<MemoEntry>,
    next: usize,
}

struct MemoEntry {
    raw: Box<str>,
    sha256: [u8; 32],
    hex: Box<str>,
}

/// Never prints the token itself, only its hash.
impl core::fmt::Debug for MemoEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MemoEntry")
            .field("sha256", &self.hex)
            .finish_non_exhaustive()
    }
}

/// Tokens remembered (a handful of interleaved transactions per worker).
const MEMO_ENTRIES: usize = 8;

impl HashMemo {
    /// The SHA-256 of `raw` and its lowercase hex, from the memo or computed (and remembered).
    pub fn sha256(&mut self, raw: &str) -> ([u8; 32], String) {
        if let Some(e) = self.entries.iter().find(|e| &*e.raw == raw) {
            return (e.sha256, e.hex.to_string());
        }
        let sha256 = crate::encoding::sha256(raw.as_bytes());
        let hex = crate::encoding::hex_lower(&sha256);
        let entry = MemoEntry {
            raw: raw.into(),
            sha256,
            hex: hex.as_str().into(),
        };
        if self.entries.len() < MEMO_ENTRIES {
            self.entries.push(entry);
        } else if let Some(slot) = self.entries.get_mut(self.next) {
            *slot = entry;
        }
        self.next = (self.next + 1) % MEMO_ENTRIES;
        (sha256, hex)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn memo_matches_sha256_and_evicts_in_turn() {
        let mut memo = HashMemo::default();
        let tokens: Vec<String> = (0..20).map(|i| format!("a.b{i}.c")).collect();
        for round in 0..3 {
            for t in &tokens[..(4 + round * 6)] {
                let (hash, hex) = memo.sha256(t);
                assert_eq!(hash, crate::encoding::sha256(t.as_bytes()));
                assert_eq!(hex, crate::encoding::sha256_hex(t.as_bytes()));
            }
        }
        assert!(memo.entries.len() <= MEMO_ENTRIES);
    }
}

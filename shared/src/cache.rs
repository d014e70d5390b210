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
        if self.capacity == 0 || self.entries.contains_key(&token.sha256) {
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
        let hash = token.sha256;
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

//! Verified tokens, kept so a transaction's later calls skip the signature check. Bounded in entries; each
//! entry dies at its token's `exp` (plus leeway) and when the keys it was verified with are replaced.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::token::VerifiedToken;

struct Entry {
    /// The token as sent: a hit must be this exact token, not one that only shares its key.
    raw: Box<str>,
    token: Arc<VerifiedToken>,
    /// The SHA-256 of `raw` in lowercase hex, for the audit record.
    sha256_hex: Box<str>,
    valid_until_ms: i128,
    key_generation: u64,
}

/// Never prints the token itself, only its hash.
impl core::fmt::Debug for Entry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Entry")
            .field("sha256", &self.sha256_hex)
            .field("valid_until_ms", &self.valid_until_ms)
            .field("key_generation", &self.key_generation)
            .finish_non_exhaustive()
    }
}

/// Where a raw token is filed: its length and its last 32 bytes (the end of its signature, which differs
/// between tokens), so a lookup hashes 40 bytes whatever the token's size; the entry holds the whole token,
/// compared in full on a hit. Two tokens with the same key only take each other's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TokenKey {
    len: usize,
    tail: [u8; 32],
}

impl TokenKey {
    fn of(raw: &str) -> Self {
        let bytes = raw.as_bytes();
        let end = bytes
            .get(bytes.len().saturating_sub(32)..)
            .unwrap_or_default();
        let mut tail = [0; 32];
        if let Some(slot) = tail.get_mut(..end.len()) {
            slot.copy_from_slice(end);
        }
        Self {
            len: bytes.len(),
            tail,
        }
    }
}

/// Equal bytes, compared eight at a time (Wasm's `memcmp` goes byte by byte; tokens are a few hundred).
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    fn word(chunk: &[u8]) -> Option<u64> {
        chunk.try_into().ok().map(u64::from_ne_bytes)
    }
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    a.len() == b.len()
        && a8.remainder() == b8.remainder()
        && a8.zip(b8).all(|(x, y)| word(x) == word(y))
}

/// A bounded first-in-first-out map from a raw token to its verified claims. Keyed by the token's own
/// bytes, so a repeated token is found without hashing it (issue #17); its SHA-256 for the audit is kept
/// with it.
#[derive(Debug, Default)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<TokenKey, Entry>,
    order: VecDeque<TokenKey>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::with_capacity(capacity.min(4096)),
            order: VecDeque::new(),
        }
    }

    /// The cached token `raw` and its SHA-256 in hex, if still valid at `now_ms` and verified under the
    /// current key generation.
    pub fn get(
        &mut self,
        raw: &str,
        now_ms: u64,
        key_generation: u64,
    ) -> Option<(Arc<VerifiedToken>, String)> {
        let key = TokenKey::of(raw);
        let entry = self.entries.get(&key)?;
        if !same_bytes(entry.raw.as_bytes(), raw.as_bytes()) {
            return None;
        }
        if entry.valid_until_ms <= i128::from(now_ms) || entry.key_generation != key_generation {
            self.entries.remove(&key);
            return None;
        }
        Some((Arc::clone(&entry.token), entry.sha256_hex.to_string()))
    }

    /// Caches `token`, verified from `raw`.
    pub fn insert(
        &mut self,
        raw: &str,
        token: Arc<VerifiedToken>,
        valid_until_ms: i128,
        key_generation: u64,
    ) {
        if self.capacity == 0 {
            return;
        }
        let key = TokenKey::of(raw);
        let filed = match self.entries.get(&key) {
            Some(entry) if same_bytes(entry.raw.as_bytes(), raw.as_bytes()) => return,
            // Another token under the same key: this one takes its place (and its turn in `order`).
            Some(_) => true,
            None => false,
        };
        while !filed && self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        let sha256_hex = crate::encoding::hex_lower(token.sha256()).into();
        self.entries.insert(
            key,
            Entry {
                raw: raw.into(),
                token,
                sha256_hex,
                valid_until_ms,
                key_generation,
            },
        );
        if !filed {
            self.order.push_back(key);
        }
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
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| same_bytes(e.raw.as_bytes(), raw.as_bytes()))
        {
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
    use super::*;

    #[test]
    fn tokens_are_filed_by_length_and_tail_and_compared_in_full() {
        let a = format!("{}.{}", "h".repeat(40), "s".repeat(43));
        let b = format!("{}.{}", "g".repeat(40), "s".repeat(43));
        assert_eq!(TokenKey::of(&a), TokenKey::of(&b));
        assert!(!same_bytes(a.as_bytes(), b.as_bytes()));
        assert_ne!(TokenKey::of("a.b.c"), TokenKey::of("a.b.d"));
        assert_ne!(TokenKey::of("x"), TokenKey::of("x\0"));
        for (x, y) in [
            ("", ""),
            ("abc", "abc"),
            ("abcdefghi", "abcdefghi"),
            ("abcdefgh", "abcdefgi"),
        ] {
            assert_eq!(same_bytes(x.as_bytes(), y.as_bytes()), x == y, "{x} {y}");
        }
        assert!(!same_bytes(b"abcdefgh1", b"abcdefgh2"));
        assert!(!same_bytes(b"abcdefgh", b"abcdefghi"));
    }

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

//! Rate-limit buckets in proxy-wasm shared data.
//!
//! Envoy's shared data is a process-wide map (per `vm_id`) of `key -> (value, cas)` that every VM (the main
//! thread's and each worker's) reads and writes. It offers exactly two calls:
//!
//! * `get(key) -> (value, cas)`: `cas` is a version taken from one process-wide counter, never 0 for a
//!   present key;
//! * `set(key, value, cas)`: on a present key, writes when `cas` equals its current version (else
//!   `CasMismatch`), and writes **unconditionally when `cas` is 0**; on a missing key it **always** writes,
//!   whatever `cas` says. Keys are never deleted.
//!
//! That is enough for `compare_and_swap(key, Some(version), value)` (a `set` with that version), but not for
//! `compare_and_swap(key, None, value)` ("create only if absent"): two VMs that both saw the key missing
//! would both "create" it, and the second write would silently replace the first, losing a consumed call.
//! The core's [`SlotTable`](txngate_core::ratelimit::SlotTable) needs exactly that operation each time a
//! bucket takes a slot that was never used.
//!
//! # The creation lock
//!
//! Creations are serialised by one lock in shared data, [`LOCK_KEY`], whose value is either [`FREE`] or
//! `H ‖ owner ‖ sequence ‖ since_ms` (an owner held since `since_ms`):
//!
//! 1. **Created at VM start, only if absent** ([`ensure_lock`]): `get`; if missing, `set(FREE, 0)`. Once it
//!    exists nobody ever writes it without a matching `cas`, so every later step is a true compare-and-swap.
//! 2. **Acquire**: `get` the lock at version `v`. If it is free, or held for longer than [`STEAL_AFTER_MS`]
//!    (its holder died mid-way: a trapped VM never releases), `set(held-by-us, v)`. A `CasMismatch` means
//!    another VM moved first: spin. Then `get` it back: the value must be ours (owner and sequence are
//!    unique), which also yields our version `v'`. At most [`LOCK_SPINS`] attempts, then
//!    `StoreError::Contention` (fail closed: the rule's `on_store_error` decides).
//! 3. **Create**: `get` the bucket key again: present means another VM created it first, so answer
//!    `Ok(false)` (the caller reloads and does an ordinary CAS on the version it finds). Absent: `set` it
//!    with cas 0 — a creation, the only writer because we hold the lock.
//! 4. **Release**: `set(FREE, v')`. A mismatch means our lock was stolen while we held it (we were stalled
//!    past the steal timeout), so mutual exclusion may have been broken: `StoreError` (fail closed).
//!
//! The one remaining window is step 1 itself: two VMs starting at the same instant may both see the lock
//! missing and both write `FREE`; if a third VM acquired the lock in between, the second `FREE` releases it
//! early. VMs start before traffic flows, so this needs a VM start racing a slot creation, and its worst
//! outcome is one bucket created twice (at most one extra burst allowed once). Everything else that is
//! unexpected (a present key with cas 0, a value that is neither free nor held, a host error) becomes a
//! `StoreError`, never a pass.
//!
//! All calls run synchronously inside one VM, so within a VM there is no interleaving; across worker threads
//! Envoy's shared-data mutex makes each `get`/`set` atomic, which is all the protocol assumes.

use txngate_core::ratelimit::{RateLimitStore, StoreError};

/// Envoy's two shared-data calls, with Envoy's semantics (see the module documentation).
pub trait SharedData {
    /// The value and its version (cas), or None when the key was never written.
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, String>;
    /// Ok(true) when written, Ok(false) on `CasMismatch`. `cas` 0 writes unconditionally; a missing key is
    /// always written.
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, String>;
    /// Wall-clock milliseconds (only used to notice a lock whose holder died).
    fn now_ms(&mut self) -> u64;
}

/// The shared-data key of the creation lock.
pub const LOCK_KEY: &str = "txngate:rl:create-lock";
/// The value of a free lock.
pub const FREE: &[u8] = b"free";
/// The core's bounds on the lock: attempts before `StoreError::Contention`, and how long a holder may keep it
/// before it counts as dead.
pub use txngate_core::host::{LOCK_SPINS, STEAL_AFTER_MS};

/// A held lock's value starts with this tag, then the holder's id, its sequence number and the time it took
/// the lock (each a little-endian u64).
const HELD_TAG: &[u8] = b"H";

/// Who this VM is when it holds the lock: a random id (drawn once per VM) and a sequence number that makes
/// each acquisition's value unique.
#[derive(Debug, Clone)]
pub struct LockOwner {
    id: u64,
    sequence: u64,
}

impl LockOwner {
    pub fn new(id: u64) -> Self {
        Self { id, sequence: 0 }
    }

    fn next_value(&mut self, now_ms: u64) -> Vec<u8> {
        self.sequence = self.sequence.wrapping_add(1);
        [
            HELD_TAG,
            &self.id.to_le_bytes(),
            &self.sequence.to_le_bytes(),
            &now_ms.to_le_bytes(),
        ]
        .concat()
    }
}

/// What the lock key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockState {
    Free,
    Held { since_ms: u64 },
}

fn decode_lock(value: &[u8]) -> Option<LockState> {
    if value == FREE {
        return Some(LockState::Free);
    }
    // The tag, then id and sequence (16 bytes), then exactly the 8 bytes of the time.
    let fields = value.strip_prefix(HELD_TAG)?;
    let since: [u8; 8] = fields.get(16..)?.try_into().ok()?;
    Some(LockState::Held {
        since_ms: u64::from_le_bytes(since),
    })
}

/// Step 1: creates the lock key if it does not exist yet. Called at VM start.
pub fn ensure_lock(data: &mut dyn SharedData) -> Result<(), String> {
    if data.get(LOCK_KEY)?.is_none() {
        data.set(LOCK_KEY, FREE, 0)?;
    }
    Ok(())
}

/// What a slot-creation attempt ran into (for metrics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockStats {
    pub acquired: u32,
    pub spins: u32,
    pub stolen: u32,
}

/// [`RateLimitStore`] over shared data. One per decision; borrows the VM's [`LockOwner`].
#[derive(Debug)]
pub struct SharedStore<'o, D: SharedData> {
    data: D,
    owner: &'o mut LockOwner,
    pub stats: LockStats,
}

fn backend(detail: impl Into<String>) -> StoreError {
    StoreError::Backend {
        detail: detail.into(),
    }
}

impl<'o, D: SharedData> SharedStore<'o, D> {
    pub fn new(data: D, owner: &'o mut LockOwner) -> Self {
        Self {
            data,
            owner,
            stats: LockStats::default(),
        }
    }

    /// Step 2: returns the lock's version while we hold it.
    fn acquire(&mut self) -> Result<u32, StoreError> {
        for _ in 0..LOCK_SPINS {
            let Some((value, version)) = self.data.get(LOCK_KEY).map_err(backend)? else {
                // Never created (VM start failed to?): create it the same way, then try again.
                ensure_lock(&mut self.data).map_err(backend)?;
                continue;
            };
            if version == 0 {
                return Err(backend(
                    "shared data returned version 0 for the rate-limit lock",
                ));
            }
            let now = self.data.now_ms();
            let stealing = match decode_lock(&value) {
                Some(LockState::Free) => false,
                Some(LockState::Held { since_ms })
                    if now.saturating_sub(since_ms) >= STEAL_AFTER_MS =>
                {
                    true
                }
                Some(LockState::Held { .. }) => {
                    self.stats.spins += 1;
                    continue;
                }
                None => {
                    return Err(StoreError::Corrupt {
                        key: LOCK_KEY.to_string(),
                    })
                }
            };
            let mine = self.owner.next_value(now);
            if !self.data.set(LOCK_KEY, &mine, version).map_err(backend)? {
                self.stats.spins += 1;
                continue;
            }
            // Read our own write back to learn its version; the value proves nobody replaced it meanwhile.
            return match self.data.get(LOCK_KEY).map_err(backend)? {
                Some((value, held)) if value == mine && held != 0 => {
                    self.stats.acquired += 1;
                    self.stats.stolen += u32::from(stealing);
                    Ok(held)
                }
                _ => Err(backend(
                    "rate-limit lock was taken over right after it was acquired",
                )),
            };
        }
        Err(StoreError::Contention {
            attempts: LOCK_SPINS,
        })
    }

    /// Step 4.
    fn release(&mut self, held: u32) -> Result<(), StoreError> {
        if self.data.set(LOCK_KEY, FREE, held).map_err(backend)? {
            Ok(())
        } else {
            Err(backend(
                "rate-limit lock was stolen while held (stalled past the steal timeout)",
            ))
        }
    }

    /// Steps 2-4: writes `value` at `key` only if `key` does not exist.
    fn create(&mut self, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let held = self.acquire()?;
        let created = match self.data.get(key) {
            Ok(Some(_)) => Ok(false),
            Ok(None) => self.data.set(key, value, 0).map_err(backend),
            Err(e) => Err(backend(e)),
        };
        // Release whatever happened; a failed release wins over the result (fail closed).
        self.release(held)?;
        created
    }
}

impl<D: SharedData> RateLimitStore for SharedStore<'_, D> {
    fn load(&mut self, key: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        match self.data.get(key).map_err(backend)? {
            None => Ok(None),
            Some((_, 0)) => Err(backend(format!(
                "shared data returned version 0 for {key:?}"
            ))),
            Some((value, version)) => Ok(Some((value, u64::from(version)))),
        }
    }

    fn compare_and_swap(
        &mut self,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<bool, StoreError> {
        match expected {
            None => self.create(key, value),
            Some(version) => {
                // Version 0 would turn the compare-and-swap into an unconditional write.
                let cas = u32::try_from(version)
                    .ok()
                    .filter(|v| *v != 0)
                    .ok_or_else(|| {
                        backend(format!("version {version} is not a shared-data cas"))
                    })?;
                self.data.set(key, value, cas).map_err(backend)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;
    use txngate_core::ratelimit::{LimitRule, SlotTable};
    use txngate_core::Limiter;

    /// Another VM's actions, run at a given call number.
    type Hook = Box<dyn FnMut(&mut Envoy)>;

    /// Envoy's shared data (proxy-wasm-cpp-host `SharedData::set`), shared by several fake VMs.
    #[derive(Default)]
    struct Envoy {
        map: BTreeMap<String, (Vec<u8>, u32)>,
        next_cas: u32,
        now_ms: u64,
        calls: u64,
        /// Runs before call number N (1-based): another VM acting in between.
        interleave: Vec<(u64, Hook)>,
    }

    impl Envoy {
        fn raw_set(&mut self, key: &str, value: &[u8], cas: u32) -> bool {
            if let Some(entry) = self.map.get(key) {
                if cas != 0 && cas != entry.1 {
                    return false;
                }
            }
            self.next_cas += 1;
            self.map
                .insert(key.to_string(), (value.to_vec(), self.next_cas));
            true
        }

        fn tick(&mut self) {
            self.calls += 1;
            let n = self.calls;
            let mut hooks = std::mem::take(&mut self.interleave);
            for (at, hook) in hooks.iter_mut() {
                if *at == n {
                    hook(self);
                }
            }
            self.interleave = hooks;
        }
    }

    #[derive(Clone)]
    struct Vm(Rc<RefCell<Envoy>>);

    impl SharedData for Vm {
        fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, String> {
            let mut e = self.0.borrow_mut();
            e.tick();
            Ok(e.map.get(key).cloned())
        }
        fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, String> {
            let mut e = self.0.borrow_mut();
            e.tick();
            Ok(e.raw_set(key, value, cas))
        }
        fn now_ms(&mut self) -> u64 {
            self.0.borrow().now_ms
        }
    }

    fn envoy() -> Rc<RefCell<Envoy>> {
        Rc::new(RefCell::new(Envoy {
            now_ms: 1_000_000,
            ..Envoy::default()
        }))
    }

    #[test]
    fn create_only_if_absent_and_cas() {
        let shared = envoy();
        ensure_lock(&mut Vm(shared.clone())).unwrap();
        ensure_lock(&mut Vm(shared.clone())).unwrap();
        assert_eq!(
            shared.borrow().map[LOCK_KEY],
            (FREE.to_vec(), 1),
            "created once"
        );
        let mut owner = LockOwner::new(1);
        let mut store = SharedStore::new(Vm(shared.clone()), &mut owner);
        assert!(store.compare_and_swap("k", None, b"a").unwrap());
        assert!(!store.compare_and_swap("k", None, b"b").unwrap());
        let (value, version) = store.load("k").unwrap().unwrap();
        assert_eq!(value, b"a");
        assert!(!store
            .compare_and_swap("k", Some(version + 1), b"c")
            .unwrap());
        assert!(store.compare_and_swap("k", Some(version), b"c").unwrap());
        assert!(!store.compare_and_swap("k", Some(version), b"d").unwrap());
        assert_eq!(store.load("k").unwrap().unwrap().0, b"c");
        assert_eq!(shared.borrow().map[LOCK_KEY].0, FREE, "lock released");
        assert_eq!(store.stats.acquired, 2);
        // Version 0 never reaches Envoy (it would be an unconditional write).
        assert!(store.compare_and_swap("k", Some(0), b"e").is_err());
    }

    #[test]
    fn another_vm_creating_while_we_wait_for_the_lock_is_seen() {
        let shared = envoy();
        shared.borrow_mut().raw_set(LOCK_KEY, FREE, 0);
        // Call 1 is our lock `get`: just before it, VM B creates the key (under its own lock).
        shared.borrow_mut().interleave.push((
            1,
            Box::new(|e: &mut Envoy| {
                e.raw_set("k", b"from-b", 0);
            }),
        ));
        let mut owner = LockOwner::new(1);
        let mut store = SharedStore::new(Vm(shared.clone()), &mut owner);
        assert!(!store.compare_and_swap("k", None, b"from-a").unwrap());
        assert_eq!(shared.borrow().map["k"].0, b"from-b");
    }

    #[test]
    fn lost_lock_race_spins_then_wins() {
        let shared = envoy();
        shared.borrow_mut().raw_set(LOCK_KEY, FREE, 0);
        // Between our lock `get` (call 1) and our lock `set` (call 2), VM B takes and releases the lock.
        shared.borrow_mut().interleave.push((
            2,
            Box::new(|e: &mut Envoy| {
                let v = e.map[LOCK_KEY].1;
                assert!(e.raw_set(LOCK_KEY, &LockOwner::new(2).next_value(e.now_ms), v));
                let v = e.map[LOCK_KEY].1;
                assert!(e.raw_set(LOCK_KEY, FREE, v));
            }),
        ));
        let mut owner = LockOwner::new(1);
        let mut store = SharedStore::new(Vm(shared.clone()), &mut owner);
        assert!(store.compare_and_swap("k", None, b"a").unwrap());
        assert_eq!(store.stats.spins, 1);
    }

    #[test]
    fn live_lock_is_waited_for_then_contention_fails_closed() {
        let shared = envoy();
        let now = shared.borrow().now_ms;
        shared
            .borrow_mut()
            .raw_set(LOCK_KEY, &LockOwner::new(9).next_value(now), 0);
        let mut owner = LockOwner::new(1);
        let mut store = SharedStore::new(Vm(shared.clone()), &mut owner);
        let err = store.compare_and_swap("k", None, b"a").unwrap_err();
        assert_eq!(
            err,
            StoreError::Contention {
                attempts: LOCK_SPINS
            }
        );
        assert!(
            !shared.borrow().map.contains_key("k"),
            "nothing written without the lock"
        );
    }

    #[test]
    fn lock_of_a_dead_vm_is_stolen_after_the_timeout() {
        let shared = envoy();
        let now = shared.borrow().now_ms;
        shared.borrow_mut().raw_set(
            LOCK_KEY,
            &LockOwner::new(9).next_value(now - STEAL_AFTER_MS),
            0,
        );
        let mut owner = LockOwner::new(1);
        let mut store = SharedStore::new(Vm(shared.clone()), &mut owner);
        assert!(store.compare_and_swap("k", None, b"a").unwrap());
        assert_eq!(store.stats.stolen, 1);
        assert_eq!(shared.borrow().map[LOCK_KEY].0, FREE);
    }

    #[test]
    fn lock_stolen_while_held_fails_closed() {
        let shared = envoy();
        shared.borrow_mut().raw_set(LOCK_KEY, FREE, 0);
        // Calls: 1 get lock, 2 set lock, 3 get lock (read back), 4 get key, 5 set key, 6 release.
        // Before the release, VM B steals the lock.
        shared.borrow_mut().interleave.push((
            6,
            Box::new(|e: &mut Envoy| {
                let v = e.map[LOCK_KEY].1;
                assert!(e.raw_set(LOCK_KEY, &LockOwner::new(2).next_value(e.now_ms), v));
            }),
        ));
        let mut owner = LockOwner::new(1);
        let mut store = SharedStore::new(Vm(shared.clone()), &mut owner);
        assert!(matches!(
            store.compare_and_swap("k", None, b"a"),
            Err(StoreError::Backend { .. })
        ));
    }

    #[test]
    fn missing_lock_is_created_and_corrupt_lock_is_an_error() {
        let shared = envoy();
        let mut owner = LockOwner::new(1);
        let mut store = SharedStore::new(Vm(shared.clone()), &mut owner);
        assert!(store.compare_and_swap("k", None, b"a").unwrap());
        shared.borrow_mut().raw_set(LOCK_KEY, b"junk", 0);
        assert_eq!(
            store.compare_and_swap("k2", None, b"a"),
            Err(StoreError::Corrupt {
                key: LOCK_KEY.into()
            })
        );
    }

    #[test]
    fn two_vms_share_one_bucket_through_the_slot_table() {
        let shared = envoy();
        shared.borrow_mut().raw_set(LOCK_KEY, FREE, 0);
        let rule = LimitRule::new(10, 60, 10).unwrap();
        let (mut a, mut b) = (LockOwner::new(1), LockOwner::new(2));
        let mut allowed = 0;
        for i in 0..15 {
            let owner = if i % 2 == 0 { &mut a } else { &mut b };
            let mut store = SharedStore::new(Vm(shared.clone()), owner);
            let mut table = SlotTable::new(&mut store, 64);
            if Limiter::consume(&mut table, "txngate:rl:agent-1", &rule, 1_000_000)
                .unwrap()
                .allowed
            {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 10);
        // One slot plus the lock: nothing else was written.
        assert_eq!(shared.borrow().map.len(), 2);
    }

    #[test]
    fn racing_first_calls_on_a_new_bucket_lose_nothing() {
        // VM B's whole first call runs between VM A's slot scan and VM A's creation: A must notice the
        // slot now exists and retry as a CAS, so both calls count.
        let shared = envoy();
        shared.borrow_mut().raw_set(LOCK_KEY, FREE, 0);
        let rule = LimitRule::new(2, 60, 2).unwrap();
        // SlotTable with 1 slot: call 1 = slot get; call 2 = our lock get. B runs before call 2.
        shared.borrow_mut().interleave.push((
            2,
            Box::new(move |e: &mut Envoy| {
                // Run B's consume on a detached copy of the map, then write back (we hold &mut Envoy).
                let copy = Rc::new(RefCell::new(Envoy {
                    map: e.map.clone(),
                    next_cas: e.next_cas,
                    now_ms: e.now_ms,
                    ..Envoy::default()
                }));
                let mut owner = LockOwner::new(2);
                let mut store = SharedStore::new(Vm(Rc::clone(&copy)), &mut owner);
                let mut table = SlotTable::new(&mut store, 1);
                assert!(
                    Limiter::consume(
                        &mut table,
                        "bucket",
                        &LimitRule::new(2, 60, 2).unwrap(),
                        1_000_000
                    )
                    .unwrap()
                    .allowed
                );
                let copy = copy.borrow();
                e.map = copy.map.clone();
                e.next_cas = copy.next_cas;
            }),
        ));
        let mut owner = LockOwner::new(1);
        let mut store = SharedStore::new(Vm(shared.clone()), &mut owner);
        let mut table = SlotTable::new(&mut store, 1);
        assert!(
            Limiter::consume(&mut table, "bucket", &rule, 1_000_000)
                .unwrap()
                .allowed
        );
        // Both calls were counted: the third is refused.
        assert!(
            !Limiter::consume(&mut table, "bucket", &rule, 1_000_000)
                .unwrap()
                .allowed
        );
    }
}

//! State shared by all VMs of a host (Envoy's process-wide state): clock, shared data,
//! shared queues and metrics.

use crate::abi::Status;
use crate::types::{MetricKind, MetricValue, Metrics};
use std::collections::{BTreeMap, HashMap, VecDeque};

#[derive(Debug)]
pub(crate) struct Queue {
    pub items: VecDeque<Vec<u8>>,
    /// VM index and root context that registered the queue (gets `on_queue_ready`).
    pub owner: (usize, u32),
}

#[derive(Debug)]
pub(crate) struct World {
    pub now_ns: u64,
    /// key -> (value, cas). Envoy keys shared data by vm_id; all our VMs share one vm_id.
    pub shared: BTreeMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    pub queues: BTreeMap<u32, Queue>,
    queue_ids: HashMap<(String, String), u32>,
    next_queue: u32,
    /// Pending `on_queue_ready` notifications: (vm index, root context id, queue id).
    pub queue_ready: Vec<(usize, u32, u32)>,
    pub metrics: Metrics,
    pub next_vm: usize,
    rng: u64,
}

impl World {
    pub fn new(now_ns: u64) -> World {
        World {
            now_ns,
            shared: BTreeMap::new(),
            next_cas: 1,
            queues: BTreeMap::new(),
            queue_ids: HashMap::new(),
            next_queue: 1,
            queue_ready: Vec::new(),
            metrics: Metrics::new(),
            next_vm: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn next_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    /// `proxy_get_shared_data`.
    pub fn get_shared(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared.get(key).cloned()
    }

    /// `proxy_set_shared_data` with proxy-wasm-cpp-host semantics: a missing key is inserted
    /// whatever the cas; on an existing key cas 0 overwrites unconditionally, otherwise the
    /// cas must match. Every successful set takes a new value of a global counter.
    pub fn set_shared(&mut self, key: &str, value: Vec<u8>, cas: u32) -> Status {
        if let Some(entry) = self.shared.get(key) {
            if cas != 0 && cas != entry.1 {
                return Status::CasMismatch;
            }
        }
        let next = self.next_cas();
        self.shared.insert(key.to_string(), (value, next));
        Status::Ok
    }

    pub fn register_queue(&mut self, vm_id: &str, name: &str, owner: (usize, u32)) -> u32 {
        let key = (vm_id.to_string(), name.to_string());
        if let Some(id) = self.queue_ids.get(&key).copied() {
            if let Some(q) = self.queues.get_mut(&id) {
                q.owner = owner;
            }
            return id;
        }
        let id = self.next_queue;
        self.next_queue += 1;
        self.queue_ids.insert(key, id);
        self.queues.insert(
            id,
            Queue {
                items: VecDeque::new(),
                owner,
            },
        );
        id
    }

    pub fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.queue_ids
            .get(&(vm_id.to_string(), name.to_string()))
            .copied()
    }

    pub fn enqueue(&mut self, id: u32, value: Vec<u8>) -> Status {
        match self.queues.get_mut(&id) {
            Some(q) => {
                q.items.push_back(value);
                let (vm, root) = q.owner;
                self.queue_ready.push((vm, root, id));
                Status::Ok
            }
            None => Status::NotFound,
        }
    }

    pub fn dequeue(&mut self, id: u32) -> Result<Vec<u8>, Status> {
        match self.queues.get_mut(&id) {
            Some(q) => q.items.pop_front().ok_or(Status::Empty),
            None => Err(Status::NotFound),
        }
    }

    pub fn metric_entry(&mut self, name: &str, kind: MetricKind) -> &mut MetricValue {
        self.metrics
            .entry(name.to_string())
            .or_insert_with(|| MetricValue {
                kind,
                value: 0,
                samples: Vec::new(),
            })
    }

    /// Deterministic pseudo-random bytes for `random_get` (splitmix64).
    pub fn random_fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let bytes = z.to_le_bytes();
            for (dst, src) in chunk.iter_mut().zip(bytes.iter()) {
                *dst = *src;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_data_follows_envoy_cas_rules() {
        let mut w = World::new(0);
        // Missing key: inserted whatever the cas.
        assert_eq!(w.set_shared("k", b"a".to_vec(), 77), Status::Ok);
        let (_, cas1) = w.get_shared("k").unwrap();
        assert_eq!(cas1, 1);
        // Stale cas: mismatch, value untouched, counter not advanced.
        assert_eq!(w.set_shared("k", b"b".to_vec(), 99), Status::CasMismatch);
        assert_eq!(w.get_shared("k").unwrap(), (b"a".to_vec(), 1));
        // Matching cas.
        assert_eq!(w.set_shared("k", b"c".to_vec(), cas1), Status::Ok);
        assert_eq!(w.get_shared("k").unwrap(), (b"c".to_vec(), 2));
        // cas 0 overwrites unconditionally.
        assert_eq!(w.set_shared("k", b"d".to_vec(), 0), Status::Ok);
        assert_eq!(w.get_shared("k").unwrap(), (b"d".to_vec(), 3));
        // The counter is global across keys.
        assert_eq!(w.set_shared("other", b"x".to_vec(), 0), Status::Ok);
        assert_eq!(w.get_shared("other").unwrap().1, 4);
    }
}

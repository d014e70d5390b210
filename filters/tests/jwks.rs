//! The filter's remote-key sharing across VMs (`txngate_filter::jwks`) against a fake of Envoy's shared data:
//! one VM fetches and shares, the others adopt; a failure holds every VM for the core's back-off.
#![allow(clippy::unwrap_used)] // test helpers (clippy.toml: #[test] fns)

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use txngate_core::refresh::{self, FetchResult};
use txngate_core::Gate;
use txngate_filter::jwks::{answer, poll, remotes, target, Event, Meta, Remote, Target};
use txngate_filter::store::SharedData;

const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

/// A value and its version.
type Entry = (Vec<u8>, u32);

/// Envoy's shared data as every VM sees it.
#[derive(Clone, Default)]
struct Shared(Rc<RefCell<BTreeMap<String, Entry>>>);

impl SharedData for Shared {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, String> {
        Ok(self.0.borrow().get(key).cloned())
    }
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, String> {
        let mut map = self.0.borrow_mut();
        let next = map.get(key).map_or(1, |(_, c)| c + 1);
        if cas != 0 && map.get(key).is_some_and(|(_, c)| *c != cas) {
            return Ok(false);
        }
        map.insert(key.to_string(), (value.to_vec(), next));
        Ok(true)
    }
    fn now_ms(&mut self) -> u64 {
        0
    }
}

/// One VM: its gate and remote issuers.
fn vm() -> (Gate, Vec<Remote>) {
    let policy = serde_json::json!({
        "trust_domain": "trust.example",
        "issuers": [{"name": "tts", "jwks_uri": "https://tts.example/jwks", "cluster": "tts",
                     "refresh_seconds": 60, "max_stale_seconds": 600, "min_refetch_seconds": 10}],
        "agents": {"spiffe://trust.example/**": {"max_scopes": ["*"]}},
        "tools": {"*": {}}
    });
    let gate = Gate::from_json(&serde_json::to_vec(&policy).unwrap()).unwrap();
    let (remotes, warnings) = remotes(&gate).unwrap();
    assert!(warnings.is_empty());
    (gate, remotes)
}

fn ok(body: &str) -> FetchResult<'_> {
    FetchResult::Response {
        status: 200,
        body: body.as_bytes(),
        length: body.len(),
    }
}

#[test]
fn uris_split_into_cluster_authority_and_path() {
    let t = target(
        "https://tts.example:8443/.well-known/jwks.json?v=1#x",
        Some("tts"),
    )
    .unwrap();
    assert_eq!(
        t,
        Target {
            cluster: "tts".into(),
            authority: "tts.example:8443".into(),
            path: "/.well-known/jwks.json?v=1".into()
        }
    );
    let t = target("http://127.0.0.1:9000", None).unwrap();
    assert_eq!(
        (t.cluster.as_str(), t.authority.as_str(), t.path.as_str()),
        ("127.0.0.1", "127.0.0.1:9000", "/")
    );
    assert_eq!(target("http://h?x=1", None).unwrap().path, "/?x=1");
    assert_eq!(target("http://[::1]:80/k", None).unwrap().cluster, "[::1]");
    assert!(target("https://user:pw@h/k", None).is_none());
    assert!(target("https:///k", None).is_none());
    assert!(target("ftp://h/k", None).is_none());
    assert!(target("http://h/a b", None).is_none());
}

#[test]
fn meta_round_trips_and_checks_the_body() {
    let m = Meta::of(b"{\"keys\":[]}", 42);
    let back = Meta::decode(&m.encode()).unwrap();
    assert_eq!(back, m);
    assert!(back.matches(b"{\"keys\":[]}"));
    assert!(!back.matches(b"{}"));
    assert!(Meta::decode(&[0u8; 39]).is_none());
    assert!(Meta::decode(&[0u8; 41]).is_none());
}

#[test]
fn one_vm_fetches_and_the_others_adopt() {
    let data = Shared::default();
    let (mut a, remotes) = vm();
    let (mut b, _) = vm();
    let mut events = Vec::new();
    let sends = poll(&mut a, &remotes, &mut data.clone(), 1_000, &mut events);
    assert_eq!(sends.len(), 1);
    let (fetch, target) = &sends[0];
    assert_eq!(
        (target.cluster.as_str(), target.path.as_str()),
        ("tts", "/jwks")
    );
    assert_eq!(fetch.timeout_ms, refresh::FETCH_TIMEOUT_MS);
    assert!(
        poll(&mut b, &remotes, &mut data.clone(), 1_100, &mut events).is_empty(),
        "the lease keeps the second VM from sending the same fetch"
    );
    answer(
        &mut a,
        &remotes,
        0,
        &mut data.clone(),
        ok(JWKS),
        1_200,
        &mut events,
    );
    assert!(matches!(
        events.as_slice(),
        [Event::Installed { keys: 1, .. }]
    ));
    assert!(a.keys().is_usable(0, 1_200));
    assert!(!b.keys().is_usable(0, 1_300));
    events.clear();
    assert!(poll(&mut b, &remotes, &mut data.clone(), 1_300, &mut events).is_empty());
    assert!(matches!(events.as_slice(), [Event::Adopted { .. }]));
    assert!(b.keys().is_usable(0, 1_300));
    // Its next periodic fetch counts from the real fetch (1.2 s), on both VMs.
    assert!(poll(&mut b, &remotes, &mut data.clone(), 61_199, &mut events).is_empty());
    assert_eq!(
        poll(&mut b, &remotes, &mut data.clone(), 61_200, &mut events).len(),
        1
    );
}

#[test]
fn a_failure_holds_every_vm_for_the_back_off() {
    let data = Shared::default();
    let (mut a, remotes) = vm();
    let (mut b, _) = vm();
    let mut events = Vec::new();
    assert_eq!(
        poll(&mut a, &remotes, &mut data.clone(), 0, &mut events).len(),
        1
    );
    let down = FetchResult::NoResponse { detail: "refused" };
    answer(
        &mut a,
        &remotes,
        0,
        &mut data.clone(),
        down,
        100,
        &mut events,
    );
    assert!(matches!(
        events.as_slice(),
        [Event::Failed {
            retry_at_ms: 1_100,
            ..
        }]
    ));
    assert!(poll(&mut b, &remotes, &mut data.clone(), 1_099, &mut events).is_empty());
    assert_eq!(
        poll(&mut b, &remotes, &mut data.clone(), 1_100, &mut events).len(),
        1
    );
}

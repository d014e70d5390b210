//! Remote keys in the filter. The core's refresher (`txngate_core::refresh`, driven through the `Gate`)
//! decides when and what to fetch, the size cap, the timeout, the back-off and the staleness bound; this
//! module maps its fetches onto Envoy (cluster, `:authority`, `:path`) and shares them between the VMs of one
//! Envoy through shared data. The root context only makes the host calls (`dispatch_http_call`, reading the
//! answer) and logs the [`Event`]s.
//!
//! Shared data, per issuer and `jwks_uri` ([`SharedKeys`]):
//! - `body` and `meta` (`fetched_ms ‖ sha256(body)`, written last): a VM that fetched a set writes both.
//!   Every VM's tick reads the meta record (40 bytes) and, when the core says that fetch is newer than any it
//!   has seen, reads the body, checks its hash (a reader between another VM's two writes sees a mismatch and
//!   tries again next tick) and adopts it with the original fetch time, so staleness runs from the real fetch
//!   on every VM and all VMs converge on one set.
//! - `lease` (`held_until_ms`): taken for [`Fetch::lease_until_ms`] by the VM that sends a fetch, set to the
//!   core's retry time after a failure and released after a success, so the VMs together send one fetch at a
//!   time and retry a failing server once per back-off, not once per VM.
//! - `refetch` (`taken_ms`): the unknown-`kid` window across VMs, so a burst of unknown kids spread over N
//!   workers costs one refetch per `min_refetch_seconds`, not N.

use txngate_core::encoding::sha256;
use txngate_core::keys::{KeySource, SkippedKey};
use txngate_core::refresh::{self, Fetch, FetchReason, FetchResult, RefreshError, Refreshed};
use txngate_core::Gate;

use crate::store::SharedData;

/// Where a `jwks_uri` is fetched: Envoy cluster, `:authority`, `:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub cluster: String,
    pub authority: String,
    pub path: String,
}

/// Splits an `http(s)://authority/path?query` URI. `cluster` defaults to the host name. None for URIs with
/// credentials, an empty host or characters that have no place in a request line.
pub fn target(uri: &str, cluster: Option<&str>) -> Option<Target> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))?;
    let rest = rest.split('#').next().unwrap_or("");
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty()
        || authority.contains('@')
        || !authority.bytes().all(|b| b.is_ascii_graphic())
    {
        return None;
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let path = match path.strip_prefix('?') {
        Some(query) => format!("/?{query}"),
        None if path.is_empty() => "/".to_string(),
        None => path.to_string(),
    };
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    let cluster = cluster.map_or_else(|| host.to_string(), str::to_string);
    Some(Target {
        cluster,
        authority: authority.to_string(),
        path,
    })
}

/// Shared-data keys of one issuer's set. The URI is part of the name so a policy change that points an
/// issuer elsewhere never picks up the old set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKeys {
    pub meta: String,
    pub body: String,
    pub lease: String,
    pub refetch: String,
}

pub fn shared_keys(issuer_name: &str, uri: &str) -> SharedKeys {
    let digest = sha256(format!("{issuer_name}\n{uri}").as_bytes());
    let id: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    SharedKeys {
        meta: format!("txngate:jwks:{id}:meta"),
        body: format!("txngate:jwks:{id}:body"),
        lease: format!("txngate:jwks:{id}:claim"),
        refetch: format!("txngate:jwks:{id}:refetch"),
    }
}

/// The meta record of a shared set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub fetched_ms: u64,
    pub sha256: [u8; 32],
}

impl Meta {
    pub fn of(body: &[u8], fetched_ms: u64) -> Self {
        Self {
            fetched_ms,
            sha256: sha256(body),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40);
        out.extend_from_slice(&self.fetched_ms.to_le_bytes());
        out.extend_from_slice(&self.sha256);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let fetched: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        let sha256: [u8; 32] = bytes.get(8..40)?.try_into().ok()?;
        (bytes.len() == 40).then_some(Self {
            fetched_ms: u64::from_le_bytes(fetched),
            sha256,
        })
    }

    /// Whether `body` is the body this record describes.
    pub fn matches(&self, body: &[u8]) -> bool {
        sha256(body) == self.sha256
    }
}

fn encode_ms(ms: u64) -> [u8; 8] {
    ms.to_le_bytes()
}

fn decode_ms(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// A remote issuer as the filter reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub issuer: usize,
    pub name: String,
    pub target: Target,
    pub shared: SharedKeys,
}

/// The policy's remote issuers, with a warning for each that names no Envoy cluster; an error (the policy is
/// refused) for a `jwks_uri` that cannot be requested.
pub fn remotes(gate: &Gate) -> Result<(Vec<Remote>, Vec<String>), String> {
    let mut remotes = Vec::new();
    let mut warnings = Vec::new();
    for (issuer, keys) in gate.keys().issuers().iter().enumerate() {
        let KeySource::Remote { uri, cluster, .. } = &keys.source else {
            continue;
        };
        let Some(target) = target(uri, cluster.as_deref()) else {
            return Err(format!(
                "policy: issuer {:?}: jwks_uri {uri:?} cannot be requested",
                keys.name
            ));
        };
        if cluster.is_none() {
            warnings.push(format!(
                "issuer {:?} has no `cluster`: fetching {uri} through Envoy cluster {:?}",
                keys.name, target.cluster
            ));
        }
        remotes.push(Remote {
            issuer,
            name: keys.name.clone(),
            target,
            shared: shared_keys(&keys.name, uri),
        });
    }
    Ok((remotes, warnings))
}

/// Something the root context logs or counts (`txngate.jwks.<issuer>.<counter>`).
#[derive(Debug)]
pub enum Event {
    /// A set another VM fetched was installed.
    Adopted { issuer: String },
    /// A set another VM shared could not be used (not tried again).
    SharedRefused { issuer: String, error: RefreshError },
    /// An unknown-`kid` refetch was sent.
    Refetch { issuer: String },
    Installed {
        issuer: String,
        keys: usize,
        skipped: Vec<SkippedKey>,
    },
    /// Fetched again, same document.
    Unchanged { issuer: String },
    Failed {
        issuer: String,
        error: RefreshError,
        retry_at_ms: u64,
    },
    /// The fetched set could not be written to shared data (other VMs fetch it themselves).
    NotShared { issuer: String },
}

/// How loud an [`Event`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}

impl Event {
    pub fn issuer(&self) -> &str {
        match self {
            Self::Adopted { issuer }
            | Self::SharedRefused { issuer, .. }
            | Self::Refetch { issuer }
            | Self::Installed { issuer, .. }
            | Self::Unchanged { issuer }
            | Self::Failed { issuer, .. }
            | Self::NotShared { issuer } => issuer,
        }
    }

    /// The counter this event increments, under `txngate.jwks.<issuer>.`.
    pub fn counter(&self) -> Option<&'static str> {
        match self {
            Self::Adopted { .. } => Some("adopted"),
            Self::Refetch { .. } => Some("refetch"),
            Self::Installed { .. } | Self::Unchanged { .. } => Some("refresh_ok"),
            Self::Failed { .. } => Some("refresh_failed"),
            Self::SharedRefused { .. } | Self::NotShared { .. } => None,
        }
    }

    /// The log lines of this event (none for the routine ones).
    pub fn log(&self) -> Vec<(Level, String)> {
        let issuer = self.issuer();
        match self {
            Self::Installed { keys, skipped, .. } => {
                let mut lines = vec![(
                    Level::Info,
                    format!(
                        "txngate: jwks: issuer {issuer:?}: installed {keys} keys ({} skipped)",
                        skipped.len()
                    ),
                )];
                lines.extend(skipped.iter().map(|s| {
                    (
                        Level::Info,
                        format!(
                            "txngate: jwks: issuer {issuer:?}: skipped key {} ({:?}): {}",
                            s.index, s.kid, s.reason
                        ),
                    )
                }));
                lines
            }
            Self::Failed {
                error, retry_at_ms, ..
            } => vec![(
                Level::Warn,
                format!(
                    "txngate: jwks: issuer {issuer:?}: {error}; keeping the last good key set, next attempt at {retry_at_ms} ms"
                ),
            )],
            Self::SharedRefused { error, .. } => vec![(
                Level::Warn,
                format!("txngate: jwks: issuer {issuer:?}: shared key set refused: {error}"),
            )],
            Self::NotShared { .. } => vec![(
                Level::Warn,
                format!("txngate: jwks: issuer {issuer:?}: could not share the fetched key set"),
            )],
            Self::Adopted { .. } | Self::Refetch { .. } | Self::Unchanged { .. } => Vec::new(),
        }
    }
}

/// One tick: adopts sets other VMs shared, then returns the fetches to send now (the core handed them out,
/// and this VM holds their shared lease). Fetches another VM covers are given back to the core.
pub fn poll(
    gate: &mut Gate,
    remotes: &[Remote],
    data: &mut impl SharedData,
    now: u64,
    events: &mut Vec<Event>,
) -> Vec<(Fetch, Target)> {
    for remote in remotes {
        adopt(gate, remote, data, now, events);
    }
    let mut sends = Vec::new();
    for fetch in gate.poll_keys(now) {
        let Some(remote) = remotes.iter().find(|r| r.issuer == fetch.issuer) else {
            gate.release_keys_fetch(fetch.issuer);
            continue;
        };
        let refetch = fetch.reason == FetchReason::UnknownKid;
        if (refetch && !take_window(data, &remote.shared.refetch, now, fetch.refetch_window_ms))
            || !take_lease(data, &remote.shared.lease, now, fetch.lease_until_ms)
        {
            gate.release_keys_fetch(fetch.issuer);
            continue;
        }
        if refetch {
            events.push(Event::Refetch {
                issuer: remote.name.clone(),
            });
        }
        sends.push((fetch, remote.target.clone()));
    }
    sends
}

/// The answer to a fetch of `issuer` (or why there is none): to the core, then to shared data.
pub fn answer(
    gate: &mut Gate,
    remotes: &[Remote],
    issuer: usize,
    data: &mut impl SharedData,
    result: FetchResult<'_>,
    now: u64,
    events: &mut Vec<Event>,
) {
    let Some(remote) = remotes.iter().find(|r| r.issuer == issuer) else {
        return;
    };
    let body = match result {
        FetchResult::Response { body, .. } => body,
        FetchResult::TooLarge { .. } | FetchResult::NoResponse { .. } => &[],
    };
    let name = remote.name.clone();
    let fetched_ms = match gate.on_keys_response(issuer, result, now) {
        Refreshed::Installed {
            set,
            skipped,
            fetched_ms,
        } => {
            events.push(Event::Installed {
                issuer: name,
                keys: set.len(),
                skipped,
            });
            fetched_ms
        }
        Refreshed::Unchanged { fetched_ms } => {
            events.push(Event::Unchanged { issuer: name });
            fetched_ms
        }
        Refreshed::Failed {
            error, retry_at_ms, ..
        } => {
            let _ = data.set(&remote.shared.lease, &encode_ms(retry_at_ms), 0);
            events.push(Event::Failed {
                issuer: name,
                error,
                retry_at_ms,
            });
            return;
        }
        _ => return,
    };
    let _ = data.set(&remote.shared.lease, &encode_ms(0), 0);
    // Shared unless another VM already shared a newer fetch.
    let meta = Meta::of(body, fetched_ms);
    let newer = data
        .get(&remote.shared.meta)
        .ok()
        .flatten()
        .and_then(|(bytes, _)| Meta::decode(&bytes))
        .is_none_or(|shared| shared.fetched_ms < fetched_ms);
    if newer
        && !(data.set(&remote.shared.body, body, 0).unwrap_or(false)
            && data
                .set(&remote.shared.meta, &meta.encode(), 0)
                .unwrap_or(false))
    {
        events.push(Event::NotShared {
            issuer: remote.name.clone(),
        });
    }
}

/// Adopts the set another VM shared, when the core says it is newer than any this VM has seen.
fn adopt(
    gate: &mut Gate,
    remote: &Remote,
    data: &mut impl SharedData,
    now: u64,
    events: &mut Vec<Event>,
) {
    let Some(meta) = data
        .get(&remote.shared.meta)
        .ok()
        .flatten()
        .and_then(|(bytes, _)| Meta::decode(&bytes))
    else {
        return;
    };
    if !gate
        .keys()
        .refresher()
        .is_newer(remote.issuer, meta.fetched_ms)
    {
        return;
    }
    let Some((body, _)) = data.get(&remote.shared.body).ok().flatten() else {
        return;
    };
    if !meta.matches(&body) {
        return; // another VM is between its two writes; next tick
    }
    match gate.adopt_keys(remote.issuer, &body, meta.fetched_ms, now) {
        Refreshed::Installed { .. } => events.push(Event::Adopted {
            issuer: remote.name.clone(),
        }),
        Refreshed::Rejected { error } => events.push(Event::SharedRefused {
            issuer: remote.name.clone(),
            error,
        }),
        _ => {}
    }
}

/// Takes an issuer's fetch lease until `until`: false while another VM holds it (its fetch in flight, or
/// its failed fetch's back-off). A shared-data error answers true: a duplicate fetch is harmless.
fn take_lease(data: &mut impl SharedData, key: &str, now: u64, until: u64) -> bool {
    match data.get(key) {
        Ok(None) => data.set(key, &encode_ms(until), 0).unwrap_or(false),
        Ok(Some((value, cas))) => {
            if decode_ms(&value).is_some_and(|held| refresh::lease_is_held(held, now)) {
                return false;
            }
            data.set(key, &encode_ms(until), cas).unwrap_or(false)
        }
        Err(_) => true,
    }
}

/// Takes the issuer's unknown-`kid` window from `now`: false while another VM's window runs. A shared-data
/// error answers true: the core's per-VM debounce still holds.
fn take_window(data: &mut impl SharedData, key: &str, now: u64, window_ms: u64) -> bool {
    match data.get(key) {
        Ok(None) => data.set(key, &encode_ms(now), 0).unwrap_or(true),
        Ok(Some((value, cas))) => {
            let taken = decode_ms(&value).unwrap_or(0);
            if !refresh::window_is_open(taken, now, window_ms) {
                return false;
            }
            data.set(key, &encode_ms(now), cas).unwrap_or(true)
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_issuer_and_uri() {
        assert_ne!(
            shared_keys("a", "http://x/1"),
            shared_keys("a", "http://x/2")
        );
        assert_ne!(
            shared_keys("a", "http://x/1"),
            shared_keys("b", "http://x/1")
        );
        assert!(shared_keys("a", "u").meta.ends_with(":meta"));
    }

    /// Shared data without versions beyond "written".
    #[derive(Default)]
    struct Data(std::collections::BTreeMap<String, (Vec<u8>, u32)>);

    impl SharedData for Data {
        fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, String> {
            Ok(self.0.get(key).cloned())
        }
        fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, String> {
            let version = self.0.get(key).map_or(0, |(_, v)| *v);
            if cas != 0 && cas != version {
                return Ok(false);
            }
            self.0
                .insert(key.to_string(), (value.to_vec(), version + 1));
            Ok(true)
        }
        fn now_ms(&mut self) -> u64 {
            0
        }
    }

    #[test]
    fn the_refetch_window_and_the_lease_are_shared() {
        let mut data = Data::default();
        assert!(take_window(&mut data, "w", 5_000, 10_000));
        assert!(
            !take_window(&mut data, "w", 14_999, 10_000),
            "another VM's window runs"
        );
        assert!(take_window(&mut data, "w", 15_000, 10_000));
        assert!(take_lease(&mut data, "l", 0, 6_000));
        assert!(!take_lease(&mut data, "l", 5_999, 11_999));
        assert!(take_lease(&mut data, "l", 6_000, 12_000));
    }
}

//! Remote key sets (`jwks_uri`): when a host fetches one, what it does with the answer, how failures back off
//! and how long the last good set is served. Sans-IO: the host asks [`Refresher::poll`] what to fetch, sends
//! the request its own way, and hands the answer to [`Refresher::on_response`]; time is always a parameter.
//! Every number and rule of key fetching lives here, so the Envoy filter and the Worker behave alike.
//!
//! Per remote issuer:
//! - The first fetch is due at once; after a success the next one is due `refresh_seconds` after the fetch.
//! - At most one fetch is in flight. One the host never answers is given up after [`ABANDON_AFTER_MS`] and
//!   counts as a failure.
//! - A failed fetch (no answer, a status other than 200, a body over [`MAX_JWKS_BYTES`], a document that is
//!   not a usable JWK set) keeps the last good set and is retried after [`backoff_ms`]: 1 s doubling up to
//!   64 s, never more than the refresh period. A success resets it. Nothing is fetched before the back-off
//!   has run out, not even an unknown-`kid` refetch. No jitter: the schedule is a function of the answers and
//!   the clock only; hosts with several workers share one fetch through a lease ([`Fetch::lease_until_ms`]).
//! - Staleness ([`Schedule::serves`]): the last good set is served until it is `max_stale_seconds` old; past
//!   that, the issuer's tokens are refused with 503 `keys.unavailable` (fail closed) until a fetch succeeds.
//! - A token that names an unknown `kid` asks for a refetch at most once per `min_refetch_seconds`
//!   ([`Refresher::want_refetch`]); the refetch still waits for the back-off.
//! - A set fetched elsewhere (another worker of the same host, a cache) is adopted with its own fetch time
//!   when it is newer than any this refresher has seen and still servable ([`Refresher::adopt`]).
//! - A document identical to the installed one only moves the set's freshness ([`Refreshed::Unchanged`]).

use std::sync::Arc;

use thiserror::Error;

use super::{Algorithm, KeyError, KeySet, KeySource, SkippedKey, Strictness};
use crate::encoding::sha256;

/// Largest JWK set accepted (bytes); a host need not read a longer body (see [`Fetch::admits`]).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Timeout of one fetch, from sending the request to the end of the body.
pub const FETCH_TIMEOUT_MS: u64 = 5_000;
/// A fetch still unanswered this long after [`Refresher::poll`] handed it out is given up (the host lost
/// it): it counts as a failure, and the next fetch may start after the back-off.
pub const ABANDON_AFTER_MS: u64 = FETCH_TIMEOUT_MS + 1_000;
/// The first retry's delay; each further failure doubles it.
pub const BACKOFF_FIRST_MS: u64 = 1_000;
/// The longest retry delay.
pub const BACKOFF_MAX_MS: u64 = 64_000;

/// Delay before the next fetch after `failures` consecutive failed ones: 1 s doubling to 64 s, and never
/// longer than the refresh period (a failing server is asked at least as often as a working one).
pub fn backoff_ms(failures: u32, refresh_ms: u64) -> u64 {
    let doublings = failures.saturating_sub(1).min(32);
    BACKOFF_FIRST_MS
        .saturating_mul(1u64 << doublings)
        .min(BACKOFF_MAX_MS)
        .min(refresh_ms.max(BACKOFF_FIRST_MS))
}

/// The timing an issuer's policy entry sets for its remote keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Between two successful fetches.
    pub refresh_ms: u64,
    /// How old the last good set may get while fetches fail.
    pub max_stale_ms: u64,
    /// At most one unknown-`kid` refetch per this window.
    pub min_refetch_ms: u64,
}

impl Schedule {
    /// The schedule of a remote source (None for inline keys).
    pub fn of(source: &KeySource) -> Option<Self> {
        match source {
            KeySource::Remote {
                refresh_ms,
                max_stale_ms,
                min_refetch_ms,
                ..
            } => Some(Self {
                refresh_ms: *refresh_ms,
                max_stale_ms: *max_stale_ms,
                min_refetch_ms: *min_refetch_ms,
            }),
            KeySource::Inline => None,
        }
    }

    /// The staleness policy: whether a set fetched at `fetched_ms` may still verify tokens at `now_ms`. A
    /// fetch time ahead of `now_ms` (another worker's clock) counts as age zero.
    pub fn serves(&self, fetched_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(fetched_ms) <= self.max_stale_ms
    }
}

/// Why a fetch is due (for logs and metrics; hosts treat all alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchReason {
    /// Nothing fetched yet.
    Initial,
    /// The refresh period has passed.
    Periodic,
    /// The previous fetch failed and its back-off has run out.
    Retry,
    /// A token named a `kid` no configured key has.
    UnknownKid,
}

impl FetchReason {
    pub fn name(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Periodic => "periodic",
            Self::Retry => "retry",
            Self::UnknownKid => "unknown_kid",
        }
    }
}

/// One fetch the host should send now: `GET uri` accepting `application/jwk-set+json` and `application/json`,
/// bounded by `timeout_ms`, reading no body over `max_bytes` ([`Fetch::admits`]). Its answer goes to
/// [`Refresher::on_response`]; if the host does not send it, [`Refresher::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub issuer: usize,
    pub uri: String,
    /// Envoy only: the cluster that serves `uri` (None: the host picks, e.g. by host name).
    pub cluster: Option<String>,
    pub timeout_ms: u64,
    pub max_bytes: usize,
    pub reason: FetchReason,
    /// The issuer has no servable set: requests fail closed until this fetch succeeds, so a host that can
    /// make a request wait (the Worker) waits for it; otherwise it may run in the background.
    pub blocking: bool,
    /// Hosts whose workers share a store: until when this fetch holds the issuer's shared lease, so other
    /// workers do not send the same request (see [`lease_is_held`]).
    pub lease_until_ms: u64,
    /// Hosts whose workers share a store: an unknown-`kid` refetch takes the issuer's shared window for this
    /// long, so N workers seeing the same unknown `kid` cost one fetch (see [`window_is_open`]).
    pub refetch_window_ms: u64,
}

impl Fetch {
    /// Whether a body of `length` bytes is worth reading: a host that knows the length before reading (Envoy
    /// buffers the whole answer) skips reading a body the core would refuse, and reports it with its length.
    pub fn admits(&self, length: usize) -> bool {
        length <= self.max_bytes
    }
}

/// Whether a shared lease written as `held_until_ms` keeps other workers from fetching at `now_ms`. A fetch
/// writes [`Fetch::lease_until_ms`], a failure [`Refreshed::Failed`]'s `retry_at_ms` (so all workers together
/// retry a failing server once per back-off), a success 0.
pub fn lease_is_held(held_until_ms: u64, now_ms: u64) -> bool {
    now_ms < held_until_ms
}

/// Whether a shared window last taken at `taken_ms` (0: never) is open again at `now_ms`.
pub fn window_is_open(taken_ms: u64, now_ms: u64, window_ms: u64) -> bool {
    taken_ms == 0 || now_ms.saturating_sub(taken_ms) >= window_ms
}

/// What became of one fetch, as the host observed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchResult<'a> {
    /// The server answered: its status, the body as read (the host may stop at `max_bytes + 1` bytes) and
    /// the body's full length where the host knows it (else `body.len()`).
    Response {
        status: u16,
        body: &'a [u8],
        length: usize,
    },
    /// The host stopped reading a body over `max_bytes` (`bytes`: its length where known).
    TooLarge { bytes: Option<usize> },
    /// No answer: connection failure, timeout, the request could not be sent.
    NoResponse { detail: &'a str },
}

/// Why a fetched (or shared) set was not installed. The last good set stays.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RefreshError {
    #[error("no response: {detail}")]
    NoResponse { detail: String },
    #[error("no response within {timeout_ms} ms (the host never answered)")]
    Abandoned { timeout_ms: u64 },
    #[error("HTTP {status} (200 expected)")]
    Status { status: u16 },
    #[error("response of {} bytes is over the {max} byte cap", bytes.map_or_else(|| "more".to_string(), |b| b.to_string()))]
    TooLarge { bytes: Option<usize>, max: usize },
    #[error("key set refused: {0}")]
    KeySet(KeyError),
    /// Issuer `issuer` has inline keys (or does not exist): nothing is fetched for it.
    #[error("issuer {issuer} has no jwks_uri")]
    NotRemote { issuer: usize },
}

/// What [`Refresher::on_response`] or [`Refresher::adopt`] did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Refreshed {
    /// A new set replaces the old one whole; it counts as fetched at `fetched_ms`.
    Installed {
        set: Arc<KeySet>,
        skipped: Vec<SkippedKey>,
        fetched_ms: u64,
    },
    /// The same document as the installed one: the set stays, its freshness moves to `fetched_ms`.
    Unchanged { fetched_ms: u64 },
    /// This refresher's fetch failed: the last good set stays (served until it is too stale) and no fetch
    /// starts before `retry_at_ms`.
    Failed {
        error: RefreshError,
        failures: u32,
        retry_at_ms: u64,
    },
    /// A set fetched elsewhere could not be used; it is not tried again (no back-off: nobody fetched).
    Rejected { error: RefreshError },
    /// Nothing to do: not a remote issuer, a late answer to a fetch already given up, or a shared copy not
    /// newer than one already seen or too stale to serve.
    Ignored,
}

/// One remote issuer's fetch state.
#[derive(Debug, Clone)]
struct Remote {
    uri: String,
    cluster: Option<String>,
    algorithms: Vec<Algorithm>,
    schedule: Schedule,
    /// When the next periodic fetch is due (0: at once).
    due_ms: u64,
    /// No fetch before this (the back-off after failures).
    not_before_ms: u64,
    failures: u32,
    /// When the fetch in flight was handed out.
    in_flight_since: Option<u64>,
    /// An unknown `kid` asked for a fetch (cleared when one is handed out).
    refetch_wanted: bool,
    /// When an unknown `kid` last asked (the debounce).
    last_refetch_ms: Option<u64>,
    /// The newest fetch time of any set seen, installed or refused (shared copies older than it are ignored).
    seen_ms: Option<u64>,
    /// The installed set's fetch time and document digest.
    installed: Option<(u64, [u8; 32])>,
}

impl Remote {
    fn servable(&self, now_ms: u64) -> bool {
        self.installed
            .is_some_and(|(at, _)| self.schedule.serves(at, now_ms))
    }

    fn is_due(&self, now_ms: u64) -> bool {
        self.in_flight_since.is_none()
            && now_ms >= self.not_before_ms
            && (now_ms >= self.due_ms || self.refetch_wanted)
    }

    fn fail(&mut self, error: RefreshError, now_ms: u64) -> Refreshed {
        self.in_flight_since = None;
        self.failures = self.failures.saturating_add(1);
        let retry_at_ms =
            now_ms.saturating_add(backoff_ms(self.failures, self.schedule.refresh_ms));
        self.not_before_ms = retry_at_ms;
        Refreshed::Failed {
            error,
            failures: self.failures,
            retry_at_ms,
        }
    }

    fn succeed(&mut self, fetched_ms: u64, digest: [u8; 32]) {
        self.failures = 0;
        self.not_before_ms = 0;
        self.due_ms = fetched_ms.saturating_add(self.schedule.refresh_ms);
        self.seen_ms = Some(self.seen_ms.map_or(fetched_ms, |s| s.max(fetched_ms)));
        self.installed = Some((fetched_ms, digest));
    }

    /// Checks and installs a document fetched at `fetched_ms`; the error is left to the caller (a failure of
    /// this refresher's fetch backs off, a refused shared copy does not).
    fn accept(&mut self, body: &[u8], fetched_ms: u64) -> Result<Refreshed, RefreshError> {
        if body.len() > MAX_JWKS_BYTES {
            return Err(RefreshError::TooLarge {
                bytes: Some(body.len()),
                max: MAX_JWKS_BYTES,
            });
        }
        let digest = sha256(body);
        if self.installed.is_some_and(|(_, d)| d == digest) {
            self.succeed(fetched_ms, digest);
            return Ok(Refreshed::Unchanged { fetched_ms });
        }
        let (set, skipped) = KeySet::parse(body, &self.algorithms, Strictness::Fetched)
            .map_err(RefreshError::KeySet)?;
        self.succeed(fetched_ms, digest);
        Ok(Refreshed::Installed {
            set: Arc::new(set),
            skipped,
            fetched_ms,
        })
    }
}

/// Fetch state of every issuer, by the key ring's issuer index (inline issuers have none).
#[derive(Debug, Clone, Default)]
pub struct Refresher {
    issuers: Vec<Option<Remote>>,
}

impl Refresher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the next issuer (index = number of issuers added before). `algorithms`: what a fetched set
    /// may contain (keys for others are skipped).
    pub fn add(&mut self, source: &KeySource, algorithms: &[Algorithm]) {
        let remote = match (source, Schedule::of(source)) {
            (KeySource::Remote { uri, cluster, .. }, Some(schedule)) => Some(Remote {
                uri: uri.clone(),
                cluster: cluster.clone(),
                algorithms: algorithms.to_vec(),
                schedule,
                due_ms: 0,
                not_before_ms: 0,
                failures: 0,
                in_flight_since: None,
                refetch_wanted: false,
                last_refetch_ms: None,
                seen_ms: None,
                installed: None,
            }),
            _ => None,
        };
        self.issuers.push(remote);
    }

    fn remote(&self, issuer: usize) -> Option<&Remote> {
        self.issuers.get(issuer).and_then(Option::as_ref)
    }

    fn remote_mut(&mut self, issuer: usize) -> Option<&mut Remote> {
        self.issuers.get_mut(issuer).and_then(Option::as_mut)
    }

    /// The fetches to send now; each is in flight from here until its answer (or [`ABANDON_AFTER_MS`]).
    pub fn poll(&mut self, now_ms: u64) -> Vec<Fetch> {
        let mut fetches = Vec::new();
        for (issuer, slot) in self.issuers.iter_mut().enumerate() {
            let Some(r) = slot.as_mut() else { continue };
            if let Some(since) = r.in_flight_since {
                if now_ms.saturating_sub(since) < ABANDON_AFTER_MS {
                    continue;
                }
                let _ = r.fail(
                    RefreshError::Abandoned {
                        timeout_ms: ABANDON_AFTER_MS,
                    },
                    now_ms,
                );
            }
            if !r.is_due(now_ms) {
                continue;
            }
            let reason = if now_ms < r.due_ms {
                FetchReason::UnknownKid
            } else if r.failures > 0 {
                FetchReason::Retry
            } else if r.seen_ms.is_none() {
                FetchReason::Initial
            } else {
                FetchReason::Periodic
            };
            r.in_flight_since = Some(now_ms);
            r.refetch_wanted = false;
            fetches.push(Fetch {
                issuer,
                uri: r.uri.clone(),
                cluster: r.cluster.clone(),
                timeout_ms: FETCH_TIMEOUT_MS,
                max_bytes: MAX_JWKS_BYTES,
                reason,
                blocking: !r.servable(now_ms),
                lease_until_ms: now_ms.saturating_add(ABANDON_AFTER_MS),
                refetch_window_ms: r.schedule.min_refetch_ms,
            });
        }
        fetches
    }

    /// Issuers [`Refresher::poll`] would hand out at `now_ms` (without handing them out).
    pub fn due(&self, now_ms: u64) -> Vec<usize> {
        self.issuers
            .iter()
            .enumerate()
            .filter_map(|(issuer, slot)| {
                let r = slot.as_ref()?;
                let abandoned = r
                    .in_flight_since
                    .is_some_and(|since| now_ms.saturating_sub(since) >= ABANDON_AFTER_MS);
                let due = if abandoned {
                    // Giving it up backs off first.
                    false
                } else {
                    r.is_due(now_ms)
                };
                due.then_some(issuer)
            })
            .collect()
    }

    /// The host did not send a fetch [`Refresher::poll`] handed out (another worker holds the lease or
    /// took the refetch window): nothing counts, and the next poll decides again.
    pub fn release(&mut self, issuer: usize) {
        if let Some(r) = self.remote_mut(issuer) {
            r.in_flight_since = None;
        }
    }

    /// The answer to a fetch. A failure backs off and keeps the last good set; a success resets the back-off.
    /// A failure reported for no fetch in flight (a late answer to one given up) is ignored: it was counted.
    pub fn on_response(
        &mut self,
        issuer: usize,
        result: FetchResult<'_>,
        now_ms: u64,
    ) -> Refreshed {
        let Some(r) = self.remote_mut(issuer) else {
            return Refreshed::Ignored;
        };
        let in_flight = r.in_flight_since.take().is_some();
        let outcome = match result {
            FetchResult::NoResponse { detail } => Err(RefreshError::NoResponse {
                detail: detail.to_string(),
            }),
            FetchResult::TooLarge { bytes } => Err(RefreshError::TooLarge {
                bytes,
                max: MAX_JWKS_BYTES,
            }),
            FetchResult::Response { status, .. } if status != 200 => {
                Err(RefreshError::Status { status })
            }
            FetchResult::Response { body, length, .. }
                if length.max(body.len()) > MAX_JWKS_BYTES =>
            {
                Err(RefreshError::TooLarge {
                    bytes: Some(length.max(body.len())),
                    max: MAX_JWKS_BYTES,
                })
            }
            FetchResult::Response { body, .. } => r.accept(body, now_ms),
        };
        match outcome {
            Ok(done) => done,
            Err(error) if in_flight => r.fail(error, now_ms),
            Err(_) => Refreshed::Ignored,
        }
    }

    /// A set fetched at `fetched_ms` by someone else (another worker, a cache): installed when it is newer
    /// than any set this refresher has seen and still servable. A refused copy is remembered, not retried.
    pub fn adopt(&mut self, issuer: usize, body: &[u8], fetched_ms: u64, now_ms: u64) -> Refreshed {
        if !self.is_newer(issuer, fetched_ms) {
            return Refreshed::Ignored;
        }
        let Some(r) = self.remote_mut(issuer) else {
            return Refreshed::Ignored;
        };
        if !r.schedule.serves(fetched_ms, now_ms) {
            return Refreshed::Ignored;
        }
        match r.accept(body, fetched_ms) {
            Ok(done) => done,
            Err(error) => {
                r.seen_ms = Some(fetched_ms);
                Refreshed::Rejected { error }
            }
        }
    }

    /// A set the host obtained by other means (a test, a tool), installed as fetched at `fetched_ms`
    /// whatever was seen before. An error costs no back-off; the old set stays.
    pub fn install(
        &mut self,
        issuer: usize,
        body: &[u8],
        fetched_ms: u64,
    ) -> Result<Refreshed, RefreshError> {
        let Some(r) = self.remote_mut(issuer) else {
            return Err(RefreshError::NotRemote { issuer });
        };
        r.accept(body, fetched_ms)
    }

    /// Whether a set fetched at `fetched_ms` elsewhere is newer than every set this refresher has seen (so a
    /// host reads a shared copy only when it would be adopted).
    pub fn is_newer(&self, issuer: usize, fetched_ms: u64) -> bool {
        self.remote(issuer)
            .is_some_and(|r| r.seen_ms.is_none_or(|seen| fetched_ms > seen))
    }

    /// The unknown-`kid` debounce: true (and a fetch is wanted) at most once per `min_refetch` window per
    /// remote issuer. The fetch itself still waits for any back-off.
    pub fn want_refetch(&mut self, issuer: usize, now_ms: u64) -> bool {
        let Some(r) = self.remote_mut(issuer) else {
            return false;
        };
        if r.last_refetch_ms
            .is_some_and(|last| now_ms.saturating_sub(last) < r.schedule.min_refetch_ms)
        {
            return false;
        }
        r.last_refetch_ms = Some(now_ms);
        r.refetch_wanted = true;
        true
    }

    /// Whether a fetch of `issuer` is in flight (handed out and neither answered nor given up).
    pub fn is_in_flight(&self, issuer: usize, now_ms: u64) -> bool {
        self.remote(issuer)
            .and_then(|r| r.in_flight_since)
            .is_some_and(|since| now_ms.saturating_sub(since) < ABANDON_AFTER_MS)
    }

    /// The issuer's schedule (None for inline keys).
    pub fn schedule(&self, issuer: usize) -> Option<Schedule> {
        self.remote(issuer).map(|r| r.schedule)
    }

    /// Consecutive failed fetches of `issuer`.
    pub fn failures(&self, issuer: usize) -> u32 {
        self.remote(issuer).map_or(0, |r| r.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    const JWKS_B: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"b","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    const REFRESH: u64 = 300_000;
    const STALE: u64 = 3_600_000;
    const REFETCH: u64 = 30_000;

    fn remote() -> KeySource {
        KeySource::Remote {
            uri: "https://tts.example/jwks".into(),
            cluster: Some("tts".into()),
            refresh_ms: REFRESH,
            max_stale_ms: STALE,
            min_refetch_ms: REFETCH,
        }
    }

    /// Issuer 0 inline, issuer 1 remote.
    fn refresher() -> Refresher {
        refresher_with(REFETCH)
    }

    fn refresher_with(min_refetch_ms: u64) -> Refresher {
        let mut source = remote();
        if let KeySource::Remote {
            min_refetch_ms: m, ..
        } = &mut source
        {
            *m = min_refetch_ms;
        }
        let mut r = Refresher::new();
        r.add(&KeySource::Inline, &[Algorithm::EdDSA]);
        r.add(&source, &[Algorithm::EdDSA]);
        r
    }

    fn ok(body: &str) -> FetchResult<'_> {
        FetchResult::Response {
            status: 200,
            body: body.as_bytes(),
            length: body.len(),
        }
    }

    const DOWN: FetchResult<'static> = FetchResult::NoResponse { detail: "refused" };

    fn issuers(fetches: &[Fetch]) -> Vec<usize> {
        fetches.iter().map(|f| f.issuer).collect()
    }

    #[test]
    fn first_fetch_is_due_at_once_then_every_refresh_period() {
        let mut r = refresher();
        let f = r.poll(1_000);
        assert_eq!(issuers(&f), vec![1], "inline issuers are never fetched");
        let f = &f[0];
        assert_eq!(
            (f.uri.as_str(), f.cluster.as_deref(), f.reason, f.blocking),
            (
                "https://tts.example/jwks",
                Some("tts"),
                FetchReason::Initial,
                true
            )
        );
        assert_eq!(
            (f.timeout_ms, f.max_bytes),
            (FETCH_TIMEOUT_MS, MAX_JWKS_BYTES)
        );
        assert!(f.admits(MAX_JWKS_BYTES) && !f.admits(MAX_JWKS_BYTES + 1));
        assert_eq!(f.lease_until_ms, 1_000 + ABANDON_AFTER_MS);
        assert!(r.poll(1_001).is_empty(), "one fetch in flight at a time");
        assert!(r.is_in_flight(1, 1_001));
        assert!(matches!(
            r.on_response(1, ok(JWKS), 1_200),
            Refreshed::Installed {
                fetched_ms: 1_200,
                ..
            }
        ));
        assert!(!r.is_in_flight(1, 1_201));
        assert!(r.poll(1_200 + REFRESH - 1).is_empty());
        assert_eq!(r.due(1_200 + REFRESH), vec![1]);
        let f = r.poll(1_200 + REFRESH);
        assert_eq!(
            (issuers(&f), f[0].reason, f[0].blocking),
            (vec![1], FetchReason::Periodic, false)
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_never_exceeds_the_refresh_period() {
        assert_eq!(backoff_ms(1, REFRESH), 1_000);
        assert_eq!(backoff_ms(2, REFRESH), 2_000);
        assert_eq!(backoff_ms(7, REFRESH), 64_000);
        assert_eq!(backoff_ms(u32::MAX, REFRESH), BACKOFF_MAX_MS);
        assert_eq!(backoff_ms(40, 10_000), 10_000);
        assert_eq!(backoff_ms(40, 1), BACKOFF_FIRST_MS);
    }

    #[test]
    fn failures_back_off_exponentially_and_a_success_resets() {
        let mut r = refresher();
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..9 {
            let f = r.poll(now);
            assert_eq!(issuers(&f), vec![1]);
            let Refreshed::Failed {
                retry_at_ms,
                failures,
                ..
            } = r.on_response(1, DOWN, now)
            else {
                panic!("a failure")
            };
            assert_eq!(failures, r.failures(1));
            delays.push(retry_at_ms - now);
            assert!(
                r.poll(retry_at_ms - 1).is_empty(),
                "no fetch before the back-off"
            );
            now = retry_at_ms;
        }
        assert_eq!(
            delays,
            vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 64_000, 64_000]
        );
        assert_eq!(r.poll(now)[0].reason, FetchReason::Retry);
        assert!(matches!(
            r.on_response(1, ok(JWKS), now),
            Refreshed::Installed { .. }
        ));
        assert_eq!(r.failures(1), 0);
        // The next failure starts again at 1 s.
        let later = now + REFRESH;
        assert_eq!(issuers(&r.poll(later)), vec![1]);
        let Refreshed::Failed { retry_at_ms, .. } = r.on_response(1, DOWN, later) else {
            panic!("a failure")
        };
        assert_eq!(retry_at_ms, later + 1_000);
    }

    /// Whether a refresh error is the one a case expects.
    type Expected = fn(&RefreshError) -> bool;

    #[test]
    fn each_kind_of_failure_keeps_the_old_set_and_backs_off() {
        let bad_status = FetchResult::Response {
            status: 503,
            body: JWKS.as_bytes(),
            length: JWKS.len(),
        };
        let not_json = ok("<html>");
        let empty = ok(r#"{"keys":[]}"#);
        let truncated = FetchResult::Response {
            status: 200,
            body: b"{",
            length: MAX_JWKS_BYTES + 1,
        };
        let cases: [(FetchResult<'_>, Expected); 6] = [
            (DOWN, |e| matches!(e, RefreshError::NoResponse { .. })),
            (bad_status, |e| *e == RefreshError::Status { status: 503 }),
            (not_json, |e| {
                matches!(e, RefreshError::KeySet(KeyError::Json(_)))
            }),
            (empty, |e| {
                matches!(e, RefreshError::KeySet(KeyError::EmptySet))
            }),
            (truncated, |e| {
                *e == RefreshError::TooLarge {
                    bytes: Some(MAX_JWKS_BYTES + 1),
                    max: MAX_JWKS_BYTES,
                }
            }),
            (FetchResult::TooLarge { bytes: None }, |e| {
                matches!(e, RefreshError::TooLarge { bytes: None, .. })
            }),
        ];
        for (result, expected) in cases {
            let mut r = refresher();
            r.poll(0);
            assert!(matches!(
                r.on_response(1, ok(JWKS), 0),
                Refreshed::Installed { .. }
            ));
            r.poll(REFRESH);
            match r.on_response(1, result, REFRESH) {
                Refreshed::Failed {
                    error, retry_at_ms, ..
                } => {
                    assert!(expected(&error), "{error}");
                    assert_eq!(retry_at_ms, REFRESH + 1_000);
                }
                other => panic!("{other:?}"),
            }
            // The old document is still the installed one: fetching it again changes nothing.
            r.poll(REFRESH + 1_000);
            assert!(matches!(
                r.on_response(1, ok(JWKS), REFRESH + 1_000),
                Refreshed::Unchanged { .. }
            ));
        }
    }

    #[test]
    fn an_oversize_body_is_refused_even_when_the_host_read_it_all() {
        let mut r = refresher();
        r.poll(0);
        let big = format!(r#"{{"keys":[],"pad":"{}"}}"#, "x".repeat(MAX_JWKS_BYTES));
        assert!(matches!(
            r.on_response(1, ok(&big), 0),
            Refreshed::Failed {
                error: RefreshError::TooLarge { .. },
                ..
            }
        ));
        // The same through a shared copy.
        assert!(matches!(
            r.adopt(1, big.as_bytes(), 5, 5),
            Refreshed::Rejected {
                error: RefreshError::TooLarge { .. }
            }
        ));
    }

    #[test]
    fn an_identical_document_only_moves_freshness() {
        let mut r = refresher();
        r.poll(0);
        assert!(matches!(
            r.on_response(1, ok(JWKS), 0),
            Refreshed::Installed { .. }
        ));
        r.poll(REFRESH);
        assert!(matches!(
            r.on_response(1, ok(JWKS), REFRESH),
            Refreshed::Unchanged {
                fetched_ms: REFRESH
            }
        ));
        r.poll(2 * REFRESH);
        assert!(matches!(
            r.on_response(1, ok(JWKS_B), 2 * REFRESH),
            Refreshed::Installed { .. }
        ));
    }

    #[test]
    fn staleness_bound_is_inclusive_and_then_the_fetch_blocks() {
        let s = Schedule::of(&remote()).unwrap();
        assert!(s.serves(1_000, 1_000 + STALE));
        assert!(!s.serves(1_000, 1_001 + STALE));
        assert!(
            s.serves(5_000, 1_000),
            "a fetch time ahead of the clock is age zero"
        );
        assert_eq!(Schedule::of(&KeySource::Inline), None);
        let mut r = refresher();
        r.poll(0);
        r.on_response(1, ok(JWKS), 0);
        // The server goes down: the set is served until it is STALE old; a fetch handed out after that says
        // requests are waiting for it.
        let mut now = REFRESH;
        let mut last_blocking = false;
        while now <= STALE + 200_000 {
            if let Some(f) = r.poll(now).first() {
                last_blocking = f.blocking;
                assert_eq!(f.blocking, now > STALE, "at {now}");
                r.on_response(1, DOWN, now);
            }
            now += 1_000;
        }
        assert!(last_blocking);
    }

    #[test]
    fn unknown_kid_refetch_is_debounced_and_still_backs_off() {
        let mut r = refresher();
        assert!(!r.want_refetch(0, 0), "inline issuers are never refetched");
        assert!(!r.want_refetch(7, 0));
        r.poll(0);
        r.on_response(1, ok(JWKS), 0);
        assert!(r.poll(10).is_empty());
        assert!(r.want_refetch(1, 10));
        assert!(!r.want_refetch(1, 10 + REFETCH - 1));
        let f = r.poll(20);
        assert_eq!(
            (issuers(&f), f[0].reason),
            (vec![1], FetchReason::UnknownKid)
        );
        assert_eq!(f[0].refetch_window_ms, REFETCH);
        assert!(r.poll(21).is_empty(), "one refetch per request for it");
        r.on_response(1, DOWN, 30);
        assert!(
            r.poll(31).is_empty(),
            "a failed refetch waits for the next period or unknown kid"
        );
        // Back-off of 2 s after a second failure: an unknown kid inside it waits.
        assert!(r.want_refetch(1, 10 + REFETCH));
        assert_eq!(issuers(&r.poll(10 + REFETCH)), vec![1]);
        let Refreshed::Failed { retry_at_ms, .. } = r.on_response(1, DOWN, 10 + REFETCH) else {
            panic!("a failure")
        };
        assert_eq!(retry_at_ms, 10 + REFETCH + 2_000);
        let mut r = refresher_with(100);
        r.poll(0);
        r.on_response(1, ok(JWKS), 0);
        assert!(r.want_refetch(1, 10));
        r.poll(10);
        let Refreshed::Failed { retry_at_ms, .. } = r.on_response(1, DOWN, 10) else {
            panic!("a failure")
        };
        assert!(r.want_refetch(1, 200));
        assert!(r.poll(200).is_empty(), "the back-off holds refetches too");
        assert_eq!(r.due(retry_at_ms), vec![1]);
        assert_eq!(r.poll(retry_at_ms)[0].reason, FetchReason::UnknownKid);
    }

    #[test]
    fn a_released_fetch_counts_nothing_and_is_offered_again() {
        let mut r = refresher();
        assert_eq!(issuers(&r.poll(0)), vec![1]);
        r.release(1);
        assert_eq!(r.failures(1), 0);
        assert_eq!(issuers(&r.poll(500)), vec![1]);
    }

    #[test]
    fn a_lost_fetch_is_given_up_as_a_failure() {
        let mut r = refresher();
        r.poll(0);
        assert!(r.poll(ABANDON_AFTER_MS - 1).is_empty());
        assert!(r.due(ABANDON_AFTER_MS).is_empty());
        assert!(
            r.poll(ABANDON_AFTER_MS).is_empty(),
            "given up, then backing off"
        );
        assert_eq!(r.failures(1), 1);
        assert_eq!(issuers(&r.poll(ABANDON_AFTER_MS + 1_000)), vec![1]);
        // A late failure of the fetch given up is not counted twice; a late success is taken.
        r.release(1);
        assert!(matches!(r.on_response(1, DOWN, 8_000), Refreshed::Ignored));
        assert_eq!(r.failures(1), 1);
        assert!(matches!(
            r.on_response(1, ok(JWKS), 8_000),
            Refreshed::Installed { .. }
        ));
    }

    #[test]
    fn shared_copies_are_adopted_when_newer_and_servable() {
        let mut r = refresher();
        assert!(matches!(
            r.adopt(0, JWKS.as_bytes(), 5, 5),
            Refreshed::Ignored
        ));
        assert!(
            matches!(
                r.adopt(1, JWKS.as_bytes(), 0, STALE + 1),
                Refreshed::Ignored
            ),
            "too stale"
        );
        assert!(r.is_newer(1, 1_000));
        assert!(matches!(
            r.adopt(1, JWKS.as_bytes(), 1_000, 2_000),
            Refreshed::Installed {
                fetched_ms: 1_000,
                ..
            }
        ));
        assert!(!r.is_newer(1, 1_000));
        assert!(matches!(
            r.adopt(1, JWKS.as_bytes(), 1_000, 2_000),
            Refreshed::Ignored
        ));
        // The next periodic fetch counts from the copy's own fetch time.
        assert!(r.poll(1_000 + REFRESH - 1).is_empty());
        assert_eq!(issuers(&r.poll(1_000 + REFRESH)), vec![1]);
        // A refused copy is not tried again, and costs no back-off.
        assert!(matches!(
            r.adopt(1, b"nope", 400_000, 400_000),
            Refreshed::Rejected { .. }
        ));
        assert!(!r.is_newer(1, 400_000));
        assert_eq!(r.failures(1), 0);
        // Another worker's success ends this one's back-off.
        r.on_response(1, DOWN, 401_000);
        assert!(matches!(
            r.adopt(1, JWKS_B.as_bytes(), 401_500, 401_500),
            Refreshed::Installed { .. }
        ));
        assert_eq!(r.failures(1), 0);
    }

    #[test]
    fn through_the_key_ring_a_bad_answer_keeps_the_old_set_until_it_is_stale() {
        use crate::keys::{KeyLookup, KeyRing};
        let mut ring = KeyRing::new();
        ring.add_issuer("r".into(), None, vec![Algorithm::EdDSA], remote(), None);
        assert!(matches!(
            ring.lookup(Some("a"), 0),
            KeyLookup::Unavailable { issuer: 0 }
        ));
        assert_eq!(issuers(&ring.poll(0)), vec![0]);
        ring.on_response(0, ok(JWKS), 0);
        let generation = ring.generation();
        assert!(matches!(
            ring.lookup(Some("a"), 1),
            KeyLookup::Found { issuer: 0, .. }
        ));
        assert_eq!(issuers(&ring.poll(REFRESH)), vec![0]);
        assert!(matches!(
            ring.on_response(0, ok(r#"{"keys":5}"#), REFRESH),
            Refreshed::Failed {
                error: RefreshError::KeySet(KeyError::NotAKeySet),
                ..
            }
        ));
        assert_eq!(ring.generation(), generation, "the old set stays");
        assert!(matches!(
            ring.lookup(Some("a"), STALE),
            KeyLookup::Found { .. }
        ));
        assert!(matches!(
            ring.lookup(Some("a"), STALE + 1),
            KeyLookup::Unavailable { issuer: 0 }
        ));
        // An unknown kid: the ring names the issuer, the refresher debounces.
        assert!(matches!(
            ring.lookup(Some("zz"), 2),
            KeyLookup::UnknownKid { .. }
        ));
        assert!(ring.claim_refetch(0, 2));
        assert!(!ring.claim_refetch(0, 3));
        // A new set replaces the old one whole.
        let f = ring.poll(STALE + 1);
        assert_eq!((issuers(&f), f[0].blocking), (vec![0], true));
        ring.on_response(0, ok(JWKS_B), STALE + 2);
        assert!(matches!(
            ring.lookup(Some("b"), STALE + 3),
            KeyLookup::Found { .. }
        ));
        assert!(matches!(
            ring.lookup(Some("a"), STALE + 3),
            KeyLookup::UnknownKid { .. }
        ));
    }

    #[test]
    fn shared_lease_and_window_rules() {
        assert!(lease_is_held(10, 9));
        assert!(!lease_is_held(10, 10));
        assert!(!lease_is_held(0, 0));
        assert!(window_is_open(0, 5, 100));
        assert!(!window_is_open(10, 109, 100));
        assert!(window_is_open(10, 110, 100));
    }

    #[derive(Debug, Clone)]
    enum Event {
        Tick(u64),
        Answer(u8),
        Release,
        UnknownKid,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0u64..120_000).prop_map(Event::Tick),
            (0u8..5).prop_map(Event::Answer),
            Just(Event::Release),
            Just(Event::UnknownKid),
        ]
    }

    proptest! {
        /// Whatever the answers and the timing: never two fetches of one issuer in flight, never a fetch
        /// before the back-off of the last failure, and a set is served only within the staleness bound.
        #[test]
        fn the_schedule_holds_under_any_sequence(events in proptest::collection::vec(event(), 1..200)) {
            let mut r = refresher();
            let mut now = 0u64;
            let mut in_flight = false;
            let mut not_before = 0u64;
            let mut installed_at: Option<u64> = None;
            for e in events {
                match e {
                    Event::Tick(dt) => now += dt,
                    Event::Answer(kind) if in_flight => {
                        in_flight = false;
                        let result = match kind {
                            0 => ok(JWKS),
                            1 => ok(JWKS_B),
                            2 => ok("{}"),
                            3 => FetchResult::TooLarge { bytes: None },
                            _ => DOWN,
                        };
                        match r.on_response(1, result, now) {
                            Refreshed::Failed { retry_at_ms, .. } => {
                                prop_assert!(retry_at_ms >= now + BACKOFF_FIRST_MS);
                                not_before = retry_at_ms;
                            }
                            Refreshed::Installed { fetched_ms, .. } | Refreshed::Unchanged { fetched_ms } => {
                                installed_at = Some(fetched_ms);
                                not_before = 0;
                            }
                            other => prop_assert!(false, "{other:?}"),
                        }
                    }
                    Event::Answer(_) => {}
                    Event::Release => {
                        if in_flight {
                            r.release(1);
                            in_flight = false;
                        }
                    }
                    Event::UnknownKid => {
                        r.want_refetch(1, now);
                    }
                }
                if in_flight && !r.is_in_flight(1, now) {
                    // Given up by the refresher: counted as a failure at its first poll after.
                    in_flight = false;
                    not_before = u64::MAX;
                }
                let fetches = r.poll(now);
                if not_before == u64::MAX {
                    not_before = now + 1;
                    prop_assert!(fetches.is_empty(), "a fetch given up backs off first");
                }
                for f in &fetches {
                    prop_assert_eq!(f.issuer, 1);
                    prop_assert!(!in_flight, "two fetches in flight");
                    prop_assert!(now >= not_before, "fetch at {} before the back-off ends at {}", now, not_before);
                    in_flight = true;
                }
                prop_assert!(fetches.len() <= 1);
                if let Some(at) = installed_at {
                    let servable = now.saturating_sub(at) <= STALE;
                    if let Some(f) = fetches.first() {
                        prop_assert_eq!(f.blocking, !servable);
                    }
                }
            }
        }
    }
}

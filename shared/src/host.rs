//! What the core tells every host beyond a decision: pacing, caps, timeouts and forwarding rules. An adapter
//! (the Envoy filter, the Worker) reads these and declares none of its own, so a value is chosen once, with
//! its reason, and the layout test (`tests/layout`) keeps numeric constants out of the adapters.
//!
//! Host wiring (config keys, variable names, header and shared-data key names) stays in the adapters.

use crate::gate::is_identity_header;

/// The Envoy filter's root-context tick (ms): how often it checks for due JWKS refreshes and for requests
/// whose body never arrived. Half a second keeps both well inside their own bounds (a 3 s body wait, 1 s
/// back-off) for a tick that costs almost nothing.
pub const TICK_MS: u64 = 500;

/// Attempts to take the filter's shared-data creation lock before giving up (`StoreError::Contention`). The
/// lock is held for four shared-data calls, microseconds, so this bound is only reached when something is
/// wrong.
pub const LOCK_SPINS: u32 = 4096;

/// A shared-data lock held longer than this (ms) belongs to a VM that died while holding it, and may be taken
/// over: a live holder keeps it for microseconds.
pub const STEAL_AFTER_MS: u64 = 1000;

/// At most this many metric ids are remembered per VM (by name, and by verdict and reason): names come from
/// policy rules and reasons, so the map is bounded even when a policy has many rules; past it a metric is
/// defined again on each use (slower, still counted).
pub const MAX_METRICS: usize = 2048;

/// How often (ms) a Worker request waiting for another request's JWKS fetch looks again (one request of an
/// isolate must not await a promise another one created). Short against a fetch, long against a poll.
pub const WAIT_STEP_MS: u64 = 20;

/// The earliest the Worker limiter's cleanup alarm may fire after it is set, ms. A bucket whose rule is
/// generous drains within milliseconds of each call (10⁶ calls an hour: 3.6 ms); armed at the exact drain
/// time, the alarm would fire between almost every two calls and each call would pay the alarm's `list` and
/// `delete` and then a storage `get` and `setAlarm` again. Deleting a drained bucket later changes nothing (a
/// stored TAT in the past counts as a full bucket), so the alarm waits at least this long: at most one cleanup
/// per object per interval, and idle state still goes soon.
pub const MIN_ALARM_DELAY_MS: u64 = 2_000;

/// When a cleanup alarm for state that drains at `drained_at_ms` fires, set at `now_ms`: not before
/// [`MIN_ALARM_DELAY_MS`] from now.
pub fn alarm_at(drained_at_ms: u64, now_ms: u64) -> u64 {
    drained_at_ms.max(now_ms.saturating_add(MIN_ALARM_DELAY_MS))
}

/// A Durable Object call normally takes a few milliseconds (tens when the object starts cold, up to a few
/// hundred across the world); one that has not answered in 3 s is treated as failed, so a stuck object costs
/// a request 3 s and a `ratelimit.store_error` (or the rule's `on_store_error: allow`), never a hang.
pub const DEFAULT_LIMITER_TIMEOUT_MS: u32 = 3_000;

/// How long the origin may take to send its response headers (ms): Cloudflare's own proxy gives up after
/// 100 s (error 524), so the Worker answers first, with its own error. The body (an SSE stream may last long)
/// is not bounded by this.
pub const DEFAULT_ORIGIN_TIMEOUT_MS: u32 = 100_000;

/// The largest timeout a host setting may ask for (ms): ten minutes. Longer is a typo, not a wish.
pub const MAX_TIMEOUT_SETTING_MS: u32 = 600_000;

/// A timeout setting in milliseconds: a decimal from 1 to [`MAX_TIMEOUT_SETTING_MS`] (surrounding white space
/// ignored). Anything else is None, which a host treats as a configuration error (fail closed), never as the
/// default.
pub fn parse_timeout_ms(raw: &str) -> Option<u32> {
    raw.trim()
        .parse::<u32>()
        .ok()
        .filter(|ms| (1..=MAX_TIMEOUT_SETTING_MS).contains(ms))
}

/// Imported keys a host caches (the Worker's WebCrypto keys, by fingerprint): key sets are small, this only
/// guards against unbounded rotation.
pub const MAX_CACHED_KEYS: usize = 64;

/// How long (s) a shared cache (the Worker's Cache API) may keep a copy of a key set fetched now: as long as
/// the set may be served, `max_stale`, and at least 1 s (a cache reads `max-age=0` as "do not keep").
pub fn cache_max_age_s(max_stale_ms: u64) -> u64 {
    (max_stale_ms / 1000).max(1)
}

/// Characters of a peer's error body a host copies into a diagnostic: enough to say what went wrong, never a
/// whole page in a log line.
pub const MAX_DETAIL_CHARS: usize = 200;

/// The first [`MAX_DETAIL_CHARS`] characters of `text`, for a diagnostic.
pub fn excerpt(text: &str) -> String {
    text.chars().take(MAX_DETAIL_CHARS).collect()
}

/// Request headers a host never forwards upstream itself: the hop-by-hop ones, and those the runtime sets from
/// the new request (lower case).
const NOT_FORWARDED: [&str; 9] = [
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

/// Whether a client's request header (name in lower case) may go to the origin as the client sent it: not an
/// identity header (those only ever come from the core's decision) and not a hop-by-hop one.
pub fn forwards_request_header(lower_name: &str) -> bool {
    !is_identity_header(lower_name) && !NOT_FORWARDED.contains(&lower_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alarm_waits_at_least_the_minimum_delay() {
        assert_eq!(alarm_at(1_000, 10_000), 12_000);
        assert_eq!(alarm_at(20_000, 10_000), 20_000);
        assert_eq!(alarm_at(12_000, 10_000), 12_000);
        assert_eq!(alarm_at(0, u64::MAX), u64::MAX);
    }

    #[test]
    fn timeout_settings_are_whole_milliseconds_within_ten_minutes() {
        assert_eq!(parse_timeout_ms("3000"), Some(3_000));
        assert_eq!(parse_timeout_ms(" 1 \n"), Some(1));
        assert_eq!(parse_timeout_ms("600000"), Some(600_000));
        for bad in ["0", "600001", "", "-5", "1.5", "3s", "99999999999"] {
            assert_eq!(parse_timeout_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_cached_key_set_lives_as_long_as_it_may_be_served() {
        assert_eq!(cache_max_age_s(3_600_000), 3_600);
        assert_eq!(cache_max_age_s(1_999), 1);
        assert_eq!(cache_max_age_s(0), 1);
    }

    #[test]
    fn excerpts_are_bounded_in_characters() {
        assert_eq!(excerpt("short"), "short");
        let long = "é".repeat(MAX_DETAIL_CHARS + 10);
        assert_eq!(excerpt(&long).chars().count(), MAX_DETAIL_CHARS);
    }

    #[test]
    fn hop_by_hop_and_identity_headers_are_not_forwarded() {
        for name in NOT_FORWARDED {
            assert!(!forwards_request_header(name), "{name}");
        }
        assert!(!forwards_request_header("x-txngate-agent"));
        for name in [
            "authorization",
            "content-type",
            "accept",
            "txn-token",
            "mcp-session-id",
        ] {
            assert!(forwards_request_header(name), "{name}");
        }
    }
}

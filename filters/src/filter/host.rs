//! Host access: logging, the clock, shared data, filter state and local replies through proxy-wasm host
//! calls.

use super::*;

pub(super) fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Whether Envoy drops info lines (its log level is warn or above).
pub(super) fn info_dropped() -> bool {
    hostcalls::get_log_level()
        .is_ok_and(|l| matches!(l, LogLevel::Warn | LogLevel::Error | LogLevel::Critical))
}

pub(super) fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// Shared data through the host.
#[derive(Debug, Clone, Copy)]
pub(super) struct HostShared;

impl SharedData for HostShared {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, String> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), cas)) => Ok(Some((value, cas.unwrap_or(0)))),
            Ok((None, Some(cas))) => Ok(Some((Vec::new(), cas))),
            Ok((None, None)) => Ok(None),
            Err(status) => Err(format!("get_shared_data({key}): {status:?}")),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, String> {
        match hostcalls::set_shared_data(key, Some(value), Some(cas)) {
            Ok(()) => Ok(true),
            Err(Status::CasMismatch) => Ok(false),
            Err(status) => Err(format!("set_shared_data({key}): {status:?}")),
        }
    }

    fn now_ms(&mut self) -> u64 {
        now_ms()
    }
}

pub(super) fn set_filter_state(audit: &AuditRecord) {
    let fields: [(&str, Option<&str>); 5] = [
        ("txngate_verdict", Some(audit.verdict)),
        ("txngate_reason", Some(audit.reason)),
        ("txngate_agent", audit.agent.as_deref()),
        ("txngate_tool", audit.tool.as_deref()),
        ("txngate_txn", audit.txn.as_deref()),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            let _ = hostcalls::set_property(vec![name], Some(value.as_bytes()));
        }
    }
}

/// The names of the client-sent identity headers (`x-txngate-*`), which never reach the upstream.
pub(super) fn client_identity(captured: &Captured) -> Vec<String> {
    captured
        .headers
        .iter()
        .filter(|(name, _)| is_identity_header(name))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Identity headers: the client's go (`client_identity`), the verified ones come in.
pub(super) fn set_identity(
    client_identity: &[String],
    upstream: &[(String, String)],
) -> Result<(), &'static str> {
    for name in client_identity {
        if hostcalls::remove_map_value(MapType::HttpRequestHeaders, name).is_err() {
            return Err("could not remove a client-sent identity header");
        }
    }
    for (name, value) in upstream {
        // The client's copies of the identity headers are gone: adding is setting, without the host's
        // search for an existing value.
        let set = if is_identity_header(name) {
            hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value)
        } else {
            hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
        };
        if set.is_err() {
            return Err("could not set the identity headers");
        }
    }
    Ok(())
}

pub(super) fn send_local(status: u16, headers: &[(String, String)], body: &str) {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Err(e) = hostcalls::send_http_response(u32::from(status), headers, Some(body.as_bytes()))
    {
        log(
            LogLevel::Error,
            &format!("txngate: send_http_response failed: {e:?}"),
        );
    }
}

/// A reply of the core (a refusal or a failure), exactly as it rendered it.
pub(super) fn send_reply(reply: &Reply) {
    send_local(reply.status, &reply.headers, &reply.body);
}

/// A failure of the adapter itself (not a policy decision): always a refusal, rendered by the core for
/// `to` as the Worker's are; `detail` goes to the log only.
pub(super) fn send_failure(failure: Failure, detail: &str, to: &ReplyTo) {
    log(
        LogLevel::Warn,
        &json!({"verdict": "deny", "reason": failure.reason(), "status": failure.status(), "detail": detail})
            .to_string(),
    );
    send_reply(&to.failure(failure));
}

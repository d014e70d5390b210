//! The root context (one per VM): loads the plugin configuration, ticks, refreshes remote JWKS and shares
//! them with the other VMs.

use super::*;

pub(super) struct Root {
    pub(super) context_id: u32,
    pub(super) vm: Rc<RefCell<Vm>>,
}

impl Root {
    pub(super) fn new(context_id: u32) -> Self {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(now_ms());
        hasher.write_u32(context_id);
        let vm = Vm {
            gate: None,
            hybrid: None,
            sink: AuditSink::Log,
            body_mode: BodyMode::HoldBody,
            lock_owner: LockOwner::new(hasher.finish()),
            metrics: Metrics::default(),
            awaiting: BTreeMap::new(),
            refetch: BTreeSet::new(),
            fetches: Vec::new(),
            body_delivered: false,
            warned_no_body: false,
        };
        Self {
            context_id,
            vm: Rc::new(RefCell::new(vm)),
        }
    }

    /// Refuses requests that waited for a body that never came.
    pub(super) fn watchdog(&self, now: u64) {
        let expired: Vec<u32> = self
            .vm
            .borrow()
            .awaiting
            .iter()
            .filter(|(_, a)| now.saturating_sub(a.since_ms) >= BODY_WAIT_MS)
            .map(|(id, _)| *id)
            .collect();
        if expired.is_empty() {
            return;
        }
        let mut vm = self.vm.borrow_mut();
        for id in expired {
            let Some(waiting) = vm.awaiting.remove(&id) else {
                continue;
            };
            if !vm.body_delivered && !vm.warned_no_body {
                vm.warned_no_body = true;
                log(
                    LogLevel::Critical,
                    "txngate: an MCP request body did not reach the filter within 3 s and no body ever has: set \
                     `allow_on_headers_stop_iteration: true` in the Wasm filter configuration (requests are refused \
                     until then)",
                );
            }
            if hostcalls::set_effective_context(id).is_err() {
                continue;
            }
            match vm.decide(&waiting.captured, Body::Absent, now) {
                Some(Ok(outcome)) if outcome.decision.verdict == Verdict::Deny => {
                    vm.record(&outcome);
                    send_deny(&outcome.decision);
                }
                // A paused request without its body never passes, whatever the policy says.
                _ => send_adapter_error(
                    500,
                    "filter.body_missing",
                    "the request body never reached the filter",
                    None,
                ),
            }
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }

    /// Adopts newer shared JWKS, then fetches what is due (periodic refresh or unknown `kid`).
    pub(super) fn poll_jwks(&self, now: u64) {
        let mut vm = self.vm.borrow_mut();
        let Vm {
            gate,
            fetches,
            refetch,
            metrics,
            ..
        } = &mut *vm;
        let Some(gate) = gate.as_mut() else { return };
        let wanted = std::mem::take(refetch);
        let mut data = HostShared;
        for f in fetches.iter_mut() {
            adopt_shared(gate, f, &mut data, metrics);
            if let Some((_, started)) = f.in_flight {
                if now.saturating_sub(started) < jwks::CLAIM_MS {
                    continue;
                }
                f.in_flight = None;
            }
            let due = gate.refresh_due(now).contains(&f.issuer) && now >= f.retry_at_ms;
            if !due {
                // An unknown `kid` asks for a refetch at most once per `min_refetch_seconds` per VM (the
                // core's debounce); the window is also claimed in shared data, so a burst of unknown kids
                // spread over N workers still costs one fetch per window, not N.
                if !wanted.contains(&f.issuer)
                    || !claim_window(&mut data, &f.keys.refetch, now, f.min_refetch_ms)
                {
                    continue;
                }
                metrics.increment(&format!("txngate.jwks.{}.refetch", segment(&f.name)));
            }
            let Some(target) = f.target.clone() else {
                continue;
            };
            if !claim(&mut data, &f.keys.claim, now) {
                continue;
            }
            let headers = vec![
                (":method", "GET"),
                (":path", target.path.as_str()),
                (":authority", target.authority.as_str()),
                ("accept", "application/json, application/jwk-set+json"),
                ("user-agent", "txngate"),
            ];
            match hostcalls::dispatch_http_call(
                &target.cluster,
                headers,
                None,
                vec![],
                Duration::from_millis(jwks::FETCH_TIMEOUT_MS),
            ) {
                Ok(token) => f.in_flight = Some((token, now)),
                Err(status) => {
                    fetch_failed(
                        f,
                        &mut data,
                        now,
                        metrics,
                        &format!(
                            "dispatch to cluster {:?} failed: {status:?}",
                            target.cluster
                        ),
                    );
                }
            }
        }
    }
}

/// Takes the fetch claim of an issuer (see [`jwks`]): false while another VM's fetch is in flight or a
/// failed fetch's backoff runs.
pub(super) fn claim(data: &mut HostShared, key: &str, now: u64) -> bool {
    let until = jwks::encode_ms(now.saturating_add(jwks::CLAIM_MS));
    match data.get(key) {
        Ok(None) => data.set(key, &until, 0).unwrap_or(false),
        Ok(Some((value, cas))) => {
            if jwks::decode_ms(&value).is_some_and(|held_until| now < held_until) {
                return false;
            }
            data.set(key, &until, cas).unwrap_or(false)
        }
        // Cannot coordinate: fetch anyway (a duplicate fetch is harmless).
        Err(_) => true,
    }
}

/// Takes a time window in shared data: true (and the window is ours from `now`) unless another VM took it
/// less than `window_ms` ago. A shared-data error answers true: the per-VM debounce still holds.
pub(super) fn claim_window(data: &mut HostShared, key: &str, now: u64, window_ms: u64) -> bool {
    match data.get(key) {
        Ok(None) => data.set(key, &jwks::encode_ms(now), 0).unwrap_or(true),
        Ok(Some((value, cas))) => {
            let at = jwks::decode_ms(&value).unwrap_or(0);
            if at != 0 && now.saturating_sub(at) < window_ms {
                return false;
            }
            data.set(key, &jwks::encode_ms(now), cas).unwrap_or(true)
        }
        Err(_) => true,
    }
}

pub(super) fn adopt_shared(
    gate: &mut Gate,
    f: &mut Fetch,
    data: &mut HostShared,
    metrics: &mut Metrics,
) {
    let Some(meta) = data
        .get(&f.keys.meta)
        .ok()
        .flatten()
        .and_then(|(bytes, _)| Meta::decode(&bytes))
    else {
        return;
    };
    if f.installed.is_some_and(|m| m.fetched_ms >= meta.fetched_ms) || f.rejected == Some(meta) {
        return;
    }
    if f.installed.is_some_and(|m| m.sha256 == meta.sha256) {
        gate.touch_jwks(f.issuer, meta.fetched_ms);
        f.installed = Some(meta);
        return;
    }
    let Some((body, _)) = data.get(&f.keys.body).ok().flatten() else {
        return;
    };
    if !meta.matches(&body) {
        return; // another VM is between its two writes; next tick
    }
    match gate.install_jwks(f.issuer, &body, meta.fetched_ms) {
        Ok(_) => {
            f.installed = Some(meta);
            metrics.increment(&format!("txngate.jwks.{}.adopted", segment(&f.name)));
        }
        Err(e) => {
            f.rejected = Some(meta);
            log(
                LogLevel::Warn,
                &format!(
                    "txngate: jwks: issuer {:?}: shared key set refused: {e}",
                    f.name
                ),
            );
        }
    }
}

/// Counts and logs a failed fetch and backs off: this VM until `retry_at_ms`, and every VM through the
/// shared claim, held until then (so N workers do not each retry a failing server).
pub(super) fn fetch_failed(
    f: &mut Fetch,
    data: &mut HostShared,
    now: u64,
    metrics: &mut Metrics,
    detail: &str,
) {
    f.failures = f.failures.saturating_add(1);
    f.retry_at_ms = now.saturating_add(jwks::backoff_ms(f.failures, f.refresh_ms));
    let _ = data.set(&f.keys.claim, &jwks::encode_ms(f.retry_at_ms), 0);
    metrics.increment(&format!("txngate.jwks.{}.refresh_failed", segment(&f.name)));
    log(
        LogLevel::Warn,
        &format!(
            "txngate: jwks: issuer {:?}: {detail}; keeping the last good key set",
            f.name
        ),
    );
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let now = now_ms();
        let mut vm = self.vm.borrow_mut();
        let Vm {
            gate,
            fetches,
            metrics,
            ..
        } = &mut *vm;
        let Some(gate) = gate.as_mut() else { return };
        let Some(f) = fetches
            .iter_mut()
            .find(|f| f.in_flight.is_some_and(|(t, _)| t == token_id))
        else {
            return;
        };
        f.in_flight = None;
        let mut data = HostShared;
        // A failed call (connection error, timeout) has no response maps at all: reading one would be a
        // host error (and a trap in the SDK).
        if num_headers == 0 {
            return fetch_failed(
                f,
                &mut data,
                now,
                metrics,
                "no response (connection failure or timeout)",
            );
        }
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| String::from_utf8(s).ok())
            .unwrap_or_default();
        if status != "200" {
            let status = if status.is_empty() {
                "no response".to_string()
            } else {
                format!("status {status}")
            };
            return fetch_failed(f, &mut data, now, metrics, &status);
        }
        if body_size > jwks::MAX_JWKS_BYTES {
            return fetch_failed(
                f,
                &mut data,
                now,
                metrics,
                &format!(
                    "response of {body_size} bytes is over the {} byte cap",
                    jwks::MAX_JWKS_BYTES
                ),
            );
        }
        let body = if body_size == 0 {
            Vec::new()
        } else {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let meta = Meta::of(&body, now);
        if f.installed.is_some_and(|m| m.sha256 == meta.sha256) {
            gate.touch_jwks(f.issuer, now);
        } else {
            match gate.install_jwks(f.issuer, &body, now) {
                Ok(skipped) => {
                    let count = gate
                        .keys()
                        .issuer(f.issuer)
                        .and_then(|i| i.key_set())
                        .map_or(0, |s| s.len());
                    log(
                        LogLevel::Info,
                        &format!(
                            "txngate: jwks: issuer {:?}: installed {count} keys ({} skipped)",
                            f.name,
                            skipped.len()
                        ),
                    );
                    for s in skipped {
                        log(
                            LogLevel::Info,
                            &format!(
                                "txngate: jwks: issuer {:?}: skipped key {} ({:?}): {}",
                                f.name, s.index, s.kid, s.reason
                            ),
                        );
                    }
                }
                Err(e) => {
                    return fetch_failed(
                        f,
                        &mut data,
                        now,
                        metrics,
                        &format!("key set refused: {e}"),
                    )
                }
            }
        }
        f.installed = Some(meta);
        f.failures = 0;
        f.retry_at_ms = 0;
        let _ = data.set(&f.keys.claim, &jwks::encode_ms(0), 0);
        metrics.increment(&format!("txngate.jwks.{}.refresh_ok", segment(&f.name)));
        // Share it unless another VM already shared a newer fetch.
        let shared = data
            .get(&f.keys.meta)
            .ok()
            .flatten()
            .and_then(|(b, _)| Meta::decode(&b));
        let newer = shared.is_none_or(|m| m.fetched_ms < now);
        if newer
            && (data.set(&f.keys.body, &body, 0).is_err()
                || data.set(&f.keys.meta, &meta.encode(), 0).is_err())
        {
            log(
                LogLevel::Warn,
                "txngate: jwks: could not share the fetched key set",
            );
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        if let Err(e) = store::ensure_lock(&mut HostShared) {
            log(LogLevel::Error, &format!("txngate: rate-limit lock: {e}"));
        }
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        if config.iter().all(u8::is_ascii_whitespace) {
            log(
                LogLevel::Error,
                "txngate: policy: the plugin configuration is empty; it must be the policy JSON",
            );
            return false;
        }
        let PluginConfig {
            policy,
            sink,
            body_mode,
            hybrid,
        } = match PluginConfig::parse(&config) {
            Ok(parsed) => parsed,
            Err(e) => {
                log(LogLevel::Error, &format!("txngate: {e}"));
                return false;
            }
        };
        let gate = match Gate::from_json(&policy) {
            Ok(gate) => gate,
            Err(e) => {
                log(LogLevel::Error, &format!("txngate: {e}"));
                return false;
            }
        };
        let mut fetches = Vec::new();
        for (issuer, keys) in gate.keys().issuers().iter().enumerate() {
            let KeySource::Remote {
                uri,
                cluster,
                refresh_ms,
                min_refetch_ms,
                ..
            } = &keys.source
            else {
                continue;
            };
            let target = jwks::target(uri, cluster.as_deref());
            match &target {
                None => {
                    log(LogLevel::Error, &format!("txngate: policy: issuer {:?}: jwks_uri {uri:?} cannot be requested", keys.name));
                    return false;
                }
                Some(t) if cluster.is_none() => log(
                    LogLevel::Warn,
                    &format!("txngate: issuer {:?} has no `cluster`: fetching {uri} through Envoy cluster {:?}", keys.name, t.cluster),
                ),
                Some(_) => {}
            }
            fetches.push(Fetch {
                issuer,
                name: keys.name.clone(),
                target,
                keys: jwks::keys(&keys.name, uri),
                refresh_ms: *refresh_ms,
                min_refetch_ms: *min_refetch_ms,
                in_flight: None,
                failures: 0,
                retry_at_ms: 0,
                installed: None,
                rejected: None,
            });
        }
        let remote = !fetches.is_empty();
        {
            let mut vm = self.vm.borrow_mut();
            vm.gate = Some(gate);
            vm.hybrid = hybrid;
            vm.sink = sink;
            vm.body_mode = body_mode;
            vm.fetches = fetches;
            vm.refetch.clear();
        }
        log(LogLevel::Info, "txngate: policy loaded");
        if hostcalls::set_tick_period(Duration::from_millis(TICK_MS)).is_err() {
            log(
                LogLevel::Error,
                "txngate: cannot set the tick period; remote keys and the body watchdog need it",
            );
            return false;
        }
        if remote {
            self.poll_jwks(now_ms());
        }
        true
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        self.watchdog(now);
        self.poll_jwks(now);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(context_id, Rc::clone(&self.vm))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

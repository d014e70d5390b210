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
            host_verified: None,
            sink: AuditSink::Log,
            access_log_fields: true,
            body_mode: BodyMode::HoldBody,
            lock_owner: LockOwner::new(hasher.finish()),
            metrics: Metrics::default(),
            awaiting: BTreeMap::new(),
            remotes: Vec::new(),
            jwks_in_flight: BTreeMap::new(),
            body_delivered: false,
            warned_no_body: false,
            info_dropped: false,
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
            let outcome = match vm.decide(&waiting.captured, Body::Absent, now) {
                Some(Step::Done(outcome)) => Some(*outcome),
                _ => None,
            };
            match outcome {
                Some(outcome) if !outcome.decision.is_allowed() => {
                    vm.record(&outcome);
                    if let Decision::Denied(denied) = &outcome.decision {
                        send_reply(&denied.reply);
                    }
                }
                // A paused request without its body never passes, whatever the policy says.
                other => send_failure(
                    Failure::BodyMissing,
                    "the request body never reached the filter",
                    &other.map(|o| o.reply_to).unwrap_or_default(),
                ),
            }
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }

    /// Adopts sets other VMs shared, then sends the key fetches the core hands out (see [`jwks`]).
    pub(super) fn poll_jwks(&self, now: u64) {
        let mut vm = self.vm.borrow_mut();
        let Vm {
            gate,
            remotes,
            jwks_in_flight,
            metrics,
            ..
        } = &mut *vm;
        let Some(gate) = gate.as_mut() else { return };
        let mut events = Vec::new();
        for (fetch, target) in jwks::poll(gate, remotes, &mut HostShared, now, &mut events) {
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
                Duration::from_millis(fetch.timeout_ms),
            ) {
                Ok(token) => {
                    // The core hands out one fetch per issuer at a time: an older entry is one it gave up.
                    jwks_in_flight.retain(|_, f| f.issuer != fetch.issuer);
                    jwks_in_flight.insert(token, fetch);
                }
                Err(status) => {
                    let detail = format!(
                        "dispatch to cluster {:?} failed: {status:?}",
                        target.cluster
                    );
                    let result = FetchResult::NoResponse { detail: &detail };
                    jwks::answer(
                        gate,
                        remotes,
                        fetch.issuer,
                        &mut HostShared,
                        result,
                        now,
                        &mut events,
                    );
                }
            }
        }
        report(metrics, &events);
    }
}

/// Logs and counts (`txngate.jwks.<issuer>.<counter>`) what happened to remote keys.
fn report(metrics: &mut Metrics, events: &[jwks::Event]) {
    for event in events {
        if let Some(counter) = event.counter() {
            metrics.increment(&format!(
                "txngate.jwks.{}.{counter}",
                segment(event.issuer())
            ));
        }
        for (level, line) in event.log() {
            let level = match level {
                jwks::Level::Info => LogLevel::Info,
                jwks::Level::Warn => LogLevel::Warn,
            };
            log(level, &line);
        }
    }
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
            remotes,
            jwks_in_flight,
            metrics,
            ..
        } = &mut *vm;
        let Some(fetch) = jwks_in_flight.remove(&token_id) else {
            return;
        };
        let Some(gate) = gate.as_mut() else { return };
        // A failed call (connection error, timeout) has no response maps at all: reading one would be a
        // host error (and a trap in the SDK).
        let status = if num_headers == 0 {
            None
        } else {
            hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|s| String::from_utf8(s).ok())
                .and_then(|s| s.parse::<u16>().ok())
        };
        // A body the core would refuse for its size is not copied into Wasm memory at all.
        let body = match status {
            Some(_) if body_size > 0 && fetch.admits(body_size) => {
                hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let result = match status {
            Some(status) => FetchResult::Response {
                status,
                body: &body,
                length: body_size,
            },
            None => FetchResult::NoResponse {
                detail: "no response (connection failure or timeout)",
            },
        };
        let mut events = Vec::new();
        jwks::answer(
            gate,
            remotes,
            fetch.issuer,
            &mut HostShared,
            result,
            now,
            &mut events,
        );
        report(metrics, &events);
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
            access_log_fields,
            body_mode,
            host_verified,
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
        let (remotes, warnings) = match jwks::remotes(&gate) {
            Ok(found) => found,
            Err(e) => {
                log(LogLevel::Error, &format!("txngate: {e}"));
                return false;
            }
        };
        for warning in warnings {
            log(LogLevel::Warn, &format!("txngate: {warning}"));
        }
        let remote = !remotes.is_empty();
        {
            let mut vm = self.vm.borrow_mut();
            vm.gate = Some(gate);
            vm.host_verified = host_verified;
            vm.sink = sink;
            vm.access_log_fields = access_log_fields;
            vm.body_mode = body_mode;
            vm.info_dropped = info_dropped();
            vm.remotes = remotes;
            vm.jwks_in_flight.clear();
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
        self.vm.borrow_mut().info_dropped = info_dropped();
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

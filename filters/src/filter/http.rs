//! The HTTP context: gathers one request, drives the core's steps and renders the decision onto the
//! stream.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Headers,
    /// Paused until the body is complete; the request sits in `Vm::awaiting` until the first body callback,
    /// then in `Http::pending`.
    AwaitingBody,
    /// Body-holding mode ([`BodyMode::HoldBody`]): the token was verified and the headers went on with the
    /// verified identity; every byte of the body is held until the whole request is decided.
    Holding,
    /// Paused on the rate limit service (`Http::remote`); resumes in `on_grpc_call_response`. In the
    /// body-holding mode only the body waits (the headers went on already).
    AwaitingLimit,
    Allowed,
    /// Refused (or answered by the watchdog): nothing may continue.
    Refused,
}

/// A request paused on the rate limit service.
pub(super) struct RemoteCall {
    pub(super) token: u32,
    pub(super) pending: Box<PendingLimit>,
    pub(super) render: Render,
}

/// What an allowed outcome still has to do to the request headers.
pub(super) enum Render {
    /// The headers are paused: the client-sent identity headers (these names) go, the verified ones come in.
    Headers { client_identity: Vec<String> },
    /// Body-holding mode: the headers went on with `Http::identity`; the decision must give the same.
    Held,
}

pub(super) struct Http {
    pub(super) id: u32,
    pub(super) vm: Rc<RefCell<Vm>>,
    pub(super) phase: Phase,
    pub(super) pending: Option<Captured>,
    pub(super) max_body: usize,
    pub(super) response_headers: Vec<(String, String)>,
    pub(super) list_filter: Option<ListFilter>,
    pub(super) rpc_id: Option<Value>,
    /// Content type of a list response (`tools/list`, ...) being buffered for filtering.
    pub(super) filtering: Option<String>,
    /// Body-holding mode: the identity headers set on the headers that went on (the full decision must
    /// give the same).
    pub(super) identity: Vec<(String, String)>,
    /// The request went through the body-holding mode (see `hold::Http::hold_headers`).
    pub(super) held: bool,
    /// The call to the rate limit service this request waits for.
    pub(super) remote: Option<RemoteCall>,
}

impl Http {
    pub(super) fn new(id: u32, vm: Rc<RefCell<Vm>>) -> Self {
        Self {
            id,
            vm,
            phase: Phase::Headers,
            pending: None,
            max_body: 0,
            response_headers: Vec::new(),
            list_filter: None,
            rpc_id: None,
            filtering: None,
            identity: Vec::new(),
            held: false,
            remote: None,
        }
    }

    /// Decides and renders with the headers paused. Returns what the current callback must return.
    pub(super) fn decide(&mut self, captured: &Captured, body: Body<'_>) -> Action {
        let render = Render::Headers {
            client_identity: client_identity(captured),
        };
        self.decide_with(captured, body, render)
    }

    /// Decides; a remote limit pauses on the rate limit service (see [`Http::consult_remote`]).
    pub(super) fn decide_with(
        &mut self,
        captured: &Captured,
        body: Body<'_>,
        render: Render,
    ) -> Action {
        let now = now_ms();
        let decided = self.vm.borrow_mut().decide(captured, body, now);
        match decided {
            None => {
                self.phase = Phase::Refused;
                send_adapter_error(503, "filter.unconfigured", "no policy is loaded", None);
                Action::Pause
            }
            Some(Ok(outcome)) => self.render(render, outcome),
            Some(Err(pending)) => self.consult_remote(pending, render),
        }
    }

    /// A remote limit: the local bucket first (`local_first`), then the rate limit service. Pauses until
    /// its answer unless the outcome is known at once.
    pub(super) fn consult_remote(&mut self, pending: Box<PendingLimit>, render: Render) -> Action {
        let local_first = pending.remote().is_some_and(|r| r.local_first);
        let service = {
            let vm = self.vm.borrow();
            vm.gate
                .as_ref()
                .and_then(|g| g.policy().rate_limit_service.clone())
        };
        let immediate = match service {
            None => Some(rls_client::refused(&pending, "no rate_limit_service")),
            Some(_) if local_first => {
                let local = self.vm.borrow_mut().consume_local(&pending);
                match local {
                    Ok(state) if state.allowed => None,
                    // Refused (or unknown) locally: the service is not asked.
                    other => Some(other),
                }
            }
            Some(_) => None,
        };
        let result = match (immediate, service) {
            (Some(result), _) => result,
            (None, Some(service)) => match rls_client::dispatch(&service, &pending) {
                Ok(token) => {
                    self.phase = Phase::AwaitingLimit;
                    self.remote = Some(RemoteCall {
                        token,
                        pending,
                        render,
                    });
                    return Action::Pause;
                }
                Err(why) => rls_client::refused(&pending, &why),
            },
            (None, None) => rls_client::refused(&pending, "no rate_limit_service"),
        };
        self.finish_remote(pending, result, render)
    }

    /// Finishes a remote limit with the service's answer (or its failure).
    pub(super) fn finish_remote(
        &mut self,
        pending: Box<PendingLimit>,
        result: Result<LimitState, StoreError>,
        render: Render,
    ) -> Action {
        let outcome = {
            let mut vm = self.vm.borrow_mut();
            if let Err(e) = &result {
                vm.metrics.store_failure(e.reason());
            }
            vm.gate
                .as_mut()
                .map(|gate| gate.resume_limit(*pending, result))
        };
        match outcome {
            Some(outcome) => self.render(render, outcome),
            None => {
                self.phase = Phase::Refused;
                send_adapter_error(503, "filter.unconfigured", "no policy is loaded", None);
                Action::Pause
            }
        }
    }

    /// Records and renders an outcome.
    pub(super) fn render(&mut self, render: Render, outcome: Outcome) -> Action {
        self.vm.borrow_mut().record(&outcome);
        let Outcome {
            decision, audit, ..
        } = outcome;
        if decision.verdict == Verdict::Deny {
            self.phase = Phase::Refused;
            send_deny(&decision);
            return Action::Pause;
        }
        self.rpc_id = audit.rpc_id;
        match render {
            Render::Headers { client_identity } => {
                if let Err(message) = set_identity(&client_identity, &decision.upstream_headers) {
                    return self.fail_closed(500, "filter.headers", message);
                }
                if decision.list_filter.is_some() {
                    // The response must be readable to be filtered.
                    let _ =
                        hostcalls::remove_map_value(MapType::HttpRequestHeaders, "accept-encoding");
                }
            }
            // accept-encoding went with the headers (`hold_headers`).
            Render::Held => {
                if decision.upstream_headers != self.identity {
                    return self.fail_closed(
                        500,
                        "filter.identity_changed",
                        "the decision's identity differs from the one sent with the headers",
                    );
                }
            }
        }
        self.response_headers = decision.response_headers;
        self.list_filter = decision.list_filter;
        self.phase = Phase::Allowed;
        Action::Continue
    }

    pub(super) fn fail_closed(&mut self, status: u16, reason: &str, message: &str) -> Action {
        self.phase = Phase::Refused;
        send_adapter_error(status, reason, message, self.rpc_id.as_ref());
        Action::Pause
    }

    /// The request being buffered: from `Vm::awaiting` at the first body callback. None when the watchdog
    /// answered it already.
    pub(super) fn take_pending(&mut self) -> Option<Captured> {
        if let Some(captured) = self.pending.take() {
            return Some(captured);
        }
        let mut vm = self.vm.borrow_mut();
        vm.body_delivered = true;
        vm.awaiting.remove(&self.id).map(|a| a.captured)
    }

    pub(super) fn finish_body(&mut self, size: Option<usize>) -> Action {
        let Some(captured) = self.take_pending() else {
            self.phase = Phase::Refused;
            return Action::Pause;
        };
        let limit = self.max_body.saturating_add(1);
        let body = hostcalls::get_buffer(
            BufferType::HttpRequestBody,
            0,
            size.unwrap_or(limit).min(limit),
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        if body.len() > self.max_body {
            return self.decide(&captured, Body::TooLarge);
        }
        self.decide(&captured, Body::Complete(&body))
    }

    pub(super) fn finish_response(&mut self, size: Option<usize>) -> Action {
        let (Some(content_type), Some(filter)) = (self.filtering.take(), self.list_filter.as_ref())
        else {
            return Action::Continue;
        };
        let limit = MAX_TOOLS_LIST_BYTES.saturating_add(1);
        let body = hostcalls::get_buffer(
            BufferType::HttpResponseBody,
            0,
            size.unwrap_or(limit).min(limit),
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        if body.len() > MAX_TOOLS_LIST_BYTES {
            return self.fail_closed(
                502,
                "tools_list.too_large",
                "the list response is too large to filter",
            );
        }
        match filter.apply(&content_type, &body) {
            Ok(filtered) => {
                if hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body.len(), &filtered)
                    .is_err()
                {
                    return self.fail_closed(
                        502,
                        "tools_list.filter",
                        "could not replace the list response",
                    );
                }
                Action::Continue
            }
            Err(e) => self.fail_closed(
                502,
                "tools_list.filter",
                &format!("the list response could not be filtered: {e}"),
            ),
        }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        if let Ok(mut vm) = self.vm.try_borrow_mut() {
            vm.awaiting.remove(&self.id);
        }
    }
}

impl Context for Http {
    /// The rate limit service answered (or failed: `status_code` is the gRPC status, 4 on timeout).
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(call) = self.remote.take_if(|c| c.token == token_id) else {
            return;
        };
        let result = rls_client::answer(&call.pending, status_code, response_size);
        if self.finish_remote(call.pending, result, call.render) == Action::Continue {
            let _ = hostcalls::resume_http_request();
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let mut captured = Captured::gather();
        #[cfg(feature = "fault-injection")]
        fault::inject(&captured.headers);
        let (needs_body, max_body, body_mode) = match &*self.vm.borrow() {
            Vm {
                gate: Some(gate),
                hybrid,
                body_mode,
                ..
            } => {
                if let Some(hybrid) = hybrid {
                    captured.attestation = Some(captured.attest(hybrid, gate));
                }
                (
                    gate.needs_body(&captured.method, &captured.path),
                    gate.max_body_bytes(),
                    *body_mode,
                )
            }
            _ => (false, 0, BodyMode::default()),
        };
        if !needs_body || end_of_stream {
            return self.decide(&captured, Body::Absent);
        }
        self.max_body = max_body;
        if captured
            .content_length()
            .is_some_and(|n| n > max_body as u64)
        {
            return self.decide(&captured, Body::TooLarge);
        }
        if body_mode == BodyMode::HoldBody {
            return self.hold_headers(captured);
        }
        self.phase = Phase::AwaitingBody;
        self.vm.borrow_mut().awaiting.insert(
            self.id,
            Awaiting {
                since_ms: now_ms(),
                captured,
            },
        );
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.phase {
            Phase::AwaitingBody => {}
            Phase::Holding => return self.hold_body(body_size, end_of_stream),
            Phase::Refused | Phase::AwaitingLimit => return Action::Pause,
            Phase::Headers | Phase::Allowed => return Action::Continue,
        }
        if body_size > self.max_body {
            let Some(captured) = self.take_pending() else {
                self.phase = Phase::Refused;
                return Action::Pause;
            };
            return self.decide(&captured, Body::TooLarge);
        }
        if !end_of_stream {
            // Keep buffering; the request leaves the watchdog's list at the first chunk.
            if self.pending.is_none() {
                match self.take_pending() {
                    Some(captured) => self.pending = Some(captured),
                    None => self.phase = Phase::Refused,
                }
            }
            return Action::Pause;
        }
        self.finish_body(Some(body_size))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match self.phase {
            Phase::AwaitingBody => self.finish_body(None),
            Phase::Holding => self.finish_held(None),
            Phase::Refused | Phase::AwaitingLimit => Action::Pause,
            Phase::Headers | Phase::Allowed => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.phase == Phase::Holding || (self.held && self.phase == Phase::AwaitingLimit) {
            // A response before the held body was released (see `hold::early_response`).
            return self.early_response();
        }
        if self.phase != Phase::Allowed {
            // Our own local reply (or Envoy's) passing through: leave it alone.
            return Action::Continue;
        }
        for (name, value) in &self.response_headers {
            let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
        }
        if self.list_filter.is_none() || end_of_stream {
            return Action::Continue;
        }
        let header = |name: &str| {
            hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
                .ok()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        // The same rule as the Worker's: every 2xx list response is filtered.
        let successful = header(":status")
            .and_then(|s| s.trim().parse::<u16>().ok())
            .is_some_and(is_filtered_status);
        if !successful {
            return Action::Continue;
        }
        self.filtering = Some(header("content-type").unwrap_or_default());
        let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, "content-length");
        if self.held {
            // Body-holding mode runs where Envoy may lack `allow_on_headers_stop_iteration`, and without it a
            // Pause here would keep the response body from this filter for good. The headers go on; the body
            // is still buffered whole and replaced by the filtered one; a failure then resets the stream.
            return Action::Continue;
        }
        // Hold the headers until the filtered body is ready, so a failure can still become a 502.
        Action::Pause
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.filtering.is_none() {
            return Action::Continue;
        }
        if body_size > MAX_TOOLS_LIST_BYTES {
            self.filtering = None;
            return self.fail_closed(
                502,
                "tools_list.too_large",
                "the list response is too large to filter",
            );
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.finish_response(Some(body_size))
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.filtering.is_none() {
            return Action::Continue;
        }
        self.finish_response(None)
    }
}

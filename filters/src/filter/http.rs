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
    /// Host-verified mode: the request's attestation, for the driver that resumes.
    pub(super) attestation: Option<Result<HostVerified, TokenError>>,
}

/// What an outcome still has to do to the request.
pub(super) enum Render {
    /// The headers are paused: the client-sent identity headers (these names) go, the verified ones come in.
    Headers { client_identity: Vec<String> },
    /// Body-holding mode, the header stage (`Body::Held`): an allowed identity goes on with the headers (the
    /// client's identity headers, these names, go), and the body is held for the full decision.
    Stage { client_identity: Vec<String> },
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
    /// Whom an adapter-side failure answers: plain until the core placed the request.
    pub(super) reply_to: ReplyTo,
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
            reply_to: ReplyTo::plain(),
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
        let step = self.vm.borrow_mut().decide(captured, body, now);
        self.settle(step, render, captured.verification())
    }

    /// Where the core's driver stopped: the outcome to render, or a remote limit to consult.
    fn settle(
        &mut self,
        step: Option<Step>,
        render: Render,
        verification: Verification<'_>,
    ) -> Action {
        match step {
            None => {
                self.phase = Phase::Refused;
                let detail = "no policy is loaded";
                send_failure(Failure::Unconfigured, detail, &ReplyTo::plain());
                Action::Pause
            }
            Some(Step::Done(outcome)) => self.render(render, *outcome),
            Some(Step::ConsultLimiter(pending)) => {
                self.consult_remote(pending, render, verification)
            }
            // The driver takes every signature step itself.
            Some(Step::VerifySignature(_)) => self.fail_closed(
                Failure::Internal {
                    reason: "filter.state",
                },
                "the core's driver returned a signature step",
            ),
        }
    }

    /// A remote limit: the local bucket first (`local_first`), then the rate limit service. Pauses until
    /// its answer unless the outcome is known at once.
    pub(super) fn consult_remote(
        &mut self,
        pending: Box<PendingLimit>,
        render: Render,
        verification: Verification<'_>,
    ) -> Action {
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
                    let attestation = match verification {
                        Verification::Core => None,
                        Verification::Host(attestation) => Some(attestation.clone()),
                    };
                    self.remote = Some(RemoteCall {
                        token,
                        pending,
                        render,
                        attestation,
                    });
                    return Action::Pause;
                }
                Err(why) => rls_client::refused(&pending, &why),
            },
            (None, None) => rls_client::refused(&pending, "no rate_limit_service"),
        };
        self.finish_remote(pending, result, render, verification)
    }

    /// Finishes a remote limit with the service's answer (or its failure).
    pub(super) fn finish_remote(
        &mut self,
        pending: Box<PendingLimit>,
        result: Result<LimitState, StoreError>,
        render: Render,
        verification: Verification<'_>,
    ) -> Action {
        let step = {
            let mut vm = self.vm.borrow_mut();
            if let Err(e) = &result {
                vm.metrics.store_failure(e.reason());
            }
            vm.drive(verification, |gate| gate.resume_limit(*pending, result))
        };
        self.settle(step, render, verification)
    }

    /// Records and renders an outcome: the one place a decision reaches the stream.
    pub(super) fn render(&mut self, render: Render, outcome: Outcome) -> Action {
        {
            let mut vm = self.vm.borrow_mut();
            // An allowed header stage is not the request's decision (that comes with the body): not
            // audited. An unknown `kid` already asked the core's refresher for a refetch.
            match &render {
                Render::Stage { .. } if outcome.decision.is_allowed() => {}
                _ => vm.record(&outcome),
            }
        }
        let Outcome {
            decision, reply_to, ..
        } = outcome;
        self.reply_to = reply_to;
        let allowed = match decision {
            Decision::Denied(denied) => {
                self.phase = Phase::Refused;
                send_reply(&denied.reply);
                return Action::Pause;
            }
            Decision::Allowed(allowed) => allowed,
        };
        let internal = |reason| Failure::Internal { reason };
        match render {
            Render::Headers { client_identity } => {
                if let Err(detail) = set_identity(&client_identity, &allowed.upstream_headers) {
                    return self.fail_closed(internal("filter.headers"), detail);
                }
                if allowed.list_filter.is_some() {
                    // The response must be readable to be filtered.
                    let _ =
                        hostcalls::remove_map_value(MapType::HttpRequestHeaders, "accept-encoding");
                }
            }
            Render::Stage { client_identity } => {
                if let Err(detail) = set_identity(&client_identity, &allowed.upstream_headers) {
                    return self.fail_closed(internal("filter.headers"), detail);
                }
                // Whether this is a list request (whose answer is filtered) is only known from the body.
                if hostcalls::remove_map_value(MapType::HttpRequestHeaders, "accept-encoding")
                    .is_err()
                {
                    let detail = "could not remove accept-encoding";
                    return self.fail_closed(internal("filter.headers"), detail);
                }
                self.identity = allowed.upstream_headers;
                self.held = true;
                self.phase = Phase::Holding;
                return Action::Continue;
            }
            // accept-encoding went with the headers (the header stage).
            Render::Held => {
                if allowed.upstream_headers != self.identity {
                    return self.fail_closed(
                        internal("filter.identity_changed"),
                        "the decision's identity differs from the one sent with the headers",
                    );
                }
            }
        }
        self.response_headers = allowed.response_headers;
        self.list_filter = allowed.list_filter;
        self.phase = Phase::Allowed;
        Action::Continue
    }

    /// Refuses with an adapter-side failure (`detail` to the log only).
    pub(super) fn fail_closed(&mut self, failure: Failure, detail: &str) -> Action {
        self.phase = Phase::Refused;
        send_failure(failure, detail, &self.reply_to);
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
        let body = buffered_body(BufferType::HttpRequestBody, size, self.max_body);
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
        let body = buffered_body(BufferType::HttpResponseBody, size, MAX_LIST_BYTES);
        if body.len() > MAX_LIST_BYTES {
            let detail = "list response over the cap";
            return self.fail_closed(Failure::ListTooLarge, detail);
        }
        match filter.apply(&content_type, &body) {
            Ok(filtered) => {
                if hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body.len(), &filtered)
                    .is_err()
                {
                    let detail = "could not replace the list response";
                    return self.fail_closed(Failure::ListUnfilterable, detail);
                }
                Action::Continue
            }
            Err(e) => self.fail_closed(
                Failure::ListUnfilterable,
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
        let verification = match &call.attestation {
            Some(attestation) => Verification::Host(attestation),
            None => Verification::Core,
        };
        if self.finish_remote(call.pending, result, call.render, verification) == Action::Continue {
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
                host_verified,
                body_mode,
                ..
            } => {
                if let Some(jwt_authn) = host_verified {
                    captured.attestation = Some(captured.attest(jwt_authn, gate));
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
        // The core's rule, the Worker's too: every 2xx list response is filtered.
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
        if body_size > MAX_LIST_BYTES {
            self.filtering = None;
            return self.fail_closed(Failure::ListTooLarge, "list response over the cap");
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

/// The buffered body of `kind`, at most `cap + 1` bytes (`size`, when the host said it, bounds the read):
/// a body longer than `cap` is over the cap.
pub(super) fn buffered_body(kind: BufferType, size: Option<usize>, cap: usize) -> Vec<u8> {
    let limit = cap.saturating_add(1);
    hostcalls::get_buffer(kind, 0, size.unwrap_or(limit).min(limit))
        .ok()
        .flatten()
        .unwrap_or_default()
}

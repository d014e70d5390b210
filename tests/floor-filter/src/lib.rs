//! The floor filter: what every proxy-wasm filter that authorizes on the request body must at least do.
//!
//! It pauses at the request headers, reads the whole body once it has arrived and sets one request header
//! (the body's length), then lets the request go on. Nothing is parsed, checked or logged: the Envoy bench
//! (tests/bench/envoy_bench.py) runs it beside txngate so that the table shows, in the same run, how much of
//! txngate's cost is the proxy-wasm round trips any such filter pays and how much is txngate's own work.

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
    }}

    /// Creates one [`Floor`] per request.
    struct Root;

    impl Context for Root {}

    impl RootContext for Root {
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Floor))
        }
    }

    /// One request: held at the headers until its body is complete.
    struct Floor;

    impl Context for Floor {}

    impl HttpContext for Floor {
        fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
            if end_of_stream {
                Action::Continue
            } else {
                Action::Pause
            }
        }

        fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            if !end_of_stream {
                return Action::Pause;
            }
            let length = self
                .get_http_request_body(0, body_size)
                .map_or(0, |body| body.len());
            self.set_http_request_header("x-floor-body-bytes", Some(&length.to_string()));
            Action::Continue
        }
    }
}

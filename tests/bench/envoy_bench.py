"""Envoy CPU per MCP `tools/call`: txngate against Envoy's native chain, in one run (issue #7).

    .venv/bin/python tests/bench/envoy_bench.py --out target/bench/envoy.md [--quick]

Writes the markdown table to --out and the same figures as JSON next to it (`envoy.json`):
{"rows": [{"name", "cpu_us", "rps", "p50_ms", "p99_ms", ...}], "ratios": {name: cpu_us / cpu_us of (2)}, ...}.

Setup: real Envoy 1.40 (the `envoy` of .venv), ONE worker (`--concurrency 1`) pinned to core 0 with taskset;
wrk pinned to core 1 (one thread, a few keep-alive connections, a Lua script that POSTs an MCP `tools/call`
and takes the next token of a pre-minted pool for every request). Everything listens on 127.0.0.1; every
Envoy answers from a `direct_response` route, so the figure is Envoy + its filters only. CPU per request is
the Envoy process's utime+stime delta (/proc/PID/stat; the per-thread schedstat at ns resolution is kept in
the JSON too) divided by the requests wrk completed. All scenarios run side by side (one Envoy each, all
started up front, idle ones cost nothing), interleaved in rounds with a rotating order so machine noise hits
every scenario alike; figures are medians over rounds. Every run is bounded in time (wrk -d, subprocess
timeouts) and every process is stopped by its PID (tests/e2e/procs.py).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import httpx  # noqa: E402
import jwt  # noqa: E402  (PyJWT, in the venv)
from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: E402

from procs import Proc, free_port, wait_envoy_live  # noqa: E402

ENVOY = ROOT / ".venv" / "bin" / "envoy"
WASM = ROOT / "target" / "shipped" / "txngate_filter.wasm"
#: The floor filter (tests/floor-filter): pause, read the body, set one header. Built by this script.
FLOOR_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "txngate_floor_filter.wasm"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
TRUST_DOMAIN = "trust.example"
AGENT = "spiffe://trust.example/agent/bench"
TOOL = "calendar_read"
TOKEN_HEADER = "txn-token"
#: Tokens live this long; the policy allows it (max_lifetime_seconds below).
TOKEN_TTL = 1800
#: The txngate token cache (entries) in the "fresh" scenarios; the pool is larger, so every token misses.
CACHE_ENTRIES = 1024
POOL = 2048
ANSWER = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "ok"}], "isError": False}})
BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": TOOL, "arguments": {"day": "mon"}}})
#: Envoy's mcp filter parses only with these two (see its docs); sent to every scenario alike.
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


# -- keys and tokens -------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Issuer:
    alg: str
    kid: str
    private: Any
    jwk: dict

    @classmethod
    def new(cls, alg: str, kid: str) -> "Issuer":
        if alg == "EdDSA":
            key = ed25519.Ed25519PrivateKey.generate()
            raw = key.public_key().public_bytes_raw()
            jwk = {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": kid, "use": "sig", "x": _b64(raw)}
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            nums = key.public_key().public_numbers()
            jwk = {"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": kid, "use": "sig",
                   "x": _b64(nums.x.to_bytes(32, "big")), "y": _b64(nums.y.to_bytes(32, "big"))}
        return cls(alg, kid, key, jwk)

    def mint(self, count: int) -> list[str]:
        """`count` distinct Transaction Tokens (own `txn` each) for the bench agent."""
        now = int(time.time())
        out = []
        for _ in range(count):
            claims = {"iss": "https://tts.trust.example", "aud": TRUST_DOMAIN, "sub": "user-1", "iat": now,
                      "exp": now + TOKEN_TTL, "txn": str(uuid.uuid4()), "scope": "calendar:read",
                      "req_wl": AGENT, "act": {"sub": AGENT}}
            out.append(jwt.encode(claims, self.private, algorithm=self.alg,
                                  headers={"typ": "txntoken+jwt", "kid": self.kid}))
        return out


def txngate_policy(issuers: list[Issuer], cache_entries: int = CACHE_ENTRIES, hybrid: bool = False,
                   limit: bool = True) -> dict:
    doc: dict[str, Any] = {
        "trust_domain": TRUST_DOMAIN,
        "issuers": [{"name": "tts", "iss": "https://tts.trust.example", "jwks": {"keys": [i.jwk for i in issuers]},
                     "algorithms": sorted({i.alg for i in issuers})}],
        "token": {"header": TOKEN_HEADER, "max_lifetime_seconds": 3600, "cache_entries": cache_entries},
        "agents": {"spiffe://trust.example/agent/*": {"max_scopes": ["calendar:*"]}},
        "mcp": {"path_prefix": "/mcp", "max_body_bytes": 65536},
        # A limit that never trips: the rate-limit step (shared-data GCRA) runs on every call, as
        # local_ratelimit does in the native chain.
        "tools": {TOOL: {"scopes": ["calendar:read"],
                         "rate_limit": {"key": "agent", "limit": 100000000, "period_seconds": 1}},
                  "*": {"effect": "deny"}},
        # Like local_ratelimit without enable_x_ratelimit_headers: RateLimit fields on refusals (429) only.
        "limits": {"headers": "refusals"},
    }
    if not limit:
        del doc["tools"][TOOL]["rate_limit"]
    if hybrid:
        doc["host_verified_jwt_authn"] = {"payload_in_metadata": "txn_payload"}
    return doc


# -- Envoy configurations --------------------------------------------------------------------------------


def _typed(name: str, type_url: str, config: dict | None = None) -> dict:
    return {"name": name, "typed_config": {"@type": type_url, **(config or {})}}


def buffer_filter() -> dict:
    return _typed("envoy.filters.http.buffer", "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                  {"max_request_bytes": 65536})


def jwt_authn(issuers: list[Issuer], cache: bool, *, allow_failed: bool = False) -> dict:
    provider: dict[str, Any] = {
        "local_jwks": {"inline_string": json.dumps({"keys": [i.jwk for i in issuers]})},
        "from_headers": [{"name": TOKEN_HEADER}],
        "forward": True,
        "payload_in_metadata": "txn_payload",
        "clock_skew_seconds": 30,
    }
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 1024}
    requires = {"requires_any": {"requirements": [{"provider_name": "tts"}, {"allow_missing_or_failed": {}}]}} \
        if allow_failed else {"provider_name": "tts"}
    return _typed("envoy.filters.http.jwt_authn",
                  "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                  {"providers": {"tts": provider}, "rules": [{"match": {"prefix": "/"}, "requires": requires}]})


def mcp_filter() -> dict:
    return _typed("envoy.filters.http.mcp", "type.googleapis.com/envoy.extensions.filters.http.mcp.v3.Mcp")


def rbac_on_tool(tool: str) -> dict:
    """Allow only `tools/call` of `tool`, read from the mcp filter's dynamic metadata."""
    def meta(path: list[str], value: str) -> dict:
        return {"metadata": {"filter": "envoy.filters.http.mcp", "path": [{"key": k} for k in path],
                             "value": {"string_match": {"exact": value}}}}
    policy = {"permissions": [{"any": True}],
              "principals": [{"and_ids": {"ids": [meta(["method"], "tools/call"), meta(["params", "name"], tool)]}}]}
    return _typed("envoy.filters.http.rbac", "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                  {"rules": {"action": "ALLOW", "policies": {"tool": policy}}})


def local_ratelimit() -> dict:
    return _typed("envoy.filters.http.local_ratelimit",
                  "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                  {"stat_prefix": "rl",
                   "token_bucket": {"max_tokens": 100000000, "tokens_per_fill": 100000000, "fill_interval": "1s"},
                   "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"},
                                      "runtime_key": "rl_enabled"},
                   "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"},
                                       "runtime_key": "rl_enforced"}})


def txngate_filter(policy: dict, wasm: Path, audit_sink: str | None = None, access_log_fields: bool = True) -> dict:
    # The strict mode allow_on_headers_stop_iteration allows: the whole decision before anything goes on. In
    # the default body-holding mode Envoy's direct_response would answer before the body is decided.
    policy = {**policy, "pause_at_headers": True}
    if audit_sink is not None:
        policy = {**policy, "audit_sink": audit_sink}
    if not access_log_fields:
        policy = {**policy, "access_log_fields": False}
    return _typed("envoy.filters.http.wasm", "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", {
        "config": {
            "name": "txngate", "root_id": "txngate", "failure_policy": "FAIL_CLOSED",
            "allow_on_headers_stop_iteration": True,
            "vm_config": {"vm_id": "txngate", "runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"filename": str(wasm)}}},
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": json.dumps(policy)},
        }})


def floor_filter(wasm: Path) -> dict:
    """The floor of any body-reading proxy-wasm filter (tests/floor-filter), configured as txngate is."""
    return _typed("envoy.filters.http.wasm", "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", {
        "config": {
            "name": "floor", "root_id": "floor", "failure_policy": "FAIL_CLOSED",
            "allow_on_headers_stop_iteration": True,
            "vm_config": {"vm_id": "floor", "runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"filename": str(wasm)}}},
        }})


def build_floor_filter() -> Path:
    """cargo build of tests/floor-filter (a no-op when current): the bench measures the floor of this tree."""
    subprocess.run(["cargo", "build", "--locked", "--release", "-p", "txngate-floor-filter", "--target", "wasm32-wasip1"],
                   cwd=ROOT, check=True, stdin=subprocess.DEVNULL, timeout=3600)
    return FLOOR_WASM


def bootstrap(filters: list[dict], listener_port: int, admin_port: int, access_log: Path | None = None) -> dict:
    router = _typed("envoy.filters.http.router", "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router")
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "route_config": {"virtual_hosts": [{"name": "mcp", "domains": ["*"], "routes": [{
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": ANSWER}},
            "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}],
        }]}]},
        "http_filters": [*filters, router],
    }
    if access_log is not None:
        # The audit record of audit_sink "filter_state", written by Envoy's buffered file access log.
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(access_log),
            "log_format": {"text_format_source": {"inline_string": "%FILTER_STATE(wasm.txngate_audit:PLAIN)%\n"}},
        }}]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": [{
            "name": "mcp",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
        }]},
    }


@dataclass
class Scenario:
    name: str
    label: str
    filters: list[dict]
    tokens: list[str]
    listener_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    pid: int = 0
    samples: list[dict] = field(default_factory=list)
    #: Write Envoy's access log (the filter_state audit sink's records) to a file in the run directory.
    access_log: bool = False
    #: Envoy's own log (and so txngate's audit line) to a file with `--log-path`: Envoy buffers it and its
    #: flush thread writes it, instead of one synchronous write(2) to stderr per line on the worker.
    log_path: bool = False

    @property
    def authorizes_tools(self) -> bool:
        return any(f["name"] == "envoy.filters.http.rbac"
                   or (f["name"] == "envoy.filters.http.wasm" and f["typed_config"]["config"]["name"] == "txngate")
                   for f in self.filters)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}/mcp"


def scenarios(wasm: Path, pools: dict[str, list[str]], issuers: dict[str, Issuer], with_hybrid: bool,
              variants: bool = False, wasm_b: list[Path] | None = None, floor: Path | None = None) -> list[Scenario]:
    both = [issuers["EdDSA"], issuers["ES256"]]
    repeated = pools["EdDSA"][:1]
    out = [
        Scenario("baseline", "(1) baseline: no auth, buffer filter", [buffer_filter()], repeated),
        *([Scenario("wasm_floor", "(0) Wasm floor: a proxy-wasm filter that pauses, reads the body, sets one header",
                    [floor_filter(floor)], repeated)] if floor else []),
        Scenario("native_chain", "(2) native chain: jwt_authn (cache) + mcp + rbac + local_ratelimit, repeated token",
                 [jwt_authn(both, cache=True), mcp_filter(), rbac_on_tool(TOOL), local_ratelimit()], repeated),
        Scenario("native_chain_fresh_es256", "native chain, fresh ES256 token per request",
                 [jwt_authn(both, cache=True), mcp_filter(), rbac_on_tool(TOOL), local_ratelimit()], pools["ES256"]),
        Scenario("txngate_repeated", "(3) txngate, repeated token", [txngate_filter(txngate_policy(both), wasm)], repeated),
        Scenario("txngate_repeated_state_sink",
                 "(3') txngate, repeated token, audit_sink filter_state (the record in Envoy's file access log)",
                 [txngate_filter(txngate_policy(both), wasm, audit_sink="filter_state")], repeated, access_log=True),
        Scenario("txngate_repeated_log_path",
                 "(3'') txngate, repeated token, Envoy's log (the audit line) buffered by `--log-path`",
                 [txngate_filter(txngate_policy(both), wasm)], repeated, log_path=True),
        Scenario("txngate_fresh_eddsa", "(4) txngate, fresh EdDSA token per request",
                 [txngate_filter(txngate_policy(both), wasm)], pools["EdDSA"]),
        Scenario("txngate_fresh_es256", "(4) txngate, fresh ES256 token per request",
                 [txngate_filter(txngate_policy(both), wasm)], pools["ES256"]),
        Scenario("jwt_authn_fresh_es256", "(5) native jwt_authn, no cache, fresh ES256 token per request",
                 [jwt_authn(both, cache=False)], pools["ES256"]),
    ]
    if with_hybrid:
        out.append(Scenario("hybrid_fresh_es256", "(6) txngate hybrid (jwt_authn verifies), fresh ES256",
                            [jwt_authn(both, cache=False, allow_failed=True),
                             txngate_filter(txngate_policy(both, hybrid=True), wasm)], pools["ES256"]))
        out.append(Scenario("hybrid_repeated", "txngate hybrid, repeated token (jwt_authn with its cache)",
                            [jwt_authn(both, cache=True, allow_failed=True),
                             txngate_filter(txngate_policy(both, hybrid=True), wasm)], repeated))
    if variants:
        # Where the time goes: the same as (3) without the rate-limit step (shared-data GCRA).
        out.append(Scenario("txngate_repeated_no_limit", "variant: (3) without a rate limit on the tool",
                            [txngate_filter(txngate_policy(both, limit=False), wasm)], repeated))
        # ... and without the log sink's five per-field filter-state values (five set_property calls).
        out.append(Scenario("txngate_repeated_no_fields", "variant: (3) with access_log_fields false",
                            [txngate_filter(txngate_policy(both), wasm, access_log_fields=False)], repeated))
    for other in wasm_b or []:
        # A/B in one run: (3) with other filter builds (e.g. before/after a change), interleaved with it.
        out.append(Scenario(f"txngate_repeated@{other.stem}", f"(3) txngate, repeated token, filter {other.name}",
                            [txngate_filter(txngate_policy(both), other)], repeated))
    return out


# -- processes -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def running(scenario: Scenario, directory: Path, log_level: str, timeout: float = 60.0) -> Iterator[Proc]:
    path = directory / f"{scenario.name}.json"
    log = path.parent / f"{scenario.name}.access.log" if scenario.access_log else None
    path.write_text(json.dumps(bootstrap(scenario.filters, scenario.listener_port, scenario.admin_port, log), indent=1))
    argv = ["taskset", "-c", "0", str(ENVOY), "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
            "-l", log_level, "--drain-time-s", "0"]
    if scenario.log_path:
        argv += ["--log-path", str(path.parent / f"{scenario.name}.envoy.log")]
    with Proc(argv, name=f"envoy-{scenario.name}", log_dir=directory) as proc:
        wait_envoy_live(proc, scenario.admin_port, timeout, label=f"envoy {scenario.name}", tail=40)
        proc.wait_port(scenario.listener_port)
        assert proc.pid is not None
        scenario.pid = proc.pid
        yield proc


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_ns(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            pass  # a thread that just exited
    return total


def lua_script(directory: Path, scenario: Scenario) -> Path:
    tokens = directory / f"{scenario.name}.tokens"
    tokens.write_text("\n".join(scenario.tokens) + "\n")
    script = directory / f"{scenario.name}.lua"
    headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in HEADERS.items())
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY)}\n{headers}'
        "local tokens = {}\n"
        f'for line in io.lines("{tokens}") do if #line > 0 then tokens[#tokens + 1] = line end end\n'
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #tokens + 1\n"
        f'  wrk.headers["{TOKEN_HEADER}"] = tokens[i]\n'
        '  return wrk.format(nil, "/mcp")\n'
        "end\n"
    )
    return script


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _latency_ms(text: str, pct: str) -> float:
    match = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    return round(float(match.group(1)) * _UNITS[match.group(2)], 3) if match else float("nan")


def wrk(scenario: Scenario, script: Path, seconds: int, connections: int) -> dict:
    argv = ["taskset", "-c", "1", WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
            scenario.url]
    t0, n0 = cpu_ticks(scenario.pid), cpu_ns(scenario.pid)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, stdin=subprocess.DEVNULL)
    t1, n1 = cpu_ticks(scenario.pid), cpu_ns(scenario.pid)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed for {scenario.name}: {done.stderr.strip()}")
    count = re.search(r"(\d+) requests in", done.stdout)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    if not count or not rps or int(count.group(1)) == 0:
        raise RuntimeError(f"wrk output not understood for {scenario.name}:\n{done.stdout}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", done.stdout)
    requests = int(count.group(1))
    return {
        "requests": requests,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "cpu_us": (t1 - t0) / os.sysconf("SC_CLK_TCK") / requests * 1e6,
        "cpu_us_schedstat": (n1 - n0) / requests / 1e3,
        "rps": float(rps.group(1)),
        "p50_ms": _latency_ms(done.stdout, "50"),
        "p99_ms": _latency_ms(done.stdout, "99"),
    }


# -- run -------------------------------------------------------------------------------------------------


def check_allowed(scenario: Scenario) -> None:
    """One request by hand: the scenario must allow the call (a bench of refusals would flatter everyone)."""
    headers = {**HEADERS, TOKEN_HEADER: scenario.tokens[0]}
    r = httpx.post(scenario.url, content=BODY, headers=headers, timeout=10)
    if r.status_code != 200:
        raise RuntimeError(f"{scenario.name}: expected 200, got {r.status_code}: {r.text[:300]}")
    if scenario.authorizes_tools:
        # ... and the chain must really authorize the tool: another tool is refused.
        other = BODY.replace(TOOL, "delete_repo")
        r = httpx.post(scenario.url, content=other, headers=headers, timeout=10)
        if r.status_code != 403:
            raise RuntimeError(f"{scenario.name}: another tool must be refused (403), got {r.status_code}")


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "bench" / "envoy.md")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3 s (about 2 minutes)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=int, help="wrk duration per scenario and round")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--log-level", default="info",
                        help="Envoy log level; at info txngate's audit line per request is written (default)")
    parser.add_argument("--no-hybrid", action="store_true", help="skip (6), e.g. with a filter built before hybrid")
    parser.add_argument("--variants", action="store_true", help="add profiling variants (see scenarios())")
    parser.add_argument("--only", help="comma-separated scenario names (profiling); the ratios need "
                        "baseline, native_chain and jwt_authn_fresh_es256")
    parser.add_argument("--wasm", type=Path, default=Path(os.environ.get("TXNGATE_FILTER_WASM", WASM)))
    parser.add_argument("--wasm-b", type=Path, action="append",
                        help="another filter build (repeatable): adds txngate_repeated@<file stem> (A/B in one run)")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 5)
    seconds = args.seconds or (3 if args.quick else 8)
    if not args.wasm.exists() and args.wasm == WASM:
        print("envoy_bench: building the shipped filter (scripts/build-filter.sh)", file=sys.stderr)
        subprocess.run([str(ROOT / "scripts" / "build-filter.sh")], cwd=ROOT, check=False, stdin=subprocess.DEVNULL,
                       timeout=3600)
    for tool, path in (("envoy", ENVOY), ("wrk", Path(WRK)), ("filter", args.wasm),
                       *(("filter B", b) for b in args.wasm_b or [])):
        if not Path(path).exists():
            print(f"envoy_bench: {tool} not found at {path}", file=sys.stderr)
            return 2
    if (os.cpu_count() or 1) < 2:
        print("envoy_bench: needs two cores (Envoy on 0, wrk on 1)", file=sys.stderr)
        return 2

    started = time.monotonic()
    issuers = {"EdDSA": Issuer.new("EdDSA", "bench-ed"), "ES256": Issuer.new("ES256", "bench-es")}
    pools = {alg: i.mint(POOL) for alg, i in issuers.items()}
    floor = build_floor_filter()
    plan = scenarios(args.wasm, pools, issuers, with_hybrid=not args.no_hybrid, variants=args.variants,
                     wasm_b=args.wasm_b, floor=floor)
    if args.only:
        wanted = set(args.only.split(","))
        plan = [s for s in plan if s.name in wanted]
    directory = Path(tempfile.mkdtemp(prefix="envoy-bench-"))
    scripts = {s.name: lua_script(directory, s) for s in plan}
    print(f"envoy_bench: {len(plan)} scenarios x {rounds} rounds x {seconds} s; logs in {directory}", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        for s in plan:
            stack.enter_context(running(s, directory, args.log_level))
        for s in plan:
            check_allowed(s)
            wrk(s, scripts[s.name], 1, args.connections)  # warm-up: V8 tiers the filter up, caches fill
        for r in range(rounds):
            order = plan[r % len(plan):] + plan[:r % len(plan)]
            for s in order:
                sample = wrk(s, scripts[s.name], seconds, args.connections)
                if sample["non2xx"]:
                    raise RuntimeError(f"{s.name}: {sample['non2xx']} of {sample['requests']} requests refused")
                s.samples.append(sample)
                print(f"  round {r + 1} {s.name}: {sample['cpu_us']:.1f} µs/request, {sample['rps']:.0f} req/s",
                      file=sys.stderr)

    rows = []
    for s in plan:
        rows.append({
            "name": s.name,
            "label": s.label,
            "cpu_us": median([x["cpu_us"] for x in s.samples]),
            "cpu_us_schedstat": median([x["cpu_us_schedstat"] for x in s.samples]),
            "rps": round(statistics.median(x["rps"] for x in s.samples)),
            "p50_ms": round(statistics.median(x["p50_ms"] for x in s.samples), 3),
            "p99_ms": round(statistics.median(x["p99_ms"] for x in s.samples), 3),
            "requests": sum(x["requests"] for x in s.samples),
        })
    by = {r["name"]: r for r in rows}
    def ratio_to(name: str) -> dict:
        """cpu_us / that of `name`; null when `name` did not run (--only), so the JSON stays strict."""
        ref = by.get(name, {}).get("cpu_us")
        return {r["name"]: round(r["cpu_us"] / ref, 3) if ref else None for r in rows}

    ratios, ratios_jwt, ratios_base = ratio_to("native_chain"), ratio_to("jwt_authn_fresh_es256"), ratio_to("baseline")
    floor_us = by.get("wasm_floor", {}).get("cpu_us")
    over_floor = {r["name"]: round(r["cpu_us"] - floor_us, 1) if floor_us else None for r in rows}
    envoy_version = subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    meta = {
        "envoy": envoy_version.split("version:")[-1].strip(),
        "rounds": rounds, "seconds": seconds, "connections": args.connections, "log_level": args.log_level,
        "wasm_bytes": args.wasm.stat().st_size, "pool": POOL, "txngate_cache_entries": CACHE_ENTRIES,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    (args.out.parent / "envoy.json").write_text(json.dumps(
        {"rows": rows, "ratios": ratios, "ratios_to_jwt_authn_fresh": ratios_jwt,
         "ratios_to_baseline": ratios_base, "over_floor_us": over_floor,
         "metrics": {"filter_wasm_bytes": args.wasm.stat().st_size, "floor_wasm_bytes": floor.stat().st_size},
         "meta": meta}, indent=1))
    args.out.write_text(markdown(rows, ratios, ratios_jwt, over_floor, meta))
    print(args.out.read_text())
    return 0


def markdown(rows: list[dict], ratios: dict, ratios_jwt: dict, over_floor: dict, meta: dict) -> str:
    lines = [
        f"Envoy {meta['envoy']}, one worker pinned to one core, wrk -t1 -c{meta['connections']} on the other; "
        f"medians of {meta['rounds']} interleaved rounds of {meta['seconds']} s; Envoy log level "
        f"{meta['log_level']}; filter {meta['wasm_bytes'] // 1024} KiB.",
        "",
        "| scenario | Envoy CPU µs/request | − Wasm floor (0) µs | × native chain (2) | × jwt_authn fresh ES256 (5) | req/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        def fmt(x: float | None) -> str:
            return "–" if x is None else f"{x:.2f}"
        floor = "–" if over_floor[r["name"]] is None else f"{over_floor[r['name']]:.1f}"
        lines.append(f"| {r['label']} | {r['cpu_us']:.1f} | {floor} | {fmt(ratios[r['name']])} | {fmt(ratios_jwt[r['name']])} | "
                     f"{r['rps']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

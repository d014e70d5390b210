"""Envoy CPU per request and client-side p50/p99 latency of a tool call whose rate limit is local (shared data)
against the same call with a remote limit (the test rate limit service over Redis), one Envoy with one worker,
sequential keep-alive requests, measured in one run. Prints a Markdown table (docs/ratelimits.md, "Measured";
a hand run, not part of `cargo xtask bench`).

    .venv/bin/python tests/bench/remote_limit_bench.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

E2E = Path(__file__).resolve().parents[1] / "e2e"
sys.path.insert(0, str(E2E))
sys.path.insert(0, str(E2E / "envoy"))

import test_envoy_mesh_limits as mesh  # noqa: E402
from envoy_harness import EnvoyConfig, Minter, filter_wasm, txngate_cli  # noqa: E402
from procs import free_port  # noqa: E402

BIG = 1_000_000


def run(envoy, token: str, n: int) -> tuple[float, float, float]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search_web", "arguments": {}}}
    headers = {"txn-token": token, "accept": "application/json"}
    lat = []
    with httpx.Client(timeout=10) as client:
        for _ in range(200):  # warm-up: token cache, connections, V8 tiers
            client.post(envoy.url, json=body, headers=headers)
        cpu0 = envoy.cpu_ns()
        for _ in range(n):
            t0 = time.perf_counter_ns()
            r = client.post(envoy.url, json=body, headers=headers)
            lat.append(time.perf_counter_ns() - t0)
            assert r.status_code == 200, r.text
        cpu = (envoy.cpu_ns() - cpu0) / n
    lat.sort()
    return cpu / 1000, statistics.median(lat) / 1000, lat[int(len(lat) * 0.99)] / 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="remote-limit-bench-"))
    minter = Minter(txngate_cli(), work / "key", "k1")
    issuer = {"name": "tts", "jwks": minter.jwks, "algorithms": [minter.alg]}
    mesh.LIMITS[0]["max_value"] = BIG
    redis = mesh.Redis(work)
    redis.start()
    service = mesh.Service(work, redis.port)
    rows = []
    try:
        service.start()
        agent = mesh.AGENT + "bench"
        token = minter.mint(mesh.claims(agent, "web:search", "user-1"), act=[agent], ttl=300)
        for label, remote in (("local (shared data)", False), ("remote (RLS + Redis)", True)):
            policy = mesh.policy(issuer)
            rl = {"key": "agent", "limit": BIG, "period_seconds": 60}
            if remote:
                rl["remote"] = {}
            policy["tools"]["search_web"]["rate_limit"] = rl
            config = EnvoyConfig(policy=policy, upstream_port=free_port(), wasm=filter_wasm(),
                                 direct_response='{"jsonrpc":"2.0","id":1,"result":{"content":[]}}')
            name = "envoy-remote" if remote else "envoy-local"
            proc, envoy = mesh.start_envoy(config, work, name, base_id=7300 + int(remote), rls_port=service.port,
                                           concurrency=1)
            try:
                rows.append((label, *run(envoy, token, args.requests)))
            finally:
                proc.stop()
    finally:
        service.stop()
        redis.stop()
    print(f"| limit | Envoy CPU per request (µs) | p50 (µs) | p99 (µs) |  ({args.requests} sequential requests each)")
    print("|---|---|---|---|")
    for label, cpu, p50, p99 in rows:
        print(f"| {label} | {cpu:.0f} | {p50:.0f} | {p99:.0f} |")


if __name__ == "__main__":
    main()

"""Flood one real Envoy (the txngate filter, 2 workers) with distinct agents and tool names; report its memory.

    .venv/bin/python tests/flood/envoy_flood.py                        # 1,000,000 requests (several minutes)
    .venv/bin/python tests/flood/envoy_flood.py --count 20000 --max-growth-mib 64   # the test-command size

Every request carries a fresh Txn-Token (its own `txn`, its own agent `req_wl`) calling its own tool name, so
nothing repeats: each request is a token-cache miss, a signature check, a new agent and a new per-agent-per-tool
rate-limit bucket. The policy lets every tool through a `tools["*"]` rule with a per-agent limit, so the bounded
stores fill: the verified-token cache (`token.cache_entries`) and the shared-data rate-limit table
(`limits.max_keys`, all live → 503 `ratelimit.store_full`, fail closed).

It samples Envoy's resident memory (/proc/PID/status VmRSS, VmHWM) at checkpoints and prints, then writes,
a markdown table and a JSON summary. With --max-growth-mib it exits 1 when the resident memory grew by more
than that between the --baseline-at checkpoint and the end (choose it after the bounded stores have filled):
memory must be flat in the number of distinct agents and tools.

Tokens are signed here with an Ed25519 key made for the run (Python `cryptography`, several processes); only
127.0.0.1 is used, every loop is bounded in count and time, and Envoy is stopped by its PID.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tests" / "e2e" / "envoy"))

from envoy_harness import EnvoyConfig, filter_wasm, ledger, running_envoy  # noqa: E402

TRUST_DOMAIN = "flood.example"
AGENT = "spiffe://flood.example/agent/"
KID = "flood-1"
TTL_SECONDS = 600
CACHE_ENTRIES = 1024
RECV_TIMEOUT = 10.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def policy(public_key: bytes, max_keys: int, period_seconds: int) -> dict:
    return {
        "trust_domain": TRUST_DOMAIN,
        "issuers": [{
            "name": "flood",
            "iss": "flood",
            "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64(public_key), "kid": KID, "alg": "EdDSA"}]},
            "algorithms": ["EdDSA"],
        }],
        "agents": {AGENT + "*": {"max_scopes": ["flood:call"]}},
        "token": {"cache_entries": CACHE_ENTRIES, "max_lifetime_seconds": TTL_SECONDS},
        "tools": {"*": {"scopes": ["flood:call"], "rate_limit": {"key": "agent", "limit": 5, "period_seconds": period_seconds}}},
        "limits": {"max_keys": max_keys},
        "audit": {"arguments": "hash"},
    }


def request_bytes(private_key, index: int, now: int, minted: list[str]) -> bytes:
    """One POST /mcp: a fresh token for agent `index` calling tool `index` (appended to `minted`)."""
    header = b64(json.dumps({"alg": "EdDSA", "typ": "txntoken+jwt", "kid": KID}, separators=(",", ":")).encode())
    claims = {
        "iss": "flood", "aud": TRUST_DOMAIN, "sub": f"user-{index}", "scope": "flood:call",
        "req_wl": f"{AGENT}a{index}", "txn": str(uuid.uuid4()), "iat": now, "exp": now + TTL_SECONDS,
    }
    payload = b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}"
    token = f"{signing_input}.{b64(private_key.sign(signing_input.encode()))}"
    minted.append(token)
    body = json.dumps({
        "jsonrpc": "2.0", "id": index, "method": "tools/call",
        "params": {"name": f"tool-{index}", "arguments": {"n": index}},
    }, separators=(",", ":")).encode()
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\n"
        f"Txn-Token: {token}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, bool]:
    """Reads one HTTP/1.1 response with a Content-Length (Envoy's answers all have one); returns its status and
    whether the connection stays open."""
    for _ in range(10_000):
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buffer[:end]).decode("latin-1")
            status = int(head.split(" ", 2)[1])
            length = 0
            keep = True
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
                if name.strip().lower() == "connection" and value.strip().lower() == "close":
                    keep = False
            total = end + 4 + length
            while len(buffer) < total:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("Envoy closed the connection mid-response")
                buffer.extend(chunk)
            del buffer[:total]
            return status, keep
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("Envoy closed the connection")
        buffer.extend(chunk)
    raise RuntimeError("response header never ended")


def client(worker: int, workers: int, count: int, port: int, private_bytes: bytes, done, deadline: float,
           results) -> None:
    """Sends requests worker, worker+workers, ... over 16 keep-alive connections, one request in flight on each
    (Envoy answers HTTP/1.1 requests one at a time per connection; pipelining is not what clients do)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(private_bytes)
    statuses: dict[int, int] = {}
    width = 16
    indices = list(range(worker, count, workers))
    now = int(time.time())
    socks: list[socket.socket | None] = [None] * width
    buffers = [bytearray() for _ in range(width)]
    received = 0
    reported = 0
    try:
        for start in range(0, len(indices), width):
            if time.monotonic() > deadline:
                break
            now = int(time.time())
            batch = indices[start:start + width]
            minted: list[str] = []
            for slot, index in enumerate(batch):
                if socks[slot] is None:
                    socks[slot] = socket.create_connection(("127.0.0.1", port), timeout=RECV_TIMEOUT)
                    buffers[slot].clear()
                socks[slot].sendall(request_bytes(key, index, now, minted))
            ledger.record_many("token", minted)
            for slot in range(len(batch)):
                status, keep = read_response(socks[slot], buffers[slot])
                statuses[status] = statuses.get(status, 0) + 1
                received += 1
                if not keep:
                    socks[slot].close()
                    socks[slot] = None
            if received - reported >= 256:
                with done.get_lock():
                    done.value += received - reported
                reported = received
    finally:
        for sock in socks:
            if sock is not None:
                sock.close()
        with done.get_lock():
            done.value += received - reported
        results.put((worker, statuses, received))


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="requests, one distinct agent and tool each")
    parser.add_argument("--clients", type=int, default=3, help="client processes (one connection each)")
    parser.add_argument("--max-seconds", type=float, default=3600, help="stop sending after this long")
    parser.add_argument("--max-keys", type=int, default=65536, help="the policy's limits.max_keys")
    parser.add_argument("--period-seconds", type=int, default=3600,
                        help="rate-limit period: 3600 keeps every bucket live (the table fills, then 503 "
                             "ratelimit.store_full); 1 lets buckets drain so slots are reused (all 200)")
    parser.add_argument("--baseline-at", type=int, default=None,
                        help="checkpoint the growth is measured from (default: count / 10)")
    parser.add_argument("--max-growth-mib", type=float, default=None,
                        help="fail when RSS grows more than this from the baseline checkpoint to the end")
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "flood" / "envoy.md")
    parser.add_argument("--keep-logs", action="store_true", help="keep Envoy's logs (about 1 KB per request)")
    args = parser.parse_args()
    if args.count < 1000:
        parser.error("--count must be at least 1000")

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    key = Ed25519PrivateKey.generate()
    private_bytes = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public_bytes = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ledger.record("private_key", json.dumps({"kty": "OKP", "crv": "Ed25519", "d": b64(private_bytes)}))
    baseline_at = args.baseline_at if args.baseline_at is not None else args.count // 10
    checkpoints = sorted({c for c in (1_000, 10_000, 100_000, 1_000_000, baseline_at, args.count)
                          if 0 < c <= args.count})

    workdir = Path(tempfile.mkdtemp(prefix="txngate-flood-"))
    config = EnvoyConfig(policy=policy(public_bytes, args.max_keys, args.period_seconds), upstream_port=1, wasm=filter_wasm(),
                         direct_response='{"jsonrpc":"2.0","id":1,"result":{"content":[]}}')
    rows = []
    statuses: dict[int, int] = {}
    started = time.monotonic()
    with running_envoy(config, workdir, concurrency=2) as envoy:
        idle = memory(envoy.pid)
        done = mp.Value("q", 0)
        results: mp.Queue = mp.Queue()
        deadline = time.monotonic() + args.max_seconds
        procs = [mp.Process(target=client, args=(w, args.clients, args.count, config.listener_port, private_bytes,
                                                  done, deadline, results), daemon=True)
                 for w in range(args.clients)]
        for p in procs:
            p.start()
        next_checkpoint = 0
        peak = idle["VmRSS"]
        hard_stop = time.monotonic() + args.max_seconds + 120
        while next_checkpoint < len(checkpoints) and time.monotonic() < hard_stop:
            if not any(p.is_alive() for p in procs) and done.value < checkpoints[next_checkpoint]:
                break
            sample = memory(envoy.pid)
            peak = max(peak, sample["VmRSS"])
            if done.value >= checkpoints[next_checkpoint]:
                elapsed = time.monotonic() - started
                rows.append({"requests": done.value, "rss_kib": sample["VmRSS"], "hwm_kib": sample["VmHWM"],
                             "seconds": round(elapsed, 1)})
                print(f"{done.value:>9} requests  RSS {sample['VmRSS'] / 1024:7.1f} MiB  "
                      f"peak {sample['VmHWM'] / 1024:7.1f} MiB  {elapsed:7.1f} s", flush=True)
                next_checkpoint += 1
            time.sleep(0.2)
        for p in procs:
            p.join(timeout=max(1.0, hard_stop - time.monotonic()))
            if p.is_alive():
                p.kill()
        total = 0
        for _ in procs:
            try:
                _, counts, received = results.get(timeout=5)
            except Exception:
                continue
            total += received
            for status, n in counts.items():
                statuses[status] = statuses.get(status, 0) + n
        final = memory(envoy.pid)
        counters = envoy.counters("wasmcustom.txngate")
    elapsed = time.monotonic() - started
    if not args.keep_logs:
        for path in workdir.glob("*"):
            path.unlink(missing_ok=True)
        workdir.rmdir()

    base = next((r for r in rows if r["requests"] >= baseline_at), None)
    growth_mib = (final["VmRSS"] - base["rss_kib"]) / 1024 if base else float("nan")
    summary = {
        "requests": total, "seconds": round(elapsed, 1), "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "idle_rss_kib": idle["VmRSS"], "final_rss_kib": final["VmRSS"], "peak_rss_kib": final["VmHWM"],
        "baseline_at": baseline_at, "growth_after_baseline_mib": round(growth_mib, 1), "checkpoints": rows,
        "cache_entries": CACHE_ENTRIES, "max_keys": args.max_keys, "period_seconds": args.period_seconds, "counters": counters,
    }
    lines = [
        "### Envoy flood: distinct agents and tool names",
        "",
        f"One Envoy 1.40, 2 workers, the txngate filter; {total:,} requests in {elapsed:.0f} s, each with a fresh "
        f"token, its own agent and its own tool name (`token.cache_entries` {CACHE_ENTRIES}, "
        f"`limits.max_keys` {args.max_keys:,}, rate-limit period {args.period_seconds} s). Statuses: "
        + ", ".join(f"{k}: {v:,}" for k, v in sorted(statuses.items())) + ".",
        "",
        "| requests | Envoy RSS (MiB) | peak RSS (MiB) | elapsed (s) |",
        "|---:|---:|---:|---:|",
        f"| 0 (idle) | {idle['VmRSS'] / 1024:.1f} | {idle['VmHWM'] / 1024:.1f} | 0 |",
    ]
    lines += [f"| {r['requests']:,} | {r['rss_kib'] / 1024:.1f} | {r['hwm_kib'] / 1024:.1f} | {r['seconds']} |"
              for r in rows]
    lines += ["", f"Growth from {baseline_at:,} requests to the end: {growth_mib:.1f} MiB.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))

    if total < min(args.count, checkpoints[-1]) and time.monotonic() - started < args.max_seconds:
        print(f"FAIL: only {total} of {args.count} requests answered", file=sys.stderr)
        return 1
    # 200, or 503 `ratelimit.store_full` once every bucket is live: anything else is a bug.
    unexpected = {s: n for s, n in statuses.items() if s not in (200, 503)}
    if unexpected:
        print(f"FAIL: unexpected statuses {unexpected}", file=sys.stderr)
        return 1
    if args.max_growth_mib is not None and not growth_mib <= args.max_growth_mib:
        print(f"FAIL: RSS grew {growth_mib:.1f} MiB > {args.max_growth_mib} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

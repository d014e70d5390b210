"""The demo's proof-of-possession step: the email agent's Txn-Token stolen, then the bound call.

The session's policy, plus `peer_binding: {"mode": "require", "source": "wimse"}` and a `wimse` section trusting
the development Identity Server in examples/keys/demo-identity-server. Three requests, each a `tools/call` of
`send_email` to Bob with the email agent's token:

1. the token alone, as a thief holding it would send it: refused, 400 `wimse.proof_missing`;
2. the token with the thief's own WIMSE proof (the research agent's WIT and a WPT covering this token): the
   proof is valid but proves another workload, refused 403 `delegation.peer_mismatch`;
3. the email agent's bound call: its WIT and a fresh WPT for this request and this token: allowed.

Run by demo.py after the session, on the harness and, with --worker, on the Worker in workerd (the edge
without mTLS, where `peer_binding` could not be enforced before); alone: `python3 demo/proof.py [--worker]`.
Credentials come from `txngate wimse` (development only).
"""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

KEYS = Path(__file__).resolve().parents[1] / "examples" / "keys"
ORIGIN = "https://mcp.example.com"
TIMEOUT_S = 30.0

STEPS = [
    {"say": "the email agent's Txn-Token, stolen, sent without its proof", "proof": None,
     "expect": ("deny", 400, "wimse.proof_missing")},
    {"say": "the stolen token with the thief's own proof (the research agent's WIT and WPT)", "proof": "research",
     "expect": ("deny", 403, "delegation.peer_mismatch")},
    {"say": "the email agent's bound call: its WIT and a fresh WPT for this request", "proof": "mailer",
     "expect": ("allow", 200, "allow")},
]


def policy(session_policy: dict) -> dict:
    jwks = json.loads((KEYS / "demo-identity-server" / "jwks.json").read_text())
    out = dict(session_policy)
    out["peer_binding"] = {"mode": "require", "source": "wimse"}
    out["wimse"] = {"trust_domains": {"trust.example": {"jwks": jwks, "algorithms": ["ES256"]}},
                    "audiences": [ORIGIN], "max_proof_lifetime_seconds": 60}
    return out


def _cli(cli: Path, *args: str) -> str:
    done = subprocess.run([str(cli), *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"txngate {' '.join(args[:2])}: {done.stderr.strip()}")
    return done.stdout.strip()


def proof_headers(cli: Path, who: str, agent: str, token: str, path: str, now: int, n: int) -> list[list[str]]:
    """The WIT of `who`'s workload (`agent`) and a WPT for this request (`jti` unique per request)."""
    wit = _cli(cli, "wimse", "wit", "--key", str(KEYS / "demo-identity-server" / "private.jwk"), "--sub", agent,
               "--workload-key", str(KEYS / f"demo-workload-{who}" / "private.jwk"), "--now", str(now))
    wpt = _cli(cli, "wimse", "wpt", "--key", str(KEYS / f"demo-workload-{who}" / "private.jwk"), "--wit", wit,
               "--aud", ORIGIN + path, "--txn-token", token, "--now", str(now), "--jti", f"demo-{now}-{n}")
    return [["Workload-Identity-Token", wit], ["Workload-Proof-Token", wpt]]


def requests(cli: Path, session, token: str, now: int) -> list[dict]:
    """The three requests as method, path, headers, body."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "send_email", "arguments": {"to": "bob@example.com", "subject": "Offsite",
                                                                      "body": "Bound to its caller."}}})
    out = []
    for n, step in enumerate(STEPS, 1):
        headers = [["content-type", "application/json"], ["accept", "application/json, text/event-stream"],
                   [session.header, token]]
        if step["proof"]:
            headers += proof_headers(cli, step["proof"], session.actor_id(step["proof"]), token,
                                     session.path_prefix, now, n)
        out.append({"method": "POST", "path": session.path_prefix, "headers": headers, "body": body})
    return out


def mailer_token(cli: Path, session, now: int) -> str:
    tok = session.tokens["mailer"]
    argv = ["mint", "--key", str(session.key_path), "--claims", "-", "--ttl", str(session.ttl), "--now", str(now)]
    for actor in tok.get("act", []):
        argv += ["--act", session.actor_id(actor)]
    claims = {**session.claims, **tok.get("claims", {})}
    done = subprocess.run([str(cli), *argv], input=json.dumps(claims), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"txngate mint: {done.stderr.strip()}")
    return done.stdout.strip()


def run_harness(d, session, logdir: Path) -> list[tuple]:
    now = int(time.time())
    token = mailer_token(d.CLI, session, now)
    policy_path = logdir / "policy-wimse.json"
    policy_path.write_text(json.dumps(policy(session.policy), indent=2))
    lines = []
    for req in requests(d.CLI, session, token, now):
        lines.append(json.dumps({**req, "upstream": {"status": 200, "headers": {"content-type": "application/json"},
                                                     "body": '{"jsonrpc":"2.0","id":1,"result":{"content":[]}}'}}))
    path = logdir / "proof-requests.jsonl"
    path.write_text("\n".join(lines) + "\n")
    done = subprocess.run([str(d.HARNESS), "replay", "--wasm", str(d.FILTER_WASM), "--policy", str(policy_path),
                           "--requests", str(path), "--now-ms", str(now * 1000), "--allow-on-headers-stop-iteration"],
                          capture_output=True, text=True, timeout=d.REPLAY_TIMEOUT_S, stdin=subprocess.DEVNULL)
    (logdir / "proof-outcomes.jsonl").write_text(done.stdout)
    records = [json.loads(l) for l in done.stdout.splitlines() if l.strip()]
    if done.returncode != 0 or len(records) != len(lines):
        raise RuntimeError(f"txngate-harness replay exit {done.returncode}: {done.stderr.strip()[-800:]}")
    return [d.read_harness(o).triple() for o in records]


class _Upstream(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"sent"}]}}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("x-demo-upstream", "1")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def run_worker(d, session, logdir: Path) -> list[tuple]:
    """The three requests through the built Worker in workerd, in front of a loopback upstream."""
    # Only the process helpers of tests/e2e (not the MCP client): plain HTTP requests here.
    e2e = str(d.ROOT / "tests" / "e2e")
    if e2e not in __import__("sys").path:
        __import__("sys").path.insert(0, e2e)
    import procs  # noqa: PLC0415
    policy_path = logdir / "policy-wimse.json"
    policy_path.write_text(json.dumps(policy(session.policy), indent=2))
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    out = []
    try:
        env = {"WRANGLER_SEND_METRICS": "false", "WRANGLER_SEND_ERROR_REPORTS": "false",
               "CLOUDFLARE_CF_FETCH_ENABLED": "false"}
        origin = f"http://127.0.0.1:{upstream.server_address[1]}"
        with procs.Proc(["node", str(d.WORKER_HOST), str(policy_path), origin], name="workerd-proof",
                        log_dir=logdir, cwd=d.ROOT, extra_env=env) as host:
            base = host.wait_stdout_line("LISTENING", timeout=60).split()[1].rstrip("/")
            now = int(time.time())
            token = mailer_token(d.CLI, session, now)
            for req in requests(d.CLI, session, token, now):
                r = urllib.request.Request(base + req["path"], data=req["body"].encode(), method="POST",
                                           headers={k: v for k, v in req["headers"]})
                try:
                    with urllib.request.urlopen(r, timeout=TIMEOUT_S) as resp:
                        status, headers, text = resp.status, dict(resp.headers), resp.read().decode()
                except urllib.error.HTTPError as e:
                    status, headers, text = e.code, dict(e.headers), e.read().decode()
                if headers.get("x-demo-upstream") == "1":
                    out.append(("allow", status, "allow"))
                else:
                    out.append(("deny", status, d.reason_from_body(text)))
    finally:
        upstream.shutdown()
        upstream.server_close()
    return out


def run(d, session, hosts: list[str], logs: Path) -> bool:
    """Runs and prints the step on each host that supports it; True when every outcome is as expected."""
    runners = {"harness": run_harness, "worker": run_worker}
    ok = True
    d.say("proof of possession (WIMSE, development credentials from `txngate wimse`): the email agent's token "
          "is bound to its workload")
    for host in [h for h in hosts if h in runners]:
        logdir = logs / host
        logdir.mkdir(parents=True, exist_ok=True)
        try:
            got = runners[host](d, session, logdir)
        except Exception as e:  # noqa: BLE001 - reported, counted as a failure
            d.say(f"ERROR (proof step, {host}): {type(e).__name__}: {e}")
            return False
        title = d.HOST_TITLES[host]
        for step, triple in zip(STEPS, got):
            mark = "✓" if tuple(triple) == step["expect"] else "✗"
            ok &= mark == "✓"
            print(f"  {mark} {title:<18} {step['say']:<82} {' '.join(map(str, triple))}")
    return ok


if __name__ == "__main__":
    # The step alone: `python3 demo/proof.py` (harness), `.venv/bin/python demo/proof.py --worker` (also workerd).
    import sys

    import demo as d

    chosen = ["harness"] + (["worker"] if "--worker" in sys.argv[1:] else [])
    sys.exit(0 if run(d, d.Session(d.DEFAULT_SESSION), chosen, d.LOG_ROOT) else 1)

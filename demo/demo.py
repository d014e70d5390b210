#!/usr/bin/env python3
"""txngate's demo: a scripted agent session replayed through a txngate host, as a table and an audit trail.

    python3 demo/demo.py                       # the built filter in the wasmtime harness (stdlib only)
    .venv/bin/python demo/demo.py --envoy      # also: real Envoy in front of the official MCP SDK server
    .venv/bin/python demo/demo.py --worker     # also: the Worker in workerd (Miniflare) in front of it
    ... [--session FILE] [--no-audit] [--logs DIR]

scripts/demo.sh installs and builds what each mode needs, then runs this. The session (default:
demo/session.json, next to this file) names the policy, the signing key, the user's claims, the tokens
(an `act` chain each, minted with `target/release/txngate mint`) and the steps: an MCP `tools/call` or
`tools/list` sent with one of the tokens, and the verdict, status, reason (and for `tools/list` the tools)
expected. Every request's outcome is checked against the step's expectation; with --envoy or --worker the
harness runs first and every host must also agree with it, request by request.

The harness gets each request as one JSONL line (`txngate-harness replay`, virtual clock, two VMs sharing
the rate-limit store like two Envoy workers). Envoy and the Worker get real MCP traffic: the official MCP
Python client 2.x (tests/e2e/mcp_call.py, run in-process, MCP 2026-07-28: server/discover, then the call with
its Mcp-Method / Mcp-Name routing headers) with a `Txn-Token` header, in front of tests/e2e/mcp_server.py (the
SDK's MCPServer, streamable HTTP, SSE responses). Reasons of refusals come
from the JSON-RPC error the client got; the budget, the agent and the reason of allowed requests from the
host's audit line (matched by the token's SHA-256, the JSON-RPC method and the tool).

Exit status: 0 when every request got the expected verdict, status and reason on every host (and the hosts
agree), 1 when any did not, 2 when the session is invalid or a host could not be started. Every process is
started in its own process group and stopped by PID; everything listens on 127.0.0.1 only; every wait is
bounded. Logs of the hosts go to target/demo/<host>/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SESSION = Path(__file__).resolve().parent / "session.json"
CLI = Path(os.environ.get("TXNGATE_CLI", ROOT / "target" / "release" / "txngate"))
HARNESS = Path(os.environ.get("TXNGATE_HARNESS", ROOT / "target" / "release" / "txngate-harness"))
FILTER_WASM = Path(os.environ.get("TXNGATE_FILTER_WASM", ROOT / "target" / "shipped" / "txngate_filter.wasm"))
WORKER_SCRIPT = Path(os.environ.get("TXNGATE_WORKER_SCRIPT", ROOT / "worker" / "build" / "index.js"))
WORKER_HOST = Path(__file__).resolve().parent / "worker_host.mjs"
LOG_ROOT = ROOT / "target" / "demo"

CALL_TIMEOUT_S = 10.0       # one MCP exchange (server/discover + call) through Envoy or the Worker
AUDIT_WAIT_S = 10.0         # audit lines of the last requests reaching the host's log
REPLAY_TIMEOUT_S = 120.0
MINT_TIMEOUT_S = 30.0
VERDICT_FIELDS = ("verdict", "status", "reason")
REASON_WIDTH = 19
INTERRUPTED: list[int] = []  # signals received (SIGINT, SIGTERM, SIGHUP)
OPENING = ("server/discover", "initialize")  # the first request of an MCP connection (2026-07-28, 2025-11-25)


def rel(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


class SetupError(RuntimeError):
    """The session is invalid or a host could not run it (exit 2)."""


# -------------------------------------------------------------------------------------------------
# The session
# -------------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One request of the session: a step, or one repetition of a repeated step."""
    step: int            # 1-based step number
    rep: int             # 1-based repetition
    token: str           # token name
    list: bool           # tools/list (else tools/call)
    tool: str | None
    arguments: dict
    expect: dict

    @property
    def method(self) -> str:
        return "tools/list" if self.list else "tools/call"


class Session:
    def __init__(self, path: Path):
        self.path = path
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SetupError(f"session {path}: {e}") from None
        self.doc = doc
        where = f"session {path}"
        if doc.get("version") != 1:
            raise SetupError(f"{where}: version must be 1")
        for key in ("policy", "key", "claims", "tokens", "steps"):
            if key not in doc:
                raise SetupError(f"{where}: missing {key!r}")
        self.title = doc.get("title", "")
        self.policy_path = (ROOT / doc["policy"]).resolve()
        self.key_path = (ROOT / doc["key"]).resolve()
        for p in (self.policy_path, self.key_path):
            if not p.is_file():
                raise SetupError(f"{where}: {p} does not exist")
        self.policy = json.loads(self.policy_path.read_text())
        self.ttl = int(doc.get("ttl", 300))
        self.claims = doc["claims"]
        self.agents: dict[str, str] = doc.get("agents", {})
        self.tokens: dict[str, dict] = doc["tokens"]
        self.server_tools: list[str] = doc.get("server_tools", [])
        self.header = self.policy.get("token", {}).get("header", "txn-token")
        self.path_prefix = self.policy.get("mcp", {}).get("path_prefix", "/mcp")
        self.steps: list[dict] = doc["steps"]
        self.calls: list[Call] = []
        for n, step in enumerate(self.steps, 1):
            at = f"{where}: step {n}"
            if step.get("token") not in self.tokens:
                raise SetupError(f"{at}: unknown token {step.get('token')!r}")
            listing = bool(step.get("list"))
            if listing == ("tool" in step):
                raise SetupError(f"{at}: give exactly one of \"tool\" and \"list\": true")
            expect = step.get("expect") or {}
            if expect.get("verdict") not in ("allow", "deny") or not isinstance(expect.get("status"), int) \
                    or not isinstance(expect.get("reason"), str):
                raise SetupError(f"{at}: expect needs verdict (allow/deny), status (int) and reason")
            repeat = int(step.get("repeat", 1))
            if not 1 <= repeat <= 100:
                raise SetupError(f"{at}: repeat must be 1..100")
            for rep in range(1, repeat + 1):
                self.calls.append(Call(n, rep, step["token"], listing, step.get("tool"), step.get("arguments", {}), expect))
        for name, tok in self.tokens.items():
            for actor in tok.get("act", []):
                if actor not in self.agents and not actor.startswith("spiffe://"):
                    raise SetupError(f"{where}: token {name}: actor {actor!r} is neither in agents nor a SPIFFE ID")

    def actor_id(self, actor: str) -> str:
        return self.agents.get(actor, actor)

    def short(self, agent_id: str | None) -> str:
        if not agent_id:
            return "-"
        for name, full in self.agents.items():
            if full == agent_id:
                return name
        return agent_id.rsplit("/", 1)[-1]

    def mint(self, now: int | None) -> dict[str, str]:
        """Every token of the session, minted with `txngate mint` (--now for a virtual clock)."""
        if not CLI.is_file():
            raise SetupError(f"{CLI} is missing (cargo build --release --bin txngate)")
        out = {}
        for name, tok in self.tokens.items():
            argv = [str(CLI), "mint", "--key", str(self.key_path), "--claims", "-", "--ttl", str(self.ttl)]
            for actor in tok.get("act", []):
                argv += ["--act", self.actor_id(actor)]
            if tok.get("header"):
                argv += ["--header", json.dumps(tok["header"])]
            if now is not None:
                argv += ["--now", str(now)]
            claims = {**self.claims, **tok.get("claims", {})}
            done = subprocess.run(argv, input=json.dumps(claims), capture_output=True, text=True,
                                  timeout=MINT_TIMEOUT_S)
            if done.returncode != 0:
                raise SetupError(f"txngate mint ({name}) failed: {done.stderr.strip()}")
            out[name] = done.stdout.strip()
        return out

    def rate_limits(self) -> dict[str, dict]:
        return {name: rule["rate_limit"] for name, rule in self.policy.get("tools", {}).items()
                if isinstance(rule, dict) and "rate_limit" in rule}


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def rpc_body(call: Call, rpc_id: int) -> str:
    if call.list:
        return json.dumps({"jsonrpc": "2.0", "id": rpc_id, "method": "tools/list"})
    return json.dumps({"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call",
                       "params": {"name": call.tool, "arguments": call.arguments}})


def reason_from_body(body: Any) -> str | None:
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("data"), dict):
            reason = error["data"].get("reason")
            return reason if isinstance(reason, str) else None
        if isinstance(body.get("reason"), str):
            return body["reason"]
    return None


def sse_json(text: str) -> Any:
    """The JSON of a JSON body, or of the first `data:` line of an SSE body."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in text.splitlines():
        if line.startswith("data:"):
            try:
                return json.loads(line[5:].strip())
            except ValueError:
                return None
    return None


def audit_in(line: str) -> tuple[dict, str] | None:
    """The audit record in a log line (a JSON object with a verdict and a reason), with its JSON text."""
    start = line.find("{")
    if start < 0:
        return None
    text = line[start:].strip()
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if isinstance(record, dict) and "verdict" in record and "reason" in record:
        return record, text
    return None


# -------------------------------------------------------------------------------------------------
# Outcomes
# -------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    verdict: str | None = None
    status: int | None = None
    reason: str | None = None
    agent: str | None = None            # the acting agent (audit)
    limit: dict | None = None           # the audit's rate-limit state
    retry_after: str | None = None
    tools: list[str] | None = None      # tools/list as the caller saw it
    upstream_agent: str | None = None   # x-txngate-agent as the upstream saw it
    detail: str | None = None           # the audit's detail (why a refusal)
    audit: str | None = None            # the audit line, as logged
    problems: list[str] = field(default_factory=list)
    hint: str | None = None             # printed when the request is not as expected

    def triple(self) -> tuple:
        return (self.verdict, self.status, self.reason)

    def use_audit(self, record: dict | None, text: str | None) -> None:
        if record is None:
            self.problems.append("no audit line for this request")
            return
        self.audit = text
        self.agent = record.get("agent")
        self.limit = record.get("limit")
        self.detail = record.get("detail")
        if self.verdict == "allow":
            self.reason = record.get("reason")
        elif record.get("reason") != self.reason:
            self.problems.append(f"the audit line says {record.get('reason')!r}, the reply {self.reason!r}")
        if record.get("verdict") != self.verdict:
            self.problems.append(f"the audit line says {record.get('verdict')!r}, the client saw {self.verdict!r}")


def check(call: Call, out: Outcome) -> list[str]:
    """Differences from the step's expectation (and anything wrong with the outcome itself)."""
    bad = list(out.problems)
    want = tuple(call.expect[k] for k in VERDICT_FIELDS)
    if out.triple() != want:
        bad.append("expected " + " ".join(map(str, want)) + ", got " + " ".join(map(str, out.triple())))
    if call.list and out.verdict == "allow" and "tools" in call.expect:
        if sorted(out.tools or []) != sorted(call.expect["tools"]):
            bad.append(f"expected tools {sorted(call.expect['tools'])}, got {sorted(out.tools or [])}")
    return bad


# -------------------------------------------------------------------------------------------------
# Host: the filter in the wasmtime harness
# -------------------------------------------------------------------------------------------------


def server_tools_result(session: Session, rpc_id: int) -> str:
    """What tests/e2e/mcp_server.py answers to tools/list (names; descriptions and schemas abridged), as SSE."""
    tools = [{"name": n, "description": f"{n} (demo)", "inputSchema": {"type": "object"}} for n in session.server_tools]
    return "event: message\ndata: " + json.dumps({"jsonrpc": "2.0", "id": rpc_id, "result": {"tools": tools}}) + "\n\n"


def server_call_result(call: Call, rpc_id: int) -> str:
    text = json.dumps({"result": f"{call.tool} done"})
    return "event: message\ndata: " + json.dumps({"jsonrpc": "2.0", "id": rpc_id, "result": {
        "content": [{"type": "text", "text": text}], "isError": False}}) + "\n\n"


def run_harness(session: Session, logdir: Path) -> tuple[list[Outcome], str, str]:
    for path, what in ((HARNESS, "cargo build --release -p txngate-harness"),
                       (FILTER_WASM, "scripts/build-filter.sh")):
        if not path.is_file():
            raise SetupError(f"{path} is missing ({what})")
    now = int(time.time())
    tokens = session.mint(now)
    lines = []
    for i, call in enumerate(session.calls, 1):
        line: dict[str, Any] = {
            "method": "POST", "path": session.path_prefix,
            "headers": [["content-type", "application/json"], ["accept", "application/json, text/event-stream"],
                        [session.header, tokens[call.token]]],
            "body": rpc_body(call, i),
            "upstream": {"status": 200, "headers": {"content-type": "text/event-stream"},
                         "body": server_tools_result(session, i) if call.list else server_call_result(call, i)},
        }
        lines.append(json.dumps(line))
    requests = logdir / "requests.jsonl"
    requests.write_text("\n".join(lines) + "\n")
    argv = [str(HARNESS), "replay", "--wasm", str(FILTER_WASM), "--policy", str(session.policy_path),
            "--requests", str(requests), "--now-ms", str(now * 1000), "--vms", "2",
            "--allow-on-headers-stop-iteration"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=REPLAY_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, env={**os.environ, "RUST_BACKTRACE": "0"})
    except subprocess.TimeoutExpired:
        raise SetupError(f"txngate-harness replay did not finish within {REPLAY_TIMEOUT_S:.0f} s") from None
    (logdir / "outcomes.jsonl").write_text(done.stdout)
    (logdir / "replay.stderr").write_text(done.stderr)
    records = [json.loads(l) for l in done.stdout.splitlines() if l.strip()]
    if done.returncode != 0 or len(records) != len(lines):
        raise SetupError(f"txngate-harness replay exit {done.returncode}, {len(records)}/{len(lines)} outcomes:\n"
                         + done.stderr.strip()[-1500:])
    outcomes = [read_harness(o) for o in records]
    label = (f"the filter {rel(FILTER_WASM)} in the wasmtime harness (txngate-harness replay, proxy-wasm ABI "
             "0.2.1), 2 VMs sharing one rate-limit store, virtual clock")
    return outcomes, label, f"every outcome in full (forwarded headers, replies, logs): {rel(logdir / 'outcomes.jsonl')}"



def read_harness(o: dict) -> Outcome:
    out = Outcome()
    for flag, what in (("trapped", "trapped"), ("stalled", "stalled"), ("vm_failed", "VM failed")):
        if o.get(flag):
            out.problems.append(f"{what}: {o.get(flag) if flag == 'trapped' else o.get('stall_reason') or ''}")
    audits = [a for a in (audit_in(l) for l in o.get("logs") or []) if a]
    if o.get("local_reply") is not None:
        reply = o["local_reply"]
        out.verdict, out.status, out.reason = "deny", reply["status"], reason_from_body(reply["body"])
        headers = {k.lower(): v for k, v in reply.get("headers") or []}
        out.retry_after = headers.get("retry-after")
    elif o.get("forwarded") is not None:
        out.verdict, out.status = "allow", o.get("status")
        sent = {k.lower(): v for k, v in o["forwarded"].get("headers") or []}
        out.upstream_agent = sent.get("x-txngate-agent")
        resp = o.get("response") or {}
        doc = sse_json(resp.get("body") or "")
        if isinstance(doc, dict) and isinstance(doc.get("result"), dict) and "tools" in doc["result"]:
            out.tools = [t.get("name") for t in doc["result"]["tools"]]
    else:
        out.problems.append("neither a local reply nor a forwarded request")
    record, text = audits[-1] if audits else (None, None)
    out.use_audit(record, text)
    return out


# -------------------------------------------------------------------------------------------------
# Hosts with real MCP traffic: Envoy, the Worker
# -------------------------------------------------------------------------------------------------


def e2e_imports():
    """tests/e2e helpers (need the project venv: httpx, mcp)."""
    for p in (ROOT / "tests" / "e2e", ROOT / "tests" / "e2e" / "envoy"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    try:
        import anyio  # noqa: F401
        import mcp  # noqa: F401
    except ImportError as e:
        raise SetupError(f"{e}: run with .venv/bin/python after scripts/bootstrap.sh --python") from None
    import mcp_call
    import procs
    return procs, mcp_call


@dataclass
class Exchange:
    call: Call
    token: str
    out: dict          # mcp_call.py's JSON line
    started: float     # time.monotonic() when the exchange began


def drive(session: Session, url: str, tokens: dict[str, str], logdir: Path) -> list[Exchange]:
    """Every call of the session through the official MCP client, in order, one MCP session each; what the
    client printed and returned goes to LOGDIR/client.log."""
    import contextlib

    import anyio

    _, mcp_call = e2e_imports()
    done: list[Exchange] = []
    with open(logdir / "client.log", "w") as client_log:
        for call in session.calls:
            ns = mcp_call.parser().parse_args(["--url", url, "--timeout", str(CALL_TIMEOUT_S)])
            ns.header = [(session.header, tokens[call.token])]
            ns.list = call.list
            ns.tool, ns.args = (None, {}) if call.list else (call.tool, call.arguments)
            t0 = time.monotonic()
            client_log.write(f"--- step {call.step}.{call.rep} {call.method} {call.tool or ''} as {call.token}\n")
            client_log.flush()
            with contextlib.redirect_stderr(client_log):
                out = anyio.run(mcp_call.run, ns)
            if INTERRUPTED:  # the SDK's task groups may have wrapped (and mcp_call.py caught) the interrupt
                raise KeyboardInterrupt(f"signal {INTERRUPTED[0]}")
            client_log.write(json.dumps(out, sort_keys=True) + "\n")
            done.append(Exchange(call, tokens[call.token], out, t0))
    return done


def client_outcome(ex: Exchange) -> Outcome:
    out = Outcome()
    res, err = ex.out.get("result"), ex.out.get("error")
    if ex.out.get("ok") or (err and err.get("code") == "tool_error"):
        out.verdict, out.status = "allow", 200
        out.tools = ex.out.get("tools")
        structured = (res or {}).get("structured") or {}
        out.upstream_agent = structured.get("x-txngate-agent") if isinstance(structured, dict) else None
        if err:
            out.problems.append(f"the tool failed: {err.get('message')}")
    else:
        err = err or {}
        out.verdict, out.status = "deny", err.get("status")
        out.reason = reason_from_body(err.get("body"))
        out.retry_after = (err.get("headers") or {}).get("retry-after")
        if out.status in (None, 200) or out.reason is None:
            out.problems.append(f"no refusal from the gate: {err.get('code')} {err.get('message')!r} at {err.get('stage')}")
    return out


def match_audit(session: Session, exchanges: list[Exchange], outcomes: list[Outcome],
                read_log: Callable[[], list[str]]) -> int:
    """Gives each exchange the audit line of its decisive request (the tools/call or tools/list, or the
    opening request a refused token stopped). Returns how many other audit lines the log holds.

    Every exchange is one MCP 2026-07-28 connection: server/discover (and, when discover is refused, the
    client's fallback initialize), the call (after a tools/call the SDK also lists the tools, to validate the
    result against the tool's output schema). Exchanges run one after the other, so a token's audit lines, in
    log order, split at each opening request (a discover; an initialize not following its discover) into one
    segment per exchange that used the token; the decisive line is the segment's first line with the call's JSON-RPC
    method (and tool); a refusal at the filter's header stage (body-holding mode) has no JSON-RPC method, and counts
    as the opening request's. A token refused before it is verified is logged without its hash: such an exchange
    takes the next unused refusal without a hash and with the status the client got."""
    def assign(records: list[tuple[dict, str]]) -> tuple[list[int | None], set[int]]:
        segments: dict[str, list[list[int]]] = {}
        for i, (r, _) in enumerate(records):
            sha = r.get("token_sha256")
            if sha is None:
                continue
            method = r.get("rpc_method")
            current = segments.get(sha, [[]])[-1]
            fallback = method == "initialize" and current and all(
                records[j][0].get("rpc_method") == "server/discover" for j in current)
            if (method in OPENING and not fallback) or sha not in segments:
                segments.setdefault(sha, []).append([])
            segments[sha][-1].append(i)
        taken: dict[str, int] = {}
        used: set[int] = set()
        found: list[int | None] = []
        for ex in exchanges:
            sha = token_sha256(ex.token)
            err = ex.out.get("error") or {}
            k = taken.get(sha, 0)
            segment = segments.get(sha, [])[k] if k < len(segments.get(sha, [])) else None
            hit = None
            if err.get("stage") == "initialize" and segment is None:
                hit = next((i for i, (r, _) in enumerate(records) if i not in used and r.get("token_sha256") is None
                            and r.get("verdict") == "deny" and r.get("status") == err.get("status")), None)
            elif segment is not None:
                taken[sha] = k + 1
                opening = err.get("stage") == "initialize"
                # A refusal at Envoy's header stage (body-holding mode) is decided before the body is read, so
                # its audit line has no rpc_method.
                hit = next((i for i in segment if (records[i][0].get("rpc_method") in (*OPENING, None) if opening else
                                                   records[i][0].get("rpc_method") == ex.call.method
                                                   and (ex.call.list or records[i][0].get("tool") == ex.call.tool))),
                           None)
            if hit is not None:
                used.add(hit)
            found.append(hit)
        return found, used

    deadline = time.monotonic() + AUDIT_WAIT_S
    while True:
        records = [a for a in (audit_in(l) for l in read_log()) if a]
        found, used = assign(records)
        if all(i is not None for i in found) or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    for out, i in zip(outcomes, found):
        out.use_audit(*(records[i] if i is not None else (None, None)))
    return len(records) - len(used)


def rate_hints(session: Session, exchanges: list[Exchange], outcomes: list[Outcome]) -> None:
    """On real clocks a rate-limit step holds only if the calls sharing the bucket are quick enough: say how
    long they took, for the case they were not."""
    limits = session.rate_limits()
    for j, ex in enumerate(exchanges):
        rule = limits.get(ex.call.tool or "")
        if rule is None or "ratelimit" not in ex.call.expect["reason"] + (outcomes[j].reason or ""):
            continue
        first = next((i for i, e in enumerate(exchanges[:j]) if e.token == ex.token and e.call.tool == ex.call.tool
                      and outcomes[i].verdict == "allow"), j)
        refill = rule["period_seconds"] / rule["limit"]
        outcomes[j].hint = (f"the allowed {ex.call.tool} calls from step {exchanges[first].call.step} to here took "
                            f"{ex.started - exchanges[first].started:.1f} s on this host's real clock; the bucket "
                            f"gets one call back every {refill:g} s")


def mcp_server_proc(procs, logdir: Path):
    server = procs.mcp_server(json_response=False, name="mcp_server", log_dir=logdir)
    server.start()
    try:
        port = server.wait_listening(timeout=30)
        server.wait_port(port, timeout=30)
    except Exception:
        server.stop()
        raise
    return server, port


def run_envoy(session: Session, logdir: Path) -> tuple[list[Outcome], str, str]:
    procs, _ = e2e_imports()
    from envoy_harness import ENVOY_BIN, EnvoyConfig, running_envoy

    if not ENVOY_BIN.exists():
        raise SetupError(f"{ENVOY_BIN} is missing (scripts/bootstrap.sh --python)")
    if not FILTER_WASM.is_file():
        raise SetupError(f"{FILTER_WASM} is missing")
    version = subprocess.run([str(ENVOY_BIN), "--version"], capture_output=True, text=True, timeout=30).stdout
    version = next((w for w in version.split() if w.count("/") >= 2 and w[0].isalnum()), "").split("/")[1:2]
    say("starting the MCP server (tests/e2e/mcp_server.py, official MCP SDK) and Envoy on 127.0.0.1...")
    server, port = mcp_server_proc(procs, logdir)
    try:
        config = EnvoyConfig(policy=session.policy_path.read_text(), upstream_port=port, wasm=FILTER_WASM)
        with running_envoy(config, logdir, name="envoy", concurrency=2) as envoy:
            say(f"Envoy {version[0] if version else ''} pid {envoy.pid} on {config.url} -> MCP server pid {server.pid} "
                f"on 127.0.0.1:{port}")
            tokens = session.mint(None)
            exchanges = drive(session, config.url, tokens, logdir)
            outcomes = [client_outcome(ex) for ex in exchanges]
            extra = match_audit(session, exchanges, outcomes,
                                lambda: [l for l in envoy.wasm_logs() if l.startswith("{")])
            rate_hints(session, exchanges, outcomes)
    finally:
        server.stop()
    label = (f"Envoy {version[0] if version else ''} (.venv/bin/envoy, 2 workers, the filter in V8) in front of the MCP "
             "server tests/e2e/mcp_server.py; client: the official MCP SDK (tests/e2e/mcp_call.py)")
    return outcomes, label, handshake_note(extra, logdir / "envoy.stderr")


def run_worker(session: Session, logdir: Path) -> tuple[list[Outcome], str, str]:
    procs, _ = e2e_imports()
    if not WORKER_SCRIPT.is_file():
        raise SetupError(f"{WORKER_SCRIPT} is missing (scripts/demo.sh --worker builds it)")
    if not (ROOT / "node_modules" / "miniflare").is_dir():
        raise SetupError("node_modules/miniflare is missing (scripts/bootstrap.sh --node)")
    newest = max((p.stat().st_mtime for d in ("worker/src", "shared/src") for p in (ROOT / d).rglob("*.rs")), default=0)
    if newest > WORKER_SCRIPT.stat().st_mtime:
        say("note: worker/build is older than worker/src or shared/src (scripts/test-worker.sh rebuilds it)")
    say("starting the MCP server (tests/e2e/mcp_server.py, official MCP SDK) and the Worker in workerd...")
    server, port = mcp_server_proc(procs, logdir)
    try:
        env = {"WRANGLER_SEND_METRICS": "false", "WRANGLER_SEND_ERROR_REPORTS": "false",
               "CLOUDFLARE_CF_FETCH_ENABLED": "false"}
        with procs.Proc(["node", str(WORKER_HOST), str(session.policy_path), f"http://127.0.0.1:{port}"],
                        name="workerd", log_dir=logdir, cwd=ROOT, extra_env=env) as host:
            url = host.wait_stdout_line("LISTENING", timeout=60).split()[1].rstrip("/") + session.path_prefix
            say(f"workerd (Miniflare, node pid {host.pid}) on {url} -> MCP server pid {server.pid} on 127.0.0.1:{port}")
            tokens = session.mint(None)
            exchanges = drive(session, url, tokens, logdir)
            outcomes = [client_outcome(ex) for ex in exchanges]
            extra = match_audit(session, exchanges, outcomes,
                                lambda: [l[4:] for l in host.stdout_text().splitlines() if l.startswith("LOG ")])
            rate_hints(session, exchanges, outcomes)
    finally:
        server.stop()
    label = ("the Worker (worker/build) in workerd via Miniflare, rate limits in a Durable Object, in front of the MCP "
             "server tests/e2e/mcp_server.py; client: the official MCP SDK (tests/e2e/mcp_call.py)")
    return outcomes, label, handshake_note(extra, logdir / "workerd.stdout")


def handshake_note(extra: int, log: Path) -> str:
    return (f"{extra} more in {rel(log)}: each exchange's opening request (server/discover) and "
            "the tools/list the SDK sends after a tools/call, decided and audited like every request")


HOSTS = {"harness": run_harness, "envoy": run_envoy, "worker": run_worker}
HOST_TITLES = {"harness": "wasmtime harness", "envoy": "Envoy", "worker": "Worker (workerd)"}


# -------------------------------------------------------------------------------------------------
# Printing
# -------------------------------------------------------------------------------------------------


def budget_text(limit: dict | None) -> str:
    if not limit:
        return ""
    return f"{limit.get('remaining')}/{limit.get('burst', limit.get('limit'))}"


def note_text(session: Session, call: Call, out: Outcome) -> str:
    if out.verdict == "allow":
        if call.list:
            return "sees " + ", ".join(sorted(out.tools or []))
        return f"upstream got x-txngate-agent: {session.short(out.upstream_agent)}"
    if out.retry_after is not None:
        return f"Retry-After: {out.retry_after} s"
    if out.detail:
        return out.detail if len(out.detail) <= 70 else out.detail[:67] + "..."
    return ""


def print_intro(session: Session) -> None:
    c = session.claims
    print()
    print(f"txngate demo: {session.title}")
    print(f"  claims  sub {c.get('sub')}; scope \"{c.get('scope')}\"; tctx {json.dumps(c.get('tctx', {}))}")
    print(f"  tokens  one per act chain, minted with txngate mint --key {session.doc['key']}; policy {session.doc['policy']}")
    for name, tok in session.tokens.items():
        chain = " <- ".join(tok.get("act", [])) or "(no act)"
        print(f"    {name:<13} act: {chain:<26} {tok.get('about', '')}")
    print("  agents  " + ", ".join(f"{k} = {v}" for k, v in session.agents.items()))
    print(f"  steps   ({rel(session.path)})")
    for n, step in enumerate(session.steps, 1):
        print(f"    {n:>2}. {step.get('say', '')}")


def print_table(session: Session, label: str, outcomes: list[Outcome], bad: dict[int, list[str]]) -> None:
    print()
    print(f"== {label}")
    print()
    head = f"{'#':>3}  {'':2}{'agent':<13} {'call':<18} {'verdict':<8} {'status':<6} {'reason':<{REASON_WIDTH}} {'budget':<8} note"
    print(head)
    print("-" * max(len(head) + 40, 118))
    i = 0
    for n, step in enumerate(session.steps, 1):
        group = []
        while i < len(session.calls) and session.calls[i].step == n:
            group.append(i)
            i += 1
        first, last = outcomes[group[0]], outcomes[group[-1]]
        call = session.calls[group[0]]
        ok = not any(bad.get(j) for j in group)
        # A refused token names no verified agent: show which of the session's tokens was sent.
        agent = session.short(first.agent) if first.agent else f"({call.token})"
        what = "tools/list" if call.list else call.tool
        if len(group) > 1:
            what += f" x{len(group)}"
        triples = {outcomes[j].triple() for j in group}
        verdict, status, reason = first.triple() if len(triples) == 1 else ("mixed", "-", "-")
        if len(group) > 1 and first.limit and last.limit:
            budget = f"{first.limit.get('remaining')}..{budget_text(last.limit)}"
        else:
            budget = budget_text(first.limit)
        note = note_text(session, call, last)
        mark = "✓" if ok else "✗"
        print(f"{n:>3}  {mark:<2}{agent:<13} {what:<18} {verdict or '-':<8} {status if status is not None else '-'!s:<6} "
              f"{reason or '-':<{REASON_WIDTH}} {budget:<8} {note}")
        for j in group:
            rep = f" (request {session.calls[j].rep})" if len(group) > 1 else ""
            for problem in bad.get(j, []):
                print(f"{'':7}✗ {problem}{rep}")
            if bad.get(j) and outcomes[j].hint:
                print(f"{'':9}{outcomes[j].hint}")
    limits = session.rate_limits()
    if limits:
        parts = [f"{tool} {rl['limit']} per {rl['period_seconds']} s per {rl.get('key', 'agent')}"
                 + (f", burst {rl['burst']}" if "burst" in rl else "") for tool, rl in limits.items()]
        print(f"budget: calls left in the caller's bucket after the call ({'; '.join(parts)})")


def print_audit(outcomes: list[Outcome], where: str, note: str) -> None:
    print()
    print(f"audit lines ({where}; one JSON record per decision, the token only as its SHA-256):")
    for out in outcomes:
        if out.audit:
            print(out.audit)
    print(f"({note})")


# -------------------------------------------------------------------------------------------------
# Main
# -------------------------------------------------------------------------------------------------


AUDIT_WHERE = {"harness": "the filter's log in the harness", "envoy": "the filter's log in Envoy's stderr",
               "worker": "the Worker's console.log in workerd"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envoy", action="store_true", help="also run the session through real Envoy")
    parser.add_argument("--worker", action="store_true", help="also run it through the Worker in workerd")
    parser.add_argument("--session", type=Path, default=DEFAULT_SESSION, help="session file (default: demo/session.json)")
    parser.add_argument("--no-audit", action="store_true", help="do not print the audit lines")
    parser.add_argument("--logs", type=Path, default=LOG_ROOT, help="where the hosts' logs go (default: target/demo)")
    args = parser.parse_args(argv)

    # Ctrl-C, SIGTERM and SIGHUP unwind (KeyboardInterrupt), so every process started here is stopped by its PID.
    def stop(signum, _frame):
        INTERRUPTED.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)

    try:
        session = Session(args.session.resolve())
    except SetupError as e:
        say(f"ERROR: {e}")
        return 2
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # a session of the wrong shape
        say(f"ERROR: session {args.session}: {type(e).__name__}: {e}")
        return 2
    hosts = ["harness"] + [h for h in ("envoy", "worker") if getattr(args, h)]
    print_intro(session)
    results: dict[str, list[Outcome]] = {}
    failed = False
    for host in hosts:
        logdir = args.logs / host
        logdir.mkdir(parents=True, exist_ok=True)
        for old in logdir.iterdir():
            if old.is_file():
                old.unlink()
        t0 = time.monotonic()
        try:
            outcomes, label, note = HOSTS[host](session, logdir)
        except SetupError as e:
            say(f"ERROR ({host}): {e}")
            return 2
        except KeyboardInterrupt:
            say("interrupted; processes stopped")
            return 130
        except Exception as e:  # noqa: BLE001 - a host that cannot run the session
            say(f"ERROR ({host}): {type(e).__name__}: {e}")
            say(f"logs: {rel(logdir)}")
            return 2
        seconds = time.monotonic() - t0
        results[host] = outcomes
        bad = {j: check(call, out) for j, (call, out) in enumerate(zip(session.calls, outcomes))}
        bad = {j: b for j, b in bad.items() if b}
        if host != "harness":
            base = results["harness"]
            for j, (a, b) in enumerate(zip(base, outcomes)):
                if a.triple() != b.triple():
                    bad.setdefault(j, []).append("the harness decided " + " ".join(map(str, a.triple())))
        # The harness is printed on its own; with --envoy / --worker it is the reference they must match.
        if host != "harness" or len(hosts) == 1:
            print_table(session, label, outcomes, bad)
            if not args.no_audit:
                print_audit(outcomes, AUDIT_WHERE[host], note)
            print()
        n = len(session.calls)
        if bad:
            failed = True
            say(f"{HOST_TITLES[host]}: {len(bad)} of {n} requests NOT as expected ({seconds:.1f} s); logs: {rel(logdir)}")
            if host == "harness" and len(hosts) > 1:
                print_table(session, label, outcomes, bad)
        elif host == "harness":
            say(f"wasmtime harness: all {n} requests of {len(session.steps)} steps got the expected verdict, status and "
                f"reason ({seconds:.1f} s)")
        else:
            say(f"{HOST_TITLES[host]}: all {n} requests as expected, and the same verdict, status and reason as the "
                f"harness run, request by request ({seconds:.1f} s)")
    # The proof-of-possession step (demo/proof.py): a stolen token refused, the bound call accepted.
    import proof  # noqa: PLC0415 - next to this file
    try:
        if not proof.run(sys.modules[__name__], session, hosts, args.logs):
            failed = True
    except KeyboardInterrupt:
        say("interrupted; processes stopped")
        return 130
    if failed:
        say("FAILED: some verdicts differ from the session's (marked ✗ above)")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `| head`
        sys.exit(1)

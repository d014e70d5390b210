"""Host adapters: one class per place txngate runs. Each turns a case (and a token minted for the host's
clock) into that host's decision.

    host.prepare()                 -> None when usable, else why not (build error, missing binary, ...)
    host.cannot_express(case)      -> None, or why this host cannot run the case (e.g. no mTLS peer)
    host.start(policy_path)        one host instance (process, VM, Envoy, workerd) per policy
    host.now()                     the host's clock (Unix seconds) that tokens are minted against
    host.decide(case, token)       -> Outcome of the case's last request: .triple() is (verdict, status, reason)
    host.decide_many(cases, mint)  all cases of the started policy; batch hosts override it
    host.stop()
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from vectors import (
    ROOT, Case, Minter, Outcome, allowed_status, audit_records, check_tools, load_policy,
    policy_accepts_proof_for_peer, reason_from_body, upstream_response_text, wire_request,
)

CLI = ROOT / "target" / "release" / "txngate"
HARNESS = ROOT / "target" / "release" / "txngate-harness"
# The shipped (wasm-opt'ed) filter, written by scripts/build-filter.sh where cargo never writes.
FILTER_WASM = ROOT / "target" / "shipped" / "txngate_filter.wasm"
BUILD_TIMEOUT = 1800


def cargo() -> str:
    return shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")


def cargo_build(args: list[str]) -> str | None:
    """Runs `cargo build ARGS`; None on success, else the end of its output."""
    try:
        done = subprocess.run([cargo(), "build", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cargo build {' '.join(args)}: {e}"
    if done.returncode == 0:
        return None
    lines = [l for l in done.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error")]
    tail = "\n".join((errors[:5] + ["..."] + lines[-8:]) if errors else lines[-12:])
    return f"cargo build {' '.join(args)} failed (exit {done.returncode}):\n{tail}"


def build_shipped_filter() -> str | None:
    """Runs scripts/build-filter.sh (a no-op when the shipped filter is current); None on success."""
    try:
        done = subprocess.run([str(ROOT / "scripts" / "build-filter.sh")], cwd=ROOT, capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"scripts/build-filter.sh: {e}"
    if done.returncode == 0:
        return None
    return f"scripts/build-filter.sh failed (exit {done.returncode}):\n{done.stderr[-1500:]}"


def ensure_cli(build: bool = True) -> str | None:
    override = os.environ.get("TXNGATE_CLI")
    if override:
        return None if Path(override).is_file() else f"TXNGATE_CLI={override} does not exist"
    if build:
        return cargo_build(["--release", "--bin", "txngate"])
    return None if CLI.is_file() else f"{CLI} is missing (build: cargo build --release --bin txngate)"


def cli_path() -> Path:
    return Path(os.environ.get("TXNGATE_CLI", CLI))


class Host:
    name = "?"
    #: Whether the host can present an mTLS peer identity.
    can_peer = True
    #: Whether allowed requests reach an upstream whose response the host renders (tools/list filtering).
    has_upstream = True

    def prepare(self) -> str | None:
        return None

    def cannot_express(self, case: Case) -> str | None:
        if case.peer is not None and not self.can_peer and not policy_accepts_proof_for_peer(load_policy(case.policy)):
            return "the host cannot present an mTLS peer"
        return None

    def peer_proof(self, case: Case) -> str | None:
        """A host without mTLS presents the case's peer as a WIMSE proof (where the policy accepts one)."""
        return case.peer if case.peer is not None and not self.can_peer else None

    def start(self, policy_path: Path) -> None:
        self.policy_path = policy_path
        self.policy = json.loads(policy_path.read_text())

    def now(self) -> int:
        return int(time.time())

    def decide(self, case: Case, token: str | None) -> Outcome:
        raise NotImplementedError

    def decide_many(self, cases: list[Case], minter: Minter) -> dict[str, Outcome]:
        """Mints each token right before its case runs (real clocks move)."""
        out = {}
        for case in cases:
            try:
                token = minter.token(case.token, self.now(), case, self.peer_proof(case))
            except Exception as e:  # noqa: BLE001 - reported per case
                out[case.id] = Outcome.failure(f"minting: {e}")
                continue
            try:
                out[case.id] = self.decide(case, token)
            except Exception as e:  # noqa: BLE001
                out[case.id] = Outcome.failure(f"{type(e).__name__}: {e}")
        return out

    def stop(self) -> None:
        pass

    def close(self) -> None:
        """After the last policy (shared helpers such as an upstream server)."""


class Pending(Host):
    """A host whose adapter is not written yet: every case is reported as unavailable, never passed."""

    def __init__(self, name: str, why: str = "adapter pending"):
        self.name, self.why = name, why

    def prepare(self) -> str | None:
        return self.why


# -------------------------------------------------------------------------------------------------
# native: the CLI
# -------------------------------------------------------------------------------------------------


class Native(Host):
    """`txngate check`: the core with the CLI's in-memory store, one process per case (`--repeat` for
    prior calls), the clock fixed with `--now`."""

    name = "native"
    has_upstream = False

    def __init__(self, build: bool = True):
        self.build = build

    def prepare(self) -> str | None:
        return ensure_cli(self.build)

    def start(self, policy_path: Path) -> None:
        super().start(policy_path)
        self.clock = int(time.time())
        self.tmp = Path(tempfile.mkdtemp(prefix="txngate-conformance-native-"))

    def now(self) -> int:
        return self.clock

    def decide(self, case: Case, token: str | None) -> Outcome:
        wire = wire_request(case, token, self.policy)
        argv = [str(cli_path()), "check", "--policy", str(self.policy_path), "--method", wire.method, "--path", wire.path,
                "--now", str(self.clock), "--repeat", str(case.prior_calls + 1)]
        for name, value in wire.headers:
            argv += ["--header", f"{name}: {value}"]
        if wire.body is not None:
            body_file = self.tmp / f"{case.id}.body"
            body_file.write_bytes(wire.body)
            argv += ["--body-file", str(body_file)]
        if wire.peer is not None:
            argv += ["--peer", wire.peer]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        lines = [l for l in done.stdout.splitlines() if l.strip()]
        if done.returncode not in (0, 3) or len(lines) != case.prior_calls + 1:
            return Outcome.failure(f"txngate check exit {done.returncode}: {done.stderr.strip()[:500]}")
        decision = json.loads(lines[-1])["decision"]
        out = Outcome(decision["verdict"], decision["status"], decision["reason"])
        out.body = None if decision.get("body") is None else json.dumps(decision["body"])
        if (done.returncode == 0) != (decision["verdict"] == "allow"):
            out.detail = f"exit code {done.returncode} disagrees with verdict {decision['verdict']}"
            out.error = True
        if case.response is not None:
            out.response_unchecked = "the CLI has no upstream response to filter"
        return out

    def decide_many(self, cases: list[Case], minter: Minter) -> dict[str, Outcome]:
        # Independent processes: run a few at a time.
        from concurrent.futures import ThreadPoolExecutor

        def one(case: Case) -> tuple[str, Outcome]:
            return case.id, Host.decide_many(self, [case], minter)[case.id]

        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
            return dict(pool.map(one, cases))

    def stop(self) -> None:
        shutil.rmtree(getattr(self, "tmp", ""), ignore_errors=True)


# -------------------------------------------------------------------------------------------------
# harness: the proxy-wasm filter in wasmtime
# -------------------------------------------------------------------------------------------------


class Harness(Host):
    """The built filter in `txngate-harness replay`: one process per policy, every case's requests (prior
    calls included) as JSONL through one VM, the virtual clock fixed with `--now-ms`."""

    name = "harness"

    def __init__(self, build: bool = True):
        self.build = build

    def wasm(self) -> Path:
        return Path(os.environ.get("TXNGATE_FILTER_WASM", FILTER_WASM))

    def binary(self) -> Path:
        return Path(os.environ.get("TXNGATE_HARNESS", HARNESS))

    def prepare(self) -> str | None:
        if self.build:
            if "TXNGATE_HARNESS" not in os.environ:
                err = cargo_build(["--release", "-p", "txngate-harness", "--bin", "txngate-harness"])
                if err:
                    return f"the harness does not build: {err}"
            if "TXNGATE_FILTER_WASM" not in os.environ:
                err = build_shipped_filter()
                if err:
                    return f"the filter does not build: {err}"
        for path, what in ((self.binary(), "harness binary"), (self.wasm(), "filter")):
            if not path.is_file():
                return f"{what} {path} is missing"
        # A filter that builds but cannot start is unavailable too (not a verdict on any case).
        with tempfile.TemporaryDirectory(prefix="txngate-conformance-harness-") as tmp:
            empty = Path(tmp) / "empty.jsonl"
            empty.write_text("")
            from vectors import POLICIES_DIR
            done = self._replay(POLICIES_DIR / "default.json", empty, int(time.time()))
            if done.returncode != 0:
                text = " ".join(l.strip() for l in done.stderr.splitlines() if l.strip())
                return f"the filter does not start in the harness: {text[:800]}"
        return None

    def _replay(self, policy: Path, requests: Path, now: int) -> subprocess.CompletedProcess:
        # The plugin configuration as an Envoy with allow_on_headers_stop_iteration gets it: the full decision at
        # the headers (`pause_at_headers`), as the vectors state it. The body-holding mode has its own suites.
        plugin = requests.with_name("plugin-config.json")
        plugin.write_text(json.dumps({**json.loads(policy.read_text()), "pause_at_headers": True}))
        argv = [str(self.binary()), "replay", "--wasm", str(self.wasm()), "--policy", str(plugin),
                "--requests", str(requests), "--now-ms", str(now * 1000), "--allow-on-headers-stop-iteration"]
        env = {**os.environ, "RUST_BACKTRACE": "0"}
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, env=env)

    def start(self, policy_path: Path) -> None:
        super().start(policy_path)
        self.clock = int(time.time())

    def now(self) -> int:
        return self.clock

    def line(self, case: Case, token: str | None) -> dict:
        wire = wire_request(case, token, self.policy)
        line: dict = {"method": wire.method, "path": wire.path, "headers": [list(h) for h in wire.headers]}
        if wire.body is not None:
            line["body"] = wire.body.decode()
        if wire.peer is not None:
            line["peer"] = wire.peer
        if case.response is not None:
            ct, body = upstream_response_text(case.response)
            line["upstream"] = {"status": case.response.get("status", 200), "headers": {"content-type": ct},
                                "body": body.decode()}
        return line

    def decide(self, case: Case, token: str | None) -> Outcome:
        raise NotImplementedError("the harness runs a policy's cases as one batch (decide_many)")

    def decide_many(self, cases: list[Case], minter: Minter) -> dict[str, Outcome]:
        out: dict[str, Outcome] = {}
        lines: list[str] = []
        spans: list[tuple[Case, int, int, str | None]] = []
        for case in cases:
            try:
                token = minter.token(case.token, self.clock, case, self.peer_proof(case))
            except Exception as e:  # noqa: BLE001
                out[case.id] = Outcome.failure(f"minting: {e}")
                continue
            line = json.dumps(self.line(case, token), ensure_ascii=False)
            first = len(lines)
            lines.extend([line] * (case.prior_calls + 1))
            spans.append((case, first, len(lines) - 1, token))
        with tempfile.TemporaryDirectory(prefix="txngate-conformance-harness-") as tmp:
            requests = Path(tmp) / "requests.jsonl"
            requests.write_text("\n".join(lines) + "\n")
            done = self._replay(self.policy_path, requests, self.clock)
        outcomes = [json.loads(l) for l in done.stdout.splitlines() if l.strip()]
        if done.returncode != 0 or len(outcomes) != len(lines):
            why = f"txngate-harness replay exit {done.returncode}, {len(outcomes)}/{len(lines)} outcomes: {done.stderr.strip()[-600:]}"
            for case, *_ in spans:
                out[case.id] = Outcome.failure(why)
            return out
        for case, first, last, token in spans:
            out[case.id] = self.read(case, outcomes[last])
        return out

    def read(self, case: Case, o: dict) -> Outcome:
        problems = []
        if o.get("trapped"):
            problems.append(f"trapped: {o['trapped']}")
        if o.get("stalled"):
            problems.append(f"stalled: {o.get('stall_reason')}")
        if o.get("vm_failed"):
            problems.append("vm failed")
        audits = audit_records(o.get("logs") or [])
        audit = audits[-1] if audits else None
        if o.get("local_reply") is not None:
            reply = o["local_reply"]
            out = Outcome("deny", reply["status"], reason_from_body(reply["body"]))
            out.body = reply["body"]
            if out.reason is None:
                problems.append(f"no reason in the reply body {reply['body'][:200]!r}")
            if audit and audit.get("reason") != out.reason:
                problems.append(f"audit says {audit.get('reason')!r}, the body {out.reason!r}")
        elif o.get("forwarded") is not None:
            out = Outcome("allow", allowed_status(case, o.get("status")), audit.get("reason") if audit else None)
            if audit is None:
                problems.append("allowed but no audit line was logged")
            if case.response is not None:
                resp = o.get("response") or {}
                headers = {k.lower(): v for k, v in resp.get("headers") or []}
                out.response = check_tools(case, headers.get("content-type", ""), resp.get("body") or "", headers.get("cache-control"))
        else:
            out = Outcome(None, o.get("status"), None)
            problems.append("neither a local reply nor a forwarded request")
        if problems:
            out.detail = "; ".join(problems)
            out.error = True
        return out

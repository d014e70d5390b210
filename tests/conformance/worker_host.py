"""The Cloudflare Worker (worker/build) in workerd, through tests/conformance/worker_bridge.mjs (which uses
tests/workerd/helpers.mjs: Miniflare over the built Worker). One workerd per policy, in front of
upstream.Upstream. The Worker never knows an mTLS peer, so cases with a peer must be marked for it.

The Worker is not built here: scripts/test-worker.sh builds worker/build/ (wrangler deploy --dry-run); the
runner uses what is there and prints its age.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from hosts import Host
from upstream import CASE_HEADER, MARK, Upstream
from vectors import (
    ROOT, Case, Outcome, allowed_status, check_tools, reason_from_body, token_sha256, upstream_response_text,
    wire_request,
)

WORKER_SCRIPT = ROOT / "worker" / "build" / "index.js"
BRIDGE = Path(__file__).resolve().parent / "worker_bridge.mjs"
START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 30.0


class Worker(Host):
    name = "worker"
    can_peer = False

    def __init__(self, build: bool = True):
        self.build = build  # not used: see the module docstring
        self.proc: subprocess.Popen | None = None
        self.upstream: Upstream | None = None
        self.note: str | None = None

    def prepare(self) -> str | None:
        node = shutil.which("node")
        if node is None:
            return "node is not installed"
        if not (ROOT / "node_modules" / "miniflare").is_dir():
            return "node_modules/miniflare is missing (scripts/bootstrap.sh --node)"
        if not WORKER_SCRIPT.is_file():
            return f"{WORKER_SCRIPT} is missing: build it with scripts/test-worker.sh"
        age = time.time() - WORKER_SCRIPT.stat().st_mtime
        newest_src = max((p.stat().st_mtime for d in ("worker/src", "shared/src") for p in (ROOT / d).rglob("*.rs")), default=0)
        stale = " (older than worker/src or shared/src: rebuild with scripts/test-worker.sh)" if newest_src > WORKER_SCRIPT.stat().st_mtime else ""
        self.note = f"worker/build built {int(age // 60)} min ago{stale}"
        self.node = node
        return None

    # -- the bridge process ------------------------------------------------------------------

    def _spawn(self) -> None:
        self.proc = subprocess.Popen([self.node, str(BRIDGE)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        self.stderr_tail: list[str] = []

        def pump_out() -> None:
            for line in self.proc.stdout:
                self.lines.put(line)
            self.lines.put(None)

        def pump_err() -> None:
            for line in self.proc.stderr:
                self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-30:]

        threading.Thread(target=pump_out, daemon=True).start()
        threading.Thread(target=pump_err, daemon=True).start()

    def _call(self, msg: dict, timeout: float) -> dict:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"worker bridge: no answer to {msg['op']} within {timeout} s") from None
        if line is None:
            raise RuntimeError("worker bridge exited: " + "\n".join(self.stderr_tail[-10:]))
        answer = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"worker bridge: {answer.get('error')}")
        return answer

    def start(self, policy_path: Path) -> None:
        super().start(policy_path)
        if self.upstream is None:
            self.upstream = Upstream()
        if self.proc is None or self.proc.poll() is not None:
            self._spawn()
        self._call({"op": "start", "policy": policy_path.read_text(), "origin": self.upstream.url}, START_TIMEOUT_S)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self._call({"op": "stop"}, START_TIMEOUT_S)
            except RuntimeError:
                pass

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.proc.stdin.close()
                    self.proc.wait(timeout=15)
                except (OSError, subprocess.TimeoutExpired):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=5)
            self.proc = None
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    # -- cases -------------------------------------------------------------------------------

    def decide(self, case: Case, token: str | None) -> Outcome:
        wire = wire_request(case, token, self.policy)
        if case.response is not None:
            ct, body = upstream_response_text(case.response)
            self.upstream.register(case.id, case.response.get("status", 200), ct, body)
        msg = {
            "op": "request", "method": wire.method, "path": wire.path,
            "headers": [list(h) for h in wire.headers] + [[CASE_HEADER, case.id]],
            "body_b64": base64.b64encode(wire.body).decode() if wire.body is not None else None,
        }
        for _ in range(case.prior_calls):
            self._call({**msg, "audit_sha256": None}, REQUEST_TIMEOUT_S)
        answer = self._call({**msg, "audit_sha256": token_sha256(token) if token else None,
                             "audit_count": case.prior_calls + 1, "audit_if_header": MARK}, REQUEST_TIMEOUT_S)
        headers = {k.lower(): v for k, v in answer["headers"]}
        status, text = answer["status"], answer["body"]
        if headers.get(MARK) != "1":
            reason = reason_from_body(text)
            out = Outcome("deny", status, reason)
            out.body = text
            if reason is None:
                out.detail, out.error = f"local reply without a reason: {text[:200]!r}", True
            return out
        records = answer.get("audit") or []
        out = Outcome("allow", allowed_status(case, status), records[-1].get("reason") if records else None)
        if out.reason is None:
            out.detail, out.error = "allowed, but no audit line for this token in workerd's log", True
        if case.response is not None:
            out.response = check_tools(case, headers.get("content-type", ""), text, headers.get("cache-control"))
        return out

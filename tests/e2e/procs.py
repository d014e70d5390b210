"""Start and stop the processes of an end-to-end test (MCP server, Envoy, wrangler, ...).

    from procs import Proc, free_port

    with Proc([sys.executable, "mcp_server.py", "--port", "0"], name="mcp") as mcp:
        port = mcp.wait_listening()          # reads the `LISTENING <port>` stdout line
        mcp.wait_port(port)                  # until 127.0.0.1:<port> accepts
        ...
    # leaving the block stops the process by its PID: SIGTERM, then SIGKILL after a bound

Each process runs in its own process group (its PID is the group id), so stopping it also stops
whatever it started, and nothing else. Its stdout and stderr go to files (never a pipe that could
fill up and block it): `stdout_text()`, `stderr_text()`. Every wait is bounded in time and in
number of tries, and only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

POLL_SECONDS = 0.05


def wait_for(probe, timeout: float = 5.0, interval: float = 0.1) -> bool:
    """Polls `probe` until it returns true (True) or `timeout` seconds pass (False), at most timeout/interval
    tries; a probe that raises an HTTP error or a KeyError (a counter not there yet) counts as false."""
    import httpx

    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        try:
            if probe():
                return True
        except (httpx.HTTPError, KeyError):
            pass
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class ProcError(RuntimeError):
    pass


class Proc:
    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        name: str | None = None,
        log_dir: str | os.PathLike | None = None,
        extra_env: Mapping[str, str] | None = None,
    ):
        """argv: the command; env: the whole environment (default: this process's);
        extra_env: added on top of it; log_dir: where NAME.stdout / NAME.stderr go (default: a temp dir)."""
        self.argv = [str(a) for a in argv]
        self.env = dict(os.environ if env is None else env)
        self.env.update(extra_env or {})
        self.cwd = cwd
        self.name = name or Path(self.argv[0]).name
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix=f"e2e-{self.name}-"))
        self.stdout_path = self.log_dir / f"{self.name}.stdout"
        self.stderr_path = self.log_dir / f"{self.name}.stderr"
        self.popen: subprocess.Popen | None = None
        self.pid: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "Proc":
        if self.popen is not None:
            raise ProcError(f"{self.name} already started (pid {self.pid})")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # own session and process group, group id == pid
            )
        self.pid = self.popen.pid
        return self

    def running(self) -> bool:
        """Whether the process is still running. Never reaps it: while it is unreaped its PID
        (and so its process group id) cannot be reused, which keeps `stop()` safe."""
        return self.popen is not None and self._exited() is None

    def _exited(self):
        """None while running, else the waitid() record of its exit (without reaping it)."""
        if self.popen.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True

    def stop(self, grace: float = 5.0) -> int | None:
        """Stop the process group led by our PID: SIGTERM, then SIGKILL after `grace` seconds.
        Returns the exit code (None if it was never started). Safe to call twice."""
        if self.popen is None:
            return None
        if self.popen.returncode is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if not self.running():
                    break
                self._signal_group(sig)
                deadline = time.monotonic() + grace
                for _ in range(int(grace / POLL_SECONDS) + 1):
                    if not self.running() or time.monotonic() >= deadline:
                        break
                    time.sleep(POLL_SECONDS)
            # The leader has exited but is not reaped yet, so the group id is still ours:
            # anything it left behind in its group gets SIGKILL, then the leader is reaped.
            self._signal_group(signal.SIGKILL)
            self.popen.wait(timeout=grace)
        return self.popen.returncode

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> "Proc":
        if self.popen is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- waiting ---------------------------------------------------------------------------

    def wait_listening(self, timeout: float = 15.0, prefix: str = "LISTENING") -> int:
        """Wait for a stdout line `LISTENING <port>` and return the port."""
        line = self.wait_stdout_line(prefix, timeout)
        try:
            return int(line.split()[1])
        except (IndexError, ValueError):
            raise ProcError(f"{self.name}: bad line {line!r}") from None

    def wait_stdout_line(self, prefix: str, timeout: float = 15.0) -> str:
        """Wait for the first stdout line starting with `prefix` and return it."""
        return self._wait(
            lambda: next((l for l in self.stdout_text().splitlines() if l.startswith(prefix)), None),
            timeout,
            f"a stdout line starting with {prefix!r}",
        )

    def wait_stderr_text(self, text: str, timeout: float = 15.0) -> None:
        """Wait until `text` appears somewhere in stderr (Envoy and wrangler log there)."""
        self._wait(lambda: text in self.stderr_text() or None, timeout, f"{text!r} on stderr")

    def wait_port(self, port: int, timeout: float = 15.0) -> None:
        """Wait until 127.0.0.1:<port> accepts a TCP connection."""
        self._wait(lambda: port_accepts(port) or None, timeout, f"127.0.0.1:{port} to accept")

    def _wait(self, probe, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / POLL_SECONDS) + 1):
            found = probe()
            if found is not None:
                return found
            if not self.running():
                raise ProcError(f"{self.name} exited (code {self._code()}) before {what}\n{self.tail()}")
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECONDS)
        raise ProcError(f"{self.name}: no {what} within {timeout} s\n{self.tail()}")

    def _code(self):
        info = None if self.popen is None else self._exited()
        if info is None or info is True:
            return None if self.popen is None else self.popen.returncode
        return info.si_status

    # -- output ----------------------------------------------------------------------------

    def stdout_text(self) -> str:
        return _read(self.stdout_path)

    def stderr_text(self) -> str:
        return _read(self.stderr_path)

    def tail(self, lines: int = 30) -> str:
        out = "\n".join(self.stdout_text().splitlines()[-lines:])
        err = "\n".join(self.stderr_text().splitlines()[-lines:])
        return f"--- {self.name} stdout (last {lines} lines) ---\n{out}\n--- {self.name} stderr ---\n{err}"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


# -- the pieces of tests/e2e, started as processes ---------------------------------------------

E2E_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = E2E_DIR.parents[1]


def mcp_server(json_response: bool = False, port: int = 0, **kwargs) -> Proc:
    """A (not yet started) Proc for mcp_server.py; use `with mcp_server() as p: port = p.wait_listening()`."""
    argv = [sys.executable, str(E2E_DIR / "mcp_server.py"), "--port", str(port)]
    if json_response:
        argv.append("--json-response")
    kwargs.setdefault("name", "mcp_server_json" if json_response else "mcp_server_sse")
    return Proc(argv, **kwargs)


CLIENTS = ("py", "py-legacy", "ts")
"""The MCP clients the suites run: the Python SDK 2.x speaking 2026-07-28 (`py`) and 2025-11-25 (`py-legacy`),
and the TypeScript SDK (`ts`, 2025-11-25 only)."""


def mcp_call(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    tool: str | None = None,
    args: Mapping | None = None,
    list_tools: bool = False,
    list_prompts: bool = False,
    list_resources: bool = False,
    prompt: str | None = None,
    prompt_args: Mapping | None = None,
    read: str | None = None,
    override_headers: Mapping[str, str] | None = None,
    drop_headers: Sequence[str] = (),
    client: str = "py",
    timeout: float = 10.0,
) -> dict:
    """Run mcp_call.py (`client` "py", "py-legacy") or mcp_call_ts.mjs ("ts") once and return its JSON line as
    a dict (plus "exit_code" and "stderr")."""
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {CLIENTS}, got {client!r}")
    if client == "ts":
        argv = ["node", str(E2E_DIR / "mcp_call_ts.mjs")]
    else:
        argv = [sys.executable, str(E2E_DIR / "mcp_call.py")]
        if client == "py-legacy":
            argv.append("--legacy")
    argv += ["--url", url, "--timeout", str(timeout)]
    for name, value in (headers or {}).items():
        argv += ["--header", f"{name}: {value}"]
    for name, value in (override_headers or {}).items():
        argv += ["--override-header", f"{name}: {value}"]
    for name in drop_headers:
        argv += ["--drop-header", name]
    if list_tools:
        argv.append("--list")
    if list_prompts:
        argv.append("--list-prompts")
    if list_resources:
        argv.append("--list-resources")
    if tool:
        argv += ["--tool", tool, "--args", json.dumps(dict(args or {}))]
    if prompt:
        argv += ["--prompt", prompt]
        if prompt_args is not None:
            argv += ["--prompt-args", json.dumps(dict(prompt_args))]
    if read:
        argv += ["--read", read]
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout + 15, cwd=PROJECT_ROOT
    )
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise ProcError(f"{Path(argv[1]).name} printed nothing (exit {done.returncode})\n{done.stderr}")
    out = json.loads(lines[-1])
    out["exit_code"] = done.returncode
    out["stderr"] = done.stderr
    return out


def server_requests(stderr_text: str) -> list[dict]:
    """The requests mcp_server.py logged: one dict per HTTP request with `http` (method), `path`, `txn_token`
    (bool), `x_txngate` (dict) and the `mcp` object (h_method, h_name, h_version: routing headers as received;
    method, name, id: from the JSON-RPC body)."""
    out = []
    for line in stderr_text.splitlines():
        if not line.startswith("[mcp_server] ") or " mcp={" not in line:
            continue
        head, _, mcp = line.partition(" mcp=")
        words = head.split(" ", 4)
        if len(words) < 5:
            continue
        _, http, path, token, rest = words
        txngate = rest.partition("x-txngate=")[2]
        out.append({"http": http, "path": path, "txn_token": token == "txn-token=present",
                    "x_txngate": json.loads(txngate or "{}"), "mcp": json.loads(mcp)})
    return out


def wait_envoy_live(proc: "Proc", admin_port: int, timeout: float, label: str = "envoy", tail: int = 60) -> None:
    """Waits until Envoy's admin `/ready` says LIVE; raises ProcError with the log's tail if Envoy exits first
    or is not ready within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.1) + 1):
        if not proc.running():
            raise ProcError(f"{label} exited before it was ready\n{proc.tail(tail)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as response:
                if response.read().decode().strip() == "LIVE":
                    return
        except (OSError, urllib.error.URLError):
            pass  # not listening yet, or 503 while not LIVE
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    raise ProcError(f"{label} not ready within {timeout} s\n{proc.tail(tail)}")

"""Real Envoy around the txngate filter, for tests/e2e/test_envoy.py.

    from envoy_harness import EnvoyConfig, running_envoy, filter_wasm, txngate_cli, Minter

* `filter_wasm()` / `txngate_cli()`: the release filter (.wasm) and the project CLI, built with cargo when
  missing (override with TXNGATE_FILTER_WASM / TXNGATE_CLI).
* `EnvoyConfig(...).write(dir)`: an Envoy bootstrap (JSON) with one listener -> txngate -> router -> the
  upstream, optionally mTLS, a JWKS cluster, one worker per connection balance, or no filter at all.
* `running_envoy(config, tmp_path)`: starts `.venv/bin/envoy` (by PID, own process group, 127.0.0.1 only),
  waits for /ready, stops it when the block ends.
* `Minter`: Txn-Tokens from `txngate mint`, or from PyJWT with the same private key (for bulk).

Nothing here listens on anything but 127.0.0.1, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import re

import httpx

E2E_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(E2E_DIR))
from procs import PROJECT_ROOT, Proc, ProcError, free_port, wait_envoy_live  # noqa: E402

sys.path.insert(0, str(E2E_DIR.parent / "secrets"))
import ledger  # noqa: E402

ENVOY_BIN = PROJECT_ROOT / ".venv" / "bin" / "envoy"
# The shipped (wasm-opt'ed) filter: scripts/build-filter.sh writes it where cargo never writes.
DEFAULT_WASM = PROJECT_ROOT / "target" / "shipped" / "txngate_filter.wasm"
DEFAULT_CLI = PROJECT_ROOT / "target" / "release" / "txngate"
CARGO_TIMEOUT = 1800
_WASM_LOG = re.compile(r"wasm log txngate txngate(?: txngate)?: ")


def _cargo(args: Sequence[str]) -> None:
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    subprocess.run([cargo, *args], cwd=PROJECT_ROOT, check=True, stdin=subprocess.DEVNULL, timeout=CARGO_TIMEOUT)


def filter_wasm() -> Path:
    """The shipped filter; scripts/build-filter.sh when it is missing (unless TXNGATE_FILTER_WASM names one)."""
    override = os.environ.get("TXNGATE_FILTER_WASM")
    if override:
        return Path(override).resolve()
    if not DEFAULT_WASM.exists():
        subprocess.run([str(PROJECT_ROOT / "scripts" / "build-filter.sh")], cwd=PROJECT_ROOT, check=True,
                       stdin=subprocess.DEVNULL, timeout=CARGO_TIMEOUT)
    return DEFAULT_WASM


def txngate_cli() -> Path:
    """The project CLI (`txngate`); built when missing (unless TXNGATE_CLI names one)."""
    override = os.environ.get("TXNGATE_CLI")
    if override:
        return Path(override).resolve()
    if not DEFAULT_CLI.exists():
        _cargo(["build", "--release", "--bin", "txngate"])
    return DEFAULT_CLI


# -- tokens ------------------------------------------------------------------------------------


class Minter:
    """A development issuer: `txngate keygen` once, then `txngate mint` per token."""

    def __init__(self, cli: Path, directory: Path, kid: str, alg: str = "EdDSA"):
        self.cli, self.dir, self.kid, self.alg = cli, directory, kid, alg
        subprocess.run(
            [str(cli), "keygen", "--alg", alg, "--kid", kid, "--out", str(directory)],
            check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
        )
        self.jwks: dict = json.loads((directory / "jwks.json").read_text())

    def mint(self, claims: Mapping[str, Any], act: Sequence[str] = (), ttl: int = 120,
             header: Mapping[str, Any] | None = None) -> str:
        argv = [str(self.cli), "mint", "--key", str(self.dir / "private.jwk"), "--claims", "-", "--ttl", str(ttl)]
        for actor in act:
            argv += ["--act", actor]
        if header is not None:
            argv += ["--header", json.dumps(dict(header))]
        done = subprocess.run(argv, input=json.dumps(dict(claims)), capture_output=True, text=True, check=True, timeout=60)
        return done.stdout.strip()

    def mint_many(self, claims: Mapping[str, Any], count: int, act: Sequence[str] = (), ttl: int = 300) -> list[str]:
        """`count` distinct tokens (own `txn` each) signed in-process with PyJWT and the same private key."""
        import jwt  # PyJWT, in the venv

        key = jwt.PyJWK(json.loads((self.dir / "private.jwk").read_text()))
        now = int(time.time())
        chain: dict | None = None
        for actor in reversed(list(act)):
            chain = {"sub": actor, **({"act": chain} if chain else {})}
        tokens = []
        for _ in range(count):
            body = {"iat": now, "exp": now + ttl, "txn": str(uuid.uuid4()), **dict(claims)}
            if chain:
                body["act"] = chain
            tokens.append(jwt.encode(body, key.key, algorithm=self.alg, headers={"typ": "txntoken+jwt", "kid": self.kid}))
        ledger.record_many("token", tokens)
        return tokens


# -- Envoy configuration -----------------------------------------------------------------------


@dataclass
class Tls:
    """Downstream mTLS: Envoy's certificate and the CA that signs client certificates."""
    cert: Path
    key: Path
    ca: Path


@dataclass
class EnvoyConfig:
    policy: Mapping[str, Any] | str | None
    upstream_port: int
    wasm: Path | None = None
    listener_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    stop_iteration: bool = True
    #: The filter's `"pause_at_headers"` option (filters/src/mode.rs), added to the plugin configuration when
    #: true. None: the same as `stop_iteration` (the strict mode needs Envoy's option; without it the filter
    #: holds the body instead, its default).
    pause_at_headers: bool | None = None
    tls: Tls | None = None
    jwks_port: int | None = None
    exact_balance: bool = False
    #: Answer every request with this JSON body from Envoy itself (no upstream): CPU measurements.
    direct_response: str | None = None
    #: PluginConfig `failure_policy` (FAIL_CLOSED, FAIL_RELOAD, FAIL_OPEN) and, for FAIL_RELOAD, the base
    #: interval of the reload backoff (`reload_config.backoff`), in ms.
    failure_policy: str = "FAIL_CLOSED"
    reload_backoff_ms: int | None = None
    #: Static runtime layer (`layered_runtime`), e.g. {"http.async_response_buffer_limit": 1048576}.
    runtime: Mapping[str, Any] | None = None

    def policy_text(self) -> str:
        if isinstance(self.policy, str):
            return self.policy
        pause = self.stop_iteration if self.pause_at_headers is None else self.pause_at_headers
        if pause and isinstance(self.policy, Mapping) and "pause_at_headers" not in self.policy:
            return json.dumps({**self.policy, "pause_at_headers": True})
        return json.dumps(self.policy)

    def wasm_filter(self) -> dict:
        config: dict[str, Any] = {
            "name": "txngate",
            "root_id": "txngate",
            "failure_policy": self.failure_policy,
            "vm_config": {
                "vm_id": "txngate",
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": str(self.wasm)}},
            },
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": self.policy_text()},
        }
        if self.stop_iteration:
            config["allow_on_headers_stop_iteration"] = True
        if self.reload_backoff_ms is not None:
            config["reload_config"] = {"backoff": {
                "base_interval": f"{self.reload_backoff_ms / 1000:.3f}s",
                "max_interval": f"{max(self.reload_backoff_ms, 1000) / 1000:.3f}s",
            }}
        return {
            "name": "envoy.filters.http.wasm",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config},
        }

    def route(self) -> dict:
        if self.direct_response is not None:
            return {
                "match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": self.direct_response}},
                "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}],
            }
        return {"match": {"prefix": "/"}, "route": {"cluster": "mcp_server", "timeout": "0s"}}

    def bootstrap(self) -> dict:
        access_log = (
            "ACCESS %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% verdict=%FILTER_STATE(wasm.txngate_verdict:PLAIN)% "
            "reason=%FILTER_STATE(wasm.txngate_reason:PLAIN)% agent=%FILTER_STATE(wasm.txngate_agent:PLAIN)% "
            "tool=%FILTER_STATE(wasm.txngate_tool:PLAIN)% txn=%FILTER_STATE(wasm.txngate_txn:PLAIN)% "
            # The whole record, set only with `"audit_sink": "filter_state"` (last: it contains spaces).
            "audit=%FILTER_STATE(wasm.txngate_audit:PLAIN)%\n"
        )
        http_filters = [self.wasm_filter()] if self.policy is not None else []
        http_filters.append({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        })
        hcm = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "mcp",
            "access_log": [{
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": {"text_format_source": {"inline_string": access_log}},
                },
            }],
            "route_config": {"virtual_hosts": [{
                "name": "mcp", "domains": ["*"],
                "routes": [self.route()],
            }]},
            "http_filters": http_filters,
        }
        chain: dict[str, Any] = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        if self.tls:
            chain["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": True,
                    "common_tls_context": {
                        "tls_certificates": [{
                            "certificate_chain": {"filename": str(self.tls.cert)},
                            "private_key": {"filename": str(self.tls.key)},
                        }],
                        "validation_context": {"trusted_ca": {"filename": str(self.tls.ca)}},
                    },
                },
            }
        listener: dict[str, Any] = {
            "name": "mcp",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.listener_port}},
            "filter_chains": [chain],
        }
        if self.exact_balance:
            listener["connection_balance_config"] = {"exact_balance": {}}
        clusters = [_static_cluster("mcp_server", self.upstream_port)]
        if self.jwks_port is not None:
            clusters.append(_static_cluster("jwks", self.jwks_port))
        bootstrap: dict[str, Any] = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
            "static_resources": {"listeners": [listener], "clusters": clusters},
        }
        if self.runtime:
            bootstrap["layered_runtime"] = {"layers": [{"name": "static", "static_layer": dict(self.runtime)}]}
        return bootstrap

    def write(self, directory: Path, name: str = "envoy.json") -> Path:
        path = directory / name
        path.write_text(json.dumps(self.bootstrap(), indent=1))
        return path

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.listener_port}/mcp"


def _static_cluster(name: str, port: int) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }


# -- processes ---------------------------------------------------------------------------------


class Envoy:
    def __init__(self, proc: Proc, config: EnvoyConfig):
        self.proc, self.config = proc, config

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return self.config.url

    def admin(self, path: str) -> str:
        return httpx.get(f"http://127.0.0.1:{self.config.admin_port}{path}", timeout=5).text

    def counters(self, prefix: str = "") -> dict[str, int]:
        out = {}
        for line in self.admin("/stats?usedonly").splitlines():
            name, sep, value = line.partition(": ")
            if sep and name.startswith(prefix) and value.strip().isdigit():
                out[name] = int(value)
        return out

    def wasm_logs(self) -> list[str]:
        """The filter's log messages (Envoy prefixes them with `wasm log <plugin> <root id> [<vm id>]: `)."""
        out = []
        for line in self.proc.stderr_text().splitlines():
            match = _WASM_LOG.search(line)
            if match:
                out.append(line[match.end():])
        return out

    def audit(self) -> list[dict]:
        """The filter's audit lines (JSON), oldest first."""
        out = []
        for line in self.wasm_logs():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def access_log(self) -> list[str]:
        return [l for l in self.proc.stdout_text().splitlines() if l.startswith("ACCESS ")]

    def rss_bytes(self) -> int:
        """Resident set size of the Envoy process (VmRSS of /proc/PID/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ProcError("no VmRSS in /proc/PID/status")

    def cpu_seconds(self) -> float:
        """CPU time used so far by the Envoy process: utime + stime from /proc/PID/stat (fields 14, 15)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def cpu_ns(self) -> int:
        """CPU time of all Envoy threads in nanoseconds (/proc/PID/task/*/schedstat, first field): the same
        figure as /proc/PID/stat at nanosecond instead of 10 ms resolution."""
        total = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass  # a thread that just exited
        return total


@contextlib.contextmanager
def running_envoy(config: EnvoyConfig, directory: Path, *, concurrency: int = 2, name: str = "envoy",
                  timeout: float = 30.0, cpu: str | None = None) -> Iterator[Envoy]:
    """Starts Envoy on `config` and yields once it is ready (admin /ready says LIVE). `cpu`: pin it to these
    cores (taskset execs Envoy, so the PID is Envoy's)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = config.write(directory, f"{name}.json")
    argv = [str(ENVOY_BIN), "-c", str(path), "--concurrency", str(concurrency), "--disable-hot-restart",
            "-l", "info", "--drain-time-s", "0", "--file-flush-interval-msec", "100"]
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    with Proc(argv, name=name, log_dir=directory) as proc:
        envoy = Envoy(proc, config)
        wait_envoy_live(proc, config.admin_port, timeout)
        proc.wait_port(config.listener_port)
        yield envoy


def validate(config_path: Path, cwd: Path | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """`envoy --mode validate -c FILE` (starts the Wasm VM, so a bad policy fails here)."""
    return subprocess.run(
        [str(ENVOY_BIN), "--mode", "validate", "-c", str(config_path), "--disable-hot-restart", "-l", "info"],
        cwd=cwd or PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )

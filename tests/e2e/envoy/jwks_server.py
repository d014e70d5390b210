#!/usr/bin/env python3
"""A loopback JWKS endpoint for the key-rotation and fault tests.

    python tests/e2e/envoy/jwks_server.py --file JWKS.json [--port 0]

Serves the current content of --file (read on every request, so a test rotates keys by rewriting it) at
any GET path, as application/json. Binds 127.0.0.1 only; prints `LISTENING <port>` first; logs one stderr
line per request (`GET <path> <status>`), so a test can count fetches. A missing file answers 503.

Fault modes (tests/e2e/test_envoy_faults.py), switched at run time with `POST /__control/mode` and the mode
as the body (answered 204; `GET /__control/mode` reads it back). Every JWKS request is also logged when it
arrives, as `REQ <path> mode=<mode>`, whatever happens next:

* `ok`: the file, as above (the default);
* `down`: the connection is closed without an answer (a dead or crashing server);
* `status:<code>`: that status with a short JSON error body;
* `slow:<seconds>`: waits that long before answering (a hung server; past the client's timeout);
* `garbage`: 200 with a body that is not JSON;
* `huge:<bytes>`: 200 with a body of that many bytes (Content-Length set), streamed in 64 KiB chunks; the
  stream stops quietly when the client gives up.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CONTROL = "/__control/mode"
CHUNK = 64 * 1024
MAX_SLOW_S = 120.0


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mode = "ok"

    def get(self) -> str:
        with self.lock:
            return self.mode

    def set(self, mode: str) -> bool:
        if not valid(mode):
            return False
        with self.lock:
            self.mode = mode
        return True


def valid(mode: str) -> bool:
    name, _, arg = mode.partition(":")
    try:
        if name in ("ok", "down", "garbage"):
            return not arg
        if name == "status":
            return 100 <= int(arg) <= 599
        if name == "slow":
            return 0 <= float(arg) <= MAX_SLOW_S
        if name == "huge":
            return 0 <= int(arg) <= 1 << 34
    except ValueError:
        return False
    return False


def make_handler(path: Path, state: State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = min(int(self.headers.get("Content-Length") or 0), 256)
            mode = self.rfile.read(length).decode("utf-8", "replace").strip()
            if self.path != CONTROL or not state.set(mode):
                self._send(400, b'{"error":"bad control request"}')
                return
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            print(f"MODE {mode}", file=sys.stderr, flush=True)

        def do_GET(self):
            if self.path == CONTROL:
                self._send(200, state.get().encode(), "text/plain")
                return
            mode = state.get()
            print(f"REQ {self.path} mode={mode}", file=sys.stderr, flush=True)
            name, _, arg = mode.partition(":")
            if name == "down":
                self.close_connection = True
                return  # no status line at all
            if name == "slow":
                time.sleep(float(arg))
            if name == "status":
                self._send(int(arg), b'{"error":"injected"}')
                status = int(arg)
            elif name == "garbage":
                self._send(200, b"<html>this is not a key set {{{")
                status = 200
            elif name == "huge":
                status = 200 if self._stream(int(arg)) else 0
            else:
                try:
                    body, status = path.read_bytes(), 200
                except OSError:
                    body, status = b'{"error":"unavailable"}', 503
                try:
                    self._send(status, body)
                except OSError:
                    status = 0  # the client gave up (e.g. after a slow answer)
            print(f"GET {self.path} {status}", file=sys.stderr, flush=True)

        def _stream(self, size: int) -> bool:
            """Streams `size` bytes of a JSON-looking body; False when the client closed first."""
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            chunk = b" " * CHUNK
            sent = 0
            try:
                for _ in range(size // CHUNK + 1):
                    n = min(CHUNK, size - sent)
                    if n <= 0:
                        break
                    self.wfile.write(chunk[:n])
                    sent += n
                self.wfile.flush()
            except OSError:
                self.close_connection = True
                print(f"ABORTED {self.path} after {sent} bytes", file=sys.stderr, flush=True)
                return False
            return True

        def log_message(self, fmt, *args):
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", required=True, type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", default="ok", help="initial fault mode (see above)")
    args = parser.parse_args()
    state = State()
    if not state.set(args.mode):
        parser.error(f"unknown mode {args.mode!r}")
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.file, state))
    server.daemon_threads = True
    print(f"LISTENING {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

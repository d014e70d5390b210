#!/usr/bin/env python3
"""A loopback JWKS endpoint for the key-rotation test.

    python tests/e2e/envoy/jwks_server.py --file JWKS.json [--port 0]

Serves the current content of --file (read on every request, so a test rotates keys by rewriting it) at
any GET path, as application/json. Binds 127.0.0.1 only; prints `LISTENING <port>` first; logs one stderr
line per request (`GET <path> <status>`), so a test can count fetches. A missing file answers 503.
"""

from __future__ import annotations

import argparse
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def make_handler(path: Path):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            try:
                body, status = path.read_bytes(), 200
            except OSError:
                body, status = b'{"error":"unavailable"}', 503
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            print(f"GET {self.path} {status}", file=sys.stderr, flush=True)

        def log_message(self, fmt, *args):
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", required=True, type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.file))
    print(f"LISTENING {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

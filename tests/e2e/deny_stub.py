#!/usr/bin/env python3
"""A stand-in for a proxy that refuses some MCP methods, to test clients' error reporting.

    python tests/e2e/deny_stub.py --port 0 [--deny tools/call] [--status 403]

Listens on 127.0.0.1 only; prints `LISTENING <port>` first. POSTs whose JSON-RPC method is in
--deny (repeatable; default tools/call) get --status with a JSON-RPC error body
{"error": {"code": -32001, "message": "denied by stub: <method>"}} and header
x-txngate-reason: stub. Everything else gets a minimal valid MCP answer in JSON.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(denied: set[str], status: int):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, code: int, body: dict | None, extra: dict | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(code)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            try:
                message = json.loads(self.rfile.read(length) or b"null")
            except ValueError:
                message = None
            if not isinstance(message, dict):
                return self.reply(400, {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}})
            method, request_id = message.get("method"), message.get("id")
            if method in denied:
                error = {"code": -32001, "message": f"denied by stub: {method}"}
                return self.reply(status, {"jsonrpc": "2.0", "id": request_id, "error": error},
                                  {"x-txngate-reason": "stub"})
            if request_id is None:  # a notification
                return self.reply(202, None)
            if method == "initialize":
                result = {
                    "protocolVersion": message.get("params", {}).get("protocolVersion", "2025-06-18"),
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "deny-stub", "version": "0"},
                }
            elif method == "tools/list":
                result = {"tools": []}
            else:
                result = {"content": [{"type": "text", "text": "ok"}], "isError": False}
            self.reply(200, {"jsonrpc": "2.0", "id": request_id, "result": result})

        def do_GET(self):
            self.reply(405, None)

        def do_DELETE(self):
            self.reply(200, None)

        def log_message(self, fmt, *args):
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--deny", action="append", help="JSON-RPC method to refuse (repeatable)")
    parser.add_argument("--status", type=int, default=403)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(set(args.deny or ["tools/call"]), args.status))
    print(f"LISTENING {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

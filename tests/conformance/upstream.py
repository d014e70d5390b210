"""The upstream behind the proxy hosts (Envoy, workerd): a loopback HTTP server in a thread of the runner.

Every answer carries `x-conformance-upstream: 1`, so the adapter knows the request passed the gate (a local
reply of the gate never has it). A request with `x-conformance-case: ID` gets the canned response registered
for that case (tools/list filtering), anything else `200 {"jsonrpc":"2.0","id":null,"result":{}}`.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARK = "x-conformance-upstream"
CASE_HEADER = "x-conformance-case"


class Upstream:
    def __init__(self) -> None:
        self.responses: dict[str, tuple[int, str, bytes]] = {}
        self.seen: list[dict] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                case = self.headers.get(CASE_HEADER)
                upstream.seen.append({"method": self.command, "path": self.path, "case": case,
                                      "headers": {k.lower(): v for k, v in self.headers.items()}, "body_len": len(body)})
                status, ctype, payload = upstream.responses.get(
                    case or "", (200, "application/json", b'{"jsonrpc":"2.0","id":null,"result":{}}'))
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(payload)))
                self.send_header(MARK, "1")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

            def log_message(self, *args) -> None:  # quiet
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                # A gate that refuses a response over the list cap stops reading it: not the upstream's error.
                import sys
                if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
                    return
                super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="conformance-upstream", daemon=True)
        self.thread.start()

    def register(self, case_id: str, status: int, content_type: str, body: bytes) -> None:
        self.responses[case_id] = (status, content_type, body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _selftest() -> None:  # pragma: no cover - manual check
    import urllib.request

    up = Upstream()
    up.register("c", 200, "application/json", json.dumps({"ok": True}).encode())
    req = urllib.request.Request(up.url + "/mcp", data=b"{}", headers={CASE_HEADER: "c"})
    with urllib.request.urlopen(req) as r:
        print(r.status, r.headers[MARK], r.read())
    up.close()


if __name__ == "__main__":
    _selftest()

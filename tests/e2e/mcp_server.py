#!/usr/bin/env python3
"""A small, real MCP server for txngate's end-to-end tests.

Built on the official MCP Python SDK (FastMCP), served over streamable HTTP at
http://127.0.0.1:<port>/mcp, stateless. It binds to 127.0.0.1 only.

    python tests/e2e/mcp_server.py --port 0 [--json-response]

--port 0 picks a free port; the first stdout line is always `LISTENING <port>`.
Without --json-response, responses are `text/event-stream` (SSE); with it,
`application/json`.

Every tool result is a JSON object:
    {"result": "<what the tool did>",
     "x-txngate-agent": <value of that request header, or null>,
     "txngate_headers": {<every x-txngate-* request header>},
     "txn_token_present": <whether a txn-token header reached this server>}
so a test can prove what the proxy in front of it added, kept or removed.

Each HTTP request is logged to stderr as one line with its x-txngate-* headers
and whether a txn-token header arrived (its value is never logged).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from typing import Any

import uvicorn
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.transport_security import TransportSecuritySettings

AGENT_HEADER = "x-txngate-agent"
HEADER_PREFIX = "x-txngate-"
TXN_TOKEN_HEADER = "txn-token"


def log(message: str) -> None:
    print(f"[mcp_server] {message}", file=sys.stderr, flush=True)


def seen_headers(ctx: Context) -> dict[str, Any]:
    """What the HTTP request carrying this tool call looked like (the Starlette request)."""
    request = ctx.request_context.request
    headers = request.headers if request is not None else {}
    txngate = {k.lower(): v for k, v in headers.items() if k.lower().startswith(HEADER_PREFIX)}
    return {
        AGENT_HEADER: txngate.get(AGENT_HEADER),
        "txngate_headers": txngate,
        "txn_token_present": TXN_TOKEN_HEADER in headers,
    }


def tool_result(ctx: Context, result: str) -> dict[str, Any]:
    return {"result": result, **seen_headers(ctx)}


def build_server(json_response: bool) -> FastMCP:
    mcp = FastMCP(
        name="txngate-e2e-mcp",
        host="127.0.0.1",
        streamable_http_path="/mcp",
        json_response=json_response,
        stateless_http=True,
        log_level="WARNING",
        # The SDK's DNS-rebinding guard rejects a Host it does not expect; a proxy in
        # front of this server (Envoy, a Worker) may rewrite Host, and this server
        # only ever listens on 127.0.0.1, so the guard is off.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )

    @mcp.tool()
    def send_email(to: str, subject: str, body: str, ctx: Context) -> dict[str, Any]:
        """Send an e-mail (pretend)."""
        return tool_result(ctx, f"sent to {to}")

    @mcp.tool()
    def calendar_read(day: str, ctx: Context) -> dict[str, Any]:
        """Read the calendar of one day (always the same two events)."""
        return tool_result(ctx, f"{day}: 09:00 standup; 14:00 review")

    @mcp.tool()
    def calendar_write(day: str, title: str, ctx: Context) -> dict[str, Any]:
        """Add an event to a day's calendar (pretend)."""
        return tool_result(ctx, f"added '{title}' on {day}")

    @mcp.tool()
    def search_web(query: str, ctx: Context) -> dict[str, Any]:
        """Search the web (canned answer)."""
        return tool_result(ctx, f"3 results for '{query}'")

    @mcp.tool()
    def delete_repo(name: str, ctx: Context) -> dict[str, Any]:
        """Delete a repository (pretend)."""
        return tool_result(ctx, f"deleted {name}")

    return mcp


class RequestLogger:
    """ASGI middleware: one stderr line per HTTP request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            txngate = {k: v for k, v in headers.items() if k.startswith(HEADER_PREFIX)}
            log(
                f"{scope['method']} {scope['path']} "
                f"txn-token={'present' if TXN_TOKEN_HEADER in headers else 'absent'} "
                f"x-txngate={json.dumps(txngate, sort_keys=True)}"
            )
        await self.app(scope, receive, send)


async def serve(port: int, json_response: bool) -> None:
    app = RequestLogger(build_server(json_response).streamable_http_app())

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    actual_port = sock.getsockname()[1]
    # Connections that arrive before uvicorn has started wait in the backlog.
    print(f"LISTENING {actual_port}", flush=True)
    log(f"serving http://127.0.0.1:{actual_port}/mcp ({'json' if json_response else 'sse'} responses)")

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    await uvicorn.Server(config).serve(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = pick a free one)")
    parser.add_argument(
        "--json-response", action="store_true", help="answer with application/json instead of SSE"
    )
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.json_response))


if __name__ == "__main__":
    main()

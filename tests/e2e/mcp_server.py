#!/usr/bin/env python3
"""A small, real MCP server for txngate's end-to-end tests.

Built on the official MCP Python SDK 2.x (`mcp.server.mcpserver.MCPServer`), served over streamable HTTP at
http://127.0.0.1:<port>/mcp, stateless: it answers MCP 2026-07-28 (`server/discover`, routing headers,
`params._meta`) and 2025-11-25 (`initialize`) clients alike. It binds to 127.0.0.1 only.

    python tests/e2e/mcp_server.py --port 0 [--json-response]

--port 0 picks a free port; the first stdout line is always `LISTENING <port>`.
Without --json-response, responses are `text/event-stream` (SSE); with it, `application/json`.

What it serves:
- tools send_email, calendar_read, calendar_write, search_web, delete_repo, and two whose names need the
  `=?base64?...?=` form of the `Mcp-Name` header (not printable ASCII): `météo` and `données_privées`;
- prompts `code_review`, `résumé` and `secret_plan`;
- resources file:///docs/public.txt, file:///docs/private/plan.txt, file:///docs/café.txt,
  file:///etc/passwd.txt and the template file:///docs/reports/{year}.txt.

Every tool result is a JSON object:
    {"result": "<what the tool did>",
     "x-txngate-agent": <value of that request header, or null>,
     "txngate_headers": {<every x-txngate-* request header>},
     "txn_token_present": <whether a txn-token header reached this server>}
so a test can prove what the proxy in front of it added, kept or removed. Prompt messages carry the same
object as their text (JSON).

Each HTTP request is logged to stderr as one line (the Txn-Token's value is never logged):
    [mcp_server] POST /mcp txn-token=present|absent x-txngate={...} mcp={...}
where `mcp` is a JSON object with what arrived: the routing headers as received (`h_method`, `h_name`,
`h_version`: the `Mcp-Method`, `Mcp-Name`, `MCP-Protocol-Version` values, or null) and the JSON-RPC body's
`method`, `name` (params.name, or params.uri for resources/read) and `id` (null when absent or unparsed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings

AGENT_HEADER = "x-txngate-agent"
HEADER_PREFIX = "x-txngate-"
TXN_TOKEN_HEADER = "txn-token"
LOG_PREFIX = "[mcp_server]"


def log(message: str) -> None:
    print(f"{LOG_PREFIX} {message}", file=sys.stderr, flush=True)


def seen_headers(ctx: Context) -> dict[str, Any]:
    """What the HTTP request carrying this call looked like (the Starlette request's headers)."""
    headers = {k.lower(): v for k, v in (ctx.headers or {}).items()}
    txngate = {k: v for k, v in headers.items() if k.startswith(HEADER_PREFIX)}
    return {
        AGENT_HEADER: txngate.get(AGENT_HEADER),
        "txngate_headers": txngate,
        "txn_token_present": TXN_TOKEN_HEADER in headers,
    }


def tool_result(ctx: Context, result: str) -> dict[str, Any]:
    return {"result": result, **seen_headers(ctx)}


def build_server() -> MCPServer:
    mcp = MCPServer(name="txngate-e2e-mcp", log_level="WARNING")
    # The two tool names below are outside MCP's recommended alphabet on purpose; the SDK's warning about
    # them would only clutter every test log.
    logging.getLogger("mcp.shared.tool_name_validation").setLevel(logging.ERROR)

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

    # Names outside MCP's recommended alphabet: the client sends them as `Mcp-Name: =?base64?...?=`.
    @mcp.tool(name="météo")
    def meteo(city: str, ctx: Context) -> dict[str, Any]:
        """The weather of a city (canned answer)."""
        return tool_result(ctx, f"sunny in {city}")

    @mcp.tool(name="données_privées")
    def donnees_privees(ctx: Context) -> dict[str, Any]:
        """Private data (pretend): a policy never names this tool."""
        return tool_result(ctx, "all the private data")

    @mcp.prompt()
    def code_review(code: str, ctx: Context) -> str:
        """Review a piece of code."""
        return json.dumps({"result": f"review {code}", **seen_headers(ctx)}, sort_keys=True)

    @mcp.prompt(name="résumé")
    def resume(name: str, ctx: Context) -> str:
        """Write a résumé."""
        return json.dumps({"result": f"résumé of {name}", **seen_headers(ctx)}, sort_keys=True)

    @mcp.prompt()
    def secret_plan(ctx: Context) -> str:
        """A prompt a policy denies."""
        return json.dumps({"result": "the secret plan", **seen_headers(ctx)}, sort_keys=True)

    @mcp.resource("file:///docs/public.txt", mime_type="text/plain")
    def public_doc() -> str:
        return "public document"

    @mcp.resource("file:///docs/private/plan.txt", mime_type="text/plain")
    def private_plan() -> str:
        return "private plan"

    @mcp.resource("file:///docs/café.txt", mime_type="text/plain")
    def cafe_doc() -> str:
        return "menu du café"

    @mcp.resource("file:///etc/passwd.txt", mime_type="text/plain")
    def passwd() -> str:
        return "root:x:0:0"

    @mcp.resource("file:///docs/reports/{year}.txt", mime_type="text/plain")
    def report(year: str) -> str:
        return f"report {year}"

    return mcp


def _rpc_summary(body: bytes) -> dict[str, Any]:
    """method, name (params.name; params.uri for resources/read) and id of a JSON-RPC request body."""
    try:
        message = json.loads(body)
    except ValueError:
        return {"method": None, "name": None, "id": None}
    if not isinstance(message, dict):
        return {"method": None, "name": None, "id": None}
    params = message.get("params") if isinstance(message.get("params"), dict) else {}
    method = message.get("method")
    name = params.get("uri") if method == "resources/read" else params.get("name")
    return {"method": method, "name": name, "id": message.get("id")}


class RequestLogger:
    """ASGI middleware: one stderr line per HTTP request, written once its body has arrived."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            key = k.decode("latin-1").lower()
            value = v.decode("latin-1")
            # A repeated routing header is shown as received, joined the way an intermediary would.
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        # Read the whole body first (a test server: bodies are small), then replay it to the app.
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        txngate = {k: v for k, v in headers.items() if k.startswith(HEADER_PREFIX)}
        mcp = {
            "h_method": headers.get("mcp-method"),
            "h_name": headers.get("mcp-name"),
            "h_version": headers.get("mcp-protocol-version"),
            **(_rpc_summary(body) if scope["method"] == "POST" else {"method": None, "name": None, "id": None}),
        }
        log(
            f"{scope['method']} {scope['path']} "
            f"txn-token={'present' if TXN_TOKEN_HEADER in headers else 'absent'} "
            f"x-txngate={json.dumps(txngate, sort_keys=True)} "
            f"mcp={json.dumps(mcp, sort_keys=True, ensure_ascii=False)}"
        )
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def serve(port: int, json_response: bool) -> None:
    app = RequestLogger(
        build_server().streamable_http_app(
            streamable_http_path="/mcp",
            json_response=json_response,
            stateless_http=True,
            # The SDK's DNS-rebinding guard rejects a Host it does not expect; a proxy in front of this
            # server (Envoy, a Worker) may rewrite Host, and this server only ever listens on 127.0.0.1.
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
    )

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

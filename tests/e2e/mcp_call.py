#!/usr/bin/env python3
"""Call an MCP server the way a real agent would: the official SDK's streamable HTTP client.

    python tests/e2e/mcp_call.py --url http://127.0.0.1:PORT/mcp \\
        [--header 'Txn-Token: eyJ...'] ... [--list] [--tool NAME [--args '{"k": "v"}']] [--timeout 10]

It initializes a session, lists the tools if --list, calls --tool if given, and prints exactly
one JSON line on stdout:

    {"ok": true|false,
     "result": <the tool result> | null,     # {"content": [...], "structured": {...}|null, "isError": bool}
     "tools": [<tool names>] | null,          # only with --list
     "error": null | {"status": <HTTP status or null>, "code": <JSON-RPC error code, or a
                      word such as "timeout"/"connect_error"/"tool_error", or null>,
                      "message": str, "stage": "initialize"|"list_tools"|"call_tool",
                      "body": <JSON body of the HTTP error response, or its text>,
                      "headers": {<a few useful response headers: www-authenticate, retry-after,
                                   content-type, x-txngate-*>}}}

Exit status: 0 when ok, 1 when the call failed (the JSON line says why), 2 for bad arguments.

How errors reach us: on a non-2xx HTTP answer the SDK's transport calls
`response.raise_for_status()` inside its own task group, so `httpx.HTTPStatusError` comes out of
the `async with` (wrapped in an ExceptionGroup); the response is streamed, so its body would be
gone by then. An httpx response hook therefore reads and records the body of every response with
status >= 400 to a POST before the SDK sees it, and the error line is built from that record. A JSON-RPC
error in a 200 answer arrives as `McpError` from the session (status 200, its code and message).
A tool that fails returns a result with isError true (code "tool_error"). The whole exchange
runs under a deadline (--timeout), so the script never hangs.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from typing import Any

import anyio
import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError

KEPT_RESPONSE_HEADERS = ("www-authenticate", "retry-after", "content-type")


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"header must look like 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def parse_body(text: str) -> Any:
    """JSON body, or the JSON of the first `data:` line of an SSE body, or the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in text.splitlines():
        if line.startswith("data:"):
            try:
                return json.loads(line[5:].strip())
            except ValueError:
                break
    return text


def http_error_info(status: int, headers: httpx.Headers, text: str) -> dict[str, Any]:
    body = parse_body(text)
    code, message = None, text.strip() or httpx.codes.get_reason_phrase(status)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        message = body["error"].get("message", message)
    kept = {k: v for k, v in headers.items() if k in KEPT_RESPONSE_HEADERS or k.startswith("x-txngate-")}
    return {"status": status, "code": code, "message": message, "body": body, "headers": kept}


def flatten(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in flatten(inner)]
    return [exc]


def tool_result_json(result: Any) -> dict[str, Any]:
    return {
        "content": [c.model_dump(mode="json", exclude_none=True) for c in result.content],
        "structured": result.structuredContent,
        "isError": bool(result.isError),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": False, "result": None, "tools": None, "error": None}
    http_errors: list[dict[str, Any]] = []
    stage = "initialize"

    async def record_http_error(response: httpx.Response) -> None:
        # Only POSTs carry our requests; a refused GET (event stream) or DELETE (session end)
        # is not fatal to the SDK and must not be reported as the outcome.
        if response.status_code >= 400 and response.request.method == "POST":
            text = (await response.aread()).decode("utf-8", "replace")
            http_errors.append(http_error_info(response.status_code, response.headers, text))

    timeout = httpx.Timeout(args.timeout)
    client = httpx.AsyncClient(
        headers=dict(args.header), timeout=timeout, event_hooks={"response": [record_http_error]}
    )
    failure: BaseException | None = None
    try:
        with anyio.fail_after(args.timeout):
            async with client, streamable_http_client(args.url, http_client=client) as (read, write, _):
                async with ClientSession(read, write, read_timeout_seconds=timedelta(seconds=args.timeout)) as session:
                    await session.initialize()
                    if args.list:
                        stage = "list_tools"
                        listed = await session.list_tools()
                        out["tools"] = [t.name for t in listed.tools]
                    if args.tool:
                        stage = "call_tool"
                        result = await session.call_tool(args.tool, args.args)
                        out["result"] = tool_result_json(result)
    except BaseException as exc:  # noqa: BLE001 - everything becomes one JSON line
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        failure = exc
        leaves = ", ".join(f"{type(e).__name__}: {e}" for e in flatten(exc))
        print(f"[mcp_call] {stage} failed: {leaves}", file=sys.stderr, flush=True)

    if http_errors:
        # The HTTP answer explains the failure best, whatever exception the SDK raised for it.
        out["error"] = {**http_errors[0], "stage": stage}
    elif failure is not None:
        out["error"] = {"stage": stage, **describe(failure, args.timeout)}
    elif out["result"] is not None and out["result"]["isError"]:
        texts = [c.get("text", "") for c in out["result"]["content"]]
        out["error"] = {"status": 200, "code": "tool_error", "message": " ".join(texts), "stage": stage}
    out["ok"] = out["error"] is None
    return out


def describe(failure: BaseException, timeout: float) -> dict[str, Any]:
    leaves = flatten(failure)
    for exc in leaves:
        if isinstance(exc, McpError):
            return {"status": 200, "code": exc.error.code, "message": exc.error.message}
    for exc in leaves:
        if isinstance(exc, httpx.HTTPStatusError):
            return {"status": exc.response.status_code, "code": None, "message": str(exc)}
        if isinstance(exc, httpx.ConnectError):
            return {"status": None, "code": "connect_error", "message": str(exc) or repr(exc)}
        if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
            return {"status": None, "code": "timeout", "message": f"no answer within {timeout} s"}
    exc = leaves[0]
    return {"status": None, "code": type(exc).__name__, "message": str(exc) or repr(exc)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="MCP endpoint, e.g. http://127.0.0.1:8080/mcp")
    parser.add_argument(
        "--header", type=parse_header, action="append", default=[], help="'Name: value', repeatable"
    )
    parser.add_argument("--tool", help="tool to call")
    parser.add_argument("--args", type=json.loads, default={}, help="tool arguments as a JSON object")
    parser.add_argument("--list", action="store_true", help="list the tools")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for the whole exchange")
    args = parser.parse_args(argv)
    if not isinstance(args.args, dict):
        parser.error("--args must be a JSON object")

    out = anyio.run(run, args)
    print(json.dumps(out, sort_keys=True), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Call an MCP server the way a real agent would: the official Python SDK 2.x client over streamable HTTP.

    python tests/e2e/mcp_call.py --url http://127.0.0.1:PORT/mcp [--legacy] \\
        [--header 'Txn-Token: eyJ...'] ... [--override-header 'Mcp-Name: other'] ... [--drop-header NAME] ...
        [--list] [--list-prompts] [--list-resources]
        [--tool NAME [--args '{"k": "v"}']] [--prompt NAME [--prompt-args '{"k": "v"}']] [--read URI]
        [--timeout 10]

By default the client speaks MCP 2026-07-28: it opens with `server/discover` (no initialize, no session; it
falls back to `initialize` when discover is refused), every request carries `Mcp-Method`, name-bearing ones
`Mcp-Name` (`=?base64?...?=` when the value is not plain printable ASCII), every body `params._meta`.
`--legacy` speaks 2025-11-25 only (`initialize`, no routing headers).

`--override-header 'Name: value'` replaces that header's value on every POST that carries it, and sets it on the
POST of a name-bearing request (tools/call, prompts/get, resources/read; also in --legacy mode, which sends no
routing headers), after the SDK has set its headers (an httpx request hook): a tampered routing header for the
negative tests. `--drop-header NAME` removes a header the same way. Operations run in this order: lists, tool, prompt, read.

It prints exactly one JSON line on stdout:

    {"ok": true|false,
     "protocol": <negotiated protocol version> | null,
     "result": <the tool result> | null,     # {"content": [...], "structured": {...}|null, "isError": bool}
     "prompt": <the prompt> | null,          # {"description": str|null, "messages": [...]}
     "resource": <the read> | null,          # {"contents": [{"uri", "mimeType", "text"|"blob"}...]}
     "tools" / "prompts": [<names>] | null,  # only with --list / --list-prompts
     "resources": [<uris>] | null, "templates": [<uri templates>] | null,   # only with --list-resources
     "error": null | {"status": <HTTP status or null>, "code": <JSON-RPC error code, or a
                      word such as "timeout"/"connect_error"/"tool_error", or null>,
                      "message": str, "stage": "initialize"|"list_tools"|"list_prompts"|"list_resources"|
                      "list_resource_templates"|"call_tool"|"get_prompt"|"read_resource",
                      "body": <JSON body of the HTTP error response, or its text>,
                      "headers": {<a few useful response headers: www-authenticate, retry-after,
                                   content-type, cache-control, x-txngate-*>}}}

The stage `initialize` is the connection's opening exchange, whichever it was (server/discover, initialize).
Exit status: 0 when ok, 1 when the call failed (the JSON line says why), 2 for bad arguments.

How errors reach us: on a non-2xx HTTP answer the SDK's transport turns the JSON-RPC error in the body (or a
stand-in for the status) into an `MCPError` for the waiting request; a refused `server/discover` makes the
client fall back to `initialize`, whose refusal then ends the connection. The HTTP status and headers would be
lost on the way, so an httpx response hook reads and records the body of every POST answered with status >= 400
before the SDK sees it, and the error line is built from the first such record (the refusal that decided the
outcome). A JSON-RPC error in a 200 answer arrives as `MCPError` (status 200, its code and message). A tool
that fails returns a result with isError true (code "tool_error"). The whole exchange runs under a deadline
(--timeout), so the script never hangs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

KEPT_RESPONSE_HEADERS = ("www-authenticate", "retry-after", "content-type", "cache-control")
NAME_BEARING = ("tools/call", "prompts/get", "resources/read")


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"header must look like 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


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


def http_error_info(status: int, headers: httpx2.Headers, text: str) -> dict[str, Any]:
    body = parse_body(text)
    code, message = None, text.strip() or f"HTTP {status}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        message = body["error"].get("message", message)
    kept = {k.lower(): v for k, v in headers.items()
            if k.lower() in KEPT_RESPONSE_HEADERS or k.lower().startswith("x-txngate-")}
    return {"status": status, "code": code, "message": message, "body": body, "headers": kept}


def flatten(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in flatten(inner)]
    return [exc]


def dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def tool_result_json(result: Any) -> dict[str, Any]:
    return {
        "content": [dump(c) for c in result.content],
        "structured": result.structured_content,
        "isError": bool(result.is_error),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ok": False, "protocol": None, "result": None, "prompt": None, "resource": None,
        "tools": None, "prompts": None, "resources": None, "templates": None, "error": None,
    }
    http_errors: list[dict[str, Any]] = []
    stage = "initialize"
    overrides = dict(getattr(args, "override_header", None) or [])
    drops = [d.lower() for d in (getattr(args, "drop_header", None) or [])]

    async def tamper(request: httpx2.Request) -> None:
        # After the SDK set its per-message headers: replace or drop what the test asks for.
        if request.method != "POST":
            return
        try:
            method = json.loads(request.content).get("method")
        except (ValueError, AttributeError):
            method = None
        for name, value in overrides.items():
            if name in request.headers or method in NAME_BEARING:
                request.headers[name] = value
        for name in drops:
            if name in request.headers:
                del request.headers[name]

    async def record_http_error(response: httpx2.Response) -> None:
        # Only POSTs carry our requests; a refused GET (event stream) or DELETE (session end)
        # is not fatal to the SDK and must not be reported as the outcome.
        if response.status_code >= 400 and response.request.method == "POST":
            text = (await response.aread()).decode("utf-8", "replace")
            http_errors.append(http_error_info(response.status_code, response.headers, text))

    client = httpx2.AsyncClient(
        headers=dict(args.header), timeout=httpx2.Timeout(args.timeout),
        event_hooks={"request": [tamper], "response": [record_http_error]},
    )
    failure: BaseException | None = None
    try:
        with anyio.fail_after(args.timeout):
            async with client:
                transport = streamable_http_client(args.url, http_client=client)
                mode = "legacy" if args.legacy else "auto"
                async with Client(transport, mode=mode, read_timeout_seconds=args.timeout, cache=None) as mcp:
                    out["protocol"] = mcp.session.protocol_version
                    if args.list:
                        stage = "list_tools"
                        out["tools"] = [t.name for t in (await mcp.list_tools()).tools]
                    if args.list_prompts:
                        stage = "list_prompts"
                        out["prompts"] = [p.name for p in (await mcp.list_prompts()).prompts]
                    if args.list_resources:
                        stage = "list_resources"
                        out["resources"] = [r.uri for r in (await mcp.list_resources()).resources]
                        stage = "list_resource_templates"
                        listed = await mcp.list_resource_templates()
                        out["templates"] = [t.uri_template for t in listed.resource_templates]
                    if args.tool:
                        stage = "call_tool"
                        out["result"] = tool_result_json(await mcp.call_tool(args.tool, args.args))
                    if args.prompt:
                        stage = "get_prompt"
                        got = await mcp.get_prompt(args.prompt, args.prompt_args)
                        out["prompt"] = {"description": got.description, "messages": [dump(m) for m in got.messages]}
                    if args.read:
                        stage = "read_resource"
                        read = await mcp.read_resource(args.read)
                        out["resource"] = {"contents": [dump(c) for c in read.contents]}
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
        if isinstance(exc, MCPError):
            return {"status": 200, "code": exc.code, "message": exc.message}
    for exc in leaves:
        if isinstance(exc, httpx2.HTTPStatusError):
            return {"status": exc.response.status_code, "code": None, "message": str(exc)}
        if isinstance(exc, httpx2.ConnectError):
            return {"status": None, "code": "connect_error", "message": str(exc) or repr(exc)}
        if isinstance(exc, (TimeoutError, httpx2.TimeoutException)):
            return {"status": None, "code": "timeout", "message": f"no answer within {timeout} s"}
    exc = leaves[0]
    return {"status": None, "code": type(exc).__name__, "message": str(exc) or repr(exc)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="MCP endpoint, e.g. http://127.0.0.1:8080/mcp")
    p.add_argument("--legacy", action="store_true", help="speak MCP 2025-11-25 (initialize) only")
    p.add_argument("--header", type=parse_header, action="append", default=[], help="'Name: value', repeatable")
    p.add_argument("--override-header", type=parse_header, action="append", default=[],
                   help="'Name: value': replace that header where present, set it on name-bearing requests")
    p.add_argument("--drop-header", action="append", default=[], help="remove that header from every POST")
    p.add_argument("--tool", help="tool to call")
    p.add_argument("--args", type=json_object, default={}, help="tool arguments as a JSON object")
    p.add_argument("--prompt", help="prompt to get")
    p.add_argument("--prompt-args", type=json_object, default=None, help="prompt arguments as a JSON object")
    p.add_argument("--read", help="resource URI to read")
    p.add_argument("--list", action="store_true", help="list the tools")
    p.add_argument("--list-prompts", action="store_true", help="list the prompts")
    p.add_argument("--list-resources", action="store_true", help="list the resources and resource templates")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds for the whole exchange")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = anyio.run(run, args)
    print(json.dumps(out, sort_keys=True, ensure_ascii=False), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

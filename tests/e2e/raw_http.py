"""Plain-HTTP helpers for what the official MCP client cannot express: a hand-made JSON-RPC
body, a missing or malformed header, a bad Accept, a batch, a huge body, raw status codes.

    import raw_http
    r = raw_http.post_jsonrpc(url, raw_http.tools_call_body("send_email", {"to": "a"}),
                              headers={"Txn-Token": tok})
    r["status"], r["headers"]["content-type"], r["json"]  # json: the JSON-RPC message (also from SSE)

Command line (prints one JSON line {"status", "headers", "text", "json"}):

    python tests/e2e/raw_http.py --url URL [--header 'Name: value'] ... \\
        (--body JSON | --tool NAME [--args JSON] | --list | --initialize) [--timeout 10]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Mapping

import httpx

PROTOCOL_VERSION = "2025-06-18"
MCP_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": PROTOCOL_VERSION,
}


def initialize_body(request_id: int = 0) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "txngate-e2e-raw", "version": "0"},
        },
    }


def tools_list_body(request_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": {}}


def tools_call_body(name: str, arguments: Mapping[str, Any] | None = None, request_id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": dict(arguments or {})},
    }


def sse_messages(text: str) -> list[Any]:
    """The JSON of each `data:` field of an SSE body (events with non-JSON data are skipped)."""
    messages = []
    for event in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(l[5:].lstrip() for l in event.splitlines() if l.startswith("data:"))
        if data:
            try:
                messages.append(json.loads(data))
            except ValueError:
                pass
    return messages


def post_jsonrpc(
    url: str,
    body: Any,
    headers: Mapping[str, str] | None = None,
    *,
    timeout: float = 10.0,
    mcp_headers: bool = True,
) -> dict[str, Any]:
    """POST `body` (a JSON value, or bytes/str sent as is) and return
    {"status", "headers" (lower-case names), "text", "json"}; "json" is the parsed JSON body or,
    for an SSE answer, the last JSON-RPC message in it (None if there is none).
    mcp_headers=False leaves out the default Content-Type/Accept/MCP-Protocol-Version."""
    sent = dict(MCP_HEADERS) if mcp_headers else {}
    sent.update(headers or {})
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    with httpx.Client(timeout=timeout) as client:
        response = client.post(url, content=content, headers=sent)
    return response_dict(response)


def response_dict(response: httpx.Response) -> dict[str, Any]:
    text = response.text
    content_type = response.headers.get("content-type", "")
    parsed = None
    if content_type.startswith("text/event-stream"):
        messages = sse_messages(text)
        parsed = messages[-1] if messages else None
    else:
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
    return {
        "status": response.status_code,
        "headers": {k.lower(): v for k, v in response.headers.items()},
        "text": text,
        "json": parsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--body", help="JSON-RPC body as JSON text, sent as is")
    what.add_argument("--tool", help="send tools/call for this tool")
    what.add_argument("--list", action="store_true", help="send tools/list")
    what.add_argument("--initialize", action="store_true", help="send initialize")
    parser.add_argument("--args", type=json.loads, default={}, help="tool arguments (JSON object)")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)

    headers = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            parser.error(f"header must look like 'Name: value', got {h!r}")
        headers[name.strip()] = value.strip()
    if args.body is not None:
        body: Any = args.body
    elif args.tool:
        body = tools_call_body(args.tool, args.args)
    elif args.list:
        body = tools_list_body()
    else:
        body = initialize_body()

    try:
        out = post_jsonrpc(args.url, body, headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        out = {"status": None, "headers": {}, "text": "", "json": None, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out, sort_keys=True), flush=True)
    return 0 if out["status"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())

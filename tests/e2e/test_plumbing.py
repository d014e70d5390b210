"""Self-test of the end-to-end plumbing: the MCP server, the MCP client and the process helpers.

    .venv/bin/pytest -q tests/e2e/test_plumbing.py
"""

from __future__ import annotations

import sys
import time

import pytest

import raw_http
from procs import (
    CLIENTS, E2E_DIR, Proc, ProcError, free_port, mcp_call, mcp_server, pid_alive, port_accepts, server_requests,
)

TOOLS = {"send_email", "calendar_read", "calendar_write", "search_web", "delete_repo", "météo", "données_privées"}
PROMPTS = {"code_review", "résumé", "secret_plan"}
RESOURCES = {"file:///docs/public.txt", "file:///docs/private/plan.txt", "file:///docs/café.txt", "file:///etc/passwd.txt"}


@pytest.mark.parametrize("json_response", [True, False], ids=["json", "sse"])
def test_server_and_client(json_response, tmp_path):
    with mcp_server(json_response=json_response, log_dir=tmp_path) as server:
        port = server.wait_listening()
        server.wait_port(port)
        url = f"http://127.0.0.1:{port}/mcp"

        # The wire format really is the one asked for.
        raw = raw_http.post_jsonrpc(url, raw_http.tools_list_body())
        assert raw["status"] == 200
        expected_type = "application/json" if json_response else "text/event-stream"
        assert raw["headers"]["content-type"].startswith(expected_type)
        assert {t["name"] for t in raw["json"]["result"]["tools"]} == TOOLS

        listed = mcp_call(url, headers={"Txn-Token": "not-checked-here"}, list_tools=True)
        assert listed["ok"], listed
        assert set(listed["tools"]) == TOOLS
        assert listed["exit_code"] == 0

        called = mcp_call(
            url,
            headers={"Txn-Token": "tok", "X-Txngate-Agent": "agent-42", "X-Txngate-Scope": "email.send"},
            tool="send_email",
            args={"to": "bob@example.com", "subject": "hi", "body": "hello"},
        )
        assert called["ok"], called
        structured = called["result"]["structured"]
        assert structured["result"] == "sent to bob@example.com"
        assert structured["x-txngate-agent"] == "agent-42"
        assert structured["txngate_headers"] == {"x-txngate-agent": "agent-42", "x-txngate-scope": "email.send"}
        assert structured["txn_token_present"] is True
        assert called["result"]["isError"] is False

        anonymous = mcp_call(url, tool="calendar_read", args={"day": "monday"})
        assert anonymous["ok"], anonymous
        assert anonymous["result"]["structured"]["x-txngate-agent"] is None
        assert anonymous["result"]["structured"]["txn_token_present"] is False

        # The server logs what it saw (never the token itself).
        log = server.stderr_text()
        assert "txn-token=present" in log and '"x-txngate-agent": "agent-42"' in log
        assert "tok" not in log.replace("txn-token", "")

        pid = server.pid
        assert pid_alive(pid)

    assert not pid_alive(pid), f"server pid {pid} still alive after stop"
    assert not port_accepts(port)


@pytest.mark.parametrize("client", CLIENTS)
def test_every_client_lists_gets_and_reads_and_the_server_logs_what_arrived(client, tmp_path):
    with mcp_server(json_response=True, log_dir=tmp_path) as server:
        url = f"http://127.0.0.1:{server.wait_listening()}/mcp"
        out = mcp_call(url, client=client, list_tools=True, list_prompts=True, list_resources=True, tool="météo",
                       args={"city": "Nice"}, prompt="résumé", prompt_args={"name": "Zoé"}, read="file:///docs/café.txt")
        assert out["ok"], out
        assert out["protocol"] == ("2026-07-28" if client == "py" else "2025-11-25")
        assert (set(out["tools"]), set(out["prompts"]), set(out["resources"])) == (TOOLS, PROMPTS, RESOURCES)
        assert out["templates"] == ["file:///docs/reports/{year}.txt"]
        assert out["result"]["structured"]["result"] == "sunny in Nice"
        assert out["resource"]["contents"][0]["text"] == "menu du café"
        assert out["prompt"]["messages"][0]["role"] == "user"
        seen = {r["mcp"]["method"]: r["mcp"] for r in server_requests(server.stderr_text())}
        if client == "py":
            assert "server/discover" in seen and "initialize" not in seen
            assert seen["tools/call"]["h_name"] == "=?base64?bcOpdMOpbw==?=" and seen["tools/call"]["name"] == "météo"
            assert seen["resources/read"]["h_method"] == "resources/read"
        else:
            assert "initialize" in seen and seen["tools/call"]["h_name"] is None

        # A tampered header: the SDK's own server refuses a modern mismatch; the TypeScript client (2025-11-25)
        # gets it through, which is why the gateway must check it.
        tampered = mcp_call(url, client=client, tool="calendar_read", args={"day": "mon"},
                            override_headers={"Mcp-Name": "search_web"})
        if client == "py":
            assert (tampered["error"]["status"], tampered["error"]["code"]) == (400, -32020), tampered
        assert any(r["mcp"]["h_name"] == "search_web" for r in server_requests(server.stderr_text()))


def test_mcp_call_reports_errors_as_json(tmp_path):
    # A tool error (unknown tool) and a refused connection both come back as one JSON line.
    with mcp_server(json_response=True, log_dir=tmp_path) as server:
        url = f"http://127.0.0.1:{server.wait_listening()}/mcp"
        unknown = mcp_call(url, tool="no_such_tool", args={})
        assert not unknown["ok"] and unknown["exit_code"] == 1
        assert unknown["error"]["status"] == 200 and unknown["error"]["code"] == "tool_error"

    closed = mcp_call(f"http://127.0.0.1:{free_port()}/mcp", list_tools=True, timeout=3)
    assert not closed["ok"]
    assert closed["error"]["code"] == "connect_error" and closed["error"]["status"] is None


@pytest.mark.parametrize("deny,status,stage", [("tools/call", 403, "call_tool"), ("initialize", 401, "initialize")])
def test_mcp_call_reports_http_status_and_jsonrpc_error(deny, status, stage, tmp_path):
    # A stand-in for the proxy: refuses one JSON-RPC method with an HTTP status + JSON-RPC error body.
    argv = [sys.executable, str(E2E_DIR / "deny_stub.py"), "--deny", deny, "--status", str(status), "--port", "0"]
    with Proc(argv, name="deny_stub", log_dir=tmp_path) as stub:
        url = f"http://127.0.0.1:{stub.wait_listening()}/mcp"
        denied = mcp_call(url, headers={"Txn-Token": "x"}, tool="delete_repo", args={"name": "r"}, timeout=5)
    assert not denied["ok"] and denied["exit_code"] == 1
    err = denied["error"]
    assert err["status"] == status and err["stage"] == stage
    assert err["code"] == -32001 and err["message"] == f"denied by stub: {deny}"
    assert err["headers"].get("x-txngate-reason") == "stub"
    assert err["body"]["error"]["code"] == -32001


def test_proc_stops_a_process_that_ignores_sigterm(tmp_path):
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('LISTENING 1', flush=True); time.sleep(60)"
    proc = Proc([sys.executable, "-c", script], name="stubborn", log_dir=tmp_path).start()
    assert proc.wait_listening(timeout=10) == 1
    started = time.monotonic()
    proc.stop(grace=0.5)
    assert time.monotonic() - started < 5
    assert not pid_alive(proc.pid)
    proc.stop()  # twice is fine


def test_proc_reports_early_exit(tmp_path):
    with Proc([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"],
              name="early", log_dir=tmp_path) as proc:
        with pytest.raises(ProcError, match=r"(?s)exited.*boom"):
            proc.wait_port(free_port(), timeout=5)

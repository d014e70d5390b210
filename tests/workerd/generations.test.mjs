// Both MCP generations through the Worker in workerd, with the official clients: the Python SDK 2.x at
// 2026-07-28 (server/discover, Mcp-Method / Mcp-Name routing headers, base64 names, _meta) and at 2025-11-25,
// and the TypeScript SDK (2025-11-25). tools/call, prompts/get and resources/read allowed and refused, names that
// need the base64 form, a tampered Mcp-Name (refused, and never at the origin: its request log says so), and
// the filtered, private prompt and resource lists.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  AGENT, CLIENTS, claims, keygen, mcpCall, mint, originRequests, policy, post, removeDir, rpc, startMcpServer,
  startWorker, tempDir, toolCall,
} from "./helpers.mjs";

const PROMPTS = { code_review: { scopes: ["prompts:review"] }, "résumé": { scopes: ["prompts:review"] }, "*": { effect: "deny" } };
const RESOURCES = { "file:///docs/**": { scopes: ["docs:read"] }, "file:///docs/public.txt": {}, "*": { effect: "deny" } };
const TOOLS = {
  calendar_read: { scopes: ["calendar:read"] },
  // Not MCP's recommended alphabet: allowed because a rule names it exactly. `données_privées`: no rule.
  "météo": { scopes: ["calendar:read"] },
  "*": { effect: "deny" },
};

describe("both MCP generations through the Worker", () => {
  let dir, key, origin, worker;

  before(async () => {
    dir = tempDir("generations");
    key = keygen("EdDSA", "k-gen", dir);
    origin = await startMcpServer();
    const doc = policy({ jwks: { keys: [key.publicJwk] }, tools: TOOLS, prompts: PROMPTS, resources: RESOURCES, maxScopes: ["calendar:*", "email:send", "prompts:review", "docs:read"] });
    worker = await startWorker({ vars: { TXNGATE_POLICY: doc, ORIGIN_URL: origin.url } });
  });

  after(async () => {
    await worker?.stop();
    await origin?.stop();
    if (dir) removeDir(dir);
  });

  const agentToken = (name, scope) => {
    const agent = AGENT(name);
    return { agent, token: mint(key, claims({ scope }), { act: [agent] }) };
  };
  const seenBy = (agent) => originRequests(origin).filter((r) => r.xTxngate["x-txngate-agent"] === agent).map((r) => r.mcp);

  for (const client of CLIENTS) {
    test(`${client}: tools/call, prompts/get and resources/read with base64 names are allowed`, async () => {
      const { agent, token } = agentToken(`ok-${client}`, "calendar:read prompts:review docs:read");
      const out = await mcpCall(`${worker.url}/mcp`, { client, token, tool: "météo", args: { city: "Paris" }, prompt: "résumé", promptArgs: { name: "Zoé" }, read: "file:///docs/café.txt" });
      assert.equal(out.ok, true, JSON.stringify(out));
      assert.equal(out.protocol, client === "py" ? "2026-07-28" : "2025-11-25");
      assert.equal(out.result.structured.result, "sunny in Paris");
      assert.equal(out.result.structured["x-txngate-agent"], agent);
      assert.match(JSON.parse(out.prompt.messages[0].content.text).result, /résumé of Zoé/);
      assert.equal(out.resource.contents[0].text, "menu du café");

      const seen = seenBy(agent);
      const named = Object.fromEntries(seen.filter((r) => ["tools/call", "prompts/get", "resources/read"].includes(r.method)).map((r) => [r.method, r]));
      assert.equal(named["tools/call"].name, "météo");
      assert.equal(named["prompts/get"].name, "résumé");
      assert.equal(named["resources/read"].name, "file:///docs/café.txt");
      if (client === "py") {
        assert.equal(seen[0].method, "server/discover", JSON.stringify(seen));
        assert.ok(!seen.some((r) => r.method === "initialize"));
        assert.equal(named["tools/call"].h_name, "=?base64?bcOpdMOpbw==?=");
        assert.equal(named["prompts/get"].h_name, "=?base64?csOpc3Vtw6k=?=");
        assert.equal(named["resources/read"].h_name, "=?base64?ZmlsZTovLy9kb2NzL2NhZsOpLnR4dA==?=");
      } else {
        assert.equal(seen[0].method, "initialize", JSON.stringify(seen));
        assert.ok(seen.every((r) => r.h_name === null));
      }
      const allowed = worker.audit().filter((r) => r.verdict === "allow" && r.agent === agent);
      assert.ok(allowed.some((r) => r.prompt === "résumé"), JSON.stringify(allowed));
      assert.ok(allowed.some((r) => r.resource === "file:///docs/café.txt"), JSON.stringify(allowed));
    });

    test(`${client}: refusals of tools, prompts and resources (403, -31403, the request's id)`, async () => {
      const cases = [
        ["calendar:read", { tool: "données_privées" }, "tool.name_alphabet"],
        ["prompts:review", { prompt: "secret_plan" }, "prompt.denied"],
        ["docs:read", { prompt: "code_review", promptArgs: { code: "x" } }, "prompt.scope"],
        ["docs:read", { read: "file:///etc/passwd.txt" }, "resource.denied"],
        ["prompts:review", { read: "file:///docs/private/plan.txt" }, "resource.scope"],
      ];
      for (const [scope, call, reason] of cases) {
        const { agent, token } = agentToken(`no-${client}-${reason}`, scope);
        const out = await mcpCall(`${worker.url}/mcp`, { client, token, ...call });
        assert.equal(out.ok, false, JSON.stringify(out));
        assert.deepEqual([out.error.status, out.error.code, out.error.body.error.data.reason], [403, -31403, reason], JSON.stringify(out.error));
        assert.equal(typeof out.error.body.id, "number", "the refusal carries the request's id");
        if (reason.endsWith(".scope")) assert.match(out.error.headers["www-authenticate"], /^Txn-Token error="insufficient_scope", scope="/);
        const name = call.tool ?? call.prompt ?? call.read;
        assert.ok(!seenBy(agent).some((r) => r.name === name), `${reason}: the refused request never reached the origin`);
      }
    });

    test(`${client}: a tampered Mcp-Name is refused (400, -32020) and never reaches the origin`, async () => {
      const { agent, token } = agentToken(`tamper-${client}`, "calendar:read docs:read");
      const forged = `file:///docs/public.txt?${client}`;
      let out = await mcpCall(`${worker.url}/mcp`, { client, token, read: "file:///docs/private/plan.txt", overrides: { "Mcp-Name": forged } });
      assert.deepEqual([out.error?.status, out.error?.code, out.error?.stage], [400, -32020, "read_resource"], JSON.stringify(out));
      assert.equal(out.error.body.error.data.reason, "mcp.header_mismatch");
      assert.equal(typeof out.error.body.id, "number");
      out = await mcpCall(`${worker.url}/mcp`, { client, token, tool: "calendar_read", args: { day: "mon" }, overrides: { "Mcp-Name": "delete_repo" } });
      assert.deepEqual([out.error?.status, out.error?.code], [400, -32020], JSON.stringify(out));
      const seen = seenBy(agent);
      assert.ok(seen.length > 0, "the opening requests reached the origin");
      assert.ok(!seen.some((r) => r.method === "resources/read" || r.method === "tools/call"), JSON.stringify(seen));
      assert.ok(!originRequests(origin).some((r) => r.mcp.h_name === forged));
    });

    test(`${client}: prompts/list, resources/list and templates are filtered per caller`, async () => {
      const { token } = agentToken(`lists-${client}`, "prompts:review");
      let out = await mcpCall(`${worker.url}/mcp`, { client, token, list: true, listPrompts: true, listResources: true });
      assert.equal(out.ok, true, JSON.stringify(out));
      assert.deepEqual(out.prompts.sort(), ["code_review", "résumé"]);
      assert.deepEqual(out.resources, ["file:///docs/public.txt"]);
      assert.deepEqual(out.templates, []);
      assert.deepEqual(out.tools, []);
      const wide = agentToken(`lists-wide-${client}`, "docs:read calendar:read");
      out = await mcpCall(`${worker.url}/mcp`, { client, token: wide.token, list: true, listPrompts: true, listResources: true });
      assert.equal(out.ok, true, JSON.stringify(out));
      assert.deepEqual(out.prompts, []);
      assert.deepEqual(out.resources.sort(), ["file:///docs/café.txt", "file:///docs/private/plan.txt", "file:///docs/public.txt"]);
      assert.deepEqual(out.templates, ["file:///docs/reports/{year}.txt"]);
      assert.deepEqual(out.tools.sort(), ["calendar_read", "météo"]);
    });
  }

  test("filtered lists are marked private: cacheScope in the result, Cache-Control on the response", async () => {
    const { token } = agentToken("lists-raw", "prompts:review");
    for (const [id, method] of [[1, "tools/list"], [2, "prompts/list"], [3, "resources/list"], [4, "resources/templates/list"]]) {
      const r = await post(worker.url, { token, body: rpc(id, method) });
      assert.equal(r.status, 200, r.text);
      const message = r.json ?? JSON.parse(r.text.split("\n").filter((l) => l.startsWith("data:")).pop().slice(5));
      assert.equal(message.result.cacheScope, "private", `${method}: ${r.text}`);
      assert.match(r.headers.get("cache-control") ?? "", /private/, method);
    }
  });

  test("modern requests: a missing Mcp-Name is refused; a base64-wrapped ASCII name is decoded; bad base64 is refused", async () => {
    const { token } = agentToken("headers", "calendar:read");
    const out = await mcpCall(`${worker.url}/mcp`, { token, tool: "calendar_read", args: { day: "mon" }, drop: ["Mcp-Name"] });
    assert.deepEqual([out.error?.status, out.error?.code, out.error?.body?.error?.data?.reason], [400, -32020, "mcp.header_missing"], JSON.stringify(out));
    const modern = { "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call" };
    // The SDK's server requires the 2026-07-28 envelope in params._meta.
    const meta = { "io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {} };
    const body = rpc(5, "tools/call", { name: "calendar_read", arguments: { day: "mon" }, _meta: meta });
    let r = await post(worker.url, { token, body, headers: { ...modern, "mcp-name": "=?base64?Y2FsZW5kYXJfcmVhZA==?=" } });
    assert.equal(r.status, 200, r.text);
    r = await post(worker.url, { token, body: toolCall(6, "calendar_read", { day: "mon" }), headers: { ...modern, "mcp-name": "=?base64?Y2FsZW5kYXJfcmVhZA=?=" } });
    assert.equal(r.status, 400, r.text);
    assert.equal(r.json.error.data.reason, "mcp.header_invalid");
    assert.equal(r.json.id, 6);
  });
});

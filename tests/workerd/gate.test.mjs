// The Worker in workerd in front of the real MCP server: allowed calls, refusals with their headers and
// JSON-RPC bodies, identity headers, tools/list filtering.

import assert from "node:assert/strict";
import { request as httpRequest } from "node:http";
import { after, before, describe, test } from "node:test";

import {
  AGENT, TOKEN_TOOL, claims, keygen, mcpCall, mint, policy, post, removeDir, rpc, startMcpServer, startWorker,
  tempDir, toolCall,
} from "./helpers.mjs";

const A1 = AGENT("a1");
const EMAIL = { to: "bob@example.com", subject: "hi", body: "hello" };

/** Replaces the signature's first character: a well-formed token that must not verify. */
function tamper(token) {
  const [h, p, s] = token.split(".");
  return `${h}.${p}.${s[0] === "A" ? "B" : "A"}${s.slice(1)}`;
}

describe("txngate Worker in workerd", () => {
  let dir, keys, origin, jsonOrigin, worker, jsonWorker;

  before(async () => {
    dir = tempDir("gate");
    keys = { ed: keygen("EdDSA", "k-ed", dir), es: keygen("ES256", "k-es", dir) };
    if (TOKEN_TOOL === "cli") {
      keys.rs = keygen("RS256", "k-rs", dir);
      keys.ps = keygen("PS256", "k-ps", dir);
    }
    const jwks = { keys: Object.values(keys).map((k) => k.publicJwk) };
    [origin, jsonOrigin] = await Promise.all([startMcpServer(), startMcpServer({ json: true })]);
    worker = await startWorker({ vars: { TXNGATE_POLICY: policy({ jwks }), ORIGIN_URL: origin.url } });
    jsonWorker = await startWorker({ vars: { TXNGATE_POLICY: policy({ jwks }), ORIGIN_URL: jsonOrigin.url } });
  });

  after(async () => {
    await Promise.all([worker?.stop(), jsonWorker?.stop()]);
    await Promise.all([origin?.stop(), jsonOrigin?.stop()]);
    if (dir) removeDir(dir);
  });

  test("an allowed tools/call returns the tool result; the origin sees the verified agent, never a spoofed one", async () => {
    const token = mint(keys.ed, claims(), { act: [A1] });
    const out = await mcpCall(`${worker.url}/mcp`, {
      token,
      headers: ["X-Txngate-Agent: spiffe://evil.example/agent/mallory", "x-txngate-sub: root"],
      tool: "send_email",
      args: EMAIL,
    });
    assert.equal(out.ok, true, JSON.stringify(out));
    const seen = out.result.structured;
    assert.equal(seen.result, "sent to bob@example.com");
    assert.equal(seen["x-txngate-agent"], A1);
    assert.deepEqual(Object.keys(seen.txngate_headers).sort(), ["x-txngate-agent", "x-txngate-sub", "x-txngate-txn"]);
    assert.equal(seen.txngate_headers["x-txngate-sub"], "user-1");
    assert.equal(seen.txn_token_present, true, "the Txn-Token is forwarded");

    const record = worker.audit().find((r) => r.tool === "send_email" && r.verdict === "allow");
    assert.ok(record, "an audit line for the allowed call");
    assert.equal(record.agent, A1);
    assert.match(record.token_sha256, /^[0-9a-f]{64}$/);
    assert.ok(!worker.logs.some((l) => l.includes(token.split(".")[2])), "the token never appears in the log");
  });

  test("the Txn-Token reaches the origin unmodified", async () => {
    const token = mint(keys.ed, claims(), { act: [A1] });
    const r = await post(jsonWorker.url, { token, body: toolCall(1, "calendar_read", { day: "mon" }) });
    assert.equal(r.status, 200, r.text);
    // The origin reports whether the header arrived; the token itself is checked byte for byte via the
    // audit hash (sha256 of the exact header value the Worker received and forwarded).
    assert.equal(r.json.result.structuredContent.txn_token_present, true);
  });

  for (const alg of ["es", "rs", "ps"]) {
    test(`${alg.toUpperCase()}256 tokens verify with WebCrypto (no native fallback); a tampered signature is refused`, async (t) => {
      if (!keys[alg]) return t.skip("RSA keys need the project CLI (PyJWT fallback makes EdDSA/ES256 only)");
      const token = mint(keys[alg], claims(), { act: [A1] });
      const ok = await post(jsonWorker.url, { token, body: toolCall(2, "calendar_read", { day: "tue" }) });
      assert.equal(ok.status, 200, ok.text);
      const bad = await post(jsonWorker.url, { token: tamper(token), body: toolCall(3, "calendar_read", { day: "tue" }) });
      assert.equal(bad.status, 401);
      assert.equal(bad.json.error.data.reason, "token.signature");
      assert.ok(!jsonWorker.logs.some((l) => l.includes("webcrypto.import_failed")), jsonWorker.logs.join("\n"));
    });
  }

  test("a tampered EdDSA signature is refused (WebCrypto says no)", async () => {
    const token = tamper(mint(keys.ed, claims(), { act: [A1] }));
    const r = await post(jsonWorker.url, { token, body: toolCall(4, "calendar_read", { day: "wed" }) });
    assert.equal(r.status, 401);
    assert.equal(r.json.error.data.reason, "token.signature");
    assert.equal(r.json.error.code, -31401);
    assert.equal(r.json.id, 4, "the refusal carries the request's id");
  });

  test("401 without a token: a Txn-Token challenge (no Bearer, no resource metadata), JSON-RPC error -31401", async () => {
    // The policy still sets mcp.resource_metadata (deprecated): it is no longer advertised.
    const out = await mcpCall(`${worker.url}/mcp`, { tool: "send_email", args: EMAIL });
    assert.equal(out.ok, false);
    assert.equal(out.error.status, 401);
    assert.equal(out.error.code, -31401);
    assert.equal(out.error.stage, "initialize");
    assert.equal(out.error.headers["www-authenticate"], 'Txn-Token error="invalid_token", error_description="token.missing"');
    assert.equal(out.error.body.error.data.reason, "token.missing");
    assert.equal(origin.requests.filter((l) => !l.includes("txn-token=present")).length, 0, "nothing without a token reached the origin");
  });

  test("401 for an expired token and for an access token (typ JWT)", async () => {
    const now = Math.floor(Date.now() / 1000);
    const expired = mint(keys.ed, claims({ iat: now - 600, exp: now - 300 }), { act: [A1] });
    let r = await post(jsonWorker.url, { token: expired, body: toolCall(5, "calendar_read", { day: "thu" }) });
    assert.equal(r.status, 401);
    assert.equal(r.json.error.data.reason, "token.expired");
    assert.match(r.headers.get("www-authenticate"), /error="invalid_token"/);
    // A JWS whose typ is not txntoken+jwt, built by hand from a real one.
    const [, payload, sig] = mint(keys.ed, claims(), { act: [A1] }).split(".");
    const header = Buffer.from(JSON.stringify({ alg: "EdDSA", typ: "JWT", kid: "k-ed" })).toString("base64url");
    r = await post(jsonWorker.url, { token: `${header}.${payload}.${sig}`, body: toolCall(6, "calendar_read", { day: "thu" }) });
    assert.equal(r.status, 401);
    assert.equal(r.json.error.data.reason, "token.typ");
  });

  test("403 for a tool outside the effective scope: insufficient_scope, JSON-RPC error -31403", async () => {
    const token = mint(keys.ed, claims(), { act: [A1] });
    const out = await mcpCall(`${worker.url}/mcp`, { token, tool: "calendar_write", args: { day: "fri", title: "x" } });
    assert.equal(out.ok, false);
    assert.equal(out.error.status, 403);
    assert.equal(out.error.code, -31403);
    assert.equal(out.error.headers["www-authenticate"], 'Txn-Token error="insufficient_scope", scope="calendar:write"');
    assert.equal(out.error.body.error.data.reason, "tool.scope");
  });

  test("403 for an argument outside the token's transaction context, a denied tool, an unknown agent", async () => {
    const token = mint(keys.ed, claims(), { act: [A1] });
    let r = await post(jsonWorker.url, { token, body: toolCall(7, "send_email", { ...EMAIL, to: "mallory@example.com" }) });
    assert.equal(r.status, 403);
    assert.equal(r.json.error.data.reason, "tool.constraint");
    assert.equal(r.json.id, 7);
    r = await post(jsonWorker.url, { token, body: toolCall(8, "delete_repo", { name: "prod" }) });
    assert.equal(r.status, 403);
    assert.equal(r.json.error.data.reason, "tool.denied");
    const stranger = mint(keys.ed, claims(), { act: ["spiffe://elsewhere.example/agent/x"] });
    r = await post(jsonWorker.url, { token: stranger, body: toolCall(9, "calendar_read", { day: "sat" }) });
    assert.equal(r.status, 403);
    assert.equal(r.json.error.data.reason, "delegation.unknown_agent");
  });

  test("400: Mcp-Method header mismatch (-32020), a batch (-32600), bad JSON (-32700)", async () => {
    const token = mint(keys.ed, claims(), { act: [A1] });
    let r = await post(jsonWorker.url, { token, body: toolCall(10, "calendar_read", { day: "sun" }), headers: { "mcp-method": "tools/list" } });
    assert.equal(r.status, 400);
    assert.equal(r.json.error.code, -32020);
    assert.equal(r.json.error.data.reason, "mcp.header_mismatch");
    r = await post(jsonWorker.url, { token, body: `[${rpc(11, "tools/list")}]` });
    assert.equal(r.status, 400);
    assert.equal(r.json.error.code, -32600);
    assert.equal(r.json.error.data.reason, "mcp.batch");
    r = await post(jsonWorker.url, { token, body: '{"jsonrpc":"2.0",' });
    assert.equal(r.status, 400);
    assert.equal(r.json.error.code, -32700);
    assert.ok(!("id" in r.json), "no usable id: the member is omitted, not null");
  });

  test("400 for two Txn-Token header lines (the runtime joins them; the Worker splits them back)", async () => {
    const token = mint(keys.ed, claims(), { act: [A1] });
    const body = toolCall(12, "calendar_read", { day: "mon" });
    const url = new URL(`${jsonWorker.url}/mcp`);
    const status = await new Promise((res, rej) => {
      const req = httpRequest(
        { host: url.hostname, port: url.port, path: "/mcp", method: "POST", headers: ["host", url.host, "content-type", "application/json", "txn-token", token, "txn-token", token, "content-length", String(Buffer.byteLength(body))] },
        (resp) => {
          let text = "";
          resp.on("data", (d) => (text += d));
          resp.on("end", () => res({ code: resp.statusCode, json: JSON.parse(text) }));
        },
      );
      req.on("error", rej);
      req.end(body);
    });
    assert.equal(status.code, 400);
    assert.equal(status.json.error.data.reason, "token.multiple");
  });

  test("413 for a body over mcp.max_body_bytes, declared or streamed", async () => {
    const token = mint(keys.ed, claims(), { act: [A1] });
    const big = toolCall(13, "send_email", { ...EMAIL, body: "x".repeat(5000) });
    let r = await post(jsonWorker.url, { token, body: big });
    assert.equal(r.status, 413);
    assert.equal(r.json.error.code, -32600);
    assert.equal(r.json.error.data.reason, "mcp.body_too_large");
    // Chunked, no Content-Length: the Worker stops reading past the cap and answers at once (the client may
    // see its remaining upload cut off; the answer still arrives first).
    const url = new URL(`${jsonWorker.url}/mcp`);
    const answer = await new Promise((res, rej) => {
      let done = false;
      const req = httpRequest(
        { host: url.hostname, port: url.port, path: "/mcp", method: "POST", headers: { "content-type": "application/json", "txn-token": token, "transfer-encoding": "chunked" } },
        (resp) => {
          done = true;
          let text = "";
          resp.on("data", (d) => (text += d));
          resp.on("end", () => res({ status: resp.statusCode, json: JSON.parse(text) }));
        },
      );
      req.on("error", (e) => done || rej(e));
      for (let i = 0; i < 10; i++) req.write("x".repeat(1000));
      req.end();
    });
    assert.equal(answer.status, 413);
    assert.equal(answer.json.error.data.reason, "mcp.body_too_large");
  });

  test("tools/list is filtered to what the caller may call (SSE origin, official client)", async () => {
    const token = mint(keys.ed, claims(), { act: [A1] });
    const out = await mcpCall(`${worker.url}/mcp`, { token, list: true });
    assert.equal(out.ok, true, JSON.stringify(out));
    // calendar_write: scope not granted; delete_repo: denied; search_web: no rule.
    assert.deepEqual(out.tools.sort(), ["calendar_read", "send_email"]);
  });

  test("tools/list is filtered for a JSON origin too, and an orchestrator with every scope sees every ruled tool", async () => {
    const token = mint(keys.ed, claims(), { act: [A1] });
    const r = await post(jsonWorker.url, { token, body: rpc(14, "tools/list") });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.result.tools.map((t) => t.name).sort(), ["calendar_read", "send_email"]);
    const wide = mint(keys.ed, claims({ scope: "email:send calendar:read calendar:write" }), { act: ["spiffe://test.example/orchestrator"] });
    const w = await post(jsonWorker.url, { token: wide, body: rpc(15, "tools/list") });
    assert.deepEqual(w.json.result.tools.map((t) => t.name).sort(), ["calendar_read", "calendar_write", "send_email"]);
  });

  test("the second call of a token skips the signature check (verified-token cache)", async () => {
    const token = mint(keys.es, claims(), { act: [A1] });
    for (const id of [16, 17]) assert.equal((await post(jsonWorker.url, { token, body: toolCall(id, "calendar_read", { day: "mon" }) })).status, 200);
    const records = jsonWorker.audit().filter((r) => r.rpc_id === 16 || r.rpc_id === 17);
    assert.deepEqual(records.map((r) => r.cached), [false, true]);
  });
});

// Fail closed: a policy that does not load answers 500 to every request and never forwards; an origin that
// cannot be reached or resets the connection gives 502, one that sends no response headers in time 504
// (TXNGATE_ORIGIN_TIMEOUT_MS), both without internal detail; the origin's own errors pass through unchanged
// (its body is the origin's to choose); a reset after the headers truncates the stream the client reads.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { AGENT, ROOT, claims, keygen, mint, policy, post, removeDir, startHttpServer, startWorker, tempDir, toolCall, until } from "./helpers.mjs";

const A1 = AGENT("a1");

describe("fail closed", () => {
  let dir, key, counting;

  before(async () => {
    dir = tempDir("failclosed");
    key = keygen("EdDSA", "k-fc", dir);
    // An origin that counts what reaches it and answers 500 with its own body.
    counting = await startHttpServer((req, res) => {
      res.writeHead(500, { "content-type": "application/json", "x-origin": "yes" }).end('{"origin":"broke"}');
    });
  });

  after(async () => {
    await counting?.stop();
    if (dir) removeDir(dir);
  });

  for (const [what, badPolicy, message] of [
    ["an empty trust domain", { ...policy({ jwks: { keys: [] } }), trust_domain: "" }, "policy: at /trust_domain: must not be empty"],
    ["an unknown field", { ...policy({ jwks: { keys: [] } }), trust_domian: "x" }, "policy: at /trust_domian: unknown field `trust_domian`"],
    ["no TXNGATE_POLICY at all", undefined, "config: TXNGATE_POLICY is not set"],
  ]) {
    test(`a bad policy (${what}) fails closed: 500 for every request, nothing forwarded, the precise message logged`, async () => {
      if (badPolicy?.issuers) badPolicy.issuers[0].jwks = { keys: [key.publicJwk] };
      const vars = { ORIGIN_URL: counting.url, ...(badPolicy ? { TXNGATE_POLICY: badPolicy } : {}) };
      const worker = await startWorker({ vars });
      try {
        const before = counting.state.hits;
        const token = mint(key, claims(), { act: [A1] });
        const mcp = await post(worker.url, { token, body: toolCall(1, "calendar_read", { day: "mon" }) });
        const plain = await fetch(`${worker.url}/health`);
        for (const r of [mcp, { status: plain.status, json: await plain.json() }]) {
          assert.equal(r.status, 500);
          assert.equal(r.json.reason, "config.invalid");
          assert.ok(!JSON.stringify(r.json).includes("trust_domain"), "no policy detail to the client");
        }
        assert.equal(counting.state.hits, before, "nothing reached the origin");
        assert.ok(worker.logs.some((l) => l.includes(message)), `log has ${message}:\n${worker.logs.join("\n")}`);
      } finally {
        await worker.stop();
      }
    });
  }

  for (const [origin, message] of [
    ["not a url", "is not a URL"],
    ["ftp://127.0.0.1/files", "must be an http(s) URL with a host"],
    ["http://127.0.0.1:1/mcp?tenant=a", "must not have a query or fragment"],
    ["http://127.0.0.1:1/?", "must not have a query or fragment"],
    ["http://127.0.0.1:1/#top", "must not have a query or fragment"],
  ]) {
    test(`a bad ORIGIN_URL (${origin}) fails closed: 500, the precise message logged`, async () => {
      const worker = await startWorker({ vars: { TXNGATE_POLICY: policy({ jwks: { keys: [key.publicJwk] } }), ORIGIN_URL: origin } });
      try {
        const token = mint(key, claims(), { act: [A1] });
        const r = await post(worker.url, { token, body: toolCall(1, "calendar_read", { day: "mon" }) });
        assert.equal(r.status, 500);
        assert.equal(r.json.reason, "config.invalid");
        assert.ok(worker.logs.some((l) => l.includes("ORIGIN_URL") && l.includes(message)), `log has ${message}:\n${worker.logs.join("\n")}`);
      } finally {
        await worker.stop();
      }
    });
  }

  test("an origin that cannot be reached: 502 JSON-RPC error without internal detail", async () => {
    const closed = await startHttpServer(() => {});
    const deadUrl = closed.url;
    await closed.stop();
    const worker = await startWorker({ vars: { TXNGATE_POLICY: policy({ jwks: { keys: [key.publicJwk] } }), ORIGIN_URL: deadUrl } });
    try {
      const r = await post(worker.url, { token: mint(key, claims(), { act: [A1] }), body: toolCall(42, "calendar_read", { day: "mon" }) });
      assert.equal(r.status, 502);
      assert.equal(r.json.id, 42);
      assert.equal(r.json.error.code, -31502);
      assert.equal(r.json.error.data.reason, "origin.fetch");
      assert.ok(!/127\.0\.0\.1|refused|ECONN|network/i.test(r.text), r.text);
      assert.ok(worker.logs.some((l) => l.includes('"txngate":"origin.fetch"')), "the detail is in the log");
    } finally {
      await worker.stop();
    }
  });

  test("the origin's own error response (500 with its own body) passes through unchanged, with the rate-limit headers added", async () => {
    const worker = await startWorker({ vars: { TXNGATE_POLICY: policy({ jwks: { keys: [key.publicJwk] } }), ORIGIN_URL: counting.url } });
    try {
      const r = await post(worker.url, {
        token: mint(key, claims(), { act: [A1] }),
        body: toolCall(43, "send_email", { to: "bob@example.com", subject: "s", body: "b" }),
      });
      assert.equal(r.status, 500);
      assert.equal(r.text, '{"origin":"broke"}');
      assert.equal(r.headers.get("x-origin"), "yes");
      assert.match(r.headers.get("ratelimit"), /^"send_email";r=9;t=\d+$/);
    } finally {
      await worker.stop();
    }
  });
  test("an origin that resets the connection: 502 origin.fetch, JSON-RPC error without internal detail", async () => {
    const resetting = await startHttpServer((req) => req.socket.destroy());
    const worker = await startWorker({ vars: { TXNGATE_POLICY: policy({ jwks: { keys: [key.publicJwk] } }), ORIGIN_URL: resetting.url } });
    try {
      const r = await post(worker.url, { token: mint(key, claims(), { act: [A1] }), body: toolCall(44, "calendar_read", { day: "mon" }) });
      assert.equal(r.status, 502, r.text);
      assert.equal(r.json.id, 44);
      assert.equal(r.json.error.code, -31502);
      assert.equal(r.json.error.data.reason, "origin.fetch");
      assert.ok(!/127\.0\.0\.1|reset|ECONN|network|socket/i.test(r.text), r.text);
      assert.equal(resetting.state.hits, 1, "the origin saw the request");
    } finally {
      await worker.stop();
      await resetting.stop();
    }
  });

  test("an origin that never answers: 504 origin.timeout after TXNGATE_ORIGIN_TIMEOUT_MS, the upstream request aborted", async () => {
    let closed = 0;
    const hanging = await startHttpServer((req, res) => res.on("close", () => (closed += 1)));
    const vars = { TXNGATE_POLICY: policy({ jwks: { keys: [key.publicJwk] } }), ORIGIN_URL: hanging.url, TXNGATE_ORIGIN_TIMEOUT_MS: "800" };
    const worker = await startWorker({ vars });
    try {
      const started = Date.now();
      const r = await post(worker.url, { token: mint(key, claims(), { act: [A1] }), body: toolCall(45, "calendar_read", { day: "mon" }) });
      const elapsed = Date.now() - started;
      assert.equal(r.status, 504, r.text);
      assert.equal(r.json.id, 45);
      assert.equal(r.json.error.data.reason, "origin.timeout");
      assert.ok(!/127\.0\.0\.1|800/.test(r.text), r.text);
      assert.ok(elapsed >= 750 && elapsed < 4000, `answered after ${elapsed} ms`);
      assert.ok(await until(() => closed >= 1, 3000), "the Worker aborted its upstream request");
      // Without a JSON-RPC id (a plain path) the body is the OAuth-style error object.
      const plain = await fetch(`${worker.url}/health`, { headers: { "txn-token": mint(key, claims(), { act: [A1] }) } });
      assert.equal(plain.status, 504);
      assert.equal((await plain.json()).error, "gateway_timeout");
    } finally {
      await worker.stop();
      await hanging.stop();
    }
  });

  test("the origin timeout bounds the response headers only: a slow body (an SSE stream) streams through", async () => {
    const slow = await startHttpServer((req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write("event: message\ndata: first\n\n");
      setTimeout(() => res.end("event: message\ndata: second\n\n"), 1500);
    });
    const vars = { TXNGATE_POLICY: policy({ jwks: { keys: [key.publicJwk] } }), ORIGIN_URL: slow.url, TXNGATE_ORIGIN_TIMEOUT_MS: "800" };
    const worker = await startWorker({ vars });
    try {
      const r = await post(worker.url, { token: mint(key, claims(), { act: [A1] }), body: toolCall(46, "calendar_read", { day: "mon" }) });
      assert.equal(r.status, 200, r.text);
      assert.ok(r.text.includes("data: first") && r.text.includes("data: second"), r.text);
    } finally {
      await worker.stop();
      await slow.stop();
    }
  });

  test("an origin that resets after its headers: nothing complete-looking reaches the client", async () => {
    // The status and headers may already be on their way; the Worker streams the body through and cannot
    // take them back. What the client sees depends on its HTTP stack (here: node's fetch through Miniflare
    // gets a 200 whose body ends early, curl a connection reset); what must never happen is a body that
    // parses as the origin's complete answer.
    const breaking = await startHttpServer((req, res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": "1000" });
      res.write('{"jsonrpc":"2.0","id":47,"result":{"partial":');
      setTimeout(() => res.socket.destroy(), 100);
    });
    const worker = await startWorker({ vars: { TXNGATE_POLICY: policy({ jwks: { keys: [key.publicJwk] } }), ORIGIN_URL: breaking.url } });
    try {
      let text = null;
      try {
        const response = await fetch(`${worker.url}/mcp`, {
          method: "POST",
          headers: { "content-type": "application/json", accept: "application/json, text/event-stream", "txn-token": mint(key, claims(), { act: [A1] }) },
          body: toolCall(47, "calendar_read", { day: "mon" }),
        });
        text = await response.text();
      } catch {
        text = null; // the connection or the body read failed: fine
      }
      if (text !== null) {
        assert.ok(text.length < 1000, `a short body, not the declared 1000 bytes: ${JSON.stringify(text)}`);
        assert.throws(() => JSON.parse(text), "not a complete JSON answer");
      }
      assert.equal(breaking.state.hits, 1);
    } finally {
      await worker.stop();
      await breaking.stop();
    }
  });

  test("the example policy in wrangler.toml loads (a request without a token gets 401, not 500)", async () => {
    const toml = readFileSync(join(ROOT, "wrangler.toml"), "utf8");
    const example = /^TXNGATE_POLICY = '{3}\n([\s\S]*?)\n'{3}/m.exec(toml);
    assert.ok(example, "wrangler.toml has the example TXNGATE_POLICY as a multi-line literal string");
    const worker = await startWorker({ vars: { TXNGATE_POLICY: example[1], ORIGIN_URL: counting.url } });
    try {
      const r = await post(worker.url, { body: toolCall(1, "calendar_read", { day: "mon" }) });
      assert.equal(r.status, 401, r.text);
      assert.equal(r.json.error.data.reason, "token.missing");
      assert.equal(r.headers.get("www-authenticate"), 'Txn-Token error="invalid_token", error_description="token.missing"');
    } finally {
      await worker.stop();
    }
  });
});

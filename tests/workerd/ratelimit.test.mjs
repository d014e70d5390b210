// Global, exact rate limits through the Durable Object: the count lives in the object (one per bucket key),
// not in any Worker isolate. Shown twice: across two separate Miniflare/workerd instances that share the
// persisted Durable Object state (one after the other, as a restart or another location would), and across
// two Worker isolates running at once that share one Durable Object namespace.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { AGENT, ROOT, claims, keygen, mcpCall, mint, policy, post, removeDir, startMcpServer, startWorker, tempDir, toolCall, until } from "./helpers.mjs";

const EMAIL = { to: "bob@example.com", subject: "hi", body: "hello" };

function remaining(headers) {
  const m = /r=(\d+)/.exec(headers.get("ratelimit") ?? "");
  return m ? Number(m[1]) : null;
}

describe("rate limits in the Durable Object", () => {
  let dir, persist, key, origin, jwks;

  before(async () => {
    dir = tempDir("ratelimit");
    persist = join(dir, "state");
    key = keygen("EdDSA", "k-rl", dir);
    jwks = { keys: [key.publicJwk] };
    origin = await startMcpServer({ json: true });
  });

  after(async () => {
    await origin?.stop();
    if (dir) removeDir(dir);
  });

  test("wrangler.toml binds the class the tests run (binding, class, sqlite migration)", () => {
    const toml = readFileSync(join(ROOT, "wrangler.toml"), "utf8");
    assert.match(toml, /\[\[durable_objects\.bindings\]\]\s*\nname = "TXNGATE_LIMITER"\s*\nclass_name = "TxngateRateLimiter"/);
    assert.match(toml, /new_sqlite_classes = \["TxngateRateLimiter"\]/);
  });

  test("the 11th call over a limit of 10 is refused with 429 and Retry-After, counted across two workerd instances", async () => {
    const agent = AGENT("counted");
    const token = mint(key, claims(), { act: [agent] });
    const vars = { TXNGATE_POLICY: policy({ jwks }), ORIGIN_URL: origin.url };

    // Instance A: five calls, then it goes away entirely (workerd process stopped).
    const a = await startWorker({ vars, persist });
    const seenA = [];
    try {
      for (let i = 1; i <= 5; i++) {
        const r = await post(a.url, { token, body: toolCall(i, "send_email", EMAIL) });
        assert.equal(r.status, 200, r.text);
        seenA.push(remaining(r.headers));
      }
    } finally {
      await a.stop();
    }
    assert.deepEqual(seenA, [9, 8, 7, 6, 5]);

    // Instance B: a new workerd process and isolate, the same persisted Durable Object state.
    const b = await startWorker({ vars, persist });
    try {
      const seenB = [];
      for (let i = 6; i <= 10; i++) {
        const r = await post(b.url, { token, body: toolCall(i, "send_email", EMAIL) });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.headers.get("ratelimit-policy"), '"send_email";q=10;w=3600');
        seenB.push(remaining(r.headers));
      }
      assert.deepEqual(seenB, [4, 3, 2, 1, 0]);

      // The 11th, through the official MCP client.
      const out = await mcpCall(`${b.url}/mcp`, { token, tool: "send_email", args: EMAIL });
      assert.equal(out.ok, false);
      assert.equal(out.error.status, 429);
      assert.equal(out.error.code, -31429);
      assert.equal(out.error.body.error.data.reason, "ratelimit.exceeded");
      const retry = Number(out.error.headers["retry-after"]);
      assert.ok(retry >= 1 && retry <= 360, `Retry-After ${out.error.headers["retry-after"]}`);

      const denied = b.audit().find((r) => r.reason === "ratelimit.exceeded");
      assert.ok(denied, "the refusal is audited");
      assert.equal(denied.limit.remaining, 0);
      assert.equal(denied.limit.retry_after_seconds, retry);

      // Another agent has its own bucket.
      const other = mint(key, claims(), { act: [AGENT("other")] });
      const r = await post(b.url, { token: other, body: toolCall(99, "send_email", EMAIL) });
      assert.equal(r.status, 200);
      assert.equal(remaining(r.headers), 9);
    } finally {
      await b.stop();
    }
  });

  test("two Worker isolates running at once share one object per bucket: still exactly 10", async () => {
    const agent = AGENT("two-isolates");
    const vars = { TXNGATE_POLICY: policy({ jwks }), ORIGIN_URL: origin.url };
    const edges = await startWorker({ vars, workers: 2 });
    try {
      // Different tokens (same agent) so neither isolate can lean on a cached verification of the other's.
      const tokens = mint(key, claims(), { act: [agent], count: 2 });
      const statuses = [];
      for (let i = 0; i < 12; i++) {
        const edge = i % 2;
        const response = await edges.fetchVia(edge, "/mcp", {
          method: "POST",
          headers: { "content-type": "application/json", accept: "application/json, text/event-stream", "txn-token": tokens[edge] },
          body: toolCall(100 + i, "send_email", EMAIL),
        });
        await response.arrayBuffer();
        statuses.push(response.status);
      }
      assert.deepEqual(statuses, [...Array(10).fill(200), 429, 429]);
      // Every call was decided (and audited) by one of the two Workers; none was lost or double counted.
      const audits = edges.audit().filter((r) => r.agent === agent);
      assert.equal(audits.length, 12);
    } finally {
      await edges.stop();
    }
  });
  test("opt-in approximate mode uses the Rate Limiting binding TXNGATE_RL_<limit>_<period>; a missing binding fails closed", async () => {
    const tools = {
      send_email: { scopes: ["email:send"], rate_limit: { key: "agent", limit: 3, period_seconds: 60 } },
      calendar_read: { scopes: ["calendar:read"], rate_limit: { key: "agent", limit: 5, period_seconds: 10 } },
    };
    const vars = { TXNGATE_POLICY: policy({ jwks, tools }), ORIGIN_URL: origin.url, TXNGATE_LIMITER_MODE: "approximate" };
    const edge = await startWorker({ vars, ratelimits: { TXNGATE_RL_3_60: { simple: { limit: 3, period: 60 } } } });
    try {
      const token = mint(key, claims(), { act: [AGENT("approx")] });
      const statuses = [];
      for (let i = 0; i < 4; i++) statuses.push((await post(edge.url, { token, body: toolCall(200 + i, "send_email", EMAIL) })).status);
      assert.deepEqual(statuses, [200, 200, 200, 429]);
      // No binding for 5 per 10 s: the limiter cannot answer, on_store_error (deny) decides: 503.
      const r = await post(edge.url, { token, body: toolCall(210, "calendar_read", { day: "mon" }) });
      assert.equal(r.status, 503);
      assert.equal(r.json.error.data.reason, "ratelimit.store_error");
      assert.ok(edge.audit().some((a) => a.detail?.includes("no Rate Limiting binding TXNGATE_RL_5_10")));
    } finally {
      await edge.stop();
    }
  });
  test("a drained bucket is deleted by the object's alarm: idle buckets store nothing", async () => {
    const agent = AGENT("drains");
    const tools = { calendar_read: { scopes: ["calendar:read"], rate_limit: { key: "agent", limit: 1, period_seconds: 1 } } };
    const edge = await startWorker({ vars: { TXNGATE_POLICY: policy({ jwks, tools }), ORIGIN_URL: origin.url } });
    try {
      const token = mint(key, claims(), { act: [agent] });
      assert.equal((await post(edge.url, { token, body: toolCall(300, "calendar_read", { day: "mon" }) })).status, 200);
      assert.equal((await post(edge.url, { token, body: toolCall(301, "calendar_read", { day: "mon" }) })).status, 429);
      // The core's bucket key: txngate:rl:<limit>:<period ms>:<burst>:<dimension>:<tool>:<id>.
      const bucket = `txngate:rl:1:1000:1:agent:calendar_read:${agent}`;
      const namespace = await edge.mf.getDurableObjectNamespace("TXNGATE_LIMITER");
      const stub = namespace.get(namespace.idFromName(bucket));
      const state = async () => (await stub.fetch("https://txngate-limiter.internal/state")).json();
      const first = await state();
      assert.equal(first.buckets, 1);
      assert.ok(first.alarm_ms > Date.now() - 5000, JSON.stringify(first));
      assert.ok(await until(async () => (await state()).buckets === 0, 8000), "the alarm deleted the drained bucket");
      // And the next call starts from a full bucket.
      assert.equal((await post(edge.url, { token, body: toolCall(302, "calendar_read", { day: "mon" }) })).status, 200);
    } finally {
      await edge.stop();
    }
  });
});

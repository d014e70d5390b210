// The rate-limit Durable Object failing, for real, in workerd: the TXNGATE_LIMITER binding points at a second
// Worker script whose Durable Object class misbehaves (throws, never answers, answers garbage or an HTTP
// error, its storage throws), or there is no binding at all. Nothing in the product knows about these
// faults. Every failure must end in the rule's `on_store_error`: `deny` (the default) → 503
// `ratelimit.store_error` with a JSON-RPC error and nothing forwarded; `allow` → forwarded, the failure in
// the audit record. Never an unlimited pass by accident, never the object's internal detail to the client.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { AGENT, claims, localSigner, policy, post, startHttpServer, startWorker, toolCall } from "./helpers.mjs";

const SECRET = "secret-internal-detail";
const TIMEOUT_MS = 500;

// The faulty limiter: it picks its fault from the bucket key, which ends with the agent ID
// ("txngate:rl:<limit>:<period_ms>:<burst>:agent:<tool>:spiffe://test.example/agent/<fault>").
const FAULTY = `
export class FaultyLimiter {
  constructor(state) { this.state = state; }
  async fetch(request) {
    const { key } = await request.json();
    const fault = /\\/agent\\/([a-z0-9-]+)$/.exec(key)?.[1] ?? "";
    switch (fault) {
      case "throws": throw new Error("limiter exploded: ${SECRET}");
      case "hangs": return new Promise(() => {});
      case "body-hangs":
        return new Response(new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode('{"allowed":true,')); } }), { status: 200 });
      case "status-500": return new Response("stack trace: ${SECRET}", { status: 500 });
      case "garbage": return new Response("<html>${SECRET}</html>", { status: 200 });
      case "wrong-shape": return Response.json({ allowed: true });
      case "wrong-rule":
        return Response.json({ allowed: true, limit: 1000000, burst: 1000000, period_seconds: 1, remaining: 999999, retry_after_ms: 0, reset_ms: 0 });
      case "storage-throws":
        // A function cannot be stored: the storage API throws (DataCloneError), a real storage exception.
        await this.state.storage.put("bucket", () => 0);
        return Response.json({});
      default: return new Response("unknown fault", { status: 400 });
    }
  }
}
export default { fetch() { return new Response("limiter script", { status: 404 }); } };
`;

const TOOLS = {
  // on_store_error defaults to deny.
  guarded: { scopes: ["calendar:read"], rate_limit: { key: "agent", limit: 10, period_seconds: 60 } },
  lenient: { scopes: ["calendar:read"], rate_limit: { key: "agent", limit: 10, period_seconds: 60, on_store_error: "allow" } },
  free: { scopes: ["calendar:read"] },
};

// [agent/fault, what the client is told]
const FAULTS = [
  ["throws", "durable object call failed"],
  ["hangs", `durable object did not answer within ${TIMEOUT_MS} ms`],
  ["body-hangs", `durable object did not answer within ${TIMEOUT_MS} ms`],
  ["status-500", "durable object answered HTTP 500"],
  ["garbage", "durable object answer is not a limit state"],
  ["wrong-shape", "durable object answer is not a limit state"],
  ["wrong-rule", "durable object answer does not fit the rule"],
  ["storage-throws", "durable object call failed"],
];

describe("rate-limit Durable Object faults", () => {
  let signer, origin;

  before(async () => {
    signer = localSigner("k-faults");
    origin = await startHttpServer((req, res) => res.writeHead(200, { "content-type": "application/json" }).end('{"jsonrpc":"2.0","id":1,"result":{}}'));
  });

  after(async () => {
    await origin?.stop();
  });

  const vars = () => ({
    TXNGATE_POLICY: policy({ jwks: signer.jwks, tools: TOOLS }),
    ORIGIN_URL: origin.url,
    TXNGATE_LIMITER_TIMEOUT_MS: String(TIMEOUT_MS),
  });
  const call = (worker, id, tool, agent) =>
    post(worker.url, { token: signer.mint(claims(), { act: [AGENT(agent)] }), body: toolCall(id, tool, { day: "mon" }) });

  test("each fault, on_store_error deny (default): 503 ratelimit.store_error, JSON-RPC error, nothing forwarded, detail only in the log", async () => {
    const worker = await startWorker({ vars: vars(), limiter: { script: FAULTY, className: "FaultyLimiter" } });
    try {
      let id = 100;
      for (const [fault, told] of FAULTS) {
        id += 1;
        const hits = origin.state.hits;
        const started = Date.now();
        const r = await call(worker, id, "guarded", fault);
        const elapsed = Date.now() - started;
        assert.equal(r.status, 503, `${fault}: ${r.text}`);
        assert.equal(r.headers.get("retry-after"), "1", fault);
        assert.equal(r.json.jsonrpc, "2.0", fault);
        assert.equal(r.json.id, id, fault);
        assert.equal(r.json.error.data.reason, "ratelimit.store_error", fault);
        assert.ok(r.json.error.message.includes(told), `${fault}: ${r.json.error.message}`);
        assert.ok(!r.text.includes(SECRET) && !r.text.includes("DataCloneError"), `${fault}: no internal detail to the client: ${r.text}`);
        assert.equal(r.headers.get("ratelimit"), null, fault);
        assert.equal(origin.state.hits, hits, `${fault}: nothing forwarded`);
        if (fault.includes("hangs")) assert.ok(elapsed >= TIMEOUT_MS - 50 && elapsed < TIMEOUT_MS + 2500, `${fault}: bounded wait, took ${elapsed} ms`);
        const audit = worker.audit().find((a) => a.rpc_id === id);
        assert.equal(audit?.verdict, "deny", fault);
        assert.equal(audit.reason, "ratelimit.store_error", fault);
      }
      // The log has what the object actually said, for the operator.
      const failed = worker.logs.filter((l) => l.includes('"txngate":"limiter.failed"'));
      assert.ok(failed.some((l) => l.includes(SECRET) && l.includes("/agent/throws")), failed.join("\n"));
      assert.ok(failed.some((l) => l.includes(SECRET) && l.includes("/agent/status-500")), failed.join("\n"));
    } finally {
      await worker.stop();
    }
  });

  test("each fault, on_store_error allow: forwarded without rate-limit headers, the failure recorded in the audit", async () => {
    const worker = await startWorker({ vars: vars(), limiter: { script: FAULTY, className: "FaultyLimiter" } });
    try {
      let id = 200;
      for (const [fault, told] of FAULTS) {
        id += 1;
        const hits = origin.state.hits;
        const r = await call(worker, id, "lenient", fault);
        assert.equal(r.status, 200, `${fault}: ${r.text}`);
        assert.equal(origin.state.hits, hits + 1, `${fault}: forwarded`);
        assert.equal(r.headers.get("ratelimit"), null, `${fault}: no limit state to report`);
        const audit = worker.audit().find((a) => a.rpc_id === id);
        assert.equal(audit?.verdict, "allow", fault);
        assert.ok(audit.detail?.includes(told), `${fault}: audit detail ${audit.detail}`);
        assert.ok(!audit.detail.includes(SECRET), fault);
      }
    } finally {
      await worker.stop();
    }
  });

  test("no Durable Object binding: deny rules answer 503, allow rules pass, requests without a limit are unaffected", async () => {
    const worker = await startWorker({ vars: vars(), limiter: "none" });
    try {
      const hits = origin.state.hits;
      let r = await call(worker, 301, "guarded", "a1");
      assert.equal(r.status, 503, r.text);
      assert.equal(r.json.error.data.reason, "ratelimit.store_error");
      assert.ok(r.json.error.message.includes("durable object binding missing"), r.json.error.message);
      assert.equal(origin.state.hits, hits);
      r = await call(worker, 302, "lenient", "a1");
      assert.equal(r.status, 200, r.text);
      assert.equal(origin.state.hits, hits + 1);
      r = await call(worker, 303, "free", "a1");
      assert.equal(r.status, 200, r.text);
      assert.equal(origin.state.hits, hits + 2);
    } finally {
      await worker.stop();
    }
  });

  test("a timeout that is not a number of milliseconds fails the configuration closed", async () => {
    const worker = await startWorker({ vars: { ...vars(), TXNGATE_LIMITER_TIMEOUT_MS: "soon" } });
    try {
      const r = await call(worker, 401, "guarded", "a1");
      assert.equal(r.status, 500);
      assert.equal(r.json.reason, "config.invalid");
      assert.ok(worker.logs.some((l) => l.includes("TXNGATE_LIMITER_TIMEOUT_MS")), worker.logs.join("\n"));
    } finally {
      await worker.stop();
    }
  });
});

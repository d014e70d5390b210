// Fail closed: a policy that does not load answers 500 to every request and never forwards; an origin that
// cannot be reached gives 502 without internal detail; the origin's own errors pass through unchanged.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { AGENT, ROOT, claims, keygen, mint, policy, post, removeDir, startHttpServer, startWorker, tempDir, toolCall } from "./helpers.mjs";

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

  test("an origin that cannot be reached: 502 JSON-RPC error without internal detail", async () => {
    const closed = await startHttpServer(() => {});
    const deadUrl = closed.url;
    await closed.stop();
    const worker = await startWorker({ vars: { TXNGATE_POLICY: policy({ jwks: { keys: [key.publicJwk] } }), ORIGIN_URL: deadUrl } });
    try {
      const r = await post(worker.url, { token: mint(key, claims(), { act: [A1] }), body: toolCall(42, "calendar_read", { day: "mon" }) });
      assert.equal(r.status, 502);
      assert.equal(r.json.id, 42);
      assert.equal(r.json.error.code, -32603);
      assert.equal(r.json.error.data.reason, "origin.fetch");
      assert.ok(!/127\.0\.0\.1|refused|ECONN|network/i.test(r.text), r.text);
      assert.ok(worker.logs.some((l) => l.includes('"txngate":"origin.fetch"')), "the detail is in the log");
    } finally {
      await worker.stop();
    }
  });

  test("the origin's own error response passes through unchanged, with the rate-limit headers added", async () => {
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
  test("the example policy in wrangler.toml loads (a request without a token gets 401, not 500)", async () => {
    const toml = readFileSync(join(ROOT, "wrangler.toml"), "utf8");
    const example = /^TXNGATE_POLICY = '{3}\n([\s\S]*?)\n'{3}/m.exec(toml);
    assert.ok(example, "wrangler.toml has the example TXNGATE_POLICY as a multi-line literal string");
    const worker = await startWorker({ vars: { TXNGATE_POLICY: example[1], ORIGIN_URL: counting.url } });
    try {
      const r = await post(worker.url, { body: toolCall(1, "calendar_read", { day: "mon" }) });
      assert.equal(r.status, 401, r.text);
      assert.equal(r.json.error.data.reason, "token.missing");
      assert.match(r.headers.get("www-authenticate"), /resource_metadata="https:\/\/mcp\.example\.com\//);
    } finally {
      await worker.stop();
    }
  });
});

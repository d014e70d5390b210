// JWKS from a jwks_uri (a loopback server the test controls): first fetch, rotation picked up on an unknown
// kid (then the request is evaluated again), debounce, last good set kept, the Cache API copy for a new
// isolate, and fail closed when no keys can be had.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { AGENT, ISS, claims, keygen, localSigner, mint, policy, post, removeDir, startJwksServer, startMcpServer, startWorker, tempDir, toolCall } from "./helpers.mjs";

const A1 = AGENT("a1");
const READ = (id) => toolCall(id, "calendar_read", { day: "mon" });

describe("JWKS from jwks_uri", () => {
  let dir, k1, k2, k3, jwksServer, origin;

  before(async () => {
    dir = tempDir("jwks");
    k1 = keygen("EdDSA", "rot-1", dir);
    k2 = keygen("ES256", "rot-2", dir);
    k3 = keygen("EdDSA", "rot-3", dir);
    jwksServer = await startJwksServer({ keys: [k1.publicJwk] });
    origin = await startMcpServer({ json: true });
  });

  after(async () => {
    await Promise.all([jwksServer?.stop(), origin?.stop()]);
    if (dir) removeDir(dir);
  });

  const remotePolicy = (uri) =>
    policy({ issuer: { name: "tts", iss: ISS, jwks_uri: uri, refresh_seconds: 300, max_stale_seconds: 3600, min_refetch_seconds: 30, algorithms: ["EdDSA", "ES256"] } });

  test("rotation is picked up on an unknown kid, refetches are debounced, the last good set is kept, new isolates start from the Cache API copy", async () => {
    const persist = join(dir, "state");
    const vars = { TXNGATE_POLICY: remotePolicy(jwksServer.uri), ORIGIN_URL: origin.url };
    const worker = await startWorker({ vars, persist });
    try {
      // First request of the isolate: keys fetched before deciding.
      let r = await post(worker.url, { token: mint(k1, claims(), { act: [A1] }), body: READ(1) });
      assert.equal(r.status, 200, r.text);
      assert.equal(jwksServer.state.hits, 1);

      // The issuer rotates in k2. A k2 token names an unknown kid: one refetch, then allowed.
      jwksServer.jwks.document = { keys: [k1.publicJwk, k2.publicJwk] };
      r = await post(worker.url, { token: mint(k2, claims(), { act: [A1] }), body: READ(2) });
      assert.equal(r.status, 200, r.text);
      assert.equal(jwksServer.state.hits, 2);
      assert.equal(worker.audit().filter((a) => a.rpc_id === 2).length, 1, "one audit line for the re-evaluated request");

      // A kid the issuer never published: refused, and no second refetch within min_refetch_seconds.
      r = await post(worker.url, { token: mint(k3, claims(), { act: [A1] }), body: READ(3) });
      assert.equal(r.status, 401);
      assert.equal(r.json.error.data.reason, "token.kid_unknown");
      assert.equal(jwksServer.state.hits, 2);

      // The issuer goes down: the last good set keeps working.
      jwksServer.jwks.status = 503;
      r = await post(worker.url, { token: mint(k2, claims(), { act: [A1] }), body: READ(4) });
      assert.equal(r.status, 200, r.text);
      assert.ok(worker.logs.some((l) => l.includes('"txngate":"jwks.installed"')));
    } finally {
      await worker.stop();
    }

    // A new workerd (new isolate, same location's cache): the issuer is still down, the Cache API copy serves.
    const hitsBefore = jwksServer.state.hits;
    const again = await startWorker({ vars, persist });
    try {
      const r = await post(again.url, { token: mint(k2, claims(), { act: [A1] }), body: READ(5) });
      assert.equal(r.status, 200, r.text);
      assert.ok(again.logs.some((l) => l.includes('"txngate":"jwks.installed_from_cache"')), again.logs.join("\n"));
      assert.equal(jwksServer.state.hits, hitsBefore, "fresh cached copy: no fetch needed");
    } finally {
      await again.stop();
      jwksServer.jwks.status = 200;
    }
  });

  test("no keys to be had: 503 keys.unavailable with Retry-After, nothing forwarded", async () => {
    const down = await startJwksServer({ keys: [] });
    down.jwks.status = 500;
    const worker = await startWorker({ vars: { TXNGATE_POLICY: remotePolicy(down.uri), ORIGIN_URL: origin.url } });
    try {
      const before = origin.requests.length;
      const r = await post(worker.url, { token: mint(k1, claims(), { act: [A1] }), body: READ(6) });
      assert.equal(r.status, 503);
      assert.equal(r.headers.get("retry-after"), "5");
      assert.equal(r.json.error.data.reason, "keys.unavailable");
      assert.equal(origin.requests.length, before);
      assert.ok(worker.logs.some((l) => l.includes('"txngate":"jwks.fetch_failed"') && l.includes("HTTP 500")));
    } finally {
      await worker.stop();
      await down.stop();
    }
  });
  test("concurrent first requests of an isolate wait for one JWKS fetch and all pass", async () => {
    const slow = await startJwksServer({ keys: [k1.publicJwk, k2.publicJwk] });
    slow.jwks.delayMs = 300;
    const worker = await startWorker({ vars: { TXNGATE_POLICY: remotePolicy(slow.uri), ORIGIN_URL: origin.url } });
    try {
      const tokens = [...mint(k1, claims(), { act: [A1], count: 4 }), ...mint(k2, claims(), { act: [A1], count: 4 })];
      const results = await Promise.all(tokens.map((token, i) => post(worker.url, { token, body: READ(20 + i) })));
      assert.deepEqual(results.map((r) => r.status), Array(8).fill(200), results.map((r) => r.text).join("\n"));
      assert.equal(slow.state.hits, 1, "one fetch for all of them");
    } finally {
      await worker.stop();
      await slow.stop();
    }
  });

  test("a burst of 200 unknown kids: each refused with token.kid_unknown, at most one JWKS refetch per min_refetch_seconds window", async () => {
    const WINDOW_MS = 3000;
    const signer = localSigner("burst-good");
    const server = await startJwksServer(signer.jwks);
    const burstPolicy = policy({ issuer: { name: "tts", iss: ISS, jwks_uri: server.uri, refresh_seconds: 300, max_stale_seconds: 3600, min_refetch_seconds: WINDOW_MS / 1000, algorithms: ["EdDSA"] } });
    const worker = await startWorker({ vars: { TXNGATE_POLICY: burstPolicy, ORIGIN_URL: origin.url } });
    // `count` tokens, each naming a random kid the issuer never published (signed by a real key all the same),
    // sent 20 at a time; resolves with the refusals and how long the burst took.
    const burst = async (count, firstId) => {
      const tokens = Array.from({ length: count }, () => signer.mint(claims(), { act: [A1], kid: `rand-${randomUUID()}` }));
      const started = Date.now();
      const results = [];
      for (let i = 0; i < tokens.length; i += 20) {
        results.push(...(await Promise.all(tokens.slice(i, i + 20).map((token, j) => post(worker.url, { token, body: READ(firstId + i + j) })))));
      }
      return { results, elapsed: Date.now() - started };
    };
    const assertRefused = (results) => {
      for (const r of results) {
        assert.equal(r.status, 401, r.text);
        assert.equal(r.json.error.data.reason, "token.kid_unknown", r.text);
        assert.match(r.headers.get("www-authenticate"), /invalid_token/);
      }
    };
    try {
      let r = await post(worker.url, { token: signer.mint(claims(), { act: [A1] }), body: READ(1000) });
      assert.equal(r.status, 200, r.text);
      assert.equal(server.state.hits, 1, "the isolate's first fetch");

      const first = await burst(200, 2000);
      assertRefused(first.results);
      const refetches = server.state.hits - 1;
      assert.ok(refetches >= 1, "the first unknown kid refetches");
      assert.ok(refetches <= Math.ceil(first.elapsed / WINDOW_MS), `${refetches} refetches in ${first.elapsed} ms`);

      // The known key is not locked out by the burst, and costs no fetch.
      const hits = server.state.hits;
      r = await post(worker.url, { token: signer.mint(claims(), { act: [A1] }), body: READ(3000) });
      assert.equal(r.status, 200, r.text);
      assert.equal(server.state.hits, hits);

      // Once the window has passed, the next burst gets one more refetch, not one per token.
      await new Promise((res) => setTimeout(res, WINDOW_MS + 100));
      const second = await burst(50, 4000);
      assertRefused(second.results);
      const more = server.state.hits - hits;
      assert.ok(more >= 1 && more <= Math.ceil(second.elapsed / WINDOW_MS), `${more} refetches in ${second.elapsed} ms`);
      const refused = worker.audit().filter((a) => a.reason === "token.kid_unknown").length;
      assert.equal(refused, 250, "one audit record per refused token");
    } finally {
      await worker.stop();
      await server.stop();
    }
  });
});

// A small flood through one Worker isolate: 5,000 requests (after 1,500 of warm-up), each with a distinct
// acting agent (a distinct token, verified by WebCrypto) and a distinct tool name. Everything the Worker keeps
// per isolate is bounded (verified-token cache: `token.cache_entries`, 1024 by default, full after the
// warm-up; imported keys: 64; JWKS state: per issuer), so the isolate's own memory — its Wasm linear memory
// and its JS heap, read through workerd's V8 inspector — must not grow with the number of agents. The
// process RSS is only checked loosely: it also counts Miniflare's own Workers and the runtime.
// tests/workerd/flood.mjs runs the same at 10k / 100k (docs/hardening.md has the figures).

import assert from "node:assert/strict";
import { test } from "node:test";

import { flood } from "./flood.mjs";

// Measured (docs/hardening.md): Wasm memory ~4 MiB and +0.3 MiB over the second 2,500;
// JS heap total under 45 MiB; process RSS +50..70 MiB over the 5,000 (most of it the runtime's).
const MAX_WASM_KIB = 16 * 1024;
const MAX_WASM_GROWTH_KIB = 2 * 1024;
const MAX_JS_HEAP_TOTAL_KIB = 96 * 1024;
const MAX_RSS_GROWTH_KIB = 192 * 1024;

test("5,000 distinct agents and tool names through one isolate: the isolate's memory does not grow with them", async () => {
  const result = await flood({ checkpoints: [2500, 5000], concurrency: 8, warmup: 1500, maxSeconds: 150 });
  console.log(JSON.stringify({ baseline: result.baseline, rows: result.rows }));
  assert.equal(result.timedOut, false, "5,000 requests within the time box");
  assert.deepEqual(Object.keys(result.statuses), ["200"], JSON.stringify(result.statuses));
  const { baseline } = result;
  const [half, full] = result.rows;
  for (const row of [baseline, half, full]) assert.equal(typeof row.wasm_memory_kib, "number", JSON.stringify(row));
  assert.ok(full.wasm_memory_kib <= MAX_WASM_KIB, `Wasm memory ${full.wasm_memory_kib} KiB (bound ${MAX_WASM_KIB})`);
  assert.ok(full.wasm_memory_kib - baseline.wasm_memory_kib <= MAX_WASM_GROWTH_KIB, `Wasm memory grew ${full.wasm_memory_kib - baseline.wasm_memory_kib} KiB over 5,000 new agents once the cache was full (bound ${MAX_WASM_GROWTH_KIB})`);
  for (const row of [half, full]) assert.ok(row.js_heap_total_kib <= MAX_JS_HEAP_TOTAL_KIB, `JS heap ${row.js_heap_total_kib} KiB (bound ${MAX_JS_HEAP_TOTAL_KIB})`);
  assert.ok(full.hwm_kib - baseline.hwm_kib < MAX_RSS_GROWTH_KIB, `process peak RSS grew ${full.hwm_kib - baseline.hwm_kib} KiB (bound ${MAX_RSS_GROWTH_KIB})`);
});

// CPU cost of the Worker in workerd, from /proc/PID/stat of the workerd process (utime + stime) over N
// sequential requests, and cold start. Not a test: prints a summary. Run after a build:
//
//   node tests/workerd/bench.mjs [N]            (scripts/test-worker.sh --bench does both)
//
// The workerd process also runs Miniflare's entry worker, so every figure includes that proxy's cost; the
// "denied, no token" row is the floor (request in, small local reply out, no origin, no crypto).

import { performance } from "node:perf_hooks";

import { AGENT, claims, cpuTicks, keygen, mint, policy, removeDir, startMcpServer, startPassThrough, startWorker, tempDir, toolCall } from "./helpers.mjs";

const N = Number(process.argv[2] ?? 500);
/** Requests run before any measurement: V8 compiles Wasm lazily (Liftoff first, TurboFan once hot). */
const WARMUP = Number(process.argv[3] ?? 600);
const TICK_MS = 10; // USER_HZ is 100 on Linux

async function measure(worker, label, requests, warm = 10) {
  // Warm-up: `warm` requests of the same kind outside the measurement.
  for (const make of requests.slice(0, warm)) await (await fetch(...make())).arrayBuffer();
  const rest = requests.slice(warm);
  const startTicks = cpuTicks(worker.pid);
  const startWall = performance.now();
  const statuses = new Map();
  for (const make of rest) {
    const r = await fetch(...make());
    await r.arrayBuffer();
    statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
  }
  const wall = performance.now() - startWall;
  const ticks = cpuTicks(worker.pid) - startTicks;
  const row = {
    case: label,
    requests: rest.length,
    statuses: Object.fromEntries(statuses),
    workerd_cpu_us_per_request: Math.round((ticks * TICK_MS * 1000) / rest.length),
    wall_ms_per_request: Number((wall / rest.length).toFixed(2)),
  };
  console.log(JSON.stringify(row));
  return row;
}

const dir = tempDir("bench");
let origin = null;
let worker = null;
try {
  origin = await startMcpServer({ json: true });
  const ed = keygen("EdDSA", "b-ed", dir);
  const es = keygen("ES256", "b-es", dir);
  const tools = {
    calendar_read: { scopes: ["calendar:read"] },
    send_email: { scopes: ["email:send"], rate_limit: { key: "agent", limit: 1000000, period_seconds: 60 } },
  };
  const vars = { TXNGATE_POLICY: policy({ jwks: { keys: [ed.publicJwk, es.publicJwk] }, tools }), ORIGIN_URL: origin.url };

  // Cold start: a new workerd process loading the bundle (to `ready`), then the first request of the new
  // isolate (Wasm functions compiled on first use, policy compiled, key imported; for send_email also a
  // new Durable Object) against the second request of the same kind.
  const A = AGENT("bench");
  const bodies = {
    "denied, no token": [undefined, toolCall(1, "calendar_read", { day: "mon" })],
    "allowed calendar_read (no limit)": ["token", toolCall(1, "calendar_read", { day: "mon" })],
    "allowed send_email (Durable Object)": ["token", toolCall(1, "send_email", { to: "bob@example.com", subject: "s", body: "b" })],
  };
  for (const [label, [withToken, body]] of Object.entries(bodies)) {
    const t0 = performance.now();
    const fresh = await startWorker({ vars });
    const ready = performance.now() - t0;
    const startupCpuMs = cpuTicks(fresh.pid) * TICK_MS;
    const token = mint(ed, claims(), { act: [A] });
    const once = async () => {
      const headers = { "content-type": "application/json", accept: "application/json, text/event-stream" };
      if (withToken) headers["txn-token"] = token;
      const t = performance.now();
      await (await fetch(`${fresh.url}/mcp`, { method: "POST", headers, body })).arrayBuffer();
      return Number((performance.now() - t).toFixed(1));
    };
    const before = cpuTicks(fresh.pid);
    const first = await once();
    const firstCpuMs = (cpuTicks(fresh.pid) - before) * TICK_MS;
    const second = await once();
    console.log(JSON.stringify({ case: `cold start: ${label}`, workerd_ready_ms: Math.round(ready), workerd_startup_cpu_ms: startupCpuMs, first_request_ms: first, first_request_workerd_cpu_ms: firstCpuMs, second_request_ms: second }));
    await fresh.stop();
  }

  worker = await startWorker({ vars });
  const post = (token, body) => () => [`${worker.url}/mcp`, { method: "POST", headers: { "content-type": "application/json", accept: "application/json, text/event-stream", "txn-token": token }, body }];

  {
    const freshEd = mint(ed, claims(), { act: [A], count: N, ttl: 240 });
    const freshEs = mint(es, claims(), { act: [A], count: N, ttl: 240 });
    // Tokens for the warm-up only, so the measured ones are really fresh.
    const warmEd = mint(ed, claims(), { act: [A], count: 20, ttl: 240 });
    const warmEs = mint(es, claims(), { act: [A], count: 20, ttl: 240 });
    const cached = mint(ed, claims(), { act: [A], ttl: 240 });
    const read = (i) => toolCall(i, "calendar_read", { day: "mon" });
    const rows = [];
    // Warm-up of the txngate Worker on every path measured below.
    for (let i = 0; i < WARMUP; i++) {
      const make = [
        () => [`${worker.url}/mcp`, { method: "POST", headers: { "content-type": "application/json" }, body: read(i) }],
        post(cached, read(i)),
        post(warmEd[i % warmEd.length], read(i)),
        post(warmEs[i % warmEs.length], read(i)),
        post(cached, toolCall(i, "send_email", { to: "bob@example.com", subject: "s", body: "b" })),
      ][i % 5];
      await (await fetch(...make())).arrayBuffer();
    }
    const baseline = await startPassThrough(origin.url, { requireToken: true });
    try {
      const bpost = (token, body) => () => [`${baseline.url}/mcp`, { method: "POST", headers: { "content-type": "application/json", accept: "application/json, text/event-stream", "txn-token": token }, body }];
      const half = Math.ceil(WARMUP / 2);
      rows.push(await measure(baseline, "baseline JS Worker: 401 without a token", Array.from({ length: N + half }, (_, i) => () => [`${baseline.url}/mcp`, { method: "POST", headers: { "content-type": "application/json" }, body: read(i) }]), half));
      rows.push(await measure(baseline, "baseline JS Worker: pass-through to the origin", Array.from({ length: N + half }, (_, i) => bpost(cached, read(i))), half));
    } finally {
      await baseline.stop();
    }
    rows.push(await measure(worker, "denied, no token (floor)", Array.from({ length: N }, (_, i) => () => [`${worker.url}/mcp`, { method: "POST", headers: { "content-type": "application/json" }, body: read(i) }])));
    rows.push(await measure(worker, "allowed, fresh EdDSA token each request", freshEd.map((t, i) => post(t, read(i)))));
    rows.push(await measure(worker, "allowed, fresh ES256 token each request", freshEs.map((t, i) => post(t, read(i)))));
    rows.push(await measure(worker, "allowed, cached token", Array.from({ length: N }, (_, i) => post(cached, read(i)))));
    rows.push(await measure(worker, "allowed, cached token, rate-limited tool (Durable Object)", Array.from({ length: N }, (_, i) => post(cached, toolCall(i, "send_email", { to: "bob@example.com", subject: "s", body: "b" })))));
    console.log("\ncase | workerd CPU µs/request | wall ms/request");
    for (const r of rows) console.log(`${r.case} | ${r.workerd_cpu_us_per_request} | ${r.wall_ms_per_request}`);
  }
} finally {
  await worker?.stop();
  await origin?.stop();
  removeDir(dir);
}

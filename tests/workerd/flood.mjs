// Flood: N requests through ONE Worker isolate in workerd, each with a distinct acting agent and a distinct
// tool name, reporting the workerd process's memory (/proc/PID/status VmRSS, and VmHWM = peak RSS) at
// checkpoints. Not a test (tests/workerd/flood.test.mjs runs a small version with a bound); run after a build:
//
//   node tests/workerd/flood.mjs [--n 10000,100000,1000000] [--limit none|agent] [--tools-per-token K]
//                                [--concurrency C] [--max-seconds S] [--period P]
//
//   --n                 checkpoints (the largest is the total); default 10000,100000,1000000
//   --limit none        the policy's "*" rule has no rate limit: only the Worker isolate's own state is exercised
//   --limit agent       "*" has a per-agent limit: every request is a new bucket = a new Durable Object instance
//                       in the same workerd process (limit 10 per --period seconds, default 1, so each bucket
//                       drains and its alarm deletes the stored state one --period after its call)
//   --tools-per-token K requests per minted token (default 1: every request a new token and a new agent);
//                       K > 1 mints fewer tokens (K tool names per agent, the token cache answers the rest)
//   --max-seconds S     time box (default 900): stops at the next request once S have passed, reports the
//                       largest N reached
//   --control           the same flood through a plain JS Worker that only forwards (no txngate): the
//                       runtime's and Miniflare's own share of the process RSS
//
// Memory columns: rss_kib / hwm_kib = the whole workerd process (it also runs Miniflare's entry and helper
// Workers); js_heap_* and wasm_memory_kib = the Worker's own isolate, read through workerd's V8 inspector
// (Runtime.getHeapUsage; the module's WebAssembly.Memory found with Runtime.queryObjects).
//
// What varies: the agent is the token's `act.sub` (spiffe://test.example/agent/flood-<i>), so distinct agents
// need distinct tokens; they are minted in this process with Ed25519 (node:crypto, well under 1 ms each),
// signed by a key the policy trusts inline, so each is verified by the Worker (WebCrypto) unless K > 1. The
// tool name is `t<i>` (distinct per request), matched by the policy's "*" rule. The origin is a minimal HTTP
// server in this process (200 JSON), so the figures are the gateway's, not an MCP server's.
// Each output line is JSON; the last one is the summary.

import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import { AGENT, claims, freePort, inspectWorker, localSigner, policy, startPassThrough, startWorker, toolCall } from "./helpers.mjs";

/** VmRSS and VmHWM of a process, in KiB. */
export function memory(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kib = (name) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN);
  return { rss_kib: kib("VmRSS"), hwm_kib: kib("VmHWM") };
}

/**
 * The txngate Worker isolate's own heap, through workerd's V8 inspector (Runtime.getHeapUsage): the process
 * RSS also counts Miniflare's entry and helper Workers in the same process and memory V8 has not given back.
 */
async function heapProbe(inspectorPort) {
  let context = null;
  const { call, close } = await inspectWorker(inspectorPort, {
    onEvent: (d) => {
      if (d.method === "Runtime.executionContextCreated") context = d.params.context.id;
    },
  });
  // Runtime.enable announces the Worker's execution context (evaluations need its id; the console events it
  // also turns on are ignored).
  await call("Runtime.enable");
  // The module's WebAssembly.Memory is not reachable from globalThis: find it by its prototype.
  const wasmMemoryKib = async () => {
    const proto = await call("Runtime.evaluate", { expression: "WebAssembly.Memory.prototype", contextId: context });
    const found = proto?.result?.objectId && (await call("Runtime.queryObjects", { prototypeObjectId: proto.result.objectId }));
    if (!found?.objects?.objectId) return null;
    const sizes = await call("Runtime.callFunctionOn", { objectId: found.objects.objectId, functionDeclaration: "function () { return this.map((m) => m.buffer.byteLength); }", returnByValue: true });
    const list = sizes?.result?.value;
    return Array.isArray(list) ? Math.round(list.reduce((a, b) => a + b, 0) / 1024) : null;
  };
  return {
    async usage() {
      const r = await call("Runtime.getHeapUsage");
      const wasm = await wasmMemoryKib();
      return r ? { js_heap_used_kib: Math.round(r.usedSize / 1024), js_heap_total_kib: Math.round(r.totalSize / 1024), wasm_memory_kib: wasm } : { js_heap: "no answer" };
    },
    close,
  };
}

async function startOrigin() {
  const server = createServer((req, res) => {
    req.resume();
    req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end('{"jsonrpc":"2.0","id":1,"result":{"content":[]}}'));
  });
  await new Promise((res) => server.listen(0, "127.0.0.1", res));
  return { url: `http://127.0.0.1:${server.address().port}`, stop: () => new Promise((res) => { server.closeAllConnections(); server.close(() => res()); }) };
}

/**
 * Runs the flood; `onCheckpoint(row)` is called at each checkpoint. Resolves with { rows, baseline, statuses }.
 * `warmup` requests (distinct agents too) run before the baseline is read.
 */
export async function flood({ checkpoints, control = false, limit = "none", toolsPerToken = 1, concurrency = 8, maxSeconds = 900, period = 1, warmup = 500, onCheckpoint = () => {} }) {
  const signer = localSigner("k-flood");
  const origin = await startOrigin();
  const star = { scopes: ["calendar:read"] };
  if (limit === "agent") star.rate_limit = { key: "agent", limit: 10, period_seconds: period };
  const inspectorPort = await freePort();
  const worker = control
    ? await startPassThrough(origin.url, { inspectorPort })
    : await startWorker({ vars: { TXNGATE_POLICY: policy({ jwks: signer.jwks, tools: { "*": star } }), ORIGIN_URL: origin.url }, inspectorPort });
  const statuses = {};
  const rows = [];
  let heap = null;
  try {
    heap = await heapProbe(inspectorPort);
    const total = Math.max(...checkpoints);
    const pending = [...checkpoints].sort((a, b) => a - b);
    let next = 0;
    let done = 0;
    // Tokens by agent index: lanes interleave, so the agent of one lane's request is not the last one minted.
    const tokens = new Map();
    let started = 0;
    let timedOut = false;
    // Request i: agent flood-<floor(i/K)>, tool t<i>. Tokens are minted as the flood goes (a token lives
    // at most 300 s; a pre-minted million would expire before use).
    const one = async (i) => {
      const agentIndex = Math.floor(i / toolsPerToken);
      let token = tokens.get(agentIndex);
      if (!token) {
        if (tokens.size > 4 * concurrency) tokens.clear();
        token = signer.mint(claims(), { act: [AGENT(`flood-${agentIndex}`)], ttl: 300 });
        tokens.set(agentIndex, token);
      }
      const response = await fetch(`${worker.url}/mcp`, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json, text/event-stream", "txn-token": token },
        body: toolCall(i, `t${i}`, {}),
      });
      await response.arrayBuffer();
      return response.status;
    };
    const lane = async (end, record) => {
      for (;;) {
        const i = next++;
        if (i >= end) return;
        if (record && (Date.now() - started) / 1000 > maxSeconds) {
          timedOut = true;
          next = end;
          return;
        }
        const status = await one(i);
        if (record) {
          statuses[status] = (statuses[status] ?? 0) + 1;
          done += 1;
          if (pending.length && done >= pending[0]) {
            pending.shift();
            const row = { n: done, seconds: Number(((Date.now() - started) / 1000).toFixed(1)), ...memory(worker.pid), statuses: { ...statuses } };
            row.requests_per_second = Math.round(done / row.seconds);
            Object.assign(row, await heap.usage());
            rows.push(row);
            onCheckpoint(row);
          }
        }
      }
    };
    // Warm-up (distinct agents and tools too, numbered after the measured range).
    next = total;
    await Promise.all(Array.from({ length: concurrency }, () => lane(total + warmup, false)));
    const baseline = { n: 0, ...memory(worker.pid), ...(await heap.usage()) };
    onCheckpoint(baseline);
    next = 0;
    tokens.clear();
    started = Date.now();
    await Promise.all(Array.from({ length: concurrency }, () => lane(total, true)));
    if (timedOut && (!rows.length || rows[rows.length - 1].n !== done)) {
      const seconds = (Date.now() - started) / 1000;
      const row = { n: done, seconds: Number(seconds.toFixed(1)), ...memory(worker.pid), statuses: { ...statuses }, requests_per_second: Math.round(done / seconds), time_box: true, ...(await heap.usage()) };
      rows.push(row);
      onCheckpoint(row);
    }
    return { rows, baseline, statuses, timedOut, pid: worker.pid };
  } finally {
    heap?.close();
    await worker.stop();
    await origin.stop();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const arg = (name, fallback) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : fallback;
  };
  const options = {
    checkpoints: arg("n", "10000,100000,1000000").split(",").map(Number),
    limit: arg("limit", "none"),
    toolsPerToken: Number(arg("tools-per-token", "1")),
    concurrency: Number(arg("concurrency", "8")),
    maxSeconds: Number(arg("max-seconds", "900")),
    period: Number(arg("period", "1")),
    control: process.argv.includes("--control"),
  };
  if (!["none", "agent"].includes(options.limit)) throw new Error("--limit none|agent");
  console.log(JSON.stringify({ flood: options }));
  const result = await flood({ ...options, onCheckpoint: (row) => console.log(JSON.stringify(row)) });
  const last = result.rows[result.rows.length - 1];
  console.log(JSON.stringify({ summary: { largest_n: last?.n ?? 0, timed_out: result.timedOut, baseline_rss_kib: result.baseline.rss_kib, peak_rss_kib: last?.hwm_kib, statuses: result.statuses } }));
}

// The txngate Worker in workerd (issue #7): CPU per allowed MCP `tools/call`, bundle size, cold start.
//
//   node tests/bench/worker_bench.mjs --out target/bench/worker.md [--quick] [--build] [--n N] [--rounds R]
//                                     [--compare DIR] [--profile] [--rows NAME,...] [--mcp-origin]
//
// --profile: afterwards, a V8 CPU profile of the txngate isolate (workerd's inspector, loopback) over N cached
// and N fresh requests: the top functions by self time (share of the isolate's busy samples) and busy
// samples per request, written to the JSON as meta.profile and printed. Sampling, so only shares are
// meaningful; it sees JS and Wasm in the isolate, not workerd's own C++ (sockets, HTTP, streams).
// --compare DIR: another build of the Worker (a copy of an earlier worker/build/) measured in the same run,
// interleaved with this one (rows "…, other build"): before/after figures for a change.
// --rows a,b: only the rows whose names contain one of these (and the baseline), e.g. `--rows cached,other`.
//
// Writes the markdown fragment to --out and target/bench/worker.json next to it:
// {"rows": [{"name", "cpu_us", "rps", "p50_ms", "p99_ms", ...}], "ratios": {name: cpu_us / baseline}, ...}.
//
// CPU: the workerd process's CPU time (all its threads, /proc/PID/task/*/schedstat, ns; /proc/PID/stat
// utime+stime kept as a cross-check) over N sequential requests after a warm-up, divided by N; beside it the
// main thread's alone (`cpu_us_main`, `over_baseline_main_us`: the thread whose event loop runs the isolates,
// without V8's background compile / tier-up / GC threads, whose noise the whole-process figure carries). The workerd
// process also runs Miniflare's entry worker (a proxy in front of ours), so every row includes it; the
// baseline row is a plain JS pass-through Worker in the same setup, fetching the same origin, with the body
// read whole and forwarded as a buffer (as txngate and the peer do). Allowed requests go to the origin below.
// Every row's workerd runs side by side (started up front); the rows are measured interleaved, in rounds
// with a rotating order (`--rounds`, N requests per row per round), and each row's figure is the median of
// its rounds: a busy machine's load then weighs on every row alike, and the "− baseline" difference is
// not swamped by drift between rows measured minutes apart.
// Bundle: `wrangler deploy --dry-run` (the deploy build) prints "Total Upload ... / gzip ..."; with a build
// already in worker/build/ (and no --build) the same figure is computed here with zlib (gzip -9 of the
// bundle's index.js + index_bg.wasm). Cold start: a fresh workerd (Miniflare start to `ready`), then the
// time to the first response of the new isolate. Every process is stopped; every loop is bounded.
//
// The peer (issue #17): tests/bench/peer/worker.mjs, a plain-JS authorizer on `jose` doing the checks this
// request needs, bundled here with esbuild (jose from node_modules, or from NODE_PATH) and measured with the
// same request in the same rounds: cached token, fresh ES256, rate-limited tool (its own GCRA Durable Object),
// cold start and bundle. The fragment gives txngate's CPU over the pass-through against the peer's.

import { spawnSync } from "node:child_process";
import { createServer } from "node:http";
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { gzipSync } from "node:zlib";

import { Miniflare } from "miniflare";

import {
  AGENT, COMPAT_DATE, ISS, ROOT, TRUST_DOMAIN, WORKER_SCRIPT, claims, cpuTicks, freePort, inspectWorker, keygen, mint, policy,
  removeDir, startMcpServer, startPassThrough, startWorker, tempDir, toolCall, workerdPid,
} from "../workerd/helpers.mjs";

const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const QUICK = flag("--quick");
const OUT = resolve(option("--out", join(ROOT, "target/bench/worker.md")));
const N = Number(option("--n", QUICK ? 100 : 300));
const ROUNDS = Number(option("--rounds", QUICK ? 3 : 5));
const WARMUP = Number(option("--warmup", QUICK ? 300 : 800));
const COMPARE = option("--compare", null);
const PROFILE = flag("--profile");
// The origin: by default a node:http server in this process answering every call with the MCP SDK server's
// own answer to this call (the same bytes), because the SDK server (uvicorn, h11) holds every request after
// the first on a keep-alive connection ≈ 44 ms (measured with one-write requests and TCP_NODELAY too; a new
// connection answers in 3–13 ms), and workerd's CPU per request grows ≈ 15 µs per ms of a request's wall
// time: every row then sat at p50 ≈ 48 ms. --mcp-origin: the real MCP SDK server (tests/e2e/mcp_server.py)
// instead (--plain-origin, the old name of the default, is accepted). Every row fetches the same origin.
const PLAIN_ORIGIN = !flag("--mcp-origin");
const PROFILE_INTERVAL_US = 50;
const COLD_RUNS = Number(option("--cold-runs", QUICK ? 1 : 5));
const TICK_US = 10_000; // USER_HZ 100

function cpuNs(pid) {
  let total = 0;
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    try {
      total += Number(readFileSync(`/proc/${pid}/task/${task}/schedstat`, "utf8").split(" ")[0]);
    } catch {} // a thread that just exited
  }
  return total;
}

/** CPU ns of workerd's main thread (tid = pid): its event loop runs the isolates (ours, Miniflare's entry
 * worker, the Durable Object); the other threads are V8's platform workers (compile, tier-up, GC) and I/O. */
function mainCpuNs(pid) {
  return Number(readFileSync(`/proc/${pid}/task/${pid}/schedstat`, "utf8").split(" ")[0]);
}

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

/** Bundle: build with wrangler's dry run when asked or when there is no build; else measure worker/build/. */
function bundle() {
  const buildDir = dirname(WORKER_SCRIPT);
  let wrangler = null;
  if (flag("--build") || !existsSync(WORKER_SCRIPT)) {
    const out = tempDir("dry-run");
    console.error("worker_bench: building with wrangler deploy --dry-run (minutes from clean)");
    const r = spawnSync(join(ROOT, "node_modules/.bin/wrangler"), ["deploy", "--dry-run", "--outdir", out], {
      cwd: ROOT, encoding: "utf8", timeout: 1_800_000, stdio: ["ignore", "pipe", "pipe"],
    });
    removeDir(out);
    if (r.status !== 0) throw new Error(`wrangler deploy --dry-run failed (${r.status}):\n${r.stderr.slice(-2000)}`);
    const m = /Total Upload:\s*([\d.]+)\s*KiB\s*\/\s*gzip:\s*([\d.]+)\s*KiB/.exec(r.stdout + r.stderr);
    if (m) wrangler = { upload_kib: Number(m[1]), gzip_kib: Number(m[2]) };
  }
  // index.js is the JS shell; core.mjs (when present) worker-build's module with the wasm-bindgen glue.
  const files = ["index.js", "core.mjs", "index_bg.wasm"].map((f) => join(buildDir, f)).filter((f) => existsSync(f));
  const raw = files.reduce((n, f) => n + statSync(f).size, 0);
  const gz = files.reduce((n, f) => n + gzipSync(readFileSync(f), { level: 9 }).length, 0);
  return { bytes: raw, gzip_bytes: gz, wasm_bytes: statSync(join(buildDir, "index_bg.wasm")).size, wrangler };
}

/** Another build (--compare) in workerd, configured as helpers.mjs's startWorker configures worker/build/. */
async function startOtherBuild(dir, vars) {
  const script = join(resolve(dir), "index.js");
  if (!existsSync(script)) throw new Error(`--compare: ${script} is missing`);
  const bindings = { ...vars, TXNGATE_POLICY: typeof vars.TXNGATE_POLICY === "string" ? vars.TXNGATE_POLICY : JSON.stringify(vars.TXNGATE_POLICY) };
  const mf = new Miniflare({
    modules: true, scriptPath: script, modulesRoot: dirname(script),
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"] }],
    compatibilityDate: COMPAT_DATE, bindings,
    durableObjects: { TXNGATE_LIMITER: { className: "TxngateRateLimiter", useSQLite: true } },
    host: "127.0.0.1", port: 0,
    handleRuntimeStdio(stdout, stderr) { stdout.resume(); stderr.resume(); },
  });
  const url = await mf.ready;
  return { url: url.href.replace(/\/$/, ""), pid: workerdPid(), stop: () => mf.dispose() };
}

const PEER_SOURCE = join(ROOT, "tests/bench/peer/worker.mjs");
const PEER_SCRIPT = join(ROOT, "target/bench/peer/index.mjs");

/** Bundles the peer with esbuild (minified, as wrangler would deploy it): returns its sizes. */
function buildPeer() {
  mkdirSync(dirname(PEER_SCRIPT), { recursive: true });
  const r = spawnSync(join(ROOT, "node_modules/.bin/esbuild"), [PEER_SOURCE, "--bundle", "--format=esm", "--platform=neutral",
    "--main-fields=module,main", "--conditions=worker,browser", "--minify", `--outfile=${PEER_SCRIPT}`], {
    cwd: ROOT, encoding: "utf8", timeout: 120_000, stdio: ["ignore", "pipe", "pipe"],
  });
  if (r.status !== 0) throw new Error(`bundling the peer failed (is jose installed? scripts/bootstrap.sh --node):\n${r.stderr.slice(-2000)}`);
  const code = readFileSync(PEER_SCRIPT);
  return { bytes: code.length, gzip_bytes: gzipSync(code, { level: 9 }).length };
}

/** The peer in workerd, set up as startWorker sets up txngate (its limiter object in the same process). */
async function startPeer(config, originUrl) {
  const mf = new Miniflare({
    modules: true, scriptPath: PEER_SCRIPT, modulesRoot: dirname(PEER_SCRIPT), compatibilityDate: COMPAT_DATE,
    bindings: { PEER_CONFIG: JSON.stringify(config), ORIGIN_URL: originUrl },
    durableObjects: { PEER_LIMITER: { className: "PeerLimiter", useSQLite: true } },
    host: "127.0.0.1", port: 0,
    handleRuntimeStdio(stdout, stderr) { stdout.resume(); stderr.resume(); },
  });
  const url = await mf.ready;
  return { url: url.href.replace(/\/$/, ""), pid: workerdPid(), stop: () => mf.dispose() };
}

/** The default origin: answers every request with the MCP SDK server's answer to the bench's call. */
async function startPlainOrigin() {
  const result = { result: "mon: 09:00 standup; 14:00 review", "x-txngate-agent": null, txngate_headers: {}, txn_token_present: false };
  const answer = JSON.stringify({ jsonrpc: "2.0", id: 1, result: { content: [{ text: JSON.stringify(result, null, 2), type: "text" }], isError: false, structuredContent: result } });
  const server = createServer((req, res) => {
    req.resume();
    req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end(answer));
  });
  // Idle keep-alive connections stay open longer than workerd keeps them: no race on a connection node closes.
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 125_000;
  await new Promise((res) => server.listen(0, "127.0.0.1", res));
  return { url: `http://127.0.0.1:${server.address().port}`, stop: () => new Promise((res) => server.close(res)) };
}

const HEADERS = { "content-type": "application/json", accept: "application/json, text/event-stream" };

async function once(url, token, body) {
  const headers = { ...HEADERS };
  if (token) headers["txn-token"] = token;
  let r;
  try {
    r = await fetch(`${url}/mcp`, { method: "POST", headers, body });
  } catch (e) {
    // A keep-alive connection workerd closed while tokens were being minted (seconds on a busy machine):
    // the request never reached the Worker; sent once more on a new connection.
    if (e.cause?.code !== "UND_ERR_SOCKET") throw e;
    r = await fetch(`${url}/mcp`, { method: "POST", headers, body });
  }
  await r.arrayBuffer();
  return r.status;
}

const body = (i) => toolCall(i, "calendar_read", { day: "mon" });

async function warm(row) {
  const tokens = row.tokens(WARMUP);
  for (let i = 0; i < WARMUP; i++) {
    const status = await once(row.target.url, tokens[i % tokens.length], body(i)).catch((e) => {
      throw new Error(`${row.name}: warm-up request ${i}: ${e.message} (${e.cause?.message ?? "no cause"})`);
    });
    if (status !== 200) throw new Error(`${row.name}: warm-up request got ${status}`);
  }
}

/** One round of a row: N sequential requests, `tokens[i % tokens.length]` for request i. */
async function round(row) {
  const tokens = row.tokens(N);
  const times = [];
  const pid = row.target.pid;
  const [t0, n0, m0, w0] = [cpuTicks(pid), cpuNs(pid), mainCpuNs(pid), performance.now()];
  for (let i = 0; i < N; i++) {
    const s = performance.now();
    const status = await once(row.target.url, tokens[i % tokens.length], body(i));
    times.push(performance.now() - s);
    if (status !== 200) throw new Error(`${row.name}: request ${i} got ${status}`);
  }
  const [t1, n1, m1, w1] = [cpuTicks(pid), cpuNs(pid), mainCpuNs(pid), performance.now()];
  return {
    cpu_us: (n1 - n0) / N / 1000, cpu_us_main: (m1 - m0) / N / 1000, cpu_us_stat: ((t1 - t0) * TICK_US) / N,
    rps: (N * 1000) / (w1 - w0), times,
  };
}

/** All rows interleaved: ROUNDS rounds, the order rotating each round; per row the median of its rounds. */
async function measureAll(rows) {
  for (const row of rows) await warm(row);
  const results = new Map(rows.map((r) => [r.name, []]));
  for (let k = 0; k < ROUNDS; k++) {
    for (let j = 0; j < rows.length; j++) {
      const row = rows[(j + k) % rows.length];
      const r = await round(row);
      results.get(row.name).push(r);
      const p50 = [...r.times].sort((a, b) => a - b)[Math.floor(r.times.length / 2)];
      console.error(`  round ${k + 1}/${ROUNDS} ${row.name}: ${r.cpu_us.toFixed(1)} µs CPU/request (main thread ${r.cpu_us_main.toFixed(1)}), p50 ${p50.toFixed(2)} ms`);
    }
  }
  return rows.map((row) => {
    const rs = results.get(row.name);
    const times = rs.flatMap((r) => r.times).sort((a, b) => a - b);
    return {
      name: row.name, label: row.label, requests: N * ROUNDS, rounds: ROUNDS,
      cpu_us: Number(median(rs.map((r) => r.cpu_us)).toFixed(1)),
      cpu_us_rounds: rs.map((r) => Number(r.cpu_us.toFixed(1))),
      cpu_us_main: Number(median(rs.map((r) => r.cpu_us_main)).toFixed(1)),
      cpu_us_main_rounds: rs.map((r) => Number(r.cpu_us_main.toFixed(1))),
      cpu_us_stat: Number(median(rs.map((r) => r.cpu_us_stat)).toFixed(1)),
      rps: Math.round(median(rs.map((r) => r.rps))),
      p50_ms: Number(percentile(times, 50).toFixed(3)),
      p99_ms: Number(percentile(times, 99).toFixed(3)),
    };
  });
}

async function coldStart(start, token) {
  const t0 = performance.now();
  const fresh = await start();
  try {
    const ready = performance.now() - t0;
    const startupCpuMs = cpuNs(fresh.pid) / 1e6;
    const c0 = cpuNs(fresh.pid);
    const s = performance.now();
    const status = await once(fresh.url, token, toolCall(1, "calendar_read", { day: "mon" }));
    const first = performance.now() - s;
    const firstCpu = (cpuNs(fresh.pid) - c0) / 1e6;
    const s2 = performance.now();
    await once(fresh.url, token, toolCall(2, "calendar_read", { day: "mon" }));
    const second = performance.now() - s2;
    if (status !== 200) throw new Error(`cold start: first request got ${status}`);
    return { ready_ms: ready, startup_cpu_ms: startupCpuMs, first_response_ms: first, first_cpu_ms: firstCpu, second_response_ms: second };
  } finally {
    await fresh.stop();
  }
}

/** A CPU profile of the Worker's isolate over `tokens.length` requests: top self-time functions. */
async function profileIsolate(target, inspectorPort, tokens) {
  const { call, close } = await inspectWorker(inspectorPort, { timeoutMs: 30000 });
  try {
    await call("Profiler.enable");
    await call("Profiler.setSamplingInterval", { interval: PROFILE_INTERVAL_US });
    await call("Profiler.start");
    for (let i = 0; i < tokens.length; i++) {
      const status = await once(target.url, tokens[i], body(i));
      if (status !== 200) throw new Error(`--profile: request ${i} got ${status}`);
    }
    const { profile } = (await call("Profiler.stop")) ?? {};
    if (!profile) throw new Error("--profile: no profile from the inspector");
    const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
    const self = new Map();
    let busy = 0;
    for (const sample of profile.samples) {
      const f = nodes.get(sample)?.callFrame;
      const name = f ? f.functionName || `(anonymous ${f.url ? f.url.split("/").pop() : "native"})` : "?";
      if (name === "(idle)") continue;
      self.set(name, (self.get(name) ?? 0) + 1);
      busy += 1;
    }
    const top = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25)
      .map(([name, n]) => ({ name: name.replace(/::h[0-9a-f]{16}$/, ""), share: Number((n / busy).toFixed(4)) }));
    return { requests: tokens.length, interval_us: PROFILE_INTERVAL_US, busy_samples_per_request: Number((busy / tokens.length).toFixed(2)), top };
  } finally {
    close();
  }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const dir = tempDir("bench");
let origin = null;
let worker = null;
let baseline = null;
let limited = null;
let other = null;
let otherLimited = null;
let peer = null;
let peerLimited = null;
try {
  const started = performance.now();
  const size = bundle();
  const peerSize = buildPeer();
  // Without the MCP SDK (a venv that lacks it), the same fixed answer from node:http, said in the fragment.
  let originNote = PLAIN_ORIGIN
    ? "origin: node:http answering with the MCP SDK server's answer to this call (the SDK server stalls keep-alive requests ≈ 44 ms; --mcp-origin uses it)"
    : "origin: the MCP SDK server (tests/e2e/mcp_server.py, --mcp-origin)";
  try {
    origin = PLAIN_ORIGIN ? await startPlainOrigin() : await startMcpServer({ json: true });
  } catch (e) {
    console.error(`worker_bench: the MCP SDK server did not start (${e.message}); using a node:http origin`);
    originNote = `origin: a fixed JSON-RPC answer from node:http (the MCP SDK server did not start: ${e.message})`;
    origin = await startPlainOrigin();
  }
  const es = keygen("ES256", "bench-es", dir);
  const A = AGENT("bench");
  const tools = { calendar_read: { scopes: ["calendar:read"] }, "*": { effect: "deny" } };
  const vars = { TXNGATE_POLICY: policy({ jwks: { keys: [es.publicJwk] }, tools }), ORIGIN_URL: origin.url };
  // Tokens live 240 s (the policy allows 300): each row mints its own right before it runs.
  const one = () => [mint(es, claims(), { act: [A], ttl: 240 })];
  const cached = one();

  // The peer: the same keys, issuer, audience, agents' ceilings and tool rules as the txngate policy.
  const peerConfig = (rateLimited) => ({
    jwks: { keys: [es.publicJwk] }, iss: ISS, aud: TRUST_DOMAIN, max_lifetime_seconds: 300,
    agents: [[`spiffe://${TRUST_DOMAIN}/orchestrator`, ["*"]], [`spiffe://${TRUST_DOMAIN}/agent/`, ["calendar:*", "email:send"]]],
    tools: { calendar_read: { scopes: ["calendar:read"], ...(rateLimited ? { rate_limit: { limit: 1000000, period_seconds: 3600 } } : {}) }, "*": { effect: "deny" } },
  });

  const colds = [];
  const peerColds = [];
  const otherColds = [];
  // One request first, to a throwaway pass-through: this process's own first fetch (undici's start-up) is
  // not charged to the first cold run.
  {
    const warmUp = await startPassThrough(origin.url, { buffer: true });
    try {
      await once(warmUp.url, cached[0], body(0));
    } finally {
      await warmUp.stop();
    }
  }
  for (let i = 0; i < COLD_RUNS; i++) {
    colds.push(await coldStart(() => startWorker({ vars, keepLogs: false }), cached[0]));
    peerColds.push(await coldStart(() => startPeer(peerConfig(false), origin.url), cached[0]));
    if (COMPARE) otherColds.push(await coldStart(() => startOtherBuild(COMPARE, vars), cached[0]));
  }
  const medianOf = (runs) => Object.fromEntries(Object.keys(runs[0]).map((k) => [k, Number(median(runs.map((c) => c[k])).toFixed(1))]));
  const cold = medianOf(colds);
  const peerCold = medianOf(peerColds);
  const otherCold = COMPARE ? medianOf(otherColds) : null;
  console.error(`  cold start: ${JSON.stringify(cold)}; peer: ${JSON.stringify(peerCold)}${otherCold ? `; other build: ${JSON.stringify(otherCold)}` : ""}`);

  // The pass-through reads the body whole and forwards that buffer, as txngate and the peer do.
  baseline = await startPassThrough(origin.url, { buffer: true });
  const inspectorPort = PROFILE ? await freePort() : null;
  // Logs read and dropped, as for the peer and the other build (collecting them costs this process per line).
  worker = await startWorker({ vars, keepLogs: false, ...(PROFILE ? { inspectorPort } : {}) });
  // The same policy with a (never reached) rate limit on the tool: each call then also makes the Durable
  // Object round trip (the object runs in the same workerd process, so its CPU counts).
  const limitedTools = { ...tools, calendar_read: { ...tools.calendar_read, rate_limit: { key: "agent", limit: 1000000, period_seconds: 3600 } } };
  limited = await startWorker({ vars: { ...vars, TXNGATE_POLICY: policy({ jwks: { keys: [es.publicJwk] }, tools: limitedTools }) }, keepLogs: false });
  // Tokens live 240 s (the policy allows 300): minted right before each round (and warm-up) that uses them.
  // The fresh row's tokens are all distinct, its warm-up ones too (the fresh path, WebCrypto verify with
  // the imported key, is what must be warm).
  const fresh = (n) => mint(es, claims(), { act: [A], count: Math.max(n, 2), ttl: 240 });
  peer = await startPeer(peerConfig(false), origin.url);
  peerLimited = await startPeer(peerConfig(true), origin.url);
  if (COMPARE) {
    other = await startOtherBuild(COMPARE, vars);
    otherLimited = await startOtherBuild(COMPARE, { ...vars, TXNGATE_POLICY: policy({ jwks: { keys: [es.publicJwk] }, tools: limitedTools }) });
  }
  const allRows = [
    { name: "baseline_passthrough", label: "plain JS pass-through Worker (no auth)", target: baseline, tokens: one },
    { name: "txngate_cached", label: "txngate, cached token (repeated)", target: worker, tokens: one },
    { name: "txngate_fresh_es256", label: "txngate, fresh ES256 token per request (WebCrypto)", target: worker, tokens: fresh },
    { name: "txngate_cached_limited", label: "txngate, cached token, rate-limited tool (Durable Object per call)", target: limited, tokens: one },
    { name: "peer_cached", label: "peer (plain JS on jose), cached token (repeated)", target: peer, tokens: one },
    { name: "peer_fresh_es256", label: "peer (plain JS on jose), fresh ES256 token per request (WebCrypto)", target: peer, tokens: fresh },
    { name: "peer_cached_limited", label: "peer (plain JS on jose), cached token, rate-limited tool (Durable Object per call)", target: peerLimited, tokens: one },
    ...(other ? [
      { name: "other_cached", label: `txngate, cached token, other build (${COMPARE})`, target: other, tokens: one },
      { name: "other_fresh_es256", label: `txngate, fresh ES256 token, other build (${COMPARE})`, target: other, tokens: fresh },
      { name: "other_cached_limited", label: `txngate, cached token, rate-limited tool, other build (${COMPARE})`, target: otherLimited, tokens: one },
    ] : []),
  ];
  // --rows a,b: only the rows whose names contain one of these (the baseline always runs), for a quick A/B.
  const only = option("--rows", null)?.split(",");
  const rows = await measureAll(allRows.filter((r, i) => i === 0 || !only || only.some((o) => r.name.includes(o))));
  let profile = null;
  if (PROFILE) {
    profile = {
      cached: await profileIsolate(worker, inspectorPort, Array(N).fill(one()[0])),
      fresh_es256: await profileIsolate(worker, inspectorPort, fresh(N)),
    };
    for (const [k, p] of Object.entries(profile)) {
      console.error(`  profile ${k}: ${p.busy_samples_per_request} busy samples of ${p.interval_us} µs per request`);
      for (const f of p.top.slice(0, 15)) console.error(`    ${(100 * f.share).toFixed(1).padStart(5)}%  ${f.name}`);
    }
  }
  const base = rows[0].cpu_us;
  const ratios = Object.fromEntries(rows.map((r) => [r.name, Number((r.cpu_us / base).toFixed(3))]));
  const baseMain = rows[0].cpu_us_main;
  for (const r of rows) {
    r.over_baseline_us = Number((r.cpu_us - base).toFixed(1));
    r.over_baseline_main_us = Number((r.cpu_us_main - baseMain).toFixed(1));
  }
  // txngate against the peer, each over the pass-through (the Worker's own cost), per request kind.
  const over = (name) => rows.find((r) => r.name === name)?.over_baseline_us;
  const overMain = (name) => rows.find((r) => r.name === name)?.over_baseline_main_us;
  const versusPeer = Object.fromEntries([["cached", "txngate_cached", "peer_cached"], ["fresh_es256", "txngate_fresh_es256", "peer_fresh_es256"],
    ["cached_limited", "txngate_cached_limited", "peer_cached_limited"]].map(([k, t, p]) => [k, {
    txngate_us: over(t), peer_us: over(p), ratio: over(p) > 0 ? Number((over(t) / over(p)).toFixed(2)) : null,
    txngate_main_us: overMain(t), peer_main_us: overMain(p),
    ratio_main: overMain(p) > 0 ? Number((overMain(t) / overMain(p)).toFixed(2)) : null,
  }]));
  versusPeer.cold_start_first_cpu = { txngate_ms: cold.first_cpu_ms, peer_ms: peerCold.first_cpu_ms,
    ratio: peerCold.first_cpu_ms > 0 ? Number((cold.first_cpu_ms / peerCold.first_cpu_ms).toFixed(2)) : null };
  versusPeer.cold_start_first_response = { txngate_ms: cold.first_response_ms, peer_ms: peerCold.first_response_ms,
    ratio: peerCold.first_response_ms > 0 ? Number((cold.first_response_ms / peerCold.first_response_ms).toFixed(2)) : null };
  const meta = {
    profile,
    requests_per_round: N, rounds: ROUNDS, warmup: WARMUP, cold_runs: COLD_RUNS, bundle: size, cold_start: cold,
    peer_bundle: peerSize, peer_cold_start: peerCold, other_cold_start: otherCold,
    cold_start_runs: { txngate: colds, peer: peerColds, other: otherColds },
    elapsed_s: Number(((performance.now() - started) / 1000).toFixed(1)),
  };
  mkdirSync(dirname(OUT), { recursive: true });
  const metrics = {
    bundle_gzip_bytes: size.gzip_bytes, peer_bundle_gzip_bytes: peerSize.gzip_bytes,
    cold_start_ms: cold.first_response_ms, peer_cold_start_ms: peerCold.first_response_ms,
    cold_start_cpu_ms: cold.first_cpu_ms, peer_cold_start_cpu_ms: peerCold.first_cpu_ms,
    // The isolate's startup (module evaluation; txngate compiles its policy there): reported beside the first
    // response, so work moved into startup is not hidden by the cold-start figure.
    startup_cpu_ms: cold.startup_cpu_ms, peer_startup_cpu_ms: peerCold.startup_cpu_ms,
  };
  writeFileSync(join(dirname(OUT), "worker.json"), JSON.stringify({ rows, ratios, versus_peer: versusPeer, metrics, meta }, null, 1));
  const kib = (b) => (b / 1024).toFixed(1);
  const lines = [
    `workerd (wrangler's Miniflare), ${N} sequential requests per row per round, ${ROUNDS} interleaved rounds (median), after ${WARMUP} warm-up; CPU of the whole workerd process (includes Miniflare's entry worker: see the baseline); ${originNote}.`,
    "",
    "| case | workerd CPU µs/request | − baseline (the Worker's own cost) | × baseline | main thread µs/request | main − baseline | req/s | p50 ms | p99 ms |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...rows.map((r) => `| ${r.label} | ${r.cpu_us} | ${(r.cpu_us - base).toFixed(1)} | ${ratios[r.name].toFixed(2)} | ${r.cpu_us_main} | ${r.over_baseline_main_us} | ${r.rps} | ${r.p50_ms.toFixed(2)} | ${r.p99_ms.toFixed(2)} |`),
    "",
    `Bundle: ${kib(size.bytes)} KiB (index.js + core.mjs + index_bg.wasm), **${kib(size.gzip_bytes)} KiB gzipped**` +
      (size.wrangler ? `; wrangler dry run: ${size.wrangler.upload_kib} KiB / gzip ${size.wrangler.gzip_kib} KiB` : "") + ".",
    `Cold start (median of ${COLD_RUNS}): workerd ready in ${cold.ready_ms} ms (${cold.startup_cpu_ms} ms CPU), first response ${cold.first_response_ms} ms (${cold.first_cpu_ms} ms CPU), second ${cold.second_response_ms} ms.`,
    ...(otherCold ? [`Other build (${COMPARE}), cold start (same runs, interleaved): ready in ${otherCold.ready_ms} ms (${otherCold.startup_cpu_ms} ms CPU), first response ${otherCold.first_response_ms} ms (${otherCold.first_cpu_ms} ms CPU), second ${otherCold.second_response_ms} ms.`] : []),
    `Peer (tests/bench/peer/worker.mjs on jose, esbuild --minify): bundle ${kib(peerSize.bytes)} KiB, **${kib(peerSize.gzip_bytes)} KiB gzipped**; cold start first response ${peerCold.first_response_ms} ms (${peerCold.first_cpu_ms} ms CPU), second ${peerCold.second_response_ms} ms.`,
    "",
    "txngate against the peer, each over the pass-through (same request, same rounds):",
    "",
    "| request | txngate − baseline µs | peer − baseline µs | txngate / peer | main thread: txngate − baseline | peer − baseline | txngate / peer |",
    "|---|---:|---:|---:|---:|---:|---:|",
    ...[["cached token", "cached"], ["fresh ES256 token", "fresh_es256"], ["cached token, rate-limited tool", "cached_limited"]].map(([label, k]) =>
      `| ${label} | ${versusPeer[k].txngate_us} | ${versusPeer[k].peer_us} | ${versusPeer[k].ratio ?? "–"}× | ${versusPeer[k].txngate_main_us} | ${versusPeer[k].peer_main_us} | ${versusPeer[k].ratio_main ?? "–"}× |`),
    `| cold start: CPU of the first response (ms) | ${cold.first_cpu_ms} | ${peerCold.first_cpu_ms} | ${versusPeer.cold_start_first_cpu.ratio ?? "–"}× |`,
    `| cold start: first response (ms) | ${cold.first_response_ms} | ${peerCold.first_response_ms} | ${versusPeer.cold_start_first_response.ratio ?? "–"}× |`,
    `| bundle, gzipped (KiB) | ${kib(size.gzip_bytes)} | ${kib(peerSize.gzip_bytes)} | ${(size.gzip_bytes / peerSize.gzip_bytes).toFixed(1)}× |`,
    "",
  ];
  writeFileSync(OUT, lines.join("\n"));
  console.log(lines.join("\n"));
} finally {
  await baseline?.stop();
  await worker?.stop();
  await limited?.stop();
  await other?.stop();
  await otherLimited?.stop();
  await peer?.stop();
  await peerLimited?.stop();
  await origin?.stop();
  removeDir(dir);
}

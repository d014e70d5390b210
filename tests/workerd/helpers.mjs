// Shared helpers of the workerd suite: the built Worker in workerd (through wrangler's Miniflare), the real
// MCP server as origin, the official MCP clients (Python SDK 2.x, TypeScript SDK), loopback JWKS / counting servers, and tokens from the
// project CLI (or PyJWT from the venv until the CLI is built).
//
// Every process started here is recorded and stopped by PID (after each test file, and on exit); every
// listener binds 127.0.0.1; every wait is bounded.

import { spawn, spawnSync } from "node:child_process";
import { createPrivateKey, generateKeyPairSync, randomUUID, sign } from "node:crypto";
import { appendFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createNetServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { Miniflare } from "miniflare";
import WebSocket from "ws";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const WORKER_SCRIPT = process.env.TXNGATE_WORKER_SCRIPT ?? join(ROOT, "worker/build/index.js");
export const PYTHON = join(ROOT, ".venv/bin/python");
export const COMPAT_DATE = "2026-04-01";
export const TRUST_DOMAIN = "test.example";
export const ISS = "https://tts.test.example";

// ---------------------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------------------

const children = new Set();

/** Spawns a process and records it so it is always stopped by PID. */
export function spawnTracked(command, args, options = {}) {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], ...options });
  children.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}

/** Stops one child by PID: SIGTERM, then SIGKILL after a bounded wait. */
export async function stopChild(child, graceMs = 3000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((res) => child.once("exit", res));
  try {
    process.kill(child.pid, "SIGTERM");
  } catch {
    return;
  }
  const timer = new Promise((res) => setTimeout(res, graceMs, "timeout"));
  if ((await Promise.race([exited, timer])) === "timeout") {
    try {
      process.kill(child.pid, "SIGKILL");
    } catch {}
    await Promise.race([exited, new Promise((res) => setTimeout(res, 1000))]);
  }
}

process.on("exit", () => {
  for (const child of children) {
    try {
      process.kill(child.pid, "SIGKILL");
    } catch {}
  }
});

/** Resolves with the first match of `re` in the child's stdout, or rejects after `timeoutMs`. */
function waitForLine(child, re, timeoutMs, what) {
  return new Promise((res, rej) => {
    let buffer = "";
    const timer = setTimeout(() => rej(new Error(`${what}: no ${re} within ${timeoutMs} ms`)), timeoutMs);
    child.stdout.on("data", (d) => {
      buffer += d.toString();
      const m = re.exec(buffer);
      if (m) {
        clearTimeout(timer);
        res(m);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      rej(new Error(`${what} exited with ${code} before ready`));
    });
  });
}

// ---------------------------------------------------------------------------------------------------------
// The MCP server (origin) and client
// ---------------------------------------------------------------------------------------------------------

/** Starts tests/e2e/mcp_server.py on a free loopback port. `requests` collects its request log lines. */
export async function startMcpServer({ json = false } = {}) {
  const args = [join(ROOT, "tests/e2e/mcp_server.py"), "--port", "0"];
  if (json) args.push("--json-response");
  const child = spawnTracked(PYTHON, args);
  const requests = [];
  child.stderr.on("data", (d) => {
    for (const line of d.toString().split("\n")) if (/^\[mcp_server\] (POST|GET|DELETE)/.test(line)) requests.push(line);
  });
  const [, port] = await waitForLine(child, /LISTENING (\d+)/, 20000, "mcp_server.py");
  return { url: `http://127.0.0.1:${port}`, port: Number(port), requests, stop: () => stopChild(child) };
}

/**
 * The MCP clients the suite runs: the official Python SDK 2.x speaking 2026-07-28 ("py", routing headers,
 * server/discover) and 2025-11-25 ("py-legacy", initialize), and the official TypeScript SDK ("ts", 2025-11-25).
 */
export const CLIENTS = ["py", "py-legacy", "ts"];

/**
 * One exchange through an official MCP client (tests/e2e/mcp_call.py, or tests/e2e/mcp_call_ts.mjs for
 * `client: "ts"`); resolves with its JSON line. `overrides`: {name: value} headers tampered after the SDK set
 * its own (see mcp_call.py --override-header); `drop`: header names removed the same way.
 */
export function mcpCall(url, { token, headers = [], tool, args, list = false, listPrompts = false, listResources = false, prompt, promptArgs, read, overrides = {}, drop = [], client = "py", timeout = 15 } = {}) {
  if (!CLIENTS.includes(client)) throw new Error(`mcpCall: unknown client ${client}`);
  const [command, script] = client === "ts" ? [process.execPath, "tests/e2e/mcp_call_ts.mjs"] : [PYTHON, "tests/e2e/mcp_call.py"];
  const argv = [join(ROOT, script), "--url", url, "--timeout", String(timeout)];
  if (client === "py-legacy") argv.push("--legacy");
  if (token !== undefined) argv.push("--header", `Txn-Token: ${token}`);
  for (const h of headers) argv.push("--header", h);
  for (const [name, value] of Object.entries(overrides)) argv.push("--override-header", `${name}: ${value}`);
  for (const name of drop) argv.push("--drop-header", name);
  if (list) argv.push("--list");
  if (listPrompts) argv.push("--list-prompts");
  if (listResources) argv.push("--list-resources");
  if (tool) argv.push("--tool", tool, "--args", JSON.stringify(args ?? {}));
  if (prompt) argv.push("--prompt", prompt);
  if (promptArgs) argv.push("--prompt-args", JSON.stringify(promptArgs));
  if (read) argv.push("--read", read);
  return new Promise((res, rej) => {
    const child = spawnTracked(command, argv);
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    const timer = setTimeout(() => stopChild(child), (timeout + 10) * 1000);
    child.on("exit", () => {
      clearTimeout(timer);
      const line = out.trim().split("\n").pop();
      try {
        res(JSON.parse(line));
      } catch {
        rej(new Error(`${script} printed no JSON line; stdout=${out} stderr=${err}`));
      }
    });
  });
}

/**
 * The origin's request log (mcp_server.py), parsed: one object per HTTP request with `http`, `path`,
 * `txnToken` (bool), `xTxngate` (object) and `mcp` (h_method, h_name, h_version: routing headers as received;
 * method, name, id: from the JSON-RPC body).
 */
export function originRequests(origin) {
  const out = [];
  for (const line of origin.requests) {
    const at = line.indexOf(" mcp={");
    if (at < 0) continue;
    const [, http, path, token] = line.slice(0, at).split(" ");
    const xAt = line.indexOf("x-txngate=");
    try {
      out.push({ http, path, txnToken: token === "txn-token=present", xTxngate: JSON.parse(line.slice(xAt + 10, at)), mcp: JSON.parse(line.slice(at + 5)) });
    } catch {}
  }
  return out;
}

/** A JSON-RPC request body. */
export function rpc(id, method, params) {
  return JSON.stringify(params === undefined ? { jsonrpc: "2.0", id, method } : { jsonrpc: "2.0", id, method, params });
}

export function toolCall(id, name, args) {
  return rpc(id, "tools/call", { name, arguments: args });
}

/** Plain HTTP POST of an MCP message. */
export async function post(base, { token, body, headers = {}, path = "/mcp" } = {}) {
  const h = { "content-type": "application/json", accept: "application/json, text/event-stream", ...headers };
  if (token !== undefined) h["txn-token"] = token;
  const response = await fetch(new URL(path, base), { method: "POST", headers: h, body });
  const text = await response.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: response.status, headers: response.headers, text, json };
}

// ---------------------------------------------------------------------------------------------------------
// Loopback servers
// ---------------------------------------------------------------------------------------------------------

/** A tiny HTTP server on 127.0.0.1: `handler(req, res, body)`; counts requests. */
export async function startHttpServer(handler) {
  const state = { hits: 0, paths: [] };
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      state.hits += 1;
      state.paths.push(`${req.method} ${req.url}`);
      handler(req, res, body);
    });
  });
  await new Promise((res) => server.listen(0, "127.0.0.1", res));
  const { port } = server.address();
  return {
    state,
    url: `http://127.0.0.1:${port}`,
    stop: () => new Promise((res) => { server.closeAllConnections?.(); server.close(() => res()); }),
  };
}

/** A JWKS endpoint whose document the test can swap (or make fail with `status`, or slow with `delayMs`). */
export async function startJwksServer(initial) {
  const jwks = { document: initial, status: 200, delayMs: 0 };
  const server = await startHttpServer((req, res) => {
    const answer = () => {
      if (jwks.status !== 200) {
        res.writeHead(jwks.status, { "content-type": "text/plain" }).end("unavailable");
        return;
      }
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(jwks.document));
    };
    if (jwks.delayMs > 0) setTimeout(answer, jwks.delayMs);
    else answer();
  });
  return { ...server, jwks, uri: `${server.url}/.well-known/jwks.json` };
}

// ---------------------------------------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------------------------------------

const CLI = process.env.TXNGATE_BIN ?? join(ROOT, "target/release/txngate");
/** `cli` (the project's txngate) when built, else `pyjwt`; TXNGATE_TOKENS=pyjwt forces PyJWT. */
export const TOKEN_TOOL = process.env.TXNGATE_TOKENS === "pyjwt" || !existsSync(CLI) ? "pyjwt" : "cli";

function run(command, args, input) {
  const r = spawnSync(command, args, { input, encoding: "utf8", timeout: 30000 });
  if (r.status !== 0) throw new Error(`${command} ${args.join(" ")} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

/** Generates a signing key: { dir, kid, alg, jwks, publicJwk }. */
export function keygen(alg, kid, parent) {
  const dir = join(parent, kid);
  if (TOKEN_TOOL === "cli") run(CLI, ["keygen", "--alg", alg, "--kid", kid, "--out", dir]);
  else run(PYTHON, [join(ROOT, "tests/workerd/pytokens.py"), "keygen", "--alg", alg, "--kid", kid, "--out", dir]);
  const jwks = JSON.parse(readFileSync(join(dir, "jwks.json"), "utf8"));
  return { dir, kid, alg, jwks, publicJwk: jwks.keys[0] };
}

/** Standard claims for the test trust domain; `extra` overrides. */
export function claims(extra = {}) {
  return { iss: ISS, aud: TRUST_DOMAIN, sub: "user-1", scope: "email:send calendar:read", req_wl: `spiffe://${TRUST_DOMAIN}/gateway`, tctx: { recipient: "bob@example.com" }, ...extra };
}

/** Mints `count` tokens (distinct txn) signed by `key`, acting as `act` (outermost first). */
export function mint(key, claimSet, { act = [], ttl = 120, count = 1 } = {}) {
  const actArgs = act.flatMap((a) => ["--act", a]);
  if (TOKEN_TOOL === "cli") {
    const out = [];
    for (let i = 0; i < count; i++) {
      out.push(run(CLI, ["mint", "--key", join(key.dir, "private.jwk"), "--claims", "-", "--ttl", String(ttl), ...actArgs], JSON.stringify(claimSet)).trim());
    }
    return count === 1 ? out[0] : out;
  }
  const lines = run(PYTHON, [join(ROOT, "tests/workerd/pytokens.py"), "mint", "--key", join(key.dir, "private.jwk"), "--claims", "-", "--ttl", String(ttl), "--count", String(count), ...actArgs], JSON.stringify(claimSet))
    .trim()
    .split("\n");
  return count === 1 ? lines[0] : lines;
}

/**
 * Test support: appends a secret this suite made (a token, a private JWK) to TXNGATE_SECRET_LEDGER when set,
 * so tests/secrets/scan.py can prove it never reached a log. Tokens from the CLI and pytokens.py are recorded
 * by them.
 */
export function recordSecret(kind, value) {
  const path = process.env.TXNGATE_SECRET_LEDGER;
  if (path) appendFileSync(path, JSON.stringify({ kind, value }) + "\n");
}

/**
 * An Ed25519 signer in this process, for tests that need many tokens or arbitrary `kid`s (a spawn of the CLI
 * per token costs tens of ms; this costs well under one). Same token shape as `txngate mint`: header typ
 * "txntoken+jwt" and kid, iat/exp/txn filled in, `act` nested outermost first.
 */
export function localSigner(kid) {
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");
  const publicJwk = { ...publicKey.export({ format: "jwk" }), kid, alg: "EdDSA", use: "sig" };
  const privateJwk = privateKey.export({ format: "jwk" });
  recordSecret("private_key", JSON.stringify(privateJwk));
  const key = createPrivateKey({ key: privateJwk, format: "jwk" });
  const b64 = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");
  return {
    kid,
    publicJwk,
    jwks: { keys: [publicJwk] },
    /** One token; `kid` overrides the header's kid (the signature is still this key's). */
    mint(claimSet, { act = [], ttl = 120, kid: headerKid = kid } = {}) {
      const now = Math.floor(Date.now() / 1000);
      const body = { iat: now, exp: now + ttl, txn: randomUUID(), ...claimSet };
      let chain = null;
      for (const actor of [...act].reverse()) chain = chain ? { sub: actor, act: chain } : { sub: actor };
      if (chain) body.act = chain;
      const input = `${b64({ alg: "EdDSA", typ: "txntoken+jwt", kid: headerKid })}.${b64(body)}`;
      const token = `${input}.${sign(null, Buffer.from(input), key).toString("base64url")}`;
      recordSecret("token", token);
      return token;
    },
  };
}

export function tempDir(prefix) {
  return mkdtempSync(join(tmpdir(), `txngate-workerd-${prefix}-`));
}

export function removeDir(dir) {
  rmSync(dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------------------------

export const AGENT = (name) => `spiffe://${TRUST_DOMAIN}/agent/${name}`;

/** The suite's policy: inline keys unless `issuer` is given; `prompts` / `resources` sections when given. */
export function policy({ jwks, issuer, tools, mcp, prompts, resources, maxScopes } = {}) {
  return {
    trust_domain: TRUST_DOMAIN,
    issuers: [issuer ?? { name: "tts", iss: ISS, jwks, algorithms: ["EdDSA", "ES256", "RS256", "PS256"] }],
    agents: {
      [`spiffe://${TRUST_DOMAIN}/orchestrator`]: { max_scopes: ["*"] },
      [`spiffe://${TRUST_DOMAIN}/agent/*`]: { max_scopes: maxScopes ?? ["calendar:*", "email:send"] },
    },
    delegation: { max_depth: 2 },
    mcp: { path_prefix: "/mcp", max_body_bytes: 4096, resource_metadata: "https://mcp.test.example/.well-known/oauth-protected-resource", ...mcp },
    tools: tools ?? {
      send_email: {
        scopes: ["email:send"],
        constraints: [{ argument: "/to", claim: "/tctx/recipient" }],
        rate_limit: { key: "agent", limit: 10, period_seconds: 3600 },
      },
      calendar_read: { scopes: ["calendar:read"] },
      calendar_write: { scopes: ["calendar:write"] },
      delete_repo: { effect: "deny" },
    },
    ...(prompts ? { prompts } : {}),
    ...(resources ? { resources } : {}),
  };
}

// ---------------------------------------------------------------------------------------------------------
// The Worker in workerd
// ---------------------------------------------------------------------------------------------------------

/** Finds the workerd process Miniflare spawned last (a child of this Node process). */
export function workerdPid() {
  let newest = null;
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const ppid = Number(fields[1]);
      const started = Number(fields[19]);
      if (ppid === process.pid && comm.startsWith("workerd") && (!newest || started >= newest.started)) newest = { pid: Number(entry), started };
    } catch {}
  }
  return newest?.pid ?? null;
}

/** utime + stime of a process, in clock ticks (100 per second on Linux). */
export function cpuTicks(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]);
}

/**
 * Starts the built Worker in workerd. `vars` are the Worker's string bindings (TXNGATE_POLICY given as an
 * object is serialised). `persist` shares Durable Object state between instances; `workers` > 1 runs that
 * many separate Worker isolates ("edge-0", "edge-1", ...) bound to one Durable Object namespace.
 * `keepLogs: false`: workerd's output is read and dropped (benches: no per-line work in this process).
 */
export async function startWorker({ vars, persist, workers = 1, ratelimits, limiter, inspectorPort, keepLogs = true } = {}) {
  if (!existsSync(WORKER_SCRIPT)) throw new Error(`${WORKER_SCRIPT} is missing: run scripts/test-worker.sh (it builds first)`);
  const bindings = { ...vars };
  if (bindings.TXNGATE_POLICY !== undefined && typeof bindings.TXNGATE_POLICY !== "string") {
    bindings.TXNGATE_POLICY = JSON.stringify(bindings.TXNGATE_POLICY);
  }
  const logs = [];
  const common = {
    modules: true,
    scriptPath: WORKER_SCRIPT,
    modulesRoot: dirname(WORKER_SCRIPT),
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"] }],
    compatibilityDate: COMPAT_DATE,
    bindings,
    ...(ratelimits ? { ratelimits } : {}),
  };
  const workerOptions = [];
  for (let i = 0; i < workers; i++) {
    workerOptions.push({
      ...common,
      name: workers === 1 ? undefined : `edge-${i}`,
      routes: workers === 1 ? undefined : [`edge-${i}.test/*`],
      // The first Worker defines the class; the others bind to the same namespace (one object per key).
      durableObjects: {
        TXNGATE_LIMITER: i === 0 ? { className: "TxngateRateLimiter", useSQLite: true } : { className: "TxngateRateLimiter", scriptName: "edge-0", useSQLite: true },
      },
    });
  }
  // `limiter: "none"`: no TXNGATE_LIMITER binding at all. `limiter: { script, className }`: the binding
  // points at a Durable Object class of another Worker script (a faulty limiter, for the fault tests).
  let topology = workers === 1 ? workerOptions[0] : { workers: workerOptions };
  if (limiter === "none") {
    topology = { ...workerOptions[0], durableObjects: {} };
  } else if (limiter) {
    if (workers !== 1) throw new Error("startWorker: a custom limiter runs with one Worker");
    topology = {
      workers: [
        { ...workerOptions[0], name: "txngate", durableObjects: { TXNGATE_LIMITER: { className: limiter.className, scriptName: "limiter" } } },
        { name: "limiter", modules: true, script: limiter.script, compatibilityDate: COMPAT_DATE, durableObjects: { SELF: limiter.className } },
      ],
    };
  }
  const mf = new Miniflare({
    ...topology,
    host: "127.0.0.1",
    port: 0,
    // The V8 inspector (loopback), for the flood's per-isolate heap figures.
    ...(inspectorPort ? { inspectorPort } : {}),
    ...(persist ? { durableObjectsPersist: persist, cachePersist: join(persist, "cache") } : {}),
    handleRuntimeStdio(stdout, stderr) {
      if (!keepLogs) {
        stdout.resume();
        stderr.resume();
        return;
      }
      const collect = (d) => {
        for (const line of d.toString().split("\n")) if (line.trim()) logs.push(line);
      };
      stdout.on("data", collect);
      stderr.on("data", collect);
    },
  });
  const url = await mf.ready;
  /** Audit records (JSON lines with a verdict) logged so far. */
  const audit = () =>
    logs.flatMap((line) => {
      const start = line.indexOf("{");
      if (start < 0) return [];
      try {
        const record = JSON.parse(line.slice(start));
        return record.verdict ? [record] : [];
      } catch {
        return [];
      }
    });
  return {
    mf,
    url: url.href.replace(/\/$/, ""),
    logs,
    audit,
    pid: workerdPid(),
    /** Fetch through a given Worker when several run (routes by host). */
    fetchVia: (i, path, init) => mf.dispatchFetch(`http://edge-${i}.test${path}`, init),
    stop: () => mf.dispose(),
  };
}

/** Waits until `predicate()` is true, polling every 20 ms, at most `timeoutMs`. */
export async function until(predicate, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await predicate()) return true;
    await new Promise((res) => setTimeout(res, 20));
  }
  return false;
}

/** A free TCP port on 127.0.0.1 (for workerd's inspector). */
export function freePort() {
  return new Promise((res) => {
    const s = createNetServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/**
 * A plain JS Worker that forwards every request to `originUrl`, in the same Miniflare/workerd setup as
 * startWorker: the runtime's own floor, for benchmarks and floods. `requireToken`: answer 401 without a
 * `txn-token` header (the least an authorizer does); `buffer`: read the body whole before forwarding it.
 */
export async function startPassThrough(originUrl, { inspectorPort, requireToken = false, buffer = false } = {}) {
  const gate = requireToken
    ? `if (!request.headers.has("txn-token")) return new Response('{"error":"invalid_token"}', { status: 401, headers: { "content-type": "application/json" } });`
    : "";
  // `buffer`: the body is read whole (one arrayBuffer()) and sent on as that buffer, as txngate and the
  // bench's peer do (the same work as theirs; streaming request.body measured about the same here).
  const body = buffer ? `request.method === "GET" || request.method === "HEAD" ? undefined : await request.arrayBuffer()` : "request.body";
  const script = `export default { async fetch(request, env) {
      ${gate}
      const url = new URL(request.url);
      return fetch(env.ORIGIN_URL + url.pathname + url.search, { method: request.method, headers: request.headers, body: ${body} });
    } };`;
  const mf = new Miniflare({ modules: true, script, compatibilityDate: COMPAT_DATE, bindings: { ORIGIN_URL: originUrl }, host: "127.0.0.1", port: 0, inspectorPort });
  const url = await mf.ready;
  return { url: url.href.replace(/\/$/, ""), pid: workerdPid(), stop: () => mf.dispose() };
}

/**
 * A session with the Worker isolate's V8 inspector (workerd's `core:user:` target). `call(method, params)`
 * resolves with the result, or null when no answer came within `timeoutMs`; `onEvent` sees the events.
 */
export async function inspectWorker(inspectorPort, { timeoutMs = 10000, onEvent = () => {} } = {}) {
  const targets = await (await fetch(`http://127.0.0.1:${inspectorPort}/json`)).json();
  const target = targets.find((t) => t.id === "core:user:");
  if (!target) throw new Error(`no inspector target for the Worker: ${targets.map((t) => t.id).join(", ")}`);
  const ws = new WebSocket(target.webSocketDebuggerUrl);
  await new Promise((res, rej) => {
    ws.once("open", res);
    ws.once("error", rej);
  });
  const waiting = new Map();
  let id = 0;
  ws.on("message", (m) => {
    const d = JSON.parse(m);
    if (d.id === undefined) return onEvent(d);
    waiting.get(d.id)?.(d.result ?? {});
    waiting.delete(d.id);
  });
  const call = (method, params = {}) => {
    const i = ++id;
    const answer = new Promise((res) => waiting.set(i, res));
    ws.send(JSON.stringify({ id: i, method, params }));
    return Promise.race([answer, new Promise((res) => setTimeout(res, timeoutMs, null))]);
  };
  return { call, close: () => ws.close() };
}

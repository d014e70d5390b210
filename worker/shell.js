// txngate's Worker entry (installed as worker/build/index.js; the workers-rs / wasm-bindgen build of
// worker/src, made by worker-build, is worker/build/core.mjs). A thin shell: it does the I/O with the runtime's
// own objects and makes one synchronous call into the Rust core per step (worker/src/shell.rs): begin,
// evaluate, resume after WebCrypto or the limiter, render a failure, filter a list. Every decision, reply,
// header rule and error text comes from the core; nothing here decides. Fail closed: any exception ends in
// a 500 and nothing is forwarded.

import { env as startupEnv } from "cloudflare:workers";

import Core from "./core.mjs";

// worker-build puts each #[wasm_bindgen] function on its entrypoint's prototype (the module's default
// export, a class); called directly, they are plain synchronous Wasm calls.
const core = Core.prototype;

/**
 * The policy is compiled once per isolate (`txngateConfigure`): here, at startup, when the runtime offers
 * `env` to the module (workerd, Cloudflare), so the first request does not pay for it; else before the first
 * request. Requests never pass `env` into Wasm.
 */
let configured = false;
function configure(env) {
  core.txngateConfigure(env);
  configured = true;
}
try {
  if (startupEnv) configure(startupEnv);
} catch {
  // Not configured: the first request tries again (and fails closed if it cannot).
}

/** WebCrypto keys by the core's fingerprint; null: WebCrypto refused the key (the core decides then). */
const keys = new Map();

function reply(r) {
  return new Response(r.body, { status: r.status, headers: r.headers });
}

/** A step's answer: its JSON line, and the audit line after it for a decision. */
function parse(text) {
  const nl = text.indexOf("\n");
  if (nl < 0) return JSON.parse(text);
  console.log(text.slice(nl + 1));
  return JSON.parse(text.slice(0, nl));
}

/** The declared Content-Length, as the core reads one (an unsigned integer), else null. */
function declared(headers) {
  const v = headers.get("content-length");
  if (v === null) return null;
  const t = v.trim();
  return /^\+?[0-9]+$/.test(t) ? Number(t) : null;
}

/** Reads `stream` up to `cap` bytes: {bytes} or {tooLarge: true}. */
async function readCapped(stream, length, cap) {
  if (length !== null && length > cap) return { tooLarge: true };
  if (!stream) return { bytes: new Uint8Array(0) };
  const reader = stream.getReader();
  const chunks = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > cap) {
      reader.cancel().catch(() => {});
      return { tooLarge: true };
    }
    chunks.push(value);
  }
  if (chunks.length === 1) return { bytes: chunks[0] };
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.byteLength;
  }
  return { bytes };
}

/** The request's body for the core: state 1 read (`bytes`, `forward`: what to send on), 2 over the cap. */
async function readBody(request, cap) {
  const length = declared(request.headers);
  if (length !== null && length > cap) return { state: 2 };
  if (length === 0) return { state: 1, bytes: new Uint8Array(0), forward: new Uint8Array(0) };
  if (length !== null) {
    // One arrayBuffer() (the runtime enforces the declared length); the same buffer goes to the origin.
    const buffer = await request.arrayBuffer();
    if (buffer.byteLength > cap) return { state: 2 };
    return { state: 1, bytes: new Uint8Array(buffer), forward: buffer };
  }
  const read = await readCapped(request.body, null, cap);
  if (read.tooLarge) return { state: 2 };
  return { state: 1, bytes: read.bytes, forward: read.bytes };
}

function message(e) {
  return e instanceof Error ? e.message : String(e);
}

async function verify(id, step) {
  let key = keys.get(step.fp);
  if (key === undefined) {
    try {
      key = await crypto.subtle.importKey("jwk", step.jwk, step.import, false, ["verify"]);
    } catch {
      key = null;
      console.warn(JSON.stringify({ txngate: "webcrypto.import_failed", kid: step.kid, alg: step.alg, fallback: "native" }));
    }
    if (keys.size >= step.max_keys) keys.clear();
    keys.set(step.fp, key);
  }
  let verdict = 2;
  if (key !== null) {
    try {
      const ok = await crypto.subtle.verify(step.verify, key, core.txngateSignature(id), core.txngateSigningInput(id));
      verdict = ok ? 1 : 0;
    } catch {
      verdict = 2;
    }
  }
  return core.txngateResumeSignature(id, verdict);
}

/** One bounded exchange with the bucket's Durable Object (or the Rate Limiting binding). */
async function limit(id, step, env) {
  if (step.mode === "approximate") {
    const binding = env[step.binding];
    if (!binding || typeof binding.limit !== "function") return core.txngateResumeLimit(id, 11, 0, "");
    try {
      const outcome = await binding.limit({ key: step.key });
      return core.txngateResumeLimit(id, 10, outcome?.success === true ? 1 : 0, "");
    } catch (e) {
      return core.txngateResumeLimit(id, 12, 0, message(e));
    }
  }
  const namespace = env[step.binding];
  if (!namespace || typeof namespace.idFromName !== "function") {
    return core.txngateResumeLimit(id, 1, 0, "binding is not a Durable Object namespace");
  }
  let stub;
  try {
    stub = namespace.get(namespace.idFromName(step.key));
  } catch (e) {
    return core.txngateResumeLimit(id, 2, 0, message(e));
  }
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve([5, 0, ""]), step.timeout);
  });
  const exchange = (async () => {
    let answer;
    try {
      answer = await stub.fetch("https://txngate-limiter.internal/consume", { method: "POST", body: step.body });
    } catch (e) {
      return [3, 0, message(e)];
    }
    let text;
    try {
      text = await answer.text();
    } catch {
      return answer.status === 200 ? [4, 0, ""] : [0, answer.status, ""];
    }
    return [0, answer.status, text];
  })();
  const [kind, status, text] = await Promise.race([exchange, timeout]);
  clearTimeout(timer);
  return core.txngateResumeLimit(id, kind, status, text);
}

async function forward(id, request, step, body) {
  const headers = new Headers(request.headers);
  for (const name of step.drop) headers.delete(name);
  for (const [name, value] of step.up) headers.set(name, value);
  const method = request.method;
  const init = { method, headers, redirect: "manual" };
  const bodiless = method === "GET" || method === "HEAD";
  if (!bodiless) {
    if (body.state === 1) {
      init.body = body.forward;
    } else if (request.body) {
      init.body = request.body;
    }
  }
  // Aborted only if the headers do not come in time; once they have, the body streams unbounded (an SSE
  // stream may legitimately last long).
  const abort = new AbortController();
  init.signal = abort.signal;
  let upstream;
  try {
    upstream = new Request(step.target, init);
  } catch (e) {
    return reply(JSON.parse(core.txngateFailure(id, 0, "origin.request", message(e))));
  }
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve(null), step.timeout);
  });
  let response;
  try {
    response = await Promise.race([fetch(upstream), timeout]);
  } catch (e) {
    clearTimeout(timer);
    return reply(JSON.parse(core.txngateFailure(id, 0, "origin.fetch", message(e))));
  }
  clearTimeout(timer);
  if (response === null) {
    abort.abort();
    return reply(JSON.parse(core.txngateFailure(id, 1, "", `no response headers within ${step.timeout} ms`)));
  }
  // Nothing to add and nothing to filter: the origin's response as it is (the same status, headers and
  // body a copy would carry, without the copy).
  if (!step.list && step.rh.length === 0) return response;
  let out;
  try {
    out = new Headers(response.headers);
    for (const [name, value] of step.rh) out.append(name, value);
  } catch (e) {
    return reply(JSON.parse(core.txngateFailure(id, 0, "origin.response", message(e))));
  }
  const init2 = { status: response.status, statusText: response.statusText, headers: out };
  // The core's rule, the Envoy filter's too: every 2xx list response is filtered.
  if (!step.list || response.status < 200 || response.status >= 300) {
    try {
      return new Response(response.body, init2);
    } catch (e) {
      return reply(JSON.parse(core.txngateFailure(id, 0, "origin.response", message(e))));
    }
  }
  // A list (tools/list, ...): buffer, filter to what this caller may use. A response we cannot filter is
  // not passed on (it would reveal entries the caller may not see).
  const contentType = response.headers.get("content-type") ?? "";
  let read;
  try {
    read = await readCapped(response.body, declared(response.headers), step.cap);
  } catch (e) {
    return reply(JSON.parse(core.txngateFailure(id, 3, "", `reading body: ${message(e)}`)));
  }
  if (read.tooLarge) return reply(JSON.parse(core.txngateFailure(id, 2, "", "list response over the cap")));
  let filtered;
  try {
    filtered = core.txngateFilterList(id, contentType, read.bytes);
  } catch (e) {
    return reply(JSON.parse(core.txngateFailure(id, 3, "", `cannot filter the list response: ${message(e)}`)));
  }
  out.delete("content-length");
  out.delete("content-encoding");
  return new Response(filtered, init2);
}

async function handle(request, env, ctx) {
  if (!configured) configure(env);
  const go = JSON.parse(core.txngateBegin(request.method, request.url, Date.now()));
  if (go.k === "reply") return reply(go);
  const id = go.id;
  try {
    if (go.keys) await core.txngateKeys(ctx);
    let body = { state: 0 };
    if (go.body) {
      try {
        body = await readBody(request, go.cap);
      } catch (e) {
        return reply(JSON.parse(core.txngateFailure(id, 4, "", `reading body: ${message(e)}`)));
      }
    }
    const flat = [];
    for (const [name, value] of request.headers) flat.push(name, value);
    let step = parse(core.txngateEvaluate(id, flat.join("\n"), body.bytes ?? new Uint8Array(0), body.state, Date.now()));
    for (;;) {
      switch (step.k) {
        case "allow":
          return await forward(id, request, step, body);
        case "deny":
        case "reply":
          return reply(step);
        case "verify":
          step = parse(await verify(id, step));
          break;
        case "limit":
          step = parse(await limit(id, step, env));
          break;
        case "refetch": {
          const changed = await core.txngateRefetch(step.issuer);
          step = parse(core.txngateAfterRefetch(id, changed, Date.now()));
          break;
        }
        default:
          throw new Error(`unknown step ${step.k}`);
      }
    }
  } catch (e) {
    return reply(JSON.parse(core.txngateFailure(id, 5, "", message(e))));
  } finally {
    core.txngateRelease(id);
  }
}

export default {
  async fetch(request, env, ctx) {
    try {
      return await handle(request, env, ctx);
    } catch (e) {
      // The core itself failed: nothing was forwarded; a bare 500.
      console.error(JSON.stringify({ txngate: "worker.internal", status: 500, detail: message(e) }));
      return new Response(JSON.stringify({ error: "server_error", error_description: "txngate: internal error", reason: "worker.internal" }), {
        status: 500,
        headers: { "content-type": "application/json" },
      });
    }
  },
};

/**
 * The rate-limit Durable Object (wrangler.toml: `class_name = "TxngateRateLimiter"`, a `new_sqlite_classes`
 * migration): one per bucket key. It only keeps the state, one theoretical arrival time (TAT) per key,
 * mirrored in memory and stored as {tat: decimal string, limit}; the step is the core's GCRA
 * (`txngateGcra`). An alarm deletes drained buckets.
 */
export class TxngateRateLimiter {
  constructor(state) {
    this.state = state;
    /** key -> TAT (decimal string); always at least as new as storage: it is written first. */
    this.tats = new Map();
    /** The alarm time this instance set (ms since the epoch), or null. */
    this.alarmAt = null;
  }

  async fetch(request) {
    const storage = this.state.storage;
    if (request.method === "GET") {
      // Introspection (tests, operators with a binding): how many buckets this object stores.
      const buckets = (await storage.list()).size;
      const alarm = await storage.getAlarm();
      return Response.json({ buckets, alarm_ms: alarm ?? null });
    }
    let body;
    try {
      body = JSON.parse(await request.text());
    } catch (e) {
      return new Response(`bad request: ${message(e)}`, { status: 400 });
    }
    const { key, limit, period_seconds: period, burst, now_ms: now } = body ?? {};
    const u32 = (n) => Number.isInteger(n) && n >= 0 && n <= 0xffffffff;
    if (typeof key !== "string" || !u32(limit) || !u32(burst) || !Number.isInteger(period) || period < 0 || !Number.isInteger(now) || now < 0) {
      return new Response("bad request: not a consume request", { status: 400 });
    }
    let stored = this.tats.get(key);
    if (stored === undefined) {
      const loaded = await storage.get(key);
      // A call that ran while we waited wrote the mirror first; it wins over what storage said.
      stored = this.tats.get(key) ?? (typeof loaded?.tat === "string" ? loaded.tat : undefined);
    }
    // From here to the mirror update nothing awaits: the step is atomic within this object.
    const step = JSON.parse(core.txngateGcra(limit, period, burst, stored, now));
    if (step.error) return new Response(step.error, { status: 400 });
    if (step.next !== null) {
      this.tats.set(key, step.next);
      try {
        await storage.put(key, { tat: step.next, limit });
      } catch (e) {
        this.tats.delete(key);
        throw e;
      }
      if (this.alarmAt === null) {
        await storage.setAlarm(step.alarm_at);
        this.alarmAt = step.alarm_at;
      }
    }
    return Response.json(step.state);
  }

  /** Deletes buckets that have drained (a drained bucket holds no information); re-arms for the rest. */
  async alarm() {
    this.alarmAt = null;
    const storage = this.state.storage;
    const now = Date.now();
    let latest = null;
    const drained = [];
    for (const [key, stored] of await storage.list()) {
      const at = typeof stored?.tat === "string" && Number.isInteger(stored?.limit) ? core.txngateDrainMs(stored.tat, stored.limit) : 0;
      if (at <= now) drained.push(key);
      else latest = latest === null ? at : Math.max(latest, at);
    }
    for (const key of drained) this.tats.delete(key);
    if (drained.length > 0) await storage.delete(drained);
    if (latest !== null) {
      const at = core.txngateAlarmAt(latest, Date.now());
      await storage.setAlarm(at);
      this.alarmAt = at;
    }
  }
}

// The plain-JS peer of txngate's Worker (issue #17): the checks one request needs, written directly on `jose`
// (WebCrypto), as a user would in about 80 lines. tests/bench/worker_bench.mjs bundles it with esbuild and
// measures it beside txngate with the same request. Not a product: no JWKS fetch, one issuer, tools/call only.
//
// PEER_CONFIG (JSON): {jwks, iss, aud, max_lifetime_seconds, agents: [[prefix, max_scopes]],
// tools: {name: {scopes, effect?, rate_limit?: {limit, period_seconds}}}}; ORIGIN_URL: where allowed calls go.
import { createLocalJWKSet, jwtVerify } from "jose";

const CACHE_MAX = 1024;
const cache = new Map(); // raw token -> what the checks found (a hit skips parsing and the signature)
let config = null;
let keys = null;

const refuse = (status, error) =>
  new Response(JSON.stringify({ error }), { status, headers: { "content-type": "application/json" } });
const grants = (granted, wanted) =>
  granted.some((g) => g === "*" || g === wanted || (g.endsWith(":*") && wanted.startsWith(g.slice(0, -1))));

/** The token's checks: signature, typ, alg, iss, aud, lifetime, required claims, acting agent, ceiling. */
async function check(token) {
  const hit = cache.get(token);
  if (hit && hit.exp * 1000 > Date.now()) return hit;
  const { payload } = await jwtVerify(token, keys, {
    algorithms: ["ES256", "EdDSA"], typ: "txntoken+jwt", issuer: config.iss, audience: config.aud,
    requiredClaims: ["iat", "exp", "sub", "txn", "scope"], clockTolerance: 30,
  });
  if (payload.exp - payload.iat > config.max_lifetime_seconds) throw new Error("lifetime too long");
  const agent = payload.act?.sub;
  if (typeof agent !== "string") throw new Error("no acting agent");
  const ceiling = config.agents.find(([prefix]) => agent.startsWith(prefix))?.[1];
  if (!ceiling) throw new Error("unknown agent");
  const scopes = String(payload.scope).split(" ").filter((s) => grants(ceiling, s));
  const found = { exp: payload.exp, txn: payload.txn, sub: payload.sub, agent, scopes };
  if (cache.size >= CACHE_MAX) cache.delete(cache.keys().next().value);
  cache.set(token, found);
  return found;
}

export default {
  async fetch(request, env) {
    config ??= JSON.parse(env.PEER_CONFIG);
    keys ??= createLocalJWKSet(config.jwks);
    const token = request.headers.get("txn-token");
    if (!token) return refuse(401, "invalid_token");
    let who;
    try {
      who = await check(token);
    } catch {
      return refuse(401, "invalid_token");
    }
    const body = await request.arrayBuffer();
    let call;
    try {
      call = JSON.parse(new TextDecoder().decode(body));
    } catch {
      return refuse(400, "invalid_request");
    }
    const tool = call?.method === "tools/call" ? call.params?.name : undefined;
    if (call?.method === "tools/call") {
      const rule = config.tools[tool] ?? config.tools["*"];
      if (!rule || rule.effect === "deny" || !rule.scopes.every((s) => who.scopes.includes(s))) {
        return refuse(403, "insufficient_scope");
      }
      if (rule.rate_limit) {
        const limiter = env.PEER_LIMITER.get(env.PEER_LIMITER.idFromName(`${tool}|${who.agent}`));
        const answer = await limiter.fetch("https://limiter/", { method: "POST", body: JSON.stringify(rule.rate_limit) });
        if (answer.status !== 200) return refuse(429, "rate_limited");
      }
    }
    console.log(JSON.stringify({ time: new Date().toISOString(), verdict: "allow", txn: who.txn, sub: who.sub, agent: who.agent, method: call?.method, tool }));
    const url = new URL(request.url);
    const headers = new Headers(request.headers);
    headers.delete("txn-token");
    return fetch(env.ORIGIN_URL + url.pathname + url.search, { method: request.method, headers, body });
  },
};

/** GCRA, one object per (tool, agent): the theoretical arrival time in storage; burst = limit. */
export class PeerLimiter {
  constructor(state) {
    this.state = state;
  }

  async fetch(request) {
    const { limit, period_seconds: period } = await request.json();
    const interval = (period * 1000) / limit;
    const now = Date.now();
    const tat = Math.max((await this.state.storage.get("tat")) ?? now, now);
    if (tat + interval - now > period * 1000) return new Response("limited", { status: 429 });
    await this.state.storage.put("tat", tat + interval);
    return new Response("ok");
  }
}

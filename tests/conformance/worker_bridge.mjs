// The Worker (worker/build, built by scripts/test-worker.sh) in workerd, driven by the conformance runner
// (tests/conformance/worker_host.py) over stdin/stdout, one JSON object per line each way:
//
//   {"op":"start","policy":"<policy JSON text>","origin":"http://127.0.0.1:PORT"} -> {"ok":true,"url":...}
//   {"op":"request","method","path","headers":[[k,v],...],"body_b64":"..."|null,
//    "audit_sha256":"<token hash>"|null,"audit_count":N,"audit_if_header":"<name>"}
//       -> {"ok":true,"status","headers":[[k,v],...],"body":"...","audit":[records of that token]}
//   {"op":"stop"} -> {"ok":true}
//
// Uses tests/workerd/helpers.mjs (startWorker: Miniflare over the built Worker, processes stopped by PID).
// Requests go over real HTTP to the Worker's loopback URL. Allowed requests' audit lines arrive through
// workerd's stdout, asynchronously: a request whose response has the header `audit_if_header` (the
// upstream's mark: the request passed) waits, bounded, for `audit_count` records of its token.

import { createInterface } from "node:readline";

import { startWorker, until } from "../workerd/helpers.mjs";

const AUDIT_WAIT_MS = 5000;
let worker = null;

function reply(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

/** `fetch`, sent once more on a new connection when workerd had closed the idle keep-alive connection it was
 * written to (undici: UND_ERR_SOCKET, "other side closed"; the request never reached the Worker). Any other
 * transport error is reported with its cause. */
async function send(url, init) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fetch(url, init);
    } catch (e) {
      const code = e?.cause?.code;
      if (attempt === 1 && code === "UND_ERR_SOCKET") continue;
      throw new Error(`${e} (cause: ${code ?? e?.cause ?? "none"}, attempt ${attempt})`);
    }
  }
}

async function handle(msg) {
  switch (msg.op) {
    case "start": {
      if (worker) await worker.stop();
      worker = await startWorker({ vars: { TXNGATE_POLICY: msg.policy, ORIGIN_URL: msg.origin } });
      return { ok: true, url: worker.url };
    }
    case "request": {
      if (!worker) throw new Error("no worker started");
      const init = { method: msg.method, headers: msg.headers, redirect: "manual" };
      if (msg.body_b64 !== null && msg.body_b64 !== undefined) init.body = Buffer.from(msg.body_b64, "base64");
      const response = await send(worker.url + msg.path, init);
      const body = await response.text();
      let audit = [];
      if (msg.audit_sha256 && (!msg.audit_if_header || response.headers.has(msg.audit_if_header))) {
        const mine = () => worker.audit().filter((r) => r.token_sha256 === msg.audit_sha256);
        await until(() => mine().length >= (msg.audit_count ?? 1), AUDIT_WAIT_MS);
        audit = mine();
      }
      return { ok: true, status: response.status, headers: [...response.headers.entries()], body, audit };
    }
    case "stop": {
      if (worker) await worker.stop();
      worker = null;
      return { ok: true };
    }
    default:
      throw new Error(`unknown op ${msg.op}`);
  }
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let msg;
  try {
    msg = JSON.parse(line);
    reply(await handle(msg));
  } catch (e) {
    reply({ ok: false, error: String(e && e.stack ? e.stack : e) });
  }
}
if (worker) await worker.stop();
process.exit(0);

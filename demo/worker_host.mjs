// The built Worker (worker/build) in workerd for the demo: Miniflare through tests/workerd/helpers.mjs
// (startWorker), with a policy file and an origin (the MCP server).
//
//   node demo/worker_host.mjs POLICY_FILE ORIGIN_URL
//
// stdout: `LISTENING <url>` once the Worker answers on 127.0.0.1, then `LOG <line>` for every line workerd
// prints (the Worker's audit records among them), as they come. It runs until SIGTERM, SIGINT or SIGHUP (or
// until its parent process is gone, or at most MAX_LIFETIME_MS), then disposes Miniflare, which stops
// workerd. demo/demo.py starts it in its own process group and stops that group by PID.

import { readFileSync } from "node:fs";

import { startWorker } from "../tests/workerd/helpers.mjs";

const POLL_MS = 20;
const MAX_LIFETIME_MS = 15 * 60 * 1000;

const [policyPath, origin] = process.argv.slice(2);
if (!policyPath || !origin) {
  process.stderr.write("usage: node demo/worker_host.mjs POLICY_FILE ORIGIN_URL\n");
  process.exit(2);
}

const worker = await startWorker({ vars: { TXNGATE_POLICY: readFileSync(policyPath, "utf8"), ORIGIN_URL: origin } });
process.stdout.write(`LISTENING ${worker.url}\n`);

let printed = 0;
const parent = process.ppid;
const started = Date.now();
let stopping = false;

async function stop(code) {
  if (stopping) return;
  stopping = true;
  clearInterval(timer);
  flush();
  try {
    await worker.stop();
  } finally {
    process.exit(code);
  }
}

function flush() {
  while (printed < worker.logs.length) {
    process.stdout.write(`LOG ${worker.logs[printed]}\n`);
    printed += 1;
  }
}

const timer = setInterval(() => {
  flush();
  if (process.ppid !== parent || Date.now() - started > MAX_LIFETIME_MS) stop(1);
}, POLL_MS);

for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"]) process.on(signal, () => stop(0));

#!/usr/bin/env node
// Call an MCP server the way a TypeScript agent would: the official TypeScript SDK (@modelcontextprotocol/sdk,
// pinned in package.json) and its StreamableHTTPClientTransport. Same CLI and JSON line as mcp_call.py for what
// it supports; it speaks MCP 2025-11-25 only (initialize; no routing headers, no _meta), as the SDK does.
//
//   node tests/e2e/mcp_call_ts.mjs --url http://127.0.0.1:PORT/mcp \
//       [--header 'Txn-Token: eyJ...'] ... [--override-header 'Mcp-Name: other'] ... \
//       [--list] [--list-prompts] [--list-resources] [--tool NAME [--args JSON]] \
//       [--prompt NAME [--prompt-args JSON]] [--read URI] [--timeout 10]
//
// `--header` values go through `requestInit.headers` (how the SDK takes extra headers). This SDK sends no
// routing headers, so `--override-header 'Name: value'` SETS that header on the POST of the name-bearing request
// (tools/call, prompts/get, resources/read) — the tampered request of the negative tests. `--legacy` is
// accepted and changes nothing.
//
// One JSON line on stdout (see mcp_call.py): {"ok", "protocol", "result", "prompt", "resource", "tools",
// "prompts", "resources", "templates", "error"}; the error carries the HTTP status, the JSON-RPC code, the
// stage, the response body and a few headers (www-authenticate, retry-after, content-type, cache-control,
// x-txngate-*). Without an auth provider the SDK turns a non-2xx answer into an error that has lost the
// response, so a fetch wrapper records every POST answered with status >= 400 first; the first record decides
// the error line. Exit status 0 when ok, 1 when the call failed, 2 for bad arguments. The whole exchange runs
// under --timeout.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const KEPT = ["www-authenticate", "retry-after", "content-type", "cache-control"];
const NAME_BEARING = new Set(["tools/call", "prompts/get", "resources/read"]);

function usage(message) {
  process.stderr.write(`mcp_call_ts: ${message}\n`);
  process.exit(2);
}

function parseHeader(text) {
  const i = text.indexOf(":");
  if (i <= 0 || !text.slice(0, i).trim()) usage(`header must look like 'Name: value', got ${JSON.stringify(text)}`);
  return [text.slice(0, i).trim(), text.slice(i + 1).trim()];
}

function jsonObject(text, flag) {
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    usage(`${flag} is not JSON`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) usage(`${flag} must be a JSON object`);
  return value;
}

function parseArgs(argv) {
  const a = { headers: [], overrides: [], args: {}, promptArgs: undefined, timeout: 10, list: false, listPrompts: false, listResources: false };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const next = () => (i + 1 < argv.length ? argv[++i] : usage(`${flag} needs a value`));
    switch (flag) {
      case "--url": a.url = next(); break;
      case "--header": a.headers.push(parseHeader(next())); break;
      case "--override-header": a.overrides.push(parseHeader(next())); break;
      case "--tool": a.tool = next(); break;
      case "--args": a.args = jsonObject(next(), flag); break;
      case "--prompt": a.prompt = next(); break;
      case "--prompt-args": a.promptArgs = jsonObject(next(), flag); break;
      case "--read": a.read = next(); break;
      case "--list": a.list = true; break;
      case "--list-prompts": a.listPrompts = true; break;
      case "--list-resources": a.listResources = true; break;
      case "--legacy": break;
      case "--timeout": a.timeout = Number(next()); break;
      default: usage(`unknown argument ${flag}`);
    }
  }
  if (!a.url) usage("--url is required");
  if (!(a.timeout > 0)) usage("--timeout must be a positive number");
  return a;
}

function parseBody(text) {
  try {
    return JSON.parse(text);
  } catch {}
  for (const line of text.split("\n")) {
    if (line.startsWith("data:")) {
      try {
        return JSON.parse(line.slice(5).trim());
      } catch {
        break;
      }
    }
  }
  return text;
}

function httpErrorInfo(status, headers, text) {
  const body = parseBody(text);
  let code = null;
  let message = text.trim() || `HTTP ${status}`;
  if (body && typeof body === "object" && body.error && typeof body.error === "object") {
    code = body.error.code ?? null;
    message = body.error.message ?? message;
  }
  const kept = {};
  for (const [k, v] of headers) if (KEPT.includes(k) || k.startsWith("x-txngate-")) kept[k] = v;
  return { status, code, message, body, headers: kept };
}

async function run(a) {
  const out = { ok: false, protocol: null, result: null, prompt: null, resource: null, tools: null, prompts: null, resources: null, templates: null, error: null };
  const httpErrors = [];
  let stage = "initialize";

  // Records refusals before the SDK sees them; sets the tampered header on the name-bearing request.
  const recordingFetch = async (url, init = {}) => {
    let requestInit = init;
    if (a.overrides.length && (init.method ?? "GET") === "POST" && typeof init.body === "string") {
      let method;
      try {
        method = JSON.parse(init.body).method;
      } catch {}
      if (NAME_BEARING.has(method)) {
        const headers = new Headers(init.headers);
        for (const [name, value] of a.overrides) headers.set(name, value);
        requestInit = { ...init, headers };
      }
    }
    const response = await fetch(url, requestInit);
    if (response.status >= 400 && (requestInit.method ?? "GET") === "POST") {
      const text = await response.clone().text().catch(() => "");
      httpErrors.push(httpErrorInfo(response.status, response.headers, text));
    }
    return response;
  };

  const transport = new StreamableHTTPClientTransport(new URL(a.url), {
    requestInit: { headers: Object.fromEntries(a.headers) },
    fetch: recordingFetch,
  });
  const client = new Client({ name: "txngate-e2e-ts", version: "0.0.0" });
  const requestOptions = { timeout: a.timeout * 1000 };
  let failure = null;
  try {
    await client.connect(transport, requestOptions);
    out.protocol = transport.protocolVersion ?? null;
    if (a.list) {
      stage = "list_tools";
      out.tools = (await client.listTools({}, requestOptions)).tools.map((t) => t.name);
    }
    if (a.listPrompts) {
      stage = "list_prompts";
      out.prompts = (await client.listPrompts({}, requestOptions)).prompts.map((p) => p.name);
    }
    if (a.listResources) {
      stage = "list_resources";
      out.resources = (await client.listResources({}, requestOptions)).resources.map((r) => r.uri);
      stage = "list_resource_templates";
      out.templates = (await client.listResourceTemplates({}, requestOptions)).resourceTemplates.map((t) => t.uriTemplate);
    }
    if (a.tool) {
      stage = "call_tool";
      const r = await client.callTool({ name: a.tool, arguments: a.args }, undefined, requestOptions);
      out.result = { content: r.content, structured: r.structuredContent ?? null, isError: Boolean(r.isError) };
    }
    if (a.prompt) {
      stage = "get_prompt";
      const p = await client.getPrompt({ name: a.prompt, ...(a.promptArgs ? { arguments: a.promptArgs } : {}) }, requestOptions);
      out.prompt = { description: p.description ?? null, messages: p.messages };
    }
    if (a.read) {
      stage = "read_resource";
      out.resource = { contents: (await client.readResource({ uri: a.read }, requestOptions)).contents };
    }
  } catch (e) {
    failure = e;
    process.stderr.write(`[mcp_call_ts] ${stage} failed: ${e?.name}: ${e?.message}\n`);
  }
  await Promise.race([client.close().catch(() => {}), new Promise((res) => setTimeout(res, 1000))]);

  if (httpErrors.length) out.error = { ...httpErrors[0], stage };
  else if (failure) out.error = { stage, ...describe(failure, a.timeout) };
  else if (out.result?.isError) {
    out.error = { status: 200, code: "tool_error", message: out.result.content.map((c) => c.text ?? "").join(" "), stage };
  }
  out.ok = out.error === null;
  return out;
}

function describe(e, timeout) {
  // McpError (a JSON-RPC error in a 2xx answer, or the SDK's own request timeout, code -32001).
  if (e?.name === "McpError" && typeof e.code === "number") {
    if (/timed out/i.test(e.message)) return { status: null, code: "timeout", message: `no answer within ${timeout} s` };
    return { status: 200, code: e.code, message: e.message };
  }
  if (e?.name === "StreamableHTTPError") return { status: e.code > 0 ? e.code : null, code: null, message: e.message };
  const cause = e?.cause?.code ?? "";
  if (/ECONNREFUSED|ECONNRESET|ENOTFOUND/.test(cause) || /fetch failed/.test(e?.message ?? "")) {
    return { status: null, code: "connect_error", message: e.message };
  }
  return { status: null, code: e?.name ?? "Error", message: e?.message ?? String(e) };
}

const args = parseArgs(process.argv.slice(2));
const deadline = setTimeout(() => {
  const error = { status: null, code: "timeout", message: `no answer within ${args.timeout} s`, stage: "unknown" };
  process.stdout.write(JSON.stringify({ ok: false, protocol: null, result: null, prompt: null, resource: null, tools: null, prompts: null, resources: null, templates: null, error }) + "\n");
  process.exit(1);
}, (args.timeout + 2) * 1000);
const out = await run(args);
clearTimeout(deadline);
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(out.ok ? 0 : 1);

#!/usr/bin/env bash
# txngate's main job in one command: a user's Txn-Token delegated by an orchestrator to a research agent and
# an email agent, every MCP tool call decided by the core, printed as a table with the audit lines.
# Uses the development keys and policy in examples/ (never trust them in production).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

echo "[demo] building the txngate CLI (release; the first build takes a few minutes)..."
cargo build --locked --release -q --bin txngate
TXNGATE="$ROOT/target/release/txngate"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

POLICY=examples/policy.json
KEY=examples/keys/demo-ed25519/private.jwk
ORCH=spiffe://trust.example/agent/orchestrator
RESEARCH=spiffe://trust.example/agent/research
MAILER=spiffe://trust.example/agent/mailer

cat > "$WORK/claims.json" <<'JSON'
{"aud":"trust.example","sub":"user:alice@example.com","req_wl":"spiffe://trust.example/gateway",
 "scope":"calendar:read calendar:write email:send web:search",
 "tctx":{"recipient":["bob@example.com"],"purpose":"plan the offsite"}}
JSON
"$TXNGATE" mint --key "$KEY" --claims "$WORK/claims.json" --act "$RESEARCH" --act "$ORCH" > "$WORK/research.tok" 2>/dev/null
"$TXNGATE" mint --key "$KEY" --claims "$WORK/claims.json" --act "$MAILER" --act "$ORCH" > "$WORK/mailer.tok" 2>/dev/null
"$TXNGATE" mint --key "$KEY" --claims "$WORK/claims.json" --act "$MAILER" --act "$ORCH" --header '{"typ":"JWT"}' > "$WORK/wrongtyp.tok" 2>/dev/null

call() { # token-file tool arguments-json
    printf '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"%s","arguments":%s}}' "$2" "$3" > "$WORK/body.json"
    "$TXNGATE" check --policy "$POLICY" --token-file "$WORK/$1" --body-file "$WORK/body.json" --repeat "${4:-1}" | tail -n 1 >> "$WORK/outcomes.jsonl" || true
}

call research.tok search_web '{"query":"offsite venues"}'
call research.tok calendar_read '{"day":"2026-12-03"}'
call research.tok send_email '{"to":"bob@example.com","subject":"venues"}'
call mailer.tok send_email '{"to":"bob@example.com","subject":"venues"}'
call mailer.tok send_email '{"to":"mallory@example.com","subject":"exfiltrate"}'
call mailer.tok calendar_write '{"day":"2026-12-03","title":"offsite"}'
call mailer.tok delete_repo '{"name":"prod"}'
call wrongtyp.tok send_email '{"to":"bob@example.com"}'
call mailer.tok send_email '{"to":"bob@example.com","subject":"again"}' 11

python3 - "$WORK/outcomes.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print()
print(f"{'agent':<42} {'tool':<15} {'verdict':<7} {'status':<6} {'reason':<26} {'budget'}")
print("-" * 108)
for r in rows:
    a, d = r["audit"], r["decision"]
    limit = a.get("limit")
    budget = f"{limit['remaining']}/{limit['limit']} per {limit['period_seconds']}s" if limit else ""
    print(f"{a.get('agent','-'):<42} {a.get('tool','-'):<15} {d['verdict']:<7} {d['status']:<6} {d['reason']:<26} {budget}")
print()
print("audit records (one JSON line per decision; the token appears only as its SHA-256):")
for r in rows[:3]:
    print(json.dumps(r["audit"], separators=(",", ":")))
print("...")
PY

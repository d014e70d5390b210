"""Prove that no token, private key or secret a test run used ever reached a log, audit record or error.

    .venv/bin/python tests/secrets/scan.py --ledger target/test-logs/secrets.ledger --logs target/test-logs
    .venv/bin/python tests/secrets/scan.py --self-test

The ledger lists every Txn-Token the suites minted and every private key they generated (tests/secrets/ledger.py,
and the CLI's `TXNGATE_SECRET_LEDGER`). Private JWKs found in the log tree (`*.jwk`, the test issuers' keys) and
the conformance vectors' keys (tests/vectors/keys) are added. Then every log-like file under --logs (stage
outputs, Envoy and workerd stdout/stderr with the audit lines, MCP server logs, pytest temp trees) is searched
for any token's signature or payload segment and any private key member (`d`, `p`, `q`, `dp`, `dq`, `qi`, `k`),
whole or by a 24-character prefix. A finding names the file, line and kind, never the secret.

Exit 0 clean, 1 on any finding or when the ledger holds fewer than --min-tokens tokens (a hook that stopped
recording would otherwise make this pass vacuously), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PREFIX = 24
RUN = re.compile(rb"[A-Za-z0-9_\-]{%d,}" % PREFIX)
LOG_SUFFIXES = {".log", ".stdout", ".stderr", ".out", ".err", ".txt"}
KEY_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")


@dataclass
class Secrets:
    whole: dict[bytes, str]      # segment -> kind
    prefixes: dict[bytes, str]   # first PREFIX bytes -> kind
    tokens: int = 0
    keys: int = 0

    def add(self, value: str, kind: str) -> None:
        raw = value.encode()
        if len(raw) < 16:
            return
        self.whole[raw] = kind
        if len(raw) >= PREFIX:
            self.prefixes[raw[:PREFIX]] = kind

    def add_token(self, token: str) -> None:
        parts = token.strip().split(".")
        if len(parts) != 3:
            return
        self.tokens += 1
        # The header is shared by many tokens and not secret on its own; payload and signature are the token.
        self.add(parts[1], "token payload")
        self.add(parts[2], "token signature")

    def add_jwk(self, jwk: dict) -> None:
        found = False
        for member in KEY_MEMBERS:
            value = jwk.get(member)
            if isinstance(value, str):
                self.add(value, f"private key member {member}")
                found = True
        self.keys += found


def load(ledger: Path | None, logs: Path) -> Secrets:
    secrets = Secrets({}, {})
    if ledger is not None and ledger.exists():
        for line in ledger.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("kind") == "token":
                secrets.add_token(entry.get("value", ""))
            elif entry.get("kind") == "private_key":
                try:
                    secrets.add_jwk(json.loads(entry.get("value", "")))
                except (json.JSONDecodeError, AttributeError):
                    continue
    for path in [*logs.rglob("*.jwk"), *(ROOT / "tests" / "vectors" / "keys").rglob("*")]:
        if path.is_file():
            try:
                doc = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            for jwk in doc.get("keys", [doc]) if isinstance(doc, dict) else []:
                if isinstance(jwk, dict):
                    secrets.add_jwk(jwk)
    return secrets


def log_files(logs: Path, ledger: Path | None):
    for path in sorted(logs.rglob("*")):
        if not path.is_file() or (ledger is not None and path.resolve() == ledger.resolve()):
            continue
        if path.suffix in LOG_SUFFIXES or "log" in path.name.lower():
            yield path


def scan(secrets: Secrets, logs: Path, ledger: Path | None) -> tuple[int, int, list[str]]:
    findings: list[str] = []
    files = 0
    size = 0
    for path in log_files(logs, ledger):
        files += 1
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                size += len(line)
                for match in RUN.finditer(line):
                    run = match.group()
                    kind = secrets.whole.get(run) or secrets.prefixes.get(run[:PREFIX])
                    if kind is None and len(run) > PREFIX:
                        # A secret may sit inside a longer run (no separator around it).
                        kind = next((secrets.prefixes[run[i:i + PREFIX]] for i in range(1, len(run) - PREFIX + 1)
                                     if run[i:i + PREFIX] in secrets.prefixes), None)
                    if kind is not None:
                        tag = hashlib.sha256(run).hexdigest()[:12]
                        findings.append(f"{path}:{number}: {kind} (sha256 of the run {tag}…)")
    return files, size, findings


def self_test() -> int:
    """The scan finds a planted token and key and passes a clean tree: it can fail."""
    with tempfile.TemporaryDirectory(prefix="txngate-scan-") as tmp:
        root = Path(tmp)
        token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1c2VyLTEiLCJ0eG4iOiJhYmNkZWYwMTIzNDU2Nzg5In0." + "S" * 86
        key = {"kty": "OKP", "crv": "Ed25519", "x": "A" * 43, "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}
        ledger = root / "secrets.ledger"
        ledger.write_text(json.dumps({"kind": "token", "value": token}) + "\n"
                          + json.dumps({"kind": "private_key", "value": json.dumps(key)}) + "\n")
        logs = root / "logs"
        logs.mkdir()
        (logs / "clean.stderr").write_text("audit {\"token_sha256\":\"" + hashlib.sha256(token.encode()).hexdigest()
                                           + "\"}\n")
        _, _, clean = scan(load(ledger, logs), logs, ledger)
        if clean:
            print(f"self-test FAILED: a clean tree gave findings {clean}", file=sys.stderr)
            return 1
        cases = {
            "whole token": f"got token {token}\n",
            "token in a longer run": f"x={token.split('.')[2]}ZZ\n",
            "truncated signature": f"sig {token.split('.')[2][:30]}…\n",
            "private key": f"key {json.dumps(key)}\n",
        }
        for name, text in cases.items():
            planted = logs / f"{name.replace(' ', '_')}.log"
            planted.write_text(text)
            _, _, found = scan(load(ledger, logs), logs, ledger)
            planted.unlink()
            if not found:
                print(f"self-test FAILED: the scan missed a planted {name}", file=sys.stderr)
                return 1
    print("self-test ok: planted tokens and keys are found, a clean tree passes")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ledger", type=Path)
    parser.add_argument("--logs", type=Path)
    parser.add_argument("--min-tokens", type=int, default=100)
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    if args.logs is None or not args.logs.is_dir():
        parser.error("--logs must name a directory")
    secrets = load(args.ledger, args.logs)
    files, size, findings = scan(secrets, args.logs, args.ledger)
    print(f"scanned {files} log files ({size / 1e6:.1f} MB) for {secrets.tokens} tokens and {secrets.keys} "
          f"private keys: {len(findings)} findings")
    for finding in findings[:50]:
        print(f"LEAK {finding}")
    if secrets.tokens < args.min_tokens:
        print(f"FAIL: the ledger holds {secrets.tokens} tokens, fewer than {args.min_tokens}: is the recording "
              f"hook (TXNGATE_SECRET_LEDGER) still wired?", file=sys.stderr)
        return 1
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())

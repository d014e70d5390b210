"""Test support: remember every secret a suite makes, so tests/secrets/scan.py can prove none reached a log.

    from ledger import record
    record("token", token)             # a Txn-Token the test minted
    record("private_key", jwk_text)    # a private JWK (JSON text) the test generated

Writes one JSON line per secret to the file named by TXNGATE_SECRET_LEDGER (set by scripts/test.sh); does
nothing when it is unset. The project CLI (`txngate mint`, `txngate keygen`) records to the same file.
"""

from __future__ import annotations

import json
import os
from typing import Iterable


def record(kind: str, value: str) -> None:
    record_many(kind, [value])


def record_many(kind: str, values: Iterable[str]) -> None:
    path = os.environ.get("TXNGATE_SECRET_LEDGER")
    if not path:
        return
    lines = "".join(json.dumps({"kind": kind, "value": v}) + "\n" for v in values)
    # One append per call: O_APPEND keeps concurrent writers' lines whole.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, lines.encode())
    finally:
        os.close(fd)

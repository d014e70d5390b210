#!/usr/bin/env python3
"""Development keys and Txn-Tokens with PyJWT, for the workerd suite when the project CLI is not built.

    pytokens.py keygen --alg EdDSA|ES256 --kid KID --out DIR     # DIR/private.jwk, DIR/jwks.json
    pytokens.py mint --key DIR/private.jwk --claims FILE|- [--act AGENT]... [--ttl S] [--count N]

Same files and token shape as `txngate keygen` / `txngate mint` (typ "txntoken+jwt", kid, iat/exp/txn
filled in, `act` nested outermost first). One token per output line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "secrets"))
import ledger  # noqa: E402


def keygen(alg: str, kid: str, out: str) -> None:
    if alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        jwk = json.loads(OKPAlgorithm.to_jwk(private))
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(ECAlgorithm.to_jwk(private))
    else:
        sys.exit(f"unsupported --alg {alg} (EdDSA or ES256)")
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    public = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
    os.makedirs(out, exist_ok=True)
    fd = os.open(os.path.join(out, "private.jwk"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(jwk, f, indent=2)
    ledger.record("private_key", json.dumps(jwk))
    with open(os.path.join(out, "jwks.json"), "w") as f:
        json.dump({"keys": [public]}, f, indent=2)


def mint(key_path: str, claims_arg: str, act: list[str], ttl: int, count: int) -> None:
    with open(key_path) as f:
        jwk = json.load(f)
    key = jwt.PyJWK(jwk).key
    text = sys.stdin.read() if claims_arg == "-" else open(claims_arg).read()
    base = json.loads(text)
    now = int(time.time())
    for _ in range(count):
        claims = dict(base)
        claims.setdefault("iat", now)
        claims.setdefault("exp", now + ttl)
        claims.setdefault("txn", str(uuid.uuid4()))
        chain = None
        for actor in reversed(act):
            chain = {"sub": actor, **({"act": chain} if chain else {})}
        if chain:
            claims["act"] = chain
        headers = {"typ": "txntoken+jwt", "kid": jwk["kid"]}
        token = jwt.encode(claims, key, algorithm=jwk["alg"], headers=headers)
        ledger.record("token", token)
        print(token)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keygen")
    k.add_argument("--alg", required=True)
    k.add_argument("--kid", required=True)
    k.add_argument("--out", required=True)
    m = sub.add_parser("mint")
    m.add_argument("--key", required=True)
    m.add_argument("--claims", required=True)
    m.add_argument("--act", action="append", default=[])
    m.add_argument("--ttl", type=int, default=60)
    m.add_argument("--count", type=int, default=1)
    args = parser.parse_args()
    if args.command == "keygen":
        keygen(args.alg, args.kid, args.out)
    else:
        mint(args.key, args.claims, args.act, args.ttl, args.count)


if __name__ == "__main__":
    main()

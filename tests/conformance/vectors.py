"""Conformance vectors (tests/vectors/*.json): loading, validation, tokens from recipes, wire requests.

Nothing here talks to a host; see hosts.py for the adapters and run.py for the runner.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VECTORS_DIR = ROOT / "tests" / "vectors"
POLICIES_DIR = VECTORS_DIR / "policies"
KEYS_DIR = VECTORS_DIR / "keys"
README = ROOT / "README.md"

SUPPORTED_VERSION = 1
HOST_NAMES = ("native", "harness", "envoy", "worker")
#: Hosts a case may mark as unable to express it: the four, and Envoy in hybrid mode (jwt_authn verifies).
MARK_NAMES = (*HOST_NAMES, "envoy-hybrid")
KEY_NAMES = ("ed", "ec", "rsa", "ed25519", "ec384")
TAMPERS = ("signature", "payload", "pad", "truncate_signature")
DEFAULT_IAT = 0
DEFAULT_EXP = 60

_CASE_FIELDS = {"id", "description", "policy", "request", "token", "peer", "prior_calls", "expect", "hosts", "response"}
_REQUEST_FIELDS = {"method", "path", "headers", "body", "pad_body_to"}
_TOKEN_FIELDS = {"key", "claims", "act", "header", "iat", "exp", "nbf", "tamper", "wimse"}
#: A WIMSE proof recipe (token.wimse): the WIT and the WPT minted with `txngate wimse`, or one of them left out.
_WIMSE_FIELDS = {"wit", "wpt", "omit"}
_WIT_FIELDS = {"key", "sub", "cnf", "exp", "claims", "header"}
_WPT_FIELDS = {"key", "aud", "exp", "jti", "claims", "header"}
#: Development keys of the WIMSE vectors: the trust domains' Identity Servers and the workloads.
WIMSE_KEY_NAMES = ("wit-ec", "wit-other", "wl-ed", "wl-ec", "wl-other")
#: The origin the vector policies' `wimse.audiences` list: a WPT's default `aud` is it plus the request path.
WIMSE_ORIGIN = "https://mcp.example"
DEFAULT_WIT_EXP = 3600
DEFAULT_WPT_EXP = 30
_LITERAL_FIELDS = {"literal", "repeat"}
#: The list a response check reads: expect field → (result member, entry member).
_LIST_EXPECTATIONS = {
    "expect_tools": ("tools", "name"),
    "expect_prompts": ("prompts", "name"),
    "expect_resources": ("resources", "uri"),
    "expect_resource_templates": ("resourceTemplates", "uriTemplate"),
}
#: What a response case checks: the filtered list (one of these) or the refusal that replaces the response.
_RESPONSE_CHECKS = {*_LIST_EXPECTATIONS, "expect_reply"}
_RESPONSE_FIELDS = {"status", "content_type", "body", "raw_body", "pad_to", "expect_cache_scope", "expect_cache_control",
                    *_RESPONSE_CHECKS}
_ID = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


class VectorError(ValueError):
    """A vector file or case that does not follow the format (docs/conformance.md)."""


@dataclass
class Case:
    id: str
    description: str
    policy: str
    request: dict
    token: dict | None
    peer: str | None
    prior_calls: int
    expect: dict
    hosts: dict[str, str]
    response: dict | None
    file: str
    area: str

    @property
    def policy_path(self) -> Path:
        return POLICIES_DIR / f"{self.policy}.json"

    def expected(self) -> tuple[str, int, str]:
        return (self.expect["verdict"], self.expect["status"], self.expect["reason"])


@dataclass
class Outcome:
    """What a host decided for a case (the last of its prior_calls + 1 requests)."""
    verdict: str | None
    status: int | None
    reason: str | None
    #: Why the outcome is not a clean decision (trap, stall, adapter error, mismatching audit), if anything.
    detail: str | None = None
    #: tools/list response check: None when not checked, else (ok, description).
    response: tuple[bool, str] | None = None
    #: The host ran the case but could not check the response part (e.g. the CLI has no upstream).
    response_unchecked: str | None = None
    error: bool = False
    #: A refusal's body as the client got it (for `expect.rpc`).
    body: str | None = None

    def triple(self) -> tuple[Any, Any, Any]:
        return (self.verdict, self.status, self.reason)

    @classmethod
    def failure(cls, detail: str) -> "Outcome":
        return cls(None, None, None, detail=detail, error=True)


# -------------------------------------------------------------------------------------------------
# Loading and validation
# -------------------------------------------------------------------------------------------------


def known_reasons() -> set[str]:
    """Every reason of the README's decision-reasons table (`allow`, `token.typ`, ...)."""
    text = README.read_text()
    start = text.find("### Decision reasons")
    if start < 0:
        return set()
    section = text[start:text.find("\n## ", start)]
    return {"allow"} | set(re.findall(r"`([a-z0-9_]+\.[a-z0-9_]+)`", section))


def load_policy(name: str) -> dict:
    path = POLICIES_DIR / f"{name}.json"
    return json.loads(path.read_text())


def _check(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise VectorError(f"{where}: {message}")


def _validate_case(raw: dict, where: str, reasons: set[str]) -> None:
    _check(isinstance(raw, dict), where, "a case must be an object")
    unknown = set(raw) - _CASE_FIELDS
    _check(not unknown, where, f"unknown fields {sorted(unknown)}")
    for name in ("id", "description", "policy", "request", "expect"):
        _check(name in raw, where, f"missing {name!r}")
    _check(isinstance(raw["id"], str) and bool(_ID.match(raw["id"])), where, f"bad id {raw.get('id')!r}")
    _check((POLICIES_DIR / f"{raw['policy']}.json").is_file(), where, f"no policy file policies/{raw['policy']}.json")
    req = raw["request"]
    _check(isinstance(req, dict) and not (set(req) - _REQUEST_FIELDS), where, f"request fields must be among {sorted(_REQUEST_FIELDS)}")
    for name, value in req.get("headers", []):
        _check(isinstance(name, str) and isinstance(value, str), where, "headers are [name, value] string pairs")
    tok = raw.get("token")
    if tok is not None:
        _check(isinstance(tok, dict), where, "token must be a recipe, a literal or null")
        if "literal" in tok:
            _check(not (set(tok) - _LITERAL_FIELDS), where, "a literal token has only literal and repeat")
        else:
            unknown = set(tok) - _TOKEN_FIELDS
            _check(not unknown, where, f"unknown token recipe fields {sorted(unknown)}")
            _check(tok.get("key") in KEY_NAMES, where, f"token.key must be one of {KEY_NAMES}")
            _check(isinstance(tok.get("claims"), dict), where, "token.claims must be an object")
            _check(tok.get("tamper") in (None, *TAMPERS), where, f"token.tamper must be one of {TAMPERS}")
            if "wimse" in tok:
                _validate_wimse(tok["wimse"], where)
            for t in ("iat", "exp", "nbf"):
                if t in tok:
                    _check(isinstance(tok[t], int), where, f"token.{t} is relative seconds (an integer)")
                    _check(t not in tok["claims"], where, f"{t} both relative and in claims")
    exp = raw["expect"]
    _check(isinstance(exp, dict) and {"verdict", "status", "reason"} <= set(exp) <= {"verdict", "status", "reason", "rpc"},
           where, "expect has verdict, status, reason (and optionally rpc)")
    if "rpc" in exp:
        rpc = exp["rpc"]
        _check(isinstance(rpc, dict) and set(rpc) == {"code", "id"} and isinstance(rpc["code"], int)
               and (rpc["id"] is None or isinstance(rpc["id"], (str, int))) and exp["verdict"] == "deny",
               where, "expect.rpc is {code: int, id: string | number | null (no id member)} on a refusal")
    _check(exp["verdict"] in ("allow", "deny"), where, "expect.verdict is allow or deny")
    _check((exp["verdict"] == "allow") == (exp["status"] == 200), where, "allow goes with 200, deny with another status")
    if reasons:
        _check(exp["reason"] in reasons, where, f"reason {exp['reason']!r} is not in README's reasons table")
    hosts = raw.get("hosts", {})
    _check(isinstance(hosts, dict) and all(h in MARK_NAMES and isinstance(v, str) and v for h, v in hosts.items()),
           where, f"hosts maps a host ({', '.join(MARK_NAMES)}) to the reason it cannot express the case")
    _check(isinstance(raw.get("prior_calls", 0), int) and raw.get("prior_calls", 0) >= 0, where, "prior_calls >= 0")
    resp = raw.get("response")
    if resp is not None:
        _check(isinstance(resp, dict) and not (set(resp) - _RESPONSE_FIELDS)
               and len(set(resp) & _RESPONSE_CHECKS) == 1, where,
               f"response fields: {sorted(_RESPONSE_FIELDS)} (exactly one of {sorted(_RESPONSE_CHECKS)})")
        _check(exp["verdict"] == "allow", where, "a response check needs an allowed request")
        _check(("body" in resp) != ("raw_body" in resp), where, "a response has a body (JSON) or a raw_body (text)")
        _check(isinstance(resp.get("raw_body", ""), str), where, "response.raw_body is sent as is: a string")
        _check(isinstance(resp.get("pad_to", 0), int) and resp.get("pad_to", 0) >= 0, where, "response.pad_to is a byte count")
        reply = resp.get("expect_reply")
        if reply is not None:
            _check(isinstance(reply, dict) and {"status", "reason"} <= set(reply) <= {"status", "reason", "body"}
                   and isinstance(reply["status"], int) and reply["status"] >= 400, where,
                   "response.expect_reply is {status: >= 400, reason, body (optional: the exact JSON body)}")
            # An adapter-side reason (the core's `reply::Failure`), not a decision reason of README's table.
            _check(isinstance(reply["reason"], str) and bool(_ID.match(reply["reason"])), where, "expect_reply.reason: a reason code")


def _validate_wimse(w: Any, where: str) -> None:
    _check(isinstance(w, dict) and not (set(w) - _WIMSE_FIELDS), where, f"token.wimse fields are among {sorted(_WIMSE_FIELDS)}")
    _check(w.get("omit") in (None, "wit", "wpt"), where, "token.wimse.omit is wit or wpt")
    for part, fields in (("wit", _WIT_FIELDS), ("wpt", _WPT_FIELDS)):
        sub = w.get(part, {})
        _check(isinstance(sub, dict) and not (set(sub) - fields), where, f"token.wimse.{part} fields are among {sorted(fields)}")
        for k in ("key", "cnf"):
            if k in sub:
                _check(sub[k] in WIMSE_KEY_NAMES, where, f"token.wimse.{part}.{k} must be one of {WIMSE_KEY_NAMES}")
        if "exp" in sub:
            _check(isinstance(sub["exp"], int), where, f"token.wimse.{part}.exp is relative seconds (an integer)")


def policy_accepts_proof_for_peer(policy: dict) -> bool:
    """Whether a host without mTLS may present a case's `peer` as a WIMSE proof instead: the policy ignores the
    peer (`off`), or takes the caller from the mTLS peer or a WIMSE proof (`source: mtls_or_wimse`)."""
    binding = policy.get("peer_binding", "off")
    if binding == "off":
        return True
    return isinstance(binding, dict) and (binding.get("mode") == "off" or binding.get("source") == "mtls_or_wimse")


def load_cases(pattern: str | None = None, directory: Path = VECTORS_DIR) -> list[Case]:
    """All cases of directory/*.json (sorted by file name), filtered by an id glob (`token.*`, `*.typ.*`)."""
    reasons = known_reasons()
    cases: list[Case] = []
    seen: dict[str, str] = {}
    for path in sorted(directory.glob("*.json")):
        doc = json.loads(path.read_text())
        where = path.name
        _check(isinstance(doc, dict), where, "a vector file is an object")
        _check(doc.get("version") == SUPPORTED_VERSION, where, f"version must be {SUPPORTED_VERSION}, got {doc.get('version')!r}")
        _check(isinstance(doc.get("cases"), list), where, "missing cases")
        for i, raw in enumerate(doc["cases"]):
            at = f"{where} case {i} ({raw.get('id', '?') if isinstance(raw, dict) else '?'})"
            _validate_case(raw, at, reasons)
            _check(raw["id"] not in seen, at, f"duplicate id (also in {seen.get(raw['id'])})")
            seen[raw["id"]] = where
            cases.append(Case(
                id=raw["id"], description=raw["description"], policy=raw["policy"], request=raw["request"],
                token=raw.get("token"), peer=raw.get("peer"), prior_calls=raw.get("prior_calls", 0),
                expect=raw["expect"], hosts=raw.get("hosts", {}), response=raw.get("response"),
                file=path.name, area=doc.get("area", path.stem),
            ))
    lint_buckets(cases)
    if pattern:
        globs = [p.strip() for p in pattern.split(",") if p.strip()]
        cases = [c for c in cases if any(fnmatch.fnmatchcase(c.id, g) for g in globs)]
    return cases


def lint_buckets(cases: list[Case]) -> None:
    """Rate-limit buckets must never be shared by two cases of one policy: every host runs all cases of a
    policy against one store, so a shared bucket would make a verdict depend on which cases ran before."""
    owners: dict[tuple, str] = {}
    for case in cases:
        key = bucket_of(case)
        if key is None:
            continue
        other = owners.get(key)
        if other is not None:
            raise VectorError(f"cases {other} and {case.id} share the rate-limit bucket {key}: give each its own sub/agent")
        owners[key] = case.id


_NAMED_SECTIONS = {"tools/call": ("tools", "name"), "prompts/get": ("prompts", "name"), "resources/read": ("resources", "uri")}


def bucket_of(case: Case) -> tuple | None:
    """(policy, section, name, key kind, id) of the bucket a case's tools/call, prompts/get or resources/read
    consumes, if its rule has a rate limit. Names are exact (case-sensitive); a resource URI is reduced to a
    conservative stand-in: any pattern rule with a limit counts as its bucket (its key), so cases that may share
    one are flagged."""
    body = case.request.get("body")
    if not isinstance(body, dict) or body.get("method") not in _NAMED_SECTIONS or case.token is None or "claims" not in case.token:
        return None
    section, member = _NAMED_SECTIONS[body["method"]]
    params = body.get("params")
    name = params.get(member) if isinstance(params, dict) else None
    if not isinstance(name, str):
        return None
    rules = load_policy(case.policy).get(section) or {}
    if section == "resources":
        rule_name = name if name in rules else next(
            (k for k, r in sorted(rules.items()) if "*" in k and k != "*" and "rate_limit" in r
             and fnmatch.fnmatchcase(name, k.replace("**", "*"))), "*")
        rule = rules.get(rule_name)
        name = rule_name
    else:
        rule = rules.get(name, rules.get("*"))
    if not rule or "rate_limit" not in rule:
        return None
    kind = rule["rate_limit"]["key"]
    claims = case.token["claims"]
    act = case.token.get("act") or []
    agent = act[0] if act else claims.get("req_wl")
    ident = {"agent": agent, "sub": claims.get("sub"), "tool": ""}[kind]
    return (case.policy, section, name, kind, ident)


# -------------------------------------------------------------------------------------------------
# Tokens
# -------------------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.strip(" \t").encode()).hexdigest()


class MintedToken(str):
    """A minted token; `proof_headers` are the WIMSE headers (WIT, WPT) that go with it, if any."""
    proof_headers: list[tuple[str, str]] = []


class Minter:
    """Tokens from recipes with `txngate mint --now <host now>` and the committed test keys."""

    def __init__(self, cli: Path):
        self.cli = cli

    def token(self, recipe: dict | None, now: int, case: "Case | None" = None, peer_proof: str | None = None) -> str | None:
        """`peer_proof`: a host without mTLS presents this peer as a WIMSE proof (the token's `wimse` recipe with
        the WIT's `sub` set to it)."""
        token = self._token(recipe, now)
        if token is None or recipe is None or "literal" in recipe:
            return token
        wimse = recipe.get("wimse")
        if peer_proof is not None:
            wimse = {**(wimse or {}), "wit": {**(wimse or {}).get("wit", {}), "sub": peer_proof}}
        if wimse is None:
            return token
        minted = MintedToken(token)
        minted.proof_headers = self.proof(wimse, recipe, token, now, case)
        return minted

    def _run(self, argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise VectorError(f"{' '.join(argv[1:3])} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout.strip()

    def proof(self, wimse: dict, recipe: dict, token: str, now: int, case: "Case | None") -> list[tuple[str, str]]:
        """Workload-Identity-Token and Workload-Proof-Token headers for this token (`txngate wimse`)."""
        wit_r, wpt_r = wimse.get("wit", {}), wimse.get("wpt", {})
        act = recipe.get("act") or []
        sub = wit_r.get("sub") or (act[0] if act else recipe["claims"].get("req_wl"))
        cnf = wit_r.get("cnf", "wl-ed")
        argv = [str(self.cli), "wimse", "wit", "--key", str(KEYS_DIR / wit_r.get("key", "wit-ec") / "private.jwk"),
                "--sub", sub, "--workload-key", str(KEYS_DIR / cnf / "private.jwk"),
                f"--ttl={wit_r.get('exp', DEFAULT_WIT_EXP)}", "--now", str(now)]
        if wit_r.get("claims"):
            argv += ["--claims", json.dumps(wit_r["claims"])]
        if wit_r.get("header"):
            argv += ["--header", json.dumps(wit_r["header"])]
        wit = self._run(argv)
        path = (case.request.get("path", "/mcp") if case is not None else "/mcp").split("?")[0].split("#")[0]
        argv = [str(self.cli), "wimse", "wpt", "--key", str(KEYS_DIR / wpt_r.get("key", cnf) / "private.jwk"),
                "--wit", wit, "--aud", wpt_r.get("aud", WIMSE_ORIGIN + path), "--txn-token", token,
                f"--ttl={wpt_r.get('exp', DEFAULT_WPT_EXP)}", "--now", str(now)]
        if "jti" in wpt_r:
            argv += ["--jti", wpt_r["jti"]]
        if wpt_r.get("claims"):
            argv += ["--claims", json.dumps(wpt_r["claims"])]
        if wpt_r.get("header"):
            argv += ["--header", json.dumps(wpt_r["header"])]
        wpt = self._run(argv)
        headers = []
        if wimse.get("omit") != "wit":
            headers.append(("Workload-Identity-Token", wit))
        if wimse.get("omit") != "wpt":
            headers.append(("Workload-Proof-Token", wpt))
        return headers

    def _token(self, recipe: dict | None, now: int) -> str | None:
        if recipe is None:
            return None
        if "literal" in recipe:
            return recipe["literal"] * recipe.get("repeat", 1)
        claims = dict(recipe["claims"])
        for name in ("iat", "exp", "nbf"):
            if name in recipe:
                claims[name] = now + recipe[name]
        claims.setdefault("iat", now + DEFAULT_IAT)
        claims.setdefault("exp", now + DEFAULT_EXP)
        argv = [str(self.cli), "mint", "--key", str(KEYS_DIR / recipe["key"] / "private.jwk"), "--claims", "-",
                "--now", str(now)]
        for actor in recipe.get("act") or []:
            argv += ["--act", actor]
        if recipe.get("header"):
            argv += ["--header", json.dumps(recipe["header"])]
        done = subprocess.run(argv, input=json.dumps(claims), capture_output=True, text=True, timeout=30,
                              stdin=None)
        if done.returncode != 0:
            raise VectorError(f"txngate mint failed ({done.returncode}): {done.stderr.strip()}")
        token = done.stdout.strip()
        tamper = recipe.get("tamper")
        if tamper:
            token = apply_tamper(token, tamper)
        return token


def apply_tamper(token: str, how: str) -> str:
    header, payload, signature = token.split(".")
    if how == "signature":
        first = "B" if signature[0] == "A" else "A"
        return f"{header}.{payload}.{first}{signature[1:]}"
    if how == "payload":
        claims = json.loads(unb64url(payload))
        claims["scope"] = "admin:* email:* calendar:* web:search"
        return f"{header}.{b64url(json.dumps(claims, separators=(',', ':')).encode())}.{signature}"
    if how == "pad":
        return f"{token}="
    if how == "truncate_signature":
        return f"{header}.{payload}.{b64url(unb64url(signature)[:32])}"
    raise VectorError(f"unknown tamper {how!r}")


# -------------------------------------------------------------------------------------------------
# Wire requests
# -------------------------------------------------------------------------------------------------


@dataclass
class Wire:
    """A case's request as bytes on the wire, the same for every host."""
    method: str
    path: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    peer: str | None = None


def token_header_name(policy: dict) -> str:
    return (policy.get("token") or {}).get("header", "txn-token")


def wire_request(case: Case, token: str | None, policy: dict) -> Wire:
    req = case.request
    headers: list[tuple[str, str]] = []
    placed = False
    for name, value in req.get("headers", []):
        if "$TOKEN" in value:
            placed = True
            if token is None:
                continue
            value = value.replace("$TOKEN", str(token))
        headers.append((name, value))
    if token is not None and not placed:
        headers.insert(0, (token_header_name(policy), str(token)))
    headers.extend(getattr(token, "proof_headers", []))
    body = encode_body(req.get("body"))
    pad = req.get("pad_body_to")
    if body is not None and pad and len(body) < pad:
        body += b" " * (pad - len(body))
    if body is not None and not any(n.lower() == "content-type" for n, _ in headers):
        headers.append(("content-type", "application/json"))
    return Wire(method=req.get("method", "POST"), path=req.get("path", "/mcp"), headers=headers, body=body, peer=case.peer)


def encode_body(body: Any) -> bytes | None:
    if body is None:
        return None
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


# -------------------------------------------------------------------------------------------------
# Reading decisions back
# -------------------------------------------------------------------------------------------------


def reason_from_body(text: str) -> str | None:
    """The reason of a refusal: JSON-RPC error.data.reason (MCP paths) or reason (other paths)."""
    try:
        doc = json.loads(text)
    except (ValueError, TypeError):
        return None
    if not isinstance(doc, dict):
        return None
    error = doc.get("error")
    if isinstance(error, dict):
        data = error.get("data")
        if isinstance(data, dict) and isinstance(data.get("reason"), str):
            return data["reason"]
    reason = doc.get("reason")
    return reason if isinstance(reason, str) else None


def check_rpc(case: Case, outcome: Outcome) -> str | None:
    """None when the case has no `expect.rpc` or the refusal's JSON-RPC error matches it (code, and the id
    member: equal, or absent when the vector says null); else what differs."""
    want = case.expect.get("rpc")
    if want is None:
        return None
    try:
        doc = json.loads(outcome.body or "")
    except ValueError:
        return f"expect.rpc: the refusal body is not JSON: {(outcome.body or '')[:200]!r}"
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), dict):
        return f"expect.rpc: the refusal body is not a JSON-RPC error: {(outcome.body or '')[:200]!r}"
    got_code = doc["error"].get("code")
    got_id = doc["id"] if "id" in doc else None
    problems = []
    if got_code != want["code"]:
        problems.append(f"code {got_code} (expected {want['code']})")
    if want["id"] is None and "id" in doc:
        problems.append(f"id {doc['id']!r} (expected no id member)")
    elif want["id"] is not None and got_id != want["id"]:
        problems.append(f"id {'absent' if 'id' not in doc else repr(got_id)} (expected {want['id']!r})")
    return "expect.rpc: " + ", ".join(problems) if problems else None


def audit_records(lines: list[str]) -> list[dict]:
    """Audit records (JSON objects with a verdict) in log lines, wherever the JSON starts."""
    out = []
    for line in lines:
        start = line.find("{")
        if start < 0:
            continue
        try:
            record = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(record, dict) and "verdict" in record and "reason" in record:
            out.append(record)
    return out


def upstream_response_text(response: dict) -> tuple[str, bytes]:
    """(content-type, body bytes) of a case's canned list response, as the upstream sends it: `raw_body` as
    is, else `body` as compact JSON (in one SSE event for `text/event-stream`); then `pad_to` (spaces, which
    JSON and SSE both ignore, appended up to that many bytes)."""
    ct = response.get("content_type", "application/json")
    if "raw_body" in response:
        data = response["raw_body"].encode()
    else:
        payload = json.dumps(response["body"], separators=(",", ":"))
        if ct.split(";")[0].strip() == "text/event-stream":
            data = f"event: message\ndata: {payload}\n\n".encode()
        else:
            data = payload.encode()
    pad = response.get("pad_to", 0)
    if len(data) < pad:
        data += b" " * (pad - len(data))
    return ct, data


def expected_reply(case: Case) -> dict | None:
    """The refusal that must replace the upstream's response on hosts that have one (`expect_reply`)."""
    return (case.response or {}).get("expect_reply")


def allowed_status(case: Case, status: int | None) -> int | None:
    """The decision status of a request that reached the upstream: 200 when the client got the upstream's own
    status (a canned response may answer 203), else the status as it came."""
    upstream = (case.response or {}).get("status", 200)
    return 200 if status == upstream else status


def expected_triple(case: Case, outcome: Outcome | None) -> tuple[str, int, str]:
    """What a host must decide: `expect`, or on a host that renders the upstream's response (the CLI has none),
    the refusal of `expect_reply` that replaces it."""
    reply = expected_reply(case)
    if reply is not None and outcome is not None and outcome.response_unchecked is None:
        return ("deny", reply["status"], reply["reason"])
    return case.expected()


def check_reply(case: Case, outcome: Outcome) -> str | None:
    """None when the case has no `expect_reply.body` or the refusal's body is exactly that JSON."""
    want = (expected_reply(case) or {}).get("body")
    if want is None:
        return None
    try:
        got = json.loads(outcome.body or "")
    except ValueError:
        return f"expect_reply: the refusal body is not JSON: {(outcome.body or '')[:200]!r}"
    if got != want:
        return f"expect_reply: body {json.dumps(got, sort_keys=True)[:400]} (expected {json.dumps(want, sort_keys=True)[:400]})"
    return None


def tools_in_response(content_type: str, body: str, member: str = "tools", field: str = "name") -> list[str] | None:
    """Entry names in a list response body (JSON or SSE): tools/list by default; None if it is neither."""
    result = list_result(content_type, body, member)
    if result is None:
        return None
    return [t.get(field) for t in result[member] if isinstance(t, dict)]


def list_result(content_type: str, body: str, member: str) -> dict | None:
    """The `result` object of a list response (JSON or SSE) that has the array `member`; None otherwise."""
    docs = []
    if content_type.split(";")[0].strip().lower() == "text/event-stream":
        for event in body.replace("\r\n", "\n").split("\n\n"):
            data = [l[5:].lstrip(" ") for l in event.split("\n") if l.startswith("data:")]
            if data:
                try:
                    docs.append(json.loads("\n".join(data)))
                except ValueError:
                    return None
    else:
        try:
            docs.append(json.loads(body))
        except ValueError:
            return None
    for doc in docs:
        result = doc.get("result") if isinstance(doc, dict) else None
        if isinstance(result, dict) and isinstance(result.get(member), list):
            return result
    return None


def check_tools(case: Case, content_type: str, body: str, cache_control: str | None = None) -> tuple[bool, str]:
    """The list response check of a case: its `expect_*` entries, `expect_cache_scope` when given
    (`null`: the result has no cacheScope), and `expect_cache_control` (a value the response's Cache-Control
    must contain) when given."""
    if expected_reply(case) is not None:
        return False, f"the upstream's response reached the client; expected the refusal {expected_reply(case)}"
    expect = next(k for k in _LIST_EXPECTATIONS if k in case.response)
    member, field = _LIST_EXPECTATIONS[expect]
    expected = case.response[expect]
    result = list_result(content_type, body, member)
    if result is None:
        return False, f"response is not a {member} list result ({content_type}): {body[:200]!r}"
    got = [t.get(field) for t in result[member] if isinstance(t, dict)]
    if got != expected:
        return False, f"{member} list response: expected {expected}, got {got}"
    if "expect_cache_scope" in case.response and result.get("cacheScope") != case.response["expect_cache_scope"]:
        return False, f"{member} list response: cacheScope {result.get('cacheScope')!r}, expected {case.response['expect_cache_scope']!r}"
    if "expect_cache_control" in case.response and case.response["expect_cache_control"] not in (cache_control or ""):
        return False, f"Cache-Control {cache_control!r} lacks {case.response['expect_cache_control']!r}"
    return True, f"{member} list response filtered as expected"

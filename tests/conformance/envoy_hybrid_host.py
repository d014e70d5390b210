"""Hybrid mode in real Envoy: the `envoy` host (envoy_host.py) with Envoy's native `jwt_authn` in front of the
filter, verifying every token's signature, and the filter in hybrid mode (`hybrid_jwt_authn`: the signature is
attested by jwt_authn's `payload_in_metadata`, every other rule is txngate's). jwt_authn is configured as the
hybrid docs say (docs/hybrid.md): it never refuses by itself (`allow_missing_or_failed`), keeps the
token header (`forward`), reads the policy's token header, and leaves time to txngate (a clock skew so wide
that only txngate's `exp`/`nbf`/`iat` rules decide), so every status is the filter's.

Statuses must equal the vectors' everywhere. One reason cannot: when jwt_authn refuses a token (a signature
that does not verify, claims it cannot parse), the filter only sees that nothing was verified and answers
401 `token.host_unverified` where the native filter says why (`token.signature`, ...). The runner accepts
exactly that substitution for this host (HOST_REASON_ALIASES), with the same verdict and status.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from envoy_host import DualListenerConfig, Envoy, running_envoy
from procs import free_port
from upstream import Upstream

#: The reason the hybrid filter gives, and the vector reasons it stands for (jwt_authn refused the token and
#: the filter cannot know why). Same verdict and status required.
HOST_REASON_ALIASES = {
    "token.host_unverified": {
        "token.signature", "token.claims", "token.claim_type", "token.claim_missing", "token.base64",
    },
}
PAYLOAD_KEY = "txngate_payload"
#: jwt_authn's clock skew: ten years, so jwt_authn never judges time and txngate's leeway alone applies.
NO_TIME_CHECK_SKEW = 10 * 365 * 86400
#: For a policy without inline keys (remote JWKS): a key nothing is signed with, so jwt_authn verifies nothing.
UNRELATED_JWKS = {"keys": [{"kty": "EC", "crv": "P-256", "kid": "unrelated", "alg": "ES256",
                            "x": "tMv3z9JZH-STHsLshjzfEO0o3PyVtw0by0vqufc8erE",
                            "y": "CwEB3CbEUdWqnzBkMoNB5kP6agAc_IGAVonryEvh2HU"}]}


def jwt_authn_filter(policy: dict) -> dict:
    keys = [k for issuer in policy.get("issuers", []) for k in issuer.get("jwks", {}).get("keys", [])]
    header = policy.get("token", {}).get("header", "txn-token")
    provider = {
        "local_jwks": {"inline_string": json.dumps({"keys": keys} if keys else UNRELATED_JWKS)},
        "from_headers": [{"name": header}],
        "forward": True,
        "payload_in_metadata": PAYLOAD_KEY,
        "clock_skew_seconds": NO_TIME_CHECK_SKEW,
    }
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"txngate": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "txngate"}, {"allow_missing_or_failed": {}}]}}}],
        },
    }


class HybridDualListenerConfig(DualListenerConfig):
    def __init__(self, *args, jwt: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.jwt = jwt

    def bootstrap(self) -> dict:
        doc = super().bootstrap()
        for listener in doc["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for f in chain["filters"]:
                    f["typed_config"]["http_filters"].insert(0, self.jwt)
        return doc


class EnvoyHybrid(Envoy):
    name = "envoy-hybrid"
    #: Vectors marked for `envoy` are marked for this host too.
    marks = ("envoy-hybrid", "envoy")
    reason_aliases = HOST_REASON_ALIASES

    def start(self, policy_path: Path) -> None:
        super(Envoy, self).start(policy_path)  # Host.start: reads the policy
        if self.upstream is None:
            self.upstream = Upstream()
        self.stack = contextlib.ExitStack()
        directory = self.dir / f"hybrid-{policy_path.stem}"
        doc = json.loads(policy_path.read_text())
        filter_policy = {"hybrid_jwt_authn": {"payload_in_metadata": PAYLOAD_KEY}, **doc}
        config = HybridDualListenerConfig(policy=json.dumps(filter_policy), upstream_port=self.upstream.port,
                                          wasm=Path(self.wasm), tls_port=free_port(), tls_files=self.server_tls,
                                          jwt=jwt_authn_filter(doc))
        self.config = config
        self.envoy = self.stack.enter_context(running_envoy(config, directory, name=f"envoy-hybrid-{policy_path.stem}"))
        self.envoy.proc.wait_port(config.tls_port)

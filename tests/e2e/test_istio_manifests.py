"""Every Istio manifest of the project (examples/istio/*.yaml) against Istio's own CRD schemas, and the policy
each one carries against txngate's policy compiler and the real filter in Envoy.

    .venv/bin/pytest -q tests/e2e/test_istio_manifests.py

* The CRD schemas are Istio's (WasmPlugin, EnvoyFilter, ServiceEntry, DestinationRule), read from
  `../shared/reference/istio/crds.yaml` beside the repository (`$TXNGATE_ISTIO_CRDS` to point elsewhere); they
  are data, not part of the project. Each document is validated as the API server would check it: the
  served version's `openAPIV3Schema` (JSON Schema, Draft 7 semantics), with unknown fields refused wherever the
  schema does not preserve them (Kubernetes prunes or, with strict field validation, rejects them: a typo such
  as `failStratgy` must not pass). CEL rules (`x-kubernetes-validations`) are not evaluated here.
* The plugin configuration (a WasmPlugin's `pluginConfig`, an EnvoyFilter's Wasm `configuration`) minus the
  filter's own adapter keys (`audit_sink`, `hybrid_jwt_authn`, `pause_at_headers`) must compile with
  `txngate policy validate`, and the whole configuration must load in the real filter in Envoy
  (`envoy --mode validate` starts the VM and runs the filter's `on_configure`).
* The body mode is consistent: a WasmPlugin cannot set `allow_on_headers_stop_iteration`, so it must not ask
  for `pause_at_headers`; an EnvoyFilter that asks for it must set the option.

No cluster is involved: nothing here is applied anywhere.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

E2E_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(E2E_DIR / "envoy"))

from envoy_harness import EnvoyConfig, filter_wasm, validate  # noqa: E402
from procs import PROJECT_ROOT  # noqa: E402

MANIFESTS = sorted((PROJECT_ROOT / "examples" / "istio").glob("*.yaml"))
ADAPTER_KEYS = ("audit_sink", "access_log_fields", "hybrid_jwt_authn", "host_verified_jwt_authn", "pause_at_headers")
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def crds_path() -> Path:
    override = os.environ.get("TXNGATE_ISTIO_CRDS")
    return Path(override) if override else PROJECT_ROOT.parent / "shared" / "reference" / "istio" / "crds.yaml"


@pytest.fixture(scope="module")
def schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the served version's openAPIV3Schema, made strict about unknown fields."""
    path = crds_path()
    if not path.is_file():
        pytest.fail(f"Istio's CRD schemas are not at {path} (set TXNGATE_ISTIO_CRDS)")
    out = {}
    for doc in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
        for version in doc["spec"]["versions"]:
            if version.get("served"):
                out[(f"{group}/{version['name']}", kind)] = strict(version["schema"]["openAPIV3Schema"])
    assert {k for _, k in out} >= {"WasmPlugin", "EnvoyFilter", "ServiceEntry", "DestinationRule"}
    return out


def strict(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever it lists properties and keeps no unknown ones."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in MANIFESTS:
        for i, doc in enumerate(yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))):
            if doc:
                out.append((f"{path.name}#{i}", doc))
    return out


def plugin_configuration(doc: dict) -> list[tuple[str, dict]]:
    """The plugin configurations a manifest carries, parsed: (where, JSON object)."""
    kind, spec = doc["kind"], doc["spec"]
    if kind == "WasmPlugin":
        return [("pluginConfig", spec["pluginConfig"])] if "pluginConfig" in spec else []
    out = []
    if kind == "EnvoyFilter":
        for i, patch in enumerate(spec.get("configPatches", [])):
            typed = patch.get("patch", {}).get("value", {}).get("typed_config", {})
            if typed.get("@type") == WASM_TYPE:
                value = typed["config"]["configuration"]
                assert value["@type"] == "type.googleapis.com/google.protobuf.StringValue"
                out.append((f"configPatches[{i}]", json.loads(value["value"])))
    return out


def wasm_configs(doc: dict) -> list[dict]:
    if doc["kind"] != "EnvoyFilter":
        return []
    return [p["patch"]["value"]["typed_config"]["config"] for p in doc["spec"].get("configPatches", [])
            if p.get("patch", {}).get("value", {}).get("typed_config", {}).get("@type") == WASM_TYPE]


def cli() -> Path:
    override = os.environ.get("TXNGATE_CLI")
    if override:
        return Path(override)
    for candidate in (PROJECT_ROOT / "target" / "release" / "txngate", PROJECT_ROOT / "target" / "debug" / "txngate"):
        if candidate.exists():
            return candidate
    subprocess.run(["cargo", "build", "--locked", "-p", "txngate-cli"], cwd=PROJECT_ROOT, check=True, timeout=1800,
                   stdin=subprocess.DEVNULL)
    return PROJECT_ROOT / "target" / "debug" / "txngate"


def test_there_are_manifests_and_a_wasmplugin_among_them():
    kinds = [doc["kind"] for _, doc in documents()]
    assert "WasmPlugin" in kinds and "EnvoyFilter" in kinds, kinds


@pytest.mark.parametrize("where,doc", documents(), ids=[w for w, _ in documents()])
def test_manifest_matches_istios_crd_schema(schemas, where, doc):
    key = (doc.get("apiVersion"), doc.get("kind"))
    assert key in schemas, f"{where}: no served CRD version for {key}"
    assert doc.get("metadata", {}).get("name"), f"{where}: metadata.name"
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    errors = sorted(jsonschema.Draft7Validator(schemas[key]).iter_errors(body), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{where}: {'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_schema_check_catches_a_typo(schemas):
    """The check is not vacuous: a misspelt field or a bad enum value is refused."""
    (_, doc), = [(w, d) for w, d in documents() if d["kind"] == "WasmPlugin"][:1]
    validator = jsonschema.Draft7Validator(schemas[(doc["apiVersion"], "WasmPlugin")])
    for mutate in (lambda s: s.update(failStratgy="FAIL_CLOSE"), lambda s: s.update(phase="FIRST"),
                   lambda s: s.update(url=7)):
        spec = copy.deepcopy(doc["spec"])
        mutate(spec)
        assert list(validator.iter_errors({"spec": spec})), spec


@pytest.mark.parametrize("where,doc", documents(), ids=[w for w, _ in documents()])
def test_plugin_configuration_is_a_policy_txngate_accepts(tmp_path, where, doc):
    for place, config in plugin_configuration(doc):
        policy = {k: v for k, v in config.items() if k not in ADAPTER_KEYS}
        path = tmp_path / "policy.json"
        path.write_text(json.dumps(policy))
        done = subprocess.run([str(cli()), "policy", "validate", str(path)], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"{where} {place}: {done.stdout}{done.stderr}"


@pytest.mark.parametrize("where,doc", documents(), ids=[w for w, _ in documents()])
def test_plugin_configuration_loads_in_the_real_filter(tmp_path, where, doc):
    for i, (place, config) in enumerate(plugin_configuration(doc)):
        # As Istio hands it over: the configuration as a JSON string, no allow_on_headers_stop_iteration
        # unless the manifest itself sets it (then EnvoyConfig's own option is what it sets).
        option = any(c.get("allow_on_headers_stop_iteration") for c in wasm_configs(doc))
        envoy = EnvoyConfig(policy=json.dumps(config), upstream_port=1, wasm=filter_wasm(), stop_iteration=option)
        done = validate(envoy.write(tmp_path, f"validate-{i}.json"))
        assert done.returncode == 0, f"{where} {place}: {done.stderr[-3000:]}"


@pytest.mark.parametrize("where,doc", documents(), ids=[w for w, _ in documents()])
def test_body_mode_matches_what_the_resource_can_configure(where, doc):
    for place, config in plugin_configuration(doc):
        pause = config.get("pause_at_headers", False)
        if doc["kind"] == "WasmPlugin":
            assert pause is False, f"{where}: a WasmPlugin cannot set allow_on_headers_stop_iteration"
        else:
            option = all(c.get("allow_on_headers_stop_iteration") for c in wasm_configs(doc))
            assert not pause or option, f"{where} {place}: pause_at_headers needs allow_on_headers_stop_iteration"


def test_wasmplugin_pins_its_image_by_digest():
    for where, doc in documents():
        if doc["kind"] == "WasmPlugin":
            url = doc["spec"]["url"]
            assert url.startswith("oci://") and "@sha256:" in url, f"{where}: {url}"
            digest = url.rsplit("@sha256:", 1)[1]
            assert len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)

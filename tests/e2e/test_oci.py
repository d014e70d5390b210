"""The OCI images of the shipped filter (scripts/build-oci.sh), read back from disk.

    scripts/build-filter.sh && scripts/build-oci.sh
    .venv/bin/pytest -q tests/e2e/test_oci.py

Checks each OCI image layout (directory and tarball) the way a registry client reads it: `oci-layout`,
`index.json`, every blob's sha256 digest and size, the manifests' media types, and that the layer Istio
extracts is the filter byte for byte — picking the layer with Istio's own rules (pkg/wasm/imagefetcher.go:
"compat" = last layer tar+gzip holding `plugin.wasm`; "oci" = exactly two layers, one of them
`application/vnd.module.wasm.content.layer.v1+wasm`, read raw). Nothing is pushed; no network.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BUILDER = PROJECT_ROOT / "scripts" / "build-oci.sh"
DEFAULT_WASM = PROJECT_ROOT / "target" / "shipped" / "txngate_filter.wasm"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


@pytest.fixture(scope="module")
def wasm() -> Path:
    path = Path(os.environ.get("TXNGATE_FILTER_WASM", DEFAULT_WASM))
    if not path.is_file():
        pytest.fail(f"{path} is missing: run scripts/build-filter.sh first")
    return path


def build(wasm: Path, out: Path, version: str = "0.1.0") -> dict[str, str]:
    done = subprocess.run([str(BUILDER), "--wasm", str(wasm), "--out", str(out), "--version", version],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    digests = {}
    for line in done.stdout.splitlines():
        name, _, rest = line.partition(":")
        if name.startswith("txngate-filter"):
            digests[name] = rest.split()[1]
    assert set(digests) == {"txngate-filter", "txngate-filter-compat"}, done.stdout
    return digests


class Reader:
    """An OCI image layout read from a directory or from its tarball, every blob checked on read."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files

    @classmethod
    def directory(cls, path: Path) -> "Reader":
        return cls({p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()})

    @classmethod
    def tarball(cls, path: Path) -> "Reader":
        files = {}
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                assert member.isfile(), member.name
                assert not member.name.startswith("/") and ".." not in member.name.split("/")
                files[member.name] = tar.extractfile(member).read()
        return cls(files)

    def json(self, name: str) -> dict:
        return json.loads(self.files[name])

    def blob(self, descriptor: dict) -> bytes:
        algorithm, _, hexdigest = descriptor["digest"].partition(":")
        assert algorithm == "sha256" and len(hexdigest) == 64, descriptor
        data = self.files[f"blobs/sha256/{hexdigest}"]
        assert hashlib.sha256(data).hexdigest() == hexdigest, "blob content matches its digest"
        assert len(data) == descriptor["size"], "blob size matches its descriptor"
        return data

    def manifest(self, tag: str) -> tuple[dict, dict]:
        assert json.loads(self.files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
        index = self.json("index.json")
        assert index["schemaVersion"] == 2 and index.get("mediaType", OCI_INDEX) == OCI_INDEX
        assert len(index["manifests"]) == 1, "one image per layout (crane push takes it as an image)"
        descriptor = index["manifests"][0]
        assert descriptor["mediaType"] == OCI_MANIFEST
        assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == tag
        manifest = json.loads(self.blob(descriptor))
        assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == OCI_MANIFEST
        self.blob(manifest["config"])
        for layer in manifest["layers"]:
            self.blob(layer)
        # Every file in the layout is accounted for (no stray blobs).
        referenced = {descriptor["digest"], manifest["config"]["digest"], *(l["digest"] for l in manifest["layers"])}
        blobs = {"sha256:" + n.removeprefix("blobs/sha256/") for n in self.files if n.startswith("blobs/")}
        assert blobs == referenced
        assert set(self.files) - {n for n in self.files if n.startswith("blobs/")} == {"oci-layout", "index.json"}
        return descriptor, manifest


def istio_extract(reader: Reader, manifest: dict) -> tuple[str, bytes]:
    """The module Istio's image fetcher would load from this manifest, and which variant it took."""
    layers = manifest["layers"]
    if manifest.get("mediaType") == DOCKER_MANIFEST:
        assert layers and layers[-1]["mediaType"] == DOCKER_LAYER
        return "docker", plugin_wasm(reader.blob(layers[-1]))
    if layers and layers[-1]["mediaType"] == OCI_TAR_GZIP:
        return "compat", plugin_wasm(reader.blob(layers[-1]))
    assert len(layers) == 2, "Istio's oci variant wants exactly two layers"
    wasm_layers = [l for l in layers if l["mediaType"] == WASM_LAYER]
    assert wasm_layers
    return "oci", reader.blob(wasm_layers[0])


def plugin_wasm(layer: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        for member in tar.getmembers():
            if Path(member.name).name == "plugin.wasm":
                return tar.extractfile(member).read()
    raise AssertionError("no plugin.wasm in the layer")


@pytest.fixture(scope="module")
def built(wasm, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp("oci")
    return out, build(wasm, out)


def test_wasm_artifact_layout_holds_the_filter_byte_for_byte(built, wasm):
    out, digests = built
    expected = wasm.read_bytes()
    for reader in (Reader.directory(out / "txngate-filter"), Reader.tarball(out / "txngate-filter.oci.tar")):
        descriptor, manifest = reader.manifest("0.1.0")
        assert descriptor["digest"] == digests["txngate-filter"]
        assert (out / "txngate-filter.digest").read_text().strip() == descriptor["digest"]
        assert manifest["config"]["mediaType"] == WASM_CONFIG
        assert [l["mediaType"] for l in manifest["layers"]] == [WASM_CONFIG, WASM_LAYER]
        runtime = json.loads(reader.blob(manifest["config"]))
        assert runtime["type"] == "envoy_proxy" and runtime["config"]["root_ids"] == ["txngate"]
        assert manifest["layers"][1]["annotations"]["org.opencontainers.image.title"] == "plugin.wasm"
        variant, module = istio_extract(reader, manifest)
        assert variant == "oci"
        assert module == expected, "the layer is the filter, byte for byte"
        assert module.startswith(b"\0asm")


def test_compat_layout_holds_plugin_wasm(built, wasm):
    out, digests = built
    expected = wasm.read_bytes()
    for reader in (Reader.directory(out / "txngate-filter-compat"),
                   Reader.tarball(out / "txngate-filter-compat.oci.tar")):
        descriptor, manifest = reader.manifest("0.1.0")
        assert descriptor["digest"] == digests["txngate-filter-compat"]
        assert manifest["annotations"]["module.wasm.image/variant"] == "compat"
        assert [l["mediaType"] for l in manifest["layers"]] == [OCI_TAR_GZIP]
        config = json.loads(reader.blob(manifest["config"]))
        assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
        uncompressed = gzip.decompress(reader.blob(manifest["layers"][0]))
        assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(uncompressed).hexdigest()]}
        variant, module = istio_extract(reader, manifest)
        assert variant == "compat"
        assert module == expected


def test_images_are_deterministic(built, wasm, tmp_path):
    _, digests = built
    assert build(wasm, tmp_path / "again") == digests
    other = build(wasm, tmp_path / "tagged", version="9.9.9")
    assert other["txngate-filter"] != digests["txngate-filter"], "the tag is in the manifest annotations"


def test_the_project_images_match_a_fresh_build(built, wasm):
    """target/oci (written by scripts/build-oci.sh in the test command) is the image of the filter tested."""
    project = PROJECT_ROOT / "target" / "oci"
    if not (project / "txngate-filter.digest").exists():
        pytest.skip("scripts/build-oci.sh has not written target/oci")
    _, digests = built
    version = json.loads(Reader.directory(project / "txngate-filter").files["index.json"])["manifests"][0]["annotations"][
        "org.opencontainers.image.ref.name"]
    if version == "0.1.0":
        for name, digest in digests.items():
            assert (project / f"{name}.digest").read_text().strip() == digest


def test_a_module_that_is_not_wasm_is_refused(tmp_path):
    fake = tmp_path / "fake.wasm"
    fake.write_bytes(b"not wasm")
    done = subprocess.run([str(BUILDER), "--wasm", str(fake), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode != 0 and "not a Wasm module" in done.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

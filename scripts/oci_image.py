#!/usr/bin/env python3
"""The shipped filter as OCI images, in the two formats Istio's WasmPlugin pulls (`url: oci://...`).

    python3 scripts/oci_image.py [--wasm target/shipped/txngate_filter.wasm] [--out target/oci]
                                 [--version 0.1.0]

Writes two OCI image layouts (directory + tarball each), and prints each manifest digest (the value to pin):

* `txngate-filter/` and `txngate-filter.oci.tar` — the Wasm OCI artifact ("oci" variant of the Wasm image
  specification): a manifest whose config is `application/vnd.module.wasm.config.v1+json` and whose two
  layers are that runtime configuration and the module itself, `application/vnd.module.wasm.content.layer.v1+wasm`
  (the raw .wasm, byte for byte). Istio's image fetcher accepts this variant with exactly these two layers.
* `txngate-filter-compat/` and `txngate-filter-compat.oci.tar` — the "compat" variant: an ordinary OCI image
  (config `application/vnd.oci.image.config.v1+json`) with one `application/vnd.oci.image.layer.v1.tar+gzip`
  layer holding `plugin.wasm` (and `runtime-config.json`), and the manifest annotation
  `module.wasm.image/variant=compat` — what `FROM scratch` + `COPY plugin.wasm ./` gives, without Docker.

Each layout has one manifest, tagged with the version (`org.opencontainers.image.ref.name`). Everything is
deterministic (no timestamps, fixed tar metadata, gzip mtime 0): the same .wasm always gives the same
digests. Standard library only; nothing is pushed anywhere.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
WASM_CONFIG_MEDIA_TYPE = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER_MEDIA_TYPE = "application/vnd.module.wasm.content.layer.v1+wasm"
IMAGE_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
TAR_GZIP_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
TITLE = "org.opencontainers.image.title"
VARIANT = "module.wasm.image/variant"

#: The proxy-wasm ABI the filter exports (proxy-wasm 0.2.5) and its root id in the shipped examples.
RUNTIME_CONFIG = {
    "type": "envoy_proxy",
    "abiVersions": ["proxy_abi_version_0_2_1"],
    "config": {"root_ids": ["txngate"]},
}


def canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layout:
    """An OCI image layout being written: blobs by digest, then index.json."""

    def __init__(self, path: Path):
        if path.exists():
            shutil.rmtree(path)
        (path / "blobs" / "sha256").mkdir(parents=True)
        self.path = path

    def blob(self, data: bytes, media_type: str, annotations: dict | None = None) -> dict:
        digest = sha256(data)
        (self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
        descriptor = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if annotations:
            descriptor["annotations"] = annotations
        return descriptor

    def finish(self, manifest: dict, tag: str) -> dict:
        descriptor = self.blob(canonical(manifest), MANIFEST_MEDIA_TYPE, {REF_NAME: tag})
        index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [descriptor]}
        (self.path / "oci-layout").write_bytes(canonical(OCI_LAYOUT))
        (self.path / "index.json").write_bytes(canonical(index))
        return descriptor


def tar_bytes(files: list[tuple[str, bytes]], mode: int = 0o644) -> bytes:
    """A tar of `files` with fixed metadata (mtime 0, uid/gid 0, no user names), in the given order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_tarball(layout: Path, tarball: Path) -> None:
    """The layout directory as one tar (the layout at the archive's root: `oci-archive:` for skopeo)."""
    files = []
    for path in sorted(p for p in layout.rglob("*") if p.is_file()):
        files.append((path.relative_to(layout).as_posix(), path.read_bytes()))
    tarball.write_bytes(tar_bytes(files))


def annotations(version: str, extra: dict | None = None) -> dict:
    return {
        TITLE: "txngate-filter",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.description": "txngate proxy-wasm filter (Envoy, Istio WasmPlugin)",
        **(extra or {}),
    }


def build_artifact(wasm: bytes, out: Path, version: str) -> dict:
    layout = Layout(out)
    runtime = canonical(RUNTIME_CONFIG)
    config = layout.blob(runtime, WASM_CONFIG_MEDIA_TYPE)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config,
        "layers": [
            layout.blob(runtime, WASM_CONFIG_MEDIA_TYPE, {TITLE: "runtime-config.json"}),
            layout.blob(wasm, WASM_LAYER_MEDIA_TYPE, {TITLE: "plugin.wasm"}),
        ],
        "annotations": annotations(version),
    }
    return layout.finish(manifest, version)


def build_compat(wasm: bytes, out: Path, version: str) -> dict:
    layout = Layout(out)
    tar = tar_bytes([("plugin.wasm", wasm), ("runtime-config.json", canonical(RUNTIME_CONFIG))])
    layer = layout.blob(gzip.compress(tar, compresslevel=9, mtime=0), TAR_GZIP_LAYER_MEDIA_TYPE)
    image_config = {
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": layout.blob(canonical(image_config), IMAGE_CONFIG_MEDIA_TYPE),
        "layers": [layer],
        "annotations": annotations(version, {VARIANT: "compat"}),
    }
    return layout.finish(manifest, version)


def workspace_version() -> str:
    for line in (ROOT / "Cargo.toml").read_text().splitlines():
        if line.startswith("version") and "=" in line:
            return line.split("=", 1)[1].strip().strip('"')
    return "0.0.0"


def build(wasm_path: Path, out: Path, version: str) -> dict[str, str]:
    wasm = wasm_path.read_bytes()
    if not wasm.startswith(b"\0asm"):
        raise SystemExit(f"{wasm_path} is not a Wasm module")
    out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, builder in (("txngate-filter", build_artifact), ("txngate-filter-compat", build_compat)):
        descriptor = builder(wasm, out / name, version)
        write_tarball(out / name, out / f"{name}.oci.tar")
        (out / f"{name}.digest").write_text(descriptor["digest"] + "\n")
        digests[name] = descriptor["digest"]
    return digests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wasm", type=Path, default=ROOT / "target" / "shipped" / "txngate_filter.wasm")
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "oci")
    parser.add_argument("--version", default=None, help="the tag (default: the workspace version)")
    args = parser.parse_args()
    if not args.wasm.is_file():
        print(f"{args.wasm}: not found; build it first (scripts/build-filter.sh)", file=sys.stderr)
        return 1
    version = args.version or workspace_version()
    digests = build(args.wasm, args.out, version)
    print(f"filter:  {args.wasm} ({args.wasm.stat().st_size} bytes, {sha256(args.wasm.read_bytes())})")
    for name, digest in digests.items():
        print(f"{name}:{version}  {digest}  ({args.out / name}/, {args.out / (name + '.oci.tar')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

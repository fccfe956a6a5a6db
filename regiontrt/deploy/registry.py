"""Registries: any fsspec URL (a folder, ``file://``, ``memory://``, ``s3://``, ``https://``...).

Layout (see docs/fleet.md)::

    <registry>/<name>/index.json                  versions, their regions, the ``latest`` channel
    <registry>/<name>/<version>/<region>/...      one signed bundle, files as in the bundle

:func:`publish` writes every bundle file first (each bundle's manifest and signature last) and
the index last, so a reader never sees a version whose files are missing. ``http(s)://``
registries are read-only (pull from a CDN or plain web server). Everything read back from a
registry is treated as hostile: names are checked, sizes capped at what the manifest declares.
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from regiontrt.deploy._util import is_older, safe_name
from regiontrt.deploy.bundle import MANIFEST, MAX_MANIFEST, load_bundle, read_manifest
from regiontrt.deploy.signing import SIGNATURE_FILE
from regiontrt.errors import BundleError, RegionTRTError, RegistryError

INDEX = "index.json"
MAX_SIGNATURE = 1 << 20


def _fs(registry: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError as exc:
        raise RegistryError("registries need fsspec: pip install 'regiontrt[fleet]'") from exc
    try:
        fs, root = fsspec.core.url_to_fs(str(registry))
    except Exception as exc:  # unknown protocol, missing back-end package...
        raise RegistryError(f"registry {registry}: {exc}") from exc
    return fs, str(root).rstrip("/")


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts))


def read_limited(fs: Any, path: str, limit: int) -> bytes:
    """Read at most ``limit`` bytes of ``path``; more is an error (a hostile or wrong file).

    Raises:
        RegistryError: missing, unreadable, interrupted, or larger than ``limit``.
    """
    # Over HTTP, stream the body (no Range requests: plain web servers do not all serve them).
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    options = {"block_size": 0} if protocol in ("http", "https") else {}
    try:
        with fs.open(path, "rb", **options) as fh:
            chunks, total = [], 0
            while total <= limit:
                chunk = fh.read(min(1 << 20, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
    except Exception as exc:  # fsspec back-ends raise OSError, aiohttp and botocore errors...
        raise RegistryError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if total > limit:
        raise RegistryError(f"{path}: larger than the {limit} bytes expected")
    return b"".join(chunks)


def read_index(registry: str, name: str) -> dict[str, Any]:
    """The model's index: ``{"name", "latest", "versions": {version: {"regions": [...]}}}``.

    Raises:
        RegistryError: no such model, or an unreadable index.
    """
    fs, root = _fs(registry)
    path = _join(root, safe_name(name, "model name"), INDEX)
    raw = read_limited(fs, path, MAX_MANIFEST)
    try:
        index = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{path}: not JSON: {exc}") from None
    if not isinstance(index, dict) or not isinstance(index.get("versions"), dict):
        raise RegistryError(f"{path}: not a regiontrt registry index")
    return index


def _latest(versions: Mapping[str, Any]) -> str:
    best = None
    for version in versions:
        if best is None or is_older(best, version):
            best = version
    assert best is not None
    return best


def publish(dist: str | Path, registry: str, *, overwrite: bool = False) -> list[str]:
    """Upload every signed bundle under ``dist`` to ``registry``; the index is written last.

    Args:
        dist: a build output folder (bundles at ``<name>/<version>/<region>/``) or one bundle.
        registry: a folder or fsspec URL (not ``http(s)://``, which is read-only).
        overwrite: replace a (version, region) already published (refused by default: a
            published version is immutable, so sites that pulled it keep what they verified).

    Returns:
        The registry paths of the bundles published.

    Raises:
        RegistryError: no bundle, an unsigned bundle, an existing version, or a write failure.
    """
    if str(registry).startswith(("http://", "https://")):
        raise RegistryError("http(s) registries are read-only: publish to the server's folder")
    dist = Path(dist)
    folders = sorted(p.parent for p in dist.rglob(MANIFEST))
    if not folders:
        raise RegistryError(f"no bundle (manifest.json) under {dist}")
    bundles = []
    for folder in folders:
        if not (folder / SIGNATURE_FILE).is_file():
            raise RegistryError(f"{folder} is not signed: run `regiontrt sign` first")
        bundles.append(load_bundle(folder))  # hashes and compliance, before anything is written
    fs, root = _fs(registry)
    by_name: dict[str, list[Any]] = {}
    for b in bundles:
        by_name.setdefault(b.name, []).append(b)
    written = []
    try:
        for name, group in by_name.items():
            index_path = _join(root, name, INDEX)
            index: dict[str, Any] = read_index(registry, name) if fs.exists(index_path) else {
                "name": name, "versions": {}}
            for b in group:
                entry = index["versions"].setdefault(b.version, {"regions": []})
                if b.region in entry["regions"] and not overwrite:
                    raise RegistryError(f"{name} {b.version} {b.region} is already published "
                                        "(versions are immutable; use a new version)")
            for b in group:
                dest = _join(root, name, b.version, b.region)
                files = [*(v.file for v in b.variants), b.manifest["onnx"]["file"],
                         MANIFEST, SIGNATURE_FILE]
                fs.makedirs(dest, exist_ok=True)
                for file in files:  # manifest and signature last
                    fs.put_file(str(b.path / file), _join(dest, file))
                entry = index["versions"][b.version]
                entry["regions"] = sorted(set(entry["regions"]) | {b.region})
                entry["published_at"] = _dt.datetime.now(_dt.UTC).isoformat(
                    timespec="seconds")
                written.append(dest)
            index["latest"] = _latest(index["versions"])
            _write_index(fs, index_path, index)
    except RegionTRTError:
        raise
    except Exception as exc:  # back-end write errors
        raise RegistryError(f"publishing to {registry} failed: {exc}") from exc
    return written


def _write_index(fs: Any, path: str, index: Mapping[str, Any]) -> None:
    """Write the index under a temporary name, then move it over the old one."""
    data = json.dumps(index, indent=2, sort_keys=True).encode()
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    fs.pipe_file(tmp, data)
    try:
        fs.mv(tmp, path)
    except Exception:
        fs.rm(tmp)
        raise


def fetch_bundle(registry: str, name: str, version: str, region: str, dest: Path) -> None:
    """Download one bundle into the (empty, local) folder ``dest``.

    The manifest and signature come first; the other files are the ones the manifest lists,
    each read up to its declared size. Nothing is trusted yet: :func:`load_bundle` verifies.

    Raises:
        RegistryError: missing or unreadable files, or an interrupted transfer.
        BundleError: a manifest that names unsafe files.
    """
    fs, root = _fs(registry)
    src = _join(root, safe_name(name, "model name"), safe_name(version, "version"),
                safe_name(region, "region"))
    manifest_raw = read_limited(fs, _join(src, MANIFEST), MAX_MANIFEST)
    (dest / MANIFEST).write_bytes(manifest_raw)
    (dest / SIGNATURE_FILE).write_bytes(
        read_limited(fs, _join(src, SIGNATURE_FILE), MAX_SIGNATURE))
    manifest = read_manifest(dest)
    files = [(manifest["onnx"].get("file"), manifest["onnx"].get("size"))]
    files += [(v.get("file"), v.get("size")) for v in manifest["variants"]
              if isinstance(v, Mapping)]
    for file, size in files:
        if not isinstance(size, int) or size < 0:
            raise BundleError(f"manifest: bad size {size!r} for {file!r}")
        data = read_limited(fs, _join(src, safe_name(file, "file")), size)
        (dest / file).write_bytes(data)

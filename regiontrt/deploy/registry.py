"""Registries: any fsspec URL (a folder, ``file://``, ``memory://``, ``s3://``, ``https://``...).

Layout (see docs/fleet.md)::

    <registry>/<name>/tuf/...                     signed TUF metadata: what is current
                                                  (see :mod:`.tuf_repo`)
    <registry>/<name>/channels.json               the signed versions/regions/files (a target)
    <registry>/<name>/<version>/<region>/...      one signed bundle, files as in the bundle
    <registry>/<name>/index.json                  for humans only: never decides what installs

:func:`publish` writes every bundle file first, then the TUF metadata (targets, snapshot, and the
timestamp last), then the index, so a reader never sees a version whose files are missing.
``http(s)://`` registries are read-only (pull from a CDN or plain web server). Everything read
back from a registry is hostile: pulls take lengths and hashes from verified metadata only.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from regiontrt.deploy._util import is_older, latest, load_json, safe_name, sha256_file
from regiontrt.deploy.bundle import MANIFEST, MAX_MANIFEST, Bundle, load_bundle
from regiontrt.deploy.signing import SIGNATURE_FILE
from regiontrt.deploy.tuf_repo import ExpiryLike, Repository
from regiontrt.errors import RegionTRTError, RegistryError

INDEX = "index.json"


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


def _writable(registry: str) -> tuple[Any, str]:
    if str(registry).startswith(("http://", "https://")):
        raise RegistryError("http(s) registries are read-only: publish to the server's folder")
    return _fs(registry)


def read_index(registry: str, name: str) -> dict[str, Any]:
    """The model's human-readable index: ``{"name", "latest", "versions": {v: {"regions"}}}``.

    Informational only: pulls decide from the signed TUF metadata, never from this file.

    Raises:
        RegistryError: no such model, or an index of another shape (schema-checked).
    """
    fs, root = _fs(registry)
    path = _join(root, safe_name(name, "model name"), INDEX)
    try:
        with fs.open(path, "rb") as fh:
            raw = fh.read(MAX_MANIFEST + 1)
    except Exception as exc:  # fsspec back-ends raise OSError, aiohttp errors...
        raise RegistryError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    index = load_json(raw, path, MAX_MANIFEST, RegistryError)
    versions = index.get("versions") if isinstance(index, dict) else None
    if not isinstance(versions, dict) or not isinstance(index.get("latest", ""), str):
        raise RegistryError(f"{path}: not a regiontrt registry index")
    for version, entry in versions.items():
        regions = entry.get("regions") if isinstance(entry, dict) else None
        if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
            raise RegistryError(f"{path}: version {version!r}: not an index entry")
    return index


def _signed_bundles(dist: Path) -> list[Bundle]:
    folders = sorted(p.parent for p in dist.rglob(MANIFEST))
    if not folders:
        raise RegistryError(f"no bundle (manifest.json) under {dist}")
    bundles = []
    for folder in folders:
        if not (folder / SIGNATURE_FILE).is_file():
            raise RegistryError(f"{folder} is not signed: run `regiontrt sign` first")
        bundles.append(load_bundle(folder))  # hashes and compliance, before anything is written
    return bundles


def bundle_files(bundle: Bundle) -> list[str]:
    """A bundle's files in upload order: payloads first, manifest and signature last."""
    return [*(v.file for v in bundle.variants), bundle.manifest["onnx"]["file"], MANIFEST,
            SIGNATURE_FILE]


def _identical(repo: Repository, b: Bundle) -> bool:
    """Whether the registry already signs exactly this bundle's files (same names and hashes)."""
    targets = repo.roles["targets"].signed.targets
    files = bundle_files(b)
    if sorted(files) != sorted(repo.channels().get(b.version, {}).get(b.region, [])):
        return False
    for file in files:
        info = targets.get(f"{b.version}/{b.region}/{file}")
        if info is None or info.hashes.get("sha256") != sha256_file(b.path / file):
            return False
    return True


def _plan(repo: Repository, group: list[Bundle], overwrite: bool,
          say: Callable[[str], None], dist: Path) -> list[Bundle]:
    """The bundles of ``group`` to upload: identical ones already published are skipped."""
    published = repo.channels()
    todo = []
    for b in group:
        what = f"{b.name} {b.version} {b.region}"
        if b.region not in published.get(b.version, {}) or overwrite:
            todo.append(b)
        elif _identical(repo, b):
            say(f"skipped {what}: already published with identical content")
        else:
            raise RegistryError(
                f"{what} is already published with different content; nothing was published. "
                "Versions are immutable (sites keep what they verified): build it under a new "
                "version, or pass --overwrite to replace it")
    if not todo:
        raise RegistryError(
            f"nothing new to publish: every {group[0].name} bundle under {dist} is already "
            "published with identical content (build a new version to publish one)")
    return todo


def publish(dist: str | Path, registry: str, *, key: str | Path, overwrite: bool = False,
            expiry: ExpiryLike = None, say: Callable[[str], None] | None = None) -> list[str]:
    """Upload every signed bundle under ``dist`` and sign the registry's metadata with ``key``.

    Args:
        dist: a build output folder (bundles at ``<name>/<version>/<region>/``) or one bundle.
        registry: a folder or fsspec URL (not ``http(s)://``, which is read-only).
        key: the private key (PEM, from ``regiontrt keygen``) that signs the TUF metadata; the
            registry's root names it, so later publishes must use it too.
        overwrite: replace a (version, region) already published (refused by default: a
            published version is immutable, so sites that pulled it keep what they verified).
            A bundle already published with identical files is skipped (so one output folder
            can collect several versions); a changed one is refused.
        expiry: per role (``root``, ``targets``, ``snapshot``, ``timestamp``), a ``timedelta`` or
            seconds; defaults in :data:`regiontrt.deploy.tuf_repo.DEFAULT_EXPIRY`.
        say: called with one line per skipped bundle, and when ``latest`` does not move (an
            older version published after a newer one); e.g. ``print``.

    Returns:
        The registry paths of the bundles published.

    Raises:
        RegistryError: no bundle, an unsigned bundle, a published version with other content,
            nothing new to publish, another key's registry, or a write failure (the previous
            metadata then stays current).
        SignatureError: an unreadable key.
    """
    fs, root = _writable(registry)
    bundles = _signed_bundles(Path(dist))
    by_name: dict[str, list[Bundle]] = {}
    for b in bundles:
        by_name.setdefault(b.name, []).append(b)
    written = []
    try:
        for name, group in by_name.items():
            base = _join(root, name)
            repo = Repository.open(fs, base, key, expiry)
            todo = _plan(repo, group, overwrite, say or (lambda line: None), Path(dist))
            for b in todo:
                dest = _join(base, b.version, b.region)
                fs.makedirs(dest, exist_ok=True)
                files = bundle_files(b)
                for file in files:  # manifest and signature last
                    fs.put_file(str(b.path / file), _join(dest, file))
                repo.add_bundle(name, b.version, b.region, {f: b.path / f for f in files})
                written.append(dest)
            repo.commit()  # the timestamp last: the new state appears in one rename
            _write_index(fs, _join(base, INDEX), name, repo.channels())
            _say_latest(say, name, {b.version for b in todo}, latest(repo.channels()))
    except RegionTRTError:
        raise
    except Exception as exc:  # back-end write errors
        raise RegistryError(f"publishing to {registry} failed: {exc}") from exc
    return written


def _say_latest(say: Callable[[str], None] | None, name: str, versions: set[str],
                latest_version: str | None) -> None:
    if say is None or latest_version is None:
        return
    older = sorted(v for v in versions if is_older(v, latest_version))
    if older and latest_version not in versions:
        say(f"{name}: latest stays {latest_version} ({', '.join(older)} "
            f"{'is' if len(older) == 1 else 'are'} older; sites pull it only with --version)")
    else:
        say(f"{name}: latest is now {latest_version}")


def refresh(registry: str, name: str, *, key: str | Path, expiry: ExpiryLike = None,
            snapshot: bool = False) -> int:
    """Re-sign the model's timestamp (and snapshot) with new expiries, publishing nothing new.

    Run it more often than the timestamp's expiry (1 day by default), e.g. from cron, or sites
    refuse the registry as frozen (``StaleMetadataError``).

    Returns:
        The new timestamp version.

    Raises:
        RegistryError: no such model, another key's registry, or a write failure.
    """
    fs, root = _writable(registry)
    base = _join(root, safe_name(name, "model name"))
    try:
        if not fs.exists(_join(base, "tuf", "root.json")):
            raise RegistryError(f"{registry}: no model {name!r} published")
        repo = Repository.open(fs, base, key, expiry)
        repo.commit(refresh=("snapshot",) if snapshot else ())
    except RegionTRTError:
        raise
    except Exception as exc:  # back-end errors
        raise RegistryError(f"refreshing {name} in {registry} failed: {exc}") from exc
    return int(repo.roles["timestamp"].signed.version)


def _write_index(fs: Any, path: str, name: str,
                 channels: Mapping[str, Mapping[str, Any]]) -> None:
    """The human-readable index, derived from the signed channels (temporary name, then moved)."""
    index = {"name": name, "latest": latest(channels),
             "note": "informational: pulls read the signed metadata under tuf/",
             "versions": {v: {"regions": sorted(r)} for v, r in channels.items()}}
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    fs.pipe_file(tmp, json.dumps(index, indent=2, sort_keys=True).encode())
    try:
        fs.mv(tmp, path)
    except Exception:
        fs.rm(tmp)
        raise

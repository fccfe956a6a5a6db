"""Edge installs: pull a bundle, verify it, switch to it atomically, roll back.

An install folder (``DIR/NAME``)::

    current                  pointer file: the folder under versions/ in use (replaced atomically)
    previous                 pointer file: the one before, for ``regiontrt rollback``
    versions/<ver>_<region>/ verified bundles (current and previous; older ones are pruned)
    local/                   plans rebuilt on this node (see :mod:`.select`)
    .staging-*/              a pull in progress; debris of an interrupted one, cleared next pull

A pull downloads into a staging folder beside the install, verifies the signature with the
site's trusted keys, every file's hash and the region's compliance, and only then renames it into
``versions/`` and replaces ``current``. A refused or interrupted pull leaves the running install
untouched.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from regiontrt.deploy._util import is_older, safe_name
from regiontrt.deploy.bundle import load_bundle
from regiontrt.deploy.layout import (
    POINTER,
    PREVIOUS,
    VERSIONS,
    read_pointer,
    write_pointer,
)
from regiontrt.deploy.registry import fetch_bundle, read_index
from regiontrt.deploy.signing import TrustLike
from regiontrt.errors import BundleError, DowngradeError, RegistryError

STAGING = ".staging-"
TRASH = ".trash-"


@dataclass(frozen=True)
class PullResult:
    """What a pull did."""

    name: str
    version: str
    region: str
    path: Path
    previous: str | None
    changed: bool


def clear_debris(install: Path) -> list[Path]:
    """Remove staging and trash folders left by interrupted pulls; returns what was removed."""
    removed = []
    for path in install.iterdir() if install.is_dir() else ():
        if path.name.startswith((STAGING, TRASH)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def _locked(install: Path) -> Iterator[None]:
    """One pull or rollback at a time per install (POSIX advisory lock; a no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with (install / ".lock").open("a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _prune(install: Path, keep: set[str]) -> None:
    versions = install / VERSIONS
    for path in versions.iterdir() if versions.is_dir() else ():
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def pull(
    registry: str,
    name: str,
    *,
    region: str,
    into: str | Path,
    trust: TrustLike,
    version: str | None = None,
    allow_downgrade: bool = False,
) -> PullResult:
    """Install ``name`` for ``region`` from ``registry`` into ``into/name``.

    Args:
        registry: a folder or fsspec URL (``https://`` works for read-only mirrors).
        name: the model name.
        region: the region whose bundle to install.
        into: the folder holding installs; the install is ``into/name``.
        trust: the public key(s) the bundle's signature must verify with.
        version: a version; by default the index's ``latest``.
        allow_downgrade: accept a version older than the installed one.

    Raises:
        DowngradeError: an older version without ``allow_downgrade``.
        SignatureError, BundleError, PolicyViolation: the bundle is refused.
        RegistryError: not in the registry, or the transfer failed.
    """
    install = Path(into) / safe_name(name, "model name")
    install.mkdir(parents=True, exist_ok=True)
    with _locked(install):
        clear_debris(install)
        index = read_index(registry, name)
        version = version or index.get("latest")
        if not isinstance(version, str) or version not in index["versions"]:
            raise RegistryError(f"{name}: version {version!r} is not in the registry "
                                f"(published: {', '.join(sorted(index['versions'])) or 'none'})")
        if region not in index["versions"][version].get("regions", []):
            raise RegistryError(f"{name} {version} has no bundle for region {region!r}")
        current = read_pointer(install, POINTER)
        _check_downgrade(current, version, allow_downgrade)
        folder = f"{safe_name(version, 'version')}_{safe_name(region, 'region')}"
        if current is not None and current["folder"] == folder:
            load_bundle(install, trust=trust)  # re-verify what is installed, change nothing
            return PullResult(name, version, region, install / VERSIONS / folder,
                              current["version"], changed=False)
        staging = Path(tempfile.mkdtemp(prefix=STAGING, dir=install))
        try:
            fetch_bundle(registry, name, version, region, staging)
            bundle = load_bundle(staging, trust=trust)
            if (bundle.name, bundle.version, bundle.region) != (name, version, region):
                raise BundleError(
                    f"the registry served {bundle.name} {bundle.version} {bundle.region} for "
                    f"{name} {version} {region}")
            _check_downgrade(current, bundle.version, allow_downgrade)
            target = install / VERSIONS / folder
            target.parent.mkdir(exist_ok=True)
            if target.exists():  # an older copy of this version (e.g. rolled back from)
                target.rename(install / f"{TRASH}{folder}")
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        pointer = {"folder": folder, "version": version, "region": region}
        if current is not None:
            write_pointer(install, PREVIOUS, current)
        write_pointer(install, POINTER, pointer)  # the switch: one atomic rename
        _prune(install, {folder} | ({current["folder"]} if current else set()))
        clear_debris(install)
        return PullResult(name, version, region, target,
                          current["version"] if current else None, changed=True)


def _check_downgrade(current: dict[str, str] | None, version: str, allow: bool) -> None:
    if current is not None and not allow and is_older(version, current["version"]):
        raise DowngradeError(
            f"refusing to install {version} over the newer {current['version']} "
            "(rollback protection; pass --allow-downgrade to force it)")


def rollback(install: str | Path) -> str:
    """Switch ``current`` back to ``previous`` (and ``previous`` to what was current).

    Returns:
        The version now current.

    Raises:
        RegistryError: nothing to roll back to.
    """
    install = Path(install)
    with _locked(install):
        current = read_pointer(install, POINTER)
        previous = read_pointer(install, PREVIOUS)
        if previous is None or not (install / VERSIONS / previous["folder"]).is_dir():
            raise RegistryError(f"{install}: no previous version to roll back to")
        write_pointer(install, POINTER, previous)
        if current is not None:
            write_pointer(install, PREVIOUS, current)
        return previous["version"]

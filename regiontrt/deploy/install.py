"""Edge installs: pull a bundle, verify it, switch to it atomically, roll back.

An install folder (``DIR/NAME``)::

    current                  pointer file: the folder under versions/ in use (replaced atomically)
    previous                 pointer file: the one before, for ``regiontrt rollback``
    versions/<ver>_<region>/ verified bundles (current and previous; older ones are pruned)
    local/                   plans rebuilt on this node (see :mod:`.select`)
    tuf/                     the registry's TUF metadata this site trusts (root and the newest
                             timestamp, snapshot and targets it has seen: rollback protection)
    .staging-*/              a pull in progress; debris of an interrupted one, cleared next pull

A pull first refreshes the registry's signed TUF metadata (:mod:`.tuf_client`): what is current,
and the length and hashes of every file. It downloads exactly the signed files of the bundle,
each streamed to a staging folder beside the install and cut at its signed length, checks their
hashes, verifies the bundle signature with the site's trusted keys, every file's hash and the
region's compliance, and only then renames it into ``versions/`` and replaces ``current``. A
refused, timed-out or interrupted pull leaves the running install untouched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regiontrt.deploy._util import is_older, latest, safe_name, share_tree, write_shared_text
from regiontrt.deploy.bundle import load_bundle
from regiontrt.deploy.layout import (
    POINTER,
    PREVIOUS,
    VERSIONS,
    read_pointer,
    write_pointer,
)
from regiontrt.deploy.signing import TrustLike
from regiontrt.errors import (
    BundleError,
    DowngradeError,
    InvalidArgumentError,
    RegionTRTError,
    RegistryError,
    RegistryTimeout,
    SignatureError,
)

STAGING = ".staging-"
TRASH = ".trash-"
TUF_DIR = "tuf"
#: Default time limits of a pull: the whole pull, and each file (metadata or bundle file).
DEFAULT_TIMEOUT_S = 900.0
DEFAULT_FILE_TIMEOUT_S = 300.0


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
def _locked(install: Path, deadline: float = math.inf) -> Iterator[None]:
    """One pull or rollback at a time per install (POSIX advisory lock; a no-op elsewhere).

    Raises:
        RegistryTimeout: another pull held the lock past ``deadline`` (``time.monotonic``).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with (install / ".lock").open("a+b") as fh:
        while True:  # polled, so a pull waiting behind a stuck one still honours its time limit
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RegistryTimeout(
                        f"{install}: another pull holds the install lock") from None
                time.sleep(0.05)
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
    timeout_s: float = DEFAULT_TIMEOUT_S,
    file_timeout_s: float = DEFAULT_FILE_TIMEOUT_S,
    group_readable: bool = False,
) -> PullResult:
    """Install ``name`` for ``region`` from ``registry`` into ``into/name``.

    Args:
        registry: a folder or fsspec URL (``https://`` works for read-only mirrors).
        name: the model name.
        region: the region whose bundle to install.
        into: the folder holding installs; the install is ``into/name``.
        trust: the public key(s) that anchor the registry's TUF root (first pull) and verify the
            bundle's signature.
        version: a version; by default the highest signed version that has ``region``.
        allow_downgrade: accept a version older than the installed one (the registry's
            metadata itself can never go back: :class:`DowngradeError` regardless).
        timeout_s: the whole pull's time limit (waiting for the install lock included).
        file_timeout_s: each file's time limit (metadata and bundle files).
        group_readable: make the installed files group-readable whatever the umask (for a
            service user of the puller's group); otherwise modes follow the umask.

    Raises:
        StaleMetadataError: the registry's metadata expired (a frozen or replayed registry).
        DowngradeError: an older version without ``allow_downgrade``, or older metadata.
        SignatureError, BundleError, PolicyViolation: the metadata or the bundle is refused.
        RegistryTimeout: a file or the pull exceeded its time limit (the lock is released).
        RegistryError: not in the registry, or the transfer failed.
    """
    for what, value in (("timeout_s", timeout_s), ("file_timeout_s", file_timeout_s)):
        if not isinstance(value, (int, float)) or not value > 0:
            raise InvalidArgumentError(f"pull: {what} must be a positive number of seconds, "
                                       f"not {value!r}")
    refuse_private_keys(trust)  # before anything is downloaded or created
    deadline = time.monotonic() + float(timeout_s)
    install = Path(into) / safe_name(name, "model name")
    install.mkdir(parents=True, exist_ok=True)
    try:  # python-tuf is in the fleet extra: imported when a pull needs it, like fsspec
        from regiontrt.deploy.tuf_client import Session
    except ImportError as exc:
        raise RegistryError(f"pulls need python-tuf: pip install 'regiontrt[fleet]' ({exc})") \
            from exc

    with _locked(install, deadline), _kept(install, registry, name):
        clear_debris(install)
        session = Session(registry, name, install / TUF_DIR, trust,
                          timeout_s=max(deadline - time.monotonic(), 1e-3),
                          file_timeout_s=file_timeout_s)
        channels = session.refresh()  # signed, fresh, never older than what this site saw
        version = _choose(channels, name, region, version)
        current = read_pointer(install, POINTER)
        _check_downgrade(current, version, allow_downgrade)
        folder = f"{safe_name(version, 'version')}_{safe_name(region, 'region')}"
        if current is not None and current["folder"] == folder:
            load_bundle(install, trust=trust)  # re-verify what is installed, change nothing
            return PullResult(name, version, region, install / VERSIONS / folder,
                              current["version"], changed=False)
        target = _install(session, channels[version][region], install / VERSIONS / folder,
                          (name, version, region), trust, current, allow_downgrade,
                          group_readable)
        pointer = {"folder": folder, "version": version, "region": region}
        if current is not None:
            _write_pointer(install, PREVIOUS, current, group_readable)
        _write_pointer(install, POINTER, pointer, group_readable)  # the switch: one rename
        _prune(install, {folder} | ({current["folder"]} if current else set()))
        clear_debris(install)
        return PullResult(name, version, region, target,
                          current["version"] if current else None, changed=True)


def refuse_private_keys(trust: TrustLike) -> None:
    """Refuse a private key passed where public keys are expected (``--trust``).

    Raises:
        SignatureError: a file named by ``trust`` holds a private key.
    """
    items = [trust] if isinstance(trust, (str, os.PathLike)) else list(trust or ())
    for item in items:
        path = Path(item)
        try:
            head = path.read_bytes()[:4096] if path.is_file() else b""
        except OSError:
            continue  # trusted_keys() reports an unreadable key in its words
        if b"PRIVATE KEY-----" in head:
            raise SignatureError(
                f"{path} is a private key; pass the public key (public.pem beside it, from "
                "regiontrt keygen). Nothing was downloaded. Keep the private key off sites.",
                path=str(path))


#: The one next step after a refused pull, by error type (first match wins).
_NEXT_STEP: tuple[tuple[type[RegionTRTError], str], ...] = (
    (DowngradeError, ""),  # its message already says what to do
    (RegistryTimeout, "retry, with a longer --timeout/--file-timeout if the link is slow"),
    (SignatureError, "ask the publisher to re-publish this version; if the registry is right, "
                     "check that --trust names the publisher's public key"),
    (BundleError, "ask the publisher to re-publish this version"),
    (RegistryError, "check the registry URL, the model name and --region/--version"),
)


@contextlib.contextmanager
def _kept(install: Path, registry: str, name: str) -> Iterator[None]:
    """Add to a refused pull's message what was kept, and the one thing to do next."""
    try:
        yield
    except RegionTRTError as exc:
        current = read_pointer(install, POINTER) if (install / POINTER).is_file() else None
        kept = (f"nothing was installed; {current['version']} keeps serving" if current
                else "nothing was installed")
        step = next((s for kind, s in _NEXT_STEP if isinstance(exc, kind)), "")
        text = str(exc.args[0]) if exc.args else type(exc).__name__
        if STAGING in text:  # a deleted temporary folder means nothing to an operator
            text = re.sub(rf"\S*/{re.escape(STAGING)}[^/\s:]*(/?)",
                          lambda m: "the downloaded " if m.group(1) else "the downloaded bundle",
                          text)
        # One line (CLI errors are one line each, scripts grep them): what happened, what
        # was kept, the one thing to do next.
        exc.args = (f"{text} -- {kept}" + (f" -- next: {step}" if step else ""),
                    *exc.args[1:])
        raise


def _install(session: Any, files: list[str], target: Path, want: tuple[str, str, str],
             trust: TrustLike, current: dict[str, str] | None, allow_downgrade: bool,
             group_readable: bool) -> Path:
    """Download ``files`` into a staging folder, verify them, and rename it to ``target``."""
    install = target.parent.parent
    name, version, region = want
    staging = Path(tempfile.mkdtemp(prefix=STAGING, dir=install))
    try:
        for file in files:
            session.download(version, region, file, staging / file)
        bundle = load_bundle(staging, trust=trust)
        if (bundle.name, bundle.version, bundle.region) != want:
            raise BundleError(
                f"the registry served {bundle.name} {bundle.version} {bundle.region} for "
                f"{name} {version} {region}")
        _check_downgrade(current, bundle.version, allow_downgrade)
        share_tree(staging, group_readable=group_readable)  # mkdtemp made it 0700
        target.parent.mkdir(exist_ok=True)
        if target.exists():  # an older copy of this version (e.g. rolled back from)
            target.rename(install / f"{TRASH}{target.name}")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _write_pointer(install: Path, which: str, pointer: Mapping[str, str],
                   group_readable: bool) -> None:
    write_shared_text(install / which, json.dumps(dict(pointer), sort_keys=True),
                      group_readable=group_readable)


def _choose(channels: Mapping[str, Mapping[str, object]], name: str, region: str,
            version: str | None) -> str:
    """The version to install, from the signed channels."""
    published = ", ".join(sorted(channels)) or "none"
    if version is None:
        chosen = latest(v for v, regions in channels.items() if region in regions)
        if chosen is None:
            raise RegistryError(f"{name}: no bundle for region {region!r} in the registry "
                                f"(published: {published})")
        return chosen
    if version not in channels:
        raise RegistryError(f"{name}: version {version!r} is not in the registry "
                            f"(published: {published})")
    if region not in channels[version]:
        raise RegistryError(f"{name} {version} has no bundle for region {region!r}")
    return version


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
        write_pointer(install, POINTER, previous)  # an overwritten pointer keeps its mode
        if current is not None:
            write_pointer(install, PREVIOUS, current)
        return previous["version"]

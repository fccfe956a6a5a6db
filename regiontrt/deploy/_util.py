"""Small helpers of the deploy layer: digests, safe names, versions."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from regiontrt import _fs
from regiontrt._fs import atomic_write_text
from regiontrt.errors import BundleError, RegionTRTError

MAX_DEPTH = 64

# Names that come from a manifest or an index travel from a hostile source: keep them to one
# path component of plain characters, so no name can climb out of its folder.
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safe_name(value: object, what: str) -> str:
    """``value`` if it is a plain one-component name (no separators, no ``..``).

    Raises:
        BundleError: anything else.
    """
    if not isinstance(value, str) or not _SAFE.match(value) or ".." in value:
        raise BundleError(f"{what} {value!r} is not a plain file or folder name")
    return value


def _dotted(value: str) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                 for p in re.split(r"[.\-+]", value))


def is_older(candidate: str, installed: str) -> bool:
    """Whether version ``candidate`` is older than ``installed``.

    PEP 440 ordering where both parse (``1.10.0`` > ``1.9.2``, ``2.0.0rc1`` < ``2.0.0``), else
    dotted parts compared numerically where numeric.

    Raises:
        BundleError: an empty or unsafe version string.
    """
    safe_name(candidate, "version")
    safe_name(installed, "version")
    try:
        from packaging.version import InvalidVersion, Version

        try:
            return Version(candidate) < Version(installed)
        except InvalidVersion:
            pass
    except ImportError:  # packaging is in the fleet extra; the fallback keeps this usable
        pass
    return _dotted(candidate) < _dotted(installed)


def load_json(raw: bytes, where: str, limit: int, error: type[RegionTRTError]) -> Any:
    """Parse hostile JSON: size-capped, UTF-8, at most :data:`MAX_DEPTH` levels deep.

    Raises:
        error: too large, not UTF-8 JSON, or nested deeper than :data:`MAX_DEPTH`.
    """
    if len(raw) > limit:
        raise error(f"{where}: larger than {limit} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except RecursionError:  # the parser recursed past the interpreter's limit
        raise error(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"{where}: not JSON: {exc}") from None
    stack = [(doc, 1)]  # iterative: checking depth must not recurse either
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise error(f"{where}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return doc


def umask() -> int:
    """The process's umask (read under :mod:`regiontrt._fs`'s lock: reading it sets it)."""
    return _fs._umask()


def share_tree(path: Path, *, group_readable: bool = False) -> None:
    """Give a folder we created, and everything in it, the modes the umask gives new files.

    ``tempfile.mkdtemp``/``mkstemp`` make private (0700/0600) entries whatever the umask; once
    their content is final, they get what ``mkdir``/``open`` would give (0777/0666 less the
    umask), so a service user of the same group can read an install. ``group_readable`` adds
    group read (and search, for folders) even under a strict umask such as 077.
    """
    mask = umask()
    for root, _dirs, files in os.walk(path):  # sub-folders come as roots; symlinks are skipped
        for entry, is_dir in [(Path(root), True), *((Path(root) / f, False) for f in files)]:
            if entry.is_symlink():
                continue
            mode = (0o777 if is_dir else 0o666) & ~mask
            if group_readable:
                mode |= 0o050 if is_dir else 0o040
            if stat.S_IMODE(entry.stat().st_mode) & 0o111 and not is_dir:
                mode |= 0o111 & ~mask  # keep executables executable
            os.chmod(entry, mode)


def write_shared_text(path: Path, text: str, *, group_readable: bool = False) -> None:
    """:func:`atomic_write_text`, then group read added if asked."""
    atomic_write_text(path, text)
    if group_readable:
        os.chmod(path, stat.S_IMODE(path.stat().st_mode) | 0o040)


def latest(versions: Iterable[str]) -> str | None:
    """The highest of ``versions`` (see :func:`is_older`), or None when there is none."""
    best = None
    for version in versions:
        if best is None or is_older(best, version):
            best = version
    return best

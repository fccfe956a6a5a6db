"""Small helpers of the deploy layer: digests, safe names, versions."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from regiontrt.errors import BundleError

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

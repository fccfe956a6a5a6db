"""The on-disk layout of an install folder: one folder per version, and two pointers.

``<install>/versions/<folder>/`` holds each pulled bundle; ``current`` and ``previous`` are small
JSON pointers (folder, version, region) switched with one atomic rename each.
"""

from __future__ import annotations

import json
from pathlib import Path

from regiontrt._fs import atomic_write_text
from regiontrt.deploy._util import safe_name
from regiontrt.errors import BundleError

POINTER = "current"
PREVIOUS = "previous"
VERSIONS = "versions"


def read_pointer(install: Path, which: str) -> dict[str, str] | None:
    path = install / which
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
        safe_name(data["folder"], "installed folder")
        return {"folder": str(data["folder"]), "version": str(data["version"]),
                "region": str(data["region"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: unreadable install pointer: {exc}") from None


def write_pointer(install: Path, which: str, pointer: dict[str, str]) -> None:
    atomic_write_text(install / which, json.dumps(pointer, sort_keys=True))  # os.replace


def current_dir(install: str | Path) -> Path:
    """The bundle folder an install's ``current`` pointer names.

    Raises:
        BundleError: no or a broken pointer.
    """
    install = Path(install)
    pointer = read_pointer(install, POINTER)
    if pointer is None:
        raise BundleError(f"{install} has no current version")
    folder = install / VERSIONS / pointer["folder"]
    if not folder.is_dir():
        raise BundleError(f"{install}: current points to a missing folder {folder.name}")
    return folder


def installed_version(install: str | Path) -> str | None:
    """The version ``current`` points to, or None."""
    pointer = read_pointer(Path(install), POINTER)
    return pointer["version"] if pointer else None

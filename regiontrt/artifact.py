"""The ``.engine`` container: region metadata and provenance around a backend payload.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"RTRTENG\\x00"
    8       4     format version (uint32), currently 1
    12      4     header length H in bytes (uint32)
    16      32    SHA-256 of the header bytes
    48      H     header: UTF-8 JSON object (the engine metadata)
    48+H    P     payload: an ONNX model or a TensorRT / TensorRT-RTX plan

The header carries ``payload_sha256`` and ``payload_size``; both digests are checked on every read,
so truncation, bit flips and edits of either part are refused with :class:`ArtifactError`.
Reading the header needs neither a GPU nor TensorRT. Signing for distribution is done on top of
this format by :mod:`regiontrt.deploy`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._fs import atomic_writer
from .errors import ArtifactError

MAGIC = b"RTRTENG\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII32s")
MAX_HEADER = 64 * 1024 * 1024


def encode(metadata: Mapping[str, Any], payload: bytes) -> bytes:
    """The container bytes for ``metadata`` and ``payload``."""
    header = dict(metadata)
    header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    header["payload_size"] = len(payload)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    if len(raw) > MAX_HEADER:
        raise ArtifactError(f"metadata too large: {len(raw)} bytes")
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(raw), hashlib.sha256(raw).digest())
    return prefix + raw + payload


def write(path: str | Path, metadata: Mapping[str, Any], payload: bytes) -> Path:
    """Write a container atomically; a failure leaves no partial file."""
    data = encode(metadata, payload)
    path = Path(path)
    with atomic_writer(path) as fh:
        fh.write(data)
    return path


def _parse_prefix(blob: bytes, source: str) -> tuple[int, dict[str, Any]]:
    if len(blob) < _PREFIX.size:
        raise ArtifactError(f"{source}: truncated: {len(blob)} bytes is shorter than the header")
    magic, version, hlen, hdigest = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise ArtifactError(f"{source}: not a regiontrt engine (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{source}: container format version {version} is not supported "
            f"(this regiontrt reads version {FORMAT_VERSION})"
        )
    end = _PREFIX.size + hlen
    if hlen > MAX_HEADER or len(blob) < end:
        raise ArtifactError(f"{source}: truncated or corrupted header (length {hlen})")
    raw = blob[_PREFIX.size : end]
    if hashlib.sha256(raw).digest() != hdigest:
        raise ArtifactError(
            f"{source}: header checksum mismatch: the metadata was corrupted or edited"
        )
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{source}: unreadable metadata: {exc}") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{source}: metadata is not a JSON object")
    return end, header


def decode(blob: bytes, source: str = "engine") -> tuple[dict[str, Any], bytes]:
    """Split and verify container bytes into ``(metadata, payload)``.

    Raises:
        ArtifactError: bad magic or version, truncation, or a digest mismatch.
    """
    end, header = _parse_prefix(blob, source)
    payload = blob[end:]
    size = header.get("payload_size")
    if size != len(payload):
        raise ArtifactError(
            f"{source}: payload is {len(payload)} bytes, the header says {size}: "
            "the file is truncated or has trailing data"
        )
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise ArtifactError(
            f"{source}: payload checksum mismatch: the payload was corrupted or edited"
        )
    return header, payload


def _read(path: str | Path, size: int | None = None) -> bytes:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return fh.read() if size is None else fh.read(size)
    except FileNotFoundError:
        raise ArtifactError(f"engine file not found: {path}") from None
    except IsADirectoryError:
        raise ArtifactError(f"{path} is a directory, not an engine file") from None


def read(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """Read and verify a container file."""
    return decode(_read(path), str(path))


def read_header(path: str | Path) -> dict[str, Any]:
    """The metadata alone, verified against its own digest, without reading the payload.

    The payload's digest is checked by :func:`read` (and by :func:`verify`).
    """
    prefix = _read(path, _PREFIX.size)
    if len(prefix) < _PREFIX.size:
        raise ArtifactError(f"{path}: truncated: shorter than the header")
    hlen = _PREFIX.unpack_from(prefix)[2]
    _, header = _parse_prefix(_read(path, _PREFIX.size + min(hlen, MAX_HEADER)), str(path))
    return header


def verify(path: str | Path) -> dict[str, Any]:
    """Check both digests of a file; returns the metadata."""
    return read(path)[0]

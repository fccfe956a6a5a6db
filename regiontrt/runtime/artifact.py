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

Files are treated as hostile: only regular files are opened (a FIFO or ``/dev/zero`` is refused
without blocking or reading), the magic, the header length and the declared payload size are
checked against the file's real size before anything large is read, the payload digest is computed
in chunks, and the JSON header is parsed under limits (size, nesting depth, string length, finite
numbers; see :mod:`regiontrt.runtime.schema`). Reading the header needs neither a GPU nor TensorRT.
Signing for distribution is done on top of this format by :mod:`regiontrt.deploy`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from regiontrt._fs import atomic_writer
from regiontrt.errors import ArtifactError

MAGIC = b"RTRTENG\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII32s")
#: Largest header accepted (the JSON metadata, calibration ranges included).
MAX_HEADER = 16 * 1024 * 1024
#: Deepest nesting of JSON arrays/objects accepted in a header.
MAX_DEPTH = 32
#: Longest string (value or key) accepted anywhere in a header.
MAX_STRING = 1024 * 1024
#: Largest integer magnitude accepted in a header (beyond any size or dimension we use).
MAX_INT = 2**63 - 1
_CHUNK = 1024 * 1024
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Largest ONNX payload: protobuf cannot hold a model past 2 GiB, so a larger one is refused
#: before a byte of it is read.
MAX_ONNX_PAYLOAD = 2**31 - 1
# Upper bound of bracket nesting (strings included) before json parses; json's own recursion guard
# and _check_values then enforce MAX_DEPTH exactly.
_MAX_BRACKETS = 10_000


def encode(metadata: Mapping[str, Any], payload: bytes) -> bytes:
    """The container bytes for ``metadata`` and ``payload``."""
    header = dict(metadata)
    header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    header["payload_size"] = len(payload)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    if len(raw) > MAX_HEADER:
        raise ArtifactError(f"metadata too large: {len(raw)} bytes (limit {MAX_HEADER})")
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(raw), hashlib.sha256(raw).digest())
    return prefix + raw + payload


def write(path: str | Path, metadata: Mapping[str, Any], payload: bytes) -> Path:
    """Write a container atomically; a failure leaves no partial file.

    Raises:
        ArtifactError: the metadata cannot be encoded, or the file cannot be written (no space,
            read-only file system, I/O error, parent is a file, target is a folder).
    """
    try:
        data = encode(metadata, payload)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(f"metadata cannot be stored as JSON: {exc}") from exc
    if not isinstance(path, (str, os.PathLike)):
        raise ArtifactError(f"an engine path must be a str or os.PathLike, not {path!r:.60}")
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"cannot write {path}: it is a folder; give a file name")
    try:
        with atomic_writer(path) as fh:
            fh.write(data)
    except OSError as exc:
        raise ArtifactError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


# -- header parsing ---------------------------------------------------------------------------
class _Refused(Exception):
    """Raised inside json hooks; turned into ArtifactError by the caller."""


def _reject_constant(name: str) -> Any:
    raise _Refused(f"non-finite number {name} (NaN and Infinity are not allowed)")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:40]} overflows to infinity")
    return value


def _parse_int(text: str) -> int:
    if len(text) > 20:
        raise _Refused(f"integer of {len(text)} digits")
    value = int(text)
    if abs(value) > MAX_INT:
        raise _Refused(f"integer {text} out of range")
    return value


def _bracket_depth(raw: bytes) -> int:
    """Deepest nesting of ``[``/``{``, counting brackets inside strings too: an upper bound of the
    JSON depth, in linear time and bounded memory (chunks), without parsing anything."""
    import numpy as np

    opens = np.zeros(256, np.int32)
    opens[[ord("["), ord("{")]] = 1
    opens[[ord("]"), ord("}")]] = -1
    deepest = level = 0
    for start in range(0, len(raw), _CHUNK):
        steps = opens[np.frombuffer(raw, np.uint8, min(_CHUNK, len(raw) - start), start)]
        if steps.size:
            levels = np.cumsum(steps, dtype=np.int64) + level
            deepest, level = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def _check_values(value: Any) -> None:
    """Depth and string limits over a parsed value, iteratively (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if len(item) > MAX_STRING:
                raise _Refused(f"a string of {len(item)} characters (limit {MAX_STRING})")
            if _SURROGATE.search(item):  # "\ud800" in JSON: no UTF-8 spelling, so no page
                raise _Refused("a string holding a lone surrogate (not valid Unicode text)")
        elif isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise _Refused(f"nesting deeper than {MAX_DEPTH} levels")
            children = list(item.items()) if isinstance(item, dict) else item
            for child in children:
                if isinstance(child, tuple):
                    stack.append((child[0], depth))
                    stack.append((child[1], depth + 1))
                else:
                    stack.append((child, depth + 1))


def parse_header(raw: bytes, source: str = "engine") -> dict[str, Any]:
    """Parse header bytes under the limits above.

    Raises:
        ArtifactError: too large, too deep, not UTF-8 JSON, non-finite numbers, not an object.
    """
    if len(raw) > MAX_HEADER:
        raise ArtifactError(f"{source}: header of {len(raw)} bytes exceeds {MAX_HEADER}")
    try:
        # Brackets inside strings make this an over-estimate; only then is the exact depth left
        # to json (whose recursion is guarded: RecursionError) and to _check_values.
        if _bracket_depth(raw) > _MAX_BRACKETS:
            raise _Refused(f"more than {_MAX_BRACKETS} nested brackets")
        header = json.loads(
            raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_parse_float,
            parse_int=_parse_int,
        )
        _check_values(header)
    except _Refused as exc:
        raise ArtifactError(f"{source}: metadata refused: {exc}") from None
    except RecursionError as exc:
        raise ArtifactError(
            f"{source}: metadata refused: nesting deeper than {MAX_DEPTH} levels"
        ) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{source}: unreadable metadata: {exc}") from exc
    if not isinstance(header, dict):
        raise ArtifactError(f"{source}: metadata is not a JSON object")
    return header


def _prefix(prefix: bytes, source: str, total: int) -> tuple[int, bytes]:
    """Check the fixed prefix against the real size; returns ``(header end, header digest)``."""
    if len(prefix) < _PREFIX.size:
        raise ArtifactError(
            f"{source}: truncated: {len(prefix)} bytes is shorter than the header"
        )
    magic, version, hlen, hdigest = _PREFIX.unpack_from(prefix)
    if magic != MAGIC:
        raise ArtifactError(f"{source}: not a regiontrt engine (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{source}: container format version {version} is not supported "
            f"(this regiontrt reads version {FORMAT_VERSION})"
        )
    end = _PREFIX.size + hlen
    if hlen > MAX_HEADER or total < end:
        raise ArtifactError(
            f"{source}: truncated or corrupted header (declared length {hlen}, "
            f"file size {total})"
        )
    return end, hdigest


def _header(raw: bytes, digest: bytes, source: str) -> dict[str, Any]:
    if hashlib.sha256(raw).digest() != digest:
        raise ArtifactError(
            f"{source}: header checksum mismatch: the metadata was corrupted or edited"
        )
    return parse_header(raw, source)


def _declared_payload(header: Mapping[str, Any], actual: int, source: str) -> str:
    size, digest = header.get("payload_size"), header.get("payload_sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size != actual:
        raise ArtifactError(
            f"{source}: payload is {actual} bytes, the header says {size!r}: "
            "the file is truncated or has trailing data"
        )
    if not isinstance(digest, str):
        raise ArtifactError(f"{source}: header field payload_sha256 is missing or not a string")
    return digest


def _split_header(blob: bytes, source: str) -> tuple[dict[str, Any], int]:
    end, hdigest = _prefix(blob[: _PREFIX.size], source, len(blob))
    return _header(blob[_PREFIX.size : end], hdigest, source), end


def decode_header(blob: bytes, source: str = "engine") -> dict[str, Any]:
    """The metadata of container bytes, verified against its own digest, as :func:`read_header`
    reads a file's: the declared payload size is checked, the payload's digest is not.

    Raises:
        ArtifactError: bad magic or version, truncation, or a header digest mismatch.
    """
    header, end = _split_header(blob, source)
    _declared_payload(header, len(blob) - end, source)
    return header


def decode(blob: bytes, source: str = "engine") -> tuple[dict[str, Any], bytes]:
    """Split and verify container bytes into ``(metadata, payload)``.

    Raises:
        ArtifactError: bad magic or version, truncation, or a digest mismatch.
    """
    header, end = _split_header(blob, source)
    payload = blob[end:]
    digest = _declared_payload(header, len(payload), source)
    if hashlib.sha256(payload).hexdigest() != digest:
        raise ArtifactError(
            f"{source}: payload checksum mismatch: the payload was corrupted or edited"
        )
    return header, payload


# -- files ------------------------------------------------------------------------------------
def _open(path: str | Path) -> tuple[BinaryIO, int]:
    """Open a regular file without blocking; returns the file and its size."""
    if not isinstance(path, (str, os.PathLike)):
        raise ArtifactError(
            f"an engine path must be a str or os.PathLike, got {type(path).__name__}"
        )
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ArtifactError(f"engine file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot open engine file {path}: {exc}") from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ArtifactError(f"{path} is a directory, not an engine file")
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactError(
                f"{path} is not a regular file (a device, FIFO or socket); refused unread"
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def _read_exact(fh: BinaryIO, size: int, source: str) -> bytes:
    """``size`` bytes in one buffer of that size (the size the caller verified): a file that
    cannot be read or held is a typed error."""
    try:
        data = fh.read(size)  # one allocation of ``size`` bytes, filled in place
    except MemoryError:
        raise ArtifactError(f"{source}: {size} bytes do not fit in memory here") from None
    except OSError as exc:
        raise ArtifactError(f"{source}: read error: {exc.strerror or exc}") from exc
    if len(data) != size:
        raise ArtifactError(f"{source}: the file changed size while being read")
    return data


def read_file(path: str | Path, limit: int) -> bytes:
    """The whole of a regular file of at most ``limit`` bytes, read once.

    Raises:
        ArtifactError: not a regular file, larger than ``limit``, or unreadable.
    """
    fh, total = _open(path)
    with fh:
        if total > limit:
            raise ArtifactError(f"{path}: {total} bytes, more than the {limit} accepted")
        return _read_exact(fh, total, str(path))


def _open_header(path: str | Path) -> tuple[BinaryIO, int, int, dict[str, Any]]:
    """Open, check the prefix against the real size, read and verify the header."""
    fh, total = _open(path)
    try:
        source = str(path)
        end, hdigest = _prefix(_read_exact(fh, min(_PREFIX.size, total), source), source,
                               total)
        raw = _read_exact(fh, end - _PREFIX.size, source)
        return fh, total, end, _header(raw, hdigest, source)
    except BaseException:
        fh.close()
        raise


def _payload(path: str | Path, keep: bool) -> tuple[dict[str, Any], bytes | None]:
    fh, total, end, header = _open_header(path)
    source = str(path)
    with fh:
        expected = _declared_payload(header, total - end, source)
        if header.get("payload_format") == "onnx" and total - end > MAX_ONNX_PAYLOAD:
            raise ArtifactError(f"{source}: an ONNX payload of {total - end} bytes is beyond "
                                "protobuf's 2 GiB limit; refused unread")
        digest = hashlib.sha256()
        data: bytes | None = None
        try:
            if keep:  # one buffer of the payload's size, hashed in place
                data = _read_exact(fh, total - end, source)
                digest.update(data)
            else:
                done = 0
                while done < total - end:
                    chunk = fh.read(min(_CHUNK, total - end - done))
                    if not chunk:
                        raise ArtifactError(f"{source}: the file changed size while being read")
                    digest.update(chunk)
                    done += len(chunk)
        except OSError as exc:
            raise ArtifactError(f"{source}: read error: {exc}") from exc
    if digest.hexdigest() != expected:
        raise ArtifactError(
            f"{source}: payload checksum mismatch: the payload was corrupted or edited"
        )
    return header, data


def read(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """Read and verify a container file; memory use is about the payload's size."""
    header, payload = _payload(path, keep=True)
    assert payload is not None
    return header, payload


def read_header(path: str | Path) -> dict[str, Any]:
    """The metadata alone, verified against its own digest, without reading the payload.

    The declared payload size is checked against the file's size; the payload's digest is checked
    by :func:`read` (and by :func:`verify`).
    """
    fh, total, end, header = _open_header(path)
    fh.close()
    _declared_payload(header, total - end, str(path))
    return header


def verify(path: str | Path) -> dict[str, Any]:
    """Check both digests of a file, hashing the payload in chunks; returns the metadata."""
    return _payload(path, keep=False)[0]


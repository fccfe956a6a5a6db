"""TensorRT's INT8 calibration cache text format, read and written.

What TensorRT 7-10 writes (``IInt8Calibrator::writeCalibrationCache``, ``trtexec --calib``)::

    TRT-8601-EntropyCalibration2
    data: 3c008912
    (Unnamed Layer* 1) [Convolution]_output: 3d9dbb8a
    input_1:0: 3c010a14
    366: 0

The header is ``TRT-<version>-<algorithm>`` (version ``major*1000+minor*100+patch`` before
TensorRT 10, e.g. ``8601``; ``100300`` for 10.3; algorithms ``EntropyCalibration2``,
``EntropyCalibration``, ``MinMaxCalibration``, ``LegacyCalibration``). Each further line is a
tensor name, ``": "``, and the IEEE-754 float32 bit pattern of the scale ``amax / 127`` in hex.
TensorRT prints the hex without leading zeros (a zero scale is ``0``); names can contain colons
and spaces, so a line is split at its last colon. This module writes 8 lower-case digits and
reads either, ignoring blank lines, surrounding whitespace and Windows line ends.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from pathlib import Path

from regiontrt._fs import atomic_write_text
from regiontrt.errors import DataError

#: ``TRT-<version>-<algorithm>``; the version is digits, the algorithm a word.
_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9_]+)$")
_HEX = re.compile(r"^(?:0[xX])?[0-9a-fA-F]{1,8}$")
INT8_MAX = 127.0


def amax_to_hex(amax: float) -> str:
    """Big-endian hex of the float32 scale ``amax / 127`` (8 lower-case digits)."""
    return struct.pack(">f", amax / INT8_MAX).hex()


def hex_to_amax(text: str) -> float:
    """The amax of a cache value: float32 bits in hex (1-8 digits) times 127."""
    if not _HEX.match(text):
        raise DataError(f"not a float32 hex pattern: {text!r}")
    bits = int(text, 16)
    (scale,) = struct.unpack(">f", bits.to_bytes(4, "big"))
    return float(scale) * INT8_MAX


def parse_calibration_cache(text: str, *, source: str = "<text>") -> tuple[str, dict[str, float]]:
    """Parse cache text into its header and ``{tensor: amax}``.

    Raises:
        DataError: no ``TRT-<version>-<algorithm>`` header, or a line that is not
            ``name: hex``, or a scale that is negative or not finite.
    """
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines or not _HEADER.match(lines[0]):
        head = lines[0][:60] if lines else ""
        raise DataError(
            f"{source}: not a TensorRT calibration cache (first line {head!r}, expected "
            "'TRT-<version>-<algorithm>')"
        )
    amax: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(":")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise DataError(f"{source}:{number}: expected 'tensor_name: hex', got {line!r}")
        try:
            value_amax = hex_to_amax(value)
        except DataError as exc:
            raise DataError(f"{source}:{number}: {exc}") from None
        if not math.isfinite(value_amax) or value_amax < 0:
            raise DataError(f"{source}:{number}: scale of {name!r} is {value_amax / INT8_MAX}")
        amax[name] = value_amax
    return lines[0], amax


def read_calibration_cache(path: str | Path) -> dict[str, float]:
    """Read a TensorRT calibration cache: ``{tensor: amax}`` with ``amax = scale * 127``.

    Raises:
        DataError: a missing, unreadable or malformed file.
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read calibration cache {file}: {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{file}: not a text calibration cache") from None
    return parse_calibration_cache(text, source=str(file))[1]


def format_calibration_cache(
    amax: Mapping[str, float], *, version: str = "TRT-100100-EntropyCalibration2"
) -> str:
    """The cache text for ``amax`` (see :func:`write_calibration_cache`)."""
    header = version if version.startswith("TRT-") else f"TRT-{version}"
    if not _HEADER.match(header):
        raise DataError(
            f"calibration cache version {version!r} is not 'TRT-<digits>-<algorithm>', e.g. "
            "'TRT-100100-EntropyCalibration2'"
        )
    lines = [header]
    for name, value in amax.items():
        if not name or "\n" in name or "\r" in name or name != name.strip():
            raise DataError(f"tensor name {name!r} cannot be stored in a calibration cache")
        v = float(value)
        if not math.isfinite(v) or v < 0:
            raise DataError(f"amax of {name!r} must be finite and >= 0, got {value!r}")
        lines.append(f"{name}: {amax_to_hex(v)}")
    return "\n".join(lines) + "\n"


def write_calibration_cache(
    path: str | Path,
    amax: Mapping[str, float],
    *,
    version: str = "TRT-100100-EntropyCalibration2",
) -> Path:
    """Write ``amax`` as a TensorRT calibration cache, atomically.

    Args:
        path: destination file.
        amax: symmetric range per tensor; stored as the float32 scale ``amax / 127``.
        version: header line, ``TRT-<version>-<algorithm>`` (the ``TRT-`` prefix may be left
            out).

    Returns:
        the path written.

    Raises:
        DataError: a bad header, tensor name or amax, or an unwritable destination (nothing
            is left on disk then).
    """
    text = format_calibration_cache(amax, version=version)
    dest = Path(path)
    directory = dest.parent if str(dest.parent) else Path(".")
    if not directory.is_dir():  # a cache goes where it is asked to, no folders are made
        raise DataError(f"cannot write calibration cache {dest}: {directory} is not a folder")
    try:
        atomic_write_text(directory / dest.name, text)
    except OSError as exc:
        raise DataError(f"cannot write calibration cache {dest}: {exc}") from None
    return dest

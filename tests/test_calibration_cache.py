"""TensorRT calibration cache text: round trip and caches written by other tools."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from regiontrt.calibration import (
    parse_calibration_cache,
    read_calibration_cache,
    write_calibration_cache,
)
from regiontrt.errors import DataError


def test_known_scales_hex(tmp_path: Path) -> None:
    # 0.0078125 = 2**-7: sign 0, exponent 127 - 7 = 0x78, mantissa 0 -> 0x3c000000.
    # 1.0 -> exponent 0x7f -> 0x3f800000. 0.5 -> 0x3f000000.
    path = write_calibration_cache(
        tmp_path / "c.cache", {"a": 0.0078125 * 127, "b": 127.0, "c": 63.5, "zero": 0.0}
    )
    assert path.read_text().splitlines(keepends=True) == [
        "TRT-100100-EntropyCalibration2\n",
        "a: 3c000000\n",
        "b: 3f800000\n",
        "c: 3f000000\n",
        "zero: 00000000\n",
    ]


def test_round_trip_is_float32_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    amax = {f"t{i}": float(v) for i, v in enumerate(rng.uniform(1e-3, 50, 40))}
    amax["(Unnamed Layer* 3) [Convolution]_output"] = 2.5
    amax["input_1:0"] = 1.0
    path = tmp_path / "sub.cache"
    write_calibration_cache(path, amax, version="TRT-8601-MinMaxCalibration")
    back = read_calibration_cache(path)
    assert list(back) == list(amax)
    for name, value in amax.items():
        scale = np.float32(value / 127)  # what the file can hold
        assert back[name] == pytest.approx(float(scale) * 127, rel=0, abs=0)
        assert back[name] == pytest.approx(value, rel=1e-6)
    assert path.read_text().splitlines()[0] == "TRT-8601-MinMaxCalibration"


def test_reads_cache_as_tensorrt_writes_it(tmp_path: Path) -> None:
    # Hand-written in the documented format the way TensorRT 8 prints it: unpadded hex (a zero
    # scale is "0"), names with spaces, brackets and colons, no newline at the end.
    text = (
        "TRT-8601-EntropyCalibration2\n"
        "data: 3c008912\n"
        "(Unnamed Layer* 1) [Convolution]_output: 3d9dbb8a\n"
        "input_1:0: 3c010a14\n"
        "366: 0"
    )
    path = tmp_path / "trt.cache"
    path.write_bytes(text.encode())
    amax = read_calibration_cache(path)

    def expect(hex_text: str) -> float:
        return struct.unpack(">f", bytes.fromhex(hex_text))[0] * 127

    assert amax == {
        "data": pytest.approx(expect("3c008912")),
        "(Unnamed Layer* 1) [Convolution]_output": pytest.approx(expect("3d9dbb8a")),
        "input_1:0": pytest.approx(expect("3c010a14")),
        "366": 0.0,
    }
    assert amax["data"] == pytest.approx(0.00784518 * 127, rel=1e-5)


@pytest.mark.parametrize(
    "header",
    ["TRT-7000-EntropyCalibration2", "TRT-100300-EntropyCalibration", "TRT-8601-LegacyCalibration"],
)
def test_reads_other_headers_and_line_ends(tmp_path: Path, header: str) -> None:
    path = tmp_path / "x.cache"
    path.write_bytes(f"{header}\r\nconv1: 3C88EDFC\r\n\r\n  pool1 : 0x3c88edfc  \r\n".encode())
    amax = read_calibration_cache(path)
    assert set(amax) == {"conv1", "pool1"}
    assert amax["conv1"] == amax["pool1"] == pytest.approx(0.016715 * 127, rel=1e-4)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "conv1: 3c88edfc\n",
        "TRT-EntropyCalibration2\nconv1: 3c88edfc\n",
        "TRT-8601-EntropyCalibration2\nconv1 3c88edfc\n",
        "TRT-8601-EntropyCalibration2\nconv1: zz\n",
        "TRT-8601-EntropyCalibration2\nconv1: 123456789\n",
        "TRT-8601-EntropyCalibration2\nconv1: bf800000\n",  # negative scale
        "TRT-8601-EntropyCalibration2\nconv1: 7fc00000\n",  # NaN
    ],
)
def test_malformed_caches_raise(text: str) -> None:
    with pytest.raises(DataError):
        parse_calibration_cache(text)


def test_missing_and_binary_files_raise(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_calibration_cache(tmp_path / "nope.cache")
    binary = tmp_path / "b.cache"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError):
        read_calibration_cache(binary)


@pytest.mark.parametrize(
    ("amax", "version"),
    [
        ({"a": -1.0}, "TRT-100100-EntropyCalibration2"),
        ({"a": float("nan")}, "TRT-100100-EntropyCalibration2"),
        ({"bad\nname": 1.0}, "TRT-100100-EntropyCalibration2"),
        ({"a": 1.0}, "TRT-x-EntropyCalibration2"),
        ({"a": 1.0}, "TRT-100100-Entropy Calibration"),
    ],
)
def test_bad_writes_leave_nothing(tmp_path: Path, amax: dict[str, float], version: str) -> None:
    dest = tmp_path / "keep.cache"
    dest.write_text("TRT-100100-EntropyCalibration2\nold: 3c000000\n")
    with pytest.raises(DataError):
        write_calibration_cache(dest, amax, version=version)
    assert read_calibration_cache(dest) == {"old": 127 / 128}  # scale 2**-7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.cache"]


def test_version_without_prefix_and_unwritable_dir(tmp_path: Path) -> None:
    path = write_calibration_cache(
        tmp_path / "v.cache", {"a": 1.0}, version="8601-MinMaxCalibration"
    )
    assert path.read_text().startswith("TRT-8601-MinMaxCalibration\n")
    with pytest.raises(DataError, match="cannot write"):
        write_calibration_cache(tmp_path / "missing" / "v.cache", {"a": 1.0})

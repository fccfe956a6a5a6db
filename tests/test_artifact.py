"""The .engine container: round trip, header-only reads, and refusal of damaged files."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regiontrt.errors import ArtifactError
from regiontrt.runtime import artifact

META = {"region": {"name": "EU"}, "precision": "fp16", "list": [1, 2, 3]}
PAYLOAD = bytes(range(256)) * 8


def test_round_trip(tmp_path):
    path = artifact.write(tmp_path / "m.engine", META, PAYLOAD)
    meta, payload = artifact.read(path)
    assert payload == PAYLOAD
    assert {k: meta[k] for k in META} == META
    assert meta["payload_size"] == len(PAYLOAD)
    assert artifact.read_header(path) == meta


def test_layout_is_as_documented(tmp_path):
    blob = artifact.encode(META, PAYLOAD)
    magic, version, hlen = struct.unpack_from("<8sII", blob)
    assert magic == b"RTRTENG\x00" and version == artifact.FORMAT_VERSION
    assert blob[48 + hlen:] == PAYLOAD


def test_write_is_atomic_when_serialisation_fails(tmp_path):
    path = tmp_path / "m.engine"
    artifact.write(path, META, PAYLOAD)
    with pytest.raises(ValueError):
        artifact.write(path, {"bad": float("nan")}, b"new")  # NaN is not valid JSON
    assert artifact.read(path)[1] == PAYLOAD
    assert os.listdir(tmp_path) == ["m.engine"]


@pytest.mark.parametrize("cut", [0, 10, 47, 60, -1])
def test_truncated_files_are_refused(tmp_path, cut):
    blob = artifact.encode(META, PAYLOAD)
    path = tmp_path / "t.engine"
    path.write_bytes(blob[:cut] if cut >= 0 else blob[:-1])
    with pytest.raises(ArtifactError, match=r"truncated|shorter|header"):
        artifact.read(path)


def test_trailing_data_is_refused(tmp_path):
    path = tmp_path / "t.engine"
    path.write_bytes(artifact.encode(META, PAYLOAD) + b"x")
    with pytest.raises(ArtifactError, match="trailing"):
        artifact.read(path)


def test_not_an_engine_and_future_versions(tmp_path):
    path = tmp_path / "x.engine"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ArtifactError, match="bad magic"):
        artifact.read(path)
    blob = bytearray(artifact.encode(META, PAYLOAD))
    blob[8:12] = struct.pack("<I", 99)
    path.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="version 99"):
        artifact.read(path)
    with pytest.raises(ArtifactError, match="not found"):
        artifact.read(tmp_path / "missing.engine")


def test_edited_metadata_is_refused(tmp_path):
    blob = artifact.encode(META, PAYLOAD)
    tampered = blob.replace(b'"EU"', b'"NA"')
    assert tampered != blob
    with pytest.raises(ArtifactError, match="header checksum"):
        artifact.decode(tampered)



def test_decode_header_checks_the_header_and_payload_size_not_the_payload_digest():
    blob = artifact.encode(META, PAYLOAD)
    assert artifact.decode_header(blob) == artifact.decode(blob)[0]
    with pytest.raises(ArtifactError, match="header checksum"):
        artifact.decode_header(blob.replace(b'"EU"', b'"NA"'))
    with pytest.raises(ArtifactError):
        artifact.decode_header(blob[:-1])               # payload shorter than declared
    edited = blob[:-1] + bytes([blob[-1] ^ 1])          # same size, other bytes
    assert artifact.decode_header(edited) == artifact.decode(blob)[0]
    with pytest.raises(ArtifactError, match="payload checksum"):
        artifact.decode(edited)


BLOB = artifact.encode(META, PAYLOAD)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(0, len(BLOB) * 8 - 1))
def test_any_single_bit_flip_is_detected(position):
    damaged = bytearray(BLOB)
    damaged[position // 8] ^= 1 << (position % 8)
    with pytest.raises(ArtifactError):
        artifact.decode(bytes(damaged))


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(0, len(BLOB) - 1))
def test_any_truncation_is_detected(cut):
    with pytest.raises(ArtifactError):
        artifact.decode(BLOB[:cut])

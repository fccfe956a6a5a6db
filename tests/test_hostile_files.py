"""Hostile .engine files (issue 8, findings 1 and 2): forged-but-consistent headers, deep nesting,
huge declared sizes and non-regular files are refused with typed errors, by every reader."""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import tracemalloc

import numpy as np
import onnx
import pytest
from hostile import build_blob, container, forge, forge_raw_header, relu_model, split

import regiontrt as rt
from regiontrt.cli import main
from regiontrt.runtime import artifact
from regiontrt.runtime.inspection import summarize


@pytest.fixture(scope="module")
def blob() -> bytes:
    return build_blob()


def _readers(path):
    """Every reader of a file, as callables."""
    def loaded():
        with rt.load_engine(path) as engine:
            (engine.region, engine.precision, engine.backend_name, engine.metadata, repr(engine))
            engine.infer(engine.sample_inputs())

    return {
        "inspect-header": lambda: summarize(rt.inspect(path, verify_payload=False)),
        "inspect": lambda: summarize(rt.inspect(path)),
        "load_engine": loaded,
    }


def assert_refused(path, capsys, match: str | None = None, *, payload_only: bool = False) -> None:
    """Every reader refuses ``path`` with a typed error; the CLI exits 2 without a traceback.

    ``payload_only``: the fault lies in the payload, which the header-only inspect does not read.
    """
    for name, read in _readers(path).items():
        if payload_only and name == "inspect-header":
            read()
            continue
        with pytest.raises(rt.RegionTRTError) as info:
            read()
        if match is not None and name != "inspect-header":
            assert info.match(match), (name, str(info.value))
    for argv in (["inspect", str(path)], ["inspect", "--json", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("regiontrt: error:") and "Traceback" not in err


def write(tmp_path, data: bytes, name: str = "f.engine"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_real_engine_passes_every_reader(tmp_path, blob, capsys):
    path = write(tmp_path, blob)
    for read in _readers(path).values():
        read()
    assert main(["inspect", str(path)]) == 0
    assert "compliant" in capsys.readouterr().out


# -- finding 1: forged but consistent headers ----------------------------------------------------
def _drop(key):
    return lambda m: m.pop(key)


def _set(path, value):
    def edit(meta):
        node = meta
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


FORGED = {
    "region-null": (_set(["region"], None), "region"),
    "region-name-null": (_set(["region", "name"], None), "region.name"),
    "backend-removed": (_drop("backend"), "backend"),
    "unknown-backend": (_set(["backend", "name"], "evil"), "backend.name"),
    "profiles-list-of-lists": (_set(["shape_profiles"], [[1, 2]]), "shape_profiles"),
    "buckets-abc": (_set(["shape_buckets"], {"buckets": {"x": "abc"}}), "shape_buckets"),
    "buckets-unicode-axis": (_set(["shape_buckets"], {"buckets": {"x": {"\u00b2": [1]}}}),
                             "shape_buckets"),
    "buckets-axis-beyond-rank": (_set(["shape_buckets"], {"buckets": {"x": {"5": [1]}}}),
                                 "shape_buckets"),
    "trials-empty-dict": (_set(["validation", "trials"], [{}]), "validation.trials"),
    "kept-nested": (_set(["kept_high_precision"], [[1]]), "kept_high_precision"),
    "calibration-list": (_set(["calibration"], [1]), "calibration"),
    "model-null-ok-but-inputs-empty": (_set(["inputs"], []), "inputs"),
    "huge-dim": (_set(["inputs", 0, "shape"], ["N", 2**40]), "inputs"),
    "negative-dim": (_set(["inputs", 0, "shape"], ["N", -4]), "inputs"),
    "profile-min-above-max": (_set(["shape_profiles"], [{"x": [[9, 4], [1, 4], [1, 4]]}]),
                              "shape_profiles"),
    "profile-unknown-input": (_set(["shape_profiles"], [{"q": [[1], [1], [1]]}]),
                              "shape_profiles"),
    "precision-unknown": (_set(["precision"], "int4"), "precision"),
    "payload-format-unknown": (_set(["payload_format"], "zip"), "payload_format"),
    "dtype-object": (_set(["outputs", 0, "dtype"], "object"), "outputs"),
    "budget-string": (_set(["region", "budget"], "low"), "region.budget"),
    "tags-list": (_set(["region", "tags"], ["a", "b"]), "region.tags"),
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_consistent_header_is_refused_naming_the_field(tmp_path, blob, capsys, case):
    edit, field = FORGED[case]
    path = write(tmp_path, forge(blob, edit))
    artifact.read(path)  # the container itself is consistent: only the schema can refuse it
    assert_refused(path, capsys, match=field.split(".")[0])
    with pytest.raises(rt.errors.ArtifactError, match=field.split(".")[0]):
        rt.load_engine(path)


PAYLOAD_MISMATCH = {
    "input-name-differs": _set(["inputs", 0, "name"], "other"),
    "input-dtype-differs": _set(["inputs", 0, "dtype"], "int64"),
    "input-rank-differs": _set(["inputs", 0, "shape"], ["N", 4, 1]),
    "output-name-differs": _set(["outputs", 0, "name"], "z"),
}


@pytest.mark.parametrize("case", sorted(PAYLOAD_MISMATCH))
def test_header_that_disagrees_with_the_payload_is_refused_before_the_runtime(
        tmp_path, blob, capsys, case):
    path = write(tmp_path, forge(blob, PAYLOAD_MISMATCH[case]))
    assert_refused(path, capsys, match="does not match the payload", payload_only=True)


@pytest.mark.parametrize("raw", [
    b"[" * 100_000,
    b'{"a":' * 600 + b"1" + b"}" * 600,
    b'{"x": Infinity}',
    b'{"x": NaN}',
    b'{"x": 1e400}',
    b'{"x": ' + b"9" * 5000 + b"}",
    b'{"x": "' + b"a" * (artifact.MAX_STRING + 1) + b'"}',
    b"\xff\xfe not utf-8",
    b"[1, 2]",
], ids=lambda raw: f"{raw[:10]!r}-{len(raw)}")
def test_unparseable_or_unbounded_headers_are_refused(tmp_path, blob, capsys, raw):
    path = write(tmp_path, forge_raw_header(blob, raw))
    with pytest.raises(rt.errors.ArtifactError):
        artifact.read_header(path)
    assert_refused(path, capsys)


def test_nesting_600_deep_inside_a_valid_header_is_refused(tmp_path, blob, capsys):
    deep: object = 1
    for _ in range(600):
        deep = [deep]
    path = write(tmp_path, forge(blob, _set(["build"], deep)))
    with pytest.raises(rt.errors.ArtifactError, match="nesting"):
        artifact.read(path)
    assert_refused(path, capsys)


def test_payload_with_a_future_ir_version_is_refused_before_the_runtime(tmp_path, blob, capsys):
    model = relu_model()
    model.ir_version = 99
    path = write(tmp_path, forge(blob, payload=model.SerializeToString()))
    assert_refused(path, capsys, match="IR version 99", payload_only=True)


def test_payload_swapped_for_garbage_or_another_model(tmp_path, blob, capsys):
    path = write(tmp_path, forge(blob, payload=b"\x08\x07garbage" * 10))
    assert_refused(path, capsys, payload_only=True)
    other = relu_model(name="image", out="logits").SerializeToString()
    path = write(tmp_path, forge(blob, payload=other), "other.engine")
    assert_refused(path, capsys, match="does not match the payload", payload_only=True)


def test_summarize_never_raises_on_any_shape_of_metadata():
    for meta in ({}, {"region": None}, {"validation": {"trials": [{}]}},
                 {"kept_high_precision": [[1]]}, {"calibration": [1]}, {"model": None},
                 {"backend": "x", "validation": [1], "shape_profiles": {1, 2}}):
        rows = summarize(meta)
        assert rows and all(isinstance(k, str) and isinstance(v, str) for k, v in rows)


# -- finding 2: reading must not read everything first -------------------------------------------
def test_fifo_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "pipe.engine"
    os.mkfifo(fifo)
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            assert_refused(fifo, capsys)
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(10), "a reader blocked on a FIFO"
    assert not errors, errors


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_devices_are_refused_unread(device, capsys):
    if not os.path.exists(device):
        pytest.skip(f"needs {device}")
    with pytest.raises(rt.errors.ArtifactError, match="regular file"):
        rt.load_engine(device)
    assert_refused(device, capsys)


def test_directory_and_missing_and_bad_path_types(tmp_path):
    with pytest.raises(rt.errors.ArtifactError, match="directory"):
        rt.inspect(tmp_path)
    with pytest.raises(rt.errors.ArtifactError, match="not found"):
        rt.load_engine(tmp_path / "missing.engine")
    for bad in (None, 123, b"\0".decode() + "x", ["a"]):
        with pytest.raises(rt.RegionTRTError):
            rt.load_engine(bad)  # type: ignore[arg-type]


def test_declared_sizes_are_checked_against_the_real_size_first(tmp_path, blob):
    """A 3 GiB (sparse) file whose prefix declares a small header is refused after reading only
    the prefix and header: memory stays far below the file size."""
    big = tmp_path / "big.engine"
    with big.open("wb") as fh:
        fh.write(blob)
        fh.truncate(3 * 1024**3)
    huge_header = tmp_path / "hlen.engine"
    huge_header.write_bytes(struct.pack("<8sII32s", artifact.MAGIC, 1, 2**32 - 1, b"\0" * 32))
    tracemalloc.start()
    try:
        for path, match in ((big, "payload is"), (huge_header, "header")):
            for read in (rt.inspect, rt.load_engine, artifact.read, artifact.read_header):
                t0 = time.perf_counter()
                with pytest.raises(rt.errors.ArtifactError, match=match):
                    read(path)
                assert time.perf_counter() - t0 < 2.0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024**2, f"peak {peak} bytes while refusing a 3 GiB file"


def test_payload_hash_is_streamed_by_inspect(tmp_path, blob):
    """inspect() of a valid 64 MiB plan-format file hashes it in chunks: memory stays small."""
    payload = np.random.default_rng(0).bytes(64 * 1024**2)

    def as_plan(meta):
        meta["payload_format"] = "tensorrt-rtx-plan"
        meta["backend"]["name"] = "tensorrt-rtx"

    path = write(tmp_path, forge(blob, as_plan, payload=payload))
    tracemalloc.start()
    try:
        meta = rt.inspect(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert meta["payload_size"] == len(payload)
    assert peak < 8 * 1024**2, peak


def test_truncated_prefix_and_bad_magic_from_every_reader(tmp_path, capsys):
    for data in (b"", b"RTRTENG", b"PK\x03\x04" + b"\0" * 100,
                 container(b"{}", b"")[:40]):
        assert_refused(write(tmp_path, data), capsys)


def test_onnx_payload_roundtrips_through_split(blob):
    meta, payload = split(blob)
    assert onnx.load_from_string(payload).graph.input[0].name == meta["inputs"][0]["name"]
    assert json.dumps(meta)


def test_pathological_headers_are_refused_in_linear_time():
    """A 10 MB unterminated string of escaped quotes once made the depth pre-scan quadratic."""
    for raw in (b'"' + b'\\"' * 5_000_000, b"[" * 5_000_000, b'"' * 10_000_000):
        t0 = time.perf_counter()
        with pytest.raises(rt.errors.ArtifactError):
            artifact.parse_header(raw)
        assert time.perf_counter() - t0 < 5.0
    # Brackets inside strings count towards the 10,000-bracket pre-scan bound only.
    assert artifact.parse_header(b'{"a": "' + b"[" * 5_000 + b'"}')["a"] == "[" * 5_000


WRONG = (None, True, -1, 2**62, 1.5, "x", "", [], {}, [None], {"a": None})


def test_a_wrong_type_in_every_field_is_a_typed_error_or_harmless(tmp_path, blob):
    """Every field of a real header, replaced by each value in WRONG (digests recomputed)."""
    meta, _ = split(blob)
    paths: list[tuple] = []
    stack: list[tuple[tuple, object]] = [((), meta)]
    while stack:
        prefix, node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)  # type: ignore[union-attr]
        for key, value in items:
            paths.append((*prefix, key))
            if isinstance(value, (dict, list)):
                stack.append(((*prefix, key), value))
    assert len(paths) > 60
    path = tmp_path / "w.engine"
    loaded = 0
    for field in paths:
        for wrong in WRONG:
            path.write_bytes(forge(blob, _set(list(field), wrong)))
            for read in (lambda: summarize(rt.inspect(path)), lambda: rt.load_engine(path)):
                try:
                    read()
                    loaded += 1
                except rt.RegionTRTError:
                    pass
    assert 0 < loaded < 2 * len(paths) * len(WRONG)  # free fields load; typed ones are refused

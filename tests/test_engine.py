"""Engine on the ONNX Runtime backend: the input guard, benchmark, save/load, export, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

import regiontrt as rt
from regiontrt import demo
from regiontrt.cli import main
from regiontrt.data.sources import split_batches

PROFILE = {"input": [(1, 1, 8, 8), (8, 1, 8, 8), (16, 1, 8, 8)]}


@pytest.fixture(scope="module")
def engine_path(tmp_path_factory):
    data = demo.region_data("CERTIFIED")
    path = tmp_path_factory.mktemp("e") / "digits.CERTIFIED.engine"
    (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("CERTIFIED")
     .with_shape_profile(PROFILE).with_validation(split_batches({"input": data.validation}, 16))
     .build(path))
    return path


@pytest.fixture()
def engine(engine_path):
    with rt.load_engine(engine_path) as e:
        yield e


def test_infer_matches_onnxruntime_on_the_source_model(engine):
    import onnxruntime as ort

    x = demo.region_data("CERTIFIED").validation[:16]
    ref = ort.InferenceSession(str(demo.model_path())).run(None, {"input": x})[0]
    out = engine.infer({"input": x})
    assert set(out) == {"logits"}
    np.testing.assert_allclose(out["logits"], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(engine.infer(x)["logits"], out["logits"])  # bare array


@pytest.mark.parametrize(
    ("feeds", "error", "match"),
    [
        ({"image": np.zeros((1, 1, 8, 8), np.float32)}, rt.errors.InputError, "unknown"),
        ({"input": np.zeros((1, 1, 8, 8), np.float64)}, rt.errors.InputError, "dtype float64"),
        ({"input": np.zeros((1, 8, 8), np.float32)}, rt.errors.InputError, "rank 3"),
        ({"input": np.zeros((1, 1, 8, 9), np.float32)}, rt.errors.InputError, "axis 3"),
        ({"input": np.zeros((17, 1, 8, 8), np.float32)}, rt.errors.ShapeOutOfProfile, "max"),
        ({"input": np.zeros((0, 1, 8, 8), np.float32)}, rt.errors.ShapeOutOfProfile, "min"),
    ],
)
def test_infer_guard_rejects_before_running(engine, feeds, error, match):
    with pytest.raises(error, match=match):
        engine.infer(feeds)
    assert engine._runner is None  # nothing was loaded or run


def test_benchmark_report(engine):
    report = engine.benchmark(iterations=20, warmup=2, batch=4)
    assert report.batch == 4 and report.iterations == 20
    assert 0 < report.p50_ms <= report.p90_ms <= report.p99_ms
    assert report.throughput == pytest.approx(4 / (report.mean_ms / 1e3))
    assert report.timer == "perf_counter_ns" and report.meets_sla is None
    with pytest.raises(rt.errors.ShapeOutOfProfile):
        engine.benchmark(iterations=1, batch=64)


def test_save_load_and_export_payload(engine, tmp_path):
    again = rt.load_engine(engine.save(tmp_path / "copy.engine"))
    assert again.metadata == engine.metadata and again.payload == engine.payload
    payload, sidecar = engine.export_payload(tmp_path / "raw")
    assert payload.suffix == ".onnx" and payload.read_bytes() == engine.payload
    meta = json.loads(sidecar.read_text())
    assert meta["region"]["name"] == "CERTIFIED" and meta["payload_size"] == len(engine.payload)


def test_load_refuses_damaged_files(engine_path, tmp_path):
    blob = bytearray(engine_path.read_bytes())
    blob[-10] ^= 0x40
    bad = tmp_path / "flip.engine"
    bad.write_bytes(bytes(blob))
    with pytest.raises(rt.errors.ArtifactError, match="payload checksum"):
        rt.load_engine(bad)
    bad.write_bytes(engine_path.read_bytes()[:-100])
    with pytest.raises(rt.errors.ArtifactError, match="truncated"):
        rt.load_engine(bad)


def test_inspect_needs_no_runtime(engine_path, monkeypatch):
    import sys

    for mod in ("tensorrt", "tensorrt_rtx", "onnxruntime", "cuda"):
        monkeypatch.setitem(sys.modules, mod, None)  # importing any of them now fails
    meta = rt.inspect(engine_path)
    assert meta["region"]["name"] == "CERTIFIED" and meta["precision"] == "fp32"


def test_cli_inspect_regions_bench_and_errors(engine_path, capsys, tmp_path):
    assert main(["inspect", str(engine_path)]) == 0
    out = capsys.readouterr().out
    assert "CERTIFIED" in out and "model sha256" in out
    assert main(["inspect", str(engine_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "fp32"
    assert main(["regions"]) == 0
    assert "EU" in capsys.readouterr().out
    assert main(["bench", str(engine_path), "--iterations", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["iterations"] == 5
    (tmp_path / "bad.engine").write_bytes(b"junk")
    assert main(["inspect", str(tmp_path / "bad.engine")]) == 2
    assert "regiontrt: error" in capsys.readouterr().err


def test_cli_build(tmp_path, capsys):
    data = demo.region_data("EU")
    np.savez(tmp_path / "val.npz", input=data.validation[:64])
    out = tmp_path / "eu.engine"
    code = main(["build", str(demo.model_path()), "--region", "EU", "--validation",
                 str(tmp_path / "val.npz"), "--shape", "input:1x1x8x8,32x1x8x8,64x1x8x8",
                 "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "precision fp16" in capsys.readouterr().out
    assert rt.inspect(out)["region"]["name"] == "EU"
    assert main(["build", str(demo.model_path()), "--region", "EU", "--precision", "int8",
                 "--validation", str(tmp_path / "val.npz"), "-o", str(tmp_path / "x.engine")]) == 2
    assert "forbids int8" in capsys.readouterr().err
    assert not (tmp_path / "x.engine").exists()

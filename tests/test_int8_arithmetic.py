"""INT8 decisions that do not depend on the checking machine's CPU.

ONNX Runtime's fused CPU int8 kernels give different results with and without VNNI; TensorRT's
arithmetic (Q/DQ unfused) does not. The cross-CPU test runs the same checks natively and on an
emulated AVX2-only CPU (``qemu-x86_64 -cpu Haswell``: CPUID without AVX-512 or VNNI, so ONNX
Runtime picks its AVX2 kernels there) and compares.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import regiontrt as rt
from regiontrt import demo
from regiontrt.backends import get_backend
from regiontrt.data.sources import split_batches
from regiontrt.errors import IncompatibleEngineError
from regiontrt.graph.arithmetic import (
    Int8Arithmetic,
    cpu_differences,
    int8_cpu_features,
    session_options,
)

PROBE = Path(__file__).with_name("isa_probe.py")
VNNI = {"avx512_vnni", "avx_vnni", "amx_int8"}


def _probe(*prefix: str) -> dict:
    python = str(Path(sys.executable).resolve())  # an ELF file, which qemu can load
    done = subprocess.run([*prefix, python, str(PROBE)], capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def native() -> dict:
    return _probe()


@pytest.mark.slow
def test_tensorrt_arithmetic_gives_the_same_decision_on_an_avx2_only_cpu(native: dict) -> None:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None or not sys.platform.startswith("linux"):
        pytest.skip("needs qemu-x86_64 (Debian: apt-get install qemu-user) to emulate an "
                    "AVX2-only CPU")
    emulated = _probe(qemu, "-cpu", "Haswell")
    assert emulated["cpu"]["flags"] == ["avx2"]  # what ONNX Runtime's kernels see there
    # TensorRT's arithmetic: the same numbers on both CPUs, up to float rounding ...
    for probe in (native, emulated):
        assert probe["numerics"]["tensorrt"] < 0.05
    assert emulated["numerics"]["tensorrt"] == pytest.approx(native["numerics"]["tensorrt"],
                                                             rel=1e-4)
    # ... and the same decision, loss for loss, on the demo model's NA build
    mine, theirs = native["build"]["tensorrt"], emulated["build"]["tensorrt"]
    assert (mine["precision"], mine["kept"]) == (theirs["precision"], theirs["kept"])
    assert mine["int8_loss"] == pytest.approx(theirs["int8_loss"], abs=1 / 256)
    # The fused kernels saturate u8 x s8 products without VNNI: the very same int8 graph is
    # 4x further from FP32 there, which is why a check must name its arithmetic.
    assert emulated["numerics"]["fused"] > 0.05 > emulated["numerics"]["tensorrt"]
    if VNNI & set(native["cpu"]["flags"]):
        assert native["numerics"]["fused"] < 0.05
    fused = emulated["build"]["fused"]["evaluation"]
    assert fused["int8_arithmetic"] == "fused" and fused["cpu"]["flags"] == ["avx2"]
    assert "portable_loss" in fused


def test_both_arithmetics_agree_where_nothing_saturates(native: dict) -> None:
    """Runs on any CPU: where both arithmetics are exact enough they agree; the record names
    what each build was checked on."""
    numerics = native["numerics"]
    if VNNI & set(native["cpu"]["flags"]):
        assert numerics["fused"] == pytest.approx(numerics["tensorrt"], rel=0.05)
    else:  # the no-VNNI CPU this project's suite also runs on: fused saturates
        assert numerics["fused"] > numerics["tensorrt"]
    portable = native["build"]["tensorrt"]["evaluation"]
    assert portable["int8_arithmetic"] == "tensorrt" and portable["portable"] is True
    # what the build recorded is what the process that ran ONNX Runtime saw (the probe's own
    # reading: under an emulator the test process and the probe may see different CPUs)
    assert portable["cpu"] == native["cpu"]


def test_session_options_name_the_arithmetic() -> None:
    assert session_options().get_session_config_entry("session.disable_quant_qdq") == "1"
    fused = session_options("fused")
    with pytest.raises(Exception):  # noqa: B017 - unset entries raise in ONNX Runtime
        fused.get_session_config_entry("session.disable_quant_qdq")
    with pytest.raises(ValueError, match="tensorrt, fused"):
        Int8Arithmetic.parse("vnni")


def _fused_na(tmp_path: Path, region: rt.Region) -> tuple[dict, bytes]:
    data = demo.region_data("NA")
    engine = (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region(region)
              .with_calibrator("entropy", data=split_batches({"input": data.calibration}, 64))
              .with_validation(split_batches({"input": data.validation[:256]}, 64))
              .with_int8_arithmetic("fused").build(tmp_path / "na.engine"))
    assert engine.precision == "int8"
    meta = engine.metadata
    assert meta["evaluation"]["cpu"] == int8_cpu_features()
    # what a site whose CPU lacks (or has) VNNI sees: the recorded flags differ from its own
    flags = set(meta["evaluation"]["cpu"]["flags"])
    meta["evaluation"]["cpu"]["flags"] = sorted(flags ^ {"avx512_vnni"})
    assert cpu_differences(meta["evaluation"]["cpu"])
    return meta, engine.payload


@pytest.mark.parametrize("policy", ["warn", "refuse", "portable"])
def test_a_site_with_another_cpu_follows_its_region(tmp_path: Path, policy: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    region = rt.get_region("NA").evolve(cpu_mismatch=policy)
    meta, payload = _fused_na(tmp_path, region)
    engine = rt.Engine(meta, payload)
    x = demo.region_data("NA").validation[:8]
    if policy == "refuse":
        with pytest.raises(IncompatibleEngineError, match="cpu_mismatch = refuse"):
            engine.infer({"input": x})
        return
    with caplog.at_level(logging.WARNING, logger="regiontrt.runtime.engine"):
        logits = engine.infer({"input": x})["logits"]
    runner = engine._get_runner()
    expected = Int8Arithmetic.FUSED if policy == "warn" else Int8Arithmetic.TENSORRT
    assert runner.arithmetic is expected
    assert "differs from this one" in caplog.text
    assert logits.shape == (8, 10) and np.isfinite(logits).all()


def test_a_site_re_checks_an_engine_on_its_own_data(tmp_path: Path) -> None:
    _fused_na(tmp_path, rt.get_region("NA"))
    engine = rt.load_engine(tmp_path / "na.engine")
    data = split_batches({"input": demo.region_data("NA").validation[256:512]}, 64)
    trial = engine.validate(data, demo.model_path())
    assert trial.budget == 0.02 and trial.loss is not None and 0 <= trial.loss < 0.02
    assert trial.accepted and set(trial.output_losses) == {"logits"}
    assert trial.output_losses["logits"] == trial.loss


def test_fused_is_refused_for_a_tensorrt_target() -> None:
    if not get_backend("tensorrt-rtx").is_available():
        pytest.skip("needs tensorrt-rtx (pip install 'regiontrt[rtx]')")
    builder = (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("NA")
               .with_backend("tensorrt-rtx").with_int8_arithmetic("fused"))
    with pytest.raises(rt.errors.InvalidArgumentError, match="TensorRT's arithmetic"):
        builder.build()


def test_region_cpu_mismatch_is_checked() -> None:
    with pytest.raises(rt.errors.RegionConfigError, match="cpu_mismatch"):
        rt.Region("X", ("int8",), cpu_mismatch="ignore")
    table = rt.Region("X", ("int8",), cpu_mismatch="refuse").to_dict()
    assert rt.Region.from_dict("X", table).cpu_mismatch == "refuse"


def test_the_docs_table_is_generated_from_the_result_file() -> None:
    bench = pytest.importorskip("benchmarks.bench_arithmetic",
                                reason="run from the repository root")
    result = json.loads(bench.RESULT.read_text())
    for doc in bench.DOCS:
        assert bench.table(result) in doc.read_text()
    tensorrt = [[r["rows"][m]["tensorrt"] for m in result["models"]] for r in result["runs"]]
    assert all(run == pytest.approx(tensorrt[0], rel=1e-3) for run in tensorrt)

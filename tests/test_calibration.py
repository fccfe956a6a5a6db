"""Calibrators end to end on small ONNX models: collection, ranges, subclassing, mismatch."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from regiontrt.calibration import (
    CalibrationResult,
    Calibrator,
    EntropyCalibrator,
    MinMaxCalibrator,
    PercentileCalibrator,
    TensorStats,
    activation_tensors,
    check_mismatch,
    collect_statistics,
    get_calibrator,
    read_calibration_cache,
    write_calibration_cache,
)
from regiontrt.calibration.base import ZERO_RANGE_AMAX
from regiontrt.calibration.collect import iter_activations, resolve_tensors
from regiontrt.data.sources import DataSource
from regiontrt.errors import DataError, RegionConfigError
from regiontrt.graph.io import input_specs

SHAPE = (8, 3, 8, 8)


def make_model(seed: int = 0) -> onnx.ModelProto:
    """x -> Conv -> Relu -> Flatten -> MatMul -> y, plus an int64 Shape branch into Reshape."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(4) * 0.1).astype(np.float32)
    fc = (rng.standard_normal((256, 10)) * 0.05).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Shape", ["relu"], ["shape"], end=1),
        helper.make_node("Concat", ["shape", "minus_one"], ["new_shape"], axis=0),
        helper.make_node("Reshape", ["relu", "new_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(fc, "fc"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
    ]
    graph = helper.make_graph(
        nodes,
        "calib_test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    onnx.checker.check_model(model)
    return model


def gaussian(seed: int, n: int, scale: float = 1.0) -> Iterator[np.ndarray]:
    """A one-shot generator of ``n`` batches, each made on demand (nothing is retained)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield (rng.standard_normal(SHAPE) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return make_model()


def test_default_tensors_are_float_activations(model: onnx.ModelProto) -> None:
    # Weights, the int64 shape branch and the final output (it feeds no node) are left out.
    assert activation_tensors(model) == ["x", "conv", "relu", "flat"]


def test_statistics_match_reference_evaluator(model: onnx.ModelProto) -> None:
    data = list(gaussian(1, 3))
    stats = collect_statistics(model, iter(data), num_bins=512)
    ref = ReferenceEvaluator(model)
    values: dict[str, list[np.ndarray]] = {n: [] for n in stats}
    for batch in data:
        out: Any = ref.run(None, {"x": batch}, intermediate=True)  # a dict with intermediate
        for name in stats:
            values[name].append(np.asarray(out[name]).ravel())
    for name, st in stats.items():
        arr = np.concatenate(values[name])
        assert st.count == arr.size
        assert st.min == pytest.approx(float(arr.min()), rel=1e-5, abs=1e-6)
        assert st.max == pytest.approx(float(arr.max()), rel=1e-5, abs=1e-6)
        want, _ = np.histogram(np.abs(arr), bins=512, range=(0, st.hist_max))
        assert np.abs(st.hist - want).sum() <= 0.001 * arr.size


def test_model_is_not_modified(model: onnx.ModelProto) -> None:
    before = model.SerializeToString()
    collect_statistics(model, gaussian(2, 1), histogram=False)
    assert model.SerializeToString() == before


def test_calibrators_from_one_shot_generator(model: onnx.ModelProto) -> None:
    results: dict[str, CalibrationResult] = {}
    for name in ("minmax", "percentile", "entropy"):
        results[name] = get_calibrator(name).calibrate(model, gaussian(3, 6))
    fingerprint = DataSource(list(gaussian(3, 6)), input_specs(model)).fingerprint
    mm = results["minmax"]
    for result in results.values():
        assert result.num_batches == 6 and result.num_samples == 48
        assert result.fingerprint == fingerprint
        assert set(result.amax) == {"x", "conv", "relu", "flat"}
        for tensor, value in result.amax.items():
            # Symmetric ranges within what was observed, never zero on live tensors.
            assert 0 < value <= mm.amax[tensor] * (1 + 1e-6)
    assert mm.amax["x"] == pytest.approx(mm.stats["x"].amax)
    assert results["percentile"].amax["conv"] < mm.amax["conv"]
    # Relu and the Reshape after it carry the same values, hence the same ranges.
    assert results["entropy"].amax["relu"] == pytest.approx(results["entropy"].amax["flat"])
    assert results["entropy"].method == "entropy"


def test_explicit_tensors_and_batch_limit(model: onnx.ModelProto) -> None:
    result = MinMaxCalibrator().calibrate(model, list(gaussian(4, 5)), ["relu"], batch_limit=2)
    assert list(result.amax) == ["relu"]
    assert result.num_batches == 2 and result.num_samples == 16
    assert result.stats["relu"].hist.sum() == 0  # MinMax skips the histograms


class FractionOfMax(Calibrator):
    """A downstream method in a few lines: a fixed fraction of the observed max."""

    needs_histogram = False
    method = "fraction-of-max"

    def __init__(self, fraction: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fraction = fraction

    def compute_amax(self, stats: TensorStats) -> float:
        return self.fraction * stats.amax


class MseOptimal(Calibrator):
    """Another one: the threshold of least INT8 quantization MSE over the histogram."""

    def compute_amax(self, stats: TensorStats) -> float:
        centers = (np.arange(stats.num_bins) + 0.5) * stats.bin_width
        candidates = np.linspace(stats.amax / 4, stats.amax, 32)
        errors = []
        for t in candidates:
            dequantized = np.clip(np.round(centers / (t / 127)), 0, 127) * (t / 127)
            errors.append(np.sum(stats.hist * (dequantized - centers) ** 2))
        return float(candidates[int(np.argmin(errors))])


def test_downstream_subclasses(model: onnx.ModelProto) -> None:
    full = MinMaxCalibrator().calibrate(model, gaussian(5, 3))
    half = FractionOfMax(0.5).calibrate(model, gaussian(5, 3))
    assert half.method == "fraction-of-max"
    for name, value in half.amax.items():
        assert value == pytest.approx(0.5 * full.amax[name])
    mse = MseOptimal(num_bins=256).calibrate(model, gaussian(5, 3))
    assert mse.method == "MseOptimal"
    assert all(0 < mse.amax[n] <= full.amax[n] for n in full.amax)
    assert any(mse.amax[n] < full.amax[n] for n in full.amax)  # it does clip somewhere


def test_broken_subclass_is_reported(model: onnx.ModelProto) -> None:
    class Broken(Calibrator):
        def compute_amax(self, stats: TensorStats) -> float:
            return float("nan")

    with pytest.raises(DataError, match="invalid amax"):
        Broken().calibrate(model, gaussian(6, 1))


def test_mismatch_fires_on_shifted_data_only(model: onnx.ModelProto) -> None:
    for calibrator in (EntropyCalibrator(), PercentileCalibrator(), MinMaxCalibrator()):
        ranges = calibrator.calibrate(model, gaussian(7, 8)).amax
        same = check_mismatch(model, ranges, gaussian(8, 4))
        assert not same.exceeded, same.summary()
        assert same.worst is not None and same.worst[1] < 0.01
        shifted = check_mismatch(model, ranges, gaussian(8, 4, scale=3.0))
        assert shifted.exceeded, shifted.summary()
        assert shifted.per_tensor["x"] > 0.05
        assert shifted.percentile_ratio["x"] > 2.0
        assert "mismatch" in shifted.summary() and "'x'" in shifted.summary()
        assert shifted.to_dict()["exceeded"] is True
        assert shifted.worst is not None and shifted.offenders()[0][0] == shifted.worst[0]


def test_mismatch_rejects_unknown_tensors_and_bad_threshold(model: onnx.ModelProto) -> None:
    with pytest.raises(DataError, match="not found"):
        check_mismatch(model, {"nope": 1.0}, gaussian(9, 1))
    with pytest.raises(DataError, match="finite"):
        check_mismatch(model, {"x": -1.0}, gaussian(9, 1))
    with pytest.raises(RegionConfigError):
        check_mismatch(model, {"x": 1.0}, gaussian(9, 1), threshold=2.0)


@pytest.mark.parametrize(
    ("tensors", "match"),
    [(["nope"], "not found"), (["w"], "weights"), (["shape"], "float")],
)
def test_bad_tensor_names(model: onnx.ModelProto, tensors: list[str], match: str) -> None:
    with pytest.raises(DataError, match=match):
        collect_statistics(model, gaussian(10, 1), tensors)


def test_bad_data(model: onnx.ModelProto) -> None:
    with pytest.raises(DataError, match="empty"):
        EntropyCalibrator().calibrate(model, iter([]))
    with pytest.raises(DataError, match="rank"):
        EntropyCalibrator().calibrate(model, [np.zeros((3, 8, 8), np.float32)])
    with pytest.raises(DataError, match="axis 1"):
        EntropyCalibrator().calibrate(model, [np.zeros((2, 4, 8, 8), np.float32)])


def test_get_calibrator_names_and_arguments() -> None:
    assert isinstance(get_calibrator("Entropy"), EntropyCalibrator)
    assert isinstance(get_calibrator("minmax"), MinMaxCalibrator)
    cal = get_calibrator("percentile", percentile=99.9)
    assert isinstance(cal, PercentileCalibrator) and cal.percentile == 99.9
    with pytest.raises(RegionConfigError, match="unknown calibrator"):
        get_calibrator("kl")
    with pytest.raises(RegionConfigError):
        EntropyCalibrator(num_bins=100)
    with pytest.raises(RegionConfigError):
        PercentileCalibrator(percentile=0)


def test_result_through_calibration_cache(model: onnx.ModelProto, tmp_path: Path) -> None:
    result = EntropyCalibrator().calibrate(model, gaussian(11, 2))
    path = write_calibration_cache(tmp_path / "model.cache", result.amax)
    back = read_calibration_cache(path)
    assert back.keys() == result.amax.keys()
    for name, value in result.amax.items():
        assert back[name] == pytest.approx(value, rel=1e-6)


def test_peak_memory_does_not_grow_with_batches(model: onnx.ModelProto) -> None:
    def peak(batches: int) -> int:
        tracemalloc.start()
        try:
            EntropyCalibrator().calibrate(model, gaussian(12, batches))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(2)  # warm caches (ONNX Runtime, numpy workspaces) outside the measurement
    small, large = peak(4), peak(32)
    batch_bytes = int(np.prod(SHAPE)) * 4 * 4  # one batch's activations, roughly
    assert large <= small * 1.25 + batch_bytes, (small, large)


def test_all_zero_tensor_gets_a_small_positive_range(model: onnx.ModelProto) -> None:
    zeros = [np.zeros(SHAPE, np.float32)] * 2
    for calibrator in (EntropyCalibrator(), PercentileCalibrator(), MinMaxCalibrator()):
        result = calibrator.calibrate(model, zeros, ["x"])
        assert result.stats["x"].amax == 0.0
        assert result.amax["x"] == ZERO_RANGE_AMAX > 0


def test_overlapped_and_serial_collection_agree(model: onnx.ModelProto) -> None:
    names, types = resolve_tensors(model, None)
    data = list(gaussian(13, 3))
    serial = list(
        iter_activations(model, DataSource(data, input_specs(model)), names, types, overlap=False)
    )
    overlapped = list(
        iter_activations(model, DataSource(data, input_specs(model)), names, types, overlap=True)
    )
    assert len(serial) == len(overlapped) == 3
    for a, b in zip(serial, overlapped):
        assert a.keys() == b.keys() == set(names)
        for name in names:
            np.testing.assert_array_equal(a[name], b[name])

"""INT8 through the builder: region calibration, mixed precision, mismatch check, opset 11."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from conftest import make_cnn

import regiontrt as rt
from regiontrt import demo
from regiontrt.calibration import read_calibration_cache, write_calibration_cache
from regiontrt.data.sources import split_batches
from regiontrt.graph.quantize import count_qdq

PROFILE = {"input": [(1, 1, 8, 8), (32, 1, 8, 8), (64, 1, 8, 8)]}


def b64(array):
    return split_batches({"input": array}, 64)


@pytest.fixture(scope="module")
def base():
    return rt.RegionalEngineBuilder.from_onnx(demo.model_path()).with_shape_profile(PROFILE)


def int8_region(name="T", budget=1.0, strict=False):
    return rt.Region(name, precisions=("int8", "fp32"), budget=budget, metric="relative_l2",
                     strict_calibration=strict)


def test_mixed_precision_meets_a_budget_whole_model_int8_misses(base):
    data = demo.region_data("SEA")
    common = (base.with_validation(b64(data.validation))
              .with_calibrator("minmax", data=b64(data.calibration)))
    whole = common.for_region(int8_region()).with_precision(
        rt.PrecisionPolicy("int8", search_mixed=False)).build()
    whole_loss = whole.metadata["validation"]["trials"][0]["loss"]
    assert whole_loss > 0
    # The five demo layers have near-equal local int8 errors: a budget that needs all but one
    # kept would test the ranking's tie-breaks, not the search.
    budget = whole_loss * 0.8
    # whole-model int8 now misses the budget ...
    with pytest.raises(rt.errors.AccuracyBudgetExceeded):
        common.for_region(int8_region(budget=budget)).with_precision(
            rt.PrecisionPolicy("int8", search_mixed=False)).build()
    # ... and keeping the most sensitive layers in float32 meets it, still as int8
    mixed = common.for_region(int8_region(budget=budget)).with_precision(
        rt.PrecisionPolicy("int8", max_kept_fraction=1.0)).build()
    meta = mixed.metadata
    kept = meta["kept_high_precision"]
    search = meta["calibration"]["mixed_precision"]
    n_layers = len(rt.PrecisionPolicy().quantization_plan(base._shared.cleaned()).nodes)
    assert mixed.precision == "int8" and 0 < len(kept) < n_layers
    assert meta["validation"]["trials"][0]["loss"] <= budget
    assert search["whole_model_loss"] == pytest.approx(whole_loss)
    assert set(kept) <= set(search["sensitivity"])
    # the most sensitive layer is the first one kept
    assert kept[0] == max(search["sensitivity"], key=search["sensitivity"].get)
    variant = onnx.load_from_string(mixed.payload)
    assert count_qdq(variant) < count_qdq(onnx.load_from_string(whole.payload))


def test_mismatch_check_fires_on_another_regions_data(base):
    na, apac = demo.region_data("NA"), demo.region_data("APAC")
    lenient = (base.for_region(int8_region()).with_calibrator("entropy", data=b64(na.calibration)))
    with pytest.warns(UserWarning, match="outside the calibrated ranges"):
        engine = lenient.with_validation(b64(apac.validation)).build()
    assert engine.metadata["calibration"]["mismatch"]["worst"] is not None
    with pytest.raises(rt.errors.CalibrationMismatch, match="another region"):
        (base.for_region(int8_region(strict=True))
         .with_calibrator("entropy", data=b64(na.calibration))
         .with_validation(b64(apac.validation)).build())
    # the region's own data passes without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (base.for_region(int8_region(strict=True))
         .with_calibrator("entropy", data=b64(apac.calibration))
         .with_validation(b64(apac.validation)).build())


class Recording(rt.MinMaxCalibrator):
    calls = 0

    def calibrate(self, *args, **kwargs):
        Recording.calls += 1
        return super().calibrate(*args, **kwargs)


def test_eu_never_runs_calibration(base):
    data = demo.region_data("EU")
    Recording.calls = 0
    engine = (base.for_region("EU").with_calibrator(Recording(), data=b64(data.calibration))
              .with_validation(b64(data.validation)).build())
    assert Recording.calls == 0 and engine.metadata["calibration"] is None
    assert count_qdq(onnx.load_from_string(engine.payload)) == 0
    engine = (base.for_region("NA").with_calibrator(Recording(), data=b64(data.calibration))
              .with_validation(b64(data.validation)).build())
    assert Recording.calls == 1


def test_opset11_model_builds_int8():
    model = make_cnn(opset=11)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 1, 8, 8)).astype(np.float32)
    engine = (rt.RegionalEngineBuilder.from_onnx(model).for_region(int8_region())
              .with_shape_profile(PROFILE).with_calibrator("entropy", data=b64(x[:64]))
              .with_validation(b64(x[64:])).build())
    assert engine.precision == "int8"
    variant = onnx.load_from_string(engine.payload)
    assert count_qdq(variant) > 0
    assert next(o.version for o in variant.opset_import if o.domain in ("", "ai.onnx")) >= 13


def test_engine_ranges_export_as_a_tensorrt_calibration_cache(base, tmp_path):
    data = demo.region_data("APAC")
    engine = (base.for_region("APAC").with_calibrator("entropy", data=b64(data.calibration))
              .with_validation(b64(data.validation)).build())
    amax = engine.metadata["calibration"]["amax"]
    cache = write_calibration_cache(tmp_path / "apac.cache", amax)
    back = read_calibration_cache(cache)
    assert back.keys() == amax.keys()
    for name, value in amax.items():
        assert back[name] == pytest.approx(value, rel=1e-6)

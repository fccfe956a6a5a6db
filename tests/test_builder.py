"""The fluent builder on the CPU: immutability, regions, fallback, compliance, bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import regiontrt as rt
from regiontrt import demo
from regiontrt.data.sources import split_batches
from regiontrt.graph.quantize import count_qdq
from regiontrt.precision.types import Precision

PROFILE = {"input": [(1, 1, 8, 8), (32, 1, 8, 8), (64, 1, 8, 8)]}


def batches(array: np.ndarray) -> list[dict[str, np.ndarray]]:
    return split_batches({"input": array}, 64)


@pytest.fixture(scope="module")
def base() -> rt.RegionalEngineBuilder:
    return rt.RegionalEngineBuilder.from_onnx(demo.model_path()).with_shape_profile(PROFILE)


def region_builder(base, region):
    data = demo.region_data(region)
    b = base.for_region(region).with_validation(batches(data.validation))
    if Precision.INT8 in rt.get_region(region).precisions:
        b = b.with_calibrator("entropy", data=batches(data.calibration))
    return b


def test_builder_is_immutable_and_fans_out(base):
    eu = base.for_region("EU")
    na = base.for_region("NA").with_precision("fp32")
    assert base.region is None
    assert eu.region.name == "EU" and na.region.name == "NA"
    assert eu is not base and eu._state.policy is None
    assert na._state.policy.precisions == (Precision.FP32,)
    assert eu._shared is base._shared  # the model is shared, not copied per region


def test_from_onnx_accepts_path_proto_and_bytes(tiny_cnn, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(tiny_cnn, path)
    for source in (str(path), path, tiny_cnn, tiny_cnn.SerializeToString()):
        builder = rt.RegionalEngineBuilder.from_onnx(source)
        assert builder._shared.sha256 == rt.RegionalEngineBuilder.from_onnx(tiny_cnn)._shared.sha256


@pytest.mark.parametrize("region", ["NA", "EU", "SEA", "APAC", "CERTIFIED"])
def test_each_preset_region_on_the_demo_model(base, region, tmp_path):
    engine = region_builder(base, region).build(tmp_path / f"{region}.engine")
    preset = rt.get_region(region)
    meta = engine.metadata
    assert engine.region == region
    assert Precision(engine.precision) in preset.precisions
    assert Precision(engine.precision) not in preset.forbidden
    chosen = meta["validation"]["trials"][-1]
    assert chosen["accepted"] and chosen["loss"] <= preset.budget
    variant = onnx.load_from_string(engine.payload)
    if Precision.INT8 in preset.forbidden:
        assert count_qdq(variant) == 0
        assert meta["calibration"] is None
    if region == "CERTIFIED":
        assert engine.precision == "fp32"
        assert all(i.data_type == onnx.TensorProto.FLOAT for i in variant.graph.initializer
                   if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))
    # the engine still classifies the region's digits
    data = demo.region_data(region)
    logits = engine.infer(data.validation[:64])["logits"]
    assert np.mean(logits.argmax(1) == data.labels[:64]) > 0.85
    assert rt.inspect(tmp_path / f"{region}.engine")["precision"] == engine.precision


def test_eu_refuses_int8_even_when_asked(base):
    with pytest.raises(rt.errors.PolicyViolation, match="forbids int8"):
        region_builder(base, "EU").with_precision(["int8", "fp16"]).build()
    with pytest.raises(rt.errors.PolicyViolation, match="forbids fp16"):
        region_builder(base, "CERTIFIED").with_precision("fp16").build()


def test_eu_refuses_a_model_that_already_holds_qdq(base, tmp_path):
    data = demo.region_data("NA")
    engine = region_builder(base, "NA").with_precision("int8").build()
    prequantized = onnx.load_from_string(engine.payload)
    assert count_qdq(prequantized) > 0
    b = rt.RegionalEngineBuilder.from_onnx(prequantized).for_region("EU")
    with pytest.raises(rt.errors.PolicyViolation, match="quantization nodes"):
        b.with_shape_profile(PROFILE).with_validation(batches(data.validation)).build()


def test_fp16_accuracy_against_fp32_on_the_demo_model(base):
    data = demo.region_data("CERTIFIED")
    engine = (base.for_region("EU").with_precision("fp16")
              .with_validation(batches(data.validation), metric="relative_l2").build())
    assert engine.precision == "fp16"
    loss = engine.metadata["validation"]["trials"][0]["loss"]
    assert 0 < loss < 1e-2  # fp16 changes the numbers, but little
    fp32 = rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("CERTIFIED") \
        .with_shape_profile(PROFILE).with_validation(batches(data.validation)).build()
    a = engine.infer(data.validation[:64])["logits"]
    b = fp32.infer(data.validation[:64])["logits"]
    assert np.mean(a.argmax(1) == b.argmax(1)) >= 0.98


def test_fallback_chain_and_its_error(base):
    data = demo.region_data("SEA")
    strict = rt.Region("STRICT", precisions=("int8", "fp16", "fp32"), budget=1e-6,
                       metric="relative_l2")
    b = (base.for_region(strict).with_validation(batches(data.validation))
         .with_calibrator("minmax", data=batches(data.calibration))
         .with_precision(rt.PrecisionPolicy(["int8", "fp16"], search_mixed=False)))
    with pytest.raises(rt.errors.AccuracyBudgetExceeded) as info:
        b.build()
    attempts = info.value.attempts
    assert [a.precision for a in attempts] == ["int8", "fp16"]
    assert all(a.loss is not None and a.loss > 1e-6 for a in attempts)
    assert "int8: loss" in str(info.value) and "fp16: loss" in str(info.value)
    # with fp32 allowed, the chain falls through to it
    engine = b.with_precision(rt.PrecisionPolicy(["int8", "fp16", "fp32"], search_mixed=False)) \
        .build()
    trials = engine.metadata["validation"]["trials"]
    assert [t["precision"] for t in trials] == ["int8", "fp16", "fp32"]
    assert [t["accepted"] for t in trials] == [False, False, True]
    assert engine.precision == "fp32"


def test_metadata_carries_provenance(base, tmp_path):
    engine = region_builder(base, "APAC").build(tmp_path / "a.engine")
    meta = rt.inspect(tmp_path / "a.engine")
    assert meta["model"]["sha256"] == base._shared.sha256
    assert len(meta["validation"]["data_fingerprint"]) == 64
    assert meta["backend"]["name"] == "onnxruntime"
    assert meta["toolchain"]["onnxruntime"]
    assert meta["region"]["name"] == "APAC" and meta["policy"]["class"].endswith("PrecisionPolicy")
    assert meta["shape_profiles"][0]["input"][2] == [64, 1, 8, 8]
    if engine.precision == "int8":
        assert len(meta["calibration"]["fingerprint"]) == 64
        assert meta["calibration"]["fingerprint"] != meta["validation"]["data_fingerprint"]


# -- bad input ------------------------------------------------------------------------------------

def test_unreadable_and_invalid_models(tmp_path):
    with pytest.raises(rt.errors.InvalidModelError, match="not found"):
        rt.RegionalEngineBuilder.from_onnx(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a protobuf" * 10)
    with pytest.raises(rt.errors.InvalidModelError):
        rt.RegionalEngineBuilder.from_onnx(garbage)
    broken = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["nowhere"], ["y"])], "g", [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    with pytest.raises(rt.errors.InvalidModelError, match="checker"):
        rt.RegionalEngineBuilder.from_onnx(broken)


def test_unknown_region_and_missing_region(base):
    with pytest.raises(rt.errors.UnknownRegionError, match="MARS"):
        base.for_region("MARS")
    with pytest.raises(rt.errors.RegionConfigError, match="for_region"):
        base.build()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "empty"),
        (np.zeros((0, 1, 8, 8), np.float32), "empty array"),
        (np.zeros((4, 8, 8), np.float32), "rank 3"),
        (np.zeros((4, 1, 9, 8), np.float32), "axis 2 is 9"),
        ({"image": np.zeros((4, 1, 8, 8), np.float32)}, "missing"),
        (["text"], "mapping or an array"),
    ],
)
def test_bad_validation_data(base, data, match):
    with pytest.raises(rt.errors.DataError, match=match):
        base.for_region("EU").with_validation(data).build()


def test_lossy_precision_needs_validation_data_and_int8_calibration_data(base):
    with pytest.raises(rt.errors.DataError, match="with_validation"):
        base.for_region("EU").build()
    data = demo.region_data("NA")
    with pytest.raises(rt.errors.DataError, match="calibration data"):
        base.for_region("NA").with_validation(batches(data.validation)).build()


def test_backend_not_installed_names_the_extra(base):
    from regiontrt.backends import _backend_class

    if _backend_class("tensorrt").is_available():
        pytest.skip("tensorrt is installed here; the error path needs a machine without it")
    with pytest.raises(rt.errors.BackendUnavailable, match=r"regiontrt\[tensorrt\]"):
        region_builder(base, "EU").with_backend("tensorrt").build()
    with pytest.raises(ValueError, match="unknown backend"):
        base.with_backend("tpu")

"""Builds without a shape profile: every declared shape on ONNX Runtime, headroom on TensorRT."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import regiontrt as rt
from regiontrt import demo
from regiontrt.backends import get_backend
from regiontrt.data.sources import split_batches
from regiontrt.errors import ShapeProfileError
from regiontrt.graph.io import TensorSpec, input_specs, load_model
from regiontrt.shapes.defaults import HEADROOM, choose_profiles, headroom_profile


def _eu_batches(size: int, count: int) -> list[dict[str, np.ndarray]]:
    x = demo.region_data("EU").validation[: size * count]
    return split_batches({"input": x}, size)


def test_onnxruntime_engine_validated_on_batches_of_8_takes_1_and_4(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="regiontrt"):
        engine = (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("EU")
                  .with_validation(_eu_batches(8, 4)).build())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert engine.profiles == []
    for batch in (1, 4, 8, 33):
        x = demo.region_data("EU").validation[:batch]
        assert engine.infer({"input": x})["logits"].shape == (batch, 10)
    with pytest.raises(rt.errors.InputError, match="axis 2"):  # static dims are still checked
        engine.infer({"input": np.zeros((1, 1, 9, 8), np.float32)})
    derived = engine.metadata["shape_profile_origin"]["derived"]
    assert derived == [{"input": [[1, 1, 8, 8], [8, 1, 8, 8], [8 * HEADROOM, 1, 8, 8]]}]


def test_headroom_rules() -> None:
    spec = TensorSpec("x", np.dtype("float32"), ("N", 3, "H", "W"))
    seen = [{"x": (8, 3, 48, 100)}, {"x": (4, 3, 48, 320)}]
    [rng] = headroom_profile([spec], seen).ranges.values()
    assert rng.min == (1, 3, 24, 50) and rng.opt == (8, 3, 48, 320)
    assert rng.max == (16, 3, 96, 640)
    with pytest.raises(ShapeProfileError, match="another rank"):
        headroom_profile([spec], [{"x": (1, 3, 48)}])


def test_static_models_get_their_shapes_and_tensorrt_needs_data_or_a_profile() -> None:
    static = [TensorSpec("x", np.dtype("float32"), (1, 3, 8, 8))]
    choice = choose_profiles(None, static, "tensorrt-rtx", None)
    assert choice.source == "static model" and choice.profiles[0].ranges["x"].max == (1, 3, 8, 8)
    dynamic = input_specs(load_model(demo.model_path()))
    with pytest.raises(ShapeProfileError, match="give a ShapeProfile"):
        choose_profiles(None, dynamic, "tensorrt-rtx", None)


def test_tensorrt_rtx_build_gets_a_profile_with_headroom_and_retargets_from_onnxruntime() -> None:
    if not get_backend("tensorrt-rtx").is_available():
        pytest.skip("needs tensorrt-rtx (pip install 'regiontrt[rtx]'; its builder runs on CPU)")
    base = rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("CERTIFIED")
    rtx = base.with_backend("tensorrt-rtx").with_validation(_eu_batches(8, 2)).build()
    assert rtx.metadata["shape_profile_origin"]["source"].startswith("derived")
    assert rtx.metadata["shape_profiles"] == [
        {"input": [[1, 1, 8, 8], [8, 1, 8, 8], [16, 1, 8, 8]]}]
    # an ONNX Runtime engine carries no profile; a TensorRT rebuild takes the derived one
    from regiontrt.build.retarget import retarget

    cpu = base.with_validation(_eu_batches(8, 2)).build()
    moved = retarget(cpu, "tensorrt-rtx")
    assert moved.profiles[0].ranges["input"].max == (16, 1, 8, 8)

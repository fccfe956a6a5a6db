"""Input dimensions declared as -1 or 0 are dynamic, as ONNX Runtime and TensorRT read them.

PaddleOCR's exporter writes PP-OCRv4's classifier with its batch axis as ``dim_value: -1``; the
synthetic models here declare their batch axis the same way (and as 0).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import regiontrt as rt
from regiontrt.calibration import get_calibrator
from regiontrt.data.sources import DataSource
from regiontrt.errors import DataError
from regiontrt.graph.io import input_specs, load_model, model_bytes, output_specs


def _relu_model(batch_dim: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 3, 4])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
        "g",
        [x],
        [y],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("batch_dim", [-1, 0])
def test_non_positive_dims_read_as_dynamic(batch_dim):
    model = _relu_model(batch_dim)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == batch_dim
    (spec,) = input_specs(load_model(model_bytes(model), check=False))
    assert spec.shape == (None, 3, 4)
    assert spec.is_dynamic
    assert output_specs(model)[0].shape == (None, 3, 4)


def test_positive_dims_stay_fixed():
    (spec,) = input_specs(_relu_model(2))
    assert spec.shape == (2, 3, 4)
    assert not spec.is_dynamic
    with pytest.raises(DataError):
        list(DataSource([{"x": np.ones((5, 3, 4), np.float32)}], input_specs(_relu_model(2))))


@pytest.mark.parametrize("batch_dim", [-1, 0])
def test_batches_of_any_size_calibrate_and_run(batch_dim):
    model = _relu_model(batch_dim)
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((n, 3, 4)).astype(np.float32)} for n in (2, 5, 1)]
    source = DataSource(batches, input_specs(model))
    assert [b["x"].shape[0] for b in source] == [2, 5, 1]
    # A mis-shaped non-batch axis is still refused.
    with pytest.raises(DataError):
        list(DataSource([{"x": np.ones((2, 4, 4), np.float32)}], input_specs(model)))

    result = get_calibrator("minmax").calibrate(model, batches)
    expected = max(float(np.abs(2 * b["x"]).max()) for b in batches)
    assert result.amax["m"] == pytest.approx(expected)
    assert result.num_samples == 8

    region = rt.Region("T", (rt.Precision.FP32,))
    engine = rt.RegionalEngineBuilder.from_onnx(model).for_region(region).build()
    for b in batches:
        (out,) = engine.infer(b).values()
        np.testing.assert_allclose(out, np.maximum(2 * b["x"], 0))


def test_clean_and_calibration_copies_free_the_dims_without_touching_the_model():
    from regiontrt.graph.clean import clean

    model = _relu_model(0)
    before = model.SerializeToString()
    cleaned = clean(model)
    for value in (cleaned.graph.input[0], cleaned.graph.output[0]):
        first = value.type.tensor_type.shape.dim[0]
        assert not first.HasField("dim_value")  # unnamed, or named by shape inference
    assert input_specs(cleaned)[0].shape == (None, 3, 4)
    assert output_specs(cleaned)[0].shape[1:] == (3, 4)
    assert not isinstance(output_specs(cleaned)[0].shape[0], int)
    assert model.SerializeToString() == before

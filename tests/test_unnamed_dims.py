"""Dimensions named with something that is no symbol ("?") are unnamed dynamic dimensions.

PP-OCRv4's direction classifier declares its input ``[-1, 3, "?", "?"]``. TensorRT reads two
dimensions of one name as equal, so a 48x192 profile was a contradiction and the TensorRT-RTX
build failed (found building the issue-20 model zoo).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import regiontrt as rt
from regiontrt.graph.io import input_specs, without_unsized_dims


def _model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3, "?", "?"])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_question_marks_become_unnamed_dims():
    freed = without_unsized_dims(_model())
    assert input_specs(freed)[0].shape == (None, 3, None, None)
    assert [d.dim_param for d in freed.graph.input[0].type.tensor_type.shape.dim] == [""] * 4


def test_a_profile_with_different_sizes_on_two_question_marks_builds_on_onnxruntime():
    engine = (rt.RegionalEngineBuilder.from_onnx(_model()).for_region("CERTIFIED")
              .with_shape_profile({"x": ((1, 3, 48, 192), (1, 3, 48, 192), (4, 3, 48, 192))})
              .build())
    x = np.ones((2, 3, 48, 192), np.float32)
    np.testing.assert_array_equal(engine.infer(x)["y"], x)


@pytest.mark.rtx
def test_a_profile_with_different_sizes_on_two_question_marks_builds_with_tensorrt_rtx():
    pytest.importorskip("tensorrt_rtx", reason="needs tensorrt-rtx (pip install 'regiontrt[rtx]')")
    engine = (rt.RegionalEngineBuilder.from_onnx(_model()).for_region("CERTIFIED")
              .with_backend("tensorrt-rtx")
              .with_tactics(rt.TacticSelector(optimization_level=0,
                                              compute_capabilities=("sm89",)))
              .with_shape_profile({"x": ((1, 3, 48, 192), (1, 3, 48, 192), (4, 3, 48, 192))})
              .build())
    assert engine.metadata["payload_format"] == "tensorrt-rtx-plan"

"""The build's check of the cleaned graph against the original model (regiontrt.graph.check)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

import regiontrt as rt
from regiontrt.errors import GraphPassError
from regiontrt.graph.check import check_pass, compare, generated_inputs, reference_outputs
from regiontrt.graph.io import input_specs

pytest.importorskip("onnxruntime", reason="needs onnxruntime, a required dependency")


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = oh.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _scale(factor: float) -> onnx.ModelProto:
    """y = x * factor, argmax index as a second (integer) output."""
    return _model(
        [oh.make_node("Mul", ["x", "k"], ["y"]), oh.make_node("ArgMax", ["y"], ["i"], axis=1)],
        [oh.make_tensor_value_info("x", TP.FLOAT, ["N", 4])],
        [oh.make_tensor_value_info("y", TP.FLOAT, ["N", 4]),
         oh.make_tensor_value_info("i", TP.INT64, ["N", 1])],
        [nh.from_array(np.array(factor, np.float32), "k")],
    )


def test_equal_graphs_pass_and_a_changed_one_names_the_pass() -> None:
    batches = [{"x": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)}]
    reference, changing = reference_outputs(_scale(2.0), batches)
    assert changing == set()
    result = check_pass("clean", reference, _scale(2.0), batches)
    assert result.max_abs_diff == 0.0 and result.batches == 1 and result.outputs == 2
    check_pass("clean", reference, _scale(2.0 * (1 + 1e-6)), batches)  # round-off passes
    with pytest.raises(GraphPassError, match=r"graph pass 'clean'.*output 'y'") as info:
        check_pass("clean", reference, _scale(-2.0), batches)
    assert info.value.pass_name == "clean"


def test_compare_is_exact_for_integers_strings_and_special_values() -> None:
    assert isinstance(compare(np.array([1, 2]), np.array([1, 3])), str)
    assert isinstance(compare(np.array(["a"], object), np.array(["b"], object)), str)
    assert compare(np.array(["a"], object), np.array(["a"], object)) == 0.0
    assert isinstance(compare(np.array([1.0]), np.array([1.0], np.float32)), str)  # dtype
    assert isinstance(compare(np.zeros((2, 3)), np.zeros((3, 2))), str)  # shape
    nan = np.array([np.nan, np.inf, 1.0])
    assert compare(nan, nan.copy()) == 0.0
    assert isinstance(compare(nan, np.array([0.0, np.inf, 1.0])), str)
    assert isinstance(compare(nan, np.array([np.nan, -np.inf, 1.0])), str)
    half = np.array([1000.0], np.float16)  # tolerance follows the output's own type
    assert compare(half, np.array([1000.5], np.float16)) == 0.5  # one float16 step
    # float32 at the default rtol (1e-3 of the output's scale): 0.5 passes, 3 does not
    assert compare(half.astype(np.float32), np.array([1000.5], np.float32)) == 0.5
    assert isinstance(compare(half.astype(np.float32), np.array([1003.0], np.float32)), str)


def test_unseeded_random_outputs_are_compared_by_shape_only() -> None:
    model = _model(
        [oh.make_node("RandomNormalLike", ["x"], ["r"]), oh.make_node("Add", ["x", "r"], ["y"])],
        [oh.make_tensor_value_info("x", TP.FLOAT, [2, 3])],
        [oh.make_tensor_value_info("y", TP.FLOAT, [2, 3])],
    )
    batches = [{"x": np.zeros((2, 3), np.float32)}]
    reference, changing = reference_outputs(model, batches)
    assert changing == {"y"}
    result = check_pass("clean", reference, model, batches, skip_values=changing)
    assert result.values_skipped == ("y",)


def test_generated_inputs_follow_types_and_shapes() -> None:
    specs = input_specs(oh.make_model(oh.make_graph(
        [], "g",
        [oh.make_tensor_value_info("f", TP.FLOAT, ["N", 3]),
         oh.make_tensor_value_info("i", TP.INT64, []),
         oh.make_tensor_value_info("b", TP.BOOL, [2]),
         oh.make_tensor_value_info("s", TP.STRING, [2])], [])))
    feeds = generated_inputs(specs, {"f": (5, 3)})
    assert feeds["f"].shape == (5, 3) and feeds["f"].dtype == np.float32
    assert feeds["i"].shape == () and feeds["i"].dtype == np.int64
    assert feeds["b"].dtype == bool and feeds["s"].dtype == object


def _cnn_builder(region: str = "CERTIFIED") -> rt.RegionalEngineBuilder:
    from conftest import make_cnn

    return rt.RegionalEngineBuilder.from_onnx(make_cnn()).for_region(region)


def test_fp32_build_without_data_checks_on_generated_inputs() -> None:
    engine = _cnn_builder().build()
    check = engine.metadata["graph_check"]
    assert check["checked"] and check["inputs"] == "generated inputs" and check["pass"] == "clean"
    assert check["max_abs_diff"] < 1e-4


def test_build_refuses_a_pass_that_changes_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong clean() (here: one that flips a weight's sign) is refused, data or not."""
    import regiontrt.graph.clean as mod

    real = mod.clean

    def wrong_clean(model: onnx.ModelProto, **kw: object) -> onnx.ModelProto:
        out = real(model, **kw)
        init = out.graph.initializer[0]
        init.CopyFrom(nh.from_array(-nh.to_array(init), init.name))
        return out

    monkeypatch.setattr(mod, "clean", wrong_clean)
    with pytest.raises(GraphPassError, match="'clean'"):
        _cnn_builder().build()
    data = [{"input": np.random.default_rng(1).normal(size=(4, 1, 8, 8)).astype(np.float32)}]
    with pytest.raises(GraphPassError, match="'clean'"):
        _cnn_builder().with_validation(data).build()


def test_scalar_and_unbatched_inputs_build_with_the_default_profile() -> None:
    """Window functions take a scalar; a 1-D input has no batch axis. Both build and run."""
    model = _model(
        [oh.make_node("HannWindow", ["n"], ["w"]), oh.make_node("Mul", ["w", "v"], ["y"])],
        [oh.make_tensor_value_info("n", TP.INT64, []),
         oh.make_tensor_value_info("v", TP.FLOAT, ["L"])],
        [oh.make_tensor_value_info("y", TP.FLOAT, ["L"])],
        opset=17,
    )
    data = [{"n": np.array(5, np.int64), "v": np.ones(5, np.float32)},
            {"n": np.array(7, np.int64), "v": np.ones(7, np.float32)}]
    engine = rt.RegionalEngineBuilder.from_onnx(model).for_region("CERTIFIED") \
        .with_validation(data).build()
    # ONNX Runtime needs no profile: none is set, and what a TensorRT rebuild would take is
    # recorded, derived from the data with headroom (axis 0 from 1, twice the largest seen)
    assert engine.metadata["shape_profiles"] == []
    origin = engine.metadata["shape_profile_origin"]
    assert origin["derived"] == [{"n": [[], [], []], "v": [[1], [7], [14]]}]
    assert origin["source"].startswith("none") and origin["headroom"] == 2
    out = engine.infer({"n": np.array(7, np.int64), "v": np.ones(7, np.float32)})["y"]
    np.testing.assert_allclose(out, np.hanning(8)[:7], atol=1e-6)

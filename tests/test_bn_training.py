"""``BatchNormalization(training_mode=1)`` through a real CERTIFIED build (issue 17, item 8).

Training-mode BatchNormalization normalises with the batch's own statistics and outputs updated
running statistics: folding it into a convolution (inference-mode arithmetic) would be wrong, so
it must stay unfused. The cases are ONNX's own node cases (``collect_testcases``: the models and
data of ``backend/test/data/node/test_batchnorm_*_training_mode``), compared with their expected
outputs; the caller's arrays must come back untouched (ONNX Runtime's kernel aliases the running
statistics to its inputs).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import regiontrt as rt
from regiontrt.graph.clean import clean

node_cases = pytest.importorskip("onnx.backend.test.case.node", reason="needs onnx's test cases")
Runner = pytest.importorskip("onnx.backend.test.runner", reason="needs onnx's runner").Runner


def _training_cases() -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [c for c in node_cases.collect_testcases()
                if c.kind == "node" and c.name.startswith("test_batchnorm")
                and "training" in c.name]


CASES = _training_cases()


def test_onnx_ships_the_training_mode_cases():
    assert {c.name for c in CASES} >= {"test_batchnorm_example_training_mode",
                                       "test_batchnorm_epsilon_training_mode"}


def _feeds(case) -> list[dict[str, np.ndarray]]:
    names = [v.name for v in case.model.graph.input]
    return [{n: np.array(numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v)
             for n, v in zip(names, ins)} for ins, _ in case.data_sets]


def _copies(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in feeds.items()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_certified_build_gives_the_expected_outputs(case, tmp_path):
    feeds = _feeds(case)
    pristine = [_copies(f) for f in feeds]
    engine = (rt.RegionalEngineBuilder.from_onnx(case.model).for_region("CERTIFIED")
              .with_backend("onnxruntime").with_validation(feeds)
              .build(tmp_path / "bn.engine"))
    for f, p in zip(feeds, pristine):  # the build did not write into the validation data
        assert all(np.array_equal(f[k], p[k]) for k in p)
    loaded = rt.load_engine(tmp_path / "bn.engine")
    for (_, expected), f, p in zip(case.data_sets, feeds, pristine):
        for _ in range(2):  # twice: nothing from the first run leaks into the second
            got = loaded.infer(f)
            Runner.assert_similar_outputs(list(expected), list(got.values()), case.rtol,
                                          case.atol)
            assert all(np.array_equal(f[k], p[k]) for k in p), "infer wrote into its inputs"
    assert engine.precision == "fp32"


def _conv_then_training_bn(stats: bool) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``Conv -> BatchNormalization(training_mode=1)`` with constant weights and statistics:
    the pattern ``clean`` folds in inference mode; ``stats``: the running statistics are graph
    outputs too (else only ``y``, which still uses the batch's statistics)."""
    rng = np.random.default_rng(0)
    consts = {"w": rng.standard_normal((4, 3, 3, 3)), "b": rng.standard_normal(4),
              "scale": rng.uniform(0.5, 2, 4), "bias": rng.standard_normal(4),
              "mean": rng.standard_normal(4), "var": rng.uniform(0.5, 2, 4)}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"],
                          ["y", "running_mean", "running_var"][:3 if stats else 1],
                          training_mode=1,
                          momentum=0.9, name="bn")],
        "conv_bn_training",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8]),
         helper.make_tensor_value_info("running_mean", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("running_var", TensorProto.FLOAT, [4])][:3 if stats else 1],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    onnx.checker.check_model(model)
    return model, {"x": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("stats", [True, False], ids=["with_stats", "y_only"])
def test_training_mode_is_kept_unfused_after_a_convolution(stats):
    model, _ = _conv_then_training_bn(stats)
    ops = [(n.op_type, {a.name: helper.get_attribute_value(a) for a in n.attribute})
           for n in clean(model).graph.node]
    assert [op for op, _ in ops] == ["Conv", "BatchNormalization"]
    assert ops[1][1]["training_mode"] == 1


def test_conv_then_training_bn_matches_the_reference_after_a_certified_build(tmp_path):
    from onnx.reference import ReferenceEvaluator

    model, feeds = _conv_then_training_bn(stats=True)
    expected = ReferenceEvaluator(model).run(None, feeds)
    # batch statistics: each channel's mean over the batch is the BN bias (not so in inference)
    bias = numpy_helper.to_array(model.graph.initializer[3])
    assert model.graph.initializer[3].name == "bias"
    assert np.allclose(expected[0].mean(axis=(0, 2, 3)), bias, atol=1e-4)
    engine = (rt.RegionalEngineBuilder.from_onnx(model).for_region("CERTIFIED")
              .with_backend("onnxruntime").with_validation([_copies(feeds)])
              .build(tmp_path / "conv_bn.engine"))
    got = rt.load_engine(tmp_path / "conv_bn.engine").infer(feeds)
    for name, want in zip(("y", "running_mean", "running_var"), expected):
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4)
    assert engine.precision == "fp32"


def test_training_bn_without_its_statistics_is_refused_before_any_build(tmp_path):
    """ONNX Runtime runs training mode only with all three outputs: the FP32 reference run
    refuses the model with a typed error (never an engine whose ``y`` used inference mode)."""
    model, feeds = _conv_then_training_bn(stats=False)
    with pytest.raises(rt.errors.InvalidModelError, match="BatchNormalization"):
        (rt.RegionalEngineBuilder.from_onnx(model).for_region("CERTIFIED")
         .with_backend("onnxruntime").with_validation([feeds]).build(tmp_path / "no.engine"))
    assert not any(tmp_path.iterdir())

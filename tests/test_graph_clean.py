"""Tests of regiontrt.graph.clean: folding, BatchNorm folding, dead-code removal."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

from regiontrt.errors import InvalidModelError
from regiontrt.graph.clean import clean, count_ops, fold_batchnorm
from regiontrt.graph.io import input_specs, output_specs

ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime, a required dependency")
Pair = tuple[onnx.ModelProto, onnx.ModelProto]

C = 4


def _f(name: str, arr: object) -> onnx.TensorProto:
    return nh.from_array(np.asarray(arr, dtype=np.float32), name)


def _bn(prefix: str, rng: np.random.Generator, c: int = C) -> list[onnx.TensorProto]:
    return [
        _f(f"{prefix}_s", rng.uniform(0.5, 1.5, c)),
        _f(f"{prefix}_b", rng.normal(0, 0.1, c)),
        _f(f"{prefix}_m", rng.normal(0, 0.1, c)),
        _f(f"{prefix}_v", rng.uniform(0.5, 2, c)),
    ]


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto],
    opset: int = 17,
) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", inputs, outputs, inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def resnet_block(seed: int = 0) -> onnx.ModelProto:
    """A residual block with Identity, Dropout, a dead branch, foldable Constants and junk."""
    rng = np.random.default_rng(seed)
    inits = [
        _f("w1", rng.normal(0, 0.3, (C, 3, 3, 3))),
        _f("w2", rng.normal(0, 0.3, (C, C, 3, 3))),
        _f("b2", rng.normal(0, 0.1, C)),
        *_bn("bn1", rng),
        *_bn("bn2", rng),
        _f("wsk", rng.normal(0, 0.3, (C, 3, 1, 1))),
        _f("fc_w", rng.normal(0, 0.3, (10, C))),
        _f("unused", rng.normal(size=(7,))),
    ]
    c1 = oh.make_tensor("c1v", TP.FLOAT, [10], rng.normal(0, 0.1, 10).tolist())
    c2 = oh.make_tensor("c2v", TP.FLOAT, [1], [2.0])
    n = oh.make_node
    nodes = [
        n("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["c1", "bn1_s", "bn1_b", "bn1_m", "bn1_v"], ["n1"], name="bn1"),
        n("Relu", ["n1"], ["r1"], name="relu1"),
        n("Identity", ["r1"], ["r1i"], name="identity"),
        n("Conv", ["r1i", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["c2", "bn2_s", "bn2_b", "bn2_m", "bn2_v"], ["n2"], name="bn2"),
        n("Conv", ["x", "wsk"], ["sk"], name="conv_skip"),
        n("Add", ["n2", "sk"], ["a"], name="add"),
        n("Relu", ["a"], ["r2"], name="relu2"),
        n("Dropout", ["r2"], ["dr"], name="dropout"),
        n("GlobalAveragePool", ["dr"], ["gp"], name="gap"),
        n("Flatten", ["gp"], ["fl"], name="flatten"),
        n("Constant", [], ["bias_a"], name="const_a", value=c1),
        n("Constant", [], ["bias_b"], name="const_b", value=c2),
        n("Mul", ["bias_a", "bias_b"], ["fc_b"], name="fold_me"),
        n("Gemm", ["fl", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
        n("Sigmoid", ["a"], ["dead1"], name="dead1"),
        n("Relu", ["dead1"], ["dead2"], name="dead2"),
    ]
    return _model(
        nodes,
        [oh.make_tensor_value_info("x", TP.FLOAT, ["N", 3, 8, 8])],
        [oh.make_tensor_value_info("logits", TP.FLOAT, ["N", 10])],
        inits,
    )


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # Disable ORT's own optimizer so the reference really is the unoptimised graph.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return list(sess.run(None, feeds))


def _assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, shape: tuple[int, ...]) -> None:
    for seed in (0, 1):
        x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
        for ref, got in zip(_run(a, {"x": x}), _run(b, {"x": x})):
            assert got.dtype == ref.dtype and got.shape == ref.shape
            atol = 1e-5 * float(np.abs(ref).max())
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=atol)


@pytest.fixture(scope="module")
def resnet_pair() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    model = resnet_block()
    return model, clean(model)


def test_removes_bn_identity_dropout_constants_and_dead_nodes(resnet_pair: Pair) -> None:
    model, cleaned = resnet_pair
    before, after = count_ops(model), count_ops(cleaned)
    assert before["BatchNormalization"] == 2 and after["BatchNormalization"] == 0
    for op in ("Identity", "Dropout", "Constant", "Mul", "Sigmoid"):
        assert before[op] >= 1 and after[op] == 0, op
    assert after["Relu"] == 2  # the dead Relu is gone, the two live ones stay
    assert after["Conv"] == 3 and after["Gemm"] == 1
    inits = {i.name for i in cleaned.graph.initializer}
    assert "unused" not in inits
    assert not {"bn1_s", "bn2_v", "w1"} & inits  # replaced by the folded weights


def test_outputs_equal_original(resnet_pair: Pair) -> None:
    model, cleaned = resnet_pair
    _assert_same_outputs(model, cleaned, (3, 3, 8, 8))


def test_interface_and_model_fields_preserved() -> None:
    model = resnet_block()
    model.producer_name = "tester"
    model.metadata_props.add(key="origin", value="unit-test")
    cleaned = clean(model)
    assert input_specs(cleaned) == input_specs(model)
    assert output_specs(cleaned) == output_specs(model)
    assert cleaned.ir_version == model.ir_version
    assert list(cleaned.opset_import) == list(model.opset_import)
    assert cleaned.producer_name == "tester"
    assert {p.key: p.value for p in cleaned.metadata_props} == {"origin": "unit-test"}
    onnx.checker.check_model(cleaned, full_check=True)  # also checks the topological order
    assert len(cleaned.graph.value_info) > 0  # shapes inferred for intermediate tensors


def test_argument_not_mutated() -> None:
    model = resnet_block()
    before = model.SerializeToString()
    clean(model)
    fold_batchnorm(model)
    assert model.SerializeToString() == before


def test_clean_is_a_fixed_point(resnet_pair: Pair) -> None:
    _, cleaned = resnet_pair
    again = clean(cleaned)
    assert count_ops(again) == count_ops(cleaned)
    _assert_same_outputs(cleaned, again, (2, 3, 8, 8))


def test_fold_batchnorm_alone_touches_only_bn() -> None:
    model = resnet_block()
    folded = fold_batchnorm(model)
    before, after = count_ops(model), count_ops(folded)
    assert after["BatchNormalization"] == 0
    before.pop("BatchNormalization")
    assert after == before
    _assert_same_outputs(model, folded, (2, 3, 8, 8))


def test_fold_batchnorm_can_be_disabled() -> None:
    cleaned = clean(resnet_block(), fold_batchnorm=False)
    assert count_ops(cleaned)["BatchNormalization"] == 2
    assert count_ops(cleaned)["Identity"] == 0


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_bn_folded(group: int) -> None:
    rng = np.random.default_rng(3)
    cin, cout = 4, 6
    inits = [_f("w", rng.normal(0, 0.3, (cin, cout // group, 3, 3))), *_bn("bn", rng, cout)]
    nodes = [
        oh.make_node("ConvTranspose", ["x", "w"], ["c"], group=group, strides=[2, 2]),
        oh.make_node("BatchNormalization", ["c", "bn_s", "bn_b", "bn_m", "bn_v"], ["y"]),
    ]
    model = _model(
        nodes,
        [oh.make_tensor_value_info("x", TP.FLOAT, [2, cin, 5, 5])],
        [oh.make_tensor_value_info("y", TP.FLOAT, [2, cout, 11, 11])],
        inits,
    )
    cleaned = clean(model)
    assert count_ops(cleaned) == {"ConvTranspose": 1}
    assert [o.name for o in cleaned.graph.output] == ["y"]
    _assert_same_outputs(model, cleaned, (2, cin, 5, 5))


def test_bn_kept_when_conv_output_is_shared_or_no_conv() -> None:
    rng = np.random.default_rng(4)
    inits = [_f("w", rng.normal(0, 0.3, (C, C, 1, 1))), *_bn("bn", rng), *_bn("bnr", rng)]
    nodes = [
        oh.make_node("Conv", ["x", "w"], ["c"]),
        oh.make_node("BatchNormalization", ["c", "bn_s", "bn_b", "bn_m", "bn_v"], ["n"]),
        oh.make_node("Add", ["n", "c"], ["a"]),  # c is read twice: folding would change it
        oh.make_node("Relu", ["a"], ["r"]),
        oh.make_node("BatchNormalization", ["r", "bnr_s", "bnr_b", "bnr_m", "bnr_v"], ["y"]),
    ]
    model = _model(
        nodes,
        [oh.make_tensor_value_info("x", TP.FLOAT, [1, C, 3, 3])],
        [oh.make_tensor_value_info("y", TP.FLOAT, [1, C, 3, 3])],
        inits,
    )
    cleaned = clean(model)
    assert count_ops(cleaned)["BatchNormalization"] == 2
    _assert_same_outputs(model, cleaned, (1, C, 3, 3))


def test_identity_to_output_keeps_output_name_and_passthrough_stays_valid() -> None:
    nodes = [
        oh.make_node("Relu", ["x"], ["r"]),
        oh.make_node("Identity", ["r"], ["y"]),
        oh.make_node("Identity", ["x"], ["z"]),  # graph input straight to output: must stay
        oh.make_node("Dropout", ["r"], ["d", "mask"]),  # mask is read: Dropout must stay
        oh.make_node("Cast", ["mask"], ["m"], to=TP.FLOAT),
        oh.make_node("Mul", ["d", "m"], ["w"]),
    ]
    io = [oh.make_tensor_value_info(n, TP.FLOAT, [2, 3]) for n in ("x", "y", "z", "w")]
    model = _model(nodes, io[:1], io[1:], [])
    cleaned = clean(model)
    ops = count_ops(cleaned)
    assert ops["Identity"] == 1 and ops["Dropout"] == 1
    assert [o.name for o in cleaned.graph.output] == ["y", "z", "w"]
    relu = next(n for n in cleaned.graph.node if n.op_type == "Relu")
    assert list(relu.output) == ["y"]
    _assert_same_outputs(model, cleaned, (2, 3))


def test_static_shape_path_folded() -> None:
    x = oh.make_tensor_value_info("x", TP.FLOAT, [2, 3, 4])
    y = oh.make_tensor_value_info("y", TP.FLOAT, [2, 12])
    nodes = [
        oh.make_node("Shape", ["x"], ["s"]),
        oh.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        oh.make_node("Concat", ["b", "minus1"], ["shape"], axis=0),
        oh.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = [nh.from_array(np.array([0], np.int64), "zero")]
    inits.append(nh.from_array(np.array([-1], np.int64), "minus1"))
    model = _model(nodes, [x], [y], inits)
    cleaned = clean(model)
    assert count_ops(cleaned) == {"Reshape": 1}
    shape = next(i for i in cleaned.graph.initializer if i.data_type == TP.INT64)
    assert nh.to_array(shape).tolist() == [2, -1]
    _assert_same_outputs(model, cleaned, (2, 3, 4))


def test_count_ops_includes_subgraphs() -> None:
    branch = oh.make_graph(
        [oh.make_node("Neg", ["x"], ["t"]), oh.make_node("Abs", ["t"], ["u"])],
        "b",
        [],
        [oh.make_tensor_value_info("u", TP.FLOAT, [2])],
    )
    nodes = [oh.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)]
    model = _model(
        nodes,
        [
            oh.make_tensor_value_info("cond", TP.BOOL, []),
            oh.make_tensor_value_info("x", TP.FLOAT, [2]),
        ],
        [oh.make_tensor_value_info("y", TP.FLOAT, [2])],
        [],
    )
    assert count_ops(model) == {"If": 1, "Neg": 2, "Abs": 2}
    assert count_ops(clean(model)) == count_ops(model)


def test_bad_input_raises_typed_error() -> None:
    with pytest.raises(InvalidModelError):
        clean(b"\x00\x01 not onnx")  # type: ignore[arg-type]
    with pytest.raises(InvalidModelError):
        fold_batchnorm("model.onnx")  # type: ignore[arg-type]


def test_qdq_on_constant_weights_is_not_folded() -> None:
    rng = np.random.default_rng(5)
    inits = [
        _f("w", rng.normal(0, 0.3, (C, C, 1, 1))),
        _f("scale", 0.01),
        nh.from_array(np.array(0, np.int8), "zp"),
    ]
    nodes = [
        oh.make_node("QuantizeLinear", ["w", "scale", "zp"], ["wq"]),
        oh.make_node("DequantizeLinear", ["wq", "scale", "zp"], ["wdq"]),
        oh.make_node("Conv", ["x", "wdq"], ["y"]),
    ]
    model = _model(
        nodes,
        [oh.make_tensor_value_info("x", TP.FLOAT, [1, C, 3, 3])],
        [oh.make_tensor_value_info("y", TP.FLOAT, [1, C, 3, 3])],
        inits,
    )
    cleaned = clean(model)
    assert count_ops(cleaned) == count_ops(model)
    _assert_same_outputs(model, cleaned, (1, C, 3, 3))


# -- constructs clean() must respect or leave alone (issue 13) -----------------------------------


def _ort(model: onnx.ModelProto, feeds: dict[str, object]) -> list[object]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return list(sess.run(None, feeds))


def test_shape_with_start_folds_to_the_sliced_shape() -> None:
    """Shape(x, start=1) of a 3x4x5 tensor is [4, 5], folded as such (not [3, 4, 5])."""
    nodes = [oh.make_node("Shape", ["x"], ["y"], start=1)]
    model = _model(nodes, [oh.make_tensor_value_info("x", TP.FLOAT, [3, 4, 5])],
                   [oh.make_tensor_value_info("y", TP.INT64, [2])], [], opset=15)
    cleaned = clean(model)
    onnx.checker.check_model(cleaned, full_check=True)
    assert count_ops(cleaned)["Shape"] == 0  # folded...
    x = np.zeros((3, 4, 5), np.float32)
    assert _ort(cleaned, {"x": x})[0].tolist() == [4, 5]  # ...to the right value


@pytest.mark.parametrize(("start", "end", "index"), [(1, None, 1), (-2, None, 0), (0, -1, 2)])
def test_sliced_shape_of_a_dynamic_tensor_is_not_folded_wrongly(
    start: int, end: int | None, index: int
) -> None:
    """Gather(Shape(x, start, end), i) of x [N, 4, 5, 6]: GraphSurgeon's shape folder would index
    the full shape; clean() must leave it to run time or fold it right."""
    attrs = {"start": start} if end is None else {"start": start, "end": end}
    nodes = [
        oh.make_node("Shape", ["x"], ["s"], **attrs),
        oh.make_node("Gather", ["s", "i"], ["y"], axis=0),
    ]
    inits = [nh.from_array(np.array(index, np.int64), "i")]
    model = _model(nodes, [oh.make_tensor_value_info("x", TP.FLOAT, ["N", 4, 5, 6])],
                   [oh.make_tensor_value_info("y", TP.INT64, [])], inits, opset=15)
    cleaned = clean(model)
    x = np.zeros((2, 4, 5, 6), np.float32)
    want = list(x.shape)[slice(start, end)][index]
    assert _ort(model, {"x": x})[0] == want
    assert _ort(cleaned, {"x": x})[0] == want


def _expanded(op: str, opset: int, inputs: dict[str, tuple[int, list[int]]],
              outputs: dict[str, tuple[int, list[int]]], **attrs: object) -> onnx.ModelProto:
    """A model holding ``op`` written out as its ONNX function body (as exporters inline it)."""
    from onnx.backend.test.case.node import function_testcase_helper

    node = oh.make_node(op, list(inputs), list(outputs), **attrs)
    types = [oh.make_tensor_type_proto(t, s) for t, s in inputs.values()]
    expanded, _ = function_testcase_helper(node, types, "t", [oh.make_opsetid("", opset)])
    graph = oh.make_graph(
        expanded[0][0], "expanded",
        [oh.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [oh.make_tensor_value_info(n, t, s) for n, (t, s) in outputs.items()],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


@pytest.mark.parametrize("case", ["attention", "affine_grid"])
def test_function_expanded_models_stay_valid_and_equal(case: str) -> None:
    """Decomposed Attention (Shape start/end everywhere) and AffineGrid (If branches)."""
    rng = np.random.default_rng(0)
    if case == "attention":
        f = TP.FLOAT
        model = _expanded("Attention", 23, {"Q": (f, [2, 3, 4, 8]), "K": (f, [2, 3, 6, 8]),
                                            "V": (f, [2, 3, 6, 8])}, {"Y": (f, [2, 3, 4, 8])})
        feeds = {k: rng.normal(size=s).astype(np.float32)
                 for k, s in (("Q", (2, 3, 4, 8)), ("K", (2, 3, 6, 8)), ("V", (2, 3, 6, 8)))}
    else:
        model = _expanded("AffineGrid", 20, {"theta": (TP.FLOAT, [2, 2, 3]),
                                             "size": (TP.INT64, [4])},
                          {"grid": (TP.FLOAT, [2, 5, 6, 2])}, align_corners=0)
        feeds = {"theta": rng.normal(size=(2, 2, 3)).astype(np.float32),
                 "size": np.array([2, 3, 5, 6], np.int64)}
    onnx.checker.check_model(model, full_check=True)
    cleaned = clean(model)
    onnx.checker.check_model(cleaned, full_check=True)
    assert len(cleaned.graph.node) < len(model.graph.node)  # it did clean something
    for got, want in zip(_ort(cleaned, feeds), _ort(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_optional_input_is_left_alone() -> None:
    """An optional-typed input through Identity (GraphSurgeon cannot represent optionals)."""
    opt = oh.make_optional_type_proto(oh.make_tensor_type_proto(TP.FLOAT, [3]))
    x = oh.make_value_info("x", opt)
    y = oh.make_value_info("y", opt)
    model = _model([oh.make_node("Identity", ["x"], ["y"])], [x], [y], [], opset=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # left alone on purpose, not as a fallback
        cleaned = clean(model)
    onnx.checker.check_model(cleaned, full_check=True)
    assert [n.op_type for n in cleaned.graph.node] == ["Identity"]
    assert cleaned.graph.input[0].type == opt
    value = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(_ort(cleaned, {"x": value})[0], value)


def test_sequence_model_is_left_alone() -> None:
    nodes = [
        oh.make_node("Identity", ["a"], ["a2"]),
        oh.make_node("SequenceConstruct", ["a2", "b"], ["seq"]),
        oh.make_node("ConcatFromSequence", ["seq"], ["y"], axis=0),
    ]
    f2 = [oh.make_tensor_value_info(n, TP.FLOAT, [2]) for n in ("a", "b")]
    model = _model(nodes, f2, [oh.make_tensor_value_info("y", TP.FLOAT, [4])], [])
    cleaned = clean(model)
    assert [n.op_type for n in cleaned.graph.node] == [n.op_type for n in model.graph.node]
    feeds = {"a": np.ones(2, np.float32), "b": np.zeros(2, np.float32)}
    np.testing.assert_array_equal(_ort(cleaned, feeds)[0], _ort(model, feeds)[0])


def test_a_result_the_checker_refuses_is_never_returned(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """When a pass produces an invalid graph, clean() warns and falls back, never returns it."""
    import regiontrt.graph.clean as mod

    model = resnet_block()

    def broken(graph: object, gs: object) -> None:  # a "fold" that disconnects a tensor
        node = next(n for n in graph.nodes if n.op == "Gemm")  # type: ignore[attr-defined]
        node.inputs[0] = gs.Variable("nowhere", dtype=np.float32)  # type: ignore[attr-defined]

    monkeypatch.setattr(mod, "_fold_constants", broken)
    with pytest.warns(RuntimeWarning, match="clean skipped"):
        cleaned = clean(model)
    onnx.checker.check_model(cleaned, full_check=True)
    assert count_ops(cleaned)["Identity"] == 0  # the conservative pass still ran
    _assert_same_outputs(model, cleaned, (2, 3, 8, 8))

"""Tests of regiontrt.graph.fp16: float16 conversion with casts and a float32 block list."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

from regiontrt.errors import InvalidModelError
from regiontrt.graph.clean import clean, count_ops
from regiontrt.graph.fp16 import DEFAULT_FP32_OPS, cast_count, to_fp16
from regiontrt.graph.io import input_specs, output_specs

ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime, a required dependency")
Pair = tuple[onnx.ModelProto, onnx.ModelProto]

D, T = 8, 5


def _f(name: str, arr: object) -> onnx.TensorProto:
    return nh.from_array(np.asarray(arr, dtype=np.float32), name)


def _i(name: str, values: list[int]) -> onnx.TensorProto:
    return nh.from_array(np.asarray(values, dtype=np.int64), name)


def transformer_block(seed: int = 0) -> onnx.ModelProto:
    """Attention + LayerNorm + a decomposed LayerNorm + Exp gate + an int64 shape path."""
    rng = np.random.default_rng(seed)
    inits = [
        _f("gamma", rng.uniform(0.5, 1.5, D)),
        _f("beta", rng.normal(0, 0.1, D)),
        *(_f(w, rng.normal(0, D**-0.5, (D, D))) for w in ("wq", "wk", "wv")),
        _f("wo", rng.normal(0, (T * D) ** -0.5, (T * D, 4))),
        _f("eps", [1e-5]),
        _i("zero", [0]),
        _i("minus1", [-1]),
    ]
    scale = oh.make_tensor("scale", TP.FLOAT, [], [D**-0.5])
    n = oh.make_node
    nodes = [
        n("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1),
        n("MatMul", ["ln", "wq"], ["q"], name="mm_q"),
        n("MatMul", ["ln", "wk"], ["k"], name="mm_k"),
        n("MatMul", ["ln", "wv"], ["v"], name="mm_v"),
        n("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        n("MatMul", ["q", "kt"], ["s"], name="mm_s"),
        n("Constant", [], ["scale_c"], name="scale_const", value=scale),
        n("Mul", ["s", "scale_c"], ["ss"], name="mul_scale"),
        n("Softmax", ["ss"], ["p"], name="softmax", axis=-1),
        n("MatMul", ["p", "v"], ["att"], name="mm_att"),
        n("Add", ["x", "att"], ["h"], name="residual"),
        n("ReduceMean", ["h"], ["mu"], name="mean", axes=[-1]),
        n("Sub", ["h", "mu"], ["d"], name="center"),
        n("Mul", ["d", "d"], ["d2"], name="square"),
        n("ReduceMean", ["d2"], ["var"], name="variance", axes=[-1]),
        n("Add", ["var", "eps"], ["ve"], name="add_eps"),
        n("Sqrt", ["ve"], ["sd"], name="std"),
        n("Div", ["d", "sd"], ["hn"], name="normalize"),
        n("Exp", ["hn"], ["e"], name="exp"),
        n("Mul", ["hn", "e"], ["g"], name="gate"),
        n("Shape", ["x"], ["xs"], name="shape"),
        n("Gather", ["xs", "zero"], ["batch"], name="gather_batch", axis=0),
        n("Concat", ["batch", "minus1"], ["new_shape"], name="concat_shape", axis=0),
        n("Reshape", ["g", "new_shape"], ["flat"], name="reshape"),
        n("MatMul", ["flat", "wo"], ["y"], name="mm_out"),
    ]
    graph = oh.make_graph(
        nodes,
        "transformer",
        [oh.make_tensor_value_info("x", TP.FLOAT, ["N", T, D])],
        [
            oh.make_tensor_value_info("y", TP.FLOAT, ["N", 4]),
            oh.make_tensor_value_info("hn", TP.FLOAT, ["N", T, D]),
        ],
        inits,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def resnet_block(seed: int = 0) -> onnx.ModelProto:
    """Conv-BN-Relu-Conv-BN-Add-Relu, GlobalAveragePool, Flatten, Gemm."""
    rng = np.random.default_rng(seed)
    c = 4
    inits = [_f("w1", rng.normal(0, 0.3, (c, 3, 3, 3))), _f("w2", rng.normal(0, 0.3, (c, c, 3, 3)))]
    for k in ("bn1", "bn2"):
        inits += [
            _f(f"{k}_s", rng.uniform(0.5, 1.5, c)),
            _f(f"{k}_b", rng.normal(0, 0.1, c)),
            _f(f"{k}_m", rng.normal(0, 0.1, c)),
            _f(f"{k}_v", rng.uniform(0.5, 2, c)),
        ]
    inits += [_f("wsk", rng.normal(0, 0.3, (c, 3, 1, 1))), _f("fc_w", rng.normal(0, 0.3, (10, c)))]
    inits += [_f("fc_b", rng.normal(0, 0.1, 10))]
    n = oh.make_node
    nodes = [
        n("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["c1", "bn1_s", "bn1_b", "bn1_m", "bn1_v"], ["n1"], name="bn1"),
        n("Relu", ["n1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["c2", "bn2_s", "bn2_b", "bn2_m", "bn2_v"], ["n2"], name="bn2"),
        n("Conv", ["x", "wsk"], ["sk"], name="conv_skip"),
        n("Add", ["n2", "sk"], ["a"], name="add"),
        n("Relu", ["a"], ["r2"], name="relu2"),
        n("GlobalAveragePool", ["r2"], ["gp"], name="gap"),
        n("Flatten", ["gp"], ["fl"], name="flatten"),
        n("Gemm", ["fl", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = oh.make_graph(
        nodes,
        "resnet",
        [oh.make_tensor_value_info("x", TP.FLOAT, ["N", 3, 8, 8])],
        [oh.make_tensor_value_info("logits", TP.FLOAT, ["N", 10])],
        inits,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return list(sess.run(None, feeds))


def _rel_l2(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.linalg.norm(ref - got.astype(np.float64)) / np.linalg.norm(ref))


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: node for node in model.graph.node for o in node.output}


@pytest.fixture(scope="module", params=["transformer", "resnet"])
def pair(request: pytest.FixtureRequest) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    build = transformer_block if request.param == "transformer" else resnet_block
    fp32 = clean(build())
    return fp32, to_fp16(fp32)


def _feeds(model: onnx.ModelProto, seed: int = 1, batch: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in input_specs(model):
        shape = [d if isinstance(d, int) else batch for d in spec.shape]
        feeds[spec.name] = rng.normal(size=shape).astype(spec.dtype)
    return feeds


def test_interface_keeps_float32_and_checker_passes(pair: Pair) -> None:
    fp32, fp16 = pair
    onnx.checker.check_model(fp16, full_check=True)
    assert input_specs(fp16) == input_specs(fp32)
    assert output_specs(fp16) == output_specs(fp32)
    assert all(s.dtype == np.float32 for s in (*input_specs(fp16), *output_specs(fp16)))


def test_numerics_close_to_fp32(pair: Pair) -> None:
    fp32, fp16 = pair
    for seed in (1, 2):
        feeds = _feeds(fp32, seed)
        ref, got = _run(fp32, feeds), _run(fp16, feeds)
        for r, g in zip(ref, got):
            assert g.dtype == np.float32
            assert _rel_l2(r, g) < 1e-2


def test_compute_really_runs_in_float16(pair: Pair) -> None:
    _, fp16 = pair
    types = _types(fp16)
    heavy = [n for n in fp16.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    assert heavy
    for node in heavy:
        assert all(types[i] == TP.FLOAT16 for i in node.input if i), node.name
    inits = {i.name: i.data_type for i in fp16.graph.initializer}
    weights = [i for n in heavy for i in n.input if i in inits]
    assert weights and all(inits[w] == TP.FLOAT16 for w in weights)


def test_blocked_ops_stay_float32(pair: Pair) -> None:
    fp32, fp16 = pair
    types = _types(fp16)
    blocked = [n for n in fp16.graph.node if n.op_type in DEFAULT_FP32_OPS]
    assert len(blocked) == sum(1 for n in fp32.graph.node if n.op_type in DEFAULT_FP32_OPS)
    for node in blocked:
        for name in (*node.input, *node.output):
            if name and types[name] in (TP.FLOAT, TP.FLOAT16):
                assert types[name] == TP.FLOAT, (node.name, name)


def test_no_cancelling_cast_chains(pair: Pair) -> None:
    _, fp16 = pair
    producers = _producers(fp16)
    for node in fp16.graph.node:
        if node.op_type == "Cast":
            before = producers.get(node.input[0])
            assert before is None or before.op_type != "Cast", node.name


def test_casts_only_at_region_boundaries() -> None:
    fp32 = clean(transformer_block())
    fp16 = to_fp16(fp32)
    # Boundaries: x -> LN, x -> residual (island-free) ..., each tensor cast at most once per type.
    keys = [(n.input[0], n.attribute[0].i) for n in fp16.graph.node if n.op_type == "Cast"]
    assert len(keys) == len(set(keys))
    assert cast_count(fp16) == len(keys) > 0
    assert cast_count(fp32) == 0


def test_transformer_regions_and_islands() -> None:
    fp16 = to_fp16(clean(transformer_block()))
    types = _types(fp16)
    by_name = {n.name: n for n in fp16.graph.node}
    # The decomposed normalisation's eps addition stays float32 (its input is a kept ReduceMean).
    assert types[by_name["add_eps"].output[0]] == TP.FLOAT
    # Attention logits and the gate run in float16.
    assert types[by_name["mm_s"].output[0]] == TP.FLOAT16
    assert types[by_name["gate"].output[0]] == TP.FLOAT16
    # hn is a graph output read inside too: float16 readers take the Div's renamed float16
    # output, and a Cast writes the float32 graph output under its original name.
    half = by_name["normalize"].output[0]
    assert half != "hn" and types[half] == TP.FLOAT16
    cast = next(n for n in fp16.graph.node if list(n.output) == ["hn"])
    assert cast.op_type == "Cast" and list(cast.input) == [half]
    assert list(by_name["exp"].input) == ["hn"]  # Exp is kept: it reads the float32 tensor


def test_int64_shape_path_untouched() -> None:
    fp32 = transformer_block()
    fp16 = to_fp16(fp32)
    before = {n.name: n for n in fp32.graph.node}
    types = _types(fp16)
    for node in fp16.graph.node:
        if node.name in ("shape", "gather_batch", "concat_shape"):
            assert list(node.input) == list(before[node.name].input)
            assert list(node.output) == list(before[node.name].output)
            assert types[node.output[0]] == TP.INT64
    reshape = next(n for n in fp16.graph.node if n.op_type == "Reshape")
    assert reshape.input[1] == "new_shape"
    inits = {i.name: i for i in fp16.graph.initializer}
    assert inits["zero"].data_type == inits["minus1"].data_type == TP.INT64
    # Shape reads x itself: no cast is inserted just to read a shape.
    assert next(n for n in fp16.graph.node if n.op_type == "Shape").input[0] == "x"


def test_fp32_nodes_honoured() -> None:
    fp32 = transformer_block()
    fp16 = to_fp16(fp32, fp32_nodes=["mm_q"])
    types = _types(fp16)
    node = next(n for n in fp16.graph.node if n.name == "mm_q")
    assert types[node.input[0]] == types[node.input[1]] == types[node.output[0]] == TP.FLOAT
    other = next(n for n in fp16.graph.node if n.name == "mm_k")
    assert types[other.output[0]] == TP.FLOAT16
    feeds = _feeds(fp32)
    assert _rel_l2(_run(fp32, feeds)[0], _run(fp16, feeds)[0]) < 1e-2


def test_fp32_ops_overridable() -> None:
    fp32 = transformer_block()
    everything_half = to_fp16(fp32, fp32_ops=())
    types = _types(everything_half)
    softmax = next(n for n in everything_half.graph.node if n.op_type == "Softmax")
    assert types[softmax.output[0]] == TP.FLOAT16
    all_matmul = to_fp16(fp32, fp32_ops=DEFAULT_FP32_OPS | {"MatMul"})
    types = _types(all_matmul)
    matmuls = [n for n in all_matmul.graph.node if n.op_type == "MatMul"]
    assert all(types[n.output[0]] == TP.FLOAT for n in matmuls)


def test_unknown_fp32_node_and_bad_model_raise() -> None:
    with pytest.raises(InvalidModelError, match="no_such_node"):
        to_fp16(transformer_block(), fp32_nodes=["no_such_node"])
    with pytest.raises(InvalidModelError):
        to_fp16(b"not a model")  # type: ignore[arg-type]


def test_argument_not_mutated() -> None:
    model = transformer_block()
    before = model.SerializeToString()
    to_fp16(model)
    assert model.SerializeToString() == before


def test_second_conversion_adds_nothing(pair: Pair) -> None:
    _, fp16 = pair
    again = to_fp16(fp16)
    assert cast_count(again) == cast_count(fp16)
    assert count_ops(again) == count_ops(fp16)
    feeds = _feeds(fp16)
    for a, b in zip(_run(fp16, feeds), _run(again, feeds)):
        np.testing.assert_array_equal(a, b)


def test_graph_with_nothing_to_convert_is_unchanged() -> None:
    x = oh.make_tensor_value_info("x", TP.FLOAT, [2, 6])
    y = oh.make_tensor_value_info("y", TP.FLOAT, [2, 6])
    node = oh.make_node("Softmax", ["x"], ["p"], name="sm", axis=-1)
    node2 = oh.make_node("Exp", ["p"], ["y"], name="exp")
    model = oh.make_model(
        oh.make_graph([node, node2], "g", [x], [y]), opset_imports=[oh.make_opsetid("", 17)]
    )
    fp16 = to_fp16(model)
    assert cast_count(fp16) == 0
    assert count_ops(fp16) == count_ops(model)
    feeds = {"x": np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)}
    np.testing.assert_array_equal(_run(model, feeds)[0], _run(fp16, feeds)[0])


def test_overflowing_initializer_clamped_with_warning() -> None:
    x = oh.make_tensor_value_info("x", TP.FLOAT, [1, 1])
    y = oh.make_tensor_value_info("y", TP.FLOAT, [1, 3])
    big = _f("big", [[1e6, -1e6, 2.0]])
    model = oh.make_model(
        oh.make_graph([oh.make_node("MatMul", ["x", "big"], ["y"])], "g", [x], [y], [big]),
        opset_imports=[oh.make_opsetid("", 17)],
    )
    with pytest.warns(RuntimeWarning, match="2 finite"):
        fp16 = to_fp16(model)
    values = nh.to_array(next(i for i in fp16.graph.initializer if i.name == "big"))
    assert values.dtype == np.float16
    np.testing.assert_array_equal(values, np.array([[65504, -65504, 2]], dtype=np.float16))
    out = _run(fp16, {"x": np.ones((1, 1), np.float32)})[0]
    assert np.isfinite(out).all()


def test_shared_initializer_gets_a_float16_twin() -> None:
    # "w" feeds a converted MatMul and a kept Softmax-side Mul island: both read it as they need.
    x = oh.make_tensor_value_info("x", TP.FLOAT, [4, 4])
    outs = [oh.make_tensor_value_info(n, TP.FLOAT, [4, 4]) for n in ("y", "z")]
    w = _f("w", np.eye(4) * 0.5)
    nodes = [
        oh.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        oh.make_node("Relu", ["m"], ["y"], name="relu"),
        oh.make_node("Softmax", ["x"], ["p"], name="sm", axis=-1),
        oh.make_node("Mul", ["p", "w"], ["z"], name="mul"),
    ]
    model = oh.make_model(
        oh.make_graph(nodes, "g", [x], outs, [w]), opset_imports=[oh.make_opsetid("", 17)]
    )
    fp16 = to_fp16(model)
    onnx.checker.check_model(fp16, full_check=True)
    inits = {i.name: i.data_type for i in fp16.graph.initializer}
    assert inits["w"] == TP.FLOAT and TP.FLOAT16 in inits.values()
    feeds = {"x": np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)}
    for r, g in zip(_run(model, feeds), _run(fp16, feeds)):
        assert _rel_l2(r, g) < 1e-2


def test_resize_pad_constant_of_shape_and_if_run() -> None:
    """Ops with typed side inputs and a subgraph convert to a graph ONNX Runtime runs."""
    x = oh.make_tensor_value_info("x", TP.FLOAT, [1, 2, 4, 4])
    y = oh.make_tensor_value_info("y", TP.FLOAT, [1, 2, 10, 10])
    rng = np.random.default_rng(0)
    inits = [
        _f("w", rng.normal(0, 0.5, (2, 2, 1, 1))),
        _f("roi", []),
        _f("scales", [1, 1, 2, 2]),
        _i("pads", [0, 0, 1, 1, 0, 0, 1, 1]),
        _f("padval", [0.5]),
        _i("shape", [1, 2, 10, 10]),
        nh.from_array(np.array(True), "cond"),
    ]
    then_out = oh.make_tensor_value_info("t", TP.FLOAT, [1, 2, 10, 10])
    then_g = oh.make_graph([oh.make_node("Relu", ["summed"], ["t"])], "then", [], [then_out])
    else_out = oh.make_tensor_value_info("e", TP.FLOAT, [1, 2, 10, 10])
    else_g = oh.make_graph([oh.make_node("Neg", ["summed"], ["e"])], "else", [], [else_out])
    ones = oh.make_tensor("one", TP.FLOAT, [1], [1.0])
    nodes = [
        oh.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        oh.make_node("Resize", ["c", "roi", "scales"], ["r"], name="resize", mode="linear"),
        oh.make_node("Pad", ["r", "pads", "padval"], ["p"], name="pad"),
        oh.make_node("ConstantOfShape", ["shape"], ["ones"], name="cos", value=ones),
        oh.make_node("Add", ["p", "ones"], ["summed"], name="add"),
        oh.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g),
    ]
    model = oh.make_model(
        oh.make_graph(nodes, "g", [x], [y], inits), opset_imports=[oh.make_opsetid("", 17)]
    )
    onnx.checker.check_model(model, full_check=True)
    fp16 = to_fp16(model)
    onnx.checker.check_model(fp16, full_check=True)
    types = _types(fp16)
    resize = next(n for n in fp16.graph.node if n.op_type == "Resize")
    assert types[resize.input[0]] == TP.FLOAT16
    assert types[resize.input[1]] == types[resize.input[2]] == TP.FLOAT  # roi, scales
    assert types["summed"] == TP.FLOAT  # read by the If's subgraph: keeps its type and name
    assert types["ones"] == TP.FLOAT16  # ConstantOfShape's value attribute rewritten
    feeds = {"x": rng.normal(size=(1, 2, 4, 4)).astype(np.float32)}
    ref, got = _run(model, feeds)[0], _run(fp16, feeds)[0]
    assert got.dtype == np.float32 and _rel_l2(ref, got) < 1e-2


def test_float16_numerics_emulated_exactly(pair: Pair) -> None:
    """ONNX Runtime's CPU provider runs many float16 ops in float32 (it drops its own cast
    pairs); the ONNX reference evaluator computes each float16 op in float16 for real."""
    from onnx.reference import ReferenceEvaluator

    fp32, fp16 = pair
    feeds = _feeds(fp32, seed=3)
    for ref, got in zip(_run(fp32, feeds), ReferenceEvaluator(fp16).run(None, feeds)):
        assert got.dtype == np.float32
        assert 0 < _rel_l2(ref, got) < 1e-2  # nonzero: the float16 rounding is really there


def test_clean_then_fp16_against_the_original_model() -> None:
    original = transformer_block()
    fp32 = clean(original)
    feeds = _feeds(original, seed=4)
    for ref, got in zip(_run(original, feeds), _run(fp32, feeds)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
    for ref, got in zip(_run(original, feeds), _run(to_fp16(fp32), feeds)):
        assert _rel_l2(ref, got) < 1e-2


def test_constants_converted_in_place() -> None:
    fp16 = to_fp16(transformer_block())
    types = _types(fp16)
    assert types["scale_c"] == TP.FLOAT16  # a Constant node read only by a float16 Mul
    assert count_ops(fp16)["Constant"] == 1
    assert types["eps"] == TP.FLOAT  # read only by the float32 island


def test_existing_casts_fold_with_boundaries() -> None:
    # int32 ids -> Cast(float) -> MatMul: the Cast to float and the boundary Cast to float16
    # become one Cast(int32 -> float16). A deliberate float32->float16->float32 rounding stays.
    ids = oh.make_tensor_value_info("ids", TP.INT32, [2, 3])
    x = oh.make_tensor_value_info("x", TP.FLOAT, [2, 3])
    outs = [oh.make_tensor_value_info(n, TP.FLOAT, [2, 3]) for n in ("y", "r")]
    nodes = [
        oh.make_node("Cast", ["ids"], ["f"], name="to_float", to=TP.FLOAT),
        oh.make_node("MatMul", ["f", "w"], ["y"], name="mm"),
        oh.make_node("Cast", ["x"], ["h"], name="round_down", to=TP.FLOAT16),
        oh.make_node("Cast", ["h"], ["hr"], name="round_up", to=TP.FLOAT),
        oh.make_node("Softmax", ["hr"], ["r"], name="sm"),
    ]
    model = oh.make_model(
        oh.make_graph(nodes, "g", [ids, x], outs, [_f("w", np.eye(3) / 3)]),
        opset_imports=[oh.make_opsetid("", 17)],
    )
    fp16 = to_fp16(model)
    onnx.checker.check_model(fp16, full_check=True)
    producers = _producers(fp16)
    mm = next(n for n in fp16.graph.node if n.op_type == "MatMul")
    cast = producers[mm.input[0]]
    assert cast.op_type == "Cast" and list(cast.input) == ["ids"]
    assert cast.attribute[0].i == TP.FLOAT16
    assert {"round_down", "round_up"} <= {n.name for n in fp16.graph.node}
    feeds = {"ids": np.arange(6, dtype=np.int32).reshape(2, 3), "x": np.ones((2, 3), np.float32)}
    for r, g in zip(_run(model, feeds), _run(fp16, feeds)):
        assert _rel_l2(r, g) < 1e-2


def test_initializers_listed_as_inputs_ir3() -> None:
    """Old exporters (IR 3) list every initializer as a graph input: still converted, no casts."""
    model = resnet_block()
    model.ir_version = 3
    del model.opset_import[:]
    model.opset_import.append(oh.make_opsetid("", 9))
    for init in model.graph.initializer:
        model.graph.input.append(oh.make_tensor_value_info(init.name, init.data_type, init.dims))
    onnx.checker.check_model(model)
    fp32 = clean(model)
    assert fp32.ir_version == 3
    assert input_specs(fp32) == input_specs(model)
    fp16 = to_fp16(fp32)
    onnx.checker.check_model(fp16)
    assert cast_count(fp16) == 2  # after the input, before the output: weights are float16
    assert {v.name for v in fp16.graph.input} >= {i.name for i in fp16.graph.initializer}
    feeds = _feeds(model)
    assert _rel_l2(_run(model, feeds)[0], _run(fp16, feeds)[0]) < 1e-2


# -- ops whose meaning depends on their input type, and the inference cross-check (issue 13) ----


def test_bitcast_keeps_its_float32_input() -> None:
    """BitCast reinterprets bits: converting its input to float16 would change its meaning."""
    nodes = [
        oh.make_node("Relu", ["x"], ["r"], name="relu"),
        oh.make_node("BitCast", ["r"], ["y"], name="bitcast", to=TP.INT32),
    ]
    model = oh.make_model(
        oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TP.FLOAT, [2, 3])],
                      [oh.make_tensor_value_info("y", TP.INT32, [2, 3])]),
        opset_imports=[oh.make_opsetid("", 26)],
    )
    fp16 = to_fp16(model)
    onnx.checker.check_model(fp16, full_check=True)
    bitcast = next(n for n in fp16.graph.node if n.op_type == "BitCast")
    assert _types(fp16)[bitcast.input[0]] == TP.FLOAT
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(fp16, {"x": x})[0], np.maximum(x, 0).view(np.int32))


@pytest.mark.parametrize("reduction", ["add", "mul", "max", "min"])
def test_accumulating_scatter_stays_float32(reduction: str) -> None:
    nodes = [
        oh.make_node("Relu", ["x"], ["r"]),
        oh.make_node("ScatterND", ["r", "idx", "upd"], ["y"], reduction=reduction),
    ]
    inits = [nh.from_array(np.array([[0], [0], [2]], np.int64), "idx"),
             _f("upd", np.full((3, 4), 0.5))]
    model = oh.make_model(
        oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TP.FLOAT, [4, 4])],
                      [oh.make_tensor_value_info("y", TP.FLOAT, [4, 4])], inits),
        opset_imports=[oh.make_opsetid("", 18)],
    )
    fp16 = to_fp16(model)
    onnx.checker.check_model(fp16, full_check=True)
    scatter = next(n for n in fp16.graph.node if n.op_type == "ScatterND")
    assert _types(fp16)[scatter.input[0]] == TP.FLOAT
    x = np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(fp16, {"x": x})[0], _run(model, {"x": x})[0], rtol=1e-6)


def test_a_plan_onnx_inference_disagrees_with_is_refused() -> None:
    """types_agree: ONNX's per-node inference must give the planned output types."""
    from regiontrt.graph.fp16_rules import types_agree

    model = oh.make_model(oh.make_graph([], "g", [], []), opset_imports=[oh.make_opsetid("", 17)])
    add = oh.make_node("Add", ["a", "b"], ["c"])
    schema = onnx.defs.get_schema("Add", 17)
    assert types_agree(schema, add, [TP.FLOAT16, TP.FLOAT16], [TP.FLOAT16], {}, {}, model)
    assert not types_agree(schema, add, [TP.FLOAT16, TP.FLOAT16], [TP.FLOAT], {}, {}, model)
    assert not types_agree(schema, add, [TP.FLOAT16, TP.FLOAT], [TP.FLOAT16], {}, {}, model)
    cast = oh.make_node("BitCast", ["a"], ["c"], to=TP.INT32)
    bitcast = onnx.defs.get_schema("BitCast", 26)
    assert not types_agree(bitcast, cast, [TP.FLOAT16], [TP.INT32], {}, {}, model)

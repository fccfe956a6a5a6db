"""Control flow: pinning inputs to inline ``If``, precision inside bodies, labels, TensorRT-RTX.

The models are small speech-like graphs built here: a sample-rate check ``sr == 16000`` picks
one of two branches of Conv layers, optionally next to a Loop carrying a state.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

from regiontrt.errors import BuildError, InvalidArgumentError
from regiontrt.graph.control_flow import (
    control_flow_findings,
    control_flow_report,
    trt_control_flow_problems,
)
from regiontrt.graph.label import graph_precision
from regiontrt.graph.pin import fold_pinned_inputs
from regiontrt.graph.quantize import (
    QDQ_MIN_OPSET,
    QuantizeOptions,
    name_nodes,
    quantize_model,
    upgrade_opset,
)
from regiontrt.graph.scope import walk_graphs, walk_nodes
from regiontrt.precision.policy import PrecisionPolicy
from regiontrt.precision.types import Precision

SHAPE = [1, 2, 8, 8]


def _w(name: str, rng: np.random.Generator) -> onnx.TensorProto:
    return nh.from_array(rng.normal(0, 0.4, (2, 2, 3, 3)).astype(np.float32), name)


def _branch(prefix: str, n_conv: int, src: str, rng: np.random.Generator,
            flatten: bool = False, lstm: bool = False) -> onnx.GraphProto:
    """``n_conv`` Conv+Relu on ``src`` (an outer-scope name), then a residual Add (or Flatten)."""
    nodes, inits, x = [], [], src
    for i in range(n_conv):
        inits.append(_w(f"{prefix}_w{i}", rng))
        nodes += [oh.make_node("Conv", [x, f"{prefix}_w{i}"], [f"{prefix}_c{i}"],
                               name=f"{prefix}_conv{i}", pads=[1, 1, 1, 1]),
                  oh.make_node("Relu", [f"{prefix}_c{i}"], [f"{prefix}_r{i}"],
                               name=f"{prefix}_relu{i}")]
        x = f"{prefix}_r{i}"
    out, shape = f"{prefix}_out", SHAPE
    if flatten:
        nodes.append(oh.make_node("Flatten", [x], [out], name=f"{prefix}_flat"))
        shape = [1, 128]
    elif lstm:  # the state update of a recurrent speech model: (1, 8, 16) -> LSTM -> back
        inits += [nh.from_array(np.array([1, 8, 16], np.int64), f"{prefix}_s3"),
                  nh.from_array(np.array(SHAPE, np.int64), f"{prefix}_s4"),
                  nh.from_array(rng.normal(0, .2, (1, 64, 16)).astype(np.float32), f"{prefix}_W"),
                  nh.from_array(rng.normal(0, .2, (1, 64, 16)).astype(np.float32), f"{prefix}_R")]
        nodes += [oh.make_node("Reshape", [x, f"{prefix}_s3"], [f"{prefix}_seq"]),
                  oh.make_node("LSTM", [f"{prefix}_seq", f"{prefix}_W", f"{prefix}_R"],
                               ["", f"{prefix}_h", ""], hidden_size=16, name=f"{prefix}_lstm"),
                  oh.make_node("Reshape", [f"{prefix}_h", f"{prefix}_s4"], [out])]
    else:
        nodes.append(oh.make_node("Add", [x, src], [out], name=f"{prefix}_add"))
    return oh.make_graph(nodes, prefix, [], [oh.make_tensor_value_info(out, TP.FLOAT, shape)],
                         inits)


def speech(*, outer: bool = True, loop: bool = False, flatten_else: bool = False,
           lstm: bool = False, seed: int = 0) -> onnx.ModelProto:
    """x (1,2,8,8) float, sr int64 scalar; ``If(sr == 16000)``: 2 Conv, else 3 Conv.

    outer: a Conv before and after the If (else all float compute sits in the branches).
    loop: a Loop of a Conv over x as a second output. flatten_else: the else branch's output has
    rank 2. lstm: the then branch ends in an LSTM.
    """
    rng = np.random.default_rng(seed)
    src = "x_in" if outer else "x"
    inits = [nh.from_array(np.array(16000, np.int64), "sr16k")]
    nodes = [oh.make_node("Equal", ["sr", "sr16k"], ["is16k"], name="sr_check"),
             oh.make_node("If", ["is16k"], ["h"], name="sr_if",
                          then_branch=_branch("then", 2, src, rng, lstm=lstm),
                          else_branch=_branch("else", 3, src, rng, flatten=flatten_else))]
    result = "h"
    if outer:
        inits += [_w("w_in", rng), _w("w_out", rng)]
        nodes.insert(0, oh.make_node("Conv", ["x", "w_in"], ["x_in"], name="conv_in",
                                     pads=[1, 1, 1, 1]))
        nodes.append(oh.make_node("Conv", ["h", "w_out"], ["y"], name="conv_out",
                                  pads=[1, 1, 1, 1]))
        result = "y"
    outs = [oh.make_tensor_value_info(result, TP.FLOAT, None if flatten_else else SHAPE)]
    if loop:
        inits += [_w("w_loop", rng), nh.from_array(np.array(2, np.int64), "trips"),
                  nh.from_array(np.array(True), "go")]
        body = oh.make_graph(
            [oh.make_node("Identity", ["cond_in"], ["cond_out"], name="loop_cond"),
             oh.make_node("Conv", ["v_in", "w_loop"], ["v_c"], name="loop_conv",
                          pads=[1, 1, 1, 1]),
             oh.make_node("Tanh", ["v_c"], ["v_out"], name="loop_tanh")],
            "body",
            [oh.make_tensor_value_info("it", TP.INT64, []),
             oh.make_tensor_value_info("cond_in", TP.BOOL, []),
             oh.make_tensor_value_info("v_in", TP.FLOAT, SHAPE)],
            [oh.make_tensor_value_info("cond_out", TP.BOOL, []),
             oh.make_tensor_value_info("v_out", TP.FLOAT, SHAPE)])
        nodes.append(oh.make_node("Loop", ["trips", "go", "x"], ["z"], name="state_loop",
                                  body=body))
        outs.append(oh.make_tensor_value_info("z", TP.FLOAT, SHAPE))
    graph = oh.make_graph(nodes, "speech", [oh.make_tensor_value_info("x", TP.FLOAT, SHAPE),
                                            oh.make_tensor_value_info("sr", TP.INT64, [])],
                          outs, inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def speech_data(n: int, seed: int, sr: int | None = 16000) -> list[dict[str, np.ndarray]]:
    """``n`` batches of random ``x`` (and ``sr``, unless ``None``) for :func:`speech` models."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        batch = {"x": rng.normal(size=SHAPE).astype(np.float32)}
        if sr is not None:
            batch["sr"] = np.array(sr, np.int64)
        out.append(batch)
    return out


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def _x(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in walk_nodes(model.graph)]


@pytest.mark.parametrize("sr", [16000, 8000])
@pytest.mark.parametrize("outer", [True, False])
def test_fold_pinned_inputs_inlines_the_branch_taken(sr: int, outer: bool) -> None:
    model = speech(outer=outer, loop=True)
    onnx.checker.check_model(model, full_check=True)
    folded = fold_pinned_inputs(model, {"sr": np.int64(sr)})
    onnx.checker.check_model(folded, full_check=True)
    assert "If" not in _ops(folded) and "Loop" in _ops(folded)
    assert [v.name for v in folded.graph.input] == ["x"]
    assert [v.name for v in folded.graph.output] == [v.name for v in model.graph.output]
    taken = "then" if sr == 16000 else "else"
    convs = {n.name for n in folded.graph.node if n.op_type == "Conv"}
    assert {f"{taken}_conv0", f"{taken}_conv1"} <= convs
    assert not any(c.startswith("else" if taken == "then" else "then") for c in convs)
    feeds = {"x": _x(), "sr": np.array(sr, np.int64)}
    for ref, got in zip(_run(model, feeds), _run(folded, feeds), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_fold_inlines_nested_ifs_and_constant_outputs() -> None:
    """An inner If deciding on the same input; a branch whose output is a constant (folded
    into a branch initializer, which no branch node produces)."""
    rng = np.random.default_rng(3)
    zeros = nh.from_array(np.full(SHAPE, 0.5, np.float32))
    constant = oh.make_graph([oh.make_node("Constant", [], ["k_out"], value=zeros)], "keep", [],
                             [oh.make_tensor_value_info("k_out", TP.FLOAT, SHAPE)])
    inner = oh.make_node("If", ["wide"], ["t_out"], name="inner_if",
                         then_branch=_branch("wide", 1, "x", rng), else_branch=constant)
    then_g = oh.make_graph([inner], "then", [], [oh.make_tensor_value_info("t_out", TP.FLOAT,
                                                                           SHAPE)])
    else_g = _branch("else", 1, "x", rng)
    nodes = [oh.make_node("Greater", ["sr", "k8"], ["wide"], name="gt"),
             oh.make_node("Equal", ["sr", "k16"], ["is16k"], name="eq"),
             oh.make_node("If", ["is16k"], ["y"], name="sr_if", then_branch=then_g,
                          else_branch=else_g)]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TP.FLOAT, SHAPE),
                                       oh.make_tensor_value_info("sr", TP.INT64, [])],
                          [oh.make_tensor_value_info("y", TP.FLOAT, SHAPE)],
                          [nh.from_array(np.array(20000, np.int64), "k8"),
                           nh.from_array(np.array(16000, np.int64), "k16")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    for sr, conv in ((16000, False), (8000, True)):
        folded = fold_pinned_inputs(model, {"sr": sr})
        onnx.checker.check_model(folded, full_check=True)
        assert "If" not in _ops(folded)
        assert ("Conv" in _ops(folded)) is conv
        feeds = {"x": _x(), "sr": np.array(sr, np.int64)}
        np.testing.assert_allclose(_run(folded, feeds)[0], _run(model, feeds)[0], rtol=1e-5)


def test_fold_pinned_inputs_refuses_bad_values() -> None:
    model = speech()
    with pytest.raises(InvalidArgumentError, match="not a graph input"):
        fold_pinned_inputs(model, {"rate": 16000})
    with pytest.raises(InvalidArgumentError, match="changes when converted"):
        fold_pinned_inputs(model, {"sr": 16000.5})
    with pytest.raises(InvalidArgumentError, match="does not fit"):
        fold_pinned_inputs(model, {"sr": np.array([16000, 8000])})
    with pytest.raises(InvalidArgumentError, match="does not fit"):
        fold_pinned_inputs(model, {"x": np.zeros((1, 2, 8, 9), np.float32)})


def test_quantization_plan_finds_branch_layers_only_after_pinning() -> None:
    """The int8 path (as int8.Int8Attempt runs it) sees the branch Conv layers once inlined."""
    policy = PrecisionPolicy(quantize=QuantizeOptions(quantize_first_layer=True,
                                                      quantize_last_layer=True))
    model = speech(outer=False)
    before = policy.quantization_plan(upgrade_opset(name_nodes(model), QDQ_MIN_OPSET))
    assert not before.nodes  # the reported "no quantizable layer in the model"
    folded = fold_pinned_inputs(model, {"sr": 8000})
    base = upgrade_opset(name_nodes(folded), QDQ_MIN_OPSET)
    plan = policy.quantization_plan(base)
    assert set(plan.nodes) == {"else_conv0", "else_conv1", "else_conv2"}
    probe = onnx.ModelProto()
    probe.CopyFrom(base)
    probe.graph.output.extend(oh.make_empty_tensor_value_info(a) for a in plan.activations)
    values = _run(probe, {"x": _x()})[len(base.graph.output):]
    amax = {a: float(np.abs(v).max()) for a, v in zip(plan.activations, values, strict=True)}
    quantized = quantize_model(base, amax, policy.quantize)
    assert graph_precision(quantized) == "int8"
    ref, got = _run(model, {"x": _x(), "sr": np.array(8000)})[0], _run(quantized, {"x": _x()})[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.1


def test_fp16_converts_branch_and_loop_bodies() -> None:
    """The policy's fp16 compile of a model whose compute sits in If/Loop bodies holds float16
    compute there (it used to hold none while labelled fp16); graph_precision says so."""
    model = speech(outer=False, loop=True)
    assert graph_precision(model) == "fp32"
    fp16 = PrecisionPolicy().compile(model, Precision.FP16)
    onnx.checker.check_model(fp16, full_check=True)
    assert not any(n.op_type == "Cast" for n in fp16.graph.node)  # main graph: nothing to do
    assert graph_precision(fp16) == "fp16"
    for g in walk_graphs(fp16.graph):
        if g.name in ("then", "else"):
            assert all(i.data_type == TP.FLOAT16 for i in g.initializer)
            assert sum(n.op_type == "Cast" for n in g.node) == 2  # one in, one out
    for sr in (16000, 8000):
        feeds = {"x": _x(), "sr": np.array(sr, np.int64)}
        for ref, got in zip(_run(model, feeds), _run(fp16, feeds), strict=True):
            assert got.dtype == np.float32
            assert 0 < np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-2
    kept = PrecisionPolicy(fp32_nodes=["then_conv0"]).compile(model, Precision.FP16)
    then_g = next(g for g in walk_graphs(kept.graph) if g.name == "then")
    assert {i.name: i.data_type for i in then_g.initializer}["then_w0"] == TP.FLOAT


def test_graph_precision_reads_what_the_graph_computes() -> None:
    x = oh.make_tensor_value_info("x", TP.FLOAT, [4])
    y = oh.make_tensor_value_info("y", TP.FLOAT, [4])
    round_trip = oh.make_model(oh.make_graph(
        [oh.make_node("Cast", ["x"], ["h"], to=TP.FLOAT16),
         oh.make_node("Cast", ["h"], ["y"], to=TP.FLOAT)], "g", [x], [y]))
    assert graph_precision(round_trip) == "fp32"  # casts only: no float16 arithmetic
    half_relu = oh.make_model(oh.make_graph(
        [oh.make_node("Cast", ["x"], ["h"], to=TP.FLOAT16), oh.make_node("Relu", ["h"], ["r"]),
         oh.make_node("Cast", ["r"], ["y"], to=TP.FLOAT)], "g", [x], [y]))
    assert graph_precision(half_relu) == "fp16"
    mixed = PrecisionPolicy().compile(speech(outer=True), Precision.FP16)
    assert graph_precision(mixed) == "fp16"


def test_control_flow_report_says_what_stays_float_and_why() -> None:
    lines = control_flow_report(speech(outer=True, loop=True))
    assert len(lines) == 2
    if_line, loop_line = lines
    assert if_line.startswith("If node 'sr_if' (main graph): 5 layers in its branches stay "
                              "float32 under int8")
    assert "else_branch: 3 Conv" in if_line and "then_branch: 2 Conv" in if_line
    assert "the condition depends on input 'sr'" in if_line
    assert "fold_pinned_inputs(model, {'sr': value})" in if_line
    assert loop_line.startswith("Loop node 'state_loop' (main graph): 1 layer in its body "
                                "stays float32")
    assert "cannot be inlined" in loop_line
    after = control_flow_report(fold_pinned_inputs(speech(outer=True, loop=True), {"sr": 16000}))
    assert after == [loop_line]
    finding = next(f for f in control_flow_findings(speech()) if f.op == "If")
    assert finding.depends_on == ("sr",) and not finding.constant and finding.layer_count == 5


def test_control_flow_report_constant_and_static_shape_conditions() -> None:
    """A condition from a static shape is a build-time constant; one from data is not."""
    model = speech(outer=False)
    eq = next(n for n in model.graph.node if n.name == "sr_check")
    model.graph.node.insert(0, oh.make_node("Size", ["x"], ["n"], name="size"))
    model.graph.initializer.append(nh.from_array(np.array(128, np.int64), "n128"))
    eq.input[:] = ["n", "n128"]
    (finding,) = control_flow_findings(model)
    assert finding.constant and finding.depends_on == ()
    assert "its condition is constant" in control_flow_report(model)[0]
    assert trt_control_flow_problems(speech(flatten_else=True)) != []
    eq.input[:] = ["sr", "sr16k"]
    model.graph.node[0].input[0] = "x"
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    (finding,) = control_flow_findings(model)
    assert finding.depends_on == ("sr",)


def _rtx_build(model: onnx.ModelProto) -> None:
    """Parse and build ``model`` with the project's TensorRT-RTX build helpers (CPU builder)."""
    trt = pytest.importorskip("tensorrt_rtx", reason="needs tensorrt_rtx (its builder runs on CPU)")
    from regiontrt.backends.trt_build import build_plan, network_flags, parse_onnx, trt_logger

    builder = trt.Builder(trt_logger(trt))
    network = builder.create_network(network_flags(trt, 1, rtx=True))
    parser = parse_onnx(trt, network, model)
    build_plan(trt, builder, network, builder.create_builder_config())
    del parser


@pytest.mark.parametrize(
    ("variant", "refused"),
    [({}, False), ({"flatten_else": True}, True), ({"lstm": True}, True)],
    ids=["same-rank", "rank-differs", "lstm-in-branch"],
)
def test_trt_problems_match_a_real_rtx_build(variant: dict[str, bool], refused: bool) -> None:
    model = speech(outer=False, **variant)
    problems = trt_control_flow_problems(model)
    assert bool(problems) is refused
    if refused:
        assert all(p.startswith("If node 'sr_if' (main graph)") for p in problems)
        assert all("fold_pinned_inputs(model, {'sr': value})" in p for p in problems)
        with pytest.raises(BuildError):
            _rtx_build(model)
    else:
        _rtx_build(model)
    folded = fold_pinned_inputs(model, {"sr": 8000})
    assert trt_control_flow_problems(folded) == []
    _rtx_build(folded)

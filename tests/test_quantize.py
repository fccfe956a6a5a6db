"""Q/DQ placement: which tensors get Q/DQ, where weights are per-channel, what options do."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh
from test_quantize_models import (  # the helpers module beside this file
    ALL_LAYERS,
    CONV3,
    act_scale,
    concat_model,
    conv_w,
    feeds_for,
    inits_of,
    make_model,
    matmul_model,
    node_of,
    producers,
    quantize_with_real_amax,
    quantized_tensors,
    real_amax,
    rel_l2,
    resnet_block,
    run,
    source_of,
    vi,
    weight_dq,
)

from regiontrt.errors import RegionConfigError
from regiontrt.graph.quantize import (
    QuantizationPlan,
    QuantizeOptions,
    count_qdq,
    plan_quantization,
    quantize_model,
)

# ----------------------------------------------------------------------------- residual blocks


@pytest.mark.parametrize("skip_first", [False, True])
def test_residual_block_placement(skip_first: bool) -> None:
    model = resnet_block(skip_first=skip_first)
    plan, q = quantize_with_real_amax(model)
    assert isinstance(plan, QuantizationPlan)
    assert plan.nodes == ("conv2", "conv3", "conv4")
    assert set(plan.skipped) == {"conv1", "fc"}
    assert "first layer" in plan.skipped["conv1"] and "last layer" in plan.skipped["fc"]
    assert plan.activations == ("r1", "r2", "r3")
    assert plan.shared_scale_groups == ()

    # inputs of quantized convs: activation Q/DQ + int8 weight DQ
    for conv, act in [("conv2", "r1"), ("conv3", "r2"), ("conv4", "r3")]:
        assert source_of(q, conv, 0) == ("act", act)
        assert source_of(q, conv, 1)[0] == "weight"
    # first and last layers untouched
    assert source_of(q, "conv1", 0) == ("float", "x")
    assert source_of(q, "conv1", 1) == ("float", "w1")
    assert source_of(q, "fc", 0) == ("float", "flat")
    assert source_of(q, "fc", 1) == ("float", "wf")
    # residual Add: only the skip branch (r1) is quantized, the BN branch stays float
    add = node_of(q, "add")
    skip_idx = 0 if skip_first else 1
    assert source_of(q, "add", skip_idx) == ("act", "r1")
    assert source_of(q, "add", 1 - skip_idx) == ("float", "bn3")
    # one shared Q/DQ for r1 (conv2 input and Add skip input)
    assert add.input[skip_idx] == node_of(q, "conv2").input[0]
    assert sorted(quantized_tensors(q)) == ["r1", "r2", "r3"]
    # nothing on weighted outputs / between Conv and Relu or BN
    prod = producers(q)
    for conv in ("conv1", "conv2", "conv3", "conv4"):
        out = node_of(q, conv).output[0]
        consumers = [n for n in q.graph.node if out in n.input]
        assert all(c.op_type not in ("QuantizeLinear", "DequantizeLinear") for c in consumers)
    assert prod[node_of(q, "relu2").input[0]].name == "conv2"
    assert prod[node_of(q, "bn3").input[0]].name == "conv3"
    assert count_qdq(q) == 2 * 3 + 3
    onnx.checker.check_model(q, full_check=True)


def test_residual_add_needs_quantized_layer_and_option() -> None:
    model = resnet_block()
    plan = plan_quantization(model, QuantizeOptions(exclude_nodes=frozenset({"conv3"})))
    assert plan.skipped["conv3"] == "excluded by exclude_nodes"
    assert plan.nodes == ("conv2", "conv4")
    assert plan.activations == ("r1", "r3")  # r2 (conv3's input) and no Add skip Q/DQ
    amax = {t: 4.0 for t in plan.activations}
    q = quantize_model(model, amax, QuantizeOptions(exclude_nodes=frozenset({"conv3"})))
    assert source_of(q, "conv3", 0) == ("float", "r2")
    assert source_of(q, "conv3", 1) == ("float", "w3")
    assert source_of(q, "add", 1) == ("float", "r1")  # the Add cannot fuse: no Q/DQ on it

    plan = plan_quantization(model, QuantizeOptions(quantize_residual_add=False))
    q = quantize_model(
        model, {t: 4.0 for t in plan.activations}, QuantizeOptions(quantize_residual_add=False)
    )
    assert source_of(q, "add", 1) == ("float", "r1")
    assert source_of(q, "conv2", 0) == ("act", "r1")


def test_projection_shortcut_quantizes_the_shallower_branch() -> None:
    """Both Add inputs come from convs: the main path fuses, the 1x1 shortcut gets Q/DQ."""
    rng = np.random.default_rng(5)
    inits = [
        nh.from_array(conv_w(rng, 8, 3), "w0"),
        nh.from_array(conv_w(rng, 8, 8), "wm1"),
        nh.from_array(conv_w(rng, 8, 8), "wm2"),
        nh.from_array(conv_w(rng, 8, 8, 1), "ws"),
        nh.from_array(conv_w(rng, 2, 8), "wh"),
    ]
    nodes = [
        oh.make_node("Conv", ["x", "w0"], ["c0"], name="stem", **CONV3),
        oh.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        oh.make_node("Conv", ["r0", "ws"], ["short"], name="shortcut", kernel_shape=[1, 1]),
        oh.make_node("Conv", ["r0", "wm1"], ["m1"], name="main1", **CONV3),
        oh.make_node("Relu", ["m1"], ["rm1"], name="relum1"),
        oh.make_node("Conv", ["rm1", "wm2"], ["m2"], name="main2", **CONV3),
        oh.make_node("Add", ["short", "m2"], ["s"], name="add"),
        oh.make_node("Relu", ["s"], ["rs"], name="relus"),
        oh.make_node("Conv", ["rs", "wh"], ["y"], name="head", **CONV3),
    ]
    model = make_model(nodes, [vi("x", ["N", 3, 6, 6])], [vi("y", ["N", 2, 6, 6])], inits)
    plan, q = quantize_with_real_amax(model)
    assert "short" in plan.activations
    assert source_of(q, "add", 0) == ("act", "short")
    assert source_of(q, "add", 1) == ("float", "m2")


# ----------------------------------------------------------------------------- concat


@pytest.mark.parametrize("nested", [False, True])
def test_concat_inputs_share_one_scale(nested: bool) -> None:
    model = concat_model(nested=nested)
    plan, q = quantize_with_real_amax(model)
    members = {"ra", "rb", "cat"} | ({"rc", "cat_in"} if nested else set())
    assert len(plan.shared_scale_groups) == 1
    assert set(plan.shared_scale_groups[0]) == members
    assert members <= set(plan.activations)
    scales = {t: act_scale(q, t) for t in members}
    assert len(set(scales.values())) == 1
    amax = real_amax(model, members, feeds_for(model, 10, 64))
    assert scales["ra"] == pytest.approx(max(amax.values()) / 127, rel=1e-6)
    # branch b's range is about twice a's: a separate scale would have differed
    assert amax["rb"] > 1.3 * amax["ra"]
    assert source_of(q, "convc", 0) == ("act", "cat")
    assert source_of(q, "cat", 0) == ("act", "cat_in" if nested else "ra")


# ----------------------------------------------------------------------------- matmul / gemm


def test_matmul_and_gemm_axes() -> None:
    model = matmul_model()
    plan, q = quantize_with_real_amax(model)
    assert plan.nodes == ("gemm1", "matmul_w", "matmul_aa")
    assert set(plan.skipped) == {"gemm0", "head"}
    # Gemm transB=1: weight (N=20, K=32) -> axis 0
    dq = weight_dq(q, "gemm1", 1)
    assert oh.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == 0
    assert inits_of(q)[dq.input[1]].shape == (20,)
    # MatMul weight (K=20, N=24) -> last axis
    dq = weight_dq(q, "matmul_w", 1)
    assert oh.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == 1
    assert inits_of(q)[dq.input[1]].shape == (24,)
    # MatMul of two activations: both inputs quantized, per tensor
    assert source_of(q, "matmul_aa", 0) == ("act", "a3")
    assert source_of(q, "matmul_aa", 1) == ("act", "a3t")
    # Gemm bias stays float
    assert source_of(q, "gemm1", 2) == ("float", "g1_b")


def test_gemm_transb0_axis_when_first_layer_quantized() -> None:
    model = matmul_model()
    opts = QuantizeOptions(quantize_first_layer=True, quantize_last_layer=True)
    plan, q = quantize_with_real_amax(model, opts)
    assert plan.nodes == ("gemm0", "gemm1", "matmul_w", "matmul_aa", "head")
    assert plan.skipped == {}
    dq = weight_dq(q, "gemm0", 1)  # transB=0: (K=16, N=32) -> axis 1
    assert oh.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == 1
    assert inits_of(q)[dq.input[1]].shape == (32,)
    assert source_of(q, "gemm0", 0) == ("act", "x")
    assert source_of(q, "head", 0) == ("act", "gram2")


def test_conv_transpose_axis_and_zero_channel() -> None:
    rng = np.random.default_rng(7)
    wt = (rng.standard_normal((8, 6, 2, 2)) * 0.3).astype(np.float32)
    wt[:, 2] = 0.0  # an all-zero output channel
    inits = [
        nh.from_array(conv_w(rng, 8, 3), "w0"),
        nh.from_array(wt, "wt"),
        nh.from_array(conv_w(rng, 2, 6), "wh"),
    ]
    nodes = [
        oh.make_node("Conv", ["x", "w0"], ["c0"], name="stem", **CONV3),
        oh.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        oh.make_node(
            "ConvTranspose",
            ["r0", "wt"],
            ["up"],
            name="deconv",
            strides=[2, 2],
            kernel_shape=[2, 2],
        ),
        oh.make_node("Relu", ["up"], ["rup"], name="reluup"),
        oh.make_node("Conv", ["rup", "wh"], ["y"], name="head", **CONV3),
    ]
    model = make_model(nodes, [vi("x", ["N", 3, 4, 4])], [vi("y", ["N", 2, 8, 8])], inits)
    plan, q = quantize_with_real_amax(model)
    assert plan.nodes == ("deconv",)
    dq = weight_dq(q, "deconv", 1)
    assert oh.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == 1
    scale = inits_of(q)[dq.input[1]]
    assert scale.shape == (6,) and np.all(scale > 0)
    q8 = inits_of(q)[dq.input[0]]
    assert q8.dtype == np.int8 and not q8[:, 2].any()
    feeds = feeds_for(model, 11)
    assert rel_l2(run(q, feeds)["y"], run(model, feeds)["y"]) < 0.05


def test_per_tensor_weights() -> None:
    model = resnet_block()
    opts = QuantizeOptions(per_channel=False)
    _, q = quantize_with_real_amax(model, opts)
    dq = weight_dq(q, "conv2", 1)
    assert not any(a.name == "axis" for a in dq.attribute)
    assert inits_of(q)[dq.input[1]].shape == ()


# ----------------------------------------------------------------------------- options


def test_first_and_last_layer_options() -> None:
    model = resnet_block()
    opts = QuantizeOptions(quantize_first_layer=True, quantize_last_layer=True)
    plan, q = quantize_with_real_amax(model, opts)
    assert plan.nodes == ("conv1", "conv2", "conv3", "conv4", "fc")
    assert plan.activations == ("x", "r1", "r2", "r3", "flat")
    assert source_of(q, "conv1", 0) == ("act", "x")
    dq = weight_dq(q, "fc", 1)  # Gemm transB=1, weight (4, 8) -> axis 0, 4 scales
    assert inits_of(q)[dq.input[1]].shape == (4,)
    assert count_qdq(q) == 2 * 5 + 5
    # the graph input itself stays the float input of the model
    assert [i.name for i in q.graph.input] == ["x"]


def test_weighted_outputs_option_goes_after_the_epilogue() -> None:
    model = resnet_block()
    opts = QuantizeOptions(quantize_weighted_outputs=True)
    plan, q = quantize_with_real_amax(model, opts)
    # conv4 feeds GlobalAveragePool directly: its output gets Q/DQ; conv2's output is quantized
    # after its Relu (r2), and conv3's BN output (fused into the Add) never is
    assert plan.activations == ("r1", "r2", "r3", "c4")
    assert source_of(q, "gap", 0) == ("act", "c4")
    assert source_of(q, "relu2", 0) == ("float", "c2")
    assert source_of(q, "add", 0) == ("float", "bn3")


def test_exclude_nodes_and_generated_names() -> None:
    model = resnet_block()
    for n in model.graph.node:
        n.name = ""
    plan = plan_quantization(model)
    assert plan.nodes == ("Conv_2", "Conv_4", "Conv_8")
    q = quantize_model(
        model,
        {t: 2.0 for t in plan.activations},
        QuantizeOptions(exclude_nodes=frozenset({"Conv_4"})),
    )
    assert source_of(q, "Conv_4", 0) == ("float", "r2")
    assert source_of(q, "Conv_2", 0) == ("act", "r1")
    with pytest.raises(RegionConfigError, match="nope"):
        plan_quantization(model, QuantizeOptions(exclude_nodes=frozenset({"nope"})))
    with pytest.raises(RegionConfigError, match="Relu_1"):
        plan_quantization(model, QuantizeOptions(exclude_nodes=frozenset({"Relu_1"})))


def test_quantizing_twice_changes_nothing() -> None:
    _, q = quantize_with_real_amax(resnet_block())
    plan = plan_quantization(q)
    assert plan.nodes == ()
    assert all(
        "already quantized" in r for n, r in plan.skipped.items() if n != "conv1" and n != "fc"
    )
    q2 = quantize_model(q, {})
    assert count_qdq(q2) == count_qdq(q)


def test_activation_that_is_a_graph_output_stays_float() -> None:
    model = resnet_block()
    model.graph.output.append(vi("r1", ["N", 8, 8, 8]))  # quantized for conv2 and the Add
    _, q = quantize_with_real_amax(model)
    assert [o.name for o in q.graph.output] == ["y", "r1"]
    assert producers(q)["r1"].name == "relu1"
    feeds = feeds_for(model, 3)
    # r1 comes from the high-precision first layer: the output equals FP32's
    np.testing.assert_allclose(run(q, feeds)["r1"], run(model, feeds)["r1"], rtol=1e-5, atol=1e-6)
    assert source_of(q, "conv2", 0) == ("act", "r1")


def test_constant_node_and_tied_weights() -> None:
    rng = np.random.default_rng(0)
    w = nh.from_array(conv_w(rng, 4, 4), "w")
    nodes = [
        oh.make_node("Conv", ["x", "w"], ["c0"], name="c0", **CONV3),
        oh.make_node("Relu", ["c0"], ["r0"], name="r0"),
        oh.make_node(
            "Constant", [], ["wc"], name="const", value=nh.from_array(conv_w(rng, 4, 4), "v")
        ),
        oh.make_node("Conv", ["r0", "wc"], ["c1"], name="c1", **CONV3),  # Constant-node weight
        oh.make_node("Relu", ["c1"], ["r1"], name="r1"),
        oh.make_node("Conv", ["r1", "w"], ["c2"], name="c2", **CONV3),  # tied with c0 (FP)
        oh.make_node("Relu", ["c2"], ["r2"], name="r2"),
        oh.make_node("Conv", ["r2", "w"], ["c3"], name="c3", **CONV3),  # tied with c2
        oh.make_node("Relu", ["c3"], ["r3"], name="r3"),
        oh.make_node("Conv", ["r3", "w"], ["y"], name="c4", **CONV3),
    ]
    model = make_model(nodes, [vi("x", ["N", 4, 5, 5])], [vi("y", ["N", 4, 5, 5])], [w])
    plan, q = quantize_with_real_amax(model)
    assert plan.nodes == ("c1", "c2", "c3")
    assert source_of(q, "c1", 1)[0] == "weight"
    assert "const" not in {n.name for n in q.graph.node}  # its float weight is gone
    # c2 and c3 share one int8 copy; the FP first and last layers keep the float weight
    assert node_of(q, "c2").input[1] == node_of(q, "c3").input[1]
    assert source_of(q, "c0", 1) == ("float", "w") and source_of(q, "c4", 1) == ("float", "w")
    assert count_qdq(q) == 2 * 3 + 2
    feeds = feeds_for(model, 3)
    assert rel_l2(run(q, feeds)["y"], run(model, feeds)["y"]) < 0.05


def test_fp16_layers_are_skipped() -> None:
    rng = np.random.default_rng(0)
    inits = [nh.from_array(conv_w(rng, 4, 4), n) for n in ("w0", "w2")]
    inits.append(nh.from_array(conv_w(rng, 4, 4).astype(np.float16), "w1"))
    nodes = [
        oh.make_node("Conv", ["x", "w0"], ["c0"], name="c0", **CONV3),
        oh.make_node("Relu", ["c0"], ["r0"], name="r0"),
        oh.make_node("Cast", ["r0"], ["h0"], name="to16", to=TensorProto.FLOAT16),
        oh.make_node("Conv", ["h0", "w1"], ["h1"], name="c1", **CONV3),
        oh.make_node("Cast", ["h1"], ["f1"], name="to32", to=TensorProto.FLOAT),
        oh.make_node("Conv", ["f1", "w2"], ["y"], name="c2", **CONV3),
    ]
    model = make_model(nodes, [vi("x", ["N", 4, 5, 5])], [vi("y", ["N", 4, 5, 5])], inits)
    plan = plan_quantization(model, ALL_LAYERS)
    assert plan.nodes == ("c0", "c2")
    assert "FLOAT16" in plan.skipped["c1"]


def test_input_model_untouched_and_metadata_kept() -> None:
    model = resnet_block()
    onnx.helper.set_model_props(model, {"region": "eu-west", "author": "test"})
    model.doc_string = "a doc"
    before = model.SerializeToString(deterministic=True)
    _, q = quantize_with_real_amax(model)
    assert model.SerializeToString(deterministic=True) == before
    assert {p.key: p.value for p in q.metadata_props} == {"region": "eu-west", "author": "test"}
    assert q.doc_string == "a doc" and q.ir_version == model.ir_version
    assert [i.name for i in q.graph.input] == ["x"] and [o.name for o in q.graph.output] == ["y"]


def test_matmul_residual_stream_is_not_quantized() -> None:
    """Add(x, MatMul(...) + bias) in a transformer-like block: the residual stream stays float."""
    rng = np.random.default_rng(4)
    inits = [
        nh.from_array((rng.standard_normal((8, 8)) * 0.3).astype(np.float32), n)
        for n in ("w0", "w1", "w2")
    ]
    inits.append(nh.from_array(np.full(8, 0.1, np.float32), "b1"))
    nodes = [
        oh.make_node("MatMul", ["x", "w0"], ["h0"], name="mm0"),
        oh.make_node("Relu", ["h0"], ["a0"], name="act0"),
        oh.make_node("MatMul", ["a0", "w1"], ["h1"], name="mm1"),
        oh.make_node("Add", ["h1", "b1"], ["h1b"], name="bias1"),
        oh.make_node("Add", ["a0", "h1b"], ["res"], name="residual"),
        oh.make_node("MatMul", ["res", "w2"], ["y"], name="mm2"),
    ]
    model = make_model(nodes, [vi("x", ["N", 8])], [vi("y", ["N", 8])], inits)
    plan, q = quantize_with_real_amax(model)
    assert plan.nodes == ("mm1",)
    assert plan.activations == ("a0",)
    assert source_of(q, "residual", 0) == ("float", "a0")
    assert source_of(q, "mm1", 0) == ("act", "a0")

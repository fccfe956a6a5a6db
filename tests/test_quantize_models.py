"""Model builders and inspection helpers shared by the tests/test_quantize*.py files (no tests)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from regiontrt.graph.arithmetic import session_options
from regiontrt.graph.quantize import (
    QuantizationPlan,
    QuantizeOptions,
    plan_quantization,
    quantize_model,
)

ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime to run the quantized models")

CONV3: dict[str, Any] = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}
ALL_LAYERS = QuantizeOptions(quantize_first_layer=True, quantize_last_layer=True)


# ----------------------------------------------------------------------------- model builders


def conv_w(rng: np.random.Generator, cout: int, cin: int, k: int = 3) -> np.ndarray:
    return (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(
        np.float32
    )


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto],
    opset: int = 13,
) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", inputs, outputs, inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 6 if opset < 13 else 8
    onnx.checker.check_model(model)
    return model


def vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def resnet_block(skip_first: bool = False, seed: int = 0) -> onnx.ModelProto:
    """conv1-relu1-conv2-relu2-conv3-bn3-Add(skip=r1)-relu3-conv4-GAP-Flatten-Gemm."""
    rng = np.random.default_rng(seed)
    inits = [
        nh.from_array(conv_w(rng, 8, 3), "w1"),
        nh.from_array(conv_w(rng, 8, 8), "w2"),
        nh.from_array(conv_w(rng, 8, 8), "w3"),
        nh.from_array(conv_w(rng, 8, 8), "w4"),
        nh.from_array((rng.standard_normal((4, 8)) * 0.5).astype(np.float32), "wf"),
        nh.from_array(np.zeros(4, np.float32), "bf"),
    ]
    for n, v in [("g", 1.0), ("b", 0.1), ("m", 0.0), ("v", 1.0)]:
        inits.append(nh.from_array(np.full(8, v, np.float32), f"bn_{n}"))
    add_in = ["r1", "bn3"] if skip_first else ["bn3", "r1"]
    nodes = [
        oh.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", **CONV3),
        oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        oh.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", **CONV3),
        oh.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        oh.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3", **CONV3),
        oh.make_node(
            "BatchNormalization", ["c3", "bn_g", "bn_b", "bn_m", "bn_v"], ["bn3"], name="bn3"
        ),
        oh.make_node("Add", add_in, ["s"], name="add"),
        oh.make_node("Relu", ["s"], ["r3"], name="relu3"),
        oh.make_node("Conv", ["r3", "w4"], ["c4"], name="conv4", **CONV3),
        oh.make_node("GlobalAveragePool", ["c4"], ["gap"], name="gap"),
        oh.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        oh.make_node("Gemm", ["flat", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    return make_model(nodes, [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 4])], inits)


def concat_model(nested: bool = False, seed: int = 1) -> onnx.ModelProto:
    """stem conv; branches a, b (and c when nested) concatenated into convc; head conv."""
    rng = np.random.default_rng(seed)
    inits = [
        nh.from_array(conv_w(rng, 8, 3), "w0"),
        nh.from_array(conv_w(rng, 4, 8), "wa"),
        nh.from_array(conv_w(rng, 4, 8), "wb"),
        nh.from_array(conv_w(rng, 4, 8), "wcb"),
        nh.from_array(conv_w(rng, 8, 12 if nested else 8), "wc"),
        nh.from_array(conv_w(rng, 2, 8), "wh"),
    ]
    nodes = [
        oh.make_node("Conv", ["x", "w0"], ["c0"], name="stem", **CONV3),
        oh.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        oh.make_node("Conv", ["r0", "wa"], ["ca"], name="conva", **CONV3),
        oh.make_node("Relu", ["ca"], ["ra"], name="relua"),
        # branch b is scaled up so its range differs clearly from branch a's
        oh.make_node("Conv", ["r0", "wb"], ["cb"], name="convb", **CONV3),
        oh.make_node("Relu", ["cb"], ["rb0"], name="relub"),
        oh.make_node("Add", ["rb0", "rb0"], ["rb"], name="double_b"),
    ]
    if nested:
        nodes += [
            oh.make_node("Conv", ["r0", "wcb"], ["cc"], name="convcb", **CONV3),
            oh.make_node("Relu", ["cc"], ["rc"], name="reluc"),
            oh.make_node("Concat", ["ra", "rb"], ["cat_in"], name="cat_inner", axis=1),
            oh.make_node("Concat", ["cat_in", "rc"], ["cat"], name="cat", axis=1),
        ]
    else:
        nodes.append(oh.make_node("Concat", ["ra", "rb"], ["cat"], name="cat", axis=1))
    nodes += [
        oh.make_node("Conv", ["cat", "wc"], ["cc2"], name="convc", **CONV3),
        oh.make_node("Relu", ["cc2"], ["rcc"], name="reluc2"),
        oh.make_node("Conv", ["rcc", "wh"], ["y"], name="head", **CONV3),
    ]
    if not nested:
        inits = [i for i in inits if i.name != "wcb"]
    return make_model(nodes, [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 2, 8, 8])], inits)


def matmul_model(seed: int = 2) -> onnx.ModelProto:
    """Gemm(transB=0) - Gemm(transB=1) - MatMul(weight) - MatMul(act, act) - Gemm head."""
    rng = np.random.default_rng(seed)

    def w(shape: tuple[int, int], fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    inits = [
        nh.from_array(w((16, 32), 16), "g0_w"),  # transB=0: (K, N)
        nh.from_array(w((20, 32), 32), "g1_w"),  # transB=1: (N, K)
        nh.from_array(np.full(20, 0.05, np.float32), "g1_b"),
        nh.from_array(w((20, 24), 20), "mm_w"),  # (K, N)
        nh.from_array(w((3, 16), 16) * 0.2, "head_w"),  # transB=1
        nh.from_array(np.array([-1, 4, 6], np.int64), "shape3"),
        nh.from_array(np.array([-1, 16], np.int64), "shape2"),
    ]
    nodes = [
        oh.make_node("Gemm", ["x", "g0_w"], ["h0"], name="gemm0"),
        oh.make_node("Relu", ["h0"], ["a0"], name="act0"),
        oh.make_node("Gemm", ["a0", "g1_w", "g1_b"], ["h1"], name="gemm1", transB=1),
        oh.make_node("Relu", ["h1"], ["a1"], name="act1"),
        oh.make_node("MatMul", ["a1", "mm_w"], ["h2"], name="matmul_w"),
        oh.make_node("Relu", ["h2"], ["a2"], name="act2"),
        oh.make_node("Reshape", ["a2", "shape3"], ["a3"], name="reshape3"),
        oh.make_node("Transpose", ["a3"], ["a3t"], name="transpose", perm=[0, 2, 1]),
        oh.make_node("MatMul", ["a3", "a3t"], ["gram"], name="matmul_aa"),  # (N,4,6)@(N,6,4)
        oh.make_node("Reshape", ["gram", "shape2"], ["gram2"], name="reshape2"),
        oh.make_node("Gemm", ["gram2", "head_w"], ["y"], name="head", transB=1),
    ]
    return make_model(nodes, [vi("x", ["N", 16])], [vi("y", ["N", 3])], inits)


def opset11_model(seed: int = 3) -> onnx.ModelProto:
    """An opset-11 export: Conv, Relu, residual Add, Concat, Unsqueeze, Reshape, MatMul, Gemm."""
    rng = np.random.default_rng(seed)
    inits = [
        nh.from_array(conv_w(rng, 4, 3), "w1"),
        nh.from_array(conv_w(rng, 4, 4), "w2"),
        nh.from_array(conv_w(rng, 4, 8), "w3"),
        nh.from_array(np.array([-1, 4 * 16], np.int64), "shape"),
        nh.from_array((rng.standard_normal((64, 10)) * 0.2).astype(np.float32), "wm"),
        nh.from_array((rng.standard_normal((5, 10)) * 0.4).astype(np.float32), "wg"),
    ]
    nodes = [
        oh.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", **CONV3),
        oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        oh.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", **CONV3),
        oh.make_node("Add", ["c2", "r1"], ["s"], name="add"),
        oh.make_node("Relu", ["s"], ["r2"], name="relu2"),
        oh.make_node("Concat", ["r1", "r2"], ["cat"], name="cat", axis=1),
        oh.make_node("Conv", ["cat", "w3"], ["c3"], name="conv3", **CONV3),
        oh.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        oh.make_node("Reshape", ["r3", "shape"], ["flat"], name="reshape"),
        oh.make_node("MatMul", ["flat", "wm"], ["m"], name="matmul"),
        oh.make_node("Unsqueeze", ["m"], ["mu"], name="unsqueeze", axes=[0]),  # opset-11 attr
        oh.make_node("Squeeze", ["mu"], ["ms"], name="squeeze", axes=[0]),
        oh.make_node("Relu", ["ms"], ["rm"], name="relum"),
        oh.make_node("Gemm", ["rm", "wg"], ["y"], name="fc", transB=1),
    ]
    return make_model(nodes, [vi("x", ["N", 3, 4, 4])], [vi("y", ["N", 5])], inits, opset=11)


# ----------------------------------------------------------------------------- inspection helpers


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def node_of(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def inits_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: nh.to_array(i) for i in model.graph.initializer}


def source_of(model: onnx.ModelProto, node: str, index: int) -> tuple[str, str | None]:
    """What feeds input ``index`` of ``node``: ('float', tensor), ('act', tensor) for a Q/DQ'd
    activation, or ('weight', int8 initializer) for a DequantizeLinear of a constant."""
    prod = producers(model)
    tensor = node_of(model, node).input[index]
    dq = prod.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return "float", tensor
    q = prod.get(dq.input[0])
    if q is None:
        return "weight", dq.input[0]
    assert q.op_type == "QuantizeLinear"
    return "act", q.input[0]


def quantized_tensors(model: onnx.ModelProto) -> list[str]:
    return [n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]


def act_scale(model: onnx.ModelProto, tensor: str) -> float:
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    return float(inits_of(model)[q.input[1]])


def weight_dq(model: onnx.ModelProto, node: str, index: int) -> onnx.NodeProto:
    return producers(model)[node_of(model, node).input[index]]


def run(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs: list[str] | None = None,
    arithmetic: str = "tensorrt",
) -> dict[str, np.ndarray]:
    """Outputs with ONNX Runtime; int8 in TensorRT's arithmetic (unfused Q/DQ, the same on any
    CPU) unless ``arithmetic="fused"`` asks for ONNX Runtime's CPU-dependent int8 kernels."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for name in outputs or []:
        if name not in existing:
            m.graph.output.append(oh.make_empty_tensor_value_info(name))
    so = session_options(arithmetic)
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = outputs or [o.name for o in model.graph.output]
    return dict(zip(names, sess.run(names, feeds)))


def real_amax(
    model: onnx.ModelProto, tensors: Iterable[str], feeds: dict[str, np.ndarray]
) -> dict[str, float]:
    values = run(model, feeds, list(tensors))
    return {k: float(np.max(np.abs(v))) for k, v in values.items()}


def feeds_for(model: onnx.ModelProto, seed: int, n: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inp = model.graph.input[0]
    shape = [n] + [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]
    return {inp.name: rng.standard_normal(shape).astype(np.float32)}


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def quantize_with_real_amax(
    model: onnx.ModelProto, options: QuantizeOptions | None = None, seed: int = 10
) -> tuple[QuantizationPlan, onnx.ModelProto]:
    options = options or QuantizeOptions()
    plan = plan_quantization(model, options)
    amax = real_amax(model, plan.activations, feeds_for(model, seed, 64))
    return plan, quantize_model(model, amax, options)

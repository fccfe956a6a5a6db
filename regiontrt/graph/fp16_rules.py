"""Which nodes the FP16 pass keeps in float32, and the check that a conversion type-checks."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16

DEFAULT_FP32_OPS: frozenset[str] = frozenset(
    {
        # Overflow: float16 tops out at 65504. exp(x) overflows for x > 11.1, x**2 for |x| > 256,
        # and sums or products of many elements exceed the range although each term fits.
        "Exp", "Pow", "Softplus",
        "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceProd", "ReduceLogSumExp", "CumSum",
        # Precision-critical normalisation: statistics over a whole axis (mean, variance) lose
        # digits to cancellation in float16's 11-bit mantissa, and their small denominators
        # (var + eps; eps = 1e-5 is subnormal in float16, 1e-12 is zero) divide by ~0.
        "Softmax", "LogSoftmax", "ReduceMean", "ReduceLogSum", "Log", "Sqrt", "Reciprocal",
        "LayerNormalization", "GroupNormalization", "InstanceNormalization",
        "MeanVarianceNormalization", "LpNormalization",
        # Index and shape producers: a float16 rounding can flip which element wins (TopK,
        # ArgMax), positions beyond 2048 are no longer integers (Range), and box coordinates
        # with IoU thresholds decide detections (NonMaxSuppression, RoiAlign).
        "TopK", "ArgMax", "ArgMin", "Range", "NonMaxSuppression", "RoiAlign",
        # Quantization scales can be smaller than float16's smallest normal (6.1e-5); the INT8
        # policy decides their type, not the FP16 conversion.
        "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
        # Random generators: their dtype is an attribute; left alone rather than rewritten.
        "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
        "Bernoulli",
    }
)  # fmt: skip
"""Ops kept in float32 by default, each for overflow, precision or index stability (see source).

Deliberately *not* listed: ``Conv``, ``MatMul``, ``Gemm`` (the point of float16; GPU kernels
accumulate in float32), ``GlobalAveragePool``/``AveragePool`` (a mean is bounded by its inputs;
backends accumulate pooling in float32), ``BatchNormalization`` (at inference a per-channel
affine map with fixed statistics, mostly folded into convolutions by ``clean()``; keeping a
leftover one in float32 costs two casts and cannot undo the rounding of its float16 input, as in
PyTorch autocast), ``Erf``, ``Tanh``, ``Sigmoid`` (bounded), ``Div``
(ubiquitous scaling; a divisor that can be tiny normally comes from ``Sqrt``/``Reduce*``, which
are listed, and an elementwise op fed only by float32 tensors stays float32 anyway).
"""

ISLAND_OPS: frozenset[str] = frozenset(
    {"Add", "Sub", "Mul", "Div", "Neg", "Abs", "Max", "Min", "Sum", "Mean", "Clip", "Relu"}
)
"""Elementwise ops that stay float32 when all their non-constant float inputs are float32."""

# Scatter ops that accumulate (add, mul, max, min) into a slot: float16 sums of many updates lose
# digits, and ONNX Runtime's CPU reference has no float16 kernels for them.
_ACCUMULATING = frozenset({"ScatterElements", "ScatterND"})


def kept_by_rule(node: onnx.NodeProto) -> bool:
    """Nodes kept float32 whatever the op lists say.

    ``BitCast`` reinterprets the bits of its input, so its meaning depends on the input type;
    scatters with a ``reduction`` accumulate.
    """
    if node.op_type == "BitCast":
        return True
    if node.op_type in _ACCUMULATING:
        return any(a.name == "reduction" and a.s not in (b"", b"none") for a in node.attribute)
    return False


def types_agree(
    schema: onnx.defs.OpSchema,
    node: onnx.NodeProto,
    wants: Sequence[int],
    outs: Sequence[int],
    info: Mapping[str, onnx.ValueInfoProto],
    known: Mapping[str, int],
    model: onnx.ModelProto,
) -> bool:
    """Whether ONNX's inference for ``node`` with the planned input types gives the planned
    output types (``wants`` of -1 mean the type ``known`` gives).

    Type constraints alone do not say everything: an op's inference function may tie an output
    to an input of another type parameter, or refuse a combination outright (``BitCast`` of a
    16-bit input to a 32-bit type). Any refusal or disagreement keeps the node float32.
    """
    types: dict[str, onnx.TypeProto] = {}
    for name, want in zip(node.input, wants):
        if not name:
            continue
        value_type = onnx.TypeProto()
        if name in info:
            value_type.CopyFrom(info[name].type)
        elem = want if want >= 0 else known.get(name, 0)
        if elem:
            value_type.tensor_type.elem_type = elem
        if not value_type.tensor_type.elem_type:
            return False
        types[name] = value_type
    try:
        inferred = onnx.shape_inference.infer_node_outputs(
            schema, node, types, opset_imports=list(model.opset_import)
        )
    except Exception:  # inference refuses the planned types
        return False
    for name, planned in zip(node.output, outs):
        got = inferred.get(name)
        if not name or got is None or not got.HasField("tensor_type"):
            continue
        elem = got.tensor_type.elem_type
        if elem and planned in (FLOAT, FLOAT16) and elem != planned:
            return False
    return True


def elem_type(value: onnx.ValueInfoProto) -> int | None:
    """A value's element type, None if it is not a typed tensor."""
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.elem_type:
        return None
    return int(value.type.tensor_type.elem_type)


def value_attr(node: onnx.NodeProto) -> np.ndarray | None:
    """The float value a Constant/ConstantOfShape node produces, or None if not rewritable."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "ConstantOfShape" and not attrs:
        return np.zeros((1,), dtype=np.float32)
    if set(attrs) - {"value", "value_float", "value_floats"} or len(attrs) != 1:
        return None
    attr = next(iter(attrs.values()))
    if attr.name == "value_float":
        return np.asarray(attr.f, dtype=np.float32)
    if attr.name == "value_floats":
        return np.asarray(list(attr.floats), dtype=np.float32)
    if attr.t.data_type != FLOAT or attr.t.data_location == TensorProto.EXTERNAL:
        return None
    return numpy_helper.to_array(attr.t)


def value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Declared and inferred value infos of the main graph, by name (declared ones where
    shape inference fails)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:  # fall back to what the model declares
        warnings.warn(
            f"to_fp16: shape inference failed ({exc}); nodes whose tensor types the model does "
            "not declare stay float32",
            RuntimeWarning,
            stacklevel=4,
        )
        inferred = model
    g = inferred.graph
    return {v.name: v for v in (*g.input, *g.output, *g.value_info)}

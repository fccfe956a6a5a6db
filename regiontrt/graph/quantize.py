"""INT8 explicit quantization: Q/DQ nodes placed the way TensorRT fuses them.

TensorRT 11 and TensorRT-RTX take INT8 only from QuantizeLinear/DequantizeLinear (Q/DQ) nodes in
the ONNX graph, so regiontrt writes them itself from the region's calibration ranges.
:func:`plan_quantization` says which layers and tensors will be quantized (and so which
activations calibration must measure); :func:`quantize_model` writes the Q/DQ graph from those
activation ranges.

Placement (NVIDIA's explicit-quantization guidance):

* Weighted ops (Conv, ConvTranspose, MatMul, Gemm) get Q/DQ on their inputs: activations per
  tensor, symmetric int8 (scale = amax / 127, zero point 0); constant weights stored as int8 with a
  per-output-channel DequantizeLinear (Conv axis 0, ConvTranspose axis 1, Gemm by ``transB``,
  MatMul the last axis). A MatMul of two activations quantizes both.
* Nothing between a layer and its epilogue (BatchNormalization, ReLU...), nothing on weighted
  ops' outputs unless asked.
* A residual Add quantizes only its skip branch; the branch coming straight from a quantized
  Conv/ConvTranspose (through BatchNormalization or a bias Add at most) fuses into that layer.
  When both branches come from such layers, the deeper one (the main path) fuses.
* Every input of a Concat whose output is quantized shares one scale (the largest amax).
* The first layers (no weighted op upstream) and the last layers (no weighted op downstream) stay
  in high precision by default.
* A tensor read by several quantized nodes gets one Q/DQ pair.

Nodes without a name get ``<OpType>_<index>`` (duplicates ``<name>_<index>``), both in the plan
and in the quantized model, so names from a plan can be passed back in ``exclude_nodes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import onnx
import onnx_graphsurgeon as gs

from regiontrt.errors import InvalidModelError
from regiontrt.graph.io import opset_version
from regiontrt.graph.qdq_options import QuantizeOptions
from regiontrt.graph.qdq_placement import Placement, analyse
from regiontrt.graph.qdq_rewrite import activation_scales, apply_placement, check_amax

__all__ = [
    "QuantizationPlan",
    "QuantizeOptions",
    "count_qdq",
    "name_nodes",
    "plan_quantization",
    "quantize_model",
    "upgrade_opset",
]

QDQ_MIN_OPSET = 13  # per-channel DequantizeLinear (the axis attribute) arrived in opset 13
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class QuantizationPlan:
    """What :func:`quantize_model` will do to a model under some options.

    Attributes:
        nodes: weighted nodes that will be quantized, in graph order.
        activations: activation tensors that get a Q/DQ pair and so need a calibration amax.
        shared_scale_groups: tensors sharing one scale (a Concat's inputs and output).
        skipped: weighted node name -> why it stays in high precision.
    """

    nodes: tuple[str, ...]
    activations: tuple[str, ...]
    shared_scale_groups: tuple[tuple[str, ...], ...]
    skipped: dict[str, str] = field(default_factory=dict)


def _named_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose main-graph nodes all carry unique names."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = {n.name for n in out.graph.node if n.name}
    seen: set[str] = set()
    for k, node in enumerate(out.graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = f"{node.name}_{k}" if node.name else f"{node.op_type}_{k}"
        name = base
        while name in taken or name in seen:
            name += "_"
        node.name = name
        seen.add(name)
        taken.add(name)
    return out


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose nodes carry the names plans and quantized models use.

    Planning or quantizing the copy gives the same node names as the original, and a copy
    raised to opset 13 with :func:`upgrade_opset` keeps them: a caller that quantizes one
    model many times (the mixed-precision search) names and upgrades it once.
    """
    return _named_copy(model)


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Known element types of the model's tensors (shape inference where it succeeds)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # too big for inference, or ops it does not know: types stay unknown
        inferred = model
    g = inferred.graph
    types: dict[str, int] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    return types


def _analyse(model: onnx.ModelProto, options: QuantizeOptions) -> tuple[gs.Graph, Placement]:
    """``model`` must already be a named copy."""
    try:
        graph = gs.import_onnx(model)
    except Exception as exc:
        raise InvalidModelError(f"onnx-graphsurgeon cannot read the model: {exc}") from None
    return graph, analyse(graph, options, _element_types(model))


def plan_quantization(
    model: onnx.ModelProto,
    options: QuantizeOptions = QuantizeOptions(),
) -> QuantizationPlan:
    """Which layers and activation tensors :func:`quantize_model` will quantize.

    Args:
        model: the FP32 model (any opset; it is not modified).
        options: placement options.

    Returns:
        The plan; ``plan.activations`` are the tensors calibration must give an amax for.

    Raises:
        InvalidModelError: the model cannot be read as a graph.
        RegionConfigError: ``options.exclude_nodes`` names a node that is not a weighted op.
    """
    _, p = _analyse(_named_copy(model), options)
    return QuantizationPlan(
        nodes=tuple(p.nodes),
        activations=tuple(p.order),
        shared_scale_groups=tuple(p.groups),
        skipped=dict(p.skipped),
    )


def quantize_model(
    model: onnx.ModelProto,
    amax: Mapping[str, float],
    options: QuantizeOptions = QuantizeOptions(),
) -> onnx.ModelProto:
    """The model with Q/DQ pairs written in, ready for TensorRT or ONNX Runtime.

    The opset is raised to 13 when it is lower and something gets quantized; a model with nothing
    to quantize comes back unchanged (a copy).

    Args:
        model: the FP32 model (not modified).
        amax: calibrated absolute maximum of each tensor in ``plan_quantization(...).activations``
            (extra entries are ignored).
        options: placement options (use the same as for the plan).

    Raises:
        DataError: an amax is missing, non-positive or not finite.
        InvalidModelError: the model cannot be read, converted to opset 13, or holds NaN/inf
            weights.
        RegionConfigError: ``options.exclude_nodes`` names a node that is not a weighted op.
    """
    named = _named_copy(model)
    _, placement = _analyse(named, options)
    if not placement.nodes and not placement.order:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    check_amax(placement.order, amax)  # fail before the (slow) opset conversion
    upgraded = upgrade_opset(named, QDQ_MIN_OPSET)
    graph, placement = _analyse(upgraded, options)
    values = check_amax(placement.order, amax)
    apply_placement(graph, placement, activation_scales(placement, values))
    try:
        out = gs.export_onnx(graph, do_type_check=False)
    except Exception as exc:
        raise InvalidModelError(f"exporting the quantized graph failed: {exc}") from None
    out.ir_version = upgraded.ir_version
    out.doc_string = upgraded.doc_string
    out.model_version = upgraded.model_version
    out.domain = upgraded.domain
    del out.metadata_props[:]
    out.metadata_props.extend(upgraded.metadata_props)
    try:
        onnx.checker.check_model(out)
    except Exception as exc:
        raise InvalidModelError(f"the quantized model fails the ONNX checker: {exc}") from None
    return out


def upgrade_opset(model: onnx.ModelProto, minimum: int = QDQ_MIN_OPSET) -> onnx.ModelProto:
    """A copy of ``model`` importing at least opset ``minimum`` of the default domain.

    A model already at ``minimum`` or above is returned as is (copied), never raised further.

    Raises:
        InvalidModelError: ONNX's version converter cannot convert the model.
    """
    current = opset_version(model)
    if current >= minimum:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    try:
        out = onnx.version_converter.convert_version(model, minimum)
        # The IR version a runtime expects with this opset (opset 13 came with IR 7).
        out.ir_version = max(out.ir_version, _ir_for_opset(minimum))
        onnx.checker.check_model(out)
    except Exception as exc:
        raise InvalidModelError(
            f"cannot convert the model from opset {current} to opset {minimum}: {exc}"
        ) from None
    return out


def _ir_for_opset(opset: int) -> int:
    for entry in onnx.helper.VERSION_TABLE:  # (release, ir, ai.onnx opset, ml opset[, ...])
        if entry[2] >= opset:
            return int(entry[1])
    return int(onnx.IR_VERSION)


def count_qdq(model: onnx.ModelProto | onnx.GraphProto) -> int:
    """Number of QuantizeLinear and DequantizeLinear nodes, subgraphs and functions included."""
    if isinstance(model, onnx.ModelProto):
        total = _count_graph(model.graph)
        for func in model.functions:
            total += sum(n.op_type in _QDQ_OPS for n in func.node)
        return total
    return _count_graph(model)


def _count_graph(graph: onnx.GraphProto) -> int:
    total = 0
    for node in graph.node:
        total += node.op_type in _QDQ_OPS and node.domain in ("", "ai.onnx")
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                total += _count_graph(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                total += sum(_count_graph(g) for g in attr.graphs)
    return total

"""What precisions a model really computes in: the evidence behind every compliance decision.

:func:`scan_model` walks the whole model (see :func:`regiontrt.graph.io.iter_graphs`: the main
graph, subgraphs at any depth, model-local functions, graphs and tensors stored as a function's
default attribute values, training-info graphs) and reports as **int8** (any lossy integer,
4-bit or 8-bit float arithmetic):

* quantization ops by name: ``QuantizeLinear``/``DequantizeLinear`` of any domain, ``QLinear*``,
  ``*Integer*`` (``MatMulInteger``, ``ConvInteger``...), ``DynamicQuantize*``, ``QOrdered*``,
  ``*NBits``/``*Bnb4``/``*FpQ4``/``*BlockQuantized`` (4-bit weights), ``QGemm``, ``QAttention``,
  ``QMoE`` and every op whose name holds ``Quant``;
* any type-setting attribute (``to``, ``dtype``, ``output_dtype``...) naming an 8-bit-or-narrower
  integer, a float8 or a float4 type, and ``CastLike`` to such a type (or to a type that cannot
  be determined);
* stored tensors of those types;
* any op *reading* a narrow value other than to move it or widen it: a ``uint8`` graph input
  fed to ``MatMulNBits`` or to an unknown custom op is arithmetic in 8 bits, a ``uint8`` image
  cast to float is not.

A model with local functions is also scanned after :func:`onnx.inliner.inline_local_functions`,
which resolves what only the call site says (a ``Cast`` whose ``to`` is the caller's attribute,
defaults, nested functions). If inlining fails, a type attribute taken from the caller counts
as int8: what cannot be resolved is not assumed harmless.

**fp16**: float16/bfloat16 tensors, initializers, casts and typed values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx

from regiontrt.graph.io import iter_graphs, iter_tensors
from regiontrt.graph.scope import elem_types
from regiontrt.precision.types import Precision

T = onnx.TensorProto
#: Element types of 8 bits or fewer: integer, float8 and float4 (names looked up, as older onnx
#: versions lack some).
NARROW_TYPES = frozenset(
    getattr(T, name) for name in (
        "INT8", "UINT8", "INT4", "UINT4", "INT2", "UINT2", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ",
        "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0", "FLOAT4E2M1",
    ) if hasattr(T, name)
)
HALF_TYPES = frozenset((T.FLOAT16, T.BFLOAT16))
QUANT_OPS = frozenset((
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QGemm", "QAttention",
    "QEmbedLayerNormalization", "QuantizeWithOrder", "DequantizeWithOrder", "QuantizeBFP",
    "DequantizeBFP", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "QMoE",
))
_QUANT_PREFIXES = ("QLinear", "DynamicQuantize", "QOrdered")
_QUANT_PARTS = ("Integer", "Quant", "NBits", "Bnb4", "FpQ4")
#: Attributes that set an output element type.
TYPE_ATTRS = frozenset(("to", "dtype", "output_dtype", "output_datatype"))
#: Ops that move or select a value without computing on it: a narrow value passes through.
MOVES = frozenset((
    "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Gather",
    "GatherElements", "GatherND", "Concat", "Split", "SplitToSequence", "Expand", "Tile", "Pad",
    "DepthToSpace", "SpaceToDepth", "Compress", "Optional", "OptionalGetElement",
    "SequenceConstruct", "SequenceAt", "SequenceInsert", "ConcatFromSequence",
))
#: Ops that read a value without computing on its elements (or widen it: casts are judged by
#: their target type).
READS = frozenset(("Shape", "Size", "Cast", "CastLike", "If", "Loop", "Scan"))


@dataclass(frozen=True)
class Finding:
    """Evidence of a precision in a model: what it is and where."""

    precision: Precision
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.precision.value}: {self.what} ({self.where})"


def is_quant_op(op_type: str) -> bool:
    """Whether an op computes in quantized (narrow integer) arithmetic, by its name."""
    return (op_type in QUANT_OPS or op_type.startswith(_QUANT_PREFIXES)
            or any(part in op_type for part in _QUANT_PARTS))


def type_precision(elem: int) -> Precision | None:
    """The lossy precision an ONNX element type is evidence of, if any."""
    if elem in NARROW_TYPES:
        return Precision.INT8
    if elem in HALF_TYPES:
        return Precision.FP16
    return None


def _type_name(elem: int) -> str:
    try:
        return T.DataType.Name(elem)
    except ValueError:
        return f"type {elem}"


def _node_findings(where: str, node: onnx.NodeProto, resolved: bool) -> Iterator[Finding]:
    label = f"{where} > {node.op_type} {node.name or '?'}"
    if is_quant_op(node.op_type):
        yield Finding(Precision.INT8, label, f"quantization op {node.op_type}")
    if node.op_type == "Cast" and not any(a.name == "to" for a in node.attribute):
        yield Finding(Precision.INT8, label, "cast to a type no attribute gives")
    for attr in node.attribute:
        if attr.name not in TYPE_ATTRS:
            continue
        if attr.ref_attr_name:
            if not resolved:  # the caller decides; unresolved, it counts
                yield Finding(Precision.INT8, label,
                              f"{attr.name} taken from the caller's {attr.ref_attr_name!r}, "
                              "which could not be resolved")
            continue
        p = type_precision(attr.i) if attr.type == onnx.AttributeProto.INT else None
        if p is not None:
            verb = "cast to" if node.op_type == "Cast" else f"{attr.name} ="
            yield Finding(p, label, f"{verb} {_type_name(attr.i)}")


def _castlike(model: onnx.ModelProto) -> tuple[list[Finding], int]:
    """Findings of ``CastLike`` nodes, and how many have a target type that is not declared."""
    found: list[Finding] = []
    unknown = 0
    for where, graph in iter_graphs(model):
        types = elem_types(graph)
        for node in graph.node:
            if node.op_type != "CastLike" or len(node.input) < 2:
                continue
            label = f"{where} > CastLike {node.name or '?'}"
            target = types.get(node.input[1])
            precision = None if target is None else type_precision(target)
            if target is None:
                unknown += 1
                found.append(Finding(Precision.INT8, label,
                                     "CastLike to a type that cannot be determined"))
            elif precision is not None:
                found.append(Finding(precision, label, f"cast to {_type_name(target)}"))
    return found, unknown


def _narrow_reads(model: onnx.ModelProto) -> list[Finding]:
    """Ops that compute on a narrow value which came from a graph input (a ``uint8`` tensor fed
    to ``MatMulNBits``, an unknown op...). Values are followed through moves, in graph order;
    subgraphs see the values of the graphs around them."""
    found: list[Finding] = []

    def walk(where: str, graph: onnx.GraphProto, narrow: set[str]) -> None:
        narrow |= {v.name for v in graph.input if v.type.tensor_type.elem_type in NARROW_TYPES}
        for node in graph.node:
            for attr in node.attribute:
                for i, sub in enumerate([attr.g] if attr.HasField("g") else list(attr.graphs)):
                    walk(f"{where} > {node.op_type} {node.name or '?'}.{attr.name}[{i}]", sub,
                         set(narrow))
            read = [name for name in node.input if name in narrow]
            if not read:
                continue
            if node.op_type in MOVES:
                narrow.update(node.output)
            elif node.op_type not in READS:
                found.append(Finding(Precision.INT8, f"{where} > {node.op_type} {node.name or '?'}",
                                     f"{node.op_type} computes on the 8-bit value {read[0]!r}"))

    walk("graph", model.graph, set())
    return found


def _inlined(model: onnx.ModelProto) -> onnx.ModelProto | None:
    try:
        from onnx import inliner

        return inliner.inline_local_functions(model)
    except Exception:  # a malformed function: its unresolved type attributes count (see above)
        return None


def _castlike_inferred(model: onnx.ModelProto) -> list[Finding] | None:
    """``CastLike`` findings after type inference (exporters such as torch's dynamo put float
    ``CastLike`` in functions, where no type is declared)."""
    try:
        from onnx import shape_inference

        inferred = shape_inference.infer_shapes(model)
    except Exception:  # inference is best effort: the undetermined casts then count
        return None
    return _castlike(inferred)[0]


def _scan_graphs(model: onnx.ModelProto, resolved: bool) -> list[Finding]:
    found: list[Finding] = []
    for where, graph in iter_graphs(model):
        if isinstance(graph, onnx.GraphProto):
            for v in (*graph.input, *graph.output, *graph.value_info):
                p = type_precision(v.type.tensor_type.elem_type)
                if p is Precision.FP16:  # 8-bit inputs (images) are data, not arithmetic
                    found.append(Finding(p, where, f"tensor {v.name!r} typed float16"))
        for node in graph.node:
            found.extend(_node_findings(where, node, resolved))
    for where, tensor in iter_tensors(model):
        p = type_precision(tensor.data_type)
        if p is not None:
            found.append(Finding(p, where, f"stored {_type_name(tensor.data_type)} tensor"))
    return found


def scan_model(model: onnx.ModelProto) -> list[Finding]:
    """Every piece of evidence of int8 or fp16 arithmetic anywhere in ``model``."""
    inlined = _inlined(model) if len(model.functions) else model
    found = _scan_graphs(model, resolved=inlined is not None)
    flat = inlined if inlined is not None else model
    if flat is not model:
        found += _scan_graphs(flat, resolved=True)
    casts, unknown = _castlike(flat)
    if unknown:
        inferred = _castlike_inferred(flat)
        if inferred is not None:
            casts = inferred
    found += casts
    found += _narrow_reads(flat)
    return list({str(f): f for f in found}.values())

"""The precision label of a graph, computed from what it holds rather than from what was asked.

:func:`graph_precision` walks the main graph and every ``If``/``Loop``/``Scan`` subgraph and
returns the narrowest arithmetic present:

* ``"int8"``: an int8/uint8 quantization op (Quantize/DequantizeLinear to or from int8/uint8,
  ``DynamicQuantizeLinear``, ``QLinear*``, ``*Integer`` ops), or int8/uint8 weights read by a
  DequantizeLinear;
* ``"fp16"``: a compute node (anything but ``Cast``, ``CastLike``, ``Identity``, ``Constant``,
  ``Shape``, ``Size``) reading or producing a float16/bfloat16 tensor; a graph that only casts
  its float32 data to float16 and back computes nothing in float16;
* else ``"fp32"``.

A mixed graph (int8 layers next to float16 ones, float32 islands in an fp16 graph) gets the
narrowest: "int8" over "fp16" over "fp32". Element types come from ONNX shape inference where it
works, else from what the graph declares; a graph with float16 compute that inference cannot
type and that declares nothing about it reads as "fp32".
"""

from __future__ import annotations

import onnx
from onnx import TensorProto as T

from regiontrt.graph.scope import elem_types, walk_graphs

__all__ = ["graph_precision"]

_EIGHT_BIT = frozenset({T.INT8, T.UINT8})
_HALF = frozenset({T.FLOAT16, T.BFLOAT16})
_MOVE_OPS = frozenset({"Cast", "CastLike", "Identity", "Constant", "Shape", "Size"})


def graph_precision(model: onnx.ModelProto) -> str:
    """``"int8"``, ``"fp16"`` or ``"fp32"``: the narrowest arithmetic ``model`` holds."""
    try:
        typed = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # custom ops: the declared types are all there is
        typed = model
    half = False
    types = _types(typed.graph)
    for graph in walk_graphs(typed.graph):
        for node in graph.node:
            if _is_int8(node, types):
                return "int8"
            if node.op_type not in _MOVE_OPS and any(
                    types.get(n) in _HALF for n in (*node.input, *node.output) if n):
                half = True
    return "fp16" if half else "fp32"


def _is_int8(node: onnx.NodeProto, types: dict[str, int]) -> bool:
    op = node.op_type
    if op.startswith("QLinear") or "Integer" in op or op == "DynamicQuantizeLinear":
        return True
    if op == "QuantizeLinear":
        zero = types.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        attr = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
        out = types.get(node.output[0]) if node.output else None
        return (zero or attr or out or T.UINT8) in _EIGHT_BIT  # the default is uint8
    if op == "DequantizeLinear":
        return types.get(node.input[0]) in _EIGHT_BIT if node.input else False
    return False


def _types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element types ``graph`` and its subgraphs know, in one map (a subgraph reads outer names
    typed above it)."""
    types: dict[str, int] = {}
    for g in walk_graphs(graph):
        types.update(elem_types(g))
    return types

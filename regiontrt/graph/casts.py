"""Cast-chain folding for the FP16 pass: ``Cast(A->B) -> Cast(B->C)`` becomes ``Cast(A->C)``."""

from __future__ import annotations

import collections

import onnx
from onnx import TensorProto

from regiontrt.graph.scope import subgraph_references

_FLOAT_WIDTH: dict[int, int] = {
    TensorProto.FLOAT16: 16,
    TensorProto.FLOAT: 32,
    TensorProto.DOUBLE: 64,
}


def fold_cast_chains(graph: onnx.GraphProto) -> int:
    """Fold ``Cast(A->B) -> Cast(B->C)`` into ``Cast(A->C)`` and drop Casts that change nothing.

    Works in place on ``graph`` (nodes in topological order) and returns how many Casts went. A
    pair folds when A->B is exact (float16->float32, float32->float64...) or when B and C are
    floats with B at least as wide as C (C's rounding then decides). A narrowing followed by a
    widening (float32->float16->float32) is a deliberate rounding and stays. A Cast whose output
    is a graph output, read by a subgraph or read by another node too is never removed; a Cast
    with a ``saturate`` or ``round_mode`` attribute is left as written.
    """
    keep = {o.name for o in graph.output} | subgraph_references(graph)
    types = _declared_types(graph)
    nodes = list(graph.node)
    producers = {o: n for n in nodes for o in n.output}
    readers = collections.Counter(i for n in nodes for i in n.input)
    removed: set[int] = set()
    for node in nodes:
        while _plain_cast(node):
            first = producers.get(node.input[0])
            if first is None or not _plain_cast(first) or first.output[0] in keep:
                break
            a, b, c = types.get(first.input[0]), _cast_to(first), _cast_to(node)
            exact = a is not None and _FLOAT_WIDTH.get(a, 99) <= _FLOAT_WIDTH.get(b, 0)
            narrowing = _FLOAT_WIDTH.get(b, 0) >= _FLOAT_WIDTH.get(c, 99)
            if readers[first.output[0]] != 1 or a is None or not (a == b or exact or narrowing):
                break
            node.input[0] = first.input[0]
            removed.add(id(first))
    alias: dict[str, str] = {}
    for node in nodes:
        if _plain_cast(node) and id(node) not in removed and node.output[0] not in keep:
            src = alias.get(node.input[0], node.input[0])
            if types.get(src) == _cast_to(node):
                alias[node.output[0]] = src
                removed.add(id(node))
    kept = [n for n in nodes if id(n) not in removed]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = alias.get(name, name)
    del graph.node[:]
    graph.node.extend(kept)
    return len(removed)


def _plain_cast(node: onnx.NodeProto) -> bool:
    return node.op_type == "Cast" and node.domain in ("", "ai.onnx") and all(
        a.name == "to" for a in node.attribute
    )


def _cast_to(node: onnx.NodeProto) -> int:
    return next(int(a.i) for a in node.attribute if a.name == "to")


def _declared_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {
        v.name: int(v.type.tensor_type.elem_type)
        for v in (*graph.input, *graph.output, *graph.value_info)
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type
    }
    types.update({i.name: int(i.data_type) for i in graph.initializer})
    return types

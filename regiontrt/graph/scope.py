"""What the graph passes understand: walking subgraphs, outer-scope names, non-tensor values.

The passes (:mod:`~regiontrt.graph.clean`, :mod:`~regiontrt.graph.fp16`) rewrite plain tensor
dataflow. The helpers here tell them where that ends: names a subgraph reads from the outer scope
(rewiring them would break the reference) and values that are not plain tensors (sequences,
optionals, maps, sparse tensors), which GraphSurgeon cannot represent and the passes leave as
they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx

# Ops whose inputs or outputs are sequences or optionals whatever their declared types say.
NON_TENSOR_OPS = frozenset(
    {
        "SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceErase", "SequenceAt",
        "SequenceLength", "SequenceMap", "SplitToSequence", "ConcatFromSequence",
        "Optional", "OptionalHasElement", "OptionalGetElement",
    }
)  # fmt: skip


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held in ``node``'s attributes (``If`` branches, ``Loop``/``Scan`` bodies)."""
    out: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            out.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            out.extend(attr.graphs)
    return out


def walk_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs, depth first."""
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from walk_nodes(sub)


def walk_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph below it."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from walk_graphs(sub)


def subgraph_references(graph: onnx.GraphProto) -> set[str]:
    """Names used by nodes inside subgraphs: rewiring them could break outer-scope references."""
    names: set[str] = set()
    for node in graph.node:
        for sub in subgraphs(node):
            for inner in walk_graphs(sub):
                names.update(v.name for v in (*inner.input, *inner.output))
                for n in inner.node:
                    names.update(n.input)
                    names.update(n.output)
    names.discard("")
    return names


def is_plain_tensor(value_type: onnx.TypeProto) -> bool:
    """A dense tensor with a known element type (what the passes can rewrite)."""
    return value_type.HasField("tensor_type") and bool(value_type.tensor_type.elem_type)


def non_tensor_values(model: onnx.ModelProto) -> list[str]:
    """Names of values that are not plain tensors anywhere in ``model`` (sorted).

    Looks at the declared inputs, outputs and value_info of every graph and subgraph, at the
    types ONNX shape inference gives the top-level values, and at the outputs of sequence and
    optional ops (whose types inference may leave blank).
    """
    names: set[str] = set()
    for graph in walk_graphs(model.graph):
        for value in _declared(graph):
            if value.type.WhichOneof("value") not in (None, "tensor_type"):
                names.add(value.name)
        for node in graph.node:
            if node.op_type in NON_TENSOR_OPS:
                names.update(n for n in (*node.input, *node.output) if n)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # custom ops: the declared types above are all we have
        return sorted(names)
    for value in _declared(inferred.graph):
        if value.type.WhichOneof("value") not in (None, "tensor_type"):
            names.add(value.name)
    return sorted(names)


def _declared(graph: onnx.GraphProto) -> Iterable[onnx.ValueInfoProto]:
    return (*graph.input, *graph.output, *graph.value_info)

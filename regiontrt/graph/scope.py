"""What the graph passes understand: walking subgraphs, outer-scope names, non-tensor values.

The passes (:mod:`~regiontrt.graph.clean`, :mod:`~regiontrt.graph.fp16`) rewrite plain tensor
dataflow. The helpers here tell them where that ends: names a subgraph reads from the outer scope
(rewiring them would break the reference) and values that are not plain tensors (sequences,
optionals, maps, sparse tensors), which GraphSurgeon cannot represent and the passes leave as
they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

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


def non_tensor_values(model: onnx.ModelProto,
                      inferred: onnx.ModelProto | None = None) -> list[str]:
    """Names of values that are not plain tensors anywhere in ``model`` (sorted).

    Looks at the declared inputs, outputs and value_info of every graph and subgraph, at the
    types ONNX shape inference gives the top-level values, and at the outputs of sequence and
    optional ops (whose types inference may leave blank). ``inferred``: ``model`` after shape
    inference, when the caller has it already.
    """
    names: set[str] = set()
    for graph in walk_graphs(model.graph):
        for value in _declared(graph):
            if value.type.WhichOneof("value") not in (None, "tensor_type"):
                names.add(value.name)
        for node in graph.node:
            if node.op_type in NON_TENSOR_OPS:
                names.update(n for n in (*node.input, *node.output) if n)
    if inferred is None:
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


def rename_values(node: onnx.NodeProto, rename: Mapping[str, str]) -> None:
    """Apply ``rename`` in place to ``node``'s inputs and outputs and to the names its subgraphs
    read or output (outer-scope references follow the rename)."""
    for i, name in enumerate(node.input):
        node.input[i] = rename.get(name, name)
    for i, name in enumerate(node.output):
        node.output[i] = rename.get(name, name)
    for sub in subgraphs(node):
        for g in walk_graphs(sub):
            for inner in g.node:
                for i, name in enumerate(inner.input):
                    inner.input[i] = rename.get(name, name)
            for value in g.output:
                value.name = rename.get(value.name, value.name)


def defined_names(graph: onnx.GraphProto) -> set[str]:
    """Names ``graph`` itself defines: inputs, initializers, node outputs and node names."""
    names = {v.name for v in graph.input} | {i.name for i in graph.initializer}
    names.update(o for n in graph.node for o in (*n.output, n.name) if o)
    return names


def outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names ``graph`` or its subgraphs read that none of them defines (outer-scope names)."""
    defined: set[str] = set()
    read: set[str] = set()
    for g in walk_graphs(graph):
        defined |= defined_names(g)
        read.update(n for node in g.node for n in node.input if n)
        read.update(v.name for v in g.output)
    return read - defined


def subgraph_model(model: onnx.ModelProto, sub: onnx.GraphProto,
                   outer: Mapping[str, onnx.ValueInfoProto]) -> onnx.ModelProto | None:
    """``sub`` as a model of its own, its outer-scope reads as extra graph inputs.

    Lets a main-graph pass rewrite a subgraph body; :func:`adopt_body` puts the result back.
    ``outer``: value infos of the enclosing scopes' names. None when an outer name, a formal
    input or an output has no known element type.
    """
    extra = sorted(outer_reads(sub))
    if any(n not in outer or not is_plain_tensor(outer[n].type) for n in extra):
        return None
    if not all(is_plain_tensor(v.type) for v in (*sub.input, *sub.output)):
        return None
    graph = onnx.GraphProto()
    graph.CopyFrom(sub)
    graph.input.extend(outer[n] for n in extra)
    out = onnx.ModelProto()
    out.ir_version = max(model.ir_version, 4)  # initializers need not be listed as inputs
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    out.graph.CopyFrom(graph)
    return out


def adopt_body(sub: onnx.GraphProto, converted: onnx.ModelProto, taken: set[str]) -> None:
    """Replace ``sub``'s nodes, initializers and value infos by ``converted``'s.

    ``converted`` is :func:`subgraph_model`'s model after a pass that kept its input and output
    names; names it added that are in ``taken`` (used elsewhere in the model: ONNX names are
    unique across scopes) are renamed. ``taken`` grows by the names added.
    """
    before = all_names(sub)
    graph = converted.graph
    rename: dict[str, str] = {}
    # Nested bodies were converted without sight of this model: check their names too.
    for name in sorted(all_names(graph) - before - {v.name for v in graph.input}):
        if name in taken:
            k = 1
            while f"{name}_{k}" in taken or f"{name}_{k}" in before:
                k += 1
            rename[name] = f"{name}_{k}"
        taken.add(rename.get(name, name))
    for g in walk_graphs(graph):
        for node in g.node:
            node.input[:] = [rename.get(n, n) for n in node.input]
            node.output[:] = [rename.get(n, n) for n in node.output]
            node.name = rename.get(node.name, node.name)
        for item in (*g.initializer, *g.value_info, *g.input, *g.output):
            item.name = rename.get(item.name, item.name)
    formal = {v.name for v in sub.input}
    del sub.node[:], sub.initializer[:], sub.value_info[:]
    sub.node.extend(graph.node)
    sub.initializer.extend(graph.initializer)
    sub.value_info.extend(v for v in graph.value_info if v.name not in formal)


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every name defined anywhere in ``graph`` and its subgraphs."""
    return set().union(*(defined_names(g) for g in walk_graphs(graph)))


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``... : the first not in ``taken`` (which it joins)."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def elem_types(graph: onnx.GraphProto | onnx.FunctionProto) -> dict[str, int]:
    """Element types one graph (or function body) declares: its inputs, outputs and value infos
    (0, undeclared, is left out), initializers and ``Constant`` values."""
    types: dict[str, int] = {}
    if isinstance(graph, onnx.GraphProto):
        for v in (*graph.input, *graph.output, *graph.value_info):
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                types[v.name] = v.type.tensor_type.elem_type
        types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    types[node.output[0]] = a.t.data_type
    return types

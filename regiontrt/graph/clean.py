"""The FP32 policy's graph: an ONNX model cleaned for inference, numerically unchanged.

:func:`clean` removes what an inference engine does not need and folds what it can compute
ahead of time:

* ``Identity`` nodes and inference-mode ``Dropout`` nodes are bypassed;
* constant sub-expressions are folded (ONNX-GraphSurgeon's folder, which evaluates them with
  ONNX Runtime), including ``Shape`` of statically shaped tensors, but never ``QuantizeLinear``
  or ``DequantizeLinear`` (explicit INT8 quantization must reach TensorRT as written);
* a ``BatchNormalization`` that directly follows a ``Conv`` or ``ConvTranspose`` whose output it
  alone consumes is folded into that convolution's weights and bias;
* dead nodes and unused initializers are dropped, nodes are sorted topologically and shapes are
  inferred.

The graph inputs and outputs keep their names, element types and declared shapes, and the model
keeps its IR version, opsets and metadata. Initializers that old exporters also list as graph
inputs are treated as constants (they are not part of :func:`~regiontrt.graph.io.input_specs`).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import InvalidModelError

_CONV_OPS = ("Conv", "ConvTranspose")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def clean(model: onnx.ModelProto, *, fold_batchnorm: bool = True) -> onnx.ModelProto:
    """Return a cleaned copy of ``model`` for inference; ``model`` itself is not modified.

    Args:
        model: the model to clean.
        fold_batchnorm: fold ``BatchNormalization`` into a preceding convolution.

    Returns:
        A new model whose outputs equal the input model's within float32 round-off.

    Raises:
        InvalidModelError: ``model`` is not an ONNX model GraphSurgeon can read.
    """
    import onnx_graphsurgeon as gs

    graph = _import(model)
    protected = _subgraph_references(model.graph)
    with _quiet_graphsurgeon():
        _bypass_identities(graph, protected)
        try:
            graph.fold_constants(error_ok=True, should_exclude_node=_keep_unfolded)
        except Exception:  # GraphSurgeon gives up on some graphs (sequence constants...)
            graph = _import(model)
            _bypass_identities(graph, protected)
        graph.cleanup()
        if fold_batchnorm:
            _fold_batchnorm(graph, gs)
        graph.cleanup().toposort()
        cleaned = gs.export_onnx(graph, do_type_check=False)
    return _finish(model, cleaned)


def _keep_unfolded(node: Any) -> bool:
    """Q/DQ pairs on weights are the INT8 policy's explicit quantization: never fold them away."""
    return bool(node.op in _QDQ_OPS)


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` with each foldable ``BatchNormalization`` folded into its conv.

    A BatchNormalization is folded when its input comes from a ``Conv`` or ``ConvTranspose``
    whose weights (and bias, if any) are initializers, whose output feeds only that
    BatchNormalization and is not a graph output, and when its own scale, bias, mean and
    variance are initializers. Nothing else changes, apart from initializers no longer read.

    Raises:
        InvalidModelError: ``model`` is not an ONNX model GraphSurgeon can read.
    """
    import onnx_graphsurgeon as gs

    graph = _import(model)
    with _quiet_graphsurgeon():
        _fold_batchnorm(graph, gs)
        # Drop only the emptied BatchNormalization nodes: a full cleanup would also remove
        # unrelated dead nodes, which is clean()'s job.
        graph.nodes = [n for n in graph.nodes if n.inputs or n.outputs]
        folded = gs.export_onnx(graph, do_type_check=False)
    return _finish(model, folded)


def count_ops(model: onnx.ModelProto) -> collections.Counter[str]:
    """Count nodes by ``op_type``, including the nodes of subgraphs (``If``, ``Loop``, ``Scan``).

    Subgraphs count too so that a compliance check (say, no ``QuantizeLinear`` anywhere) cannot
    be fooled by nodes hidden in a branch.
    """
    counts: collections.Counter[str] = collections.Counter()
    for node in _walk_nodes(model.graph):
        counts[node.op_type] += 1
    return counts


def _walk_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _walk_nodes(sub)


def _subgraph_references(graph: onnx.GraphProto) -> set[str]:
    """Names used by nodes inside subgraphs: rewiring them could break outer-scope references."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                for inner in _walk_nodes(sub):
                    names.update(inner.input)
                    names.update(inner.output)
    return names


def _import(model: onnx.ModelProto) -> Any:
    import onnx_graphsurgeon as gs

    if not isinstance(model, onnx.ModelProto):
        raise InvalidModelError(f"expected an onnx.ModelProto, got {type(model).__name__}")
    try:
        # GraphSurgeon keeps references into the proto it imports; give it a private copy so the
        # caller's model can never be touched.
        private = onnx.ModelProto()
        private.CopyFrom(model)
        return gs.import_onnx(private)
    except Exception as exc:
        raise InvalidModelError(f"cannot read the ONNX graph: {exc}") from None


@contextlib.contextmanager
def _quiet_graphsurgeon() -> Iterator[None]:
    """Silence GraphSurgeon's per-node warnings (folding failures are expected and harmless)."""
    from onnx_graphsurgeon.logger import G_LOGGER

    before = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.ERROR
    try:
        yield
    finally:
        G_LOGGER.severity = before


def _is_passthrough(node: Any, graph_outputs: set[int], gs: Any) -> bool:
    """Identity, or a Dropout that is a no-op at inference and whose mask nobody reads."""
    op = node.op
    if op == "Identity":
        return True
    if op != "Dropout":
        return False
    outputs = node.outputs
    if len(outputs) > 1 and (outputs[1].outputs or id(outputs[1]) in graph_outputs):
        return False
    inputs = node.inputs
    if len(inputs) > 2 and inputs[2].name:
        mode = inputs[2]
        if not isinstance(mode, gs.Constant) or bool(np.asarray(mode.values).any()):
            return False
    return True


def _bypass_identities(graph: Any, protected: set[str]) -> None:
    """Rewire consumers around Identity/Dropout so the later cleanup drops them.

    When the pass-through node produces a graph output, its producer is renamed to write the
    output directly, so output names never change. Nodes touching names used inside subgraphs,
    graph inputs that are outputs too, and constants that are outputs are left in place.
    """
    import onnx_graphsurgeon as gs

    g = graph
    outputs = {id(t) for t in g.outputs}
    inputs = {id(t) for t in g.inputs}
    for node in list(g.nodes):
        if not _is_passthrough(node, outputs, gs) or not node.inputs or not node.outputs:
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if src.name in protected or dst.name in protected:
            continue
        if id(dst) not in outputs:
            for consumer in list(dst.outputs):
                for i, t in enumerate(consumer.inputs):
                    if t is dst:
                        consumer.inputs[i] = src
            node.inputs.clear()
            node.outputs.clear()
            continue
        if id(src) in outputs or id(src) in inputs or isinstance(src, gs.Constant):
            continue
        if not src.inputs:
            continue
        producer = src.inputs[0]
        node.inputs.clear()
        node.outputs.clear()
        for consumer in list(src.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is src:
                    consumer.inputs[i] = dst
        idx = next(i for i, t in enumerate(producer.outputs) if t is src)
        producer.outputs[idx] = dst


def _fold_batchnorm(graph: Any, gs: Any) -> int:
    """Fold BatchNormalization nodes into preceding convolutions of ``graph``; return how many."""
    g = graph
    outputs = {id(t) for t in g.outputs}
    used_names = set(g.tensors().keys())
    folded = 0
    for bn in list(g.nodes):
        conv = _foldable_conv(bn, outputs, gs)
        if conv is None:
            continue
        weight, bias = _folded_params(conv, bn)
        new_inputs = [conv.inputs[0]]
        for base, values in (("weight", weight), ("bias", bias)):
            name = _unique(f"{conv.name or conv.outputs[0].name}_bnfold_{base}", used_names)
            new_inputs.append(gs.Constant(name, values))
        y = bn.outputs[0]
        bn.inputs.clear()
        bn.outputs.clear()
        conv.outputs.clear()
        conv.inputs.clear()
        conv.inputs.extend(new_inputs)
        conv.outputs.append(y)
        folded += 1
    return folded


def _foldable_conv(bn: Any, graph_outputs: set[int], gs: Any) -> Any | None:
    node = bn
    if node.op != "BatchNormalization" or len(node.inputs) != 5:
        return None
    attrs = node.attrs
    if attrs.get("training_mode", 0) or attrs.get("spatial", 1) != 1:
        return None
    extra = node.outputs[1:]
    if any(t.outputs or id(t) in graph_outputs for t in extra):
        return None
    if not all(isinstance(t, gs.Constant) for t in node.inputs[1:]):
        return None
    x = node.inputs[0]
    if id(x) in graph_outputs or len(x.outputs) != 1 or len(x.inputs) != 1:
        return None
    conv = x.inputs[0]
    if conv.op not in _CONV_OPS or len(conv.outputs) != 1 or len(conv.inputs) < 2:
        return None
    if not all(isinstance(t, gs.Constant) for t in conv.inputs[1:]):
        return None
    if conv.inputs[1].values.dtype.kind != "f":
        return None
    return conv


def _folded_params(conv: Any, bn: Any) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias of ``conv`` with ``bn`` applied, computed in float64 for accuracy."""
    c = conv
    weight = np.asarray(c.inputs[1].values)
    dtype = weight.dtype
    w = weight.astype(np.float64)
    scale, beta, mean, var = (np.asarray(t.values, dtype=np.float64) for t in bn.inputs[1:])
    eps = float(bn.attrs.get("epsilon", 1e-5))
    s = scale / np.sqrt(var + eps)
    has_bias = len(c.inputs) > 2 and c.inputs[2].name
    b = np.asarray(c.inputs[2].values, dtype=np.float64) if has_bias else np.zeros_like(s)
    spatial = (1,) * (w.ndim - 2)
    if c.op == "Conv":
        w = w * s.reshape((-1, 1, *spatial))
    else:
        # ConvTranspose weights are (C_in, C_out / group, k...): output channel of w[c, j] is
        # (c // (C_in / group)) * (C_out / group) + j.
        group = int(c.attrs.get("group", 1))
        cin, cout_g = w.shape[0], w.shape[1]
        w = w.reshape((group, cin // group, cout_g, *w.shape[2:]))
        w = w * s.reshape((group, 1, cout_g, *spatial))
        w = w.reshape((cin, cout_g, *w.shape[3:]))
    bias = (b - mean) * s + beta
    return w.astype(dtype), bias.astype(dtype)


def _unique(base: str, used: set[str]) -> str:
    name, k = base, 0
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


def _finish(original: onnx.ModelProto, result: onnx.ModelProto) -> onnx.ModelProto:
    """Restore model-level fields and the exact graph interface of ``original``; infer shapes."""
    result.ir_version = original.ir_version
    del result.opset_import[:]
    result.opset_import.extend(original.opset_import)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(result, field, getattr(original, field))
    del result.metadata_props[:]
    result.metadata_props.extend(original.metadata_props)
    result.graph.name = original.graph.name
    result.graph.doc_string = original.graph.doc_string

    inits = {i.name for i in original.graph.initializer}
    real_inputs = [v for v in original.graph.input if v.name not in inits]
    del result.graph.input[:]
    result.graph.input.extend(real_inputs)
    if result.ir_version < 4:  # before IR 4 every initializer must also be a graph input
        for init in result.graph.initializer:
            result.graph.input.append(
                onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
    got = [o.name for o in result.graph.output]
    want = [o.name for o in original.graph.output]
    if got != want:  # pragma: no cover - a bug in the passes above, never the user's input
        raise InvalidModelError(f"cleaning changed the graph outputs: {want} -> {got}")
    del result.graph.output[:]
    result.graph.output.extend(original.graph.output)
    io_names = {v.name for v in result.graph.input} | set(want)
    kept = [v for v in result.graph.value_info if v.name not in io_names]
    del result.graph.value_info[:]
    result.graph.value_info.extend(kept)
    try:
        inferred = onnx.shape_inference.infer_shapes(result, strict_mode=False, data_prop=True)
    except Exception:  # custom ops or partial models: keep the model without inferred shapes
        return result
    return inferred


_FLOAT_WIDTH: dict[int, int] = {
    TensorProto.FLOAT16: 16,
    TensorProto.FLOAT: 32,
    TensorProto.DOUBLE: 64,
}


def _fold_cast_chains(graph: onnx.GraphProto) -> int:
    """Fold ``Cast(A->B) -> Cast(B->C)`` into ``Cast(A->C)`` and drop Casts that change nothing.

    Works in place on ``graph`` (nodes in topological order) and returns how many Casts went. A
    pair folds when A->B is exact (float16->float32, float32->float64...) or when B and C are
    floats with B at least as wide as C (C's rounding then decides). A narrowing followed by a
    widening (float32->float16->float32) is a deliberate rounding and stays. A Cast whose output
    is a graph output, read by a subgraph or read by another node too is never removed.
    """
    keep = {o.name for o in graph.output} | _subgraph_references(graph)
    types = _declared_types(graph)
    nodes = list(graph.node)
    producers = {o: n for n in nodes for o in n.output}
    readers = collections.Counter(i for n in nodes for i in n.input)
    removed: set[int] = set()
    for node in nodes:
        while node.op_type == "Cast":
            first = producers.get(node.input[0])
            if first is None or first.op_type != "Cast" or first.output[0] in keep:
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
        if node.op_type == "Cast" and id(node) not in removed and node.output[0] not in keep:
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

"""The FP32 policy's graph: an ONNX model cleaned for inference, numerically unchanged.

:func:`clean` removes what an inference engine does not need and folds what it can compute
ahead of time:

* ``Identity`` nodes and inference-mode ``Dropout`` nodes are bypassed;
* constant sub-expressions are folded (ONNX-GraphSurgeon's folder, which evaluates them with
  ONNX Runtime), including ``Shape`` of statically shaped tensors (its ``start``/``end``
  attributes applied), but never ``QuantizeLinear`` or ``DequantizeLinear`` (explicit INT8
  quantization must reach TensorRT as written);
* a ``BatchNormalization`` that directly follows a ``Conv`` or ``ConvTranspose`` whose output it
  alone consumes is folded into that convolution's weights and bias;
* dead nodes and unused initializers are dropped, nodes are sorted topologically and shapes are
  inferred.

What it does not understand it leaves as it is: a model holding sequence, optional, map or
sparse values (GraphSurgeon cannot represent them) is returned with its nodes untouched; names a
subgraph reads from the outer scope are never rewired; ``If`` branches are never inlined. A
result that the ONNX checker refuses where the original passes is never returned: the passes
are retried without folding, then not at all (with a warning naming the step). See
``docs/graph-passes.md``.

The graph inputs and outputs keep their names, element types and declared shapes, and the model
keeps its IR version, opsets and metadata. Initializers that old exporters also list as graph
inputs are treated as constants (they are not part of :func:`~regiontrt.graph.io.input_specs`).
"""

from __future__ import annotations

import collections
import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx

from regiontrt.errors import InvalidModelError
from regiontrt.graph.bnfold import fold_into_convs
from regiontrt.graph.io import without_unsized_dims
from regiontrt.graph.scope import non_tensor_values, subgraph_references, walk_nodes

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
# While GraphSurgeon folds, a Shape with start/end wears this op name: its shape folders read
# every "Shape" as the whole shape and would fold Shape(x, start=1) of a 3x4x5 x to [3, 4, 5].
_HIDDEN_SHAPE = "RegionTRTShapeWithRange"


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
    if not isinstance(model, onnx.ModelProto):
        raise InvalidModelError(f"expected an onnx.ModelProto, got {type(model).__name__}")
    model = without_unsized_dims(model)  # a declared -1 or 0 is "any size" (graph.io.input_specs)
    inferred = _with_inferred_shapes(model)
    if non_tensor_values(model, inferred):
        return _finish(model, _copy(model))
    steps: list[tuple[str, Callable[[], onnx.ModelProto]]] = [
        ("clean", lambda: _clean(model, inferred, fold=True, fold_bn=fold_batchnorm)),
        ("clean without constant folding",
         lambda: _clean(model, inferred, fold=False, fold_bn=False)),
    ]
    for step, run in steps:
        try:
            result = run()
        except Exception as exc:  # GraphSurgeon fails in many ways on odd graphs
            why = f"{type(exc).__name__}: {exc}"
        else:
            if _passes_checker(result) or not _passes_checker(model):
                return result
            why = "the result fails the ONNX checker"
        warnings.warn(f"{step} skipped ({why}); trying a more conservative pass",
                      RuntimeWarning, stacklevel=2)
    return _finish(model, _copy(model))


def _clean(model: onnx.ModelProto, inferred: onnx.ModelProto, *, fold: bool,
           fold_bn: bool) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs

    protected = subgraph_references(model.graph)
    graph = _import(inferred if fold else model)
    with _quiet_graphsurgeon():
        _bypass_identities(graph, protected)
        if fold:
            _fold_constants(graph, gs)
        graph.cleanup()
        if fold_bn:
            fold_into_convs(graph, gs)
        graph.cleanup().toposort()
        cleaned = gs.export_onnx(graph, do_type_check=False)
    return _finish(model, cleaned)


def _with_inferred_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose intermediate shapes come from ONNX inference, not the file's value_info.

    GraphSurgeon folds ``Shape`` from the shapes it is given; declared intermediate shapes can
    be wrong (ONNX Runtime never enforces them), inferred ones follow from the graph inputs.
    """
    private = _copy(model)
    del private.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(private, strict_mode=False)
    except Exception:  # custom ops: fold only what needs no shapes
        return private


def _fold_constants(graph: Any, gs: Any) -> None:
    """Fold constants in ``graph`` and each subgraph, never folding what is excluded."""
    _fold_sliced_shapes(graph, gs)
    hidden = [n for n in _gs_nodes(graph) if _is_sliced_shape(n)]
    for node in hidden:
        node.op = _HIDDEN_SHAPE
    try:
        for sub in _gs_graphs(graph):
            # Subgraphs are folded one by one here (not by GraphSurgeon's recursion, which drops
            # should_exclude_node), and If branches are never inlined: inlining renames
            # branch-local tensors that nested subgraphs may still read.
            sub.fold_constants(
                error_ok=True, recurse_subgraphs=False, flatten_subgraphs=False,
                recurse_functions=False, should_exclude_node=_keep_unfolded,
            )
    finally:
        for node in hidden:
            node.op = "Shape"


def _is_sliced_shape(node: Any) -> bool:
    return bool(node.op == "Shape" and ("start" in node.attrs or "end" in node.attrs))


def _fold_sliced_shapes(graph: Any, gs: Any) -> None:
    """Fold ``Shape(x, start, end)`` of statically shaped ``x`` to ``shape(x)[start:end]``.

    ONNX clamps ``start``/``end`` to the rank after adding it to negative values, exactly as a
    Python slice does.
    """
    for node in _gs_nodes(graph):
        if not _is_sliced_shape(node) or not node.inputs or not node.outputs:
            continue
        shape = node.inputs[0].shape
        if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
            continue
        start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
        dims = list(shape)[start : None if end is None else int(end)]
        out = node.outputs[0]
        out.to_constant(np.array(dims, dtype=np.int64))
        out.inputs.clear()


def _gs_graphs(graph: Any) -> Iterator[Any]:
    yield graph
    for node in graph.nodes:
        for sub in node.subgraphs():
            yield from _gs_graphs(sub)


def _gs_nodes(graph: Any) -> Iterator[Any]:
    for g in _gs_graphs(graph):
        yield from g.nodes


def _keep_unfolded(node: Any) -> bool:
    """Q/DQ pairs on weights are the INT8 policy's explicit quantization: never fold them away.

    Ops outside the default domain are left too: GraphSurgeon would evaluate them with ONNX
    Runtime's kernels, whose semantics need not be the model's.
    """
    foreign = node.domain not in ("", None, "ai.onnx")
    return bool(node.op in _QDQ_OPS or node.op == _HIDDEN_SHAPE or foreign)


def _passes_checker(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception:  # any refusal counts the same
        return False
    return True


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


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
        fold_into_convs(graph, gs)
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
    for node in walk_nodes(model.graph):
        counts[node.op_type] += 1
    return counts


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

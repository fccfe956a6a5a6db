"""Pinning inputs that are constant in practice, and inlining the ``If`` nodes that then decide.

Speech models often branch on a scalar input that never changes in a deployment (a sample rate:
``If(sr == 16000)``). While the condition is an input, every layer inside the branches is out of
reach of the precision passes (they rewrite the main graph's dataflow) and TensorRT-RTX refuses
some such ``If`` nodes outright (:func:`~regiontrt.graph.control_flow.trt_control_flow_problems`).
:func:`fold_pinned_inputs` turns the pinned inputs into constants, lets onnx-graphsurgeon fold
what depends only on constants, and inlines every ``If`` whose condition became constant: the
chosen branch's nodes move into the parent graph, recursively, until nothing more changes.

GraphSurgeon's own ``If`` flattening is not used: it leaves the ``If``'s output without a producer
when the branch output is a constant or an outer-scope name (a folded branch often is one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from regiontrt.errors import GraphPassError, InvalidArgumentError, InvalidModelError
from regiontrt.graph.scope import defined_names, fresh_name, rename_values, subgraphs, walk_graphs

__all__ = ["fold_pinned_inputs", "inline_constant_ifs"]

# Fold, inline, fold again: each round inlines at least one If, so this only bounds pathologies.
_MAX_ROUNDS = 64


def fold_pinned_inputs(
    model: onnx.ModelProto, pinned: Mapping[str, np.ndarray | int | float | bool]
) -> onnx.ModelProto:
    """Return a copy of ``model`` with ``pinned`` inputs made constants, folded and inlined.

    Args:
        model: the model; not modified.
        pinned: graph input name -> the value it always has. Values are converted to the
            input's declared element type (a value that changes in the conversion is refused)
            and must fit its declared shape (symbolic dims accept any size). An empty mapping
            still folds constants and inlines ``If`` nodes whose condition is constant already.

    Returns:
        The model without the pinned inputs (the other inputs and the outputs keep their names
        and types), with no ``If`` left whose condition is known at this point.

    Raises:
        InvalidModelError: ``model`` is not a ModelProto.
        InvalidArgumentError: a pinned name is not a graph input, or its value does not fit.
        GraphPassError: the folded graph fails the ONNX checker (``model`` passes it).
    """
    if not isinstance(model, onnx.ModelProto):
        raise InvalidModelError(f"expected an onnx.ModelProto, got {type(model).__name__}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    constants = [_pinned_tensor(out.graph, name, value) for name, value in pinned.items()]
    kept = [v for v in out.graph.input if v.name not in pinned]
    del out.graph.input[:]
    out.graph.input.extend(kept)
    out.graph.initializer.extend(constants)
    for _ in range(_MAX_ROUNDS):
        out = _fold(out)
        if not inline_constant_ifs(out.graph):
            break
    if not _valid(model):
        return out  # the checker's complaints about the model itself are not this pass's
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as exc:
        raise GraphPassError("fold_pinned_inputs", f"the folded graph is invalid: {exc}") from exc
    return out


def _valid(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError:
        return False
    return True


def _pinned_tensor(graph: onnx.GraphProto, name: str, value: object) -> onnx.TensorProto:
    """``value`` as an initializer of input ``name``'s declared type and shape."""
    declared = next((v for v in graph.input if v.name == name), None)
    if declared is None or name in {i.name for i in graph.initializer}:
        inputs = [v.name for v in graph.input]
        raise InvalidArgumentError(f"pinned input {name!r} is not a graph input (inputs: {inputs})")
    ttype = declared.type.tensor_type
    if not declared.type.HasField("tensor_type") or not ttype.elem_type:
        raise InvalidArgumentError(f"pinned input {name!r} is not a tensor of a known type")
    dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type)
    try:
        raw = np.asarray(value)
        arr = raw.astype(dtype)
        same = np.array_equal(arr, raw) or (arr.dtype.kind == "f" and np.allclose(arr, raw))
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"pinned input {name!r}: {exc}") from exc
    if not same:
        raise InvalidArgumentError(
            f"pinned input {name!r}: {raw!r} changes when converted to {np.dtype(dtype).name}")
    if ttype.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        if len(dims) != arr.ndim or any(d not in (None, s) for d, s in zip(dims, arr.shape)):
            raise InvalidArgumentError(
                f"pinned input {name!r}: shape {list(arr.shape)} does not fit the declared "
                f"{['?' if d is None else d for d in dims]}")
    return numpy_helper.from_array(arr, name)


def _fold(model: onnx.ModelProto) -> onnx.ModelProto:
    """GraphSurgeon's constant folding (subgraphs too), without its own ``If`` flattening."""
    graph = gs.import_onnx(model)
    graph.toposort()
    # partitioning: an op ONNX Runtime cannot evaluate only stops folding where it sits.
    graph.fold_constants(partitioning="basic", flatten_subgraphs=False, error_ok=True)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    folded = gs.export_onnx(graph, do_type_check=False)
    folded.ir_version = model.ir_version
    del folded.opset_import[:]
    folded.opset_import.extend(model.opset_import)
    return folded


def inline_constant_ifs(graph: onnx.GraphProto) -> int:
    """Inline, in place, every ``If`` of ``graph`` (and of its subgraphs) whose condition is an
    initializer or ``Constant`` of the same graph; returns how many were inlined."""
    count = 0
    for node in graph.node:
        for sub in subgraphs(node):
            count += inline_constant_ifs(sub)
    consts = {i.name: i for i in graph.initializer}
    consts.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value" and a.HasField("t")})
    everywhere = _names(graph)
    added: set[str] = set()
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        cond = consts.get(node.input[0]) if node.op_type == "If" and node.input else None
        if cond is None:
            nodes.append(node)
            continue
        chosen = "then_branch" if bool(numpy_helper.to_array(cond).reshape(-1)[0]) else (
            "else_branch")
        branch = next(a.g for a in node.attribute if a.name == chosen)
        # Names the branch shares with the rest of the model (outer scopes, sibling subgraphs)
        # are renamed as they move; its other names stay readable.
        own = _names(branch)
        taken = {n for n, c in everywhere.items() if c > own.get(n, 0)} | added
        nodes.extend(_moved(branch, node, graph, taken))
        added |= taken
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _moved(branch: onnx.GraphProto, node: onnx.NodeProto, parent: onnx.GraphProto,
           taken: set[str]) -> list[onnx.NodeProto]:
    """The branch's nodes, renamed for the parent; its initializers go to ``parent``."""
    rename: dict[str, str] = {}
    for name in defined_names(branch):
        if name in taken:
            rename[name] = fresh_name(name, taken)
        taken.add(rename.get(name, name))
    # A branch output made by a branch node becomes the If's output by renaming that node's
    # output; one that is an initializer, an outer name or repeated gets an Identity.
    produced = {o for n in branch.node for o in n.output if o}
    tail: list[onnx.NodeProto] = []
    claimed: set[str] = set()
    for value, target in zip(branch.output, node.output):
        if value.name in produced and value.name not in claimed and target:
            rename[value.name] = target
            claimed.add(value.name)
        elif target:
            tail.append(helper.make_node("Identity", [value.name], [target],
                                         name=fresh_name(f"{node.name or 'If'}_out", taken)))
    for init in branch.initializer:
        moved = onnx.TensorProto()
        moved.CopyFrom(init)
        moved.name = rename.get(init.name, init.name)
        parent.initializer.append(moved)
    out: list[onnx.NodeProto] = []
    for inner in (*branch.node, *tail):
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        rename_values(copy, rename)
        copy.name = rename.get(copy.name, copy.name)  # node names were made unique above
        out.append(copy)
    for vi in branch.value_info:
        if vi.name in produced:
            moved_vi = onnx.ValueInfoProto()
            moved_vi.CopyFrom(vi)
            moved_vi.name = rename.get(vi.name, vi.name)
            parent.value_info.append(moved_vi)
    return out


def _names(graph: onnx.GraphProto) -> Counter[str]:
    """How many times each name is defined in ``graph`` and its subgraphs."""
    return Counter(n for g in walk_graphs(graph) for n in defined_names(g))



"""The FP16 policy's graph: float32 compute converted to float16, with explicit casts.

TensorRT 11 builds strongly typed networks only, so reduced precision is written into the ONNX
graph: :func:`to_fp16` converts float32 initializers, ``Constant`` values and compute to float16
(finite values beyond ±65504 are clamped, with a warning), puts one ``Cast`` per tensor and
target type at each float32/float16 boundary, the graph inputs and outputs included (they keep
their names and types), folds the ``Cast`` chains this creates, and leaves integer, boolean and
shape tensors alone. A constant read in both precisions gets a float16 twin, not a runtime cast.

These stay float32: ops in ``fp32_ops`` (default :data:`DEFAULT_FP32_OPS`) and nodes named in
``fp32_nodes``; nodes with subgraphs (``If``, ``Loop``, ``Scan``) themselves and every outer tensor
their bodies read (each body is converted on its own by the same rules, its inputs, outputs and
outer reads keeping their types, with casts inside the body); ops outside the default ONNX domain
and nodes whose tensor types shape inference cannot tell; inputs the op schema keeps float32
(``Resize`` scales, ``Range``...) and ``Resize``'s ``roi``; and cheap elementwise ops
(:data:`ISLAND_OPS`) whose non-constant float inputs are all float32 already (graph inputs, outputs
of kept nodes): converting those would only move the cast, and keeping them whole keeps, say, a
decomposed normalisation's ``ReduceMean -> Add(eps) -> Sqrt`` in float32.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from regiontrt.errors import InvalidModelError
from regiontrt.graph.casts import fold_cast_chains
from regiontrt.graph.clean import count_ops
from regiontrt.graph.fp16_rules import (
    DEFAULT_FP32_OPS,
    ISLAND_OPS,
    elem_type,
    kept_by_rule,
    types_agree,
    value_attr,
    value_infos,
)
from regiontrt.graph.scope import (
    adopt_body,
    all_names,
    subgraph_model,
    subgraph_references,
    subgraphs,
    walk_nodes,
)

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
__all__ = ["DEFAULT_FP32_OPS", "ISLAND_OPS", "cast_count", "to_fp16"]
_FP16_MAX = float(np.finfo(np.float16).max)

# Inputs kept at their type even where the schema would allow float16.
_KEEP_INPUTS: dict[str, frozenset[int]] = {"Resize": frozenset({1})}
# Ops whose float inputs are only read for their shape: they accept whatever type arrives.
_SHAPE_READERS = frozenset({"Shape", "Size"})
# Ops whose float output type comes from an attribute value, converted by rewriting it.
_VALUE_OPS = frozenset({"Constant", "ConstantOfShape"})
_DEFAULT_DOMAINS = ("", "ai.onnx")
_ANY = -1  # a "wanted type" meaning: any type is fine (Cast input, Shape input)
_Plan = tuple[list[int], list[int]]  # (wanted input types, produced output types)


def to_fp16(
    model: onnx.ModelProto,
    *,
    fp32_ops: Iterable[str] = DEFAULT_FP32_OPS,
    fp32_nodes: Iterable[str] = (),
) -> onnx.ModelProto:
    """Return a copy of ``model`` computing in float16 outside the float32 blocks.

    Args:
        model: a float32 model (typically :func:`~regiontrt.graph.clean.clean`'s output).
        fp32_ops: op types kept in float32; pass ``DEFAULT_FP32_OPS | {...}`` to extend.
        fp32_nodes: names of individual nodes kept in float32.

    Returns:
        A new model with the same input and output names and types that passes the ONNX
        checker and runs in ONNX Runtime on the CPU. ``model`` is not modified.

    Raises:
        InvalidModelError: ``model`` is not a ModelProto, or ``fp32_nodes`` names a node it lacks.
    """
    if not isinstance(model, onnx.ModelProto):
        raise InvalidModelError(f"expected an onnx.ModelProto, got {type(model).__name__}")
    blocked_ops, blocked_names = frozenset(fp32_ops), frozenset(fp32_nodes)
    missing = blocked_names - {n.name for n in walk_nodes(model.graph)}
    if missing:
        raise InvalidModelError(
            f"fp32_nodes names nodes the model does not have: {sorted(missing)} (clean() drops "
            "BatchNormalization, Identity and folded nodes; name the remaining ones)"
        )
    result = onnx.ModelProto()
    result.CopyFrom(model)
    _Converter(result, blocked_ops, blocked_names).run()
    fold_cast_chains(result.graph)
    _convert_bodies(result, blocked_ops, blocked_names)
    return result


def _convert_bodies(model: onnx.ModelProto, ops: frozenset[str], names: frozenset[str]) -> None:
    """Convert each If/Loop/Scan body of ``model``'s main graph in place, as a model of its own
    whose outer-scope reads are float32 inputs (the main pass kept those names' types)."""
    bodies = [sub for node in model.graph.node for sub in subgraphs(node)]
    if not bodies:
        return
    outer = value_infos(model)
    outer.update({i.name: helper.make_tensor_value_info(i.name, i.data_type, i.dims)
                  for i in model.graph.initializer})
    taken = all_names(model.graph)
    for sub in bodies:
        alone = subgraph_model(model, sub, outer)
        if alone is None:  # an untyped name: the body stays as it is
            continue
        inner = frozenset(n.name for n in walk_nodes(sub)) & names
        adopt_body(sub, to_fp16(alone, fp32_ops=ops, fp32_nodes=inner), taken)


def cast_count(model: onnx.ModelProto) -> int:
    """Number of ``Cast`` nodes in ``model``, subgraphs included."""
    return count_ops(model)["Cast"]


class _Converter:
    """One conversion of ``model.graph`` in place (the caller passes a private copy)."""

    def __init__(self, model: onnx.ModelProto, ops: frozenset[str], names: frozenset[str]):
        self.model, self.graph = model, model.graph
        self.blocked_ops, self.blocked_names = ops, names
        self.opset = next(
            (i.version for i in model.opset_import if i.domain in _DEFAULT_DOMAINS), 1
        )
        self.info = value_infos(model)
        self.types = {n: t for n, t in ((n, elem_type(v)) for n, v in self.info.items()) if t}
        self.inits = {i.name: i for i in self.graph.initializer}
        self.types.update({name: init.data_type for name, init in self.inits.items()})
        inputs = {v.name for v in self.graph.input}
        # Initializers that old exporters also list as inputs count as constants: input_specs()
        # leaves them out of the interface, and before IR 4 every initializer must be listed.
        self.consts = set(self.inits)
        self.value_nodes = {
            n.output[0]: n
            for n in self.graph.node
            if n.op_type in _VALUE_OPS
            and n.name not in names
            and n.op_type not in ops
            and self.types.get(n.output[0]) == FLOAT
            and value_attr(n) is not None
        }
        self.consts |= set(self.value_nodes)
        self.bound = {o.name for o in self.graph.output} | subgraph_references(self.graph)
        self.used = {n for node in self.graph.node for n in (*node.input, *node.output)}
        self.used |= inputs | set(self.inits) | self.bound
        self.new_types = dict(self.types)
        self.casts: dict[tuple[str, int], str] = {}
        self.twins: dict[str, str] = {}
        self.renamed: dict[str, str] = {}
        self.twin_nodes: dict[int, onnx.NodeProto] = {}  # id(original Constant) -> its twin
        self.clamped = 0

    def plan(self, node: onnx.NodeProto, kept: set[str]) -> _Plan | None:
        """(wanted input types, produced output types) of a converted node; None if kept."""
        if (
            node.op_type in self.blocked_ops
            or node.name in self.blocked_names
            or node.domain not in _DEFAULT_DOMAINS
            or any(a.type in (onnx.AttributeProto.GRAPH, a.GRAPHS) for a in node.attribute)
            or any(n and self.types.get(n) is None for n in (*node.input, *node.output))
            or kept_by_rule(node)
        ):
            return None
        if node.op_type in ISLAND_OPS:
            dynamic = [n for n in node.input if n and n not in self.consts]
            floats = [n for n in dynamic if self.types[n] == FLOAT]
            if floats and len(floats) == len(dynamic) and all(n in kept for n in floats):
                return None
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset, node.domain)
        except onnx.defs.SchemaError:
            return None
        params = {c.type_param_str: c for c in schema.type_constraints}
        groups: dict[str, list[tuple[bool, int]]] = {}
        for is_input, names, formals in (
            (True, node.input, schema.inputs),
            (False, node.output, schema.outputs),
        ):
            for i, name in enumerate(names):
                if not name or not formals:
                    continue
                formal = formals[min(i, len(formals) - 1)]
                if not formal.is_homogeneous:
                    return None
                if formal.type_str in params:
                    groups.setdefault(formal.type_str, []).append((is_input, i))
        wants = [self.types.get(n, _ANY) if n else _ANY for n in node.input]
        outs = [self.types.get(n, _ANY) if n else _ANY for n in node.output]
        keep = _KEEP_INPUTS.get(node.op_type, frozenset())
        for param, slots in groups.items():
            if "tensor(float16)" not in params[param].allowed_type_strs:
                continue
            in_slots = [i for is_in, i in slots if is_in]
            if not in_slots or keep.intersection(in_slots):
                continue  # output type set by an attribute, or an input we keep as it is
            if not any(self.types[node.input[i]] == FLOAT for i in in_slots):
                continue
            for is_in, i in slots:
                (wants if is_in else outs)[i] = FLOAT16
        if FLOAT16 not in outs and FLOAT16 not in wants:
            return None
        if not types_agree(schema, node, wants, outs, self.info, self.types, self.model):
            return None  # ONNX's own inference disagrees with the plan: leave the node float32
        return wants, outs

    def run(self) -> None:
        # Tensors that are float32 after conversion: the island rule grows from them.
        kept: set[str] = {v.name for v in self.graph.input}
        plans: list[_Plan | None] = []
        for node in self.graph.node:
            transparent = node.op_type == "Cast" or node.op_type in _SHAPE_READERS
            if transparent or (node.output and node.output[0] in self.value_nodes):
                plans.append(None)
                continue
            plan = self.plan(node, kept)
            plans.append(plan)
            if plan is None:
                kept.update(node.output)
        wants_of = self._demands(plans)
        for name, wants in wants_of.items():
            if name in self.consts:
                self._place_value(name, wants)
        nodes: list[onnx.NodeProto] = []
        for node, plan in zip(list(self.graph.node), plans):
            self._rewrite(node, plan, nodes)
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self._retype_value_info()
        self._sync_initializer_inputs()
        if self.clamped:
            warnings.warn(
                f"to_fp16: {self.clamped} finite float32 constant values exceed the float16 "
                f"range and were clamped to ±{_FP16_MAX:g}",
                RuntimeWarning,
                stacklevel=3,
            )

    def _node_wants(self, node: onnx.NodeProto, plan: _Plan | None) -> list[int]:
        if node.op_type == "Cast" or node.op_type in _SHAPE_READERS:
            return [_ANY] * len(node.input)
        if plan is not None:
            return plan[0]
        return [self.types.get(n, _ANY) if n else _ANY for n in node.input]

    def _demands(self, plans: list[_Plan | None]) -> dict[str, list[int]]:
        wants_of: dict[str, list[int]] = {}
        for node, plan in zip(self.graph.node, plans):
            for name, want in zip(node.input, self._node_wants(node, plan)):
                if name:
                    wants_of.setdefault(name, []).append(want)
            if plan is not None:
                for name, out in zip(node.output, plan[1]):
                    if name:
                        self.new_types[name] = out
        for name in self.bound:
            wants_of.setdefault(name, []).append(self.types.get(name, _ANY))
        return wants_of

    def _place_value(self, name: str, wants: list[int]) -> None:
        """Make a float32 constant float16 if all its readers want that, else add a twin."""
        if self.types.get(name) != FLOAT or FLOAT16 not in wants:
            return
        if all(w in (FLOAT16, _ANY) for w in wants) and name not in self.bound:
            self._retype_value(name, name)
            self.new_types[name] = FLOAT16
            return
        twin = self._fresh(f"{name}_fp16")
        self._retype_value(name, twin)
        self.twins[name] = twin
        self.new_types[twin] = FLOAT16

    def _retype_value(self, name: str, new_name: str) -> None:
        if name in self.value_nodes:
            node = self.value_nodes[name]
            target = node
            if new_name != name:
                target = onnx.NodeProto()
                target.CopyFrom(node)
                target.name = self._fresh(f"{node.name or name}_fp16")
                target.output[0] = new_name
                self.twin_nodes[id(node)] = target
            value = value_attr(target)
            assert value is not None
            tensor = self._half(value, "value")
            del target.attribute[:]
            target.attribute.append(helper.make_attribute("value", tensor))
            return
        init = self.inits[name]
        half = self._half(numpy_helper.to_array(init), new_name)
        if new_name == name:
            init.CopyFrom(half)
        else:
            self.graph.initializer.append(half)

    def _half(self, values: np.ndarray, name: str) -> TensorProto:
        arr = np.asarray(values, dtype=np.float32)
        over = np.isfinite(arr) & (np.abs(arr) > _FP16_MAX)
        self.clamped += int(over.sum())
        arr = np.where(over, np.sign(arr) * _FP16_MAX, arr)
        return numpy_helper.from_array(arr.astype(np.float16), name)

    def _rewrite(self, node: onnx.NodeProto, plan: _Plan | None, out: list[onnx.NodeProto]) -> None:
        for i, (name, want) in enumerate(zip(node.input, self._node_wants(node, plan))):
            if not name or want not in (FLOAT, FLOAT16):
                continue
            src = self.renamed.get(name, name) if want == FLOAT16 else name
            src = self.twins.get(src, src) if want == FLOAT16 else src
            have = self.new_types.get(src)
            if have in (FLOAT, FLOAT16) and have != want:
                src = self._cast(src, want, out)
            node.input[i] = src
        tail: list[onnx.NodeProto] = []
        if plan is not None:
            for i, name in enumerate(node.output):
                if name in self.bound and plan[1][i] != self.types.get(name):
                    half = self._fresh(f"{name}_fp16")
                    node.output[i] = half
                    self.renamed[name] = half
                    self.new_types[half] = plan[1][i]
                    self.new_types[name] = self.types[name]
                    self.casts[(half, self.types[name])] = name
                    tail.append(self._cast_node(half, name, self.types[name]))
        out.append(node)
        if id(node) in self.twin_nodes:
            out.append(self.twin_nodes[id(node)])
        out.extend(tail)

    def _cast(self, src: str, to: int, out: list[onnx.NodeProto]) -> str:
        key = (src, to)
        if key not in self.casts:
            suffix = "fp16" if to == FLOAT16 else "fp32"
            dst = self._fresh(f"{src}_{suffix}")
            out.append(self._cast_node(src, dst, to))
            self.casts[key] = dst
            self.new_types[dst] = to
        return self.casts[key]

    def _cast_node(self, src: str, dst: str, to: int) -> onnx.NodeProto:
        self.info.setdefault(dst, self.info.get(src, onnx.ValueInfoProto()))
        return helper.make_node("Cast", [src], [dst], name=self._fresh(f"{dst}_cast"), to=to)

    def _fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def _sync_initializer_inputs(self) -> None:
        """Graph inputs backed by initializers follow their initializer's new type."""
        listed = {v.name: v for v in self.graph.input}
        for init in self.graph.initializer:
            if init.name in listed:
                listed[init.name].type.tensor_type.elem_type = init.data_type
            elif self.model.ir_version < 4:
                value = helper.make_tensor_value_info(init.name, init.data_type, init.dims)
                self.graph.input.append(value)

    def _retype_value_info(self) -> None:
        """value_info for every intermediate tensor, with its new element type."""
        skip = {v.name for v in (*self.graph.input, *self.graph.output)} | set(self.inits)
        produced = [n for node in self.graph.node for n in node.output if n and n not in skip]
        back = {new: orig for orig, new in self.renamed.items()}
        infos = []
        for name in produced:
            base = self.info.get(back.get(name, name))
            elem = self.new_types.get(name)
            if base is None or elem in (None, _ANY) or not base.type.HasField("tensor_type"):
                continue
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(base)
            vi.name = name
            vi.type.tensor_type.elem_type = elem
            infos.append(vi)
        del self.graph.value_info[:]
        self.graph.value_info.extend(infos)

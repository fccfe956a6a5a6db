"""What control flow (``If``, ``Loop``, ``Scan``) keeps from the precision passes and from TensorRT.

* :func:`control_flow_report`: one line per control-flow node whose subgraphs hold weighted
  layers that int8 leaves in float32 (Q/DQ placement and calibration see the main graph only),
  with why and what to do: an ``If`` whose condition comes from inputs can be inlined by
  pinning them (:func:`~regiontrt.graph.pin.fold_pinned_inputs`); a loop body cannot.
  :func:`~regiontrt.graph.fp16.to_fp16` does convert subgraph bodies.
* :func:`trt_control_flow_problems`: the ``If`` patterns TensorRT-RTX refuses at build, found
  before any build work.

A condition is a build-time constant when it depends on no graph input except through
``Shape``/``Size`` of a tensor whose shape is static (the TensorRT ONNX parser folds those).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from regiontrt.graph.scope import subgraphs, walk_graphs

__all__ = [
    "RECURRENT_OPS",
    "ControlFlowFinding",
    "condition_inputs",
    "control_flow_findings",
    "control_flow_report",
    "trt_control_flow_problems",
]

#: Layers int8 would quantize (the Q/DQ pass's default weighted ops) and recurrent layers.
LAYER_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN"})
#: Recurrent ops, which the TensorRT parsers lower to loops.
RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})
_CONTROL_OPS = frozenset({"If", "Loop", "Scan"})
_SHAPE_OPS = frozenset({"Shape", "Size"})
_Deps = Mapping[str, frozenset[str]]


@dataclass(frozen=True)
class ControlFlowFinding:
    """One control-flow node and what it holds.

    Attributes:
        op: ``If``, ``Loop`` or ``Scan``.
        name: the node's name (``<op>#<index>`` when it has none).
        where: the graph holding it (``main graph`` or the path of enclosing nodes).
        layers: per subgraph attribute (``then_branch``, ``body``...), layer op -> count,
            counting that subgraph's own nodes (nested control flow has its own finding).
        depends_on: the graph inputs the condition depends on (``If`` only; sorted); a name
            in angle brackets stands for a loop body's own inputs, which cannot be pinned.
        constant: the ``If`` condition is a build-time constant.
    """

    op: str
    name: str
    where: str
    layers: Mapping[str, Mapping[str, int]]
    depends_on: tuple[str, ...] = ()
    constant: bool = False

    @property
    def layer_count(self) -> int:
        """Layers in all of this node's subgraphs (its own level)."""
        return sum(sum(c.values()) for c in self.layers.values())

    def __str__(self) -> str:
        n = self.layer_count
        part = "its branches" if self.op == "If" else "its body"
        detail = "; ".join(
            f"{attr}: " + ", ".join(f"{c} {op}" for op, c in sorted(ops.items()))
            for attr, ops in self.layers.items() if ops
        )
        head = (f"{self.op} node {self.name!r} ({self.where}): {n} layer{'s' * (n != 1)} in "
                f"{part} stay{'s' * (n == 1)} float32 under int8 ({detail})")
        if self.op != "If":
            return (f"{head}: regiontrt does not quantize inside {self.op} bodies and a loop "
                    "cannot be inlined (fp16 converts them in place)")
        if self.constant:
            return (f"{head}: its condition is constant; fold_pinned_inputs(model, {{}}) inlines "
                    "the branch taken so they can be quantized")
        pinnable = [d for d in self.depends_on if not d.startswith("<")]
        if len(pinnable) < len(self.depends_on):
            return (f"{head}: its condition depends on a loop's state "
                    f"({', '.join(self.depends_on)}), which cannot be pinned")
        names = ", ".join(repr(d) for d in pinnable)
        values = ", ".join(f"{d!r}: value" for d in pinnable)
        return (f"{head}: the condition depends on input{'s' * (len(pinnable) > 1)} {names}; "
                f"pin {'them' if len(pinnable) > 1 else 'it'} with fold_pinned_inputs(model, "
                f"{{{values}}}) to inline the branch taken and quantize them")


def control_flow_findings(model: onnx.ModelProto) -> list[ControlFlowFinding]:
    """Every ``If``/``Loop``/``Scan`` node of ``model`` at any depth, in graph order."""
    return [f for f, _ in _walk(_inferred(model))]


def condition_inputs(model: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
    """Graph inputs that decide an ``If``, each with the names of the ``If`` nodes it decides.

    Only an ``If`` whose condition depends on graph inputs alone (not on a loop's state) counts:
    pinning those inputs makes its condition constant, so
    :func:`~regiontrt.graph.pin.fold_pinned_inputs` can inline the branch taken.
    """
    out: dict[str, list[str]] = {}
    for finding in control_flow_findings(model):
        deps = finding.depends_on
        if finding.op != "If" or finding.constant or any(d.startswith("<") for d in deps):
            continue
        for name in deps:
            out.setdefault(name, []).append(finding.name)
    return {name: tuple(ifs) for name, ifs in out.items()}


def control_flow_report(model: onnx.ModelProto) -> list[str]:
    """One line per control-flow node whose subgraphs hold layers that stay float32 under int8:
    which node, how many layers of which ops, why, and how to get them quantized."""
    return [str(f) for f in control_flow_findings(model) if f.layer_count]


def trt_control_flow_problems(model: onnx.ModelProto) -> list[str]:
    """Reasons a TensorRT-RTX build of ``model`` fails on control flow; empty when none is known.

    Observed with TensorRT-RTX 1.7.1.116 (builder on the CPU, strongly typed network), for an
    ``If`` whose condition is not a build-time constant:

    * branch outputs of different ranks fail at build: ``IConditionalOutputLayer ...: Must have
      inputs with equal ranks when condition is not a build-time constant``; different static
      shapes of the same rank, constant or outer-scope branch outputs and nested ``If`` built;
    * a recurrent op (``LSTM``, ``GRU``, ``RNN``) in a branch fails at build (``Assertion
      mScopedOp2Scopes.contains(childScopedOp) failed``); the same op in the main graph, or
      under a constant condition, built.

    With a build-time constant condition the parser keeps only the branch taken, so none of
    these arise. Ranks come from ONNX shape inference; an unknown rank is not reported.
    """
    problems: list[str] = []
    for finding, node in _walk(_inferred(model)):
        if finding.op != "If" or finding.constant:
            continue
        branches = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
        head = f"If node {finding.name!r} ({finding.where})"
        why = _why_dynamic(finding)
        then_g, else_g = branches.get("then_branch"), branches.get("else_branch")
        if then_g is not None and else_g is not None:
            for i, (a, b) in enumerate(zip(then_g.output, else_g.output)):
                ra, rb = _rank(a), _rank(b)
                if ra is not None and rb is not None and ra != rb:
                    problems.append(
                        f"{head}: output {i} has rank {ra} in then_branch and rank {rb} in "
                        f"else_branch while {why}; TensorRT-RTX refuses this (Must have inputs "
                        f"with equal ranks when condition is not a build-time constant)"
                        + _advice(finding))
        recurrent = sorted({n.op_type for g in branches.values() for n in _all_nodes(g)
                            if n.op_type in RECURRENT_OPS})
        if recurrent:
            problems.append(
                f"{head}: its branches hold {', '.join(recurrent)} while {why}; TensorRT-RTX "
                "fails to build a recurrent layer inside a conditional (internal assertion on "
                "the layer's scope)" + _advice(finding))
    return problems


def _why_dynamic(finding: ControlFlowFinding) -> str:
    deps = ", ".join(repr(d) for d in finding.depends_on)
    return f"the condition is not a build-time constant (it depends on {deps})"


def _advice(finding: ControlFlowFinding) -> str:
    pinnable = [d for d in finding.depends_on if not d.startswith("<")]
    if not pinnable or len(pinnable) < len(finding.depends_on):
        return ""
    values = ", ".join(f"{d!r}: value" for d in pinnable)
    return (f"; if the input is constant in practice, pin it: fold_pinned_inputs(model, "
            f"{{{values}}}) inlines the branch taken")


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # custom ops: the declared types are all there is
        return model


def _rank(value: onnx.ValueInfoProto) -> int | None:
    t = value.type.tensor_type
    return len(t.shape.dim) if value.type.HasField("tensor_type") and t.HasField("shape") else None


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    out = list(graph.node)
    for node in graph.node:
        for sub in subgraphs(node):
            out.extend(_all_nodes(sub))
    return out


def _walk(model: onnx.ModelProto) -> list[tuple[ControlFlowFinding, onnx.NodeProto]]:
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    deps = {v.name: frozenset({v.name}) for v in graph.input if v.name not in inits}
    out: list[tuple[ControlFlowFinding, onnx.NodeProto]] = []
    _visit(graph, deps, _static_shapes(model), "main graph", out)
    return out


def _visit(graph: onnx.GraphProto, deps: dict[str, frozenset[str]], static: set[str],
           where: str, out: list[tuple[ControlFlowFinding, onnx.NodeProto]]) -> None:
    """Follow input dependencies through ``graph`` in order, recording control-flow nodes."""
    for index, node in enumerate(graph.node):
        if node.op_type in _SHAPE_OPS and node.input and node.input[0] in static:
            reads: frozenset[str] = frozenset()
        else:
            reads = frozenset().union(*(deps.get(n, frozenset()) for n in node.input if n))
        subs = [(a.name, g) for a in node.attribute for g in _graphs_of(a)]
        if node.op_type in _CONTROL_OPS and subs:
            name = node.name or f"{node.op_type}#{index}"
            layers = {attr: dict(Counter(n.op_type for n in g.node if n.op_type in LAYER_OPS))
                      for attr, g in subs}
            cond = deps.get(node.input[0], frozenset()) if node.op_type == "If" else reads
            finding = ControlFlowFinding(node.op_type, name, where, layers,
                                         tuple(sorted(cond)), node.op_type == "If" and not cond)
            out.append((finding, node))
            inner_where = f"{where} > {node.op_type} {name!r}"
            for attr, g in subs:
                inner = dict(deps)
                marker = frozenset({f"<{node.op_type} {name!r} state>"})
                inner.update({v.name: reads | marker for v in g.input})
                _visit(g, inner, static, f"{inner_where} {attr}", out)
                reads = reads | (_outer_reads(g, inner) - marker)
        for name in node.output:
            if name:
                deps[name] = reads


def _outer_reads(graph: onnx.GraphProto, deps: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """Input dependencies of the outer names ``graph`` (and its subgraphs) read."""
    return frozenset().union(*(deps.get(n, frozenset()) for n in _all_inputs(graph)))


def _all_inputs(graph: onnx.GraphProto) -> set[str]:
    names = {n for node in _all_nodes(graph) for n in node.input if n}
    names.update(v.name for v in graph.output)
    return names


def _graphs_of(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    if attr.type == onnx.AttributeProto.GRAPHS:
        return list(attr.graphs)
    return []


def _static_shapes(model: onnx.ModelProto) -> set[str]:
    """Names (any graph) whose inferred shape has a fixed size in every dimension."""
    static: set[str] = set()
    for g in walk_graphs(model.graph):
        for v in (*g.input, *g.output, *g.value_info):
            t = v.type.tensor_type
            if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
                static.add(v.name)
        static.update(i.name for i in g.initializer)
    return static

"""Where Q/DQ pairs go: the placement analysis behind ``plan_quantization`` and ``quantize_model``.

The rules follow NVIDIA's explicit-quantization guidance for TensorRT: quantize the inputs of
weighted ops (activations per tensor, weights per output channel), leave their outputs and their
epilogues (BatchNormalization, activations, bias Adds) alone so TensorRT can fuse them, quantize
only the skip branch of a residual Add so the other branch fuses into the producing layer, and
give every input of a Concat feeding a quantized op one shared scale so Q/DQ commute through it.

The analysis works on an onnx-graphsurgeon graph whose nodes all carry unique names and are in
topological order (the ONNX checker requires that order); it never modifies the graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from regiontrt.errors import RegionConfigError
from regiontrt.graph.qdq_options import QuantizeOptions

FLOAT = onnx.TensorProto.FLOAT

# Ops TensorRT fuses into the epilogue of a Conv/Gemm; Q/DQ inside such a chain would split it.
_EPILOGUE_OPS = frozenset(
    {
        "BatchNormalization",
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Clip",
        "Sigmoid",
        "Tanh",
        "Elu",
        "HardSigmoid",
        "HardSwish",
    }
)


# Layers whose epilogue TensorRT fuses a residual Add into. MatMul/Gemm are left out on purpose:
# in transformers the other Add input is the residual stream, which INT8 would coarsen.
_CONV_OPS = frozenset({"Conv", "ConvTranspose"})


@dataclass(frozen=True)
class WeightUse:
    """One constant weight input of a quantized node: DequantizeLinear of int8 values."""

    node: str
    index: int
    tensor: str
    axis: int | None  # None: one scale for the whole tensor


@dataclass
class Placement:
    """The full placement: what the public plan shows plus the rewiring it implies."""

    nodes: list[str] = field(default_factory=list)
    weights: list[WeightUse] = field(default_factory=list)
    # activation tensor -> the (node, input index) slots that read its dequantized copy
    consumers: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    groups: list[tuple[str, ...]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # activation tensors, deterministic order

    def group_of(self, tensor: str) -> tuple[str, ...]:
        """The shared-scale group holding ``tensor`` (itself alone when ungrouped)."""
        for group in self.groups:
            if tensor in group:
                return group
        return (tensor,)


def is_constant(tensor: gs.Tensor) -> bool:
    """An initializer or the output of a ``Constant`` node."""
    if isinstance(tensor, gs.Constant):
        return True
    return bool(tensor.inputs) and tensor.inputs[0].op == "Constant"


def constant_values(tensor: gs.Tensor) -> np.ndarray | None:
    """The values of a constant tensor, or None when they cannot be read as an array."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if tensor.inputs and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def _producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def _is_bias_add(node: gs.Node) -> bool:
    """An Add of one activation and one constant (a bias Add TensorRT fuses into the layer)."""
    if node.op != "Add" or len(node.inputs) != 2:
        return False
    return sum(is_constant(t) for t in node.inputs) == 1


def _topology(nodes: list[gs.Node], weighted: frozenset[str]) -> tuple[dict[str, int], set[str]]:
    """Weighted depth of each node and the nodes with a weighted op downstream.

    The depth counts the weighted ops on the longest path from a graph input to the node's
    output (the node included); a weighted node of depth 1 is a first layer.
    """
    tensor_depth: dict[str, int] = {}
    depth: dict[str, int] = {}
    for node in nodes:
        d_in = max((tensor_depth.get(t.name, 0) for t in node.inputs), default=0)
        depth[node.name] = d_in + (1 if node.op in weighted else 0)
        for t in node.outputs:
            tensor_depth[t.name] = depth[node.name]
    feeds_weighted: set[str] = set()  # tensors with a weighted consumer downstream
    has_down: set[str] = set()
    for node in reversed(nodes):
        if any(t.name in feeds_weighted for t in node.outputs):
            has_down.add(node.name)
        if node.name in has_down or node.op in weighted:
            feeds_weighted.update(t.name for t in node.inputs)
    return depth, has_down


def _float_ok(tensor: gs.Tensor, dtypes: Mapping[str, int]) -> bool:
    return dtypes.get(tensor.name, FLOAT) == FLOAT


def _roles(
    node: gs.Node, per_channel: bool, dtypes: Mapping[str, int]
) -> tuple[list[tuple[int, int | None]], list[tuple[int, int | None]], str | None]:
    """Activation slots, weight slots (index, axis) of a weighted node, or why it is skipped."""
    acts: list[tuple[int, int | None]] = []
    weights: list[tuple[int, int | None]] = []
    ins = node.inputs
    if node.op in ("Conv", "ConvTranspose"):
        if len(ins) < 2 or is_constant(ins[0]):
            return [], [], "its data input is a constant"
        values = constant_values(ins[1])
        if values is None:
            return [], [], "its weight is not a constant tensor"
        acts.append((0, None))
        weights.append((1, (0 if node.op == "Conv" else 1) if values.ndim > 1 else None))
    elif node.op in ("MatMul", "Gemm"):
        if len(ins) < 2:
            return [], [], "it has fewer than two inputs"
        ca, cb = is_constant(ins[0]), is_constant(ins[1])
        if ca and cb:
            return [], [], "both of its inputs are constants"
        if cb or ca:
            w = 1 if cb else 0
            values = constant_values(ins[w])
            if values is None:
                return [], [], "its weight is not a readable constant tensor"
            acts.append((1 - w, None))
            weights.append((w, _matmul_axis(node, w, values.ndim)))
        else:
            acts.extend([(0, None), (1, None)])
    else:  # a user-listed op: quantize its activation inputs, leave constants alone
        acts.extend((i, None) for i, t in enumerate(ins) if t.name and not is_constant(t))
        if not acts:
            return [], [], "it has no activation input"
    for i, _ in acts:
        if not _float_ok(ins[i], dtypes):
            dtype = onnx.TensorProto.DataType.Name(dtypes[ins[i].name])
            return [], [], f"input {ins[i].name!r} is {dtype}, not FLOAT (quantize before FP16)"
    for i, _ in weights:
        values = constant_values(ins[i])
        if values is None or values.dtype != np.float32:
            return [], [], f"weight {ins[i].name!r} is not float32"
    if not per_channel:
        weights = [(i, None) for i, _ in weights]
    return acts, weights, None


def _matmul_axis(node: gs.Node, w: int, ndim: int) -> int | None:
    """The output-channel axis of a MatMul/Gemm weight at input slot ``w``."""
    if ndim < 2:
        return None
    if node.op == "Gemm":
        if w == 1:  # B is (K, N), or (N, K) with transB
            return 0 if node.attrs.get("transB", 0) else 1
        return 1 if node.attrs.get("transA", 0) else 0  # A is (M, K), or (K, M) with transA
    return ndim - 1 if w == 1 else ndim - 2  # MatMul: B (..., K, N) / A (..., M, K)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def analyse(graph: gs.Graph, options: QuantizeOptions, dtypes: Mapping[str, int]) -> Placement:
    """Decide every Q/DQ pair of ``graph`` under ``options``.

    Args:
        graph: the model, nodes uniquely named and topologically ordered.
        options: the placement options.
        dtypes: known element types of tensors (missing ones are taken as float32).

    Raises:
        RegionConfigError: ``options.exclude_nodes`` names a node that is not a weighted op.
    """
    nodes = list(graph.nodes)
    weighted = frozenset(options.weighted_ops)
    by_name = {n.name: n for n in nodes}
    unknown = sorted(
        n for n in options.exclude_nodes if n not in by_name or by_name[n].op not in weighted
    )
    if unknown:
        raise RegionConfigError(
            f"exclude_nodes names {', '.join(map(repr, unknown))}, which are not weighted nodes "
            f"({', '.join(options.weighted_ops)}) of the model"
        )
    depth, has_down = _topology(nodes, weighted)
    outputs = {t.name for t in graph.outputs}
    p = Placement()
    _place_layers(p, nodes, options, dtypes, depth, has_down)
    fused: set[str] = set()
    if options.quantize_residual_add:
        fused = _place_residual_adds(p, nodes, dtypes, depth, outputs)
    if options.quantize_weighted_outputs:
        _place_weighted_outputs(p, by_name, outputs, fused)
    uf = _place_concats(p, nodes, dtypes)
    position = {t.name: -len(graph.inputs) + k for k, t in enumerate(graph.inputs)}
    for k, node in enumerate(nodes):
        for t in node.outputs:
            position.setdefault(t.name, k)
    p.order = sorted(p.consumers, key=lambda name: (position.get(name, len(nodes)), name))
    members: dict[str, list[str]] = {}
    for name in p.order:
        if name in uf.parent:
            members.setdefault(uf.find(name), []).append(name)
    p.groups = [tuple(g) for g in members.values() if len(g) > 1]
    return p


def _want(p: Placement, tensor: gs.Tensor, node: gs.Node, index: int) -> None:
    """Input ``index`` of ``node`` reads the dequantized copy of ``tensor``."""
    slots = p.consumers.setdefault(tensor.name, [])
    if (node.name, index) not in slots:
        slots.append((node.name, index))


def _place_layers(p: Placement, nodes: list[gs.Node], options: QuantizeOptions,
                  dtypes: Mapping[str, int], depth: Mapping[str, int], has_down: set[str]
                  ) -> None:
    """The weighted layers quantized (inputs and weights), or why each is skipped."""
    weighted = frozenset(options.weighted_ops)
    for node in nodes:
        if node.op not in weighted:
            continue
        acts, weights, reason = _roles(node, options.per_channel, dtypes)
        if node.name in options.exclude_nodes:
            reason = "excluded by exclude_nodes"
        elif any(
            (q := _producer(t)) is not None and q.op == "DequantizeLinear" for t in node.inputs
        ):
            reason = "already quantized (an input comes from DequantizeLinear)"
        elif reason is None and depth[node.name] == 1 and not options.quantize_first_layer:
            reason = "first layer (quantize_first_layer=False)"
        elif reason is None and node.name not in has_down and not options.quantize_last_layer:
            reason = "last layer (quantize_last_layer=False)"
        if reason is not None:
            p.skipped[node.name] = reason
            continue
        p.nodes.append(node.name)
        for i, _ in acts:
            _want(p, node.inputs[i], node, i)
        for i, axis in weights:
            p.weights.append(WeightUse(node.name, i, node.inputs[i].name, axis))


def _epilogue_root(tensor: gs.Tensor, outputs: set[str], quantized: set[str]) -> gs.Node | None:
    """The quantized Conv whose epilogue (BN, bias Add) produces ``tensor`` alone, if any."""
    while len(tensor.outputs) == 1 and tensor.name not in outputs:
        prod = _producer(tensor)
        if prod is None:
            return None
        if prod.op == "BatchNormalization":
            tensor = prod.inputs[0]
        elif _is_bias_add(prod):
            tensor = next(t for t in prod.inputs if not is_constant(t))
        else:
            return prod if prod.op in _CONV_OPS and prod.name in quantized else None
    return None


def _place_residual_adds(p: Placement, nodes: list[gs.Node], dtypes: Mapping[str, int],
                         depth: Mapping[str, int], outputs: set[str]) -> set[str]:
    """Q/DQ on the skip branch of residual Adds; returns the main branches (fused by TRT)."""
    quantized = set(p.nodes)
    fused: set[str] = set()
    for node in nodes:
        if node.op != "Add" or len(node.inputs) != 2:
            continue
        a, b = node.inputs
        if a is b or is_constant(a) or is_constant(b):
            continue
        ra, rb = _epilogue_root(a, outputs, quantized), _epilogue_root(b, outputs, quantized)
        if ra is None and rb is None:
            continue
        # Both branches end in a layer (a projection shortcut): the deeper one, the main
        # path, fuses the Add; the shortcut is the skip branch.
        keep = 0 if rb is None or (ra is not None and depth[ra.name] >= depth[rb.name]) else 1
        skip = node.inputs[1 - keep]
        if _float_ok(skip, dtypes):
            fused.add(node.inputs[keep].name)
            _want(p, skip, node, 1 - keep)
    return fused


def _place_weighted_outputs(p: Placement, by_name: Mapping[str, gs.Node], outputs: set[str],
                            fused: set[str]) -> None:
    """Q/DQ after each quantized layer's epilogue (never inside it, never on a fused Add)."""
    for name in p.nodes:
        tensor = by_name[name].outputs[0]
        while len(tensor.outputs) == 1 and tensor.name not in outputs:
            nxt = tensor.outputs[0]
            if nxt.op not in _EPILOGUE_OPS and not _is_bias_add(nxt):
                break
            tensor = nxt.outputs[0]
        if tensor.name in fused:
            continue  # Q/DQ there would break the residual fusion
        for consumer in list(tensor.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is tensor:
                    _want(p, tensor, consumer, i)


def _place_concats(p: Placement, nodes: list[gs.Node], dtypes: Mapping[str, int]) -> _UnionFind:
    """A quantized Concat output quantizes its inputs with one shared scale (a union-find)."""
    uf = _UnionFind()
    for node in reversed(nodes):  # downstream first, so nested Concats join one group
        if node.op != "Concat" or not node.outputs or node.outputs[0].name not in p.consumers:
            continue
        for i, t in enumerate(node.inputs):
            if t.name and not is_constant(t) and _float_ok(t, dtypes):
                _want(p, t, node, i)
                uf.union(node.outputs[0].name, t.name)
    return uf

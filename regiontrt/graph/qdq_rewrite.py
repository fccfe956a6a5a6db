"""Writing a Q/DQ placement into the graph: int8 weight numerics, activation scales, rewiring."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from regiontrt.errors import DataError, InvalidModelError
from regiontrt.graph.qdq_placement import Placement, constant_values

QMAX = 127  # symmetric int8: [-127, 127], the range TensorRT uses for weights and activations
# The scale of an all-zero weight channel. Any positive value reconstructs zeros exactly; this one
# is a normal number in float16 too, so a later FP16 pass cannot flush it to a zero scale.
ZERO_CHANNEL_SCALE = np.float32(2.0**-14)
_TINY = np.finfo(np.float32).tiny
_F32_MAX = float(np.finfo(np.float32).max)


def quantize_weight(values: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization of a float weight, per channel along ``axis`` or per tensor.

    Returns:
        ``(q, scale)``: int8 values shaped like ``values`` and float32 scales, 1-D of length
        ``values.shape[axis]`` (0-d when ``axis`` is None); ``q * scale`` reconstructs each
        weight within ``scale / 2``.

    Raises:
        InvalidModelError: the weight holds NaN or infinite values.
    """
    w = np.asarray(values, dtype=np.float32)
    if not np.all(np.isfinite(w)):
        raise InvalidModelError("a weight to quantize holds NaN or infinite values")
    if axis is None:
        amax = np.asarray(np.max(np.abs(w), initial=0.0), dtype=np.float32)
    else:
        others = tuple(d for d in range(w.ndim) if d != axis)
        amax = np.max(np.abs(w), axis=others, initial=0.0).astype(np.float32)
    scale = (amax / np.float32(QMAX)).astype(np.float32)
    # A zero (or denormal) channel would divide by zero; its values all round to 0 anyway.
    scale = np.where(scale >= _TINY, scale, ZERO_CHANNEL_SCALE).astype(np.float32)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    # Divide in float64 so rounding happens once: |q * scale - w| <= scale / 2.
    ratio = w.astype(np.float64) / scale.astype(np.float64).reshape(shape)
    q = np.clip(np.rint(ratio), -QMAX, QMAX).astype(np.int8)
    return q, scale


def check_amax(required: Iterable[str], amax: Mapping[str, float]) -> dict[str, float]:
    """The amax of every required tensor, as floats.

    Raises:
        DataError: some are missing, or not positive finite numbers (also after float32 scaling).
    """
    required = list(required)
    missing = [name for name in required if name not in amax]
    if missing:
        raise DataError(
            f"no calibration amax for {len(missing)} activation tensor(s) that need one: "
            f"{_names(missing)}"
        )
    values: dict[str, float] = {}
    bad: list[str] = []
    for name in required:
        try:
            v = float(amax[name])
        except (TypeError, ValueError):
            v = math.nan
        # The scale is stored as float32: it must neither overflow nor be zero there.
        if not (math.isfinite(v) and v > 0 and v / QMAX <= _F32_MAX):
            bad.append(f"{name}={amax[name]!r}")
        values[name] = v
    if bad:
        raise DataError(f"calibration amax must be a positive finite number: {_names(bad)}")
    return values


def _names(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def activation_scales(placement: Placement, amax: Mapping[str, float]) -> dict[str, np.float32]:
    """Per-tensor scale of each activation; Concat groups share the largest amax of the group."""
    scales: dict[str, np.float32] = {}
    for name in placement.order:
        top = max(amax[m] for m in placement.group_of(name))
        scales[name] = np.float32(max(np.float32(top / QMAX), _TINY))
    return scales


class _Names:
    """Fresh tensor/node names that collide with nothing in the graph."""

    def __init__(self, graph: gs.Graph) -> None:
        self.used = set(graph.tensors().keys()) | {n.name for n in graph.nodes}

    def new(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


def apply_placement(
    graph: gs.Graph, placement: Placement, scales: Mapping[str, np.float32]
) -> None:
    """Insert the placement's Q/DQ pairs into ``graph`` in place.

    Each new node goes right before the first node that reads it, so the original node order
    (and its topological validity) is kept without a re-sort.
    """
    names = _Names(graph)
    by_name = {n.name: n for n in graph.nodes}
    index = {n.name: k for k, n in enumerate(graph.nodes)}
    pending: dict[int, list[gs.Node]] = {}
    replaced = _dequantize_weights(placement, by_name, index, names, pending)
    tensors = graph.tensors()
    for name in placement.order:
        tensor = tensors[name]
        slots = placement.consumers[name]
        scale = gs.Constant(names.new(f"{name}_scale"), np.array(scales[name], np.float32))
        zero = gs.Constant(names.new(f"{name}_zero_point"), np.array(0, np.int8))
        q_out = gs.Variable(names.new(f"{name}_quantized"), np.int8, tensor.shape)
        dq_out = gs.Variable(names.new(f"{name}_dequantized"), np.float32, tensor.shape)
        q = gs.Node("QuantizeLinear", names.new(f"{name}_QuantizeLinear"), {},
                    [tensor, scale, zero], [q_out])
        dq = gs.Node("DequantizeLinear", names.new(f"{name}_DequantizeLinear"), {},
                     [q_out, scale, zero], [dq_out])
        for node_name, i in slots:
            by_name[node_name].inputs[i] = dq_out
        pending.setdefault(min(index[n] for n, _ in slots), []).extend([q, dq])
    outputs = {t.name for t in graph.outputs}
    dropped = {id(n) for n in replaced
               if not n.outputs[0].outputs and n.outputs[0].name not in outputs}
    new_nodes: list[gs.Node] = []
    for k, node in enumerate(graph.nodes):
        new_nodes.extend(pending.get(k, ()))
        if id(node) not in dropped:
            new_nodes.append(node)
    graph.nodes = new_nodes


def _dequantize_weights(placement: Placement, by_name: Mapping[str, gs.Node],
                        index: Mapping[str, int], names: _Names,
                        pending: dict[int, list[gs.Node]]) -> list[gs.Node]:
    """Int8 weights and their DequantizeLinear (one per weight and axis, shared by its users);
    returns the ``Constant`` nodes whose values were replaced."""
    weight_dq: dict[tuple[str, int | None], gs.Variable] = {}
    replaced: list[gs.Node] = []
    for use in placement.weights:
        node = by_name[use.node]
        source = node.inputs[use.index]
        key = (source.name, use.axis)
        if key not in weight_dq:
            values = constant_values(source)
            if values is None:  # analyse() only plans readable constants
                raise InvalidModelError(f"weight {source.name!r} is not a readable constant")
            try:
                q, scale = quantize_weight(values, use.axis)
            except InvalidModelError:
                raise InvalidModelError(
                    f"weight {source.name!r} of node {use.node!r} holds NaN or infinite values"
                ) from None
            base = source.name
            inputs = [
                gs.Constant(names.new(f"{base}_int8"), q),
                gs.Constant(names.new(f"{base}_scale"), scale),
                gs.Constant(names.new(f"{base}_zero_point"), np.zeros(scale.shape, np.int8)),
            ]
            out = gs.Variable(names.new(f"{base}_dequantized"), np.float32, list(values.shape))
            attrs = {} if use.axis is None else {"axis": use.axis}
            dq = gs.Node(
                "DequantizeLinear", names.new(f"{base}_DequantizeLinear"), attrs, inputs, [out]
            )
            pending.setdefault(index[use.node], []).append(dq)
            weight_dq[key] = out
            if source.inputs and source.inputs[0].op == "Constant":
                replaced.append(source.inputs[0])
        node.inputs[use.index] = weight_dq[key]
    return replaced

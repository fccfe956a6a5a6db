"""Cross-layer equalization and bias correction for int8 convolutional nets.

Both come from Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction" (ICCV 2019).

* :func:`equalize_model`: in a chain ``Conv -> f -> Conv`` where ``f`` is positively homogeneous
  (ReLU, LeakyReLU, PReLU: ``f(x / s) = f(x) / s`` for ``s > 0``) or absent, output channel ``i``
  of the first convolution is divided by ``s_i`` and input channel ``i`` of the second multiplied
  by it, with ``s_i = sqrt(r1_i / r2_i)`` (``r1``, ``r2`` the channel's weight ranges in the two
  layers). Both ranges become ``sqrt(r1_i r2_i)``, so per-channel int8 weights lose less in the
  channels a per-tensor activation scale used to starve. The FP32 function is unchanged (up to
  float rounding). HardSwish, Clip (ReLU6) and SiLU are not homogeneous: chains through them are
  left alone.
* :func:`correct_bias`: int8 weights shift each output channel's expected value by
  ``(W_q - W) E[x]``; subtracting that from the bias (from calibration means of the layer's
  input) removes the shift. This changes the FP32 function on purpose; it is kept only when the
  region's metric improves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from regiontrt.errors import InvalidModelError
from regiontrt.graph.qdq_rewrite import quantize_weight

__all__ = ["HOMOGENEOUS_OPS", "correct_bias", "equalization_pairs", "equalize_model"]

#: Activations with ``f(x / s) = f(x) / s`` for every ``s > 0`` (slopes are per channel).
HOMOGENEOUS_OPS = frozenset({"Relu", "LeakyRelu", "PRelu"})
_MIN_RANGE = 1e-8  # channels with a smaller weight range are left unscaled
_SCALE_LIMITS = (1e-4, 1e4)  # bounds on one equalization step's per-channel factor


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    try:
        return gs.import_onnx(model)
    except Exception as exc:
        raise InvalidModelError(f"onnx-graphsurgeon cannot read the model: {exc}") from None


def export_graph(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """``graph`` as a model carrying ``like``'s opsets, IR version and metadata."""
    try:
        out = gs.export_onnx(graph, do_type_check=False)
    except Exception as exc:
        raise InvalidModelError(f"exporting the rewritten graph failed: {exc}") from None
    out.ir_version = like.ir_version
    del out.opset_import[:]
    out.opset_import.extend(like.opset_import)
    out.doc_string, out.model_version, out.domain = like.doc_string, like.model_version, like.domain
    del out.metadata_props[:]
    out.metadata_props.extend(like.metadata_props)
    return out


def own_weight(node: gs.Node, index: int) -> gs.Constant | None:
    """Input ``index`` of ``node`` when it is a float32 initializer read by that node only."""
    if len(node.inputs) <= index:
        return None
    t = node.inputs[index]
    if not isinstance(t, gs.Constant) or len(t.outputs) != 1:
        return None
    values = np.asarray(t.values)
    return t if values.dtype == np.float32 else None


def _single_consumer(tensor: gs.Tensor, outputs: set[str]) -> gs.Node | None:
    if tensor.name in outputs or len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


def equalization_pairs(graph: gs.Graph) -> list[tuple[gs.Node, gs.Node]]:
    """``(first, second)`` convolutions joined by a homogeneous activation (or nothing).

    The first's output, and the activation's, must feed nothing else; both weights (and the
    first's bias) must be float32 initializers of their node alone; the activation's slope
    must be a constant.
    """
    outputs = {t.name for t in graph.outputs}
    pairs = []
    for c1 in graph.nodes:
        if c1.op != "Conv" or own_weight(c1, 1) is None:
            continue
        if len(c1.inputs) > 2 and own_weight(c1, 2) is None:
            continue
        nxt = _single_consumer(c1.outputs[0], outputs)
        if nxt is not None and nxt.op in HOMOGENEOUS_OPS:
            if nxt.op == "PRelu" and not isinstance(nxt.inputs[1], gs.Constant):
                continue
            nxt = _single_consumer(nxt.outputs[0], outputs)
        if nxt is None or nxt.op != "Conv" or own_weight(nxt, 1) is None:
            continue
        w1, w2 = (np.asarray(c.inputs[1].values) for c in (c1, nxt))
        group2 = int(nxt.attrs.get("group", 1))
        if w1.ndim < 3 or w2.ndim != w1.ndim or w1.shape[0] != w2.shape[1] * group2:
            continue
        pairs.append((c1, nxt))
    return pairs


def _input_channel_range(w2: np.ndarray, group: int) -> np.ndarray:
    """Largest ``|w|`` of each input channel of a grouped Conv weight ``(O, C/g, k...)``."""
    per = np.abs(w2).reshape(w2.shape[0], w2.shape[1], -1).max(axis=2)  # (O, C/g)
    return per.reshape(group, w2.shape[0] // group, w2.shape[1]).max(axis=1).reshape(-1)


def _input_channel_factor(s: np.ndarray, w2: np.ndarray, group: int) -> np.ndarray:
    """``s`` (one per input channel) laid out to multiply the weight ``w2`` of a grouped Conv."""
    o, cpg = w2.shape[0], w2.shape[1]
    full = np.broadcast_to(s.reshape(group, 1, cpg), (group, o // group, cpg)).reshape(o, cpg)
    return full.reshape(o, cpg, *([1] * (w2.ndim - 2)))


def _equalize_pair(c1: gs.Node, c2: gs.Node) -> float:
    """Equalize one pair in place; returns the largest change of a channel's factor."""
    w1 = np.asarray(c1.inputs[1].values, dtype=np.float64)
    w2 = np.asarray(c2.inputs[1].values, dtype=np.float64)
    group = int(c2.attrs.get("group", 1))
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
    r2 = _input_channel_range(w2, group)
    ok = (r1 > _MIN_RANGE) & (r2 > _MIN_RANGE)
    s = np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)
    s = np.clip(s, *_SCALE_LIMITS)
    c1.inputs[1].values = (w1 / s.reshape(-1, *([1] * (w1.ndim - 1)))).astype(np.float32)
    if len(c1.inputs) > 2:
        b1 = np.asarray(c1.inputs[2].values, dtype=np.float64)
        c1.inputs[2].values = (b1 / s).astype(np.float32)
    c2.inputs[1].values = (w2 * _input_channel_factor(s, w2, group)).astype(np.float32)
    return float(np.max(np.abs(np.log(s)), initial=0.0))


def equalize_model(
    model: onnx.ModelProto, *, iterations: int = 8, tolerance: float = 1e-3
) -> tuple[onnx.ModelProto, int]:
    """Cross-layer equalization of every eligible ``Conv -> activation -> Conv`` pair.

    Chains of three or more layers share convolutions between pairs, so the pass repeats until
    no channel factor moves by more than ``tolerance`` (in log scale) or ``iterations`` runs.

    Args:
        model: the FP32 model (not modified).
        iterations: at most this many passes over the pairs.
        tolerance: stop when every factor of a pass is within ``exp(±tolerance)`` of 1.

    Returns:
        ``(equalized copy, number of pairs)``; with no pair, an unchanged copy and 0.

    Raises:
        InvalidModelError: the model cannot be read or written as a graph.
    """
    graph = import_graph(model)
    pairs = equalization_pairs(graph)
    if not pairs:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out, 0
    for _ in range(max(1, iterations)):
        if max(_equalize_pair(c1, c2) for c1, c2 in pairs) < tolerance:
            break
    return export_graph(graph, model), len(pairs)


def _weight_error(node: gs.Node, w: np.ndarray, per_channel: bool) -> np.ndarray:
    """``W_q - W`` for the node's weight, quantized as the Q/DQ pass does."""
    axis = (0 if node.op == "Conv" else (0 if node.attrs.get("transB", 0) else 1))
    q, scale = quantize_weight(w, axis if per_channel else None)
    shape = [1] * w.ndim
    if per_channel:
        shape[axis] = -1
    return q.astype(np.float64) * scale.astype(np.float64).reshape(shape) - w.astype(np.float64)


def _output_shift(node: gs.Node, dw: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """``(W_q - W) E[x]`` per output channel, or None when the shapes do not line up."""
    if node.op == "Conv":
        group = int(node.attrs.get("group", 1))
        o, cpg = dw.shape[0], dw.shape[1]
        if mean.size != cpg * group or o % group:
            return None
        rows = np.repeat(mean.reshape(group, cpg), o // group, axis=0)  # (O, C/g)
        return np.asarray((dw.reshape(o, cpg, -1).sum(axis=2) * rows).sum(axis=1))
    if node.attrs.get("transA", 0) or dw.ndim != 2:
        return None
    kn = dw.T if node.attrs.get("transB", 0) else dw  # (K, N)
    return None if mean.size != kn.shape[0] else np.asarray(mean @ kn)


def correct_bias(
    model: onnx.ModelProto,
    means: Mapping[str, np.ndarray],
    nodes: Iterable[str],
    *,
    per_channel: bool = True,
) -> tuple[onnx.ModelProto, list[str]]:
    """Subtract each layer's expected int8 weight error ``(W_q - W) E[x]`` from its bias.

    Args:
        model: the FP32 model, nodes named as the Q/DQ pass names them (not modified).
        means: per-channel mean of each layer's input (channel axis 1 for Conv, the last axis
            for Gemm), e.g. from :func:`~regiontrt.calibration.smooth.channel_statistics`.
        nodes: the Conv and Gemm layers that int8 quantizes; others are ignored.
        per_channel: whether weights are quantized per output channel (as the Q/DQ pass does).

    Returns:
        ``(corrected copy, names of the layers whose bias changed)``. A Conv without a bias gets
        one; a Gemm without ``C`` or with a shared bias is left alone.

    Raises:
        InvalidModelError: the model cannot be read or written as a graph.
    """
    graph = import_graph(model)
    wanted = set(nodes)
    done: list[str] = []
    for node in graph.nodes:
        if node.name not in wanted or node.op not in ("Conv", "Gemm"):
            continue
        weight = own_weight(node, 1)
        mean = means.get(node.inputs[0].name)
        if weight is None or mean is None:
            continue
        w = np.asarray(weight.values)
        shift = _output_shift(node, _weight_error(node, w, per_channel), np.asarray(mean))
        if shift is None or not np.all(np.isfinite(shift)):
            continue
        if len(node.inputs) > 2:
            bias = own_weight(node, 2)
            if bias is None or np.asarray(bias.values).shape != shift.shape:
                continue
            bias.values = (np.asarray(bias.values, np.float64) - shift).astype(np.float32)
        elif node.op == "Conv":
            node.inputs.append(gs.Constant(f"{node.name}_corrected_bias",
                                           (-shift).astype(np.float32)))
        else:
            continue
        done.append(node.name)
    if not done:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out, []
    return export_graph(graph, model), done

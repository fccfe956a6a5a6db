"""SmoothQuant: move activation outliers into the weights of the MatMuls that read them.

Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language
Models" (ICML 2023). An activation ``X`` (last axis ``K``) read by MatMul/Gemm layers with
constant weights ``W (K, N)`` is divided per channel by ``s_k`` and each weight row multiplied
by it: ``(X / s) (s W) = X W``. With ``s_k = max|X_k|^alpha / max|W_k|^(1 - alpha)`` a few
outlier channels no longer set the per-tensor activation scale for all the others; the weights,
quantized per output channel, absorb them.

The division is folded into the producer when it is a ``LayerNormalization`` whose scale (and
bias) are constants read only by it and whose output feeds only those layers; otherwise one
``Mul`` by ``1 / s`` is inserted in front of them (TensorRT fuses it into the quantization).
Either way the FP32 function is unchanged up to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from regiontrt.errors import RegionConfigError
from regiontrt.graph.equalize import export_graph, import_graph, own_weight

__all__ = ["smooth_model", "smoothing_targets"]

_SCALE_LIMITS = (1e-5, 1e5)


def _k_axis(node: gs.Node) -> int | None:
    """The reduction (``K``) axis of a MatMul/Gemm's constant 2-D weight at input 1."""
    weight = own_weight(node, 1)
    if weight is None or np.asarray(weight.values).ndim != 2 or isinstance(node.inputs[0],
                                                                             gs.Constant):
        return None
    if node.op == "MatMul":
        return 0
    if node.op == "Gemm" and not node.attrs.get("transA", 0):
        return 1 if node.attrs.get("transB", 0) else 0
    return None


def _groups(graph: gs.Graph, layers: set[str] | None) -> dict[str, list[gs.Node]]:
    """Activation tensor -> the eligible layers reading it (weights of matching ``K``)."""
    groups: dict[str, list[gs.Node]] = {}
    for node in graph.nodes:
        if node.op not in ("MatMul", "Gemm") or (layers is not None and node.name not in layers):
            continue
        if _k_axis(node) is not None:
            groups.setdefault(node.inputs[0].name, []).append(node)
    out = {}
    for name, nodes in groups.items():
        ks = {np.asarray(n.inputs[1].values).shape[_k_axis(n) or 0] for n in nodes}
        if len(ks) == 1:
            out[name] = nodes
    return out


def smoothing_targets(
    model: onnx.ModelProto, layers: Iterable[str] | None = None
) -> dict[str, list[str]]:
    """Activation tensors SmoothQuant can rescale, and the layers reading each.

    Args:
        model: the FP32 model with named nodes.
        layers: only these MatMul/Gemm nodes (``None``: all of them), e.g. the int8 plan's.
    """
    graph = import_graph(model)
    wanted = None if layers is None else set(layers)
    return {t: [n.name for n in nodes] for t, nodes in _groups(graph, wanted).items()}


def _factors(x_amax: np.ndarray, nodes: list[gs.Node], alpha: float) -> np.ndarray | None:
    w_amax = np.zeros_like(x_amax, dtype=np.float64)
    for node in nodes:
        w = np.abs(np.asarray(node.inputs[1].values, np.float64))
        w_amax = np.maximum(w_amax, w.max(axis=1 - (_k_axis(node) or 0)))
    if w_amax.shape != x_amax.shape:
        return None
    ok = (x_amax > 0) & (w_amax > 0)
    s = np.ones_like(w_amax)
    s[ok] = x_amax[ok] ** alpha / w_amax[ok] ** (1.0 - alpha)
    return np.clip(s, *_SCALE_LIMITS)


def _fold_into_layernorm(tensor: gs.Tensor, nodes: list[gs.Node], outputs: set[str],
                         s: np.ndarray) -> bool:
    """Divide a LayerNormalization's scale and bias by ``s`` when that is exact and safe."""
    prod = tensor.inputs[0] if tensor.inputs else None
    if prod is None or prod.op != "LayerNormalization" or tensor.name in outputs:
        return False
    if int(prod.attrs.get("axis", -1)) not in (-1, len(tensor.shape or [0]) - 1):
        return False
    if {id(n) for n in tensor.outputs} != {id(n) for n in nodes}:
        return False
    params = [own_weight(prod, i) for i in range(1, len(prod.inputs)) if prod.inputs[i].name]
    if any(p is None or np.asarray(p.values).shape != s.shape for p in params):
        return False
    for p in params:
        assert p is not None
        p.values = (np.asarray(p.values, np.float64) / s).astype(np.float32)
    return True


def _insert_mul(graph: gs.Graph, tensor: gs.Tensor, nodes: list[gs.Node],
                s: np.ndarray) -> None:
    taken = set(graph.tensors())
    base = f"{tensor.name}_smoothed"
    name = base
    while name in taken:
        name += "_"
    inv = gs.Constant(f"{name}_inverse_scale", (1.0 / s).astype(np.float32))
    out = gs.Variable(name, np.float32, tensor.shape)
    graph.nodes.append(gs.Node("Mul", f"{name}_Mul", {}, [tensor, inv], [out]))
    for node in nodes:
        node.inputs[0] = out


def smooth_model(
    model: onnx.ModelProto,
    activation_amax: Mapping[str, np.ndarray],
    *,
    alpha: float = 0.5,
    layers: Iterable[str] | None = None,
) -> tuple[onnx.ModelProto, int]:
    """SmoothQuant scaling of every activation in ``activation_amax`` and its layers' weights.

    Args:
        model: the FP32 model with named nodes (not modified).
        activation_amax: per-channel (last axis) ``max |x|`` of the activations to smooth, from
            :func:`~regiontrt.calibration.smooth.channel_statistics`; others are left alone.
        alpha: migration strength in ``[0, 1]``: 0 leaves activations as they are, 1 moves all
            of their range into the weights.
        layers: only these MatMul/Gemm nodes (``None``: all).

    Returns:
        ``(smoothed copy, number of activations rescaled)``.

    Raises:
        RegionConfigError: ``alpha`` outside ``[0, 1]``.
        InvalidModelError: the model cannot be read or written as a graph.
    """
    if not 0.0 <= alpha <= 1.0:
        raise RegionConfigError(f"SmoothQuant alpha must be within [0, 1], got {alpha}")
    graph = import_graph(model)
    outputs = {t.name for t in graph.outputs}
    tensors = graph.tensors()
    done = 0
    for name, nodes in _groups(graph, None if layers is None else set(layers)).items():
        if name not in activation_amax:
            continue
        s = _factors(np.asarray(activation_amax[name], np.float64), nodes, alpha)
        if s is None:
            continue
        for node in nodes:
            k = _k_axis(node) or 0
            w = np.asarray(node.inputs[1].values, np.float64)
            node.inputs[1].values = (w * (s[:, None] if k == 0 else s[None, :])).astype(
                np.float32)
        if not _fold_into_layernorm(tensors[name], nodes, outputs, s):
            _insert_mul(graph, tensors[name], nodes, s)
        done += 1
    if not done:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out, 0
    graph.toposort()
    return export_graph(graph, model), done

"""Folding ``BatchNormalization`` into the convolution before it (used by ``clean``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from regiontrt.graph.scope import fresh_name

_CONV_OPS = ("Conv", "ConvTranspose")


def fold_into_convs(graph: Any, gs: Any) -> int:
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
            name = fresh_name(f"{conv.name or conv.outputs[0].name}_bnfold_{base}", used_names)
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



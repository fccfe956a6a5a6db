"""How much of a Q/DQ model runs in int8: weighted layers, FLOPs and the quantized tensors.

A weighted layer is a Conv, ConvTranspose, MatMul or Gemm with a constant weight (an initializer
or Constant, reached through DequantizeLinear, QuantizeLinear, Identity, Transpose, Reshape,
Cast, Squeeze or Unsqueeze). It runs in int8 when both its weight and its activation input come
through a DequantizeLinear (Q/DQ in front of it), whichever tool wrote the graph. FLOPs are
2 x multiply-accumulates, from the layer's shapes at the evaluation shape (ONNX shape inference
with the inputs fixed, else one ONNX Runtime run that fetches the missing tensors).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# Ops a constant weight may pass through on its way to a layer (Q/DQ included).
_PASS_THROUGH = ("DequantizeLinear", "QuantizeLinear", "Identity", "Transpose", "Reshape", "Cast",
                 "Squeeze", "Unsqueeze")


@dataclass
class Coverage:
    """The int8 coverage of one model at one input shape.

    Attributes:
        layers: weighted layers in the graph.
        int8_layers: those whose weight and activation input are both quantized.
        flops: FLOPs of all weighted layers (``None`` when some shape is unknown).
        int8_flops: FLOPs of the int8 layers.
        int8_layer_names: node names of the int8 layers.
        float_layer_names: node names of the other weighted layers.
        quantized_tensors: activation tensors with a QuantizeLinear on them (by the name they
            have before quantization), so placements of two tools compare tensor by tensor.
        unknown_flops: weighted layers whose FLOPs could not be computed.
    """

    layers: int
    int8_layers: int
    flops: float | None
    int8_flops: float | None
    int8_layer_names: list[str] = field(default_factory=list)
    float_layer_names: list[str] = field(default_factory=list)
    quantized_tensors: list[str] = field(default_factory=list)
    unknown_flops: list[str] = field(default_factory=list)

    @property
    def layer_share(self) -> float:
        return self.int8_layers / self.layers if self.layers else 0.0

    @property
    def flop_share(self) -> float | None:
        if not self.flops or self.int8_flops is None:
            return None
        return self.int8_flops / self.flops

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers, "int8_layers": self.int8_layers,
            "layer_share": self.layer_share, "flops": self.flops, "int8_flops": self.int8_flops,
            "flop_share": self.flop_share, "int8_layer_names": self.int8_layer_names,
            "float_layer_names": self.float_layer_names,
            "quantized_tensors": self.quantized_tensors, "unknown_flops": self.unknown_flops,
        }


class _Graph:
    """Producers and constants of a model's main graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.init = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.init[n.output[0]] = a.t

    def weight_path(self, tensor: str) -> tuple[bool, bool]:
        """``(is constant, passes a DequantizeLinear)`` for a layer input."""
        dq = False
        for _ in range(16):  # a chain longer than this is no weight path
            if tensor in self.init:
                return True, dq
            node = self.producer.get(tensor)
            if node is None or node.op_type not in _PASS_THROUGH or not node.input:
                return False, False
            dq = dq or node.op_type == "DequantizeLinear"
            tensor = node.input[0]
        return False, False

    def from_dq(self, tensor: str) -> bool:
        node = self.producer.get(tensor)
        return node is not None and node.op_type == "DequantizeLinear"


def _layers(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, int, bool]]:
    """``(node, weight input index, int8)`` of every weighted layer with a constant weight."""
    g = _Graph(model)
    out = []
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        paths = [g.weight_path(t) for t in node.input[:2]]
        w = 1 if paths[1][0] else (0 if node.op_type == "MatMul" and paths[0][0] else -1)
        if w < 0:
            continue  # two activations (attention's Q x K): no constant weight
        act = node.input[1 - w]
        out.append((node, w, paths[w][1] and g.from_dq(act)))
    return out


def _fixed_inputs(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> None:
    for vi in model.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[vi.name]:
                dims.add().dim_value = int(d)


def tensor_shapes(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                  names: set[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of ``names`` when the model runs on ``feeds`` (inference first, then ORT)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    # feeds of an input the model no longer has (pinned and folded in) are left out
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in m.graph.input}}
    _fixed_inputs(m, {k: v.shape for k, v in feeds.items()})
    shapes: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in m.graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
        for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
            dims = vi.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                shapes[vi.name] = tuple(d.dim_value for d in dims)
    except Exception:  # ops ONNX cannot infer: ONNX Runtime fills in below
        pass
    missing = sorted(n for n in names if n not in shapes)
    if missing:
        import onnxruntime as ort

        outputs = {o.name for o in m.graph.output}
        m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in missing
                              if n not in outputs)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.add_session_config_entry("session.disable_quant_qdq", "1")
        try:
            sess = ort.InferenceSession(m.SerializeToString(), so,
                                        providers=["CPUExecutionProvider"])
            for n, v in zip(missing, sess.run(missing, dict(feeds)), strict=True):
                shapes[n] = tuple(np.asarray(v).shape)
        except Exception:  # shapes stay unknown: reported as unknown_flops
            pass
    return shapes


def layer_flops(node: onnx.NodeProto, w: int, shapes: Mapping[str, tuple[int, ...]]
                ) -> float | None:
    """2 x MACs of one weighted layer (``None`` if a shape is unknown)."""
    wshape = shapes.get(node.input[w])
    out = shapes.get(node.output[0])
    inp = shapes.get(node.input[1 - w])
    if wshape is None or out is None:
        return None
    if node.op_type == "Conv":  # out elements x (Cin/group x kernel)
        return 2.0 * float(np.prod(out)) * float(np.prod(wshape[1:]))
    if node.op_type == "ConvTranspose":  # in elements x (Cout/group x kernel)
        return None if inp is None else 2.0 * float(np.prod(inp)) * float(np.prod(wshape[1:]))
    if node.op_type == "Gemm":
        trans = next((a.i for a in node.attribute if a.name == "transB"), 0)
        k = wshape[1] if trans else wshape[0]
        return 2.0 * float(np.prod(out)) * float(k)
    k = wshape[-2] if w == 1 else wshape[-1]  # MatMul: reduced axis of the constant operand
    return 2.0 * float(np.prod(out)) * float(k)


def quantized_tensors(model: onnx.ModelProto) -> list[str]:
    """Activation tensors that a QuantizeLinear reads (constant weights left out)."""
    g = _Graph(model)
    names = {n.input[0] for n in model.graph.node
             if n.op_type == "QuantizeLinear" and not g.weight_path(n.input[0])[0]}
    return sorted(names)


def int8_coverage(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> Coverage:
    """Coverage of ``model`` evaluated on inputs shaped like ``feeds`` (one sample's feed)."""
    layers = _layers(model)
    wanted = {t for node, w, _ in layers for t in (node.input[0], node.input[1], node.output[0])}
    shapes = tensor_shapes(model, feeds, wanted)
    total, int8, unknown = 0.0, 0.0, []
    for node, w, q in layers:
        f = layer_flops(node, w, shapes)
        if f is None:
            unknown.append(node.name)
            continue
        total += f
        int8 += f if q else 0.0
    return Coverage(
        layers=len(layers), int8_layers=sum(q for _, _, q in layers),
        flops=None if unknown else total, int8_flops=None if unknown else int8,
        int8_layer_names=[n.name for n, _, q in layers if q],
        float_layer_names=[n.name for n, _, q in layers if not q],
        quantized_tensors=quantized_tensors(model), unknown_flops=unknown,
    )


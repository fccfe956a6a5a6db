"""A probe model for ranking layers by their own int8 error, from one FP32 pass.

For the mixed-precision search each quantized layer needs a sensitivity. Measuring the whole
model once per layer costs one full evaluation per layer; the probe instead keeps the FP32 graph
and adds, next to each quantized layer, a clone that reads the FP32 activations through that
layer's Q/DQ nodes (the scales and int8 weights of the quantized model). One ONNX Runtime pass
then yields, per layer, its FP32 output and its output with int8 inputs, and so its local error,
with every layer seeing exact FP32 inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

__all__ = ["PROBE_PREFIX", "layer_probe"]

PROBE_PREFIX = "regiontrt_probe"


def layer_probe(
    fp32: onnx.ModelProto, quantized: onnx.ModelProto, nodes: Sequence[str]
) -> tuple[onnx.ModelProto, dict[str, tuple[str, str]]]:
    """The FP32 model plus a quantized-input clone of each node in ``nodes``.

    Args:
        fp32: the FP32 model ``quantized`` was written from, with the same node names and opset
            (``upgrade_opset(name_nodes(model))``); not modified.
        quantized: the int8 model from :func:`~regiontrt.graph.quantize.quantize_model`.
        nodes: names of the quantized layers to probe (names absent from ``quantized`` are
            skipped).

    Returns:
        ``(probe, pairs)``: the probe model, whose outputs are the model's own followed by both
        tensors of every pair, and ``{node: (fp32 output, probe output)}``.
    """
    out = onnx.ModelProto()
    out.CopyFrom(fp32)
    graph = out.graph
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    known.update(o for n in graph.node for o in n.output if o)
    producer = {o: n for n in quantized.graph.node for o in n.output if o}
    q_inits = {i.name: i for i in quantized.graph.initializer}
    q_nodes = {n.name: n for n in quantized.graph.node}
    renamed: dict[str, str] = {}

    def graft(tensor: str) -> str:
        """``tensor`` of the quantized graph, as a tensor of the probe (cloned if needed)."""
        if not tensor or tensor in known:
            return tensor
        if tensor in renamed:
            return renamed[tensor]
        new = f"{PROBE_PREFIX}/{tensor}"
        renamed[tensor] = new
        if tensor in q_inits:
            init = onnx.TensorProto()
            init.CopyFrom(q_inits[tensor])
            init.name = new
            graph.initializer.append(init)
            return new
        src = producer.get(tensor)
        if src is None:
            raise KeyError(tensor)
        _clone(src)
        return new

    def _clone(src: onnx.NodeProto) -> onnx.NodeProto:
        inputs = [graft(t) for t in src.input]
        clone = onnx.NodeProto()
        clone.CopyFrom(src)
        clone.name = f"{PROBE_PREFIX}/{src.name}"
        del clone.input[:]
        clone.input.extend(inputs)
        del clone.output[:]
        for o in src.output:
            if o:
                renamed.setdefault(o, f"{PROBE_PREFIX}/{o}")
            clone.output.append(renamed[o] if o else "")
        graph.node.append(clone)  # after its inputs' producers: the order stays topological
        return clone

    pairs: dict[str, tuple[str, str]] = {}
    for name in nodes:
        node = q_nodes.get(name)
        if node is None or not node.output or node.output[0] not in known:
            continue
        try:
            clone = _clone(node)
        except KeyError:  # an input neither in the FP32 graph nor produced in the int8 one
            continue
        pairs[name] = (node.output[0], clone.output[0])
    present = {o.name for o in graph.output}
    for ref, probe in pairs.values():
        for tensor in (ref, probe):
            if tensor not in present:
                graph.output.append(
                    onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)
                )
                present.add(tensor)
    return out, pairs

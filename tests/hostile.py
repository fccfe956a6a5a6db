"""Helpers for the hostile-input tests: tiny models and engines, and forged-but-consistent files.

A forged file is what an attacker without a signing key can make: edit the header or the payload,
then recompute both digests so that the container's own integrity checks pass.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from regiontrt.runtime import artifact


def relu_model(*, opset: int = 17, name: str = "x", out: str = "y") -> onnx.ModelProto:
    """``y = relu(x) * w`` on ``x[N, 4]`` float32, with one initializer (so external data fits)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], np.arange(1, 5, dtype=np.float32))
    graph = helper.make_graph(
        [helper.make_node("Relu", [name], ["r"], name="relu"),
         helper.make_node("Mul", ["r", "w"], [out], name="mul")],
        "relu",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def external_payload(location: str, *, offset: int = 0, length: int = 16) -> bytes:
    """:func:`relu_model` whose weight ``w`` (4 floats) is read from ``location``."""
    model = relu_model()
    w = model.graph.initializer[0]
    w.ClearField("float_data")
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(length))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def qdq_model() -> onnx.ModelProto:
    """The same interface as :func:`relu_model`, but quantized (Q/DQ around the Relu)."""
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq"),
         helper.make_node("Relu", ["dq"], ["y"], name="relu")],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [0.05]),
         helper.make_tensor("z", TensorProto.INT8, [], [0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def build_blob(region: str = "CERTIFIED") -> bytes:
    """The container bytes of a real fp32 engine of :func:`relu_model`."""
    import regiontrt as rt

    engine = rt.RegionalEngineBuilder.from_onnx(relu_model()).for_region(region).build()
    return engine.to_bytes()


def container(header: bytes, payload: bytes) -> bytes:
    """A container around raw header bytes, with correct digests (``payload_*`` not touched)."""
    prefix = struct.pack("<8sII32s", artifact.MAGIC, artifact.FORMAT_VERSION, len(header),
                         hashlib.sha256(header).digest())
    return prefix + header + payload


def split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    return artifact.decode(blob)


def forge(blob: bytes, edit: Callable[[dict[str, Any]], object] | None = None,
          payload: bytes | None = None, *, fix_payload_fields: bool = True) -> bytes:
    """Edit a valid container's header (and/or swap its payload) and recompute every digest."""
    meta, old = split(blob)
    payload = old if payload is None else payload
    if fix_payload_fields:
        meta["payload_sha256"] = hashlib.sha256(payload).hexdigest()
        meta["payload_size"] = len(payload)
    if edit is not None:
        edit(meta)  # edits in place
    raw = json.dumps(meta, sort_keys=True).encode()
    return container(raw, payload)


def forge_raw_header(blob: bytes, raw_header: bytes) -> bytes:
    """A container whose header is ``raw_header`` verbatim (digest recomputed)."""
    _, payload = split(blob)
    return container(raw_header, payload)


def function_default_external(location: str) -> onnx.ModelProto:
    """A model whose local function's default attribute value names external data (ONNX
    Runtime resolved such a location from the working directory: issue 19)."""
    t = onnx.TensorProto(name="v", data_type=onnx.TensorProto.UINT8, dims=[8],
                         data_location=onnx.TensorProto.EXTERNAL)
    for k, v in (("location", location), ("offset", "0"), ("length", "8")):
        t.external_data.add(key=k, value=v)
    const = helper.make_node("Constant", [], ["out"])
    const.attribute.append(onnx.AttributeProto(name="value", ref_attr_name="v",
                                              type=onnx.AttributeProto.TENSOR))
    fn = helper.make_function("local", "F", [], ["out"], [const], [helper.make_opsetid("", 17)])
    fn.attribute_proto.append(helper.make_attribute("v", t))
    graph = helper.make_graph([helper.make_node("F", [], ["y"], domain="local")], "g", [],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.UINT8, [8])])
    model = helper.make_model(graph, functions=[fn], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    model.ir_version = 9
    return model

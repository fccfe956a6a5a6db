"""Shared parts of the HTTP hardening tests: a tiny served model and a raw HTTP client."""

from __future__ import annotations

import http.client
import json

import numpy as np
import onnx
from onnx import TensorProto, helper

import regiontrt as rt
from regiontrt.serve import Server

MODEL = "double_CERTIFIED"
INFER = f"/v2/models/{MODEL}/infer"


def double_model() -> onnx.ModelProto:
    """y = 2x on x [N, T] (FP32)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])], "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T"])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def build_engine() -> rt.Engine:
    """The served double model (fp32, T up to 1024)."""
    profile = rt.ShapeProfile({"x": [(1, 1), (4, 64), (64, 1024)]})
    return (rt.RegionalEngineBuilder.from_onnx(double_model()).for_region("CERTIFIED")
            .with_shape_profile(profile).build())


def served(engine: rt.Engine, **kw: object) -> Server:
    return rt.serve(engine, name="double", mode="latency", **kw)


def request(x: np.ndarray, **extra: object) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.reshape(-1).tolist()}], **extra}).encode()


def post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None,
          timeout: float = 60.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"content-type": "application/json",
                                                        **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()

"""The KServe v2 codec on its own: binary round trips, output selection, hostile sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest

import regiontrt as rt
from regiontrt.serve.protocol import ProtocolError, decode_infer, encode_infer, model_metadata
from regiontrt.serve.sources import from_engine


@pytest.fixture(scope="module")
def model():
    from regiontrt import demo

    profile = {"input": [(1, 1, 8, 8), (4, 1, 8, 8), (8, 1, 8, 8)]}
    engine = (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("CERTIFIED")
              .with_shape_profile(profile).build())
    return from_engine(engine, "digits")


def _binary(x: np.ndarray, **params: object) -> tuple[bytes, str]:
    raw = x.astype("<f4").tobytes()
    head = json.dumps({"id": "7", "inputs": [{"name": "input", "datatype": "FP32",
                                               "shape": list(x.shape),
                                               "parameters": {"binary_data_size": len(raw)}}],
                       "parameters": params}).encode()
    return head + raw, str(len(head))


def test_binary_request_and_response_round_trip(model):
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    body, length = _binary(x, binary_data_output=True, timeout=2500)
    request = decode_infer(body, length, model)
    assert request.id == "7" and request.timeout_ms == 2.5
    assert np.array_equal(request.inputs["input"], x)
    logits = model.engine.infer(request.inputs)["logits"]
    payload, head_len = encode_infer(model, request, {"logits": logits})
    assert head_len is not None
    head = json.loads(payload[:head_len])
    out = head["outputs"][0]
    assert head["model_name"] == "digits_CERTIFIED" and head["id"] == "7"
    assert out["parameters"]["binary_data_size"] == logits.nbytes == len(payload) - head_len
    got = np.frombuffer(payload[head_len:], "<f4").reshape(out["shape"])
    assert np.array_equal(got, logits)


def test_json_response_by_default_and_metadata_shapes(model):
    x = np.zeros((1, 1, 8, 8), np.float32)
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                                   "data": x.tolist()}]}).encode()  # nested data is accepted
    request = decode_infer(body, None, model)
    payload, head_len = encode_infer(model, request, model.engine.infer(request.inputs))
    assert head_len is None and json.loads(payload)["outputs"][0]["shape"] == [1, 10]
    meta = model_metadata(model)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["parameters"]["precision"] == "fp32" and meta["parameters"]["region"] == \
        "CERTIFIED"


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda h: h.update(inputs=[{**h["inputs"][0], "shape": [10**12, 1, 8, 8]}]), "bytes"),
    (lambda h: h.update(inputs=[{**h["inputs"][0], "shape": [1] * 40}]), "at most"),
    (lambda h: h.update(inputs=h["inputs"] * 2), "ends past|twice"),
    (lambda h: h["inputs"][0].update(parameters={"binary_data_size": -1}), "non-negative"),
    (lambda h: h["inputs"][0].update(parameters={"binary_data_size": True}), "non-negative"),
    (lambda h: h.update(parameters={"timeout": -5}), "timeout"),
    (lambda h: h.update(outputs="logits"), "outputs"),
])
def test_hostile_headers_are_refused_before_allocation(model, mutate, message):
    x = np.zeros((1, 1, 8, 8), np.float32)
    raw = x.tobytes()
    header = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                          "parameters": {"binary_data_size": len(raw)}}]}
    mutate(header)
    head = json.dumps(header).encode()
    with pytest.raises(ProtocolError, match=message) as info:
        decode_infer(head + raw, str(len(head)), model)
    assert info.value.status == 400

"""The KServe v2 / Triton gRPC endpoint on 127.0.0.1: tritonclient.grpc, hostile requests."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import regiontrt as rt

grpc = pytest.importorskip("grpc", reason="needs grpcio (pip install 'regiontrt[serve]')")
grpcclient = pytest.importorskip("tritonclient.grpc",
                                 reason="needs tritonclient[grpc] (the test extra)")

from tritonclient.grpc import service_pb2 as pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc as pb_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from regiontrt.serve.grpc_server import BackgroundGRPC  # noqa: E402

MODEL = "digits_cnn_NA"


@pytest.fixture(scope="module")
def samples():
    from regiontrt import demo

    return demo.region_data("NA").validation[:16]


@pytest.fixture(scope="module")
def endpoint(na_engine):
    before = {t.ident for t in threading.enumerate()}
    with BackgroundGRPC(rt.serve(na_engine, max_batch=8, max_delay_ms=2)) as g:
        yield g
    time.sleep(0.3)
    # grpcio keeps one process-wide poller thread once any channel exists: not ours to stop.
    leaked = [t.name for t in threading.enumerate() if t.ident not in before
              and t.name.startswith("regiontrt")]
    assert leaked == [], leaked


def test_tritonclient_grpc_health_metadata_config_and_index(endpoint, na_engine):
    client = grpcclient.InferenceServerClient(endpoint.url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
        assert client.get_server_metadata().name == "regiontrt"
        meta = client.get_model_metadata(MODEL, as_json=True)
        assert meta["name"] == MODEL and meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32",
                                   "shape": ["-1", "1", "8", "8"]}]  # int64 as JSON strings
        assert meta["outputs"][0]["name"] == "logits"
        config = client.get_model_config(MODEL, as_json=True)["config"]
        assert config["input"][0]["data_type"] == "TYPE_FP32"
        params = {k: json.loads(v["string_value"]) for k, v in config["parameters"].items()}
        assert params["region"] == "NA" and params["precision"] == "int8"
        assert params["version"] == "1" and params["sla_ms"] == 10.0
        assert params["source_version"] == rt.serve.sources.engine_version(na_engine)
        assert params["provenance"]["model_sha256"] == na_engine.metadata["model"]["sha256"]
        index = client.get_model_repository_index(as_json=True)["models"]
        assert index == [{"name": MODEL, "version": "1", "state": "READY"}]
    finally:
        client.close()


def test_tritonclient_grpc_infer_binary_tensors_equal_engine_infer(endpoint, na_engine,
                                                                    samples):
    client = grpcclient.InferenceServerClient(endpoint.url)
    try:
        for rows in (1, 5, 16):
            x = samples[:rows]
            inp = grpcclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)  # raw_input_contents
            out = grpcclient.InferRequestedOutput("logits")
            result = client.infer(MODEL, [inp], outputs=[out], request_id="r1", model_version="1")
            assert np.array_equal(result.as_numpy("logits"), na_engine.infer(x)["logits"])
            response = result.get_response()
            assert response.id == "r1" and response.model_version == "1"
            assert len(response.raw_output_contents) == 1
        # Typed contents (fp32_contents) instead of raw bytes, straight through the stub.
        x = samples[:2]
        with grpc.insecure_channel(endpoint.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            req = pb.ModelInferRequest(model_name=MODEL)
            t = req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
            t.contents.fp32_contents.extend(x.reshape(-1).tolist())
            reply = stub.ModelInfer(req, timeout=10)
        got = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(2, 10)
        assert np.array_equal(got, na_engine.infer(x)["logits"])
    finally:
        client.close()


def _hostile(x: np.ndarray) -> list[tuple[str, object, grpc.StatusCode]]:
    """(what, request, expected status) of ModelInfer requests the server must refuse."""
    raw = x.astype("<f4").tobytes()

    def req(model: str = MODEL, name: str = "input", dt: str = "FP32",
            shape: list[int] | None = None, data: list[bytes] | None = None,
            version: str = "", outputs: tuple[str, ...] = ()) -> object:
        r = pb.ModelInferRequest(model_name=model, model_version=version)
        r.inputs.add(name=name, datatype=dt, shape=list(x.shape) if shape is None else shape)
        r.raw_input_contents.extend([raw] if data is None else data)
        for o in outputs:
            r.outputs.add(name=o)
        return r

    two = pb.ModelInferRequest(model_name=MODEL)
    two.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    two.raw_input_contents.extend([raw, raw])
    short_contents = pb.ModelInferRequest(model_name=MODEL)
    t = short_contents.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    t.contents.fp32_contents.extend([0.0] * (x.size - 1))
    huge = 1 << 40
    inv, nf = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    return [
        ("4 bytes short", req(data=[raw[:-4]]), inv),
        ("4 bytes over", req(data=[raw + b"\0" * 4]), inv),
        ("no bytes", req(data=[b""]), inv),
        ("two raw tensors for one input", two, inv),
        ("bad dtype", req(dt="FP64"), inv),
        ("BYTES dtype", req(dt="BYTES"), inv),
        ("unknown input", req(name="pixels"), inv),
        ("negative dim", req(shape=[-1, 1, 8, 8]), inv),
        ("shape does not match bytes", req(shape=[1, 1, 8, 7]), inv),
        ("shape outside the profile", req(shape=[65, 1, 8, 8], data=[b"\0" * 65 * 256]), inv),
        ("wrong trailing dims", req(shape=[len(x), 1, 4, 16]), inv),
        ("huge shape", req(shape=[huge, huge, 8, 8]), inv),
        ("rank 17", req(shape=[1] * 17), inv),
        ("value count off", short_contents, inv),
        ("unknown output", req(outputs=("nope",)), inv),
        ("unknown model", req(model="other_EU"), nf),
        ("unknown version", req(version="7"), nf),
        ("empty model name", req(model=""), nf),
    ]


def test_hostile_infer_requests_get_invalid_argument_or_not_found_never_internal(
        endpoint, na_engine, samples):
    x = samples[:3]
    want = na_engine.infer(x)["logits"]
    with grpc.insecure_channel(endpoint.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        good = pb.ModelInferRequest(model_name=MODEL)
        good.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
        good.raw_input_contents.append(x.astype("<f4").tobytes())
        for what, request, code in _hostile(x):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, timeout=10)
            assert info.value.code() == code, (what, info.value.code(), info.value.details())
            assert info.value.details(), what
            reply = stub.ModelInfer(good, timeout=10)  # the server still answers right
            got = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(want.shape)
            assert np.array_equal(got, want), what
        for call, arg in ((stub.ModelMetadata, pb.ModelMetadataRequest(name="other_EU")),
                          (stub.ModelReady, pb.ModelReadyRequest(name=MODEL, version="2")),
                          (stub.ModelConfig, pb.ModelConfigRequest(name="other_EU"))):
            with pytest.raises(grpc.RpcError) as info:
                call(arg, timeout=10)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready


def test_tritonclient_grpc_raises_on_unknown_model(endpoint):
    client = grpcclient.InferenceServerClient(endpoint.url)
    try:
        with pytest.raises(InferenceServerException, match="unknown model") as info:
            client.get_model_metadata("digits_cnn_XX")
        assert info.value.status() == "StatusCode.NOT_FOUND"
    finally:
        client.close()


def test_grpc_deadline_and_a_full_queue(na_engine, samples):
    x = samples[:1]
    server = rt.serve(na_engine, mode="throughput", max_batch=64, max_delay_ms=600, max_queue=1)
    with BackgroundGRPC(server) as g, grpc.insecure_channel(g.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name=MODEL)
        req.inputs.add(name="input", datatype="FP32", shape=[1, 1, 8, 8])
        req.raw_input_contents.append(x.astype("<f4").tobytes())
        late = pb.ModelInferRequest()
        late.CopyFrom(req)
        late.parameters["timeout"].int64_param = 30_000  # µs, as Triton: under the 600 ms fill
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(late, timeout=10)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        waiting = stub.ModelInfer.future(req, timeout=10)
        deadline = time.monotonic() + 5
        while server.stats()[MODEL]["queue_depth"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(req, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "queue full" in info.value.details()
        assert len(waiting.result(10).raw_output_contents) == 1
    assert not server.ready  # stopping the endpoint closed the server it owned


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_serves_grpc_beside_http_and_logs_each_event_once(na_engine, samples, tmp_path):
    httpx = pytest.importorskip("httpx", reason="needs httpx (the test extra)")
    path = tmp_path / "digits.NA.engine"
    na_engine.save(path)
    port, gport = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(rt.__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from regiontrt.cli import main; sys.exit(main())",
         "serve", str(path), "--port", str(port), "--grpc-port", str(gport),
         "--log-level", "info"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready",
                             timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{gport}")
        try:
            x = samples[:3]
            inp = grpcclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            got = client.infer("digits_NA", [inp], model_version="1").as_numpy("logits")
            assert np.array_equal(got, na_engine.infer(x)["logits"])
        finally:
            client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        err = proc.stderr.read().decode() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in err.splitlines() if line.strip()]
    one_format = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")
    assert lines and all(one_format.match(line) for line in lines), err
    messages = [line.split(": ", 1)[1] for line in lines]
    assert sum("Application startup complete" in m for m in messages) == 1, err
    assert sum("serving: precision" in m for m in messages) == 1, err
    assert sum("gRPC (KServe v2) listening" in m for m in messages) == 1, err
    assert len(messages) == len(set(messages)), err

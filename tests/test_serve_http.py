"""The KServe v2 / Triton HTTP endpoint on 127.0.0.1: tritonclient, bad-request bursts, shutdown."""

from __future__ import annotations

import json
import os
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

pytest.importorskip("starlette", reason="needs starlette (pip install 'regiontrt[serve]')")
pytest.importorskip("uvicorn", reason="needs uvicorn (pip install 'regiontrt[serve]')")
httpx = pytest.importorskip("httpx", reason="needs httpx (the test extra)")

from regiontrt.serve.runner import BackgroundHTTP  # noqa: E402

MODEL = "digits_cnn_NA"


@pytest.fixture(scope="module")
def samples():
    from regiontrt import demo

    return demo.region_data("NA").validation[:16]


def test_tritonclient_metadata_and_infer_json_and_binary(na_engine, samples):
    httpclient = pytest.importorskip("tritonclient.http",
                                     reason="needs tritonclient[http] (the test extra)")
    before = {t.ident for t in threading.enumerate()}
    with BackgroundHTTP(rt.serve(na_engine, max_batch=8, max_delay_ms=2)) as http:
        client = httpclient.InferenceServerClient(http.url)
        try:
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready(MODEL)
            meta = client.get_model_metadata(MODEL)
            assert meta["name"] == MODEL and meta["inputs"][0]["datatype"] == "FP32"
            assert meta["inputs"][0]["shape"] == [-1, 1, 8, 8]
            params = meta["parameters"]
            assert params["region"] == "NA" and params["precision"] == "int8"
            assert params["provenance"]["model_sha256"] == na_engine.metadata["model"]["sha256"]
            index = client.get_model_repository_index()
            assert index == [{"name": MODEL, "version": meta["versions"][0], "state": "READY"}]
            for binary in (False, True):
                for rows in (1, 5, 16):
                    x = samples[:rows]
                    inp = httpclient.InferInput("input", list(x.shape), "FP32")
                    inp.set_data_from_numpy(x, binary_data=binary)
                    out = httpclient.InferRequestedOutput("logits", binary_data=binary)
                    result = client.infer(MODEL, [inp], outputs=[out], request_id="r1")
                    got = result.as_numpy("logits")
                    want = na_engine.infer(x)["logits"]
                    if binary:
                        assert np.array_equal(got, want)
                    else:  # JSON carries floats as decimal text: equal after the round trip
                        np.testing.assert_array_equal(got, want.astype(np.float64)
                                                      .astype(np.float32))
                    assert result.get_response()["id"] == "r1"
            with pytest.raises(Exception, match="unknown model"):
                client.get_model_metadata("digits_cnn_XX")
            metrics = httpx.get(f"http://{http.url}/metrics").text
            assert f'model="{MODEL}"' in metrics and 'region="NA"' in metrics
        finally:
            client.close()
    time.sleep(0.2)
    leaked = [t.name for t in threading.enumerate() if t.ident not in before]
    assert leaked == [], leaked


def _bad_requests(x: np.ndarray) -> list[tuple[str, dict, bytes, int]]:
    """(path, headers, body, expected status) of requests the server must refuse."""
    infer = f"/v2/models/{MODEL}/infer"
    good = {"name": "input", "datatype": "FP32", "shape": list(x.shape),
            "data": x.reshape(-1).tolist()}
    j = {"content-type": "application/json"}

    def body(**changes: object) -> bytes:
        return json.dumps({"inputs": [{**good, **changes}]}).encode()

    raw = x.astype("<f4").tobytes()
    head = json.dumps({"inputs": [{**{k: v for k, v in good.items() if k != "data"},
                                   "parameters": {"binary_data_size": len(raw) - 4}}]}).encode()
    return [
        (infer, j, b"{not json", 400),
        (infer, j, b"[1, 2]", 400),
        (infer, j, json.dumps({"inputs": []}).encode(), 400),
        (infer, j, body(name="pixels"), 400),
        (infer, j, body(datatype="FP64"), 400),
        (infer, j, body(datatype="BYTES"), 400),
        (infer, j, body(shape=[1, 1, 8, 7]), 400),
        (infer, j, body(shape=[2, 1, 8, 8]), 400),
        (infer, j, body(shape=[-1, 1, 8, 8]), 400),
        (infer, j, body(data=["a"] * x.size), 400),
        (infer, j, json.dumps({"inputs": [{**good, "shape": [65, 1, 8, 8],
                                           "data": [0.0] * (65 * 64)}]}).encode(), 400),
        (infer, j, json.dumps({"inputs": [good], "outputs": [{"name": "nope"}]}).encode(), 400),
        (infer, {"Inference-Header-Content-Length": str(len(head))}, head + raw, 400),
        (infer, {"Inference-Header-Content-Length": "99999999"}, head + raw, 400),
        (infer, j, b"x" * (300 * 1024), 413),
        ("/v2/models/other_EU/infer", j, body(), 404),
        ("/v2/models/other_EU", {}, b"", 404),
        ("/v2/nowhere", {}, b"", 404),
    ]


def test_a_burst_of_bad_requests_between_good_ones_keeps_every_good_answer(na_engine, samples):
    x = samples[:3]
    want = na_engine.infer(x)["logits"]
    good = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.reshape(-1).tolist()}]}).encode()
    with BackgroundHTTP(rt.serve(na_engine), max_body=256 * 1024) as http, \
            httpx.Client(base_url=f"http://{http.url}", timeout=10) as client:
        answers, refusals = 0, 0
        for _ in range(3):
            for path, headers, body, status in _bad_requests(x):
                method = "GET" if path in ("/v2/models/other_EU", "/v2/nowhere") else "POST"
                r = client.request(method, path, content=body or None, headers=headers)
                assert r.status_code == status, (path, body[:80], r.text)
                assert isinstance(r.json()["error"], str) and r.json()["error"]
                refusals += 1
                ok = client.post(f"/v2/models/{MODEL}/infer", content=good)
                assert ok.status_code == 200, ok.text
                out = ok.json()["outputs"][0]
                assert out["name"] == "logits" and out["shape"] == [3, 10]
                got = np.asarray(out["data"], np.float32).reshape(out["shape"])
                np.testing.assert_array_equal(got, want)
                answers += 1
        assert client.get("/v2/health/ready").status_code == 200
    assert refusals == 3 * len(_bad_requests(x)) and answers == refusals


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_serve_drains_in_flight_requests_on_sigterm(na_engine, samples, tmp_path):
    path = tmp_path / "digits.NA.engine"
    na_engine.save(path)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(rt.__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from regiontrt.cli import main; sys.exit(main())",
         "serve", str(path), "--port", str(port),
         "--mode", "throughput", "--max-batch", "64", "--max-delay-ms", "3000",
         "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        meta = httpx.get(f"{base}/v2/models/digits_NA", timeout=5).json()
        assert meta["parameters"]["region"] == "NA"
        x = samples[:2]
        body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 8, 8],
                                       "data": x.reshape(-1).tolist()}]}).encode()
        replies: list[httpx.Response] = []
        sender = threading.Thread(target=lambda: replies.append(
            httpx.post(f"{base}/v2/models/digits_NA/infer", content=body, timeout=20)))
        sender.start()
        gauge = 'regiontrt_serve_queue_depth{model="digits_NA"'
        while not any(line.startswith(gauge) and line.endswith(" 1.0") for line in
                      httpx.get(f"{base}/metrics", timeout=5).text.splitlines()):
            assert time.monotonic() < deadline + 30, "the request never reached the queue"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # the request is in flight: queued for a 3 s fill
        sender.join(20)
        code = proc.wait(20)
        assert replies and replies[0].status_code == 200, replies
        # uvicorn re-raises the captured SIGTERM once shutdown is done (exit by the signal).
        assert code in (0, -signal.SIGTERM), proc.stderr.read().decode() if proc.stderr else ""
        out = replies[0].json()["outputs"][0]
        np.testing.assert_array_equal(np.asarray(out["data"], np.float32).reshape(2, 10),
                                      na_engine.infer(x)["logits"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_http_deadline_is_504_and_a_full_queue_is_503(na_engine, samples):
    x = samples[:1]
    entry = {"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
             "data": x.reshape(-1).tolist()}
    server = rt.serve(na_engine, mode="throughput", max_batch=64, max_delay_ms=600, max_queue=1)
    with BackgroundHTTP(server) as http, \
            httpx.Client(base_url=f"http://{http.url}", timeout=10) as client:
        url = f"/v2/models/{MODEL}/infer"
        # Triton's request timeout is in microseconds: 30 ms here, less than the 600 ms fill.
        late = client.post(url, json={"inputs": [entry], "parameters": {"timeout": 30_000}})
        assert late.status_code == 504 and "deadline" in late.json()["error"]
        waiting: list[httpx.Response] = []
        first = threading.Thread(target=lambda: waiting.append(client.post(url, json={
            "inputs": [entry]})))
        first.start()
        deadline = time.monotonic() + 5
        while server.stats()[MODEL]["queue_depth"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        full = client.post(url, json={"inputs": [entry]})
        assert full.status_code == 503 and "queue full" in full.json()["error"]
        first.join(10)
        assert waiting and waiting[0].status_code == 200

"""The server over the TensorRT runner on a GPU, through the named test double.

The engine is tests/test_engine_gpu.py's: :class:`regiontrt.testing.FakeCudaEngine` (a real NVRTC
kernel) loaded into the real :class:`TensorRTRunner`, so batching, the runner's profile choice,
buffers, streams and copies all run on the GPU. The step-load figures are printed (run with
``-s``) and written to ``$OUT/serve_gpu_load.json`` when ``OUT`` is set.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import regiontrt as rt

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engine():
    from test_engine_gpu import make_engine

    with make_engine() as e:
        yield e


def _requests(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rows, cols = 1 + i % 3, (16, 64, 16, 200)[i % 4]
        out.append({"x": rng.standard_normal((rows, cols)).astype(np.float32),
                    "k": rng.integers(-5, 5, rows).astype(np.int32)})
    return out


def test_batched_gpu_outputs_equal_each_request_run_alone(engine):
    requests = _requests(90)
    alone = [engine.infer(r) for r in requests]
    with rt.serve(engine, mode="throughput", max_batch=32, max_delay_ms=20) as server:
        with ThreadPoolExecutor(8) as pool:
            futures = list(pool.map(server.submit, requests))
        got = [f.result(30) for f in futures]
        stats = next(iter(server.stats().values()))
    for want, have in zip(alone, got):
        np.testing.assert_array_equal(have["y"], want["y"])
        np.testing.assert_array_equal(have["s"], want["s"])
    assert stats["outcomes"] == {"ok": len(requests)}
    assert max(stats["batch_sizes"]) > 3 and stats["batches"] < len(requests)
    ref = engine._backend.engine.reference(requests[5]["x"], requests[5]["k"])
    np.testing.assert_allclose(got[5]["y"], ref["y"], rtol=1e-6, atol=1e-6)


def test_tritonclient_over_the_gpu_runner(engine):
    httpclient = pytest.importorskip("tritonclient.http",
                                     reason="needs tritonclient[http] (the test extra)")
    for module in ("starlette", "uvicorn"):  # the HTTP server's stack (the serve extra)
        pytest.importorskip(module, reason=f"needs {module} (pip install 'regiontrt[serve]')")
    from regiontrt.serve.runner import BackgroundHTTP

    before = {t.ident for t in threading.enumerate()}
    with BackgroundHTTP(rt.serve(engine, max_batch=16, max_delay_ms=2)) as http:
        client = httpclient.InferenceServerClient(http.url)
        try:
            (name,) = [m["name"] for m in client.get_model_repository_index()]
            assert client.get_model_metadata(name)["parameters"]["region"] == "GPU-TEST"
            for binary in (True, False):
                r = _requests(1, seed=3)[0]
                x = httpclient.InferInput("x", list(r["x"].shape), "FP32")
                x.set_data_from_numpy(r["x"], binary_data=binary)
                k = httpclient.InferInput("k", list(r["k"].shape), "INT32")
                k.set_data_from_numpy(r["k"], binary_data=binary)
                outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in "ys"]
                result = client.infer(name, [x, k], outputs=outs)
                want = engine.infer(r)
                np.testing.assert_array_equal(result.as_numpy("y"), want["y"])
                np.testing.assert_array_equal(result.as_numpy("s"), want["s"])
        finally:
            client.close()
    leaked = [t.name for t in threading.enumerate() if t.ident not in before]
    assert leaked == [], leaked


def test_step_load_on_the_gpu_runner_records_figures(engine):
    bench = pytest.importorskip("benchmarks.bench_serving", reason="run from the repository root")
    pytest.importorskip("aiohttp", reason="needs aiohttp for the HTTP load generator")
    for module in ("starlette", "uvicorn"):  # the HTTP server's stack (the serve extra)
        pytest.importorskip(module, reason=f"needs {module} (pip install 'regiontrt[serve]')")
    request = {"x": np.ones((1, 64), np.float32), "k": np.zeros(1, np.int32)}
    setup = bench.Setup("gpu-double", engine, request, sla_ms=50.0)
    report = bench.step_load(setup, phase_s=1.5, http_in_process=True)
    for transport, run in report["runs"].items():
        for mode, figures in run["modes"].items():
            whole = figures["phases"]["all"]
            assert whole["requests"] > 0 and whole["answered"] > 0, (transport, mode, whole)
    out = os.environ.get("OUT")
    if out:
        Path(out, "serve_gpu_load.json").write_text(json.dumps(report, indent=2))

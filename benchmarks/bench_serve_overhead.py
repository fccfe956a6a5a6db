"""What the HTTP and gRPC endpoints add per request over in-process ``Server.submit``.

One tiny model (y = 2x on a [1, 16] FP32 tensor, ONNX Runtime), one server, three paths timed
in the same run, each with N sequential requests (one in flight at a time, so the batcher never
waits to fill a batch: mode ``latency``):

* ``in_process``: ``server.submit(x).result()``;
* ``http``: ``tritonclient.http`` infer with binary tensors, over 127.0.0.1;
* ``grpc``: ``tritonclient.grpc`` infer (raw tensor contents), over 127.0.0.1.

Reports p50/p90/p99 per path and the p50 overhead of each endpoint over in process. The paths
take turns in blocks, so a change in machine load falls on all three alike. Writes JSON with
:func:`benchmarks._env.environment` / ``finish``.

    python benchmarks/bench_serve_overhead.py -n 2000 --json docs/results/serve_overhead.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import regiontrt as rt
from benchmarks._env import environment, finish

BLOCK = 50


def tiny_engine() -> rt.Engine:
    """y = 2x on x [N, 16] (FP32, CERTIFIED: no SLA), batch 1..8."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    profile = rt.ShapeProfile({"x": [(1, 16), (1, 16), (8, 16)]})
    return (rt.RegionalEngineBuilder.from_onnx(model).for_region("CERTIFIED")
            .with_shape_profile(profile).build())


def _paths(server: Any, http_url: str, grpc_url: str,
           x: np.ndarray) -> tuple[dict[str, Callable[[], np.ndarray]], list[Any]]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    name = next(iter(server.models))
    hc = httpclient.InferenceServerClient(http_url)
    gc = grpcclient.InferenceServerClient(grpc_url)
    hin = httpclient.InferInput("x", list(x.shape), "FP32")
    hin.set_data_from_numpy(x, binary_data=True)
    hout = httpclient.InferRequestedOutput("y", binary_data=True)
    gin = grpcclient.InferInput("x", list(x.shape), "FP32")
    gin.set_data_from_numpy(x)
    paths = {
        "in_process": lambda: server.submit({"x": x}).result()["y"],
        "http": lambda: hc.infer(name, [hin], outputs=[hout]).as_numpy("y"),
        "grpc": lambda: gc.infer(name, [gin]).as_numpy("y"),
    }
    return paths, [hc, gc]


def _stats(us: list[float]) -> dict[str, float]:
    arr = np.asarray(us)
    return {"p50_us": float(np.percentile(arr, 50)), "p90_us": float(np.percentile(arr, 90)),
            "p99_us": float(np.percentile(arr, 99)), "mean_us": float(arr.mean()),
            "n": int(arr.size)}


def measure(n: int, warmup: int = 50) -> dict[str, Any]:
    """Times of ``n`` sequential requests per path, taking turns in blocks of :data:`BLOCK`."""
    from regiontrt.serve.grpc_server import BackgroundGRPC
    from regiontrt.serve.runner import BackgroundHTTP

    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    server = rt.serve(tiny_engine(), name="tiny", mode="latency")
    times: dict[str, list[float]] = {}
    with BackgroundGRPC(server, close_server=False) as g, BackgroundHTTP(server) as h:
        paths, clients = _paths(server, h.url, g.url, x)
        try:
            for name, fn in paths.items():  # warm-up, and every path answers right
                for _ in range(warmup):
                    assert np.array_equal(fn(), 2 * x), name
                times[name] = []
            done = 0
            while done < n:
                block = min(BLOCK, n - done)
                for name, fn in paths.items():
                    for _ in range(block):
                        t0 = time.perf_counter_ns()
                        fn()
                        times[name].append((time.perf_counter_ns() - t0) / 1e3)
                done += block
        finally:
            for c in clients:
                c.close()
    result: dict[str, Any] = {name: _stats(us) for name, us in times.items()}
    base = result["in_process"]["p50_us"]
    result["p50_overhead_us"] = {k: result[k]["p50_us"] - base for k in ("http", "grpc")}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--requests", type=int, default=2000,
                        help="sequential requests per path (default: 2000)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    env = environment(argv)
    result = measure(args.requests)
    for name in ("in_process", "http", "grpc"):
        s = result[name]
        print(f"{name:>11}: p50 {s['p50_us']:8.1f} us  p90 {s['p90_us']:8.1f}  "
              f"p99 {s['p99_us']:8.1f}", flush=True)
    print("p50 overhead over in process (us):",
          {k: round(v, 1) for k, v in result["p50_overhead_us"].items()})
    out = {"benchmark": "serve_overhead", "model": "y = 2x, [1, 16] fp32, onnxruntime",
           "result": result, "env": finish(env)}
    print(json.dumps({"benchmark": "serve_overhead", "p50_overhead_us":
                      result["p50_overhead_us"]}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

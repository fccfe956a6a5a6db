"""Host overhead of one ``TensorRTRunner.run`` against the bare cuda-python sequence it wraps.

Both drive the same execution context of the test double :class:`FakeCudaEngine` (a real NVRTC
kernel) on tiny tensors, so the GPU work is a few microseconds and the time per call is almost
all host work. The bare sequence is hand-written with the minimum a correct program needs: set
up once (profile, shapes, addresses, pinned and device buffers), then per call copy the inputs
into pinned memory, two ``cudaMemcpyAsync`` in, ``execute_async_v3``, two out, synchronize, copy
the outputs out of pinned memory. The runner adds name, dtype and profile checks, the slot lock,
change detection and stats. Also timed: the runner with a CUDA graph.

In the same run, on the CPU: ``Engine.infer`` on ONNX Runtime against a raw
``InferenceSession.run`` (:mod:`benchmarks._ort_overhead`), so one run gives both figures of
issue 23. Prints the tables and one JSON line; ``--json PATH`` also writes it. Without an NVIDIA
GPU only the ONNX Runtime half runs (``"tensorrt"`` then says why it did not).
"""

from __future__ import annotations

import ctypes
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._env import environment, finish
from benchmarks._gpu_common import Results, make_parser
from benchmarks._ort_overhead import measure_onnxruntime, report_onnxruntime
from regiontrt._fs import atomic_write_text
from regiontrt.backends import cuda
from regiontrt.backends.trt_runner import TensorRTRunner
from regiontrt.testing import FakeCudaEngine


def _per_call_us(fn, calls: int, blocks: int) -> dict[str, float]:
    for _ in range(calls):  # warm-up
        fn()
    per = []
    for _ in range(blocks):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        per.append((time.perf_counter_ns() - t0) / calls / 1e3)
    return {"median_us": statistics.median(per), "min_us": min(per)}


class Bare:
    """The hand-written cuda-python sequence (raw ``cuda.bindings`` calls, minimal checks)."""

    def __init__(self, engine: FakeCudaEngine, feed: dict[str, np.ndarray]) -> None:
        from cuda.bindings import runtime as rt

        self.rt = rt
        self.ctx: Any = engine.create_execution_context()  # None once closed
        err, self.stream = rt.cudaStreamCreate()
        assert not err
        self.stream_int = int(self.stream)
        rows, cols = feed["x"].shape
        specs = {"x": ((rows, cols), np.float32), "k": ((rows,), np.int32),
                 "y": ((rows, cols), np.float32), "s": ((rows,), np.float32)}
        self.dev, self.host, self.views = {}, {}, {}
        for name, (shape, dtype) in specs.items():
            n = int(np.prod(shape)) * np.dtype(dtype).itemsize
            err, self.dev[name] = rt.cudaMalloc(n)
            assert not err
            err, self.host[name] = rt.cudaMallocHost(n)
            assert not err
            raw = memoryview((ctypes.c_char * n).from_address(self.host[name])).cast("B")
            self.views[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
        assert self.ctx.set_optimization_profile_async(0, self.stream_int)
        for name in ("x", "k"):
            assert self.ctx.set_input_shape(name, specs[name][0])
        for name in specs:
            assert self.ctx.set_tensor_address(name, self.dev[name])
        self.nbytes = {name: v.nbytes for name, v in self.views.items()}

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt, s, v, d, h, nb = self.rt, self.stream, self.views, self.dev, self.host, self.nbytes
        np.copyto(v["x"], feed["x"])
        np.copyto(v["k"], feed["k"])
        if rt.cudaMemcpyAsync(d["x"], h["x"], nb["x"], 1, s)[0] or \
                rt.cudaMemcpyAsync(d["k"], h["k"], nb["k"], 1, s)[0]:
            raise RuntimeError("H2D failed")
        if not self.ctx.execute_async_v3(self.stream_int):
            raise RuntimeError("execute failed")
        if rt.cudaMemcpyAsync(h["y"], d["y"], nb["y"], 2, s)[0] or \
                rt.cudaMemcpyAsync(h["s"], d["s"], nb["s"], 2, s)[0]:
            raise RuntimeError("D2H failed")
        if rt.cudaStreamSynchronize(s)[0]:
            raise RuntimeError("sync failed")
        return {"y": v["y"].copy(), "s": v["s"].copy()}

    def close(self) -> None:
        rt = self.rt
        rt.cudaStreamSynchronize(self.stream)
        self.ctx = None
        for ptr in self.dev.values():
            rt.cudaFree(ptr)
        for ptr in self.host.values():
            rt.cudaFreeHost(ptr)
        rt.cudaStreamDestroy(self.stream)


def measure(rows: int, cols: int, calls: int, blocks: int) -> Results:
    cuda.set_device(0)
    engine = FakeCudaEngine(max(rows, 8), max(cols, 16))
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((rows, cols)).astype(np.float32),
            "k": rng.integers(-3, 3, rows).astype(np.int32)}
    ref = engine.reference(feed["x"], feed["k"])
    # one engine each: TensorRT refuses two live contexts on one profile of a dynamic engine
    bare = Bare(FakeCudaEngine(max(rows, 8), max(cols, 16)), feed)
    runner = TensorRTRunner(engine, [])
    graph = TensorRTRunner(FakeCudaEngine(max(rows, 8), max(cols, 16)), [], use_cuda_graph=True)
    try:
        for fn in (bare, runner.run, graph.run):  # same answer from all three
            out = fn(feed)
            np.testing.assert_array_equal(out["y"], ref["y"])
            np.testing.assert_allclose(out["s"], ref["s"], rtol=1e-5, atol=1e-4)
        res = {
            "bare": _per_call_us(lambda: bare(feed), calls, blocks),
            "runner": _per_call_us(lambda: runner.run(feed), calls, blocks),
            "runner_graph": _per_call_us(lambda: graph.run(feed), calls, blocks),
        }
        gpu = runner.time_once(feed)
    finally:
        runner.close()
        graph.close()
        bare.close()
    base = res["bare"]["median_us"]
    return {"benchmark": "infer_overhead", "shape": [rows, cols], "calls_per_block": calls,
            "blocks": blocks, "results": res,
            "runner_over_bare": res["runner"]["median_us"] / base,
            "runner_minus_bare_us": res["runner"]["median_us"] - base,
            "graph_over_bare": res["runner_graph"]["median_us"] / base,
            "device_timeline_ms": {"h2d": gpu.h2d_ms, "compute": gpu.compute_ms,
                                   "d2h": gpu.d2h_ms, "total": gpu.total_ms}}


def report(res: Results) -> None:
    report_onnxruntime(res["onnxruntime"])
    if res.get("tensorrt"):
        print(f"TensorRT runner: {res['tensorrt']}")
        return
    (rows, cols), blocks, calls = res["shape"], res["blocks"], res["calls_per_block"]
    print(f"per call, x {rows}x{cols} float32 ({blocks} blocks of {calls}):")
    for name, r in res["results"].items():
        print(f"  {name:<13} median {r['median_us']:8.1f} us   min {r['min_us']:8.1f} us")
    print(f"  runner / bare = {res['runner_over_bare']:.2f} "
          f"(+{res['runner_minus_bare_us']:.1f} us per call); "
          f"graph runner / bare = {res['graph_over_bare']:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = make_parser(__doc__)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--cols", type=int, default=16)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--blocks", type=int, default=9)
    ap.add_argument("--ort-calls", type=int, default=1000)
    args = ap.parse_args(argv)
    env = environment(argv)
    res: Results = {"benchmark": "infer_overhead",
                    "onnxruntime": measure_onnxruntime(args.ort_calls, args.blocks)}
    if cuda.cuda_available():
        res.update(measure(args.rows, args.cols, args.calls, args.blocks))
    else:
        res["tensorrt"] = "not measured: no usable CUDA GPU here"
    res["environment"] = finish(env)
    report(res)
    text = json.dumps(res)
    print(text)
    if args.json:
        atomic_write_text(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

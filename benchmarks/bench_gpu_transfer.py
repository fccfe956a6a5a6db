"""Host-to-device and device-to-host bandwidth: our pinned buffers vs pageable memory vs the link.

Three ways to move ``n`` bytes each way, timed the same way (host clock around issue and
synchronize, median of repeats, so the wrappers' Python cost is included):

* ``pinned (ours)``: :class:`PinnedBuffer` and :class:`DeviceBuffer` through
  ``copy_from_host_async``/``copy_to_host_async`` on a :class:`Stream`, as the runner does;
* ``pageable``: ``cudaMemcpy`` from or to an ordinary numpy array (the driver stages it);
* ``peak``: the link's measured peak, the best of many raw ``cudaMemcpyAsync`` calls on the largest
  pinned size, timed with CUDA events (no wrapper, no host clock).

Prints a table with the ratios, then one JSON line; ``--json PATH`` also writes the JSON.
Needs an NVIDIA GPU and cuda-python.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._env import environment, finish
from benchmarks._gpu_common import Results, make_parser, run_gpu_benchmark
from regiontrt.backends import cuda

MIB = 1 << 20


def _median_gbps(nbytes: int, reps: int, fn) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return nbytes / statistics.median(times)  # bytes per ns == GB/s


def _peak_gbps(nbytes: int, reps: int) -> dict[str, float]:
    """Best-of-``reps`` raw cudaMemcpyAsync between pinned and device memory, event-timed."""
    from cuda.bindings import runtime as rt

    call = cuda.cuda_call
    host = call(rt.cudaMallocHost(nbytes))
    dev = call(rt.cudaMalloc(nbytes))
    stream = call(rt.cudaStreamCreate())
    start, end = call(rt.cudaEventCreate()), call(rt.cudaEventCreate())
    out = {}
    try:
        for label, (dst, src, kind) in {"h2d": (dev, host, 1), "d2h": (host, dev, 2)}.items():
            best = float("inf")
            for _ in range(reps + 1):
                call(rt.cudaEventRecord(start, stream))
                call(rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream))
                call(rt.cudaEventRecord(end, stream))
                call(rt.cudaEventSynchronize(end))
                best = min(best, call(rt.cudaEventElapsedTime(start, end)))
            out[label] = nbytes / (best * 1e6)
    finally:
        for fn, arg in ((rt.cudaEventDestroy, start), (rt.cudaEventDestroy, end),
                        (rt.cudaStreamDestroy, stream), (rt.cudaFree, dev),
                        (rt.cudaFreeHost, host)):
            call(fn(arg))
    return out


def measure(sizes_mib: list[int], reps: int) -> Results:
    from cuda.bindings import runtime as rt

    cuda.set_device(0)
    peak = _peak_gbps(max(sizes_mib) * MIB, reps * 2)
    rows = []
    for mib in sizes_mib:
        n = mib * MIB
        pageable = np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8)
        with cuda.Stream() as stream, cuda.PinnedBuffer(n) as pinned, cuda.DeviceBuffer(n) as dev:
            pinned.array(np.uint8, (n,))[:] = pageable

            def ours_h2d(dev=dev, pinned=pinned, stream=stream):
                dev.copy_from_host_async(pinned, stream)
                stream.synchronize()

            def ours_d2h(dev=dev, pinned=pinned, stream=stream):
                dev.copy_to_host_async(pinned, stream)
                stream.synchronize()

            def page_h2d(dev=dev, n=n, pageable=pageable):
                cuda.cuda_call(rt.cudaMemcpy(dev.ptr, pageable.ctypes.data, n, 1))

            def page_d2h(dev=dev, n=n, pageable=pageable):
                cuda.cuda_call(rt.cudaMemcpy(pageable.ctypes.data, dev.ptr, n, 2))

            for direction, ours, page in (("h2d", ours_h2d, page_h2d), ("d2h", ours_d2h, page_d2h)):
                o, p = _median_gbps(n, reps, ours), _median_gbps(n, reps, page)
                rows.append({"size_mib": mib, "direction": direction, "pinned_gbps": o,
                             "pageable_gbps": p, "peak_gbps": peak[direction],
                             "pinned_vs_peak": o / peak[direction],
                             "pageable_vs_peak": p / peak[direction], "pinned_vs_pageable": o / p})
    return {"benchmark": "gpu_transfer", "reps": reps, "peak_gbps": peak, "rows": rows}


def report(res: Results) -> None:
    sizes = sorted({r["size_mib"] for r in res["rows"]})
    print(f"link peak (best of {2 * res['reps']}, {max(sizes)} MiB, events): "
          f"H2D {res['peak_gbps']['h2d']:.1f} GB/s, D2H {res['peak_gbps']['d2h']:.1f} GB/s")
    print(f"{'size':>8} {'dir':>4} {'pinned GB/s':>12} {'pageable':>9} {'pin/peak':>9} "
          f"{'page/peak':>10} {'pin/page':>9}")
    for r in res["rows"]:
        print(f"{r['size_mib']:>5}MiB {r['direction']:>4} {r['pinned_gbps']:>12.2f} "
              f"{r['pageable_gbps']:>9.2f} {r['pinned_vs_peak']:>9.2f} "
              f"{r['pageable_vs_peak']:>10.2f} {r['pinned_vs_pageable']:>9.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = make_parser(__doc__)
    ap.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    env = environment(argv)
    return run_gpu_benchmark("bench_gpu_transfer", args.json,
                             lambda: {**measure(args.sizes_mib, args.reps),
                                      "environment": finish(env)}, report)


if __name__ == "__main__":
    sys.exit(main())

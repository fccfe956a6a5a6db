"""Distributed calibration: per-worker peak memory as the calibration set grows (issue 24).

For each sample count, a fresh two-process ``dask.distributed.LocalCluster`` calibrates a small
CNN (built with onnx.helper) over synthetic ``.npz`` shards on disk (``--per-file`` samples per
file, each file one batch); each worker's peak resident memory over the run (``VmHWM``, reset
when the run starts) is read with ``client.run``, and the driver's too. The statistics are
checked against a single-process pass over the same shards (bit for bit). Flat memory: the
peak must not grow with the number of samples, since a worker holds one batch at a time::

    python benchmarks/bench_dist_calibration.py [--samples 1000,10000] [--per-file 100]
        [--json docs/results/bench_dist_calibration.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: this checkout's regiontrt
    sys.path.insert(0, str(ROOT))

from benchmarks._env import environment, finish  # noqa: E402
from regiontrt.calibration import EntropyCalibrator, collect_statistics  # noqa: E402

SIDE = 32


def model(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->16) -> Relu -> Conv(16->16) -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        values = (rng.standard_normal(shape) * 0.2).astype(np.float32).ravel()
        return helper.make_tensor(name, TensorProto.FLOAT, shape, values)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "bench_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [init("w1", 16, 3, 3, 3), init("b1", 16), init("w2", 16, 16, 3, 3), init("b2", 16),
         init("w3", 10, 16), init("b3", 10)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def write_shards(folder: Path, samples: int, per_file: int, seed: int = 1) -> list[str]:
    """``samples`` synthetic images in files of ``per_file`` (one batch each)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, start in enumerate(range(0, samples, per_file)):
        n = min(per_file, samples - start)
        scale = float(rng.uniform(0.5, 3.0))
        x = (rng.standard_normal((n, 3, SIDE, SIDE)) * scale).astype(np.float32)
        path = folder / f"part-{i:05d}.npz"
        np.savez(path, x=x)
        paths.append(str(path))
    return paths


def _peak_kib(reset: bool = False) -> int:
    """This process's peak resident memory (``VmHWM``), in KiB; ``reset`` starts it afresh.

    Not ``ru_maxrss``: Linux keeps that across fork and exec, so a worker started after the
    driver grew would report the driver's peak. Writing 5 to ``clear_refs`` resets ``VmHWM`` to
    the current resident size (Linux 4.0+).
    """
    if reset:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def measure(samples: int, per_file: int, workdir: Path, check: bool = True) -> dict[str, Any]:
    """One fresh two-worker LocalCluster calibrating ``samples`` samples; memory and time."""
    from distributed import Client, LocalCluster

    proto = model()
    paths = write_shards(workdir / f"s{samples}", samples, per_file)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, worker_dashboard_address=None) as cluster, \
            Client(cluster) as client:
        started = client.run(_peak_kib, True)  # after start-up, reset for the run
        driver_start = _peak_kib(reset=True)
        start = time.perf_counter()
        result = EntropyCalibrator().distributed(client).calibrate(proto, paths)
        seconds = time.perf_counter() - start
        after = client.run(_peak_kib)
        driver = _peak_kib()
    out: dict[str, Any] = {
        "samples": samples, "files": len(paths), "per_file": per_file,
        "num_samples_read": result.num_samples, "seconds": round(seconds, 2),
        "worker_peak_mib": sorted(round(v / 1024, 1) for v in after.values()),
        "worker_resident_at_start_mib": sorted(round(v / 1024, 1) for v in started.values()),
        "driver_peak_mib": round(driver / 1024, 1),
        "driver_resident_at_start_mib": round(driver_start / 1024, 1),
    }
    if check:  # the merged statistics against one pass in this process
        want = collect_statistics(proto, paths)
        out["equal_to_single_process"] = all(
            np.array_equal(result.stats[t].hist, want[t].hist)
            and (result.stats[t].min, result.stats[t].max, result.stats[t].hist_max)
            == (want[t].min, want[t].max, want[t].hist_max) for t in want)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", default="1000,10000")
    p.add_argument("--per-file", type=int, default=100)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    results: dict[str, Any] = {"environment": environment(argv), "model": "bench_cnn",
                               "input": [3, SIDE, SIDE], "workers": 2, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-dist-calib-") as tmp:
        for n in (int(s) for s in args.samples.split(",")):
            run = measure(n, args.per_file, Path(tmp))
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
    peaks = [max(r["worker_peak_mib"]) for r in results["runs"]]
    results["worker_peak_growth_mib"] = round(peaks[-1] - peaks[0], 1)
    results["environment"] = finish(results["environment"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()

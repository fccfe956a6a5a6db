"""Batch invariance through the batcher: the same requests run alone vs inside batches of 2..32.

For each model, N one-row requests run through ``rt.serve`` twice per batch size: alone (mode
``latency``: one request per run) and queued at once under mode ``throughput`` with
``max_batch=b`` and a long fill wait, so they run in batches of ``b``. Per output: the largest
absolute difference, the largest relative difference (to the largest magnitude of the output
alone) and the share of values that differ at all. The same is done with
``batch_invariance="exact"`` (every run padded to ``b`` rows), whose differences must be zero.

Models: the demo NA engine (int8 QDQ, ONNX Runtime) and, with the rapidocr wheel, PP-OCRv4 rec
(fp32, ONNX Runtime). Writes JSON with :func:`benchmarks._env.environment` / ``finish``.

    python benchmarks/bench_batch_invariance.py --json docs/results/batch_invariance.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import regiontrt as rt
from benchmarks._env import environment, finish
from benchmarks.bench_serving import Setup, demo_setup, rec_setup

SIZES = (2, 4, 8, 16, 32)


def _requests(setup: Setup, n: int) -> list[dict[str, np.ndarray]]:
    """``n`` distinct one-row requests shaped like the setup's request."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        out.append({k: (v + rng.normal(0, 0.05, v.shape)).astype(v.dtype)
                    for k, v in setup.request.items()})
    return out


def _run(setup: Setup, requests: list[dict[str, np.ndarray]], **serve: Any) -> tuple[
        list[dict[str, np.ndarray]], dict[int, int]]:
    with rt.serve(setup.engine, **serve) as server:
        futures = [server.submit(r) for r in requests]
        results = [f.result(600) for f in futures]
        sizes = next(iter(server.stats().values()))["batch_sizes"]
    return results, sizes


def _diff(alone: list[dict[str, np.ndarray]],
          batched: list[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    out = {}
    for name in alone[0]:
        a = np.concatenate([r[name] for r in alone]).astype(np.float64)
        b = np.concatenate([r[name] for r in batched]).astype(np.float64)
        scale = float(np.abs(a).max()) or 1.0
        out[name] = {"max_abs": float(np.abs(a - b).max()),
                     "max_rel": float(np.abs(a - b).max() / scale),
                     "differing_share": float(np.mean(a != b))}
    return out


def measure(setup: Setup, n: int, sizes: tuple[int, ...]) -> dict[str, Any]:
    """Differences of ``fast`` and ``exact`` serving, per batch size, for one model."""
    requests = _requests(setup, n)
    result: dict[str, Any] = {"requests": n, "fast": {}, "exact": {}}
    alone, _ = _run(setup, requests, mode="latency")
    for b in sizes:
        batched, ran = _run(setup, requests, mode="throughput", max_batch=b, max_delay_ms=2000)
        result["fast"][str(b)] = {"batch_sizes_run": ran, "outputs": _diff(alone, batched)}
        exact_alone, _ = _run(setup, requests, mode="latency", max_batch=b,
                              batch_invariance="exact")
        exact, ran = _run(setup, requests, mode="throughput", max_batch=b, max_delay_ms=2000,
                          batch_invariance="exact")
        result["exact"][str(b)] = {"batch_sizes_run": ran,
                                   "outputs": _diff(exact_alone, exact),
                                   "vs_fast_alone": _diff(alone, exact)}
        worst = max(o["max_abs"] for o in result["fast"][str(b)]["outputs"].values())
        exact_worst = max(o["max_abs"] for o in result["exact"][str(b)]["outputs"].values())
        print(f"{setup.name:>14}  batch {b:>2}: fast max |diff| {worst:.3g}, "
              f"exact {exact_worst:.3g}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--models", default="demo,rec", help="comma-separated: demo, rec")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    env = environment(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    models: dict[str, Any] = {}
    for name in args.models.split(","):
        if name == "demo":
            setup = demo_setup()
        elif name == "rec":
            try:
                setup = rec_setup()
            except Exception as exc:  # no rapidocr wheel: say so in the result
                models["pp-ocrv4-rec"] = {"skipped": f"{type(exc).__name__}: {exc}"}
                continue
        else:
            parser.error(f"unknown model {name!r}")
        models[setup.name] = {"backend": setup.engine.backend_name,
                              "precision": setup.engine.precision,
                              **measure(setup, args.requests, sizes)}
    out = {"benchmark": "batch_invariance", "models": models, "env": finish(env)}
    text = json.dumps(out, indent=2)
    print(json.dumps({"benchmark": "batch_invariance", "models": list(models)}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

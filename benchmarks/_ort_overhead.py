"""ONNX Runtime half of ``bench_infer_overhead``: ``Engine.infer`` against a raw session run.

The model is the demo CNN (``regiontrt/demo/digits_cnn.onnx``, input ``[N, 1, 8, 8]``), built
for the CERTIFIED region (FP32, the ONNX Runtime backend) and fed one sample (batch 1). The bare
path is ``InferenceSession.run`` with the output names resolved once, the documented way to call
it, on the very session the engine runs: so the difference is exactly what ``Engine.infer`` adds
(guard, name and dtype checks, result dict). A third path, ``fresh_session``, is a session made
separately from the engine's payload with ONNX Runtime's defaults (the engine's session uses them
too: default against default); two sessions' thread pools then share the cores, so its figure
moves more from run to run. The paths take turns in blocks, so a change in machine load falls on
all alike. Needs no GPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DEMO_MODEL = Path(__file__).resolve().parents[1] / "regiontrt" / "demo" / "digits_cnn.onnx"


def _blocks(paths: dict[str, Callable[[], Any]], calls: int, blocks: int) -> dict[str, Any]:
    """Median and minimum µs per call of each path, the paths taking turns block by block."""
    for fn in paths.values():  # warm-up: first-call allocations and lazy initialisation
        for _ in range(calls):
            fn()
    per: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(blocks):
        for name, fn in paths.items():
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                fn()
            per[name].append((time.perf_counter_ns() - t0) / calls / 1e3)
    return {name: {"median_us": statistics.median(v), "min_us": min(v)} for name, v in per.items()}


def measure_onnxruntime(calls: int, blocks: int) -> dict[str, Any]:
    """Time ``Engine.infer`` and the raw session on the same model and input (imports excluded).

    Returns:
        ``{"model", "batch", "calls_per_block", "blocks", "results", "engine_over_bare",
        "engine_minus_bare_us", "threads"}``; results are keyed ``bare`` and ``engine``.
    """
    import onnxruntime as ort

    import regiontrt as rt

    engine = rt.RegionalEngineBuilder.from_onnx(DEMO_MODEL).for_region("CERTIFIED").build()
    feed = engine.sample_inputs(batch=1)
    ours = engine.infer(feed)
    session = engine._runner._session  # the engine's own ONNX Runtime session
    fresh = ort.InferenceSession(engine.payload, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for sess in (session, fresh):  # the same work: the same answer
        theirs = dict(zip(names, sess.run(names, feed), strict=True))
        for name, value in ours.items():
            np.testing.assert_allclose(value, theirs[name], rtol=1e-6, atol=1e-6)
    res = _blocks({"bare": lambda: session.run(names, feed), "engine": lambda: engine.infer(feed),
                   "fresh_session": lambda: fresh.run(names, feed)}, calls, blocks)
    base = res["bare"]["median_us"]
    return {"model": DEMO_MODEL.name, "batch": 1, "calls_per_block": calls, "blocks": blocks,
            "results": res, "engine_over_bare": res["engine"]["median_us"] / base,
            "engine_minus_bare_us": res["engine"]["median_us"] - base,
            "threads": session.get_session_options().intra_op_num_threads,
            "onnxruntime": ort.__version__}


def report_onnxruntime(res: dict[str, Any]) -> None:
    """Print the ONNX Runtime comparison."""
    print(f"ONNX Runtime, {res['model']} batch {res['batch']} ({res['blocks']} blocks of "
          f"{res['calls_per_block']}):")
    for name, r in res["results"].items():
        print(f"  {name:<13} median {r['median_us']:8.1f} us   min {r['min_us']:8.1f} us")
    print(f"  Engine.infer / raw session = {res['engine_over_bare']:.2f} "
          f"(+{res['engine_minus_bare_us']:.1f} us per call)")

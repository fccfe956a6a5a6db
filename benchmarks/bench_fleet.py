"""Fleet build wall time: PP-OCRv4 rec (dynamic width), 3 regions x 2 targets, on the CPU.

* ``fleet, N workers (ours)``: :func:`regiontrt.deploy.build_fleet` on a local process pool of
  N workers: one precision decision per region, then one task per (region, target) cell building
  that target from the region's precision-compiled ONNX, bundles written at the end.
* ``by hand (peer)``: what a user does without the fleet layer: one
  ``RegionalEngineBuilder.build()`` per (region, backend), one after the other in one process;
  each target decides the region's precision again.

Regions: NA (int8 tried first; ``search_mixed = false`` keeps the run short, so an int8 over
budget falls back to fp16), EU (fp16, int8 forbidden), CERTIFIED (fp32). Targets: ``onnxruntime``
and ``tensorrt-rtx`` (sm89+sm120, optimization level 0; its builder runs on the CPU).
The recogniser comes from the ``rapidocr-onnxruntime`` wheel; lines are rendered with PIL.

    python benchmarks/bench_fleet.py [--workers 1,2] [--lines 16] [--json PATH] [--no-peer]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import ocr
from benchmarks._env import environment, finish

REGIONS = ("NA", "EU", "CERTIFIED")
PROFILE = {"x": [[1, 3, 48, 80], [8, 3, 48, 320], [16, 3, 48, 960]]}
RTX = {"compute_capabilities": ("sm89", "sm120"), "optimization_level": 0}


def write_inputs(root: Path, lines: int) -> Path:
    """Calibration and validation .npz folders, and the fleet file; returns the fleet path."""
    sets = ocr.make_ocr_sets(0, n_calibration=lines, n_held_out=lines, batch_size=8)
    for kind, batches in (("calib", sets.calibration),
                          ("val", [{"x": b.x} for b in sets.held_out])):
        folder = root / "data" / kind
        folder.mkdir(parents=True)
        for i, batch in enumerate(batches):
            np.savez(folder / f"{i:03d}.npz", **batch)
    text = [
        'name = "ppocr-rec"', 'version = "4.0.0"', f'model = "{ocr.rec_model_path()}"',
        "[shape_profile]", f"x = {json.dumps(PROFILE['x'])}",
        '[regions.NA]', 'calibration = "data/calib"', 'validation = "data/val"',
        "search_mixed = false",
        '[regions.EU]', 'validation = "data/val"',
        '[regions.CERTIFIED]', 'validation = "data/val"',
        '[[targets]]', 'name = "cpu"', 'backend = "onnxruntime"',
        '[[targets]]', 'name = "rtx"', 'backend = "tensorrt-rtx"',
        f'compute_capabilities = {json.dumps(list(RTX["compute_capabilities"]))}',
        f'optimization_level = {RTX["optimization_level"]}',
    ]
    fleet = root / "fleet.toml"
    fleet.write_text("\n".join(text) + "\n")
    return fleet


def ours(fleet: Path, out: Path, workers: int) -> dict[str, Any]:
    from regiontrt.deploy import build_fleet

    started = time.perf_counter()
    result = build_fleet(fleet, out, workers=workers)
    wall = time.perf_counter() - started
    print(result.table())
    return {"wall_s": wall, "ok": result.ok,
            "cells": {f"{c.region}/{c.target}": [c.status, c.precision, round(c.seconds, 2)]
                      for c in result.cells},
            "errors": {f"{c.region}/{c.target}": c.error for c in result.cells if c.error}}


def peer(root: Path) -> dict[str, Any]:
    """One builder.build() per (region, backend), sequentially, as without the fleet layer."""
    import regiontrt as rt
    from regiontrt.deploy.fleet import read_npz_batches

    calib = read_npz_batches(str(root / "data" / "calib"))
    val = read_npz_batches(str(root / "data" / "val"))
    base = rt.RegionalEngineBuilder.from_onnx(str(ocr.rec_model_path())).with_shape_profile(
        PROFILE)
    cells = {}
    started = time.perf_counter()
    for region in REGIONS:
        for backend in ("onnxruntime", "tensorrt-rtx"):
            b = base.for_region(region).with_validation(val).with_backend(backend)
            if region == "NA":
                b = b.with_calibrator(data=calib).with_precision(
                    rt.PrecisionPolicy(search_mixed=False))
            if backend == "tensorrt-rtx":
                b = b.with_tactics(rt.TacticSelector(**RTX))  # type: ignore[arg-type]
            cells[f"{region}/{backend}"] = b.build().precision
    return {"wall_s": time.perf_counter() - started, "cells": cells}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,2", help="comma-separated pool sizes")
    p.add_argument("--lines", type=int, default=16, help="calibration and validation lines")
    p.add_argument("--json", type=Path)
    p.add_argument("--no-peer", action="store_true")
    args = p.parse_args(argv)
    results: dict[str, Any] = {"environment": environment(argv), "lines": args.lines,
                               "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        root = Path(tmp)
        fleet = write_inputs(root, args.lines)
        for w in (int(x) for x in args.workers.split(",")):
            results["runs"][f"fleet, {w} worker{'s' if w > 1 else ''} (ours)"] = ours(
                fleet, root / f"dist-{w}", w)
        failed = [n for n, r in results["runs"].items() if not r["ok"]]
        if not failed and not args.no_peer:
            results["runs"]["by hand, 1 process (peer)"] = peer(root)
    results["failed"] = failed
    results["environment"] = finish(results["environment"])
    if args.json:  # written on failure too: a failed run is a result, with each cell's error
        args.json.write_text(json.dumps(results, indent=2))
    if failed:  # the table above shows each failed cell's error
        print(f"bench_fleet: failed cells in {failed}; no figures", file=sys.stderr)
        return 1
    peer_s = results["runs"].get("by hand, 1 process (peer)", {}).get("wall_s")
    print(f"\n{'configuration':<32} {'wall s':>8} {'vs peer':>8}")
    for name, run in results["runs"].items():
        ratio = f"{peer_s / run['wall_s']:.2f}x" if peer_s else "-"
        print(f"{name:<32} {run['wall_s']:>8.1f} {ratio:>8}")
    print(json.dumps(results))
    return 0

if __name__ == "__main__":
    sys.exit(main())

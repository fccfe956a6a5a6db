"""Fleet build wall time and its scaling with workers: PP-OCRv4 rec (dynamic width) on the CPU.

* ``fleet, N workers (ours)``: :func:`regiontrt.deploy.build_fleet` on a local process pool of
  N workers, each task's ONNX Runtime sessions on ``cores // N`` threads: one precision decision
  per region, then one task per (region, target) cell building that target from the region's
  precision-compiled ONNX, bundles written at the end.
* ``by hand (peer)``: what a user does without the fleet layer: one
  ``RegionalEngineBuilder.build()`` per (region, backend), one after the other in one process;
  each target decides the region's precision again.

Regions (``--regions N``): NA, EU, CERTIFIED, SEA, APAC, then copies of their policies
(``NA-2``, ``EU-2``...). A region that allows int8 is calibrated and tries int8 first
(``search_mixed = false`` keeps the run short, so an int8 over budget falls back to fp16).
Targets (``--targets``): ``all``: ``onnxruntime`` and ``tensorrt-rtx`` (sm89+sm120, optimization
level 0; its builder runs on the CPU); ``onnxruntime``: two ONNX Runtime variants (``latency``
and ``throughput`` roles), for hosts without tensorrt-rtx. The recogniser comes from the
``rapidocr-onnxruntime`` wheel; lines are rendered with PIL. ``--prepare`` writes the model and
the rendered data to ``--inputs DIR`` and stops, so a host without those (the lent GPU host's
CPUs, ``scripts/fleet_scaling.sh``) can run from the folder.

Each run records its load before and after, the threads of each worker, every task's seconds,
the work in all tasks and the longest chain (a region's decision, then its longest cell):
no schedule on N workers beats ``max(work / N, chain)`` (``bound_s``); ``bundles_s`` is the time
after the last cell (writing the bundles, in the calling process).

    python benchmarks/bench_fleet.py [--workers 1,2,4] [--regions 3] [--targets all]
        [--lines 16] [--inputs DIR [--prepare]] [--json PATH] [--no-peer]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import ocr
from benchmarks._env import environment, finish

PRESETS = ("NA", "EU", "CERTIFIED", "SEA", "APAC")
PROFILE = {"x": [[1, 3, 48, 80], [8, 3, 48, 320], [16, 3, 48, 960]]}
RTX = {"compute_capabilities": ("sm89", "sm120"), "optimization_level": 0}
TARGETS = {
    "all": ['name = "cpu"\nbackend = "onnxruntime"',
            f'name = "rtx"\nbackend = "tensorrt-rtx"\ncompute_capabilities = '
            f'{json.dumps(list(RTX["compute_capabilities"]))}\n'
            f'optimization_level = {RTX["optimization_level"]}'],
    "onnxruntime": ['name = "cpu"\nbackend = "onnxruntime"\nrole = "latency"',
                    'name = "cpu-batch"\nbackend = "onnxruntime"\nrole = "throughput"'],
}


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def worker_counts(text: str | None, cpus: int) -> list[int]:
    """``--workers``: the list given, else 1, 2 and 4 capped at ``cpus``."""
    if text:
        counts = [int(x) for x in text.split(",")]
        if any(w < 1 for w in counts):
            raise SystemExit("--workers: every count must be >= 1")
        return counts
    return [w for w in (1, 2, 4) if w <= max(1, cpus)]


def prepare(inputs: Path, lines: int) -> Path:
    """The model and the rendered calibration and validation ``.npz`` folders in ``inputs``.

    Kept when already there (a folder made by ``--prepare``); returns the model's path.
    """
    model = inputs / "model.onnx"
    if not model.exists():
        inputs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ocr.rec_model_path(), model)
    if not (inputs / "data").is_dir():
        sets = ocr.make_ocr_sets(0, n_calibration=lines, n_held_out=lines, batch_size=8)
        for kind, batches in (("calib", sets.calibration),
                              ("val", [{"x": b.x} for b in sets.held_out])):
            folder = inputs / "data" / kind
            folder.mkdir(parents=True)
            for i, batch in enumerate(batches):
                np.savez(folder / f"{i:03d}.npz", **batch)
    return model


def region_names(n: int) -> list[str]:
    """``n`` region names: the presets, then numbered copies (``NA-2``...)."""
    return [PRESETS[i % len(PRESETS)] + (f"-{i // len(PRESETS) + 1}" if i >= len(PRESETS) else "")
            for i in range(n)]


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def write_fleet(root: Path, inputs: Path, regions: int, targets: str) -> Path:
    """The fleet file (and, past the presets, a regions file of copies); returns its path."""
    from regiontrt.precision.regions import get_region

    names = region_names(regions)
    copies = []
    text = ['name = "ppocr-rec"', 'version = "4.0.0"', f'model = "{inputs / "model.onnx"}"',
            "[shape_profile]", f"x = {json.dumps(PROFILE['x'])}"]
    for name in names:
        policy = get_region(name.split("-")[0]).to_dict()
        if name not in PRESETS:
            copies.append(f"[regions.{name}]")
            copies += [f"{k} = {_toml_value(v)}" for k, v in policy.items()
                       if k != "name" and v is not None]
        text += [f"[regions.{name}]", f'validation = "{inputs / "data" / "val"}"']
        if "int8" in policy["precisions"]:
            text += [f'calibration = "{inputs / "data" / "calib"}"', "search_mixed = false"]
    if copies:
        (root / "regions.toml").write_text("\n".join(copies) + "\n")
        text.insert(3, 'regions_file = "regions.toml"')
    text += [f"[[targets]]\n{t}" for t in TARGETS[targets]]
    fleet = root / "fleet.toml"
    fleet.write_text("\n".join(text) + "\n")
    return fleet


def ours(fleet: Path, out: Path, workers: int) -> dict[str, Any]:
    """One fleet build on ``workers`` processes, with its load, tasks and scheduling bound."""
    from regiontrt.deploy import build_fleet

    load_before = list(os.getloadavg())
    last_cell = [0.0]
    started = time.perf_counter()
    result = build_fleet(fleet, out, workers=workers,
                         on_cell=lambda _: last_cell.__setitem__(0, time.perf_counter()))
    wall = time.perf_counter() - started
    print(result.table(), flush=True)
    decisions = result.decisions
    work = sum(decisions.values()) + sum(c.seconds for c in result.cells)
    chain = max((decisions.get(r, 0.0) + max(c.seconds for c in result.cells if c.region == r))
                for r in decisions)
    return {"workers": workers, "threads_per_worker": result.threads, "wall_s": wall,
            "ok": result.ok, "load_before": load_before, "load_after": list(os.getloadavg()),
            "task_seconds": round(work, 2), "chain_s": round(chain, 2),
            "bound_s": round(max(work / workers, chain), 2),
            "bundles_s": round(started + wall - last_cell[0], 2),  # after the last cell
            "decisions": {r: round(s, 2) for r, s in decisions.items()},
            "cells": {f"{c.region}/{c.target}": [c.status, c.precision, round(c.seconds, 2)]
                      for c in result.cells},
            "errors": {f"{c.region}/{c.target}": c.error for c in result.cells if c.error}}


def peer(fleet: Path) -> dict[str, Any]:
    """One builder.build() per (region, backend), sequentially, as without the fleet layer."""
    import regiontrt as rt
    from regiontrt.deploy.fleet import FleetSpec, read_npz_batches

    spec = FleetSpec.load(fleet)
    base = rt.RegionalEngineBuilder.from_onnx(spec.model).with_shape_profile(PROFILE)
    cells = {}
    started = time.perf_counter()
    for region in spec.regions:
        for target in spec.targets:
            b = (base.for_region(rt.Region.from_dict(region.name, region.region))
                 .with_validation(read_npz_batches(str(region.validation)))
                 .with_backend(target.backend))
            if region.calibration:
                b = b.with_calibrator(data=read_npz_batches(region.calibration)).with_precision(
                    rt.PrecisionPolicy(search_mixed=False))
            if target.backend == "tensorrt-rtx":
                b = b.with_tactics(target.tactics())
            cells[f"{region.name}/{target.name}"] = b.build().precision
    return {"wall_s": time.perf_counter() - started, "cells": cells}


def _summary(results: dict[str, Any]) -> None:
    runs = results["runs"]
    peer_s = runs.get("by hand, 1 process (peer)", {}).get("wall_s")
    one = next((r["wall_s"] for r in runs.values() if r.get("workers") == 1), None)
    print(f"\n{'configuration':<32} {'threads':>7} {'wall s':>8} {'bound s':>8} "
          f"{'vs 1 worker':>11} {'vs peer':>8}")
    for name, run in runs.items():
        vs_one = f"{one / run['wall_s']:.2f}x" if one and "workers" in run else "-"
        ratio = f"{peer_s / run['wall_s']:.2f}x" if peer_s else "-"
        print(f"{name:<32} {run.get('threads_per_worker') or '-':>7} {run['wall_s']:>8.1f} "
              f"{run.get('bound_s', '-'):>8} {vs_one:>11} {ratio:>8}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", help="comma-separated pool sizes (default: 1,2,4 up to the "
                   "usable CPUs; a list given is run as given, e.g. 1,2,4,8,16)")
    p.add_argument("--regions", type=int, default=3, help="regions (cells: regions x targets)")
    p.add_argument("--targets", choices=sorted(TARGETS), default="all")
    p.add_argument("--lines", type=int, default=16, help="calibration and validation lines")
    p.add_argument("--inputs", type=Path, help="folder of the model and rendered data (made "
                   "when missing, reused when there)")
    p.add_argument("--prepare", action="store_true", help="only write --inputs, then stop")
    p.add_argument("--json", type=Path)
    p.add_argument("--no-peer", action="store_true")
    args = p.parse_args(argv)
    if args.prepare:
        if args.inputs is None:
            p.error("--prepare needs --inputs DIR")
        print(f"inputs in {args.inputs}: model {prepare(args.inputs, args.lines)}")
        return 0
    cpus = usable_cpus()
    results: dict[str, Any] = {"environment": environment(argv), "lines": args.lines,
                               "cpus": {"count": os.cpu_count(), "usable": cpus},
                               "regions": region_names(args.regions), "targets": args.targets,
                               "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        root = Path(tmp)
        inputs = args.inputs or root / "inputs"
        prepare(inputs, args.lines)
        fleet = write_fleet(root, inputs.resolve(), args.regions, args.targets)
        for w in worker_counts(args.workers, cpus):
            results["runs"][f"fleet, {w} worker{'s' if w > 1 else ''} (ours)"] = ours(
                fleet, root / f"dist-{w}", w)
            if args.json:  # so far, in case a time limit stops the run (rewritten at the end)
                args.json.write_text(json.dumps({**results, "partial": True}, indent=2))
        failed = [n for n, r in results["runs"].items() if not r["ok"]]
        if not failed and not args.no_peer:
            results["runs"]["by hand, 1 process (peer)"] = peer(fleet)
    results["failed"] = failed
    results["environment"] = finish(results["environment"])
    if args.json:  # written on failure too: a failed run is a result, with each cell's error
        args.json.write_text(json.dumps(results, indent=2))
    if failed:  # the table above shows each failed cell's error
        print(f"bench_fleet: failed cells in {failed}; no figures", file=sys.stderr)
        return 1
    _summary(results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
